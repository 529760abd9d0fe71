"""The training-free adapter: gamma whitens each channel with a quantization step, t matches the
quantization-noise variance to the diffusion noise level, and the prior is a per-channel Gaussian
whose scales travel in the header as side information (one float16 per channel).
"""

from __future__ import annotations

import math

import torch
from codec.core.adapters.base import (Adapter, Analysis, GaussianCoder, Quantization, check_codable, coded_scales,
                                     default_t_max, per_channel, scale_indexes)
from codec.core.bitstream import FINGERPRINT_BYTES, quantize_side_info, rans_decoder_input
from codec.core.entropy_coding import GaussianConditional, get_scale_table

MIN_PRIOR_SCALE = 0.11  # compressai's scale bound: smaller scales code as this one


def noise_matched_timestep(alphas_cumprod: torch.Tensor, noise_variance: float, t_max: int) -> int:
    """The t in 0..t_max whose diffusion noise matches quantization noise of variance `noise_variance`
    in y units: with x_t = sqrt(abar_t) * y_hat they match when abar_t * var = 1 - abar_t
    (paper-spec §1.6), i.e. abar_t = 1 / (1 + var). 0 (no denoising) when even abar_1 is too noisy.
    """
    target = 1.0 / (1.0 + noise_variance)
    return int(torch.argmin((alphas_cumprod[: t_max + 1] - target).abs()).item())


class AnalyticAdapter(Adapter):
    """Per-channel whitening with step `knob` (in channel standard deviations); one payload."""

    mode = "analytic"
    knob_name = "step"
    description = "analytic (training-free)"

    def __init__(self, step_min: float = 0.05, step_max: float = 64.0, t_max: int | None = None):
        """`t_max` None: 10% of the backbone's schedule (set by `attach`)."""
        self.config = dict(step_min=step_min, step_max=step_max, t_max=t_max)
        self.alphas_cumprod, self._t_max = None, t_max
        self.gaussian_conditional = GaussianConditional(None)
        self.gaussian_conditional.update_scale_table(get_scale_table(), force=True)
        self.coder = GaussianCoder(self.gaussian_conditional)

    @property
    def fingerprint(self) -> bytes:
        return bytes(FINGERPRINT_BYTES)  # the format's rule: nothing trained to identify

    @property
    def t_max(self) -> int:
        return self._t_max

    @property
    def knob_range(self) -> tuple[float, float]:
        return math.log(self.config["step_max"]), math.log(self.config["step_min"])  # a larger step: a lower rate

    @property
    def rate_slope(self) -> float:
        return -1.7  # bits ~ step^-1.7 at 0.02-0.05 bpp, measured on the demo backbone's validation photos

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # per-channel statistics and a factorized prior: no work for a GPU

    def attach(self, backbone) -> "AnalyticAdapter":
        steps = backbone.num_train_timesteps
        self._t_max = self.config["t_max"] or default_t_max(steps)
        if self._t_max >= steps:
            raise ValueError(f"The adapter's t_max {self._t_max} is outside the backbone's schedule.")
        self.alphas_cumprod = backbone.alphas_cumprod
        return self

    def features(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y.mean(dim=(0, 2, 3)), y.std(dim=(0, 2, 3)).clamp_min(1e-3)

    def quantization(self, y: torch.Tensor, knob: float, features=None) -> Quantization:
        mean, std = features if features is not None else self.features(y)
        scale = quantize_side_info((1.0 / (knob * std)).cpu())
        shift = quantize_side_info((-mean * torch.tensor(scale)).cpu())
        # Rounding error is ~U(-1/2, 1/2) in z units, i.e. variance 1/(12 a^2) in y units.
        noise_variance = float(sum(1.0 / (12.0 * a * a) for a in scale) / len(scale))
        t = noise_matched_timestep(self.alphas_cumprod, noise_variance, self.t_max)
        z_std = Quantization(scale, shift, t).apply(y).std(dim=(0, 2, 3))
        return Quantization(scale, shift, t, quantize_side_info(z_std.clamp_min(MIN_PRIOR_SCALE).cpu()))

    def _indexes(self, quantization: Quantization, like: torch.Tensor) -> torch.Tensor:
        """The scale index of every element: one per channel, from the header's prior scales."""
        return scale_indexes(self.gaussian_conditional, per_channel(quantization.side_info, like)).expand_as(like)

    def analyse(self, z: torch.Tensor, quantization: Quantization) -> Analysis:
        indexes = self._indexes(quantization, z)
        scales = coded_scales(self.gaussian_conditional, indexes, z)
        _, likelihoods = self.gaussian_conditional(z, scales, means=torch.zeros_like(z), training=False)
        return Analysis(float(-torch.log2(likelihoods).sum()), {"indexes": indexes})

    def compress(self, z: torch.Tensor, quantization: Quantization, analysis: Analysis | None = None) -> list[bytes]:
        check_codable(z)
        indexes = analysis.tensors["indexes"] if analysis is not None else self._indexes(quantization, z)
        return [self.coder.compress(z, indexes, torch.zeros_like(z))]

    def symbol_counts(self, latent_shape) -> list[int]:
        return [math.prod(latent_shape)]

    def check_quantization(self, quantization: Quantization, latent_shape) -> None:
        if quantization.t > self.t_max:
            raise ValueError(f"Timestep t={quantization.t} exceeds this adapter's maximum {self.t_max}.")
        priors = quantization.side_info
        if len(priors) != latent_shape[1]:
            raise ValueError(f"An analytic-mode file carries {latent_shape[1]} prior scales as side information; "
                             f"this one has {len(priors)} values.")
        if not all(s > 0 for s in priors):
            raise ValueError("Invalid per-channel prior scales (they must be positive).")

    def decompress(self, payloads: list[bytes], latent_shape, quantization: Quantization) -> torch.Tensor:
        (symbols,) = self.symbol_counts(latent_shape)
        like = torch.zeros(latent_shape)
        return self.coder.decompress(rans_decoder_input(payloads[0], symbols), self._indexes(quantization, like), like)
