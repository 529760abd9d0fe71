"""Training the paper's adapter (parameter network + hyperprior) on a frozen backbone.

    python -m codec.train adapter --backbone demo --data runs/demo-v2/data2 \
        --out runs/adapter/export [--minutes 40] [--resume] [--device cuda]

One model for all rates: lambda is sampled log-uniformly per example and fed to P(y, lambda).
Loss per example (paper-spec §2 and §7.4; a batch averages its logarithm, see adapter_loss):

    bits / pixels + lambda * MSE(x, D(DDIM_k(x_t, t)))

where x_t = sqrt(abar(t)) * y_hat with y_hat the straight-through rounded latent, DDIM_k the
decoder's deterministic k-step DDIM chain from t to 0 through the frozen denoiser (k: the
backbone's default steps, `--decoder-steps`; k = 1 is the one-step x0 prediction), D the frozen
VAE decoder, and abar interpolated linearly between integer steps so that the timestep t is
learned through a continuous relaxation (t near 0 is no denoising, which the file can say).
The rate uses compressai's additive-noise relaxation. Only the adapter is trained; the same
command works on a Stable Diffusion backbone on a GPU.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from codec.core.adapters.base import default_t_max
from codec.core.adapters.learned import LearnedAdapter
from codec.core.backbone import Backbone, load_backbone
from codec.core.denoise import ddim_next, to_epsilon_and_x0
from codec.core.images import to_tensor
from codec.data.photos import load_photos, split_photos
from codec.train.arguments import crop_size, positive_float, positive_int

log = logging.getLogger("codec.train")

LAM_RANGE = (0.3, 1e5)  # lambda weighs MSE on [0, 1] pixels against bits per pixel; 0.02-0.5 bpp on the demo backbone v2


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """abar at continuous timesteps t (linear interpolation), differentiable in t."""
    abar = alphas_cumprod.to(t.device, torch.float32)
    lower = t.detach().floor().clamp(0, len(abar) - 2).long()
    frac = t - lower
    return abar[lower] * (1 - frac) + abar[lower + 1] * frac


def ddim_chain(backbone: Backbone, y_hat: torch.Tensor, t: torch.Tensor, steps: int) -> torch.Tensor:
    """The decoder's deterministic DDIM (codec.core.denoise) at a continuous t, differentiable in t.

    `steps` even strides from x_t = sqrt(abar(t)) * y_hat down to the final x0 prediction: the
    decoder's chain where steps divides t (it rounds its grid to whole steps, and takes one step
    per timestep below t = steps)."""
    abar_of = lambda tau: alpha_bar_at(backbone.alphas_cumprod, tau)[:, None, None, None]  # noqa: E731
    x = abar_of(t).sqrt() * y_hat
    for i in range(steps):
        tau = t * (steps - i) / steps
        eps, x0 = to_epsilon_and_x0(backbone.model_output(x, tau), x, abar_of(tau), backbone.prediction_type)
        if i == steps - 1:
            return x0  # abar_0 := 1 at the end of the chain
        x = ddim_next(x0, eps, abar_of(t * (steps - i - 1) / steps))


def adapter_loss(adapter: LearnedAdapter, backbone: Backbone, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor,
                 steps: int = 1):
    """Rate-distortion loss of a batch through the `steps`-step decoder; returns (loss, bpp, mse, mean t)."""
    log_a, shift, t = adapter.param_net(y, lam)
    a, b = log_a.exp()[..., None, None], shift[..., None, None]
    z = a * y + b
    _, z_likelihoods, h_likelihoods = adapter.likelihoods(z)
    pixels = x.shape[-2] * x.shape[-1]
    bits = -(torch.log2(z_likelihoods).sum(dim=(1, 2, 3)) + torch.log2(h_likelihoods).sum(dim=(1, 2, 3)))
    bpp = bits / pixels

    z_rounded = z + (torch.round(z) - z).detach()  # straight-through rounding for the reconstruction
    y_hat = (z_rounded - b) / a
    x_hat = backbone.decode(ddim_chain(backbone, y_hat, t, steps))
    mse = ((x_hat - x.to(x_hat)) / 2).pow(2).mean(dim=(1, 2, 3))  # on [0, 1] pixel scale
    # The mean of log(R + lambda D) rather than of R + lambda D: each example's gradient is then
    # relative to its own loss, so every lambda weighs alike. The plain mean is dominated by the
    # largest lambdas, whose losses are ~10^4 times larger, and the low rates were never learned
    # (19.9 dB at 0.05 bpp on the demo backbone v2, where the analytic mode has 28.7).
    loss = torch.log(bpp + lam * mse).mean()
    return loss, bpp.mean(), mse.mean(), t.mean()


def latent_bank(backbone: Backbone, photos: list[np.ndarray], crop: int, per_photo: int, seed: int):
    """Random crops (and flips) of the training photos with their VAE latents, computed once."""
    rng = np.random.default_rng(seed)
    crops, latents = [], []
    with torch.no_grad():
        for arr in photos:
            for _ in range(per_photo):
                top = rng.integers(0, arr.shape[0] - crop + 1)
                left = rng.integers(0, arr.shape[1] - crop + 1)
                patch = arr[top:top + crop, left:left + crop]
                if rng.random() < 0.5:
                    patch = patch[:, ::-1]
                x = to_tensor(Image.fromarray(np.ascontiguousarray(patch)))
                crops.append(x)
                latents.append(backbone.encode(x).cpu())
    return torch.cat(crops), torch.cat(latents)


def train_adapter(backbone_source: str, photos: list[np.ndarray], out: Path, work: Path, minutes: float,
                  resume: bool, device=None, crop: int = 128, batch: int = 8, lr: float = 3e-4, seed: int = 0,
                  adapter_kwargs: dict | None = None, max_steps: int | None = None,
                  crops_per_photo: int = 16, lam_range: tuple[float, float] = LAM_RANGE,
                  decoder_steps: int | None = None) -> LearnedAdapter:
    """Train for `minutes` in all (across resumes) or until step `max_steps`; export to `out`.
    The loss decodes through `decoder_steps` DDIM steps (default: the backbone's, as the decoder)."""
    torch.manual_seed(seed)
    backbone = load_backbone(backbone_source, device=device)
    steps = decoder_steps or backbone.default_steps
    t_max = default_t_max(backbone.num_train_timesteps)
    adapter = LearnedAdapter(channels=backbone.latent_channels, t_max=t_max, lam_min=lam_range[0],
                             lam_max=lam_range[1], **(adapter_kwargs or {})).to(backbone.device)
    main_params = [p for n, p in adapter.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in adapter.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main_params, lr=lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3)
    checkpoint = work / "adapter.pt"
    state = {"step": 0, "seconds": 0.0}
    if resume and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=backbone.device, weights_only=False)
        adapter.load_state_dict(saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        aux_optimizer.load_state_dict(saved["aux_optimizer"])
        state = saved["state"]
        log.info("adapter: resumed at step %d (%.1f min)", state["step"], state["seconds"] / 60)

    crops, latents = latent_bank(backbone, photos, crop, per_photo=crops_per_photo, seed=seed)
    log.info("adapter: %d crops of %d px, latents %s, t_max %d, lambda in %s, %d-step decoder", len(crops), crop,
             tuple(latents.shape[1:]), t_max, lam_range, steps)
    rng = np.random.default_rng(seed + state["step"])
    log_lam = torch.tensor([math.log(v) for v in lam_range])
    last_log, last_save = time.monotonic(), time.monotonic()
    adapter.train()
    # On a CPU, training time is CPU time per thread, as the backbone trainer counts it
    # (demo_backbone.run_phase): a run sharing its cores, or paused, does not spend its budget
    # waiting. On a GPU the CPU mostly waits for the device, so there it is wall time.
    clock = time.monotonic if backbone.device.type == "cuda" else time.process_time
    threads = 1 if backbone.device.type == "cuda" else torch.get_num_threads()
    while state["seconds"] < minutes * 60 and (max_steps is None or state["step"] < max_steps):
        step_started = clock()
        idx = torch.from_numpy(rng.integers(0, len(crops), batch))
        x, y = crops[idx].to(backbone.device), latents[idx].to(backbone.device)
        lam = torch.exp(log_lam[0] + (log_lam[1] - log_lam[0]) * torch.rand(batch)).to(backbone.device)
        loss, bpp, mse, t_mean = adapter_loss(adapter, backbone, x, y, lam, steps)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 5.0)
        optimizer.step()
        aux_loss = adapter.aux_loss()
        aux_optimizer.zero_grad()
        aux_loss.backward()
        aux_optimizer.step()
        state["step"] += 1
        state["seconds"] += (clock() - step_started) / threads
        if time.monotonic() - last_log > 60:
            log.info("adapter step %d, %.1f min: loss %.4f, bpp %.4f, PSNR %.2f dB, mean t %.1f, aux %.1f",
                     state["step"], state["seconds"] / 60, loss.item(), bpp.item(),
                     -10 * math.log10(max(mse.item(), 1e-10)), t_mean.item(), aux_loss.item())
            last_log = time.monotonic()
        if time.monotonic() - last_save > 300:
            _save(adapter, optimizer, aux_optimizer, state, checkpoint, out)
            last_save = time.monotonic()
    _save(adapter, optimizer, aux_optimizer, state, checkpoint, out)
    log.info("adapter: done after %d steps, %.1f min; exported to %s", state["step"], state["seconds"] / 60, out)
    return adapter


def _save(adapter, optimizer, aux_optimizer, state, checkpoint: Path, out: Path) -> None:
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"adapter": adapter.state_dict(), "optimizer": optimizer.state_dict(),
                "aux_optimizer": aux_optimizer.state_dict(), "state": state}, checkpoint.with_suffix(".tmp"))
    checkpoint.with_suffix(".tmp").replace(checkpoint)
    exported = LearnedAdapter(**adapter.config)
    exported.load_state_dict(adapter.state_dict())
    exported.prepare()  # the shipped file carries the CDF tables the coder needs
    exported.save_pretrained(out)
    adapter.train()


def lam_range_arg(text: str) -> tuple[float, float]:
    """--lam-range's MIN,MAX: two finite numbers with 0 < MIN < MAX (log lambda is sampled between them)."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two numbers), got {text!r}") from None
    if not (0 < low < high < math.inf):
        raise argparse.ArgumentTypeError(f"expected 0 < MIN < MAX, both finite, got {text!r}")
    return low, high


def add_parser(commands) -> None:
    ad = commands.add_parser("adapter", help="train the adapter (parameter network + hyperprior) on a frozen backbone")
    ad.add_argument("--backbone", default="demo", help="'demo', a local diffusers folder or a hub id")
    ad.add_argument("--data", type=Path, required=True, help="folder of photos (validation photos are held out)")
    ad.add_argument("--out", type=Path, default=Path("assets/models/demo/adapter"), help="adapter folder to export to")
    ad.add_argument("--work", type=Path, default=Path("runs/adapter"), help="checkpoints and progress.log")
    ad.add_argument("--minutes", type=positive_float, default=40.0,
                    help="total training time across resumes: CPU minutes per thread on a CPU, minutes on a GPU")
    ad.add_argument("--crop", type=crop_size, default=128, help="training crop in pixels (a multiple of 32)")
    ad.add_argument("--batch", type=positive_int, default=8)
    ad.add_argument("--lr", type=positive_float, default=3e-4)
    ad.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ad.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    ad.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    ad.add_argument("--lam-range", type=lam_range_arg, default=LAM_RANGE, metavar="MIN,MAX",
                    help="lambda's training range MIN,MAX (log-uniform); it is also the range rate control searches")
    ad.add_argument("--hyper-channels", type=positive_int, default=32, help="channels of the hyperprior's transforms")
    ad.add_argument("--decoder-steps", type=positive_int, help="DDIM steps of the decoder in the loss (default: the backbone's)")


def run(args) -> None:
    train_photos, _ = split_photos(load_photos(args.data))
    train_adapter(args.backbone, train_photos, args.out, args.work, args.minutes, args.resume, args.device,
                  crop=args.crop, batch=args.batch, lr=args.lr, decoder_steps=args.decoder_steps,
                  lam_range=args.lam_range,
                  adapter_kwargs={"hyper_channels": args.hyper_channels})
