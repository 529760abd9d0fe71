"""The paper's adapter: quantization parameters gamma and timestep t from the latent, and the
entropy model that codes the quantized latent.

Two modes share one bitstream family (DESIGN.md §3):
- `LearnedAdapter`: the parameter network P(y, lambda) -> (gamma, t) and a compressai mean-scale
  hyperprior, trained with `python -m codec.train adapter`.
- `AnalyticAdapter`: no training: gamma whitens each channel with a quantization step, t matches
  the quantization-noise variance to the diffusion noise level, and the prior is a per-channel
  Gaussian whose scales travel in the header.

Both quantize z = a * y + b (per channel a > 0, b), round, and dequantize y_hat = (z_hat - b) / a.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel, get_scale_table
from safetensors.torch import load_file, save, save_file
from torch import nn

from codec.core.bitstream import FINGERPRINT_BYTES, quantize_side_info, rans_decoder_input

CONFIG_FILE = "adapter.json"
WEIGHTS_FILE = "adapter.safetensors"
MAX_SYMBOL_MAGNITUDE = 2**26  # the largest |symbol| the entropy coder is given (see _check_codable)


@dataclass
class Quantization:
    """Side information of one encoding, already rounded to what the header stores."""

    scale: tuple[float, ...]
    shift: tuple[float, ...]
    t: int

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return y * _per_channel(self.scale, y) + _per_channel(self.shift, y)

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        return (z - _per_channel(self.shift, z)) / _per_channel(self.scale, z)


def _per_channel(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def noise_matched_timestep(alphas_cumprod: torch.Tensor, noise_variance: float, t_max: int) -> int:
    """The t whose diffusion noise matches quantization noise of variance `noise_variance` in y units.

    With x_t = sqrt(abar_t) * y_hat the noise level matches when abar_t * var = 1 - abar_t
    (paper-spec §1.6), i.e. abar_t = 1 / (1 + var).
    """
    target = 1.0 / (1.0 + noise_variance)
    t = int(torch.argmin((alphas_cumprod[: t_max + 1] - target).abs()).item())
    return min(max(t, 1), t_max)


class ParameterNet(nn.Module):
    """P(y, lambda) -> per-channel (log a, b) and a continuous timestep in (0, t_max).

    Image features are the global average of two unpadded convolutions over y: unpadded, so that
    the average does not depend on the image size (zero padding made features of small training
    crops differ from those of full images). They do not depend on lambda, so rate control computes
    them once per image. An MLP maps (features, log lambda) to the outputs; log a and the t logit
    also have a monotone term in log lambda with learned positive slopes, so the rate rises with
    lambda for every image and rate control by bisection is well posed.
    """

    def __init__(self, channels: int = 4, hidden: int = 64, t_max: int = 100):
        super().__init__()
        self.channels, self.t_max = channels, t_max
        self.conv = nn.Sequential(
            nn.Conv2d(channels, hidden, 3), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.SiLU(), nn.Linear(hidden, 2 * channels + 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.log_a_slope = nn.Parameter(torch.zeros(channels))  # softplus(0) ~ 0.69 > 0
        self.t_slope = nn.Parameter(torch.zeros(1))

    def features(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv(y)

    def forward(self, y: torch.Tensor, lam: torch.Tensor, features: torch.Tensor | None = None):
        features = self.features(y) if features is None else features
        log_lam = torch.log(lam).view(-1, 1).to(features)
        out = self.head(torch.cat([features.expand(len(log_lam), -1), log_lam], dim=1))
        c = self.channels
        log_a = out[:, :c] + nn.functional.softplus(self.log_a_slope) * log_lam
        shift = out[:, c:2 * c]
        t_logit = out[:, 2 * c] - nn.functional.softplus(self.t_slope) * log_lam[:, 0]
        return log_a, shift, self.t_max * torch.sigmoid(t_logit)


class LearnedAdapter(CompressionModel):
    """ParameterNet + mean-scale hyperprior (EntropyBottleneck on h, GaussianConditional on z)."""

    mode = "learned"

    def __init__(self, channels: int = 4, hidden: int = 64, hyper_channels: int = 64, t_max: int = 100,
                 lam_min: float = 1e-3, lam_max: float = 1e3):
        super().__init__()
        self.config = dict(channels=channels, hidden=hidden, hyper_channels=hyper_channels, t_max=t_max,
                           lam_min=lam_min, lam_max=lam_max)
        self.t_max, self.lam_min, self.lam_max = t_max, lam_min, lam_max
        n = hyper_channels
        self.param_net = ParameterNet(channels, hidden, t_max)
        self.h_a = nn.Sequential(
            nn.Conv2d(channels, n, 3, padding=1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(n, n, 5, stride=2, padding=2), nn.LeakyReLU(inplace=True),
            nn.Conv2d(n, n, 5, stride=2, padding=2),
        )
        self.h_s = nn.Sequential(
            nn.ConvTranspose2d(n, n, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(inplace=True),
            nn.ConvTranspose2d(n, n, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(n, 2 * channels, 3, padding=1),
        )
        self.entropy_bottleneck = EntropyBottleneck(n)
        self.gaussian_conditional = GaussianConditional(None)
        self._fingerprint = None

    # -- parameters ---------------------------------------------------------------------------
    def quantization(self, y: torch.Tensor, lam: float, features: torch.Tensor | None = None) -> Quantization:
        """gamma and t for one image; pass `param_net.features(y)` to reuse them across lambdas."""
        with torch.no_grad():
            log_a, shift, t_cont = self.param_net(y, torch.tensor([lam], dtype=y.dtype, device=y.device), features)
        t = min(max(int(round(float(t_cont[0]))), 1), self.t_max)
        return Quantization(quantize_side_info(log_a[0].exp().cpu()), quantize_side_info(shift[0].cpu()), t)

    def prior(self, h_hat: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
        means, scales = self.h_s(h_hat).chunk(2, dim=1)
        return means[..., : size[0], : size[1]], scales[..., : size[0], : size[1]]

    # -- training -----------------------------------------------------------------------------
    def likelihoods(self, z: torch.Tensor):
        """Noisy-relaxed (training) or rounded (eval) z and its likelihoods, and the hyper-latent's."""
        h = self.h_a(z)
        h_hat, h_likelihoods = self.entropy_bottleneck(h)
        means, scales = self.prior(h_hat, z.shape[-2:])
        z_hat, z_likelihoods = self.gaussian_conditional(z, scales, means=means)
        return z_hat, z_likelihoods, h_likelihoods

    def estimate_bits(self, z: torch.Tensor) -> float:
        with torch.no_grad():
            _, z_lik, h_lik = self.likelihoods(z)
        return float(-(torch.log2(z_lik).sum() + torch.log2(h_lik).sum()))

    # -- coding -------------------------------------------------------------------------------
    def compress(self, z: torch.Tensor) -> list[bytes]:
        with torch.no_grad():
            h = self.h_a(z)
            _check_codable(h - self.entropy_bottleneck._get_medians().view(1, -1, 1, 1))
            h_strings = self.entropy_bottleneck.compress(h)
            h_hat = self.entropy_bottleneck.decompress(h_strings, h.shape[-2:])
            means, scales = self.prior(h_hat, z.shape[-2:])
            _check_codable(z - means)
            z_strings = self.gaussian_conditional.compress(z, self.gaussian_conditional.build_indexes(scales), means=means)
        return [h_strings[0], z_strings[0]]

    def symbol_counts(self, latent_size) -> list[int]:
        """How many symbols each payload (hyper-latent, latent) codes for a latent of `latent_size`."""
        h, w = _hyper_size(latent_size)
        return [self.config["hyper_channels"] * h * w, self.config["channels"] * latent_size[0] * latent_size[1]]

    def decompress(self, payloads: list[bytes], latent_size) -> torch.Tensor:
        h_symbols, z_symbols = self.symbol_counts(latent_size)
        with torch.no_grad():
            h_hat = self.entropy_bottleneck.decompress([rans_decoder_input(payloads[0], h_symbols)], _hyper_size(latent_size))
            means, scales = self.prior(h_hat, latent_size)
            return self.gaussian_conditional.decompress(
                [rans_decoder_input(payloads[1], z_symbols)], self.gaussian_conditional.build_indexes(scales), means=means
            )

    # -- persistence --------------------------------------------------------------------------
    def prepare(self) -> "LearnedAdapter":
        """Build the CDF tables that real entropy coding needs, and switch to inference."""
        # update_quantiles refits the hyper-latent's CDF range by bisection, so coding does not
        # depend on how far the slow aux-loss fit of the quantiles got during training.
        self.update(scale_table=get_scale_table(), force=True, update_quantiles=True)
        self._fingerprint = None
        return self.eval().requires_grad_(False)

    @property
    def fingerprint(self) -> bytes:
        if self._fingerprint is None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            self._fingerprint = hashlib.sha256(save(state)).digest()[:FINGERPRINT_BYTES]
        return self._fingerprint

    def save_pretrained(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps({"_class_name": type(self).__name__, **self.config}, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, folder, device="cpu") -> "LearnedAdapter":
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_FILE} and {WEIGHTS_FILE}: not an adapter folder.")
        config = json.loads((folder / CONFIG_FILE).read_text())
        config.pop("_class_name", None)
        adapter = cls(**config)
        adapter.load_state_dict(load_file(folder / WEIGHTS_FILE))
        adapter._fingerprint = None
        return adapter.to(device).eval().requires_grad_(False)


class AnalyticAdapter:
    """Training-free mode: per-channel whitening with step `step` (in channel standard deviations)."""

    mode = "analytic"
    fingerprint = bytes(FINGERPRINT_BYTES)
    step_min, step_max = 0.05, 64.0

    def __init__(self, alphas_cumprod: torch.Tensor, t_max: int):
        self.alphas_cumprod, self.t_max = alphas_cumprod, t_max
        self.gaussian_conditional = GaussianConditional(None)
        self.gaussian_conditional.update_scale_table(get_scale_table(), force=True)

    def quantization(self, y: torch.Tensor, step: float) -> tuple[Quantization, tuple[float, ...]]:
        mean = y.mean(dim=(0, 2, 3))
        std = y.std(dim=(0, 2, 3)).clamp_min(1e-3)
        scale = quantize_side_info((1.0 / (step * std)).cpu())
        shift = quantize_side_info((-mean * torch.tensor(scale)).cpu())
        # Rounding error is ~U(-1/2, 1/2) in z units, i.e. variance 1/(12 a^2) in y units.
        noise_variance = float(sum(1.0 / (12.0 * a * a) for a in scale) / len(scale))
        t = noise_matched_timestep(self.alphas_cumprod, noise_variance, self.t_max)
        q = Quantization(scale, shift, t)
        prior_scales = quantize_side_info(q.apply(y).std(dim=(0, 2, 3)).clamp_min(0.11).cpu())
        return q, prior_scales

    def _indexes(self, prior_scales, like: torch.Tensor) -> torch.Tensor:
        return self.gaussian_conditional.build_indexes(_per_channel(prior_scales, like).expand_as(like))

    def estimate_bits(self, z: torch.Tensor, prior_scales) -> float:
        scales = _per_channel(prior_scales, z).expand_as(z)
        _, likelihoods = self.gaussian_conditional(z, scales, means=torch.zeros_like(z), training=False)
        return float(-torch.log2(likelihoods).sum())

    def compress(self, z: torch.Tensor, prior_scales) -> list[bytes]:
        _check_codable(z)
        return self.gaussian_conditional.compress(z, self._indexes(prior_scales, z), means=torch.zeros_like(z))

    @staticmethod
    def symbol_counts(latent_shape) -> list[int]:
        """How many symbols the one payload codes for a latent of `latent_shape`."""
        return [math.prod(latent_shape)]

    def decompress(self, payloads: list[bytes], latent_shape, prior_scales) -> torch.Tensor:
        (symbols,) = self.symbol_counts(latent_shape)
        like = torch.zeros(latent_shape)
        return self.gaussian_conditional.decompress([rans_decoder_input(payloads[0], symbols)],
                                                    self._indexes(prior_scales, like), means=like)


def _check_codable(residual: torch.Tensor) -> None:
    """compressai's rANS encoder loops forever on escape values of 2**28 and more (a 32-bit shift in
    its nibble count), so symbols must stay well below; real latents are a few thousand at most."""
    if not bool(torch.isfinite(residual).all()) or float(residual.abs().max()) >= MAX_SYMBOL_MAGNITUDE:
        raise ValueError("The quantized latent is out of the entropy coder's range (non-finite or huge values).")


def _hyper_size(latent_size) -> tuple[int, int]:
    return math.ceil(latent_size[0] / 4), math.ceil(latent_size[1] / 4)  # h_a has two stride-2 convs


def default_t_max(num_train_timesteps: int) -> int:
    """At most 10% of the diffusion process (the paper's "less than 10%")."""
    return max(1, num_train_timesteps // 10)
