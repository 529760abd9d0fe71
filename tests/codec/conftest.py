import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec.core.adapters.learned import LearnedAdapter
from codec.core.backbone import build_tiny_backbone
from codec.core.diffusion_codec import DiffusionCodec
from tests.photos import photo as photo_named



@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A real photo crop with an odd size (not a multiple of 8 or 64)."""
    return photo_named("kite").crop((100, 60, 100 + 150, 60 + 101))


# The untrained learned adapter, stored once (tests/codec/data/README.md): prepare() refits its
# quantiles by bisection in float arithmetic, which lands on other floats on a CPU whose vector
# kernels round otherwise, and the fingerprint that stored files carry hashes those floats.
TINY_LEARNED_ADAPTER = Path(__file__).parent / "data" / "tiny-learned"


def make_tiny_codec() -> DiffusionCodec:
    """Tiny random backbone + the stored untrained (but prepared) learned adapter: real bitstreams,
    meaningless pixels.

    Seeded and stored, so separate processes and machines build identical models (the determinism
    test and the stored files rely on it).
    """
    return DiffusionCodec(build_tiny_backbone(seed=0), LearnedAdapter.from_pretrained(TINY_LEARNED_ADAPTER))


@pytest.fixture(scope="session")
def tiny_codec() -> DiffusionCodec:
    return make_tiny_codec()


@pytest.fixture()
def noise_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' case counts and their slowest and largest case (tests/codec/test_codec_fuzz.py)."""
    fuzz = sys.modules.get("tests.codec.test_codec_fuzz")
    if fuzz is not None and fuzz.STATS.cases:
        for line in fuzz.STATS.lines():
            terminalreporter.write_line(line)
