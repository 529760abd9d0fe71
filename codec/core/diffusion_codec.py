"""DiffusionCodec: image -> bitstream -> image, with rate control to a target bpp.

The codec holds one adapter per coding mode (codec/core/adapters/) and codes through the Adapter
interface only; a file's header names the mode whose adapter decodes it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from codec.core import bitstream, images, rate_control
from codec.core.adapters.analytic import AnalyticAdapter
from codec.core.adapters.base import Adapter, Analysis, Quantization, adapter_folder, read_config
from codec.core.adapters.learned import LearnedAdapter
from codec.core.backbone import Backbone, demo_notice, load_backbone, load_default_backbone
from codec.core.bitstream import DEFAULT_MAX_PIXELS, DEFAULT_MAX_STEPS, PAD_MULTIPLE, BitstreamError, Header
from codec.core.denoise import denoise

ADAPTER_SUBFOLDER = "adapter"  # a backbone folder may ship its trained adapter here
ADAPTER_CLASSES = {cls.__name__: cls for cls in (LearnedAdapter, AnalyticAdapter)}


@dataclass
class EncodeResult:
    data: bytes
    bpp: float
    t: int
    steps: int
    mode: str
    knob: float  # the adapter's rate knob: lambda (learned) or quantization step (analytic)
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
    z: torch.Tensor
    analysis: Analysis  # the bit estimate, and what coding this candidate reuses

    @property
    def estimated_bits(self) -> float:
        return self.analysis.estimated_bits


def load_adapter(source, subfolder: str | None = None, device=None) -> Adapter:
    """The adapter saved in a folder or hub id, of whichever class its adapter.json names."""
    name = read_config(adapter_folder(source, subfolder)).get("_class_name")
    if name not in ADAPTER_CLASSES:
        raise FileNotFoundError(f"Unknown adapter class {name!r} in {source}; known: {sorted(ADAPTER_CLASSES)}.")
    return ADAPTER_CLASSES[name].from_pretrained(source, subfolder, device)


class DiffusionCodec:
    """`max_pixels` (padded area) and `max_steps` bound the work of encoding and decoding one image:
    files that ask for more are refused, and the encoder never writes such a file.

    `adapter` (typically a trained LearnedAdapter) joins the analytic adapter, which every backbone
    has; `mode` is the default coding mode (the given adapter's, else analytic).
    """

    def __init__(self, backbone: Backbone, adapter: Adapter | None = None, mode: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, notice: str = "", max_steps: int = DEFAULT_MAX_STEPS):
        self.backbone = backbone
        given = [adapter] if adapter is not None else []
        self.adapters: dict[str, Adapter] = {a.mode: a.attach(backbone) for a in [AnalyticAdapter(), *given]}
        self.mode = mode or (adapter.mode if adapter is not None else AnalyticAdapter.mode)
        if self.mode not in self.adapters:
            raise ValueError(f"No {self.mode} adapter is loaded (without a trained adapter use mode='analytic').")
        if not 1 <= max_steps <= bitstream.MAX_STEPS_FIELD:
            raise ValueError(f"max_steps must be between 1 and {bitstream.MAX_STEPS_FIELD}.")
        self.max_pixels, self.max_steps = max_pixels, max_steps
        self.backbone_notice = notice or f"Backbone: {backbone.name}."

    @classmethod
    def load(cls, backbone: str = "auto", adapter: str | None = "auto", mode: str | None = None,
             device=None, dtype=None, max_pixels: int = DEFAULT_MAX_PIXELS, allow_tiny: bool = False,
             max_steps: int = DEFAULT_MAX_STEPS):
        """Load a backbone ("auto", "demo", "tiny", folder, hub id) and its adapter (a folder or hub id).

        adapter="auto" uses the adapter shipped in the backbone folder when there is one; without a
        trained adapter the codec runs in analytic mode, and `backbone_notice` says which adapter codes.
        mode None or "auto": learned when a learned adapter is loaded, else analytic.
        """
        mode = None if mode == "auto" else mode
        if backbone == "auto":
            bb, notice = load_default_backbone(device, dtype, allow_tiny=allow_tiny)
        else:
            bb = load_backbone(backbone, device, dtype)
            notice = demo_notice(bb.training_photos) if bb.name == "demo" else f"Backbone: {bb.name}."
            if bb.name == "tiny":
                notice = "WARNING: backbone is a tiny RANDOM test model; reconstructions are meaningless."
        loaded = None
        if adapter == "auto":
            folder = _backbone_folder(bb)
            if folder is not None and (folder / ADAPTER_SUBFOLDER / "adapter.json").is_file():
                loaded = load_adapter(folder, ADAPTER_SUBFOLDER)
        elif adapter:
            loaded = load_adapter(adapter)
        if mode not in (None, AnalyticAdapter.mode, loaded and loaded.mode):
            raise ValueError(f"No {mode} adapter found for backbone {bb.name}; use --mode analytic or --adapter PATH.")
        codec = cls(bb, loaded, mode, max_pixels, notice, max_steps)
        codec.backbone_notice += f" Adapter: {codec.adapters[codec.mode].description}."
        return codec

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, image, lam: float | None = None, target_bpp: float | None = None, step: float | None = None,
               mode: str | None = None, steps: int | None = None, progress=None, knob: float | None = None) -> EncodeResult:
        """Encode at a fixed knob or at the largest rate <= target_bpp. The knob is `knob`, or by its
        adapter's name: `lam` (learned) or `step` (analytic)."""
        mode = mode or self.mode
        if mode not in self.adapters:
            raise ValueError(f"This codec has no {mode} adapter (it has: {', '.join(sorted(self.adapters))}).")
        adapter = self.adapters[mode]
        named = {"lam": lam, "step": step, "knob": knob}
        given = [name for name, value in named.items() if value is not None]
        if len(given) + (target_bpp is not None) != 1:
            raise ValueError("Give exactly one of lam, step, knob or target_bpp.")
        if given and given[0] not in ("knob", adapter.knob_name):
            raise ValueError(f"{given[0]} is not the {mode} adapter's knob; it takes {adapter.knob_name}.")
        for name in given + (["target_bpp"] if target_bpp is not None else []):
            value = target_bpp if name == "target_bpp" else named[name]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, not {value!r}.")
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
            y = self.backbone.encode(x).to(adapter.device)
            timings["vae_encode"] = time.perf_counter() - tick

        report("rate control" if target_bpp is not None else "quantization", 0.3)
        timings.update(adapter=0.0, entropy_encode=0.0, rate_control_probes=0)
        tick = time.perf_counter()
        features = adapter.features(y)  # knob-independent: computed once for every probe
        timings["adapter"] += time.perf_counter() - tick

        def candidate(value: float) -> _Candidate:  # gamma, t and side information, and the bit estimate
            tick = time.perf_counter()
            q = adapter.quantization(y, value, features)
            z = q.apply(y)
            result = _Candidate(value, q, z, adapter.analyse(z, q))
            timings["adapter"] += time.perf_counter() - tick
            timings["rate_control_probes"] += 1
            return result

        def pack(chosen: _Candidate) -> bytes:  # real entropy coding into the container
            tick = time.perf_counter()
            data = bitstream.pack(self._header(adapter, chosen.quantization, width, height, steps),
                                  adapter.compress(chosen.z, chosen.quantization, chosen.analysis))
            timings["entropy_encode"] += time.perf_counter() - tick
            return data

        if target_bpp is None:
            chosen = candidate(named[given[0]])
            data = pack(chosen)
        else:
            # The container and the rANS coder's final states: what a file takes besides the symbols'
            # bits (the estimate). Its size depends on how many values it holds, not on what they are.
            channels = y.shape[1]
            q = Quantization((1.0,) * channels, (0.0,) * channels, 0, (0.0,) * adapter.side_info_count(y.shape))
            header_bits = 8 * len(bitstream.pack(self._header(adapter, q, width, height, steps),
                                                 [bytes(bitstream.RANS_STATE_BYTES)] * bitstream.payload_count(mode)))
            target_bits = target_bpp * width * height
            tick = time.perf_counter()
            payload_bits = max((1 - rate_control.TOLERANCE / 2) * target_bits - header_bits, 1.0)
            guess = adapter.predicted_knob(features, payload_bits)
            timings["adapter"] += time.perf_counter() - tick
            # rate control follows log(payload + header): the header flattens the payload's slope
            slope = guess and guess.slope and guess.slope * payload_bits / (payload_bits + header_bits)
            chosen, data = rate_control.search(candidate, pack, adapter.knob_range, target_bits, header_bits,
                                               start=None if guess is None else guess.knob, slope=slope)
        timings["total"] = time.perf_counter() - start
        report("done", 1.0)
        header, _ = bitstream.parse(data)
        return EncodeResult(
            data=data, bpp=8 * len(data) / (width * height), t=header.t, steps=header.steps, mode=mode,
            knob=chosen.knob, estimated_bits=chosen.estimated_bits, header=header.as_dict(), timings=timings,
        )

    def _header(self, adapter: Adapter, q: Quantization, width: int, height: int, steps: int | None) -> Header:
        return Header(
            mode=adapter.mode, backbone_fingerprint=self.backbone.fingerprint, adapter_fingerprint=adapter.fingerprint,
            height=height, width=width, t=q.t, steps=min(steps or self.backbone.default_steps, q.t, self.max_steps),
            scale=q.scale, shift=q.shift, side_info=q.side_info,
        )

    # -- decoding -----------------------------------------------------------------------------
    def parse(self, data: bytes) -> Header:
        """Validate a bitstream and check that it belongs to this backbone and adapter."""
        header, _ = bitstream.parse(data, self.max_pixels, self.max_steps)
        self._check_compatible(header)
        return header

    def _check_compatible(self, header: Header) -> tuple[Adapter, Quantization, tuple[int, ...]]:
        """The adapter that decodes this file, its quantization and the latent's shape."""
        if header.backbone_fingerprint != self.backbone.fingerprint:
            raise BitstreamError(
                f"This file was encoded with a different backbone (fingerprint {header.backbone_fingerprint.hex()}); "
                f"the loaded backbone is {self.backbone.name} ({self.backbone.fingerprint.hex()}). Decode it with the "
                "backbone that encoded it."
            )
        if header.channels != self.backbone.latent_channels:
            raise BitstreamError(f"The file has {header.channels} latent channels, the backbone {self.backbone.latent_channels}.")
        if header.mode not in self.adapters:
            raise BitstreamError(f"This file was encoded with a {header.mode} adapter, but none is loaded.")
        adapter = self.adapters[header.mode]
        if header.adapter_fingerprint != adapter.fingerprint:
            raise BitstreamError(
                f"This file was encoded with a different adapter (fingerprint {header.adapter_fingerprint.hex()}, "
                f"loaded: {adapter.fingerprint.hex()})."
            )
        latent_size = tuple(side // self.backbone.downsample for side in bitstream.padded_size(header.height, header.width))
        latent_shape = (1, header.channels, *latent_size)
        quantization = Quantization.from_header(header)
        try:
            adapter.check_quantization(quantization, latent_shape)
        except ValueError as exc:
            raise BitstreamError(str(exc)) from None
        return adapter, quantization, latent_shape

    def dequantize(self, data: bytes) -> tuple[Header, torch.Tensor]:
        """Validate, entropy-decode and invert gamma: the header and y_hat (before any denoising)."""
        header, payloads = bitstream.parse(data, self.max_pixels, self.max_steps)
        adapter, quantization, latent_shape = self._check_compatible(header)
        for payload, symbols in zip(payloads, adapter.symbol_counts(latent_shape)):  # before anything is allocated
            bitstream.check_rans_payload(payload, symbols)
        try:
            z_hat = adapter.decompress(payloads, latent_shape, quantization)
        except (RuntimeError, ValueError, OverflowError) as exc:
            raise BitstreamError(f"The entropy-coded data is corrupt ({exc}).") from None
        return header, quantization.invert(z_hat.float())

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
        timings["vae_decode"] = time.perf_counter() - tick  # the model alone: the conversion is the codec's
        image = images.to_pil(images.crop(x, header.height, header.width))

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
