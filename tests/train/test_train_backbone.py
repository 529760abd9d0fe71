"""The demo backbone: autoencoder API and persistence, and a tiny resumable training run end to end."""

import dataclasses
import json
import logging
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from PIL import Image

from codec.core.demo_models import DemoAutoencoder
from codec.data.photos import VALIDATION_PHOTOS, DataError, load_photos, split_photos
from codec.evaluate.metrics import psnr
from codec.train import demo_backbone as train

TINY_VAE = dict(encoder_channels=16, encoder_blocks=1, decoder_channels=(16, 8, 8, 8), decoder_blocks=(1, 0, 0, 0))
TINY = train.BackboneConfig(
    vae=TINY_VAE,
    unet=dict(
        block_out_channels=(16, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=8,
    ),
    crop=64,
    vae_batch=2,
    msssim_weight=0.0,  # MS-SSIM needs crops > 160 px
    unet_crop=8,
    unet_batch=2,
    bank_shifts=1,
    warmup_minutes=(0.005, 0.005),
    eval_every_s=5.0,  # so evaluation runs only at the end of each phase
)


def photo(seed: int, h: int = 192, w: int = 176) -> np.ndarray:
    """A photo-like test image: smooth colour gradients, a few hard-edged shapes, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(3 * xx + c + seed) * 0.5 + 0.5 + 0.3 * yy * c for c in range(3)], -1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 16), rng.integers(0, w - 16)
        img[y0 : y0 + rng.integers(8, 32), x0 : x0 + rng.integers(8, 32)] = rng.random(3)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = list(VALIDATION_PHOTOS) + ["train_a.png", "train_b.png"]
    for i, name in enumerate(names):
        Image.fromarray(photo(i)).save(folder / name)
    (folder / "SOURCES.json").write_text("{}")  # non-image files are ignored
    return folder


def test_save_and_load_give_identical_outputs(tmp_path):
    torch.manual_seed(0)
    vae = DemoAutoencoder(**TINY_VAE, scaling_factor=0.5)
    with torch.no_grad():  # move every weight away from its init so the round trip means something
        for p in vae.parameters():
            p.add_(0.01 * torch.randn_like(p))
    vae.eval().save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["_class_name"] == "DemoAutoencoder" and config["scaling_factor"] == 0.5

    loaded = DemoAutoencoder.from_pretrained(tmp_path / "vae").eval()
    x = torch.rand(1, 3, 40, 56) * 2 - 1
    with torch.no_grad():
        z1, z2 = vae.encode(x).latents, loaded.encode(x).latents
        assert torch.equal(z1, z2)
        assert torch.equal(vae.decode(z1).sample, loaded.decode(z2).sample)


@pytest.mark.parametrize("h, w", [(8, 8), (40, 24), (72, 120)])
def test_shapes_for_odd_multiples_of_8(h, w):
    vae = DemoAutoencoder(**TINY_VAE).eval()
    x = torch.rand(2, 3, h, w) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latents
        x_hat = vae.decode(z).sample
    assert z.shape == (2, 4, h // 8, w // 8)
    assert x_hat.shape == x.shape and x_hat.min() >= -1 and x_hat.max() <= 1
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, h + 4, w))


def test_untrained_model_is_exactly_box_average_and_bicubic():
    """Training starts from the trivial /8 codec, so it can only improve on it."""
    vae = DemoAutoencoder(**TINY_VAE).eval()
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latents
        box = F.avg_pool2d(x, 8)
        assert torch.allclose(z[:, :3], box, atol=1e-6)
        expected = F.interpolate(box, scale_factor=8, mode="bicubic", align_corners=False).clamp(-1, 1)
        assert torch.allclose(vae.decode(z).sample, expected, atol=1e-5)


def test_tiny_training_run_exports_loads_and_resumes(photo_folder, tmp_path):
    out, work = tmp_path / "demo", tmp_path / "work"
    train.train_backbone(photo_folder, out, work, 0.01, 0.01, False, TINY)

    vae = DemoAutoencoder.from_pretrained(out / "vae").eval()
    unet = UNet2DModel.from_pretrained(out / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(out / "scheduler")
    assert json.loads((out / "codec.json").read_text()) == {"default_steps": 4, "training_photos": 2}
    for key, value in train.SD_SCHEDULE.items():
        assert scheduler.config[key] == value, key

    # The scaling factor gives the training latents unit standard deviation.
    photos = load_photos(photo_folder)
    with torch.no_grad():
        z = torch.cat([vae.encode(train.to_tensor(photos[n])).latents.flatten() for n in ("train_a.png", "train_b.png")])
        assert (z * vae.config.scaling_factor).std() == pytest.approx(1.0, rel=1e-3)
        y = vae.encode(train.to_tensor(photos["kite.png"])).latents * vae.config.scaling_factor
        eps = unet(y, torch.tensor([50])).sample
    assert eps.shape == y.shape and torch.isfinite(eps).all()

    # A few steps must not wreck the starting point (the box/bicubic codec).
    val = {n: photos[n] for n in VALIDATION_PHOTOS}
    ours = np.mean([psnr(a, train.vae_round_trip(vae, a)) for a in val.values()])
    ref = np.mean([psnr(a, train.box_bicubic_reference(a)) for a in val.values()])
    assert ours > ref - 1.0

    vae_state, unet_state = torch.load(work / "vae.pt", weights_only=False), torch.load(work / "unet.pt", weights_only=False)
    assert vae_state["step"] > 0 and unet_state["step"] > 0

    with pytest.raises(FileExistsError, match="--resume"):
        train.train_backbone(photo_folder, out, work, 0.02, 0.02, False, TINY)

    train.train_backbone(photo_folder, out, work, 0.02, 0.02, True, TINY)
    resumed_vae, resumed_unet = torch.load(work / "vae.pt", weights_only=False), torch.load(work / "unet.pt", weights_only=False)
    assert resumed_vae["step"] > vae_state["step"] and resumed_vae["elapsed_s"] >= 0.02 * 60
    assert resumed_unet["step"] > unet_state["step"] and resumed_unet["elapsed_s"] >= 0.02 * 60


def test_validation_photos_must_be_present(tmp_path):
    Image.fromarray(photo(0)).save(tmp_path / "only.png")
    with pytest.raises(DataError, match="validation photos missing"):
        split_photos(load_photos(tmp_path))


def test_training_photos_are_read_as_the_codec_reads_images(tmp_path):
    """A 16-bit PNG is a gradient (not white, as convert("RGB") made it) and a JPEG with EXIF
    orientation 6 is upright, cropped to multiples of 8."""
    Image.fromarray(np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(np.uint16)).save(tmp_path / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo(0)[:60, :90]).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    photos = load_photos(tmp_path)
    assert 120 < photos["deep.png"].mean() < 135
    assert photos["phone.jpg"].shape == (88, 56, 3)


# Checkpoints every half second; the VAE warm-up lasts 3 s of training.
KILLABLE = dataclasses.replace(TINY, eval_every_s=0.5, warmup_minutes=(0.05, 0.01))


@pytest.mark.slow
def test_a_run_killed_mid_phase_resumes_from_its_last_checkpoint(photo_folder, tmp_path, caplog):
    """SIGKILL a real training process once it has checkpointed its VAE, then resume: the VAE continues
    at the checkpoint's step and minutes (not from zero), and the run finishes both models."""
    out, work = tmp_path / "demo", tmp_path / "work"
    code = ("import sys; from pathlib import Path; from tests.train.test_train_backbone import KILLABLE; "
            "from codec.train.demo_backbone import train_backbone; "
            "train_backbone(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), 1.0, 0.02, False, KILLABLE)")
    child = subprocess.Popen([sys.executable, "-c", code, str(photo_folder), str(out), str(work)],
                             cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120
        while not (work / "vae.pt").exists():
            assert child.poll() is None, "the training process ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.2)
        time.sleep(1.0)  # mid-phase: a few more steps and checkpoints, then no clean exit
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    killed = torch.load(work / "vae.pt", weights_only=False)
    assert 0 < killed["elapsed_s"] < 60 and killed["config"]["vae"] == KILLABLE.vae

    vae_minutes = killed["elapsed_s"] / 60 + 0.02
    with caplog.at_level(logging.INFO, logger="codec.train"):
        train.train_backbone(photo_folder, out, work, vae_minutes, 0.02, True, KILLABLE)
    first_vae_phase = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("vae: training from"))
    assert first_vae_phase.endswith(f"(step {killed['step']})")
    resumed, unet = (torch.load(work / name, weights_only=False) for name in ("vae.pt", "unet.pt"))
    assert resumed["step"] > killed["step"] and resumed["elapsed_s"] >= vae_minutes * 60
    assert unet["elapsed_s"] >= 0.02 * 60
    DemoAutoencoder.from_pretrained(out / "vae")
    UNet2DModel.from_pretrained(out / "unet")


def test_a_new_run_starts_from_an_exported_backbone_with_init(photo_folder, tmp_path):
    """--init: a later sitting, whose work folder is gone, continues from a committed export: both
    models start at its weights (the UNet's EMA too) with minutes and steps from 0; a checkpoint in
    the work folder still wins; an export of other sizes is refused."""
    exported = tmp_path / "exported"
    train.train_backbone(photo_folder, exported, tmp_path / "work1", 0.005, 0.005, False, TINY)
    train_photos, val = split_photos(load_photos(photo_folder))
    out, work = tmp_path / "demo", tmp_path / "work2"
    shutil.copytree(exported / "vae", out / "vae")  # the UNet trainer encodes with the run's own VAE

    def same(model, folder, cls):
        return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                    cls.from_pretrained(folder).state_dict().values()))

    vae = train.VaeTrainer(TINY, train_photos, val, out, work, init=exported)
    assert same(vae.model, exported / "vae", DemoAutoencoder) and (vae.step, vae.elapsed_s) == (0, 0.0)
    unet = train.UnetTrainer(TINY, train_photos, val, out, work, init=exported)
    assert same(unet.model, exported / "unet", UNet2DModel) and same(unet.ema, exported / "unet", UNet2DModel)
    assert unet.step == 0

    train.train_backbone(photo_folder, out, work, 0.005, 0.005, False, TINY, init=exported)
    checkpointed = torch.load(work / "vae.pt", weights_only=False)
    resumed = train.VaeTrainer(TINY, train_photos, val, out, work, init=exported)
    assert resumed.step == checkpointed["step"] > 0

    wider = dataclasses.replace(TINY, vae={**TINY.vae, "encoder_channels": 24})
    with pytest.raises(train.ResumeError, match="other sizes"):
        train.VaeTrainer(wider, train_photos, val, out, tmp_path / "work3", init=exported)


def test_zero_vae_minutes_with_init_keeps_its_vae_and_trains_the_unet(photo_folder, tmp_path):
    """--vae-minutes 0 --init FOLDER: the UNet goes on training on exactly that VAE's latents."""
    exported = tmp_path / "exported"
    train.train_backbone(photo_folder, exported, tmp_path / "work1", 0.005, 0.005, False, TINY)
    out, work = tmp_path / "demo", tmp_path / "work2"
    train.train_backbone(photo_folder, out, work, 0.0, 0.005, False, TINY, init=exported)
    kept = DemoAutoencoder.from_pretrained(out / "vae").state_dict()
    assert all(torch.equal(a, b) for a, b in zip(kept.values(), DemoAutoencoder.from_pretrained(exported / "vae").state_dict().values()))
    assert not (work / "vae.pt").exists() and torch.load(work / "unet.pt", weights_only=False)["step"] > 0


def test_a_resume_with_other_model_sizes_is_refused(photo_folder, tmp_path):
    out, work = tmp_path / "demo", tmp_path / "work"
    train.train_backbone(photo_folder, out, work, 0.005, 0.005, False, TINY)
    wider = dataclasses.replace(TINY, vae={**TINY.vae, "encoder_channels": 24})
    with pytest.raises(train.ResumeError, match="same --size"):
        train.train_backbone(photo_folder, out, work, 0.01, 0.01, True, wider)


def test_learning_rate_follows_a_cosine_over_the_total_minutes():
    lrs = [train.cosine_lr(3e-4, s, 600.0, 0.1) for s in range(0, 700, 50)]
    assert lrs[0] == pytest.approx(3e-4) and lrs[6] == pytest.approx(0.55 * 3e-4)  # halfway: the mean of both ends
    assert lrs[12] == pytest.approx(3e-5) and lrs[-1] == pytest.approx(3e-5)  # the end, and past it
    assert all(a > b for a, b in zip(lrs[:12], lrs[1:13]))


class WaitingTrainer:
    """A trainer whose steps mostly wait (as a nice-19 run does for a busy core) and briefly compute."""

    name = "vae"

    def __init__(self):
        self.opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        self.step, self.elapsed_s, self.best, self.saves = 0, 0.0, -math.inf, 0

    def train_step(self) -> float:
        time.sleep(0.02)
        busy_until = time.process_time() + 0.002
        while time.process_time() < busy_until:
            pass
        self.step += 1
        return 0.0

    def evaluate(self):
        return float(self.step), "steps"

    def export(self):
        pass

    def save(self):
        self.saves += 1


def test_training_minutes_count_computing_not_waiting():
    trainer, started = WaitingTrainer(), time.monotonic()
    train.run_phase(trainer, 0.1, 0.1, dataclasses.replace(TINY, eval_every_s=3600.0))
    wall = time.monotonic() - started
    assert trainer.elapsed_s >= 0.1 and trainer.saves == 1  # evaluated and saved once, at the end
    assert wall > 4 * trainer.elapsed_s  # the sleeps (~10x the computing) did not count
