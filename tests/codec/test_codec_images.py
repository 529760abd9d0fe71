"""Every odd image kind is accepted correctly or refused with a clear message."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from codec.core.images import ImageError, crop, load_image, pad_to_multiple, to_tensor


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture()
def rgb():
    """A smooth image, so that lossy formats stay close to it."""
    yy, xx = np.mgrid[0:40, 0:60]
    return Image.fromarray(np.stack([xx * 4, yy * 6, 255 - xx * 4], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}),
                                    ("AVIF", {"quality": 90}), ("HEIF", {"quality": 90}), ("TIFF", {}), ("BMP", {})])
def test_common_formats_open_as_rgb8_with_the_right_size(rgb, fmt, kw):
    im = load_image(_encode(rgb, fmt, **kw))
    assert im.mode == "RGB" and im.size == (60, 40)
    tolerance = 0 if fmt in ("PNG", "WEBP", "TIFF", "BMP") else 8
    assert np.abs(np.asarray(im, dtype=int) - np.asarray(rgb, dtype=int)).mean() <= tolerance


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    im = load_image(_encode(rgba, "PNG"))
    assert im.getpixel((1, 1)) == (255, 255, 255) and im.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency_and_grayscale_alpha():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 1), 1)
    im = load_image(_encode(pal, "PNG", transparency=0))
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((1, 1)) == (200, 100, 50)
    la = Image.new("LA", (3, 3), (80, 255))
    assert load_image(_encode(la, "PNG")).getpixel((0, 0)) == (80, 80, 80)


def test_16_bit_grayscale_keeps_its_top_byte():
    arr = np.full((5, 7), 0xABCD, dtype=np.uint16)
    im16 = Image.fromarray(arr)
    im = load_image(_encode(im16, "PNG"))
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (0xAB, 0xAB, 0xAB)


def test_cmyk_jpeg_and_grayscale():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = load_image(_encode(cmyk, "JPEG", quality=95)).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60
    assert load_image(_encode(Image.new("L", (5, 5), 77), "PNG")).getpixel((2, 2)) == (77, 77, 77)


def test_exif_orientation_is_applied(rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im = load_image(_encode(rgb, "JPEG", exif=exif.tobytes()))
    assert im.size == (40, 60)


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).getpixel((3, 3)) == (255, 0, 0)


def _png_claiming(width, height) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's calling card."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError, match="limit is 1,000 pixels"):
        load_image(_png_claiming(20_000, 20_000), max_pixels=1000)  # under Pillow's own bomb limit
    with pytest.raises(ImageError, match="limit is 100 pixels"):
        load_image(_encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=100)


def test_the_bomb_message_quotes_the_limit_it_was_given():
    """A header over Pillow's bomb threshold is refused by Pillow before its size is known; the
    message still quotes the caller's limit, not Pillow's or the default."""
    with pytest.raises(ImageError, match=r"bomb.*the limit is 2,359,296 pixels \(about 1536x1536\)") as info:
        load_image(_png_claiming(100_000, 100_000), max_pixels=1536 * 1536)
    assert "16.8" not in str(info.value) and f"{4096 * 4096:,}" not in str(info.value)


def test_a_size_just_over_the_limit_never_reads_as_equal():
    with pytest.raises(ImageError) as info:
        load_image(_png_claiming(1537, 1536), max_pixels=1536 * 1536)
    message = str(info.value)
    assert "1537x1536 = 2,360,832 pixels; the limit is 2,359,296 pixels" in message, message


@pytest.mark.parametrize("payload,message", [
    (b"hello, not an image", "Not an image"),
    (b"", "Not an image"),
])
def test_non_images_are_refused(payload, message):
    with pytest.raises(ImageError, match=message):
        load_image(payload)


def test_truncated_image_is_refused(rgb):
    with pytest.raises(ImageError, match="damaged or truncated"):
        data = _encode(rgb, "PNG")
        load_image(data[: len(data) // 2])


def test_missing_file_and_bad_arrays(tmp_path):
    with pytest.raises(ImageError, match="No such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))


@pytest.mark.parametrize("size", [(1, 1), (63, 65), (130, 7)])
def test_pad_and_crop_restore_the_exact_size(size):
    x = to_tensor(Image.new("RGB", size, (10, 20, 30)))
    padded = pad_to_multiple(x, 64)
    assert padded.shape[-1] % 64 == 0 and padded.shape[-2] % 64 == 0
    assert torch.equal(crop(padded, size[1], size[0]), x)
