"""Partial deterministic DDIM (eta = 0) from the transmitted timestep t down to 0 (none when t = 0).

The dequantized latent is treated as the noisy latent x_t = sqrt(abar_t) * y_hat (paper-spec §1.7);
no fresh noise is added, so decoding is a deterministic function of the bitstream. The loop is
written out instead of using DDIMScheduler.step, which cannot start from an arbitrary t.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from codec.core.backbone import Backbone


def timestep_grid(t: int, steps: int) -> list[int]:
    """Descending timesteps [t, ..., 0]: every integer step when steps >= t, else `steps` even strides."""
    steps = max(1, min(steps, t))
    grid = np.unique(np.round(np.linspace(0, t, steps + 1)).astype(int))[::-1]
    return [int(v) for v in grid]


def to_epsilon_and_x0(model_out: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, prediction_type: str):
    sqrt_a, sqrt_1ma = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        eps = model_out
        x0 = (x_t - sqrt_1ma * eps) / sqrt_a
    elif prediction_type == "v_prediction":
        x0 = sqrt_a * x_t - sqrt_1ma * model_out
        eps = sqrt_1ma * x_t + sqrt_a * model_out
    else:
        raise ValueError(f"Unsupported prediction type {prediction_type!r}")
    return eps, x0


def ddim_next(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_next):
    """One deterministic DDIM (eta = 0) step: the latent at the next timestep from the x0 and epsilon
    estimates (alpha_bar_next a float, or a tensor that broadcasts)."""
    return alpha_bar_next**0.5 * x0 + (1.0 - alpha_bar_next) ** 0.5 * eps


@dataclass
class DenoiseResult:
    latent: torch.Tensor
    x0_predictions: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (timestep, x0 estimate)
    step_seconds: list[float] = field(default_factory=list)


@torch.no_grad()
def denoise(backbone: Backbone, y_hat: torch.Tensor, t: int, steps: int, progress=None) -> DenoiseResult:
    """Run DDIM from x_t = sqrt(abar_t) * y_hat to step 0; returns x_0 and every x0 prediction.
    t = 0 means no denoising: y_hat itself is the latent the VAE decodes."""
    if t == 0:
        return DenoiseResult(latent=y_hat.float())
    abar = backbone.alphas_cumprod
    grid = timestep_grid(t, steps)
    x = float(abar[t]) ** 0.5 * y_hat.float()
    result = DenoiseResult(latent=x)
    for i, (tau, tau_next) in enumerate(zip(grid[:-1], grid[1:])):
        start = time.perf_counter()
        out = backbone.model_output(x, tau)
        eps, x0 = to_epsilon_and_x0(out, x.to(out.device), float(abar[tau]), backbone.prediction_type)
        if tau_next == 0:
            x = x0  # abar_0 := 1 at the end of the chain
        else:
            x = ddim_next(x0, eps, float(abar[tau_next]))
        result.x0_predictions.append((tau, x0))
        result.step_seconds.append(time.perf_counter() - start)
        if progress:
            progress(f"denoising step {i + 1}/{len(grid) - 1} (t={tau})", (i + 1) / (len(grid) - 1))
    result.latent = x
    return result
