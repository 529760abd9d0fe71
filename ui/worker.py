"""The model work of the Compress and Decode tabs: functions of the DiffusionCodec.

`AppContext.run(fn, ...)` calls each with the codec as first argument, in the model process
(codec/core/isolated.py) or, with the worker off, in the server itself, where `spaces.GPU` (ZeroGPU)
gives them the GPU. This module imports no gradio, so the model process loads only the codec.
"""

from __future__ import annotations

from ui import views


def gpu(fn):
    """`spaces.GPU` where the `spaces` package is installed (ZeroGPU), otherwise `fn` unchanged."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


def load_codec(backbone: str | None, adapter: str | None, mode: str, device: str | None, dtype: str,
               max_pixels: int, max_steps: int):
    from codec.core.diffusion_codec import DiffusionCodec

    codec = DiffusionCodec.load(
        backbone=backbone, adapter=adapter, mode=mode, device=device,
        dtype=None if dtype == "auto" else dtype,  # None: float16 on CUDA, float32 on the CPU
        max_pixels=max_pixels,
        allow_tiny=True,  # never refuse to start; the notice on every result says the model is random
        max_steps=max_steps,
    )
    codec.backbone.unet  # the app decodes what it encodes: load the denoiser now, not on a visitor's first request
    return codec


def notice(codec) -> str:
    return codec.backbone_notice


def load_upload(codec, path: str):
    """A visitor's image file as RGB, within the codec's pixel limit: decoded here, because image
    decoders (libpng, libjpeg, libheif, libavif...) are native code fed by a stranger too."""
    from codec.core.images import load_image

    return load_image(path, max_pixels=codec.max_pixels)


@gpu
def encode_and_decode(codec, image, target_bpp: float, progress=None):
    """Encode at the largest rate <= target_bpp, then decode that file: (EncodeResult, DecodeResult)."""
    progress = progress or (lambda *args, **kwargs: None)

    def report(lo: float, hi: float, verb: str):
        return lambda stage, fraction: progress(lo + (hi - lo) * fraction, desc=f"{verb}: {stage}")

    res = codec.encode(image, target_bpp=target_bpp, progress=report(0.0, 0.35, "Encoding"))
    dec = codec.decode(res.data, intermediates=False, progress=report(0.35, 0.7, "Decoding"))
    return res, dec


@gpu
def trajectory(codec, data: bytes, progress=None):
    """The strip of x0 predictions, one per denoising step (views.trajectory_strip bounds its size).
    A file that says t = 0 is decoded without denoising: its strip is the one decoded image, so
    labelled."""
    report = (lambda stage, f: progress(f, desc=f"Trajectory: {stage}")) if progress else None
    result = codec.decode(data, intermediates=True, progress=report)
    return views.trajectory_strip(result.intermediates or [(0, result.image)])


@gpu
def decode(codec, data: bytes):
    """The header fields (validated before anything is decoded) and the DecodeResult."""
    fields = codec.info(data)
    return fields, codec.decode(data, intermediates=False)


@gpu
def naive_baseline(codec, image, target_bpp: float):
    """Naive latent quantization with this codec's backbone (codec.evaluate.baselines)."""
    from codec.evaluate.baselines import encode_at_bpp

    return encode_at_bpp(image, "naive", target_bpp, backbone=codec.backbone)
