"""The decoding trajectory the Compress tab shows: one tile per denoising step, and for a file that
says t = 0 (bitstream version 2: no denoising) the decoded image alone, labelled so."""

import pytest

from codec.core.backbone import build_tiny_backbone
from codec.core.diffusion_codec import DiffusionCodec
from tests.codec.conftest import make_tiny_codec
from tests.photos import photo
from ui import views, worker

TILE_H = 160  # views.trajectory_strip's default tile height


@pytest.fixture(scope="module")
def codec():
    return DiffusionCodec(build_tiny_backbone(seed=0), mode="analytic")


def _tiles(strip) -> int:
    """Tiles in a strip: runs of columns that are not white from top to bottom of the tile area
    (the tiles are separated by white gaps)."""
    pixels = strip.convert("RGB").load()
    filled = [any(pixels[x, y] != (255, 255, 255) for y in range(TILE_H)) for x in range(strip.width)]
    return sum(1 for x in range(strip.width) if filled[x] and (x == 0 or not filled[x - 1]))


def test_a_file_without_denoising_shows_its_decoded_image_as_the_only_tile(codec):
    image = photo("kite", width=96)
    finest = codec.encode(image, step=0.05)  # the finest analytic step
    assert finest.t == 0, "the finest analytic step should leave less noise than t = 1"
    strip = worker.trajectory(codec, finest.data)
    assert _tiles(strip) == 1
    assert strip.getpixel((1, 1)) == views.HIGHLIGHT  # the starting point, as for any file
    # several steps need t > 1: the learned mode (the tiny latent's analytic error never exceeds step 1's noise)
    learned = make_tiny_codec()
    coarse = learned.encode(image, lam=1.0)
    assert coarse.t > 1 and coarse.steps > 1
    assert _tiles(worker.trajectory(learned, coarse.data)) == min(coarse.steps, views.MAX_FRAMES)
