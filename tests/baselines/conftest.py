from pathlib import Path

import pytest
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos"


def photo(name: str, width: int | None = None) -> Image.Image:
    im = Image.open(PHOTOS / f"{name}.png").convert("RGB")
    if width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    return im


@pytest.fixture(scope="session")
def bee() -> Image.Image:
    """384 x 288: every Pillow codec can go below 0.1 bpp on it (JPEG's floor is 0.08)."""
    return photo("bee", 384)
