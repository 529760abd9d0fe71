"""The analytic adapter's transform: a rotation across latent channels (the image's own KLT) and an
orthonormal 8x8 block DCT of each rotated channel, with the coefficients grouped into frequency
bands. Both are orthonormal, so a uniform quantization step in the coefficients is the same step,
and the same squared error, in the latent.

Coefficients stay in the latent's layout: each B x B block of a channel holds that block's DCT
coefficients (row u, column v), so a band map of one block, tiled, labels every coefficient.
"""

from __future__ import annotations

import functools
import math

import torch

BLOCK = 8  # the largest block side; latents of images padded to 64 pixels are multiples of 8 at /8
BANDS_PER_OCTAVE = 2  # of radial frequency sqrt(u^2 + v^2) within a block


def block_size(height: int, width: int) -> int:
    """The largest power-of-two block side up to BLOCK that tiles a latent of this size."""
    return next(b for b in (BLOCK, 4, 2, 1) if height % b == 0 and width % b == 0)


@functools.cache
def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: coefficients = D @ x for a length-n signal x (cached: do not
    modify it in place)."""
    k = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (k[None, :] + 0.5) * k[:, None] / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def block_dct(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The B x B block DCT (or its inverse) of every channel of a (1, C, h, w) tensor, in place of each block."""
    _, channels, height, width = x.shape
    b = block_size(height, width)
    d = dct_matrix(b).to(x.dtype)
    if inverse:
        d = d.T
    blocks = x.reshape(1, channels, height // b, b, width // b, b).transpose(3, 4)  # (.., rows, cols, u, v)
    return (d @ blocks @ d.T).transpose(3, 4).reshape(x.shape)


@functools.cache
def block_bands(b: int) -> torch.Tensor:
    """The band of each coefficient of a b x b block: BANDS_PER_OCTAVE bands per octave of radial
    frequency, numbered 0 (the DC coefficient) upwards without gaps (cached: every encode and
    decode asks several times, and torch.unique costs 0.3 ms; do not modify it in place)."""
    u, v = torch.meshgrid(torch.arange(b), torch.arange(b), indexing="ij")
    octave = torch.floor(BANDS_PER_OCTAVE * torch.log2(1.0 + torch.sqrt((u * u + v * v).double()))).long()
    return torch.unique(octave, return_inverse=True)[1]


def band_count(height: int, width: int) -> int:
    return int(block_bands(block_size(height, width)).max()) + 1


def band_map(height: int, width: int) -> torch.Tensor:
    """The band of every coefficient of an h x w channel (the block's bands, tiled)."""
    b = block_size(height, width)
    return block_bands(b).repeat(height // b, width // b)


def channel_rotation(y: torch.Tensor) -> torch.Tensor:
    """The KLT of the latent's channels: the eigenvectors of their covariance over the image (columns,
    the strongest first), so that rotated channels are uncorrelated and most energy is in the first.
    Signs are fixed (each column sums to >= 0, then the last flips if needed for det = +1), so that
    every LAPACK gives the same file and the matrix is a rotation `rotation_angles` can express."""
    centred = (y - y.mean(dim=(0, 2, 3), keepdim=True)).reshape(y.shape[1], -1).double()
    _, vectors = torch.linalg.eigh(centred @ centred.T / centred.shape[1])
    vectors = vectors.flip(1)
    vectors = vectors * torch.where(vectors.sum(0) < 0, -1.0, 1.0)
    if torch.linalg.det(vectors) < 0:
        vectors[:, -1] = -vectors[:, -1]
    return vectors


def _pairs(channels: int) -> list[tuple[int, int]]:
    return [(j, i) for j in range(channels - 1) for i in range(j + 1, channels)]


def _givens(channels: int, j: int, i: int, angle: float) -> torch.Tensor:
    """The rotation by `angle` in the plane of axes j and i (rows j and i: [c s; -s c])."""
    g = torch.eye(channels, dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    g[j, j], g[j, i], g[i, j], g[i, i] = c, s, -s, c
    return g


def rotation_angles(rotation: torch.Tensor) -> list[float]:
    """C(C-1)/2 Givens angles in [-pi, pi] with rotation_from_angles(angles) == rotation, for a rotation
    (det +1): each zeroes one entry below the diagonal, column by column, leaving the identity."""
    rest, angles = rotation.double().tolist(), []
    for j, i in _pairs(rotation.shape[0]):
        angle = math.atan2(rest[i][j], rest[j][j])
        c, s = math.cos(angle), math.sin(angle)
        # rest = _givens(j, i, angle) @ rest on Python floats (rows j and i change): 0.02 ms instead
        # of 0.2 ms of small torch calls
        row_j, row_i = rest[j], rest[i]
        rest[j] = [c * a + s * b for a, b in zip(row_j, row_i)]
        rest[i] = [c * b - s * a for a, b in zip(row_j, row_i)]
        angles.append(angle)
    return angles


def rotation_from_angles(angles, channels: int) -> torch.Tensor:
    """The C x C rotation of C(C-1)/2 Givens angles (exactly orthonormal, whatever the angles)."""
    rotation = torch.eye(channels, dtype=torch.float64)
    for (j, i), angle in zip(_pairs(channels), angles):
        rotation = rotation @ _givens(channels, j, i, float(angle)).T
    return rotation


def angle_count(channels: int) -> int:
    return channels * (channels - 1) // 2


def rotate(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Mix the channels of a (1, C, h, w) tensor: out[c] = sum_k matrix[c, k] x[k]."""
    return torch.einsum("ck,bkhw->bchw", matrix.to(x.dtype), x)
