"""Realism without pretrained weights: the sliced Wasserstein distance (SWD) between the
distributions of local neighbourhoods of two images, level by level of a Laplacian pyramid.

Karras et al., "Progressive Growing of GANs for Improved Quality, Stability, and Variation",
ICLR 2018, section 5.1: 7 x 7 x 3 neighbourhoods from every level of a Laplacian pyramid, from the
full resolution down to 16 px, each level's descriptors normalised per colour channel, then the
sliced Wasserstein distance over 512 random unit directions (the 1-D Wasserstein distance of
the sorted projections, averaged), reported x 1e3 per level and averaged over the levels.

Two choices differ from the GAN protocol because here two single images are compared, not two
sets of thousands of images (docs/metrics.md says why and what the number means):

* Both descriptor sets are normalised with the *original's* per-channel mean and standard
  deviation (at least `MIN_STD`). The GAN code normalises each set by its own statistics, which
  cancels a uniform loss of contrast in a band -- exactly what blur and coarse quantisation do to
  the fine levels.
* Instead of 128 random neighbourhoods per image, up to `MAX_DESCRIPTORS` per level: every
  position when there are fewer, else a fixed-seed sample without replacement, the same
  positions in both images when they have the same size. Random directions come from a
  fixed-seed generator too, so the number is reproducible and identical images give 0.

Cost is bounded by the settings, not by the image: per level at most MAX_DESCRIPTORS x 147
descriptor values per image, one (descriptors x 147) @ (147 x DIRECTIONS) product and a sort of
the projections; the pyramid is linear in the pixel count (which the caller bounds).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve1d

NEIGHBOURHOOD = 7  # px a side
DIRECTIONS = 512  # Karras et al.: 4 repeats x 128
COARSEST = 16  # px on the short side of the last pyramid level
MAX_DESCRIPTORS = 4096  # per level and image
SEED = 2018
SCALE = 1e3  # the published numbers are SWD x 10^3
# The normalising standard deviation is at least one grey level, so that a nearly flat band (a
# clear sky's fine detail) does not magnify differences too small to see into large distances.
MIN_STD = 1.0

# The 5-tap binomial kernel of Burt & Adelson's pyramid (cv2.pyrDown/pyrUp), applied separably.
_KERNEL = np.array([1, 4, 6, 4, 1], np.float32) / 16


class ImageTooSmall(ValueError):
    """The short side is under COARSEST px: not even one pyramid level."""


def _blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    # 'mirror' reflects about the edge pixel without repeating it (OpenCV's BORDER_REFLECT_101).
    k = _KERNEL * gain
    return convolve1d(convolve1d(x, k, axis=-1, mode="mirror"), k, axis=-2, mode="mirror")


def _up(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Zero-insertion upsampling to ``shape`` then the kernel (x2 per axis to keep the mean)."""
    up = np.zeros(x.shape[:-2] + shape[-2:], np.float32)
    up[..., ::2, ::2] = x
    return _blur(up, gain=2.0)


def pyramid_levels(height: int, width: int) -> int:
    """How many levels fit: halving the short side until it would drop below COARSEST px."""
    levels, short = 0, min(height, width)
    while short >= COARSEST:
        levels += 1
        short //= 2
    return levels


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """CHW float32 -> band-pass levels, finest first; the last level is the low-pass residual."""
    pyramid = [image.astype(np.float32)]
    for _ in range(levels - 1):
        fine = pyramid[-1]
        coarse = _blur(fine)[..., ::2, ::2]
        pyramid[-1] = fine - _up(coarse, fine.shape)
        pyramid.append(coarse)
    return pyramid


def _positions(shape: tuple, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of ``count`` neighbourhoods inside a level of ``shape`` (C, H, W)."""
    rows, cols = shape[-2] - NEIGHBOURHOOD + 1, shape[-1] - NEIGHBOURHOOD + 1
    flat = np.arange(rows * cols) if count == rows * cols else rng.choice(rows * cols, count, replace=False)
    return flat // cols, flat % cols


def _descriptors(level: np.ndarray, where: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(level, (NEIGHBOURHOOD, NEIGHBOURHOOD), axis=(-2, -1))
    picked = windows[:, where[0], where[1]]  # (C, N, 7, 7)
    return np.ascontiguousarray(picked.transpose(1, 0, 2, 3))  # (N, C, 7, 7)


def _sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Mean over unit directions of the 1-D Wasserstein-1 distance between equal-size samples."""
    # (directions x descriptors), sorted along contiguous rows: ~3x faster than along columns.
    pa = np.sort(directions.T @ a.reshape(len(a), -1).T, axis=1)
    pb = np.sort(directions.T @ b.reshape(len(b), -1).T, axis=1)
    return float(np.mean(np.abs(pa - pb)))


def swd_per_level(original: np.ndarray, other: np.ndarray, *, max_descriptors: int = MAX_DESCRIPTORS,
                  directions: int = DIRECTIONS, seed: int = SEED) -> list[float]:
    """SWD x 1e3 at each pyramid level (finest first) between two uint8 H x W x 3 images.

    The images may differ in size (it compares distributions); the levels are those both have.
    Deterministic: the same inputs and settings always give the same numbers.
    """
    shapes = original.shape[:2], other.shape[:2]
    levels = min(pyramid_levels(*s) for s in shapes)
    if levels == 0:
        raise ImageTooSmall(f"SWD needs images at least {COARSEST} px on each side, got "
                            + " and ".join(f"{w}x{h}" for h, w in shapes))
    rng = np.random.default_rng(seed)
    pyr_a = laplacian_pyramid(original.transpose(2, 0, 1), levels)
    pyr_b = laplacian_pyramid(other.transpose(2, 0, 1), levels)
    out = []
    for la, lb in zip(pyr_a, pyr_b):
        available = [(lv.shape[-2] - NEIGHBOURHOOD + 1) * (lv.shape[-1] - NEIGHBOURHOOD + 1) for lv in (la, lb)]
        count = min(max_descriptors, *available)
        where_a = _positions(la.shape, count, rng)
        where_b = where_a if la.shape == lb.shape else _positions(lb.shape, count, rng)
        da, db = _descriptors(la, where_a), _descriptors(lb, where_b)
        # Per-channel normalisation with the original's statistics, for both sets.
        mean = da.mean(axis=(0, 2, 3), keepdims=True)
        std = np.maximum(da.std(axis=(0, 2, 3), keepdims=True), MIN_STD)
        da, db = (da - mean) / std, (db - mean) / std
        dirs = rng.standard_normal((da[0].size, directions)).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        out.append(SCALE * _sliced_wasserstein(da, db, dirs))
    return out


def swd(original: np.ndarray, other: np.ndarray, **settings) -> float:
    """SWD x 1e3 averaged over the pyramid levels (lower is better; 0 for identical images)."""
    return float(np.mean(swd_per_level(original, other, **settings)))
