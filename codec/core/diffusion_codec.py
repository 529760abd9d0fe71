"""DiffusionCodec: image -> bitstream -> image, with rate control to a target bpp."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from codec.core import bitstream, images, rate_control
from codec.core.adapter import AnalyticAdapter, LearnedAdapter, Quantization, default_t_max
from codec.core.backbone import Backbone, load_backbone, load_default_backbone
from codec.core.bitstream import (DEFAULT_MAX_PIXELS, DEFAULT_MAX_STEPS, FINGERPRINT_BYTES, PAD_MULTIPLE, BitstreamError,
                              Header)
from codec.core.denoise import denoise

ADAPTER_SUBFOLDER = "adapter"  # a backbone folder may ship its trained adapter here


@dataclass
class EncodeResult:
    data: bytes
    bpp: float
    t: int
    steps: int
    mode: str
    knob: float  # lambda (learned) or quantization step (analytic)
    estimated_bits: float  # the entropy model's estimate for the coded latent(s)
    header: dict
    timings: dict = field(default_factory=dict)  # seconds per stage


@dataclass
class DecodeResult:
    image: Image.Image
    header: dict
    bpp: float
    intermediates: list = field(default_factory=list)  # (timestep, PIL image of the x0 prediction)
    timings: dict = field(default_factory=dict)


@dataclass
class _Candidate:
    knob: float
    quantization: Quantization
    prior_scales: tuple
    z: torch.Tensor
    estimated_bits: float


class DiffusionCodec:
    """`max_pixels` (padded area) and `max_steps` bound the work of encoding and decoding one image:
    files that ask for more are refused, and the encoder never writes such a file."""

    def __init__(self, backbone: Backbone, adapter: LearnedAdapter | None = None, mode: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, notice: str = "", max_steps: int = DEFAULT_MAX_STEPS):
        self.backbone = backbone
        self.learned = adapter.to(backbone.device) if adapter is not None else None
        self.analytic = AnalyticAdapter(backbone.alphas_cumprod, default_t_max(backbone.num_train_timesteps))
        self.mode = mode or ("learned" if adapter is not None else "analytic")
        if self.mode == "learned" and adapter is None:
            raise ValueError("Learned mode needs a trained adapter (use mode='analytic' without one).")
        if not 1 <= max_steps <= bitstream.MAX_STEPS_FIELD:
            raise ValueError(f"max_steps must be between 1 and {bitstream.MAX_STEPS_FIELD}.")
        self.max_pixels, self.max_steps = max_pixels, max_steps
        self.backbone_notice = notice or f"Backbone: {backbone.name}."

    @classmethod
    def load(cls, backbone: str = "auto", adapter: str | None = "auto", mode: str | None = None,
             device=None, dtype=None, max_pixels: int = DEFAULT_MAX_PIXELS, allow_tiny: bool = False,
             max_steps: int = DEFAULT_MAX_STEPS):
        """Load a backbone ("auto", "demo", "tiny", folder, hub id) and its adapter.

        adapter="auto" uses the adapter shipped in the backbone folder when there is one; without a
        learned adapter the codec runs in analytic mode and says so in `backbone_notice`.
        """
        if backbone == "auto":
            bb, notice = load_default_backbone(device, dtype, allow_tiny=allow_tiny)
        else:
            bb = load_backbone(backbone, device, dtype)
            notice = f"Backbone: {bb.name}."
            if bb.name == "tiny":
                notice = "WARNING: backbone is a tiny RANDOM test model; reconstructions are meaningless."
        learned = None
        if adapter == "auto":
            folder = _backbone_folder(bb)
            if folder is not None and (folder / ADAPTER_SUBFOLDER / "adapter.json").is_file():
                learned = LearnedAdapter.from_pretrained(folder / ADAPTER_SUBFOLDER)
        elif adapter:
            learned = LearnedAdapter.from_pretrained(adapter)
        if learned is not None:
            learned.prepare()
        elif mode == "learned":
            raise ValueError(f"No trained adapter found for backbone {bb.name}; use --mode analytic or --adapter PATH.")
        codec = cls(bb, learned, mode, max_pixels, notice, max_steps)
        if codec.mode == "analytic":
            codec.backbone_notice += " Adapter: analytic (training-free)."
        return codec

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, image, lam: float | None = None, target_bpp: float | None = None, step: float | None = None,
               mode: str | None = None, steps: int | None = None, progress=None) -> EncodeResult:
        """Encode at a fixed knob (lam for learned, step for analytic) or at the largest rate <= target_bpp."""
        mode = mode or self.mode
        if mode == "learned" and self.learned is None:
            raise ValueError("This codec has no learned adapter; use mode='analytic'.")
        if sum(v is not None for v in (lam, target_bpp, step)) != 1:
            raise ValueError("Give exactly one of lam, step or target_bpp.")
        if steps is not None and not 1 <= steps <= self.max_steps:
            raise ValueError(f"steps must be between 1 and {self.max_steps} (max_steps).")
        report = progress or (lambda stage, fraction: None)
        timings = {}
        start = time.perf_counter()
        im = images.load_image(image, self.max_pixels)
        width, height = im.size
        try:
            bitstream.check_pixels(height, width, self.max_pixels)
        except ValueError as exc:
            raise images.ImageError(f"{exc} Please downscale it first.") from None
        x = images.pad_to_multiple(images.to_tensor(im), PAD_MULTIPLE)
        report("VAE encode", 0.0)
        with torch.no_grad():
            tick = time.perf_counter()
            y = self.backbone.encode(x).to("cpu" if mode == "analytic" else self.backbone.device)
            timings["vae_encode"] = time.perf_counter() - tick

        report("rate control" if target_bpp is not None else "quantization", 0.3)
        timings.update(adapter=0.0, entropy_encode=0.0, rate_control_probes=0)
        features = None
        if mode == "learned":  # the parameter network's image features do not depend on lambda
            tick = time.perf_counter()
            with torch.no_grad():
                features = self.learned.param_net.features(y)
            timings["adapter"] += time.perf_counter() - tick

        def candidate(knob: float) -> _Candidate:  # P(y, lambda) or the analytic rule, and the estimate
            tick = time.perf_counter()
            result = self._candidate(y, mode, knob, features)
            timings["adapter"] += time.perf_counter() - tick
            timings["rate_control_probes"] += 1
            return result

        def pack(chosen: _Candidate) -> bytes:  # real entropy coding into the container
            tick = time.perf_counter()
            data = self._pack(chosen, mode, width, height, steps)
            timings["entropy_encode"] += time.perf_counter() - tick
            return data

        if target_bpp is None:
            chosen = candidate(lam if mode == "learned" else step)
            data = pack(chosen)
        else:
            chosen, data = self._rate_control(candidate, pack, mode, target_bpp * width * height)
        timings["total"] = time.perf_counter() - start
        report("done", 1.0)
        header, _ = bitstream.parse(data)
        return EncodeResult(
            data=data, bpp=8 * len(data) / (width * height), t=header.t, steps=header.steps, mode=mode,
            knob=chosen.knob, estimated_bits=chosen.estimated_bits, header=header.as_dict(), timings=timings,
        )

    def _pack(self, candidate: _Candidate, mode: str, width: int, height: int, steps: int | None) -> bytes:
        q = candidate.quantization
        payloads = (self.learned.compress(candidate.z) if mode == "learned"
                    else self.analytic.compress(candidate.z, candidate.prior_scales))
        header = Header(
            mode=mode, backbone_fingerprint=self.backbone.fingerprint, adapter_fingerprint=self._adapter(mode).fingerprint,
            height=height, width=width, t=q.t, steps=min(steps or self.backbone.default_steps, q.t, self.max_steps),
            scale=q.scale, shift=q.shift, prior_scales=candidate.prior_scales,
        )
        return bitstream.pack(header, payloads)

    def _adapter(self, mode: str):
        return self.learned if mode == "learned" else self.analytic

    def _candidate(self, y: torch.Tensor, mode: str, knob: float, features=None) -> _Candidate:
        if mode == "learned":
            q = self.learned.quantization(y, knob, features)
            z = q.apply(y)
            return _Candidate(knob, q, (), z, self.learned.estimate_bits(z))
        q, prior_scales = self.analytic.quantization(y, knob)
        z = q.apply(y)
        return _Candidate(knob, q, prior_scales, z, self.analytic.estimate_bits(z, prior_scales))

    def _rate_control(self, candidate, pack, mode: str, target_bits: float):
        if mode == "learned":
            knob_range = (math.log(self.learned.lam_min), math.log(self.learned.lam_max))
        else:  # a larger step means a lower rate
            knob_range = (math.log(AnalyticAdapter.step_max), math.log(AnalyticAdapter.step_min))
        return rate_control.search(candidate, pack, knob_range, target_bits, 8 * len(self._pack_header_probe(mode)))

    def _pack_header_probe(self, mode: str) -> bytes:
        """A header with empty payloads, to know the exact container overhead for this mode."""
        channels = self.backbone.latent_channels
        header = Header(mode=mode, backbone_fingerprint=bytes(FINGERPRINT_BYTES), adapter_fingerprint=bytes(FINGERPRINT_BYTES), height=1, width=1,
                        t=1, steps=1, scale=(1.0,) * channels, shift=(0.0,) * channels,
                        prior_scales=(1.0,) * channels if mode == "analytic" else ())
        return bitstream.pack(header, [b""] * bitstream.payload_count(mode))

    # -- decoding -----------------------------------------------------------------------------
    def parse(self, data: bytes) -> Header:
        """Validate a bitstream and check that it belongs to this backbone and adapter."""
        header, _ = bitstream.parse(data, self.max_pixels, self.max_steps)
        self._check_compatible(header)
        return header

    def _check_compatible(self, header: Header) -> None:
        if header.backbone_fingerprint != self.backbone.fingerprint:
            raise BitstreamError(
                f"This file was encoded with a different backbone (fingerprint {header.backbone_fingerprint.hex()}); "
                f"the loaded backbone is {self.backbone.name} ({self.backbone.fingerprint.hex()}). Decode it with the "
                "backbone that encoded it."
            )
        if header.channels != self.backbone.latent_channels:
            raise BitstreamError(f"The file has {header.channels} latent channels, the backbone {self.backbone.latent_channels}.")
        if header.mode == "learned":
            if self.learned is None:
                raise BitstreamError("This file was encoded with a learned adapter, but none is loaded.")
            if header.adapter_fingerprint != self.learned.fingerprint:
                raise BitstreamError(
                    f"This file was encoded with a different adapter (fingerprint {header.adapter_fingerprint.hex()}, "
                    f"loaded: {self.learned.fingerprint.hex()})."
                )
        t_max = self.learned.t_max if header.mode == "learned" else self.analytic.t_max
        if header.t > t_max:
            raise BitstreamError(f"Timestep t={header.t} exceeds this adapter's maximum {t_max}.")

    def dequantize(self, data: bytes) -> tuple[Header, torch.Tensor]:
        """Validate, entropy-decode and invert gamma: the header and y_hat (before any denoising)."""
        header, payloads = bitstream.parse(data, self.max_pixels, self.max_steps)
        self._check_compatible(header)
        latent_size = tuple(side // self.backbone.downsample for side in bitstream.padded_size(header.height, header.width))
        latent_shape = (1, header.channels, *latent_size)
        counts = (self.learned.symbol_counts(latent_size) if header.mode == "learned"
                  else self.analytic.symbol_counts(latent_shape))
        for payload, symbols in zip(payloads, counts):  # lengths the shape allows, before anything is allocated
            bitstream.check_rans_payload(payload, symbols)
        try:
            if header.mode == "learned":
                z_hat = self.learned.decompress(payloads, latent_size)
            else:
                z_hat = self.analytic.decompress(payloads, latent_shape, header.prior_scales)
        except (RuntimeError, ValueError, OverflowError) as exc:
            raise BitstreamError(f"The entropy-coded data is corrupt ({exc}).") from None
        return header, Quantization(header.scale, header.shift, header.t).invert(z_hat.float())

    def decode(self, data: bytes, intermediates: bool = False, progress=None) -> DecodeResult:
        report = progress or (lambda stage, fraction: None)
        timings = {}
        start = time.perf_counter()
        report("entropy decoding", 0.0)
        header, y_hat = self.dequantize(data)
        timings["entropy_decode"] = time.perf_counter() - start

        result = denoise(self.backbone, y_hat, header.t, header.steps,
                         progress=lambda stage, f: report(stage, 0.1 + 0.7 * f))
        for i, seconds in enumerate(result.step_seconds):
            timings[f"denoise_step_{i + 1}"] = seconds

        report("VAE decode", 0.85)
        tick = time.perf_counter()
        with torch.no_grad():
            x = self.backbone.decode(result.latent)
        image = images.to_pil(images.crop(x, header.height, header.width))
        timings["vae_decode"] = time.perf_counter() - tick

        trajectory = []
        if intermediates:
            with torch.no_grad():
                for tau, x0 in result.x0_predictions:
                    trajectory.append((tau, images.to_pil(images.crop(self.backbone.decode(x0), header.height, header.width))))
        timings["total"] = time.perf_counter() - start
        report("done", 1.0)
        return DecodeResult(image=image, header=header.as_dict(), bpp=8 * len(data) / (header.width * header.height),
                            intermediates=trajectory, timings=timings)

    def info(self, data: bytes) -> dict:
        """Header fields and bpp of a bitstream (validated, without decoding)."""
        return bitstream.describe(data, self.max_pixels, self.max_steps)


def _backbone_folder(bb: Backbone) -> Path | None:
    from codec.core.backbone import DEMO_DIR

    if bb.name == "demo":
        return DEMO_DIR
    path = Path(bb.name)
    return path if path.is_dir() else None
