"""The training-free adapter: transform coding of the latent, with nothing learned.

gamma removes each channel's mean and divides by one quantization step (`step` times the latent's
standard deviation); inside the adapter the latent is rotated across channels by the image's own
KLT and each rotated channel is transformed by an orthonormal 8x8 block DCT (transform.py). Every
coefficient is rounded to an integer (the same step everywhere: equal distortion in every
coefficient that is coded, the reverse water-filling solution), and coded with a zero-mean
Laplacian whose standard deviation is its (channel, frequency band)'s RMS, sent as side
information (forward adaptation). A band whose coefficients all round to 0 is switched off (scale
0, nothing coded). t matches the error this quantization really leaves (the encoder measures it),
and DDIM removes it. docs/method.md, "The analytic mode", has the equations and the ablation.

Side information (float16): the rotation as C(C-1)/2 Givens angles, then one scale per rotated
channel and band (C x band_count). Files of the first analytic format carry C values, one Gaussian
scale per channel of round(z) itself; they still decode (`_decompress_per_channel`), told apart by
the count.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from codec.core.adapters import transform
from codec.core.adapters.base import (PREDICTION_GRID, Adapter, Analysis, GaussianCoder, KnobGuess, Quantization,
                                     check_codable, coded_scales, default_t_max, knob_for_bits, laplacian_bits,
                                     per_channel, scale_indexes)
from codec.core.bitstream import FINGERPRINT_BYTES, quantize_side_info, rans_decoder_input
from codec.core.entropy_coding import GaussianConditional, get_scale_table



def noise_matched_timestep(alphas_cumprod: torch.Tensor, noise_variance: float, t_max: int) -> int:
    """The t in 0..t_max whose diffusion noise matches quantization noise of variance `noise_variance`
    in y units: with x_t = sqrt(abar_t) * y_hat they match when abar_t * var = 1 - abar_t
    (paper-spec §1.6), i.e. abar_t = 1 / (1 + var). 0 (no denoising) when even abar_1 is too noisy.
    """
    target = 1.0 / (1.0 + noise_variance)
    return int(torch.argmin((alphas_cumprod[: t_max + 1] - target).abs()).item())


@dataclass(frozen=True)
class _Features:
    """What every rate-control probe of one image shares."""

    mean: torch.Tensor  # (C,) per-channel mean of y
    std: float  # the latent's RMS deviation over all channels: the unit of the step
    angles: tuple[float, ...]  # the KLT as Givens angles, float16-rounded as stored
    coefficients: torch.Tensor  # block DCT of the rotated, centred y (y units)
    bands: torch.Tensor  # (C, h, w) index of each coefficient's (channel, band) scale in the side information
    population: torch.Tensor  # (C x bands,) float64: how many coefficients each (channel, band) scale covers
    band_rms: torch.Tensor  # (C x bands,) float64: the RMS of each (channel, band)'s coefficients (y units)
    # (2, C x bands, HISTOGRAM_BINS + 1) float64: per (channel, band), how many coefficients have |c|
    # at or above each bin's lower edge, and the sum of their |c| (a last column of zeros past the top)
    above: torch.Tensor


# The histogram of |coefficient| / std that predicts the step: bins of 1/8 octave from 2^-14 to 2^8
# (below: in the first bin, above: in the last; no step the knob range allows rounds those differently)
HISTOGRAM_OCTAVES = (-14, 8)
HISTOGRAM_BINS_PER_OCTAVE = 8
HISTOGRAM_BINS = (HISTOGRAM_OCTAVES[1] - HISTOGRAM_OCTAVES[0]) * HISTOGRAM_BINS_PER_OCTAVE
EXACT_MAGNITUDES = 3  # symbols of |k| <= this counted exactly at each step (rounding matters most there)


class AnalyticAdapter(Adapter):
    """Channel KLT + 8x8 block DCT, one Laplacian scale per band; step `knob` in latent standard deviations."""

    mode = "analytic"
    knob_name = "step"
    description = "analytic (training-free)"

    def __init__(self, step_min: float = 0.002, step_max: float = 64.0, t_max: int | None = None):
        """`t_max` None: 10% of the backbone's schedule (set by `attach`)."""
        self.config = dict(step_min=step_min, step_max=step_max, t_max=t_max)
        self.alphas_cumprod, self._t_max = None, t_max

    @functools.cached_property
    def conditional(self) -> "LaplacianConditional":
        """The entropy model; the coder builds each of its CDF tables when a latent first uses it."""
        return _with_scale_table(LaplacianConditional(None))

    @functools.cached_property
    def coder(self) -> GaussianCoder:
        return GaussianCoder(self.conditional)

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
    def device(self) -> torch.device:
        return torch.device("cpu")  # small transforms and a factorized prior: no work for a GPU

    def attach(self, backbone) -> "AnalyticAdapter":
        steps = backbone.num_train_timesteps
        self._t_max = self.config["t_max"] or default_t_max(steps)
        if self._t_max >= steps:
            raise ValueError(f"The adapter's t_max {self._t_max} is outside the backbone's schedule.")
        self.alphas_cumprod = backbone.alphas_cumprod
        return self

    # -- encoder ------------------------------------------------------------------------------
    def features(self, y: torch.Tensor) -> _Features:
        y = y.float()
        channels, height, width = y.shape[1:]
        mean = y.mean(dim=(0, 2, 3))
        angles = quantize_side_info(transform.rotation_angles(transform.channel_rotation(y)))
        centred = y - mean.view(1, -1, 1, 1)
        coefficients = transform.block_dct(transform.rotate(centred, _rotation(angles, channels).T))
        bands = _scale_slots(channels, height, width)
        population = _slot_population(channels, height, width)
        energy = torch.zeros(len(population), dtype=torch.float64).index_add_(
            0, bands.reshape(-1), coefficients.reshape(-1).double().pow(2))
        std = max(float(centred.pow(2).mean().sqrt()), 1e-3)
        return _Features(mean, std, angles, coefficients, bands, population, (energy / population.clamp(min=1)).sqrt(),
                         _magnitude_histogram(coefficients, bands, len(population), std))

    def predicted_knob(self, features: _Features, payload_bits: float) -> KnobGuess:
        """The step at which analyse's estimate meets payload_bits, that estimate computed from the
        coefficients' per-band histograms (`_magnitude_histogram`) on a grid of steps over the knob
        range at once, and interpolated in log bits: at each step s, a band has N(|c| >= s/2) nonzero
        symbols, and its symbols' |k| sum to N(>= s/2) + N(>= 3s/2) + N(>= 5s/2) (exactly, for
        |k| <= EXACT_MAGNITUDES) plus sum(|c| / s - EXACT_MAGNITUDES) over the larger ones, each N
        and sum interpolated within its 1/8-octave bin; those counts priced with the coded scale as
        analyse prices them (laplacian_bits). Within 1 % of analyse's estimate on the test photos at
        0.02-0.5 bpp, where a Laplacian of each band's RMS missed by up to 25 %, so rate control
        codes its first probe (median probes 2 -> 1 at 0.02-0.3 bpp, benchmarks/rate_control.py)."""
        log_steps = torch.linspace(*sorted(self.knob_range), PREDICTION_GRID, dtype=torch.float64)
        steps = log_steps.exp() * features.std  # in y units, as the coefficients
        k = torch.arange(1, EXACT_MAGNITUDES + 2, dtype=torch.float64)
        thresholds = (k - 0.5) * steps[:, None]  # (grid, EXACT + 1): where round(|c| / s) reaches k
        position = _histogram_position(thresholds, features.std).clamp(0, HISTOGRAM_BINS)
        below = position.floor().long().clamp(max=HISTOGRAM_BINS - 1)
        low, high = features.above[..., below], features.above[..., below + 1]  # (2, bands, grid, EXACT + 1)
        count, magnitude = low + (high - low) * (position - below)  # interpolated within the bin
        nonzero = count[..., 0]
        total = count[..., :-1].sum(-1) + magnitude[..., -1] / steps - EXACT_MAGNITUDES * count[..., -1]
        rms = features.band_rms[:, None] / steps
        scales = torch.where(nonzero >= 0.5, rms, torch.zeros_like(rms)).float()  # switched off as _switch_off
        coded = coded_scales(self.conditional, scale_indexes(self.conditional, scales), scales).double()
        bits = laplacian_bits(coded, features.population[:, None], nonzero, total).sum(0)
        return knob_for_bits(log_steps, bits, payload_bits)

    def quantization(self, y: torch.Tensor, knob: float, features: _Features | None = None) -> Quantization:
        f = features if features is not None else self.features(y)
        channels = y.shape[1]
        scale = quantize_side_info([1.0 / (knob * f.std)] * channels)
        shift = quantize_side_info((-f.mean * scale[0]).cpu())
        step = 1.0 / scale[0]
        symbols = torch.round(f.coefficients / step)
        slots = f.bands.unsqueeze(0)
        count = len(f.population)  # C x bands
        nonzero = torch.zeros(count).index_add_(0, slots.reshape(-1), (symbols != 0).float().reshape(-1))
        scales = self._switch_off((f.band_rms / step).float(), nonzero)
        # The error this quantizer leaves, in y units (the transforms are orthonormal): what DDIM removes.
        error = (f.coefficients - step * symbols * (scales[slots] > 0)).pow(2).mean()
        t = noise_matched_timestep(self.alphas_cumprod, float(error), self.t_max)
        return Quantization(scale, shift, t, f.angles + quantize_side_info(scales))

    @staticmethod
    def _switch_off(rms: torch.Tensor, nonzero: torch.Tensor) -> torch.Tensor:
        """The band scales sent: 0 (off, nothing coded) for a band with no nonzero symbol, else its RMS."""
        return torch.where(nonzero > 0, rms, torch.zeros_like(rms))

    def analyse(self, z: torch.Tensor, quantization: Quantization) -> Analysis:
        """The coefficients' symbols, their scale indexes, and their size under the coded Laplacians,
        summed per (channel, band) in closed form (laplacian_bits): every coefficient of a band has the
        same coded scale, so its bits depend only on |symbol|. That equals the sum of -log2 of
        compressai's likelihoods (tested) at a quarter of the cost, once per rate-control probe."""
        channels, height, width = z.shape[1:]
        band_scales = _band_scales(quantization, channels)
        band_indexes = scale_indexes(self.conditional, band_scales)
        slots = _scale_slots(channels, height, width).unsqueeze(0)
        symbols = torch.round(transform.block_dct(transform.rotate(
            z.float(), _rotation(quantization.side_info, channels).T))) * (band_scales > 0)[slots]
        flat, magnitude = slots.reshape(-1), symbols.abs().reshape(-1).double()
        count = len(band_scales)
        nonzero = torch.zeros(count, dtype=torch.float64).index_add_(0, flat, (magnitude > 0).double())
        total = torch.zeros(count, dtype=torch.float64).index_add_(0, flat, magnitude)
        bits = laplacian_bits(coded_scales(self.conditional, band_indexes, band_scales).double(),
                              _slot_population(channels, height, width), nonzero, total)
        return Analysis(float(bits.sum()), {"symbols": symbols, "indexes": band_indexes[slots]})

    def compress(self, z: torch.Tensor, quantization: Quantization, analysis: Analysis | None = None) -> list[bytes]:
        check_codable(z)  # before the transforms (which would turn a NaN into all NaNs and scale up huge values)
        analysis = analysis if analysis is not None else self.analyse(z, quantization)
        symbols = analysis.tensors["symbols"]
        check_codable(symbols)  # a block DCT gains up to 8x
        indexes = analysis.tensors["indexes"]
        return [self.coder.compress(symbols, indexes, torch.zeros_like(symbols), quantization.zigzag)]

    def side_info_count(self, latent_shape) -> int:
        return _side_count(latent_shape)

    # -- decoder ------------------------------------------------------------------------------
    def symbol_counts(self, latent_shape) -> list[int]:
        return [math.prod(latent_shape)]

    def check_quantization(self, quantization: Quantization, latent_shape) -> None:
        if quantization.t > self.t_max:
            raise ValueError(f"Timestep t={quantization.t} exceeds this adapter's maximum {self.t_max}.")
        channels, height, width = latent_shape[1:]
        side = quantization.side_info
        if _is_per_channel(quantization, latent_shape):
            if not all(s > 0 for s in side):
                raise ValueError("Invalid per-channel prior scales (they must be positive).")
            return
        expected, angles = _side_count(latent_shape), transform.angle_count(channels)
        if len(side) != expected:
            raise ValueError(f"An analytic-mode file of this size carries {expected} side-information values "
                             f"({angles} rotation angles, {expected - angles} band scales); "
                             f"one of the first format carries {channels} prior scales as side information; "
                             f"this one has {len(side)} values.")
        if not all(abs(a) <= math.pi for a in side[:angles]):
            raise ValueError("Invalid channel rotation in the side information (angles must be within -pi..pi).")
        if not all(s >= 0 for s in side[angles:]):
            raise ValueError("Invalid band scales in the side information (they must be 0 or positive).")

    def decompress(self, payloads: list[bytes], latent_shape, quantization: Quantization) -> torch.Tensor:
        (count,) = self.symbol_counts(latent_shape)
        string = rans_decoder_input(payloads[0], count)
        if _is_per_channel(quantization, latent_shape):
            return self._decompress_per_channel(string, latent_shape, quantization)
        channels, height, width = latent_shape[1:]
        band_scales = _band_scales(quantization, channels)
        slots = _scale_slots(channels, height, width).unsqueeze(0)
        indexes = scale_indexes(self.conditional, band_scales)[slots]
        symbols = self.coder.decompress(string, indexes, torch.zeros(latent_shape), quantization.zigzag)
        symbols = symbols * (band_scales > 0)[slots]
        rotation = _rotation(quantization.side_info, latent_shape[1])
        return transform.rotate(transform.block_dct(symbols.double(), inverse=True), rotation).float()

    def _decompress_per_channel(self, string: bytes, latent_shape, quantization: Quantization) -> torch.Tensor:
        """The first analytic format (bitstream version 1 and early version 2): round(z) itself, coded
        with one zero-mean Gaussian scale per channel."""
        like = torch.zeros(latent_shape)
        coder = self._per_channel_coder
        indexes = scale_indexes(coder.gaussian_conditional, per_channel(quantization.side_info, like)).expand_as(like)
        return coder.decompress(string, indexes, like, zigzag=False)  # value order: version 3 never writes it

    @functools.cached_property
    def _per_channel_coder(self) -> GaussianCoder:
        """The first format's Gaussian tables, built when such a file is decoded."""
        return GaussianCoder(_with_scale_table(GaussianConditional(None)))


class LaplacianConditional(GaussianConditional):
    """compressai's GaussianConditional with a zero-mean Laplacian of standard deviation `scale` in
    place of the Gaussian: DCT coefficients are closer to Laplacian (Lam & Goodman, IEEE TIP 2000;
    measured here: +0.1-0.2 dB at 0.03-0.1 bpp). Its CDF tables, likelihoods and coder are the parent's,
    built from this cumulative and quantile (tables 2.4x as long: the tails are heavier)."""

    def _standardized_cumulative(self, inputs: torch.Tensor) -> torch.Tensor:
        root2 = math.sqrt(2.0)  # unit variance: b = 1 / sqrt(2); each branch exact on its own side
        return torch.where(inputs < 0, 0.5 * torch.exp(root2 * inputs.clamp(max=0.0)),
                           1.0 - 0.5 * torch.exp(-root2 * inputs.clamp(min=0.0)))

    @staticmethod
    def _standardized_quantile(quantile: float) -> float:
        return math.log(2.0 * quantile) / math.sqrt(2.0)  # for quantile <= 1/2, the only ones compressai asks


def _with_scale_table(conditional: GaussianConditional) -> GaussianConditional:
    """compressai's update_scale_table without its update(): the scales, no CDF tables (GaussianCoder
    builds the ones a latent uses)."""
    conditional.scale_table = conditional._prepare_scale_table(get_scale_table())
    return conditional


def _side_count(latent_shape) -> int:
    """The transform format's side-information count: C(C-1)/2 angles + C x bands."""
    channels, height, width = latent_shape[1:]
    return transform.angle_count(channels) + channels * transform.band_count(height, width)


def _is_per_channel(quantization: Quantization, latent_shape) -> bool:
    """A file of the first analytic format: C side values. The transform format has more (C(C-1)/2 +
    C x bands > C), except for C = 1 with 1x1 blocks, where both code round(z) with one scale alike."""
    return len(quantization.side_info) == latent_shape[1] != _side_count(latent_shape)


def _rotation(side_info, channels: int) -> torch.Tensor:
    """The channel rotation of the stored (float16) angles: exactly orthonormal, so its transpose is
    the encoder's analysis and the decoder's synthesis is the matrix itself."""
    return _rotation_of(tuple(side_info[: transform.angle_count(channels)]), channels)


@functools.lru_cache(maxsize=8)
def _rotation_of(angles: tuple[float, ...], channels: int) -> torch.Tensor:
    """Cached: an encode asks for its image's rotation once per rate-control probe, and a product
    of C(C-1)/2 Givens matrices costs 0.6 ms (do not modify the result in place)."""
    return transform.rotation_from_angles(angles, channels)


def _histogram_position(magnitudes: torch.Tensor, std: float) -> torch.Tensor:
    """Where magnitudes fall on the histogram's bins of log2(|c| / std), in bins (fractional, unclamped)."""
    return (torch.log2(magnitudes / std) - HISTOGRAM_OCTAVES[0]) * HISTOGRAM_BINS_PER_OCTAVE


def _magnitude_histogram(coefficients: torch.Tensor, slots: torch.Tensor, count: int, std: float) -> torch.Tensor:
    """(2, slots, HISTOGRAM_BINS + 1): per (channel, band) slot, the number of coefficients with |c|
    at or above each histogram bin's lower edge (bins of log2(|c| / std)), and the sum of their |c|:
    two bincounts, ~0.3 ms per 768x512 latent, where sorting every band's magnitudes took 1.6 ms."""
    magnitudes = coefficients.abs().reshape(-1)
    position = _histogram_position(magnitudes, std).clamp(0, HISTOGRAM_BINS - 1)
    cells = slots.reshape(-1) * HISTOGRAM_BINS + position.long()
    size = count * HISTOGRAM_BINS
    counts = torch.bincount(cells, minlength=size).view(count, HISTOGRAM_BINS).double()
    sums = torch.bincount(cells, weights=magnitudes.double(), minlength=size).view(count, HISTOGRAM_BINS)
    at_or_above = torch.stack((counts, sums)).flip(2).cumsum(2).flip(2)
    return torch.cat((at_or_above, torch.zeros(2, count, 1, dtype=torch.float64)), 2)


@functools.lru_cache(maxsize=8)
def _scale_slots(channels: int, height: int, width: int) -> torch.Tensor:
    """(C, h, w): for every coefficient, the position of its (channel, band) scale among the band
    scales. Cached (every probe and coding of an image asks; do not modify the result in place)."""
    bands = transform.band_map(height, width)
    return torch.arange(channels).view(-1, 1, 1) * transform.band_count(height, width) + bands


@functools.lru_cache(maxsize=8)
def _slot_population(channels: int, height: int, width: int) -> torch.Tensor:
    """(C x bands,) float64: how many coefficients each (channel, band) scale covers."""
    slots = _scale_slots(channels, height, width)
    return torch.bincount(slots.reshape(-1), minlength=channels * transform.band_count(height, width)).double()


def _band_scales(quantization: Quantization, channels: int) -> torch.Tensor:
    """(C x bands,): the Laplacian scale of every (channel, band), from the side information (0: off)."""
    return torch.tensor(quantization.side_info[transform.angle_count(channels):], dtype=torch.float32)
