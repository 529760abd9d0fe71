"""Stable Diffusion 2.1's real architectures (865M-parameter UNet, 84M AutoencoderKL) with random
weights, written by `python -m codec.core.random_backbones` and loaded through the local-folder path:
the codec runs at SD's size on a CPU without a download. Small images keep the UNet calls short.
"""

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codec.core import images
from codec.core.backbone import load_backbone
from codec.core.denoise import denoise
from codec.core.diffusion_codec import DiffusionCodec
from tests.photos import photo

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _built(kind: str, tmp_path_factory):
    """The folder, written by the command in a process of its own (building SD's UNet peaks at 4.5 GB),
    and removed afterwards: 1.8 GB each, which pytest's kept temporary folders would pile up."""
    folder = tmp_path_factory.mktemp(kind) / "backbone"
    try:
        run = subprocess.run([sys.executable, "-m", "codec.core.random_backbones", kind, str(folder), "--dtype", "float16"],
                             cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def sd_base_folder(tmp_path_factory):
    with _built("sd-2-1-base", tmp_path_factory) as folder:
        yield folder


@pytest.fixture(scope="module")
def sd_768_folder(tmp_path_factory):
    with _built("sd-2-1", tmp_path_factory) as folder:
        yield folder


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd_2_1_base_encodes_and_decodes(sd_base_folder):
    image = photo("kite", 96).crop((0, 0, 64, 64))
    codec = DiffusionCodec.load(str(sd_base_folder), adapter=None, mode="analytic", device="cpu", dtype="float32")
    backbone = codec.backbone
    assert _parameters(backbone.unet) == 865_910_724 and _parameters(backbone.vae) == 83_653_863  # SD 2.1's sizes
    assert backbone.prediction_type == "epsilon" and backbone.conditioning.shape == (1, 77, 1024)
    # A step of 2 latent standard deviations: noisy enough that the decoder denoises (t > 0).
    encoded = codec.encode(image, step=2.0, steps=2)
    assert encoded.t > 0 and encoded.steps == 2
    decoded = codec.decode(encoded.data)
    assert decoded.image.size == image.size
    assert len([k for k in decoded.timings if k.startswith("denoise_step_")]) == encoded.steps


def test_sd_2_1_base_analytic_mode_meets_three_targets(sd_base_folder):
    """The training-free mode on SD's latent space: three targets, rates monotone and within each, decoded."""
    image = photo("kite", 160).crop((0, 0, 128, 96))
    codec = DiffusionCodec.load(str(sd_base_folder), adapter=None, mode="analytic", device="cpu", dtype="float32")
    targets = (0.15, 0.3, 0.6)
    results = [codec.encode(image, target_bpp=target, steps=2) for target in targets]
    bpps = [r.bpp for r in results]
    assert all(bpp <= target for bpp, target in zip(bpps, targets)) and bpps[0] < bpps[1] < bpps[2], bpps
    for result in results:
        assert codec.decode(result.data).image.size == image.size


def test_sd_2_1_768_loads_and_denoises_one_step(sd_768_folder):
    backbone = load_backbone(str(sd_768_folder), "cpu", "float32")
    assert backbone.prediction_type == "v_prediction" and backbone.unet.config.sample_size == 96
    assert backbone.unet.config.upcast_attention and _parameters(backbone.unet) == 865_910_724
    image = images.to_tensor(photo("kite", 96).crop((0, 0, 64, 64)))
    with torch.no_grad():
        y = backbone.encode(image)
        result = denoise(backbone, y, t=400, steps=1)  # one UNet call, its v output turned into x0
        x = backbone.decode(result.latent)
    assert len(result.step_seconds) == 1 and result.latent.shape == y.shape == (1, 4, 8, 8)
    assert torch.isfinite(result.latent).all() and x.shape == image.shape
