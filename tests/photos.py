"""The few real photos the tests use, kept in the repository (tests/data/photos, credited in its
CREDITS.md) so that a clone passes its own tests."""

from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"


def photo(name: str, width: int | None = None) -> Image.Image:
    """Photo `name` (file name without .png) as RGB, resized to `width` (aspect kept) if given."""
    with Image.open(PHOTOS / f"{name}.png") as f:
        im = f.convert("RGB")
    if width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    return im
