"""Training on CPU (or any device): the bundled demo backbone (VAE + UNet), resumable, in the background.

    python -m codec.train backbone --data DIR --out assets/models/demo \
        [--size v2] [--work runs/demo] [--vae-minutes 60] [--unet-minutes 40] [--resume]

The run goes through four phases, each "train X until X has been trained for N minutes in total"
(CPU minutes per thread, see run_phase):
a short VAE warm-up, a short UNet warm-up (so a usable, matching backbone folder exists early),
then the long VAE phase, then the long UNet phase (fine-tuned on the final VAE's latents).
Minutes count across resumes, so `--resume` with larger budgets simply continues. The model sizes
(MODEL_SIZES) are recorded in every checkpoint; a resume with other sizes is refused. `--init FOLDER`
starts a model that has no checkpoint in the work folder from an exported backbone's weights (a
committed one: work folders do not outlive a sitting), with a fresh optimizer and minutes from 0.

Each model's learning rate follows a cosine over its total minutes (to 10 % of the start).
Every few minutes each phase evaluates on the held-out photos, checkpoints (model + optimizer)
into the work folder, and re-exports the diffusers folder when validation improves, so `--out`
always holds the best weights so far.
"""

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from PIL import Image
from pytorch_msssim import ms_ssim as differentiable_ms_ssim

from codec.core.backbone import CODEC_CONFIG_FILE, SD_SCHEDULE
from codec.core.demo_models import DOWNSCALE, DemoAutoencoder
from codec.data.photos import load_photos, split_photos
from codec.evaluate.metrics import ms_ssim, psnr

MAX_TIMESTEP = 300  # the codec only denoises from t <= ~300
VAL_TIMESTEPS = (1, 10, 25, 50, 100, 150, 200, 300)
DEMO_STEPS = 4  # denoising steps the codec takes on the demo backbone by default (codec.json)

log = logging.getLogger("codec.train")


UNET_LAYOUT = dict(layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                   norm_num_groups=32)

# Named model sizes (DemoAutoencoder and UNet2DModel kwargs); a run records its sizes in its checkpoints.
# Times at 768x512 on 2 threads, best of 8 (docs/demo-backbone-v2.md): VAE encode / decode, one UNet call.
MODEL_SIZES = {
    # The first demo (shipped until 2 Dec 2026): 2.36 M + 4.24 M parameters; 21 / 137 / 44 ms.
    "v1": dict(vae={}, unet=dict(block_out_channels=(64, 128, 128), **UNET_LAYOUT)),
    # Capacity where it is cheap: the VAE's 1/8 scale (160 channels, 6 decoder blocks) and the UNet's
    # lowest resolution (192 channels): 4.36 M + 6.76 M; 35 / 188 / 50 ms, i.e. 0.42 s of model time
    # for an encode + 4-step decode. The shipped demo (assets/models/demo).
    "v2": dict(
        vae=dict(encoder_channels=160, encoder_blocks=2, decoder_channels=(160, 64, 32, 16), decoder_blocks=(6, 2, 1, 0)),
        unet=dict(block_out_channels=(64, 128, 192), **UNET_LAYOUT),
    ),
}


class ResumeError(ValueError):
    """A checkpoint or an --init folder that the asked run cannot continue (another model size)."""


def initial_weights(model: torch.nn.Module, exported: torch.nn.Module, folder: Path) -> None:
    """Load the weights of an exported model (`folder`'s) into `model`, refused when its sizes differ."""
    try:
        model.load_state_dict(exported.state_dict())
    except RuntimeError:
        raise ResumeError(f"{folder} holds a model of other sizes than this run's: choose the same --size") from None


@dataclass
class BackboneConfig:
    """Everything that shapes a backbone run; the tests use a tiny one."""

    vae: dict = field(default_factory=lambda: copy.deepcopy(MODEL_SIZES["v2"]["vae"]))  # DemoAutoencoder kwargs
    unet: dict = field(default_factory=lambda: copy.deepcopy(MODEL_SIZES["v2"]["unet"]))  # UNet2DModel kwargs
    crop: int = 256  # training crop in pixels
    vae_batch: int = 4
    vae_lr: float = 3e-4
    msssim_weight: float = 0.05  # needs crops > 160 px; 0 turns it off
    unet_crop: int = 32  # training crop in latent pixels
    unet_batch: int = 16
    unet_lr: float = 3e-4
    ema_decay: float = 0.999
    final_lr_fraction: float = 0.1  # cosine decay over each model's total minutes down to this share of its lr
    bank_shifts: int = 4  # random sub-block offsets per photo and flip when building the latent bank
    warmup_minutes: tuple = (10.0, 8.0)  # (VAE, UNet) before the long phases
    eval_every_s: float = 240.0
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Data


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float in [-1, 1]."""
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def random_crops(photos: list[np.ndarray], batch: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A batch of random size x size crops with random horizontal flips, in [-1, 1]."""
    crops = []
    for _ in range(batch):
        arr = photos[rng.integers(len(photos))]
        y, x = rng.integers(arr.shape[0] - size + 1), rng.integers(arr.shape[1] - size + 1)
        crop = arr[y : y + size, x : x + size]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return torch.cat([to_tensor(c) for c in crops])


def box_bicubic_reference(arr: np.ndarray) -> np.ndarray:
    """The trivial /8 codec the VAE must beat: PIL box downsample by 8, then bicubic upsample."""
    img = Image.fromarray(arr)
    small = img.resize((img.width // DOWNSCALE, img.height // DOWNSCALE), Image.BOX)
    return np.asarray(small.resize(img.size, Image.BICUBIC))


@torch.no_grad()
def vae_round_trip(vae: DemoAutoencoder, arr: np.ndarray) -> np.ndarray:
    x_hat = vae.decode(vae.encode(to_tensor(arr)).latents).sample
    return ((x_hat[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


# ---------------------------------------------------------------------------------------------
# Files


def publish(model, dest: Path) -> None:
    """save_pretrained into dest, swapping folders so readers never see a half-written model."""
    tmp, old = dest.with_name(dest.name + ".tmp"), dest.with_name(dest.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    model.save_pretrained(tmp)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, cfg: BackboneConfig) -> dict:
    """A trainer's checkpoint, refused when it was trained with other model sizes than cfg's."""
    state = torch.load(path, weights_only=False)
    recorded = state.get("config", MODEL_SIZES["v1"])  # checkpoints from before sizes were recorded are v1's
    sizes = {key: recorded[key] for key in ("vae", "unet")}
    if sizes != {"vae": cfg.vae, "unet": cfg.unet}:
        raise ResumeError(f"{path} was trained with the model sizes {sizes}, not {dict(vae=cfg.vae, unet=cfg.unet)}: "
                          "resume with the same --size, or choose another --work folder")
    return state


def file_fingerprint(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Trainers: one per model, driven by the same time-budgeted loop (run_phase)


class VaeTrainer:
    name = "vae"

    def __init__(self, cfg: BackboneConfig, train: list, val: dict, out: Path, work: Path, init: Path | None = None):
        self.cfg, self.train, self.val, self.out = cfg, train, val, out
        self.path = work / "vae.pt"
        self.model = DemoAutoencoder(**cfg.vae)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.vae_lr)
        self.step, self.elapsed_s, self.best = 0, 0.0, -math.inf
        if self.path.exists():
            state = load_checkpoint(self.path, cfg)
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.elapsed_s, self.best = state["step"], state["elapsed_s"], state["best"]
        elif init is not None:
            initial_weights(self.model, DemoAutoencoder.from_pretrained(init / "vae"), init / "vae")
        self.rng = np.random.default_rng(cfg.seed + self.step)
        reference = [box_bicubic_reference(a) for a in val.values()]
        self.reference_text = "box/bicubic {:.2f} dB, MS-SSIM {:.4f}".format(
            np.mean([psnr(a, r) for a, r in zip(val.values(), reference)]),
            np.mean([ms_ssim(a, r) for a, r in zip(val.values(), reference)]),
        )

    def train_step(self) -> float:
        self.model.train()
        x = random_crops(self.train, self.cfg.vae_batch, self.cfg.crop, self.rng)
        x_hat = self.model.decode_unclamped(self.model.encode(x).latents)
        loss = F.mse_loss((x_hat + 1) / 2, (x + 1) / 2)
        if self.cfg.msssim_weight:
            loss = loss + self.cfg.msssim_weight * (1 - differentiable_ms_ssim((x_hat.clamp(-1, 1) + 1) / 2, (x + 1) / 2, data_range=1.0))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return loss.item()

    def evaluate(self) -> tuple[float, str]:
        """Mean validation PSNR (higher is better), and a log line with the box/bicubic reference."""
        self.model.eval()
        ours = [vae_round_trip(self.model, arr) for arr in self.val.values()]
        p_vae = np.mean([psnr(a, o) for a, o in zip(self.val.values(), ours)])
        s_vae = np.mean([ms_ssim(a, o) for a, o in zip(self.val.values(), ours)])
        return p_vae, f"val PSNR {p_vae:.2f} dB, MS-SSIM {s_vae:.4f} ({self.reference_text})"

    @torch.no_grad()
    def export(self) -> None:
        """Publish the VAE with a scaling factor that gives the training latents unit std."""
        model = copy.deepcopy(self.model).eval()
        z = torch.cat([model.encode(to_tensor(a)).latents.flatten(1) for a in self.train], dim=1)
        model.register_to_config(scaling_factor=float(1.0 / z.std()))
        publish(model, self.out / "vae")

    def save(self) -> None:
        state = dict(model=self.model.state_dict(), opt=self.opt.state_dict(), step=self.step, elapsed_s=self.elapsed_s,
                     best=self.best, config=asdict(self.cfg))
        save_checkpoint(state, self.path)


class UnetTrainer:
    """Epsilon prediction on y = z * scaling_factor of the published (frozen) VAE, t in 1..300."""

    name = "unet"

    def __init__(self, cfg: BackboneConfig, train: list, val: dict, out: Path, work: Path, init: Path | None = None):
        self.cfg, self.out = cfg, out
        self.path = work / "unet.pt"
        self.model = UNet2DModel(in_channels=4, out_channels=4, **cfg.unet)
        if init is not None and not self.path.exists():  # the export holds the EMA weights: both start there
            initial_weights(self.model, UNet2DModel.from_pretrained(init / "unet"), init / "unet")
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.unet_lr)
        self.scheduler = DDIMScheduler(**SD_SCHEDULE)
        self.step, self.elapsed_s, self.best, self.vae_id = 0, 0.0, math.inf, None
        if self.path.exists():
            state = load_checkpoint(self.path, cfg)
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.elapsed_s, self.best, self.vae_id = state["step"], state["elapsed_s"], state["best"], state["vae_id"]
        self.rng = np.random.default_rng(cfg.seed + 1 + self.step)
        vae_id = file_fingerprint(out / "vae" / "diffusion_pytorch_model.safetensors")
        if vae_id != self.vae_id:  # new latents: old validation losses are not comparable
            log.info("unet: latents of VAE %s (was %s); validation best reset", vae_id, self.vae_id)
            self.vae_id, self.best = vae_id, math.inf
        vae = DemoAutoencoder.from_pretrained(out / "vae").eval()
        self.bank = self._latent_bank(vae, train)
        # The codec pads latents to multiples of 8, which the UNet's downsampling needs; so does validation.
        self.val_latents = [y[..., : y.shape[-2] // 8 * 8, : y.shape[-1] // 8 * 8] for y in (self._latents(vae, a) for a in val.values())]

    @staticmethod
    @torch.no_grad()
    def _latents(vae: DemoAutoencoder, arr: np.ndarray) -> torch.Tensor:
        return vae.encode(to_tensor(arr)).latents * vae.config.scaling_factor

    def _latent_bank(self, vae: DemoAutoencoder, train: list) -> list[torch.Tensor]:
        """Latents of every training photo, flipped or not, at a few random 8x8-grid offsets."""
        rng, bank = np.random.default_rng(self.cfg.seed), []
        for arr in train:
            for flipped in (arr, arr[:, ::-1]):
                for _ in range(self.cfg.bank_shifts):
                    dy, dx = rng.integers(DOWNSCALE, size=2)
                    h = (flipped.shape[0] - dy) // DOWNSCALE * DOWNSCALE
                    w = (flipped.shape[1] - dx) // DOWNSCALE * DOWNSCALE
                    bank.append(self._latents(vae, flipped[dy : dy + h, dx : dx + w]))
        return bank

    def _sample_t(self, n: int) -> torch.Tensor:
        # u^2 puts more weight on small t, where the codec spends most of its decoding.
        return torch.from_numpy(1 + np.floor(self.rng.random(n) ** 2 * MAX_TIMESTEP)).long().clamp(1, MAX_TIMESTEP)

    def train_step(self) -> float:
        self.model.train()
        size, crops = self.cfg.unet_crop, []
        for _ in range(self.cfg.unet_batch):
            y = self.bank[self.rng.integers(len(self.bank))]
            i, j = self.rng.integers(y.shape[-2] - size + 1), self.rng.integers(y.shape[-1] - size + 1)
            crops.append(y[..., i : i + size, j : j + size])
        y0 = torch.cat(crops)
        t = self._sample_t(len(y0))
        noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(int(self.rng.integers(2**31))))
        loss = F.mse_loss(self.model(self.scheduler.add_noise(y0, noise, t), t).sample, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p, 1 - decay)
        return loss.item()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, str]:
        """Mean epsilon MSE of the EMA model over fixed noise and t (lower is better), and a log line
        with the latent-space PSNR gain of its one-step x0 prediction over not denoising at all."""
        self.ema.eval()
        gen = torch.Generator().manual_seed(1234)
        t = torch.tensor(VAL_TIMESTEPS)
        ab = self.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        losses, gains = [], []
        for y0 in self.val_latents:  # one batch per photo: every validation t at once
            y0 = y0.expand(len(t), -1, -1, -1)
            noise = torch.randn(y0.shape, generator=gen)
            xt = self.scheduler.add_noise(y0, noise, t)
            eps = self.ema(xt, t).sample
            losses.append(((eps - noise) ** 2).mean(dim=(1, 2, 3)))
            x0_hat = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
            per_t = lambda a: ((a - y0) ** 2).mean(dim=(1, 2, 3))  # noqa: E731
            gains.append(10 * torch.log10(per_t(xt / ab.sqrt()) / per_t(x0_hat)))
        score = float(torch.stack(losses).mean())
        gain_txt = ", ".join(f"t={ti}: {g:+.2f}" for ti, g in zip(VAL_TIMESTEPS, torch.stack(gains).mean(0).tolist()))
        return score, f"val eps-MSE {score:.4f}; x0 gain over no denoising (dB) {gain_txt}"

    def export(self) -> None:
        publish(self.ema, self.out / "unet")

    def save(self) -> None:
        state = dict(
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            opt=self.opt.state_dict(),
            step=self.step,
            elapsed_s=self.elapsed_s,
            best=self.best,
            vae_id=self.vae_id,
            config=asdict(self.cfg),
        )
        save_checkpoint(state, self.path)


def improved(trainer, score: float) -> bool:
    return score > trainer.best if trainer.name == "vae" else score < trainer.best


def cosine_lr(base_lr: float, elapsed_s: float, total_s: float, final_fraction: float) -> float:
    """The learning rate after elapsed_s of total_s: cosine from base_lr down to final_fraction x base_lr.
    Time-based like the budgets, so a resume continues the same curve (a larger budget lifts it again)."""
    progress = min(1.0, elapsed_s / total_s) if total_s > 0 else 1.0
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def run_phase(trainer, until_s: float, total_s: float, cfg: BackboneConfig) -> None:
    """Train until trainer.elapsed_s reaches until_s, the lr following a cosine over the model's total_s;
    evaluate, checkpoint and export every eval_every_s of wall time.

    Training time is the process's CPU time in training steps divided by the torch thread count: the
    minutes a machine of that many free cores would take. A nice-19 run on shared cores then spends
    its budget only on the steps it really computes, not on the minutes it waits for a core (wall
    time did: a step starved by two busy processes counted minutes)."""
    if trainer.elapsed_s >= until_s:
        return
    log.info("%s: training from %.1f to %.1f minutes (step %d)", trainer.name, trainer.elapsed_s / 60, until_s / 60, trainer.step)
    losses, last_eval = [], time.monotonic()
    base_lr = cfg.vae_lr if trainer.name == "vae" else cfg.unet_lr
    while trainer.elapsed_s < until_s:
        for group in trainer.opt.param_groups:
            group["lr"] = cosine_lr(base_lr, trainer.elapsed_s, total_s, cfg.final_lr_fraction)
        cpu_before = time.process_time()
        losses.append(trainer.train_step())
        trainer.elapsed_s += (time.process_time() - cpu_before) / torch.get_num_threads()
        if time.monotonic() - last_eval >= cfg.eval_every_s or trainer.elapsed_s >= until_s:
            score, text = trainer.evaluate()
            is_best = improved(trainer, score)
            if is_best:
                trainer.best = score
                trainer.export()
            log.info(
                "%s step %d, %.1f min, lr %.2g: train loss %.5f; %s%s", trainer.name, trainer.step, trainer.elapsed_s / 60,
                trainer.opt.param_groups[0]["lr"], np.mean(losses), text, " -> exported" if is_best else "",
            )
            trainer.save()
            losses, last_eval = [], time.monotonic()


def train_backbone(data: Path, out: Path, work: Path, vae_minutes: float, unet_minutes: float, resume: bool, cfg: BackboneConfig,
                   init: Path | None = None) -> None:
    """The four phases (module docstring); `init`: an exported backbone folder the models without a
    checkpoint in `work` start from."""
    for name in ("vae.pt", "unet.pt"):
        if (work / name).exists() and not resume:
            raise FileExistsError(f"{work / name} exists: pass --resume to continue it, or choose another --work folder")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train, val = split_photos(load_photos(data))
    log.info("backbone: %d training photos, %d validation photos; config %s", len(train), len(val), asdict(cfg))
    DDIMScheduler(**SD_SCHEDULE).save_pretrained(out / "scheduler")
    # The codec's settings for this folder: the demo's 4 denoising steps, and what visitors are told it saw.
    codec_config = {"default_steps": DEMO_STEPS, "training_photos": len(train)}
    (out / CODEC_CONFIG_FILE).write_text(json.dumps(codec_config, indent=2) + "\n")

    warm_vae, warm_unet = (min(w, m) * 60 for w, m in zip(cfg.warmup_minutes, (vae_minutes, unet_minutes)))
    vae = VaeTrainer(cfg, train, val, out, work, init)
    run_phase(vae, warm_vae, vae_minutes * 60, cfg)
    if not (out / "vae").exists():  # e.g. a resume after an interrupted first export
        vae.export()
    run_phase(UnetTrainer(cfg, train, val, out, work, init), warm_unet, unet_minutes * 60, cfg)
    run_phase(vae, vae_minutes * 60, vae_minutes * 60, cfg)
    run_phase(UnetTrainer(cfg, train, val, out, work), unet_minutes * 60, unet_minutes * 60, cfg)
    log.info("backbone: done (VAE %.1f min, best val PSNR %.2f dB)", vae.elapsed_s / 60, vae.best)


# ---------------------------------------------------------------------------------------------
# Command line
