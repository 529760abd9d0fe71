import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as reference_ms_ssim

from codec.evaluate import metrics
from codec.evaluate.metrics import MetricUnavailable, ms_ssim, msssim_scales, psnr

C1 = (0.01 * 255) ** 2


def const(h, w, value):
    return np.full((h, w, 3), value, np.uint8)


def test_psnr_by_hand():
    a = const(20, 30, 100)
    b = a.copy()
    assert psnr(a, b) == float("inf")
    b[:10] += 3  # half the pixels off by 3: MSE = 4.5
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 4.5), abs=1e-9)
    assert psnr(Image.fromarray(a), Image.fromarray(const(20, 30, 110))) == pytest.approx(10 * np.log10(255**2 / 100))


@pytest.mark.parametrize(("size", "scales"), [(161, 5), (160, 4), (81, 4), (80, 3), (41, 3), (21, 2), (11, 1)])
def test_number_of_scales(size, scales):
    assert msssim_scales(size, 1000) == msssim_scales(1000, size) == scales


@pytest.mark.parametrize(("size", "scales"), [(256, 5), (176, 5), (160, 4), (96, 4), (64, 3), (32, 2), (16, 1)])
def test_ms_ssim_of_flat_images_by_hand(size, scales):
    # Flat images: every contrast-structure term is 1, so MS-SSIM = luminance ** (last weight).
    # (Sizes divisible by 16, so that no downsampling pads the border with zeros.)
    assert msssim_scales(size, size + 16) == scales
    weights = np.array(metrics.MSSSIM_WEIGHTS[:scales])
    if scales < 5:
        weights = weights / weights.sum()
    luminance = (2 * 10 * 40 + C1) / (10**2 + 40**2 + C1)  # dark values keep float32 variances exact
    value = ms_ssim(const(size, size + 16, 10), const(size, size + 16, 40))
    assert value == pytest.approx(luminance ** weights[-1], abs=1e-5)
    assert ms_ssim(const(size, size + 16, 100), const(size, size + 16, 100)) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_equals_pytorch_msssim_from_161_px():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (170, 190, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    x, y = (torch.from_numpy(v).permute(2, 0, 1)[None].float() for v in (a, b))
    assert ms_ssim(a, b) == pytest.approx(float(reference_ms_ssim(x, y, data_range=255)), abs=1e-6)
    assert 0 < ms_ssim(a, b) < 1


def test_ms_ssim_on_small_images_orders_quality():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 57, 3), dtype=np.uint8)  # 2 scales
    slight = np.clip(a.astype(int) + rng.integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(a.astype(int) + rng.integers(-80, 81, a.shape), 0, 255).astype(np.uint8)
    assert 1 > ms_ssim(a, slight) > ms_ssim(a, heavy) > 0


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="differ in size"):
        psnr(const(10, 12, 0), const(12, 10, 0))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        psnr(np.zeros((10, 10, 3)), np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        ms_ssim(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="at least 11 px"):
        ms_ssim(const(10, 50, 0), const(10, 50, 0))


def test_perceptual_metrics_are_unavailable_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    a, b = const(300, 300, 10), const(300, 300, 20)
    for name in metrics.WEIGHT_FILES:
        assert not metrics.available(name)
        with pytest.raises(MetricUnavailable, match=name.upper()) as err:
            metrics.PER_IMAGE[name].fn(a, b) if name in metrics.PER_IMAGE else metrics.PER_SET[name].fn([a], [b])
        assert str(tmp_path) in str(err.value)
    assert not any(tmp_path.rglob("*.pth"))  # and nothing was downloaded


def test_patches_follow_the_shifted_grid():
    tiles = metrics.patches(const(512, 768, 0))
    assert len(tiles) == 2 * 3 + 1 * 2  # 256-px grid, then the grid shifted by 128 px
    assert all(t.shape == (256, 256, 3) for t in tiles)
    assert metrics.patches(const(200, 300, 0)) == []


@pytest.mark.slow
def test_lpips_runs_from_a_local_weights_file(tmp_path, monkeypatch):
    """The loading path only: a randomly initialised AlexNet stands in for the real file."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "hub" / "checkpoints" / metrics.WEIGHT_FILES["lpips"])
    assert metrics.available("lpips")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert metrics.lpips(a, a) == 0.0
    assert metrics.lpips(a, 255 - a) > 0.0
