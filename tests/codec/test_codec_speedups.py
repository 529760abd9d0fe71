"""The encoder's shortcuts write the very bytes of the straightforward code: stored files
(tests/codec/data/golden-v3.json; data/README.md says how they descend from the files of the codec
before its shortcuts) re-encode byte for byte (on a CPU whose float kernels round otherwise, up to
the float16 side information that follows), and the learned adapter's coding from a probe's kept
analysis equals coding from scratch. In value order (bitstream versions 1 and 2) the coder writes
compressai's own bytes; in zigzag order (version 3) the same symbols with the same frequencies."""

import base64
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from codec.core import bitstream
from codec.core.bitstream import rans_decoder_input
from codec.core.adapters import transform
from codec.core.adapters.analytic import LaplacianConditional, _band_scales, _scale_slots, _with_scale_table
from codec.core.adapters.base import (MAX_SYMBOL_MAGNITUDE, ZIGZAG_TAIL_MASS, GaussianCoder, cdf_table, coded_scales,
                                     from_zigzag, scale_indexes, to_zigzag, zigzag_table)
from codec.core.diffusion_codec import DiffusionCodec
from codec.core.entropy_coding import GaussianConditional, get_scale_table
from codec.evaluate.metrics import psnr
from tests.codec.conftest import make_tiny_codec
from tests.photos import photo

GOLDEN = Path(__file__).parent / "data" / "golden-v3.json"
# (backbone, image, mode, knob name, knob): fixed knobs in both modes, and targets through rate control
GOLDEN_CASES = [
    *[("tiny", image, "learned", "lam", lam) for image in ("kite", "bee", "moss") for lam in (0.01, 1.0, 1000.0)],
    *[("tiny", image, "analytic", "step", step) for image in ("kite", "bee", "moss") for step in (0.5, 8.0)],
    ("demo", "storm", "analytic", "step", 1.0),
    *[("tiny", "storm", "learned", "target_bpp", bpp) for bpp in (0.5, 2.0)],  # the untrained adapter starts at 0.31
    *[("demo", "storm", "analytic", "target_bpp", bpp) for bpp in (0.05, 0.3)],
]


def golden_codecs() -> dict[str, DiffusionCodec]:
    # the demo ships no learned adapter (assets/models/demo/MODEL_CARD.md): the learned cases are the tiny codec's
    return {"tiny": make_tiny_codec(), "demo": DiffusionCodec.load("demo", None, "analytic")}


def golden_image(name: str):
    """Odd-sized crops (not multiples of 8 or 64) of the test photos."""
    return photo(name, width=200).crop((13, 7, 13 + 150, 7 + 101))


@pytest.fixture(scope="module")
def codecs():
    return golden_codecs()


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda case: "-".join(map(str, case)))
def test_files_are_byte_identical_to_those_the_codec_wrote_before_its_shortcuts(codecs, case):
    backbone, image, mode, knob, value = case
    expected = base64.b64decode(json.loads(GOLDEN.read_text())[f"{backbone} {image} {mode} {knob}={value}"])
    result = codecs[backbone].encode(golden_image(image), mode=mode, **{knob: value})
    if result.data != expected:
        _assert_only_the_platforms_floats_differ(codecs[backbone], expected, result.data)
    assert codecs[backbone].decode(result.data).image.size == (150, 101)


def _assert_only_the_platforms_floats_differ(codec: DiffusionCodec, expected: bytes, written: bytes) -> None:
    """The golden files were written on one CPU. On another, the VAE's convolutions and LAPACK sum
    in another order, so the latent differs in its last bits, and a rotation angle of the analytic
    adapter's side information, stored as float16, can round to the neighbouring value (seen on an
    AMD EPYC: one angle one ulp apart, and band scales that follow from it). Then every other
    header field must be equal, every side value within a few float16 ulps, the size within 2 %,
    and the two files must decode to nearly the same image."""
    old, _ = bitstream.parse(expected)
    new, _ = bitstream.parse(written)
    old_fields, new_fields = old.as_dict(), new.as_dict()
    assert {k: v for k, v in old_fields.items() if k != "side_info"} == \
        {k: v for k, v in new_fields.items() if k != "side_info"}
    a, b = torch.tensor(old.side_info), torch.tensor(new.side_info)
    assert a.shape == b.shape and torch.allclose(a, b, rtol=4 * 2.0**-10, atol=1e-3), (a - b).abs().max()
    assert abs(len(written) - len(expected)) <= 0.02 * len(expected) + 2
    assert psnr(codec.decode(expected).image, codec.decode(written).image) >= 35.0


def _compress_from_scratch(adapter, z: torch.Tensor) -> list[bytes]:
    """compressai's own path: hyper-analysis, code h, decode it again for the prior, code z."""
    eb, gc = adapter.entropy_bottleneck, adapter.gaussian_conditional
    h = adapter.h_a(z)
    h_strings = eb.compress(h)
    means, scales = adapter.prior(eb.decompress(h_strings, h.shape[-2:]), z.shape[-2:])
    return [h_strings[0], gc.compress(z, gc.build_indexes(scales), means=means)[0]]


def _decompress_from_scratch(adapter, payloads: list[bytes], latent_shape) -> torch.Tensor:
    eb, gc = adapter.entropy_bottleneck, adapter.gaussian_conditional
    hyper_size = [(side + 3) // 4 for side in latent_shape[-2:]]
    means, scales = adapter.prior(eb.decompress(payloads[:1], hyper_size), latent_shape[-2:])
    return gc.decompress(payloads[1:], gc.build_indexes(scales), means=means)


@pytest.mark.parametrize("lam", [1e-3, 0.03, 1.0, 30.0, 1e3])
def test_the_learned_probe_keeps_what_coding_from_scratch_computes(codecs, lam):
    adapter = codecs["tiny"].adapters["learned"]
    with torch.no_grad():
        y = codecs["tiny"].backbone.encode(torch.rand(1, 3, 72, 136) * 2 - 1)
        q = adapter.quantization(y, lam, adapter.features(y))
        z = q.apply(y)
        analysis = adapter.analyse(z, q)
        version_2 = dataclasses.replace(q, version=2)
        payloads = adapter.compress(z, version_2, analysis)
        assert payloads == adapter.compress(z, version_2) == _compress_from_scratch(adapter, z)
        z_hat = adapter.decompress(payloads, y.shape, version_2)
        assert torch.equal(z_hat, _decompress_from_scratch(adapter, payloads, y.shape))
        zigzag = adapter.compress(z, q, analysis)  # version 3: the same hyper-latent, the latent in zigzag order
        assert zigzag == adapter.compress(z, q) and zigzag[0] == payloads[0]
        assert torch.equal(adapter.decompress(zigzag, y.shape, q), z_hat)


@pytest.mark.parametrize("step", [0.05, 1.0, 30.0])
def test_the_analytic_coder_writes_and_reads_what_compressai_does(codecs, step):
    adapter = codecs["demo"].adapters["analytic"]
    gc = _updated(LaplacianConditional)  # compressai's GaussianConditional with Laplacian tables
    y = torch.randn(1, 4, 16, 24) * 3
    q = adapter.quantization(y, step, adapter.features(y))
    z = q.apply(y)
    symbols = adapter.analyse(z, q).tensors["symbols"]  # the rounded transform coefficients
    scales = _band_scales(q, 4)[_scale_slots(*z.shape[1:])].unsqueeze(0)
    indexes, zeros = gc.build_indexes(scales), torch.zeros_like(z)
    expected = gc.compress(symbols, indexes, means=zeros)
    version_2 = dataclasses.replace(q, version=2)
    assert adapter.compress(z, version_2, adapter.analyse(z, q)) == adapter.compress(z, version_2) == expected
    coefficients = gc.decompress(expected, indexes, means=zeros) * (scales > 0)
    rotation = transform.rotation_from_angles(q.side_info[:transform.angle_count(4)], 4)
    z_hat = transform.rotate(transform.block_dct(coefficients.double(), inverse=True), rotation).float()
    assert torch.equal(adapter.decompress(expected, z.shape, version_2), z_hat)
    zigzag = adapter.compress(z, q)  # version 3
    assert zigzag == adapter.compress(z, q, adapter.analyse(z, q))
    assert torch.equal(adapter.decompress(zigzag, z.shape, q), z_hat)


def test_scale_indexes_equal_compressais_build_indexes():
    gc = make_tiny_codec().adapters["analytic"].conditional
    table = gc.scale_table
    edges = torch.cat([table, torch.nextafter(table, torch.tensor(0.0)), torch.nextafter(table, torch.tensor(1e9))])
    scales = torch.cat([edges, torch.rand(5000) * 80, torch.tensor([0.0, -1.0, 1e9, float("inf"), float("nan")])])
    assert torch.equal(scale_indexes(gc, scales), gc.build_indexes(scales))
    assert scale_indexes(gc, scales).dtype == gc.build_indexes(scales).dtype


def _updated(conditional_class, tail_mass: float = 1e-9):
    """A conditional with compressai's own tables, update() over the whole scale table."""
    conditional = conditional_class(None, tail_mass=tail_mass)
    conditional.update_scale_table(get_scale_table(), force=True)
    return conditional


@pytest.mark.parametrize("used", [[0], [5, 40, 63], list(range(64))])
def test_the_coder_given_only_the_scales_a_latent_uses_writes_compressais_bytes(codecs, used):
    """GaussianCoder hands rANS the CDFs of the scales used (renumbered, built as they are first
    used), compressai all 64 of its own update()."""
    coder = codecs["demo"].adapters["analytic"].coder
    reference = _updated(LaplacianConditional)
    generator = torch.Generator().manual_seed(len(used))
    indexes = torch.tensor(used)[torch.randint(len(used), (1, 4, 12, 16), generator=generator)]
    scales = reference.scale_table[indexes].float()
    z = torch.randn(indexes.shape, generator=generator) * scales
    means = torch.zeros_like(z)
    expected = reference.compress(z, indexes.int(), means=means)[0]
    assert coder.compress(z, indexes, means, zigzag=False) == expected
    decoded = reference.decompress([expected], indexes.int(), means=means)
    assert torch.equal(coder.decompress(expected, indexes, means, zigzag=False), decoded)
    zigzag = coder.compress(z, indexes, means, zigzag=True)
    assert torch.equal(coder.decompress(zigzag, indexes, means, zigzag=True), decoded)
    assert abs(len(zigzag) - len(expected)) <= 0.005 * len(expected) + 8  # the same frequencies: the same bits


@pytest.mark.parametrize("conditional_class", [LaplacianConditional, GaussianConditional])
def test_tables_built_one_scale_at_a_time_are_updates(conditional_class):
    """cdf_table builds, for one scale, the row compressai's update() builds for all, and reads the
    row back from a conditional that has its tables (a learned adapter's)."""
    reference = _updated(conditional_class)
    lazy = _with_scale_table(conditional_class(None))  # as the analytic adapter prepares its conditionals
    assert lazy._quantized_cdf.numel() == 0  # nothing built up front
    lengths, offsets = reference._cdf_length.tolist(), reference._offset.tolist()
    for index in range(len(reference.scale_table)):
        expected = (reference._quantized_cdf[index, : lengths[index]].tolist(), lengths[index], offsets[index])
        assert cdf_table(lazy, index) == expected, index
        assert cdf_table(reference, index) == expected, index
    zigzag_reference = _updated(conditional_class, ZIGZAG_TAIL_MASS)  # the tables of version 3, before reordering
    lengths, offsets = zigzag_reference._cdf_length.tolist(), zigzag_reference._offset.tolist()
    for index in range(len(reference.scale_table)):
        expected = (zigzag_reference._quantized_cdf[index, : lengths[index]].tolist(), lengths[index], offsets[index])
        assert cdf_table(lazy, index, ZIGZAG_TAIL_MASS) == cdf_table(reference, index, ZIGZAG_TAIL_MASS) == expected
        assert lengths[index] <= cdf_table(reference, index)[1]


@pytest.mark.parametrize("conditional_class", [LaplacianConditional, GaussianConditional])
def test_zigzag_tables_give_every_symbol_its_value_order_frequency(conditional_class):
    """Position u of a zigzag table holds the frequency value order gives from_zigzag(u), the
    escape keeps its own, and the decoder's search for a symbol is shorter on average."""
    reference = _updated(conditional_class)
    for index in range(len(reference.scale_table)):
        cdf, length, offset = cdf_table(reference, index)
        zigzag, zigzag_length, zigzag_offset = zigzag_table(cdf, length, offset)
        center = -offset
        positions = torch.arange(2 * center + 1)
        values = from_zigzag(positions, torch.tensor(center)).long()
        assert sorted(values.tolist()) == list(range(-center, center + 1))
        frequencies, reordered = torch.tensor(cdf).diff(), torch.tensor(zigzag).diff()
        assert (zigzag_length, zigzag_offset, zigzag[0], zigzag[-1]) == (length, 0, 0, cdf[-1])
        assert torch.equal(reordered[:-1], frequencies[values + center]) and reordered[-1] == frequencies[-1]
        # the decoder's linear search: the expected position of a symbol, shorter in zigzag order
        assert (reordered[:-1] * positions).sum() < (frequencies[:-1] * positions).sum() or center == 0, index


def test_zigzag_positions_invert_and_keep_escapes_where_value_order_has_them():
    centers = torch.tensor([0, 1, 3, 3753]).repeat_interleave(9)
    values = torch.tensor([0, 1, -1, 2, -3, 4, -3754, 3754, -(MAX_SYMBOL_MAGNITUDE - 1)]).repeat(4)
    positions = to_zigzag(values, centers)
    assert torch.equal(from_zigzag(positions, centers), values.int())
    inside = values.abs() <= centers
    assert ((positions[inside] >= 0) & (positions[inside] <= 2 * centers[inside])).all()
    assert torch.equal(positions[~inside], (values + centers)[~inside].int())  # value order's escapes


def test_zigzag_coding_decodes_every_magnitude_the_coder_takes():
    """Escapes beyond every table, up to the largest magnitude the adapters code, round-trip in
    zigzag order with the padding the decoder is given, as in value order."""
    coder = GaussianCoder(_with_scale_table(LaplacianConditional(None)))
    generator = torch.Generator().manual_seed(0)
    indexes = torch.randint(64, (1, 4, 8, 8), generator=generator)
    z = torch.randn(indexes.shape, generator=generator) * coder.gaussian_conditional.scale_table[indexes].float()
    z.view(-1)[:6] = torch.tensor([MAX_SYMBOL_MAGNITUDE - 1.0, -(MAX_SYMBOL_MAGNITUDE - 1.0), 1e5, -1e5, 0.0, 1.0])
    zeros = torch.zeros_like(z)
    for zigzag in (False, True):
        string = coder.compress(z, indexes, zeros, zigzag)
        assert torch.equal(coder.decompress(rans_decoder_input(string, z.numel()), indexes, zeros, zigzag), z.round())


@pytest.mark.parametrize("step", [0.05, 1.0, 30.0])
def test_the_analytic_estimate_sums_compressais_likelihoods(codecs, step):
    """analyse prices each band in closed form from its symbols' counts; compressai prices every
    coefficient with its likelihood under the scale-table entry it is coded with."""
    adapter = codecs["demo"].adapters["analytic"]
    gc = adapter.conditional
    y = torch.randn(1, 4, 24, 40) * 3
    q = adapter.quantization(y, step, adapter.features(y))
    analysis = adapter.analyse(q.apply(y), q)
    symbols = analysis.tensors["symbols"]
    scales = _band_scales(q, 4)[_scale_slots(*y.shape[1:])].unsqueeze(0)
    coded = coded_scales(gc, scale_indexes(gc, scales), symbols)
    _, likelihoods = gc(symbols, coded, means=torch.zeros_like(symbols), training=False)
    expected = float(-torch.log2(likelihoods.double()).sum())
    assert analysis.estimated_bits == pytest.approx(expected, rel=1e-4, abs=0.5)
    assert torch.equal(analysis.tensors["indexes"], scale_indexes(gc, scales))
