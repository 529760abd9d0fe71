"""Safe image loading and normalisation, and the padding/cropping the codec needs.

Everything Pillow (plus pillow-heif for HEIC/AVIF) can open becomes an 8-bit RGB image with
EXIF orientation applied and alpha composited on white. Size limits are checked from the header,
before any pixel is decoded, so a decompression bomb never allocates its pixels.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

import pillow_heif

pillow_heif.register_heif_opener()

# The largest image file read at all (a decompression-bomb bound on the file's own size). What the
# codec then processes is bounded separately, by the padded area (bitstream.DEFAULT_MAX_PIXELS).
MAX_SOURCE_PIXELS = 4096 * 4096
NOT_AN_IMAGE = "Not an image this app can read (supported: PNG, JPEG, WebP, AVIF, HEIC, TIFF, BMP, GIF)."


class ImageError(ValueError):
    """An image that cannot be used, with a message meant for a person."""


def load_image(source, max_pixels: int = MAX_SOURCE_PIXELS) -> Image.Image:
    """Open `source` (path, bytes, file object, PIL image or HxWx3 uint8 array) as 8-bit RGB."""
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return to_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise ImageError(f"No such image file: {source}")
    with warnings.catch_warnings():
        # Pillow's own bomb check warns at half the limit and raises at the limit; ours is stricter
        # and is applied before decoding, so silence its warning and turn its error into ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as im:
                _check_size(im.size, max_pixels)
                im.seek(0)  # first frame of animations (GIF, APNG, WebP)
                im.load()
                return to_rgb(im)
        except ImageError:
            raise
        except Image.DecompressionBombError:
            # Pillow refuses before telling the size; its threshold is the most we can say.
            raise ImageError(
                f"The image is far too large: its header declares over {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a possible "
                f"decompression bomb); the limit is {_limit(max_pixels)}."
            ) from None
        except UnidentifiedImageError:
            raise ImageError(NOT_AN_IMAGE) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"The image file is damaged or truncated ({exc}).") from None


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError("The image is empty (0 pixels).")
    if width * height > max_pixels:
        raise ImageError(f"The image is {width}x{height} = {width * height:,} pixels; the limit is {_limit(max_pixels)}. "
                         "Please downscale it first.")


def _limit(max_pixels: int) -> str:
    """The limit as configured, in exact pixels: rounded megapixels would make 1537x1536 (2,360,832
    pixels) read as equal to a limit of 2,359,296 ("2.4; the limit is 2.4")."""
    side = int(max_pixels**0.5)
    return f"{max_pixels:,} pixels (about {side}x{side})"


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f"Expected an HxWx3 image array, got shape {array.shape}.")
    if array.dtype != np.uint8:
        raise ImageError(f"Expected a uint8 image array, got {array.dtype}.")
    _check_size((array.shape[1], array.shape[0]), max_pixels)
    return to_rgb(Image.fromarray(array))


def to_rgb(im: Image.Image) -> Image.Image:
    """EXIF orientation, alpha on white, and every mode (L, LA, P, CMYK, I;16, I, F, YCbCr...) to RGB8.
    An upright RGB8 image is returned as it is (exif_transpose copied it: 0.25 ms per 768x512 encode)."""
    if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: keep the top 8 bits instead of Pillow's clipping conversion.
        arr = np.asarray(im, dtype=np.int64)
        shift = 8 if arr.max(initial=0) > 255 else 0
        im = Image.fromarray((arr >> shift).clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        im = Image.fromarray((arr * scale).clip(0, 255).round().astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> 1x3xHxW float32 tensor in [-1, 1]."""
    # Converted to float by torch, in place: 3x faster than numpy's float copy and two new tensors.
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).unsqueeze(0).float().div_(127.5).sub_(1.0)


def to_pil(x: torch.Tensor) -> Image.Image:
    """1x3xHxW tensor in [-1, 1] -> RGB PIL image (rounded, clamped)."""
    # In place on clamp's copy, and made contiguous before PIL sees it (PIL copies a strided array
    # pixel by pixel): 4x faster than new tensors at every step.
    arr = x[0].detach().float().cpu().clamp(-1, 1).add_(1.0).mul_(127.5).round_().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy(), "RGB")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom/right of a NCHW tensor to a multiple of `multiple` by edge reflection.

    Reflection keeps the padded border statistically like the image, which costs fewer bits than
    zeros; tiny images that are shorter than the pad fall back to edge replication.
    """
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x[..., :height, :width]
