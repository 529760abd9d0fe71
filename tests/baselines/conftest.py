import pytest
from PIL import Image

from tests.photos import photo


@pytest.fixture(scope="session")
def bee() -> Image.Image:
    """384 x 288: every Pillow codec can go below 0.1 bpp on it (JPEG's floor is 0.08)."""
    return photo("bee", 384)
