"""Baseline codecs at a target bitrate, each with a real encode and a real decode of the bytes.

- "jpeg", "webp", "avif", "heic": Pillow's encoders (libjpeg-turbo, libwebp, libavif/libaom,
  and HEVC intra through pillow-heif's x265; there is no BPG anywhere, so it is labelled HEIC).
- "naive": the paper's Figure-2 baseline. The codec's own VAE latent is quantized uniformly with
  a step size, entropy-coded with a factorized compressai EntropyBottleneck, and decoded by the
  VAE with no denoising. Its prior is fitted once per backbone on training photos
  (`fit_naive_prior`, or `python -m codec.evaluate.baselines fit-naive ...`) and cached by fingerprint.

Rate control: bisection on the integer knob for the largest bpp not above the target, keeping
the best result seen (size is not strictly monotone in the knob). ``fast=True`` swaps in quicker
encoder settings for interactive use, named in the result's label. If even the smallest setting
overshoots, that result comes back with ``reached=False`` so callers report the bpp reached.
bpp = 8 * len(file) / (W * H), container included. Metadata (ICC, EXIF) is never written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
import torch
from PIL import Image

from codec.core import images
from codec.core.entropy_coding import EntropyBottleneck

pillow_heif.register_heif_opener()

METHODS = ("jpeg", "webp", "avif", "heic")
ALL_METHODS = METHODS + ("naive",)
LABELS = {
    "jpeg": "JPEG (libjpeg-turbo, 4:2:0, optimized)",
    "webp": "WebP (libwebp, method 6)",
    "avif": "AVIF (libaom, speed 6)",
    "heic": "HEVC-intra (HEIC, x265)",
    "naive": "Naive latent quantization (VAE latent, factorized prior, no denoising)",
}


@dataclass
class BaselineResult:
    method: str
    label: str
    data: bytes
    bpp: float
    quality: float  # the knob: Pillow quality, or the quantization step for "naive"
    image: Image.Image  # decoded from `data`
    encode_s: float  # the final encode alone
    decode_s: float
    reached: bool  # False when even the lowest setting is above the target
    iterations: int = 1  # encodes tried by the rate control
    search_s: float = 0.0  # wall time of the whole rate control, final encode included


def _bpp(data: bytes, image: Image.Image) -> float:
    return 8 * len(data) / (image.width * image.height)


def _pixels_only(image: Image.Image) -> Image.Image:
    """An RGB copy without info (ICC profiles and EXIF would otherwise be embedded and counted)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    return Image.fromarray(np.asarray(image.convert("RGB")))


# ----------------------------------------------------------------------------------------------
# Pillow codecs


@dataclass(frozen=True)
class _PillowCodec:
    label: str
    format: str
    q_min: int
    q_max: int
    options: dict


# Best-effort settings, for evaluations.
_PILLOW = {
    "jpeg": _PillowCodec(LABELS["jpeg"], "JPEG", 1, 95, {"optimize": True, "subsampling": 2}),
    "webp": _PillowCodec(LABELS["webp"], "WEBP", 0, 100, {"method": 6}),
    "avif": _PillowCodec(LABELS["avif"], "AVIF", 0, 100, {"speed": 6, "subsampling": "4:2:0"}),
    "heic": _PillowCodec(LABELS["heic"], "HEIF", 0, 100, {}),  # libheif's x265 default preset (slow)
}
# fast=True, for interactive use: 3-10x faster searches. AVIF speed 9 loses ~0.5-1 dB against
# speed 6 at matched bpp on 768x512 photos. x265 "veryfast" and faster presets are 2-4x quicker
# than libheif's default, but ultrafast/superfast cannot go below ~0.14 bpp on such photos.
_PILLOW_FAST = {
    "jpeg": _PILLOW["jpeg"],
    "webp": _PillowCodec("WebP (libwebp, method 4)", "WEBP", 0, 100, {"method": 4}),
    "avif": _PillowCodec("AVIF (libaom, speed 9)", "AVIF", 0, 100, {"speed": 9, "subsampling": "4:2:0"}),
    "heic": _PillowCodec("HEVC-intra (HEIC, x265 veryfast)", "HEIF", 0, 100, {"enc_params": {"preset": "veryfast"}}),
}


def _pillow_encode(image: Image.Image, codec: _PillowCodec, q: int):
    buf = io.BytesIO()
    start = time.perf_counter()
    image.save(buf, codec.format, quality=int(q), **codec.options)
    return buf.getvalue(), time.perf_counter() - start


def _pillow_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


# ----------------------------------------------------------------------------------------------
# Rate control shared by every method: encode(q) -> (bytes, seconds), larger q = more bits.


def _bisect(encode, lo: int, hi: int, target_bits: float) -> tuple[dict, int]:
    """Find the largest q in [lo, hi] whose file fits; returns every probe {q: (bytes, s)} and q.

    The cheap lowest setting goes first, so an unreachable target costs one encode. (Secant
    steps on log size saved only ~1 encode in 6 on our photos, at the price of bad worst cases.)
    """
    probes = {lo: encode(lo)}
    a, b = lo + 1, hi
    if 8 * len(probes[lo][0]) > target_bits:
        b = lo
    while a <= b:
        q = (a + b) // 2
        probes[q] = encode(q)
        if 8 * len(probes[q][0]) <= target_bits:
            a = q + 1
        else:
            b = q - 1
    return probes, _best(probes, target_bits)


def _best(probes: dict, target_bits: float) -> int:
    fits = [q for q, (data, _) in probes.items() if 8 * len(data) <= target_bits]
    if fits:
        return max(fits, key=lambda q: (len(probes[q][0]), q))
    return min(probes, key=lambda q: (len(probes[q][0]), q))


# ----------------------------------------------------------------------------------------------
# Public API


def encode_at_quality(image: Image.Image, method: str, quality: float, backbone=None, fast: bool = False) -> BaselineResult:
    """Encode with a fixed knob value (Pillow quality, or the naive quantization step)."""
    image = _pixels_only(image)
    if method == "naive":
        return _naive_result(image, backbone, None, lambda naive: naive.encode_step(image, float(quality)))
    codec = _codec(method, fast)
    start = time.perf_counter()
    data, enc_s = _pillow_encode(image, codec, int(quality))
    return _result(method, codec.label, image, data, quality, enc_s, True, 1, time.perf_counter() - start)


def encode_at_bpp(image: Image.Image, method: str, target_bpp: float, backbone=None, fast: bool = False) -> BaselineResult:
    """Encode at the largest bpp not above ``target_bpp`` (see the module docstring).

    ``fast``: quicker encoder settings for interactive use (WebP method 4, AVIF speed 9, x265
    veryfast), named in the result's label; evaluations should keep the default.
    """
    image = _pixels_only(image)
    if not target_bpp > 0:
        raise ValueError(f"target_bpp must be positive, got {target_bpp}")
    target_bits = target_bpp * image.width * image.height
    if method == "naive":
        return _naive_result(image, backbone, target_bits, lambda naive: naive.encode_at_bits(image, target_bits))
    codec = _codec(method, fast)
    start = time.perf_counter()
    probes, q = _bisect(lambda q: _pillow_encode(image, codec, q), codec.q_min, codec.q_max, target_bits)
    data, enc_s = probes[q]
    reached = 8 * len(data) <= target_bits
    return _result(method, codec.label, image, data, q, enc_s, reached, len(probes), time.perf_counter() - start)


def decode(data: bytes, method: str, backbone=None) -> Image.Image:
    """Decode a file written by `encode_at_bpp` / `encode_at_quality` for ``method``."""
    if method == "naive":
        return _naive_for(backbone).decode(data)
    _codec(method)
    return _pillow_decode(data)


def _codec(method: str, fast: bool = False) -> _PillowCodec:
    if method not in _PILLOW:
        raise ValueError(f"unknown baseline method {method!r}; choose from {', '.join(ALL_METHODS)}")
    return (_PILLOW_FAST if fast else _PILLOW)[method]


def _result(method, label, image, data, quality, enc_s, reached, iterations, search_s) -> BaselineResult:
    start = time.perf_counter()
    decoded = _pillow_decode(data)
    dec_s = time.perf_counter() - start
    return BaselineResult(
        method, label, data, _bpp(data, image), quality, decoded, enc_s, dec_s, reached, iterations, search_s
    )


# ----------------------------------------------------------------------------------------------
# Naive latent baseline

# Quantization steps, 2^(1/8) apart, rounded to fp16 so the header stores them exactly. A
# factorized prior depends on the step, so the EntropyBottleneck holds one set of 4 channels per
# step (channel k*4 + c models latent channel c divided by NAIVE_STEPS[k]).
NAIVE_STEPS = torch.tensor(2.0 ** (np.arange(-40, 33) / 8), dtype=torch.float16).float()
_LATENT_CHANNELS = 4
_MULTIPLE = 64  # the same padding as the codec (codec.core.bitstream.PAD_MULTIPLE)
_HEADER = struct.Struct(">HHeI")  # height, width, step (fp16), payload length
PRIOR_DIRS_ENV = "CODEC_CACHE_DIR"
_SHIPPED_PRIORS = Path(__file__).resolve().parents[2] / "assets" / "models" / "naive"  # the repository root


class NaivePriorMissing(FileNotFoundError):
    """No fitted naive prior for this backbone."""


def _latent(backbone, image: Image.Image) -> torch.Tensor:
    """The backbone's latent of ``image``, padded like the codec pads it."""
    x = images.pad_to_multiple(images.to_tensor(image), _MULTIPLE)
    with torch.inference_mode():
        return backbone.encode(x).float().cpu()


def _fingerprint_hex(backbone) -> str:
    return hashlib.sha256(bytes(backbone.fingerprint)).hexdigest()[:16]


def naive_prior_path(backbone, directory: str | Path | None = None) -> Path:
    """Where `fit_naive_prior` writes this backbone's prior (the user cache unless ``directory``)."""
    if directory is None:
        directory = os.environ.get(PRIOR_DIRS_ENV) or Path.home() / ".cache" / "diffusion-codec"
    return Path(directory) / f"naive-prior-{_fingerprint_hex(backbone)}.safetensors"


def _new_bottleneck() -> EntropyBottleneck:
    return EntropyBottleneck(len(NAIVE_STEPS) * _LATENT_CHANNELS)


def fit_naive_prior(backbone, photos, steps: int = 2000, path: str | Path | None = None, seed: int = 0) -> Path:
    """Fit the factorized prior on latents of ``photos`` (training photos, never test images).

    ``photos``: PIL images or paths. Saves the EntropyBottleneck (CDF tables included) as
    safetensors at ``path`` (default `naive_prior_path(backbone)`) and returns that path.
    """
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    latents = []
    for im in photos:
        if not isinstance(im, Image.Image):
            with Image.open(im) as f:
                im = f.convert("RGB")
        latents.append(_latent(backbone, _pixels_only(im))[0].flatten(1))
    if not latents:
        raise ValueError("fit_naive_prior needs at least one training image")
    y = torch.cat(latents, 1)  # 4 x M
    eb = _new_bottleneck()
    inv_steps = (1.0 / NAIVE_STEPS).repeat_interleave(_LATENT_CHANNELS)  # per EB channel
    _init_ranges(eb, y.abs().amax(1).repeat(len(NAIVE_STEPS)) * inv_steps + 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these ops are tiny: extra threads only add contention (8x slower)
    try:
        _train_prior(eb, y, inv_steps, steps)
        eb.update(force=True, update_quantiles=True)
    finally:
        torch.set_num_threads(threads)
    path = Path(path) if path is not None else naive_prior_path(backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in eb.state_dict().items()}
    tensors["steps"] = NAIVE_STEPS.clone()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"fingerprint": _fingerprint_hex(backbone), "train_steps": str(steps)})
    os.replace(tmp, path)
    _NAIVE_CACHE.pop(_fingerprint_hex(backbone), None)  # the next use reads the new prior
    return path


def _train_prior(eb, y: torch.Tensor, inv_steps: torch.Tensor, steps: int) -> None:
    """Maximum likelihood of the (noise-perturbed) scaled latents, every step's channels at once."""
    opt = torch.optim.Adam([p for n, p in eb.named_parameters() if n != "quantiles"], lr=1e-2)
    batch = min(256, y.shape[1])  # a 1-D density per channel: small batches, many cheap steps
    for it in range(steps):
        for group in opt.param_groups:  # cosine decay: the density settles instead of jittering
            group["lr"] = 1e-2 * 0.5 * (1 + np.cos(np.pi * it / steps))
        x = y[:, torch.randint(y.shape[1], (batch,))].repeat(len(NAIVE_STEPS), 1) * inv_steps[:, None]
        _, likelihoods = eb(x[None], training=True)
        loss = -torch.log2(likelihoods).sum() / batch
        opt.zero_grad()
        loss.backward()
        opt.step()


def _init_ranges(eb, ranges: torch.Tensor) -> None:
    """EntropyBottleneck's own initialisation, with a per-channel init_scale (``ranges``).

    The channels see inputs from |y|/16 to 32|y|; one shared init_scale would leave most of
    them far from their data, and training would spend its steps just getting there.
    """
    filters = (1,) + eb.filters + (1,)
    scale = ranges ** (1 / (len(filters) - 1))
    with torch.no_grad():
        for i, matrix in enumerate(eb.matrices):
            matrix.copy_(torch.log(torch.expm1(1 / scale / filters[i + 1]))[:, None, None].expand_as(matrix))
        eb.quantiles.copy_(torch.stack([-ranges, torch.zeros_like(ranges), ranges], 1)[:, None, :])


def load_naive_prior(backbone):
    """The fitted EntropyBottleneck for ``backbone``, from the user cache or the shipped priors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    name = naive_prior_path(backbone).name
    candidates = [naive_prior_path(backbone).parent / name, _SHIPPED_PRIORS / name]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise NaivePriorMissing(
            f"no naive-baseline prior for this backbone (looked for {' and '.join(map(str, candidates))}); "
            "fit one on training photos with: python -m codec.evaluate.baselines fit-naive --backbone ID --data DIR"
        )
    with safe_open(str(found), "pt") as f:
        if f.metadata().get("fingerprint") != _fingerprint_hex(backbone):
            raise ValueError(f"{found} was fitted for another backbone")
    tensors = load_file(str(found))
    if not torch.equal(tensors.pop("steps"), NAIVE_STEPS):
        raise ValueError(f"{found} was fitted for another step table; fit it again")
    return _load_bottleneck(_new_bottleneck(), tensors)


def _load_bottleneck(eb: EntropyBottleneck, state: dict) -> EntropyBottleneck:
    for name in ("_quantized_cdf", "_offset", "_cdf_length"):  # sized by update(), empty until then
        getattr(eb, name).resize_(state[name].shape)
    eb.load_state_dict(state)
    return eb.eval()


class NaiveCodec:
    """Encode/decode with the naive baseline on one backbone (its prior loaded once)."""

    def __init__(self, backbone, prior=None):
        self.backbone = backbone
        self.prior = prior if prior is not None else load_naive_prior(backbone)
        self._per_step = {}

    def _bottleneck(self, k: int):
        """The 4-channel EntropyBottleneck of step k, sliced out of the joint one (cached)."""
        if k not in self._per_step:
            channels = slice(k * _LATENT_CHANNELS, (k + 1) * _LATENT_CHANNELS)
            per_channel = lambda v: v.dim() > 0 and v.shape[0] == self.prior.channels  # noqa: E731
            state = {n: v[channels] if per_channel(v) else v for n, v in self.prior.state_dict().items()}
            self._per_step[k] = _load_bottleneck(EntropyBottleneck(_LATENT_CHANNELS), state)
        return self._per_step[k]

    def _pack(self, y: torch.Tensor, k: int, size) -> bytes:
        payload = self._bottleneck(k).compress(y / NAIVE_STEPS[k])[0]
        h, w = size
        return _HEADER.pack(h, w, NAIVE_STEPS[k].item(), len(payload)) + payload

    def encode_step(self, image: Image.Image, step: float):
        """-> (data, step actually used: the table's nearest, encode seconds, probes, total seconds)."""
        start = time.perf_counter()
        k = int(torch.argmin((torch.log(NAIVE_STEPS) - np.log(step)).abs()))
        data = self._pack(_latent(self.backbone, image), k, (image.height, image.width))
        elapsed = time.perf_counter() - start
        return data, NAIVE_STEPS[k].item(), elapsed, 1, elapsed

    def encode_at_bits(self, image: Image.Image, target_bits: float):
        """Bisection on the step index with one VAE encode; same return as `encode_step`."""
        start = time.perf_counter()
        y = _latent(self.backbone, image)
        latent_s = time.perf_counter() - start
        last = len(NAIVE_STEPS) - 1

        def encode(q):  # q = last - step index, so a larger q means more bits
            t = time.perf_counter()
            return self._pack(y, last - q, (image.height, image.width)), latent_s + time.perf_counter() - t

        probes, q = _bisect(encode, 0, last, target_bits)
        data, enc_s = probes[q]
        return data, NAIVE_STEPS[last - q].item(), enc_s, len(probes), time.perf_counter() - start

    def decode(self, data: bytes) -> Image.Image:
        if len(data) < _HEADER.size:
            raise ValueError("naive-baseline file too short for its header")
        h, w, step, length = _HEADER.unpack_from(data)
        matches = (NAIVE_STEPS == step).nonzero()
        if h == 0 or w == 0 or length != len(data) - _HEADER.size or len(matches) != 1:
            raise ValueError("not a valid naive-baseline file (bad size, step or length)")
        k = int(matches[0])
        hp, wp = h + (-h % _MULTIPLE), w + (-w % _MULTIPLE)
        z = self._bottleneck(k).decompress([data[_HEADER.size :]], (hp // 8, wp // 8))
        with torch.inference_mode():
            return images.to_pil(images.crop(self.backbone.decode(z * step), h, w))


_NAIVE_CACHE: dict[str, NaiveCodec] = {}


def _naive_for(backbone) -> NaiveCodec:
    """The NaiveCodec of this backbone: the prior is read from disk once per fingerprint, and
    only the latest backbone object of a fingerprint is kept alive."""
    if backbone is None:
        raise ValueError("the naive baseline needs the codec's backbone (backbone=...)")
    key = _fingerprint_hex(backbone)
    codec = _NAIVE_CACHE.get(key)
    if codec is None or codec.backbone is not backbone:
        codec = _NAIVE_CACHE[key] = NaiveCodec(backbone, codec.prior if codec else None)
    return codec


def _naive_result(image: Image.Image, backbone, target_bits, encode) -> BaselineResult:
    naive = _naive_for(backbone)
    data, step, enc_s, iterations, search_s = encode(naive)
    reached = target_bits is None or 8 * len(data) <= target_bits
    start = time.perf_counter()
    decoded = naive.decode(data)
    dec_s = time.perf_counter() - start
    return BaselineResult(
        "naive", LABELS["naive"], data, _bpp(data, image), step, decoded, enc_s, dec_s, reached, iterations, search_s
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codec.evaluate.baselines", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit-naive", help="fit and cache the naive baseline's prior for a backbone")
    fit.add_argument("--backbone", default="demo", help="demo, tiny, a diffusers folder or a hub id")
    fit.add_argument("--data", required=True, help="folder of training photos (PNG/JPEG)")
    fit.add_argument("--exclude", default=None, help="comma-separated file names to leave out "
                     "(default: the demo backbone's six validation photos)")
    fit.add_argument("--steps", type=int, default=2000)
    fit.add_argument("--dir", default=None, help="folder for the prior file, named by the backbone's fingerprint "
                     f"(default: ${PRIOR_DIRS_ENV} or ~/.cache/diffusion-codec; assets/models/naive ships it with the repo)")
    args = parser.parse_args(argv)

    from codec.core.backbone import BackboneUnavailable, load_backbone
    from codec.data.photos import VALIDATION_PHOTOS

    exclude = set(args.exclude.split(",")) if args.exclude is not None else set(VALIDATION_PHOTOS)
    files = sorted(p for p in Path(args.data).iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.name not in exclude)
    if not files:
        print(f"error: no training photos in {args.data}", file=sys.stderr)
        return 2
    try:
        backbone = load_backbone(args.backbone)
    except BackboneUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    path = fit_naive_prior(backbone, files, steps=args.steps, path=naive_prior_path(backbone, args.dir))
    print(f"naive prior for {backbone.name} fitted on {len(files)} photos in {time.perf_counter() - start:.0f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
