"""Backbone loading through the real paths: a local diffusers folder and a hub id served from the
local Hugging Face cache with the Hub offline; clear errors when weights are missing."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from codec.core import backbone as backbone_module
from codec.core.backbone import CONDITIONING_FILE, BackboneUnavailable, build_tiny_backbone, load_backbone, tiny_components
from codec.core.diffusion_codec import DiffusionCodec

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _write_tiny_tokenizer(folder):
    """A 3-token CLIP tokenizer whose ids match the tiny text encoder (bos 0, pad "!" 1, eos 2)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=77).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A complete Stable-Diffusion-style folder written with save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    vae, unet, text_encoder, scheduler = tiny_components(seed=0)
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    _write_tiny_tokenizer(folder / "tokenizer")
    return folder


def test_local_folder_loads_and_caches_the_empty_prompt_conditioning(tiny_folder, photo):
    loaded = load_backbone(str(tiny_folder))
    assert (tiny_folder / CONDITIONING_FILE).is_file()
    reference = build_tiny_backbone(seed=0)
    assert loaded.fingerprint == reference.fingerprint  # same weights and configs -> same identity
    assert loaded.conditioning.shape == (1, 77, 32)
    assert torch.allclose(loaded.conditioning, reference.conditioning, atol=1e-5)
    # A file encoded with the in-memory model decodes with the folder-loaded one.
    data = DiffusionCodec(reference, mode="analytic").encode(photo, step=1.0).data
    assert DiffusionCodec(loaded, mode="analytic").decode(data).image.size == photo.size


def test_cached_conditioning_makes_the_text_encoder_unnecessary(tiny_folder, tmp_path):
    load_backbone(str(tiny_folder))  # make sure the cache exists
    slim = tmp_path / "slim"
    for sub in ("vae", "unet", "scheduler"):
        __import__("shutil").copytree(tiny_folder / sub, slim / sub)
    __import__("shutil").copy(tiny_folder / CONDITIONING_FILE, slim / CONDITIONING_FILE)
    assert load_backbone(str(slim)).conditioning.shape == (1, 77, 32)
    (slim / CONDITIONING_FILE).unlink()
    with pytest.raises(BackboneUnavailable, match="empty-prompt conditioning"):
        load_backbone(str(slim))


def _hub_cache(tiny_folder, hf_home, repo_id="test-org/tiny-sd"):
    """Lay out the folder as huggingface_hub's cache does (blobs would be symlinks; copies work too)."""
    revision = "0" * 40
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    __import__("shutil").copytree(tiny_folder, repo_dir / "snapshots" / revision,
                                  ignore=__import__("shutil").ignore_patterns(CONDITIONING_FILE))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)


def _run_offline(code: str, hf_home, cache_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "CODEC_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO, env=env)


def test_hub_id_loads_from_the_local_cache_with_the_hub_offline(tiny_folder, tmp_path):
    _hub_cache(tiny_folder, tmp_path / "hf")
    run = _run_offline("""
        from codec.core.backbone import load_backbone
        b = load_backbone("test-org/tiny-sd")
        print(b.name, b.fingerprint.hex(), tuple(b.conditioning.shape))
    """, tmp_path / "hf", tmp_path / "codec-cache")
    assert run.returncode == 0, run.stderr[-2000:]
    name, fingerprint, shape = run.stdout.split(maxsplit=2)
    assert name == "test-org/tiny-sd" and fingerprint == build_tiny_backbone(seed=0).fingerprint.hex()
    assert shape.strip() == "(1, 77, 32)"
    # The conditioning was cached outside the read-only-by-convention hub snapshot.
    assert (tmp_path / "codec-cache" / "test-org--tiny-sd" / CONDITIONING_FILE).is_file()


def test_missing_hub_model_offline_gives_one_clear_message(tmp_path):
    run = _run_offline("""
        from codec.core.backbone import BackboneUnavailable, load_backbone
        try:
            load_backbone("test-org/not-downloaded")
        except BackboneUnavailable as exc:
            print(exc)
    """, tmp_path / "hf", tmp_path / "codec-cache")
    assert run.returncode == 0, run.stderr[-2000:]
    message = run.stdout
    assert "not in the local Hugging Face cache" in message and "HF_HOME" in message and "--backbone" in message


def test_default_backbone_falls_back_to_demo_or_tiny_with_a_notice(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone_module, "DEMO_DIR", tmp_path / "no-demo")
    monkeypatch.setattr(backbone_module, "SD_HUB_ID", "test-org/not-downloaded")
    with pytest.raises(BackboneUnavailable, match="demo backbone is missing"):
        backbone_module.load_default_backbone()
    bb, notice = backbone_module.load_default_backbone(allow_tiny=True)
    assert bb.name == "tiny" and "RANDOM" in notice


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "not a diffusers model folder"),
    (lambda p: [(p / s).mkdir(parents=True) for s in ("vae", "unet")], "Missing"),
])
def test_broken_folders_are_explained(tmp_path, make, message):
    folder = tmp_path / "broken"
    make(folder)
    with pytest.raises(BackboneUnavailable, match=message):
        load_backbone(str(folder))


def test_unknown_source_is_explained():
    with pytest.raises(BackboneUnavailable, match="neither"):
        load_backbone("./definitely/not/here")


def test_the_demo_studys_bitstreams_are_of_the_bundled_demo_backbone():
    """The demo study ships its diffusion stimuli's bitstreams (assets/studies/demo): they carry the
    demo backbone's fingerprint and decode to the PNGs the raters see (a fingerprint change must
    re-stamp them)."""
    import numpy as np
    from PIL import Image

    from codec.core.bitstream import parse

    codec = DiffusionCodec.load("demo", adapter=None, mode="analytic", device="cpu")
    files = sorted((REPO / "assets" / "studies" / "demo" / "stimuli").glob("*/diffusion_*.bin"))
    assert files
    for path in files:
        assert parse(path.read_bytes())[0].backbone_fingerprint == codec.backbone.fingerprint, path
    decoded = np.asarray(codec.decode(files[0].read_bytes()).image.convert("RGB"), dtype=int)
    shown = np.asarray(Image.open(files[0].with_suffix(".png")).convert("RGB"), dtype=int)
    assert np.abs(decoded - shown).max() <= 4  # measured 1-3 levels (float arithmetic across machines)


def test_demo_loads_the_bundled_folder():
    demo = load_backbone("demo", "cpu")
    assert backbone_module.DEMO_DIR == REPO / "assets" / "models" / "demo" and demo.name == "demo"
    assert type(demo.vae).__name__ == "DemoAutoencoder" and demo.conditioning is None


def test_the_denoiser_is_read_when_a_decode_first_runs_it(tiny_folder, photo):
    """Encoding never runs the UNet, so a folder's UNet is read on the first decode that denoises;
    the backbone's identity and latent size come from its config and stored weights before that."""
    loaded = load_backbone(str(tiny_folder))
    assert "unet" not in vars(loaded)
    assert loaded.fingerprint == build_tiny_backbone(seed=0).fingerprint and loaded.latent_channels == 4
    codec = DiffusionCodec.load("demo", adapter=None, mode="analytic", device="cpu")
    result = codec.encode(photo, target_bpp=0.03)  # a low rate: noise to remove, t > 0
    assert result.t > 0 and "unet" not in vars(codec.backbone)
    codec.decode(result.data)
    assert "unet" in vars(codec.backbone) and not codec.backbone.unet.training
    assert not any(p.requires_grad for p in codec.backbone.unet.parameters())


def test_a_damaged_denoiser_is_explained_when_it_is_read(tiny_folder, tmp_path, photo):
    """A UNet whose weights do not fit its config fails when it is read, with the message a damaged
    folder gets at load time."""
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": [64, 64]}))
    loaded = load_backbone(str(folder))
    with pytest.raises(BackboneUnavailable, match="incomplete or damaged"):
        loaded.unet
