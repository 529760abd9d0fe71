"""SWD (codec/evaluate/realism.py) on cases whose order is known in advance."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from codec.evaluate import metrics, realism
from tests.photos import photo


@pytest.fixture(scope="module")
def kite() -> np.ndarray:
    return np.asarray(photo("kite", 384))  # 384 x 256: five pyramid levels


def noisy(a: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)


def blurred(a: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius)))


def test_identical_images_score_zero_and_calls_repeat_exactly(kite):
    assert metrics.swd(kite, kite) == 0.0
    other = noisy(kite, 10)
    first = realism.swd_per_level(kite, other)
    assert len(first) == realism.pyramid_levels(256, 384) == 5
    assert realism.swd_per_level(kite, other) == first  # fixed seeds: bit for bit
    assert metrics.swd(Image.fromarray(kite), Image.fromarray(other)) == pytest.approx(np.mean(first))
    assert realism.swd(kite, other, seed=1) != realism.swd(kite, other)  # the seed is what fixes it


@pytest.mark.parametrize("name", ["kite", "storm"])
def test_blur_scores_worse_than_the_originals_own_crops(name):
    """Two crops of one photo, a few pixels apart, are the same picture seen twice: their SWD is
    the measure's floor of natural variation (sampling and a slightly different frame). A blurred
    crop must exceed it on average, and by far at the finest level, where blur removes detail.
    (Shifts of a tenth of the width move the coarse levels' content -- at 16 px a level is the
    layout -- and are no longer "the same picture"; docs/metrics.md.)"""
    image = np.asarray(photo(name, 384))
    width = image.shape[1] - 16
    crop = image[:, :width]
    for radius in (1.5, 3):
        blur = realism.swd_per_level(crop, blurred(crop, radius))
        for shift in (2, 8, 16):
            own = realism.swd_per_level(crop, image[:, shift:shift + width])
            assert np.mean(blur) > 1.5 * np.mean(own), (radius, shift)
            assert blur[0] > 4 * own[0], (radius, shift)
    assert realism.swd(crop, blurred(crop, 3)) > realism.swd(crop, blurred(crop, 1.5))


def test_rising_noise_gives_rising_swd(kite):
    scores = [metrics.swd(kite, noisy(kite, sigma)) for sigma in (0, 2, 5, 10, 20, 40)]
    assert scores[0] == 0.0
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_a_uniform_loss_of_contrast_counts(kite):
    """Normalising both sets with the original's statistics keeps the amplitude of each band:
    halving the contrast around the mean is no realistic picture of the original."""
    flat = (kite.astype(float) - kite.mean(axis=(0, 1))) * 0.5 + kite.mean(axis=(0, 1))
    assert metrics.swd(kite, np.clip(flat, 0, 255).round().astype(np.uint8)) > metrics.swd(kite, noisy(kite, 5))


def test_it_compares_distributions_not_pixels():
    """A texture and its mirror image have the same local statistics (up to the flip of each
    neighbourhood); a pixel metric sees a different image, SWD a similar one."""
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    other_draw = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # same distribution, new pixels
    assert metrics.psnr(texture, other_draw) < 10
    assert metrics.swd(texture, other_draw) < metrics.swd(texture, blurred(texture, 1))
    # Images of other sizes compare too (as distributions) over the levels both have.
    assert len(realism.swd_per_level(texture, other_draw[:32, :48])) == realism.pyramid_levels(32, 48) == 2


def test_cost_is_bounded_by_the_settings(kite, monkeypatch):
    seen = []
    real = realism._sliced_wasserstein
    monkeypatch.setattr(realism, "_sliced_wasserstein", lambda a, b, d: seen.append((len(a), d.shape)) or real(a, b, d))
    realism.swd(kite, noisy(kite, 5), max_descriptors=300, directions=64)
    # Levels 256x384 .. 16x24: capped at 300 where more positions exist, else every position.
    assert seen == [(300, (147, 64))] * 4 + [(10 * 18, (147, 64))]


def test_tiny_and_flat_images(kite):
    with pytest.raises(metrics.MetricUndefined, match="at least 16 px"):
        metrics.swd(kite[:15], kite[:15])
    assert metrics.swd(kite[:16, :16], kite[:16, :16]) == 0.0
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert metrics.swd(flat, flat) == 0.0
    # No detail to normalise by: differences count in grey levels (MIN_STD). One level brighter
    # moves only the low-pass level (the last of two): every descriptor by the all-ones vector,
    # whose projection on a random unit direction has mean size sqrt(2/pi) (for 147 dimensions).
    levels = realism.swd_per_level(flat, flat + 1)
    assert levels[0] == 0.0 and levels[1] == pytest.approx(1000 * np.sqrt(2 / np.pi), rel=0.03)
    assert np.isfinite(metrics.swd(flat, kite[:32, :32]))


def test_differences_below_a_grey_level_stay_small_on_smooth_images():
    """A smooth gradient has almost no fine detail (band deviations far below one grey level);
    rounding noise of +-1 must not be blown up by dividing by that deviation."""
    ramp = np.linspace(60, 70, 256)[None, :, None] + np.linspace(0, 5, 128)[:, None, None]
    smooth = np.repeat(ramp, 3, axis=2).round().astype(np.uint8)
    rng = np.random.default_rng(0)
    dithered = np.clip(smooth.astype(int) + rng.integers(-1, 2, smooth.shape), 0, 255).astype(np.uint8)
    assert 0 < metrics.swd(smooth, dithered) < 1000  # below one grey level on average


def test_the_pyramid_splits_by_frequency():
    """A pixel checkerboard (the Nyquist frequency, which the 1-4-6-4-1 kernel removes exactly)
    lives entirely in the finest band; a flat image entirely in the low-pass residual."""
    board = (np.indices((32, 48)).sum(axis=0) % 2 * 255).astype(np.float32)[None].repeat(3, 0)
    levels = realism.laplacian_pyramid(board, 3)
    assert [lv.shape for lv in levels] == [(3, 32, 48), (3, 16, 24), (3, 8, 12)]
    np.testing.assert_allclose(levels[0], board - 127.5, atol=1e-3)
    np.testing.assert_allclose(levels[1], 0, atol=1e-3)
    np.testing.assert_allclose(levels[2], 127.5, atol=1e-3)
    odd = realism.laplacian_pyramid(np.full((3, 37, 50), 7, np.float32), 3)
    assert [lv.shape for lv in odd] == [(3, 37, 50), (3, 19, 25), (3, 10, 13)]
    np.testing.assert_allclose(odd[0], 0, atol=1e-5)
    np.testing.assert_allclose(odd[1], 0, atol=1e-5)
    np.testing.assert_allclose(odd[2], 7, atol=1e-5)
