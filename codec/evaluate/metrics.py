"""Image-quality metrics on 8-bit RGB images (PIL images or uint8 H x W x 3 arrays of one size).

PSNR, MS-SSIM and SWD (a realism measure without pretrained weights, codec/evaluate/realism.py)
always run. LPIPS, DISTS, FID and KID need pretrained network weights that no package ships;
they run only when those files are already on disk (torch's hub cache,
``$TORCH_HOME/hub/checkpoints``, where torchvision and torch-fidelity look for them) and raise
`MetricUnavailable` otherwise: no download is attempted and no number is ever made up.

`PER_IMAGE` and `PER_SET` are the registry the evaluation and the Compress table read: each
metric's function, label, compressai JSON key and direction. docs/metrics.md says what each
measures and how to read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

from codec.evaluate import realism

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as pytorch_msssim
_WIN_SIZE = 11

# The pretrained files each perceptual metric needs, under torch.hub.get_dir()/checkpoints.
WEIGHT_FILES = {
    "lpips": "alexnet-owt-7be5be79.pth",  # torchvision AlexNet; the LPIPS heads ship with `lpips`
    "dists": "vgg16-397923af.pth",  # torchvision VGG16; the DISTS alpha/beta ship with DISTS_pytorch
    "fid": "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity's InceptionV3
    "kid": "weights-inception-2015-12-05-6726825d.pth",
}


class MetricUnavailable(RuntimeError):
    """The metric's pretrained weights are not on this machine; report it as unavailable."""


class MetricUndefined(ValueError):
    """The metric has no value for these images (e.g. MS-SSIM on fewer than 11 px a side)."""


def as_uint8(image) -> np.ndarray:
    """A PIL image or uint8 H x W x 3 array -> uint8 H x W x 3 array (PIL images converted to RGB)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a PIL image or a uint8 HxWx3 array, got {arr.dtype} array of shape {arr.shape}")
    return arr


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_uint8(a), as_uint8(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
    return a, b


def _nchw(arr: np.ndarray) -> torch.Tensor:
    return torch.tensor(arr).permute(2, 0, 1)[None].float()  # a copy: PIL arrays are read-only


def psnr(a, b) -> float:
    """PSNR in dB over all pixels and channels (peak 255); inf for identical images."""
    a, b = _pair(a, b)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def msssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales fit: the coarsest must still be wider than the 11-px window."""
    short = min(height, width)
    scales = len(MSSSIM_WEIGHTS)
    while scales > 0 and short <= (_WIN_SIZE - 1) * 2 ** (scales - 1):
        scales -= 1
    if scales == 0:
        raise MetricUndefined(f"MS-SSIM needs images at least {_WIN_SIZE} px on each side, got {width}x{height}")
    return scales


def ms_ssim(a, b) -> float:
    """MS-SSIM on 0-255 RGB (as compressai's eval_model: pytorch_msssim, mean over channels).

    Images whose short side is at most 160 px cannot take the standard 5 scales (the coarsest
    would be smaller than the 11-px window). They get as many scales as fit (4 above 80 px, 3
    above 40, 2 above 20, 1 above 10) with the first weights renormalized to sum to one. From
    161 px up this is exactly pytorch_msssim.ms_ssim (whose weights sum to 1.0001).
    """
    a, b = _pair(a, b)
    x, y = _nchw(a), _nchw(b)
    scales = msssim_scales(*a.shape[:2])
    weights = torch.tensor(MSSSIM_WEIGHTS[:scales], dtype=x.dtype)
    if scales < len(MSSSIM_WEIGHTS):
        weights = weights / weights.sum()
    win = _fspecial_gauss_1d(_WIN_SIZE, 1.5).repeat([3, 1, 1, 1])
    factors = []
    for level in range(scales):
        ssim_per_channel, cs = _ssim(x, y, data_range=255, win=win, size_average=False, K=(0.01, 0.03))
        if level < scales - 1:
            factors.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_per_channel))
    value = torch.prod(torch.stack(factors, 0) ** weights.view(-1, 1, 1), dim=0)
    return float(value.mean())


def swd(a, b) -> float:
    """Sliced Wasserstein distance x 1e3 between the Laplacian-pyramid 7x7 neighbourhoods of the
    two images (Karras et al. 2018; codec/evaluate/realism.py), lower is better, 0 when identical.
    A distribution distance: the images may differ in size."""
    try:
        return realism.swd(as_uint8(a), as_uint8(b))
    except realism.ImageTooSmall as err:
        raise MetricUndefined(str(err)) from None


# ----------------------------------------------------------------------------------------------
# Metrics that need pretrained weights


def weights_path(metric: str) -> Path:
    """The local file ``metric`` needs; raises MetricUnavailable when it is not there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_FILES[metric]
    if not path.is_file():
        raise MetricUnavailable(
            f"{metric.upper()} is unavailable: its pretrained weights {path.name} are not in {path.parent} "
            "(copy them there, or set TORCH_HOME to a folder whose hub/checkpoints holds them)"
        )
    return path


def available(metric: str) -> bool:
    """Whether ``metric`` (a key of METRICS) can run here: always for those without weights."""
    if not METRICS[metric].needs_weights:
        return True
    try:
        weights_path(metric)
    except MetricUnavailable:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _lpips_net(path: Path):
    import lpips

    # pretrained=True loads the linear heads shipped inside the lpips package; torchvision finds
    # the AlexNet file in its hub cache (checked above), so nothing is downloaded.
    return lpips.LPIPS(net="alex", verbose=False).eval()


def lpips(a, b) -> float:
    """LPIPS (AlexNet, v0.1), lower is better."""
    net = _lpips_net(weights_path("lpips"))
    a, b = _pair(a, b)
    with torch.no_grad():
        return float(net(_nchw(a) / 127.5 - 1, _nchw(b) / 127.5 - 1).mean())


@functools.lru_cache(maxsize=None)
def _dists_net(path: Path):
    import DISTS_pytorch
    from DISTS_pytorch import DISTS

    net = DISTS(load_weights=False)  # its own loader looks in the wrong folder (sys.prefix)
    weights = torch.load(Path(DISTS_pytorch.__file__).parent / "weights.pt", map_location="cpu")
    net.alpha.data, net.beta.data = weights["alpha"], weights["beta"]
    return net.eval()


def dists(a, b) -> float:
    """DISTS (Ding et al. 2020), lower is better."""
    net = _dists_net(weights_path("dists"))
    a, b = _pair(a, b)
    with torch.no_grad():
        return float(net(_nchw(a) / 255, _nchw(b) / 255))


# FID and KID compare two sets of images. With a few images they are computed on patches (the
# HiFiC convention): non-overlapping 256 px tiles, then the same grid shifted by 128 px.
PATCH = 256


def patches(image) -> list[np.ndarray]:
    arr = as_uint8(image)
    h, w = arr.shape[:2]
    out = []
    for offset in (0, PATCH // 2):
        for top in range(offset, h - PATCH + 1, PATCH):
            for left in range(offset, w - PATCH + 1, PATCH):
                out.append(arr[top : top + PATCH, left : left + PATCH])
    return out


@functools.lru_cache(maxsize=None)
def _inception(path: Path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))


def _features(images, metric: str) -> torch.Tensor:
    net = _inception(weights_path(metric))
    tiles = [p for im in images for p in patches(im)]
    if len(tiles) < 2:
        raise ValueError(f"{metric.upper()} needs at least two {PATCH} px patches; the images are too few or too small")
    feats = []
    with torch.no_grad():
        for start in range(0, len(tiles), 32):
            batch = torch.from_numpy(np.stack(tiles[start : start + 32])).permute(0, 3, 1, 2).contiguous()
            feats.append(net(batch)[0].double())
    return torch.cat(feats)


def fid(originals, reconstructions) -> float:
    """Patch FID between two lists of images (torch-fidelity's InceptionV3 and formula)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    f1, f2 = _features(originals, "fid"), _features(reconstructions, "fid")
    result = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2), verbose=False)
    return float(result["frechet_inception_distance"])


def kid(originals, reconstructions, subsets: int = 100) -> float:
    """Patch KID (mean over subsets) between two lists of images, torch-fidelity's estimator."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    f1, f2 = _features(originals, "kid"), _features(reconstructions, "kid")
    size = min(1000, len(f1), len(f2))
    result = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=size, verbose=False)
    return float(result["kernel_inception_distance_mean"])


# ----------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # for tables and plot axes
    json_key: str  # the key in compressai's results JSON
    higher_is_better: bool
    needs_weights: bool  # pretrained files under torch.hub.get_dir()/checkpoints (WEIGHT_FILES)
    fn: Callable  # per image: fn(original, reconstruction); per set: fn(originals, reconstructions)


PER_IMAGE = {
    "psnr": Metric("psnr", "PSNR (dB)", "psnr-rgb", True, False, psnr),
    "ms_ssim": Metric("ms_ssim", "MS-SSIM", "ms-ssim-rgb", True, False, ms_ssim),
    "swd": Metric("swd", "SWD x1e3", "swd", False, False, swd),
    "lpips": Metric("lpips", "LPIPS", "lpips", False, True, lpips),
    "dists": Metric("dists", "DISTS", "dists", False, True, dists),
}
PER_SET = {
    "fid": Metric("fid", "patch FID", "fid", False, True, fid),
    "kid": Metric("kid", "patch KID", "kid", False, True, kid),
}
METRICS = {**PER_IMAGE, **PER_SET}
