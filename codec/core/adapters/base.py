"""What every adapter is: the interface DiffusionCodec codes through, the quantization it yields,
and diffusers-style persistence (`save_pretrained`, `from_pretrained` on a folder or a hub id).

An adapter turns a latent y into z = a * y + b per channel (a > 0), chooses the diffusion timestep
t the decoder starts from (0: no denoising), may add side information that travels in the header,
and entropy-codes round(z). Its rate knob (lambda, a quantization step...) is one float; rate
control searches it in log space between `knob_range`'s ends.
"""

from __future__ import annotations

import json
import math
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec.core.backbone import BackboneUnavailable, hub_snapshot, is_hub_id
from codec.core.bitstream import VERSION, Header, zigzag_order
from codec.core.entropy_coding import pmf_to_quantized_cdf

CONFIG_FILE = "adapter.json"
WEIGHTS_FILE = "adapter.safetensors"
PREDICTION_GRID = 129  # knobs a predicted_knob evaluates over the knob range (log-spaced: ~8 % apart in step)
MAX_SYMBOL_MAGNITUDE = 2**26  # the largest |symbol| the entropy coder is given (see check_codable)
# The tables of zigzag order (bitstream version 3) cover the values up to this tail mass, not
# compressai's 1e-9: 2/3 of the length (c = 9.8 instead of 14.7 standard deviations of a Laplacian),
# so a third less to hand the rANS coder on every call, and fewer bits: the far tails' entries each
# took compressai's least frequency, 1/65536 of the mass, though a value lands there once in 1e6
# (0.1-0.3 % smaller files at 0.3-0.5 bpp on the demo, the same at low rates).
ZIGZAG_TAIL_MASS = 1e-6


@dataclass(frozen=True)
class Quantization:
    """The side information of one encoding, already rounded to what the header stores."""

    scale: tuple[float, ...]  # gamma: per-channel a of z = a * y + b
    shift: tuple[float, ...]  # gamma: per-channel b
    t: int  # the timestep denoising starts from; 0 = none
    side_info: tuple[float, ...] = ()  # whatever else the adapter's decoder needs (float16 values)
    version: int = VERSION  # of the bitstream whose payloads this quantization codes or decodes

    @classmethod
    def from_header(cls, header: Header) -> "Quantization":
        return cls(header.scale, header.shift, header.t, header.side_info, header.version)

    @property
    def zigzag(self) -> bool:
        """Whether the latent's symbols are coded in zigzag order (bitstream.zigzag_order)."""
        return zigzag_order(self.version)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return y * per_channel(self.scale, y) + per_channel(self.shift, y)

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        return (z - per_channel(self.shift, z)) / per_channel(self.scale, z)


@dataclass(frozen=True)
class Analysis:
    """The entropy model's view of round(z) under one quantization: its estimate of the payloads'
    size, and the tensors computing it yielded that coding needs too (the adapter's own names), so
    that coding the candidate rate control picks does not compute them again."""

    estimated_bits: float
    tensors: dict


def per_channel(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


class Adapter(ABC):
    """The interface of a coding mode. Latent shapes are (1, C, h, w); `knob` is the rate knob."""

    mode: str  # the bitstream's mode name
    knob_name: str  # what the knob is called in DiffusionCodec.encode and the CLI (lam, step)
    description: str  # for the codec's notice, e.g. "analytic (training-free)"
    config: dict  # what save_pretrained writes and the constructor takes back

    @property
    @abstractmethod
    def fingerprint(self) -> bytes:
        """The bitstream's adapter fingerprint: a file decodes only with the adapter that wrote it."""

    @property
    @abstractmethod
    def t_max(self) -> int:
        """The largest timestep this adapter writes (and accepts in a file)."""

    @property
    @abstractmethod
    def knob_range(self) -> tuple[float, float]:
        """(log knob of the lowest rate, log knob of the highest rate)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the latent must be for this adapter."""

    @abstractmethod
    def attach(self, backbone) -> "Adapter":
        """Bind to the backbone this adapter codes for (device, noise schedule); returns self.
        Raises ValueError when the backbone does not fit (channels, schedule length)."""

    @abstractmethod
    def features(self, y: torch.Tensor):
        """Knob-independent analysis of y, computed once per image and given to every `quantization`."""

    def predicted_knob(self, features, payload_bits: float) -> "KnobGuess | None":
        """A first guess, from the features alone, of the knob whose payloads take `payload_bits`
        and of the rate's slope there: rate control starts there. None: no guess (it starts in the
        middle of the range with a generic slope)."""
        return None

    @abstractmethod
    def quantization(self, y: torch.Tensor, knob: float, features) -> Quantization:
        """gamma, t and side information for y at this knob."""

    @abstractmethod
    def analyse(self, z: torch.Tensor, quantization: Quantization) -> Analysis:
        """The entropy model's estimate of the payloads' size for round(z), without coding, and what
        `compress` takes from it."""

    @abstractmethod
    def compress(self, z: torch.Tensor, quantization: Quantization, analysis: Analysis | None = None) -> list[bytes]:
        """Entropy-code round(z): one rANS string per payload (as many as bitstream.payload_count).
        `analysis` is `analyse(z, quantization)` where the caller has it (the same bytes, sooner)."""

    @abstractmethod
    def side_info_count(self, latent_shape) -> int:
        """How many side-information values `quantization` writes for a latent of this shape."""

    @abstractmethod
    def symbol_counts(self, latent_shape) -> list[int]:
        """How many symbols each payload codes for a latent of this shape (bounds its length)."""

    @abstractmethod
    def check_quantization(self, quantization: Quantization, latent_shape) -> None:
        """Raise ValueError (with a message for a person) if a file's t or side information is not one
        this adapter can have written for this shape. Runs before anything is decoded."""

    @abstractmethod
    def decompress(self, payloads: list[bytes], latent_shape, quantization: Quantization) -> torch.Tensor:
        """round(z) from payloads whose lengths were checked against `symbol_counts`."""

    # -- persistence --------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """Tensors save_pretrained stores next to the config (none for a training-free adapter)."""
        return {}

    def save_pretrained(self, folder) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps({"_class_name": type(self).__name__, **self.config}, indent=2))
        if weights := self.weights():
            save_file(weights, folder / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, source, subfolder: str | None = None, device=None) -> "Adapter":
        """Load an adapter saved by save_pretrained from a folder or a hub id (the local Hugging Face
        cache first), optionally from `subfolder` inside it."""
        folder = adapter_folder(source, subfolder)
        config = read_config(folder)
        if config.pop("_class_name", None) != cls.__name__:
            raise FileNotFoundError(f"{folder / CONFIG_FILE} does not describe a {cls.__name__}.")
        return cls._from_folder(folder, config, device)

    @classmethod
    def _from_folder(cls, folder: Path, config: dict, device) -> "Adapter":
        return cls(**config)


def adapter_folder(source, subfolder: str | None = None) -> Path:
    """The local folder of an adapter: `source` itself, or a hub id's snapshot in the HF cache."""
    path = Path(source).expanduser()
    if not path.is_dir() and is_hub_id(source):
        path = _hub_snapshot(source, subfolder)
    folder = path / subfolder if subfolder else path
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: not an adapter folder.")
    return folder


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{folder / CONFIG_FILE} cannot be read ({exc}).") from None
    if not isinstance(config, dict):
        raise FileNotFoundError(f"{folder / CONFIG_FILE} is not an adapter configuration.")
    return config


def _hub_snapshot(repo_id: str, subfolder: str | None) -> Path:
    """The backbones' hub lookup (the local cache first, then the Hub if it answers), for adapter files."""
    prefix = f"{subfolder}/" if subfolder else ""
    try:
        return hub_snapshot(repo_id, [prefix + CONFIG_FILE, prefix + WEIGHTS_FILE])
    except BackboneUnavailable as exc:
        reason = str(exc).split(". ")[0]  # why; the rest of the message is about backbones
        raise FileNotFoundError(f"Adapter {repo_id}: {reason}. Download it once (`huggingface-cli download {repo_id}`) "
                                "or pass the adapter's folder.") from None


def scale_indexes(gaussian_conditional, scales: torch.Tensor) -> torch.Tensor:
    """gaussian_conditional.build_indexes(scales), the index of the first scale-table entry at or
    above each (lower-bounded) scale, by one binary search: compressai's loop over the table's 64
    entries took ~5 ms per 768x512 latent on one thread, once per rate-control probe and per coding.
    The lower bound is compressai's LowerBound's forward, torch.max(scales, bound), without its
    autograd Function (which costs more than the search on the analytic adapter's 24 band scales)."""
    scales = torch.max(scales, gaussian_conditional.lower_bound_scale.bound)
    table = gaussian_conditional.scale_table[:-1].to(scales)  # build_indexes compares in the scales' dtype
    return torch.searchsorted(table, scales.contiguous()).int()


def coded_scales(gaussian_conditional, indexes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The scale-table entries the coder really codes with (scale_indexes rounds each scale up to
    one): bit estimates priced with them track the real file within ~3%, with the exact scales
    they swung by -14..+8% from one knob to the next, which cost rate control extra real codings."""
    return gaussian_conditional.scale_table.to(like)[indexes.long()]


class GaussianCoder:
    """compressai's GaussianConditional.compress and decompress for one latent (batch 1), handing its
    rANS coder only the CDF tables the latent uses, each cut to its length, in value or zigzag order.

    Only the tables used: the coder takes them as Python lists, which pybind11 converts to C++ on
    every call: the whole 64-scale table is 27k-65k values (~4.5 ms a call for the analytic
    adapter's), while a latent uses a few of its scales (13-49 of 64 on the demo backbone), and a row
    padded to the longest table (7509 values for the Laplacian) cost ~1 ms more per call than the
    row itself. The symbols' indexes are renumbered into that subset, which the decoder derives from
    the same indexes; a symbol is coded with the same CDF either way, so the bytes are the same
    (tested against compressai's own compress).

    Zigzag order (`zigzag=True`, bitstream version 3 on): the decoder finds each symbol by a linear
    search from the start of its table, and in value order the symbol v sits at v + c of a table
    spanning -c..c, with c ~15 standard deviations for compressai's tail mass: at 0.5 bpp on the
    demo 36 million comparisons, 8 ms of a 12 ms decode. A zigzag table lists the frequencies of
    compressai's table at ZIGZAG_TAIL_MASS in the order 0, -1, +1, -2, +2, ... (`zigzag_table`),
    so a symbol costs ~2|v| comparisons; the coded value is its position there (`to_zigzag`).

    A value-order table comes from the conditional's own tables where it has them (a learned
    adapter's, built by update() or loaded with its weights); a conditional whose update() never ran
    (the analytic adapter's), and every zigzag table, has each table built on first use exactly as
    update() builds it (`cdf_table`): all 64 Laplacian tables took ~0.13 s of every cold CLI call."""

    def __init__(self, gaussian_conditional):
        self.gaussian_conditional = gaussian_conditional
        # (scale index, zigzag) -> (CDF, its length, offset); filled as latents use scales (a race
        # between two threads builds the same table twice, harmlessly)
        self._tables: dict[tuple[int, bool], tuple[list[int], int, int]] = {}

    def _table(self, index: int, zigzag: bool) -> tuple[list[int], int, int]:
        table = self._tables.get((index, zigzag))
        if table is None:
            if zigzag:
                table = zigzag_table(*cdf_table(self.gaussian_conditional, index, ZIGZAG_TAIL_MASS))
            else:
                table = cdf_table(self.gaussian_conditional, index)
            self._tables[index, zigzag] = table
        return table

    def _used(self, indexes: torch.Tensor, zigzag: bool) -> tuple[torch.Tensor, list, list, list]:
        """The indexes renumbered into the scales they use, and those scales' tables."""
        flat = indexes.reshape(-1).long()
        # torch.unique(flat, return_inverse=True), by a count over the table: 0.1 ms instead of 0.7
        present = torch.bincount(flat, minlength=len(self.gaussian_conditional.scale_table)) > 0
        renumbered = (present.cumsum(0) - 1)[flat]
        cdfs, lengths, offsets = zip(*(self._table(i, zigzag) for i in present.nonzero().reshape(-1).tolist()))
        return renumbered, list(cdfs), list(lengths), list(offsets)

    def compress(self, z: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor, zigzag: bool) -> bytes:
        symbols = self.gaussian_conditional.quantize(z, "symbols", means).reshape(-1)
        renumbered, cdfs, lengths, offsets = self._used(indexes, zigzag)
        if zigzag:
            symbols = to_zigzag(symbols, _centers(lengths)[renumbered])
        return self.gaussian_conditional.entropy_coder.encode_with_indexes(
            symbols.int().tolist(), renumbered.tolist(), cdfs, lengths, offsets)

    def decompress(self, string: bytes, indexes: torch.Tensor, means: torch.Tensor, zigzag: bool) -> torch.Tensor:
        renumbered, cdfs, lengths, offsets = self._used(indexes, zigzag)
        values = self.gaussian_conditional.entropy_coder.decode_with_indexes(
            string, renumbered.tolist(), cdfs, lengths, offsets)
        # packed by struct into a buffer torch reads in place: torch.tensor on a list of ints takes 5x
        # as long (1.4 ms for 24576 symbols), array.array 1.7x, np.array 1.9x
        buffer = bytearray(4 * len(values))
        struct.pack_into(f"={len(values)}i", buffer, 0, *values)
        symbols = torch.frombuffer(buffer, dtype=torch.int32)
        if zigzag:
            symbols = from_zigzag(symbols, _centers(lengths)[renumbered])
        return self.gaussian_conditional.dequantize(symbols.to(indexes.device).reshape(indexes.shape), means)


def _centers(lengths: list[int]) -> torch.Tensor:
    """The half-width c of each symmetric table (symbols -c..c and the escape: 2c + 3 CDF values)."""
    return (torch.tensor(lengths, dtype=torch.int32) - 3) // 2


def to_zigzag(values: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Each symbol's position in its zigzag table: within the table's -c..c, its place in the order
    0, -1, +1, -2, +2, ... (protocol buffers' zigzag encoding: 2v for v >= 0, -2v - 1 for v < 0);
    beyond it v + c, its value-order position, which compressai codes as the escape with the very
    bypass bits of value order (a larger position would cost more of them). int32: |v| < 2**30."""
    values, centers = values.int(), centers.int()
    return torch.where(values.abs() <= centers, (values << 1) ^ (values >> 31), values + centers)


def from_zigzag(positions: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The inverse of to_zigzag (positions 0..2c are in the table, the others escapes), on int32:
    a forged stream's positions, any int32, decode to meaningless values (int32 wraps), never an error."""
    positions, centers = positions.int(), centers.int()
    inside = (positions >= 0) & (positions <= 2 * centers)
    return torch.where(inside, (positions >> 1) ^ -(positions & 1), positions - centers)


def zigzag_table(cdf: list[int], length: int, offset: int) -> tuple[list[int], int, int]:
    """A value-order CDF table of the symbols -c..c (offset -c) and the escape, as the same
    frequencies in zigzag order (position u codes from_zigzag(u)), then the escape; offset 0. Every
    symbol keeps its frequency, so its cost in bits (to_zigzag keeps the escapes' bypass bits too)."""
    center = -offset
    if length != 2 * center + 3:
        raise ValueError(f"A CDF table of {length} values with offset {offset} is not symmetric about 0.")
    frequencies = torch.tensor(cdf).diff()
    values = from_zigzag(torch.arange(2 * center + 1), torch.tensor(center)).long()
    reordered = torch.cat((frequencies[values + center], frequencies[-1:]))
    return [0, *reordered.cumsum(0).tolist()], length, 0


def cdf_table(gaussian_conditional, index: int, tail_mass: float | None = None) -> tuple[list[int], int, int]:
    """The quantized CDF (cut to its length), length and offset of scale-table entry `index`: the
    conditional's own table where update() built or loaded them, else computed for this one scale
    the way compressai's GaussianConditional.update() computes every row (the same float ops on the
    same values: the same table, tested for all 64 scales of both the Gaussian and the Laplacian).
    `tail_mass` given: the table update() would build with that tail mass instead of the conditional's."""
    gc = gaussian_conditional
    if gc._quantized_cdf.numel() > 0 and tail_mass is None:
        length = int(gc._cdf_length.reshape(-1)[index])
        return gc._quantized_cdf[index, :length].tolist(), length, int(gc._offset.reshape(-1)[index])
    scale = gc.scale_table[index : index + 1].float()
    tail_mass = gc.tail_mass if tail_mass is None else tail_mass
    center = torch.ceil(scale * -gc._standardized_quantile(tail_mass / 2)).int()
    samples = torch.abs(torch.arange(2 * int(center) + 1).int() - center[:, None]).float()
    upper = gc._standardized_cumulative((0.5 - samples) / scale.unsqueeze(1))
    lower = gc._standardized_cumulative((-0.5 - samples) / scale.unsqueeze(1))
    probabilities = torch.cat(((upper - lower)[0], 2 * lower[0, :1]))  # then the tails' mass, as update()
    cdf = pmf_to_quantized_cdf(probabilities, gc.entropy_coder_precision).tolist()
    return cdf, len(cdf), -int(center)


def check_codable(residual: torch.Tensor) -> None:
    """compressai's rANS encoder loops forever on escape values of 2**28 and more (a 32-bit shift in
    its nibble count), so symbols must stay well below; real latents are a few thousand at most."""
    if not bool(torch.isfinite(residual).all()) or float(residual.abs().max()) >= MAX_SYMBOL_MAGNITUDE:
        raise ValueError("The quantized latent is out of the entropy coder's range (non-finite or huge values).")


def default_t_max(num_train_timesteps: int) -> int:
    """At most 10% of the diffusion process (the paper's "less than 10%")."""
    return max(1, num_train_timesteps // 10)


def laplacian_bits(scales: torch.Tensor, population: torch.Tensor, nonzero: torch.Tensor,
                   magnitude: torch.Tensor) -> torch.Tensor:
    """The bits of `population` integers coded with a zero-mean Laplacian of standard deviation
    `scales` (in quantizer steps), as compressai's likelihood prices them, from counts alone:
    `nonzero` of them are not 0 and their |values| sum to `magnitude`. With r = exp(-sqrt(2) /
    scale), P(0) = 1 - sqrt(r) and P(+-k) = r^(k - 1/2) (1 - r) / 2, so -log2 P sums to
    n0 (-log2 P(0)) + nonzero (-log2((1 - r) / 2)) - (magnitude - nonzero / 2) log2 r.
    (compressai floors a likelihood at 1e-9, which only a value far out in a table's tail reaches:
    there this prices it higher.)"""
    log_r = -math.sqrt(2.0) / scales
    zero_bits = -torch.log2(-torch.expm1(log_r / 2))
    nonzero_bits = -torch.log2(-torch.expm1(log_r) / 2)
    return ((population - nonzero) * zero_bits + nonzero * nonzero_bits
            - (magnitude - nonzero / 2) * log_r / math.log(2.0))


def laplacian_entropy_bits(scale: torch.Tensor) -> torch.Tensor:
    """Bits per value of a zero-mean Laplacian of standard deviation `scale` (in quantizer steps)
    rounded to integers: laplacian_bits of one value at its expected counts, P(nonzero) = sqrt(r)
    and E|k| = sqrt(r) / (1 - r). 0 for a scale near 0."""
    s = scale.double().clamp(min=1e-3)
    log_r = -math.sqrt(2.0) / s
    nonzero = torch.exp(log_r / 2)
    bits = laplacian_bits(s, torch.ones_like(s), nonzero, nonzero / -torch.expm1(log_r))
    return torch.where(scale > 1e-3, bits, torch.zeros_like(bits))


@dataclass(frozen=True)
class KnobGuess:
    """Where rate control starts: a knob, and the estimate's d log(bits) / d log(knob) there (None
    where the estimate is flat), so that its first step already follows this image's curve (the
    slope runs from -1.4 at 0.02 bpp to -0.2 at 0.5 bpp on the demo's analytic adapter)."""

    knob: float
    slope: float | None


def knob_for_bits(log_knobs: torch.Tensor, bits: torch.Tensor, payload_bits: float) -> KnobGuess:
    """The knob at which `bits`, estimated at each of the (ascending) `log_knobs` and monotone in
    them (either way), meets `payload_bits`, interpolated in log bits and clamped to the grid's
    ends, with the grid's slope of log bits in log knob there."""
    log_bits = bits.clamp(min=1e-9).log().double().numpy()
    grid = log_knobs.double().numpy()
    slopes = np.gradient(log_bits, grid)
    if log_bits[0] > log_bits[-1]:  # np.interp needs its x ascending
        log_bits, grid, slopes = log_bits[::-1], grid[::-1], slopes[::-1]
    log_knob, slope = (float(np.interp(math.log(payload_bits), log_bits, values)) for values in (grid, slopes))
    return KnobGuess(math.exp(log_knob), slope if abs(slope) > 1e-3 else None)
