"""Portable files: the backbone fingerprint is of the weights as stored, so a file encoded in one
dtype (bf16, fp16: a GPU) decodes in another (fp32: a CPU). Tiny random models, saved to a folder
and loaded through the normal local-folder path."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from codec.core.backbone import WEIGHTS_FILE, build_tiny_backbone, load_backbone
from codec.core.diffusion_codec import DiffusionCodec
from codec.core.random_backbones import save_random_backbone

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_random_backbone("tiny", tmp_path_factory.mktemp("tiny") / "backbone")


def test_the_fingerprint_is_the_same_in_every_dtype(tiny_folder, tmp_path):
    prints = {dtype: load_backbone(str(tiny_folder), "cpu", dtype).fingerprint for dtype in ("float32", "float16", "bfloat16")}
    assert len(set(prints.values())) == 1, prints
    # The models built in code are hashed before their cast: the same backbone as their folder.
    assert build_tiny_backbone(seed=0, dtype=torch.bfloat16).fingerprint == prints["float32"]
    # Stored in fp16 (as hub "fp16" copies are), it is still the same backbone.
    assert load_backbone(str(save_random_backbone("tiny", tmp_path / "fp16", dtype=torch.float16))).fingerprint == prints["float32"]


def test_the_fingerprint_changes_when_a_weight_changes(tiny_folder, tmp_path):
    changed = shutil.copytree(tiny_folder, tmp_path / "retrained")
    weights = load_file(changed / "unet" / WEIGHTS_FILE)
    key = "conv_out.weight"
    weights[key] = weights[key] + 0.01 * torch.randn_like(weights[key])  # as any fine-tuning step would
    save_file(weights, changed / "unet" / WEIGHTS_FILE)
    assert load_backbone(str(changed)).fingerprint != load_backbone(str(tiny_folder)).fingerprint


def test_a_bf16_file_decodes_in_fp32(tiny_folder, photo):
    bf16 = DiffusionCodec.load(str(tiny_folder), adapter=None, mode="analytic", device="cpu", dtype="bfloat16")
    fp32 = DiffusionCodec.load(str(tiny_folder), adapter=None, mode="analytic", device="cpu", dtype="float32")
    assert bf16.backbone.unet.dtype == torch.bfloat16 and fp32.backbone.unet.dtype == torch.float32
    # every band off: the error is the whole latent, so t = 1 and the UNet runs in both dtypes (finer steps
    # leave the tiny latent, std 0.04, an error below step 1's noise: t = 0)
    encoded = bf16.encode(photo, step=64.0)
    assert encoded.t > 0 and encoded.steps > 0
    decoded = fp32.decode(encoded.data)  # refused as "a different backbone" when the fingerprint saw the cast
    assert decoded.image.size == photo.size
    # Pixels may differ slightly between dtypes (measured: ~48 dB between the bf16 and fp32 decodes).
    same_dtype = np.asarray(bf16.decode(encoded.data).image, dtype=float)
    mse = np.mean((np.asarray(decoded.image, dtype=float) - same_dtype) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 30


def test_the_cli_decodes_in_fp32_what_it_encoded_in_bf16(tiny_folder, photo, tmp_path):
    photo.save(tmp_path / "in.png")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "codec", *args, "--backbone", str(tiny_folder), "--device", "cpu"],
                              cwd=REPO, capture_output=True, text=True)

    encoded = run("encode", str(tmp_path / "in.png"), str(tmp_path / "x.dfcx"), "--mode", "analytic", "--bpp", "0.05",
                  "--dtype", "bfloat16")
    assert encoded.returncode == 0, encoded.stderr[-2000:]
    decoded = run("decode", str(tmp_path / "x.dfcx"), str(tmp_path / "out.png"), "--dtype", "float32")
    assert decoded.returncode == 0, decoded.stderr[-2000:]
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == photo.size
