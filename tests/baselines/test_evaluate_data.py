"""Evaluation datasets (codec/data/datasets.py): a folder, a glob, a list file; crops; typed errors."""

from __future__ import annotations

import pytest
from PIL import Image

from codec.data import datasets
from codec.data.photos import DataError

from tests.photos import photo


@pytest.fixture
def tree(tmp_path):
    """data/a.png, data/b.jpg, data/notes.txt, data/sub/a.png (the same file name in a sub-folder)."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    small = photo("kite", 64)
    small.save(data / "a.png")
    small.save(data / "b.jpg")
    small.save(data / "sub" / "a.png")
    (data / "notes.txt").write_text("not an image")
    return data


def names(files):
    return [f.name for f in files]


def test_a_folder_lists_its_images_sorted_without_sub_folders(tree):
    assert names(datasets.list_images(tree)) == ["a.png", "b.jpg"]
    assert names(datasets.list_images(tree, max_images=1)) == ["a.png"]


def test_a_glob_names_images_relative_to_its_folder_part(tree):
    files = datasets.list_images(f"{tree}/**/*.png")
    assert names(files) == ["a.png", "sub/a.png"]
    assert files[1].path == tree / "sub" / "a.png"


def test_a_list_file_keeps_its_order_and_skips_comments(tree, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# COCO-style list\nsub/a.png\n\nb.jpg\n")
    assert names(datasets.list_images(tree, str(listing))) == ["sub/a.png", "b.jpg"]
    assert names(datasets.list_images(tree, "b.jpg,a.png")) == ["b.jpg", "a.png"]


@pytest.mark.parametrize("listed, message", [
    ("missing.png", "not in"), ("../a.png", "without '..'"), ("/etc/passwd", "without '..'"),
    ("a.png,a.png", "twice"),
])
def test_bad_lists_are_data_errors(tree, listed, message):
    with pytest.raises(DataError, match=message):
        datasets.list_images(tree, listed)


def test_empty_or_missing_data_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        datasets.list_images(tmp_path / "none")
    with pytest.raises(DataError, match="no images"):
        datasets.list_images(tmp_path)
    with pytest.raises(DataError, match="no images"):
        datasets.list_images(f"{tmp_path}/**/*.png")
    with pytest.raises(DataError, match=r"list\.txt"):
        datasets.list_images(tmp_path, str(tmp_path / "list.txt"))


def test_resize_then_centre_crop_the_coco_protocol():
    image = Image.new("RGB", (640, 480))
    image.paste((255, 0, 0), (0, 0, 60, 480))  # a red band on the left, cropped away
    out = datasets.prepare(image, resize=256, crop=datasets.parse_size("256"))
    assert out.size == (256, 256)
    assert out.getpixel((0, 128))[0] < 30  # the band (60 of 640 px -> 32 of 341) lies left of the crop (from 42)
    assert datasets.prepare(image, resize=240).size == (320, 240)
    assert datasets.prepare(image, crop=(100, 50)).size == (100, 50)
    with pytest.raises(DataError, match="cannot crop"):
        datasets.prepare(image, crop=(700, 10))


@pytest.mark.parametrize("text", ["0", "x", "12x", "3x4x5", "-2"])
def test_bad_sizes(text):
    with pytest.raises(DataError):
        datasets.parse_size(text)


def test_an_unreadable_image_is_a_data_error(tree):
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    broken = next(f for f in datasets.list_images(tree) if f.name == "broken.png")
    with pytest.raises(DataError, match="broken.png"):
        datasets.load(broken)


def test_images_load_as_the_codec_reads_them_heic_and_exif_orientation(tmp_path):
    """Every format the codec takes is listed and loaded the codec's way: a HEIC file, and a JPEG whose
    EXIF orientation says "rotate 90" (loaded upright, as the codec would encode it)."""
    import pillow_heif

    data = tmp_path / "data"
    data.mkdir()
    small = photo("kite", 64)
    pillow_heif.from_pillow(small).save(data / "c.heic", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    small.save(data / "d.jpg", exif=exif)
    files = datasets.list_images(data)
    assert names(files) == ["c.heic", "d.jpg"]
    heic, rotated = (datasets.load(f) for f in files)
    assert heic.size == small.size and heic.mode == "RGB"
    assert rotated.size == (small.height, small.width)
