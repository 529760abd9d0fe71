"""The paper's adapter: the parameter network P(y, lambda) -> (gamma, t) and a compressai
mean-scale hyperprior that codes the quantized latent; trained with `python -m codec.train adapter`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from codec.core.adapters.base import (WEIGHTS_FILE, Adapter, Analysis, GaussianCoder, KnobGuess, Quantization,
                                     check_codable, coded_scales, knob_for_bits, laplacian_entropy_bits, scale_indexes)
from codec.core.bitstream import FINGERPRINT_BYTES, VERSION, quantize_side_info, rans_decoder_input, zigzag_order
from codec.core.entropy_coding import CompressionModel, EntropyBottleneck, GaussianConditional, get_scale_table


NO_DENOISING_BELOW = 0.05  # continuous t under which the file says t = 0 (see LearnedAdapter.coded_timestep)
CELL = 4  # latent pixels per side of the cells whose spread predicted_knob takes: the hyper-latent's resolution
SPREAD_BINS = 24  # of the histogram of log cell spreads, per channel
LAMBDA_GRID = 65  # lambdas predicted_knob evaluates (log-spaced over the knob range: ~20 % apart)


@dataclass(frozen=True)
class _Features:
    """What every rate-control probe of one image shares."""

    conv: torch.Tensor  # ParameterNet.features(y)
    spread: torch.Tensor  # (C, cells) RMS deviation of y from its mean in each CELL x CELL cell


def _spread_histogram(spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, SPREAD_BINS) geometric bin centres and cell counts of the spreads, log-spaced bins over
    all channels' range. Cells of spread ~0 (flat padding) are left out: they cost no bits."""
    channels = len(spread)
    log_spread = spread.double().clamp(min=1e-12).log()
    kept = spread > 1e-4
    if not kept.any():
        return torch.ones(channels, 1, dtype=torch.float64), torch.zeros(channels, 1, dtype=torch.float64)
    low, high = float(log_spread[kept].min()), float(log_spread[kept].max()) + 1e-9
    width = (high - low) / SPREAD_BINS
    bins = ((log_spread - low) / width).long().clamp(0, SPREAD_BINS - 1)
    slots = (torch.arange(channels)[:, None] * SPREAD_BINS + bins)[kept]
    counts = torch.bincount(slots, minlength=channels * SPREAD_BINS).double().view(channels, SPREAD_BINS)
    centres = torch.exp(low + width * (torch.arange(SPREAD_BINS, dtype=torch.float64) + 0.5)).expand(channels, -1)
    return centres, counts


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


class LearnedAdapter(Adapter, CompressionModel):
    """ParameterNet + mean-scale hyperprior (EntropyBottleneck on h, GaussianConditional on z).
    Two payloads: the hyper-latent, then the latent. No side information beyond gamma and t."""

    mode = "learned"
    knob_name = "lam"
    description = "learned"

    def __init__(self, channels: int = 4, hidden: int = 64, hyper_channels: int = 64, t_max: int = 100,
                 lam_min: float = 1e-3, lam_max: float = 1e3):
        super().__init__()
        self.config = dict(channels=channels, hidden=hidden, hyper_channels=hyper_channels, t_max=t_max,
                           lam_min=lam_min, lam_max=lam_max)
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
        self._gaussian_coder = None  # built from the CDF tables by prepare

    @property
    def t_max(self) -> int:
        return self.config["t_max"]

    @property
    def knob_range(self) -> tuple[float, float]:
        return math.log(self.config["lam_min"]), math.log(self.config["lam_max"])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def attach(self, backbone) -> "LearnedAdapter":
        if self.config["channels"] != backbone.latent_channels:
            raise ValueError(f"The adapter codes {self.config['channels']} latent channels, the backbone has "
                             f"{backbone.latent_channels}.")
        if self.t_max >= backbone.num_train_timesteps:
            raise ValueError(f"The adapter's t_max {self.t_max} is outside the backbone's schedule.")
        return self.to(backbone.device)

    # -- parameters ---------------------------------------------------------------------------
    def features(self, y: torch.Tensor) -> _Features:
        with torch.no_grad():
            cells = lambda v: torch.nn.functional.avg_pool2d(v, CELL, ceil_mode=True)  # noqa: E731
            variance = (cells(y.float().pow(2)) - cells(y.float()).pow(2)).clamp(min=0)
            return _Features(self.param_net.features(y), variance[0].flatten(1).sqrt().cpu())

    def predicted_knob(self, features: _Features, payload_bits: float) -> KnobGuess:
        """The lambda at which round(a y + b), every value taken as a Laplacian of its cell's spread
        (the hyperprior's scales follow the local spread of z), would take payload_bits, with a
        from the parameter network at each lambda of a log grid over the knob range (one batched
        call) and the entropy in closed form (laplacian_entropy_bits) at the centres of a histogram
        of the spreads (its cost does not grow with the image). The hyperprior's means and its own
        hyper-latent make the real size differ, which the probes correct."""
        log_lams = torch.linspace(*self.knob_range, LAMBDA_GRID, dtype=torch.float64)
        with torch.no_grad():
            log_a, _, _ = self.param_net(None, log_lams.exp().to(features.conv), features.conv)
        centres, counts = _spread_histogram(features.spread)
        scales = log_a.double().cpu().exp()[:, :, None] * centres  # (lambdas, C, bins), in quantizer steps
        bits = CELL * CELL * (counts * laplacian_entropy_bits(scales)).sum(dim=(1, 2))
        return knob_for_bits(log_lams, bits, payload_bits)

    def quantization(self, y: torch.Tensor, knob: float, features: _Features | None = None) -> Quantization:
        features = features if features is not None else self.features(y)
        with torch.no_grad():
            log_a, shift, t_cont = self.param_net(y, torch.tensor([knob], dtype=y.dtype, device=y.device), features.conv)
        t = self.coded_timestep(float(t_cont[0]))
        return Quantization(quantize_side_info(log_a[0].exp().cpu()), quantize_side_info(shift[0].cpu()), t)

    def coded_timestep(self, t_cont: float) -> int:
        """The integer t the file carries for the network's continuous t.

        0 (no denoising) only where the network's sigmoid has saturated, below NO_DENOISING_BELOW:
        training saw a fractional t as a real, small denoising step (abar and the UNet's timestep
        interpolated between 0 and 1), and where it asked for one (t ~ 0.1-0.4) t = 1 beat no
        denoising by up to 0.23 dB; where it asked for ~0 (<= 0.03), t = 1 lost up to 0.3 dB
        (benchmarks/adapter_quality.py on the demo backbone). Otherwise the nearest step, >= 1.
        """
        if t_cont < NO_DENOISING_BELOW:
            return 0
        return min(max(int(round(t_cont)), 1), self.t_max)

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

    def analyse(self, z: torch.Tensor, quantization: Quantization | None = None) -> Analysis:
        """As `likelihoods` in eval mode, but with the scales the coder really uses (see coded_scales).
        Keeps h, the prior's means and the scale indexes for `compress`: the entropy bottleneck
        rounds h around its medians exactly as its decompress does, so this prior is the decoder's."""
        gc = self.gaussian_conditional
        with torch.no_grad():
            h = self.h_a(z)
            h_hat, h_lik = self.entropy_bottleneck(h, training=False)
            means, scales = self.prior(h_hat, z.shape[-2:])
            indexes = scale_indexes(gc, scales)
            _, z_lik = gc(z, coded_scales(gc, indexes, scales), means=means, training=False)
        bits = float(-(torch.log2(z_lik).sum() + torch.log2(h_lik).sum()))
        return Analysis(bits, {"h": h, "means": means, "indexes": indexes})

    # -- coding -------------------------------------------------------------------------------
    def compress(self, z: torch.Tensor, quantization: Quantization | None = None,
                 analysis: Analysis | None = None) -> list[bytes]:
        kept = (analysis or self.analyse(z, quantization)).tensors
        h, means = kept["h"], kept["means"]
        with torch.no_grad():
            check_codable(h - self.entropy_bottleneck._get_medians().view(1, -1, 1, 1))
            check_codable(z - means)
            h_strings = self.entropy_bottleneck.compress(h)
            z_string = self._coder().compress(z, kept["indexes"], means, _zigzag(quantization))
        return [h_strings[0], z_string]

    def _coder(self) -> GaussianCoder:
        if self._gaussian_coder is None:
            raise RuntimeError("Call prepare() before coding: the adapter has no CDF tables yet.")
        return self._gaussian_coder

    def side_info_count(self, latent_shape) -> int:
        return 0  # the hyper-latent carries what the decoder needs

    def symbol_counts(self, latent_shape) -> list[int]:
        h, w = _hyper_size(latent_shape)
        return [self.config["hyper_channels"] * h * w, math.prod(latent_shape)]

    def check_quantization(self, quantization: Quantization, latent_shape) -> None:
        if quantization.t > self.t_max:
            raise ValueError(f"Timestep t={quantization.t} exceeds this adapter's maximum {self.t_max}.")
        if quantization.side_info:
            raise ValueError(f"A learned-mode file has no side information; this one has {len(quantization.side_info)} values.")

    def decompress(self, payloads: list[bytes], latent_shape, quantization: Quantization | None = None) -> torch.Tensor:
        h_symbols, z_symbols = self.symbol_counts(latent_shape)
        with torch.no_grad():
            h_hat = self.entropy_bottleneck.decompress([rans_decoder_input(payloads[0], h_symbols)], _hyper_size(latent_shape))
            means, scales = self.prior(h_hat, latent_shape[-2:])
            indexes = scale_indexes(self.gaussian_conditional, scales)
            return self._coder().decompress(rans_decoder_input(payloads[1], z_symbols), indexes, means,
                                            _zigzag(quantization))

    # -- persistence --------------------------------------------------------------------------
    def prepare(self, build_tables: bool = True) -> "LearnedAdapter":
        """Build the CDF tables that real entropy coding needs (unless they were just loaded), and
        switch to inference."""
        if build_tables:
            # update_quantiles refits the hyper-latent's CDF range by bisection, so coding does not
            # depend on how far the slow aux-loss fit of the quantiles got during training.
            self.update(scale_table=get_scale_table(), force=True, update_quantiles=True)
        self._fingerprint = None
        self._gaussian_coder = GaussianCoder(self.gaussian_conditional)
        return self.eval().requires_grad_(False)

    @property
    def fingerprint(self) -> bytes:
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(save(self.weights())).digest()[:FINGERPRINT_BYTES]
        return self._fingerprint

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def _from_folder(cls, folder: Path, config: dict, device) -> "LearnedAdapter":
        if not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}: not a trained adapter folder.")
        adapter = cls(**config)
        weights = load_file(folder / WEIGHTS_FILE)
        adapter.load_state_dict(weights)
        # An exported adapter holds the tables prepare() builds (bit for bit); building them again
        # would cost half a second of every CLI call.
        has_tables = all(weights.get(f"{coder}._quantized_cdf", torch.empty(0)).numel() > 0
                         for coder in ("entropy_bottleneck", "gaussian_conditional"))
        return adapter.prepare(build_tables=not has_tables).to(device or "cpu")


def _zigzag(quantization: Quantization | None) -> bool:
    """The latent's symbol order: the quantization's bitstream version's, else this software's."""
    return quantization.zigzag if quantization is not None else zigzag_order(VERSION)


def _hyper_size(latent_shape) -> tuple[int, int]:
    return math.ceil(latent_shape[-2] / 4), math.ceil(latent_shape[-1] / 4)  # h_a has two stride-2 convs
