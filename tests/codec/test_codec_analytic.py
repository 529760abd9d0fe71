"""The analytic (training-free) adapter: transform coding on the tiny random backbone, its side
information checked before decoding, bands switched off, and t from the error it really leaves."""

import dataclasses
import math

import pytest
import torch

from codec.core import images
from codec.core.adapters import transform
from codec.core.adapters.analytic import noise_matched_timestep
from codec.core.bitstream import BitstreamError, PAD_MULTIPLE, pack, parse
from tests.photos import photo as photo_named


def test_three_targets_give_monotone_rates_within_the_target_and_decode(tiny_codec, photo):
    results = [tiny_codec.encode(photo, target_bpp=target, mode="analytic") for target in (0.15, 0.3, 0.6)]
    bpps = [r.bpp for r in results]
    assert all(r.bpp <= target for r, target in zip(results, (0.15, 0.3, 0.6))), bpps
    assert bpps[0] < bpps[1] < bpps[2], bpps
    assert all(r.bpp >= 0.85 * target for r, target in zip(results, (0.15, 0.3, 0.6))), bpps  # reachable: met closely
    for result in results:
        assert tiny_codec.decode(result.data).image.size == photo.size
        assert result.timings["rate_control_probes"] <= 8


def _side_layout(header):
    """(rotation angles, band scales) of a transform-format file of the tiny backbone (C = 4)."""
    return header.side_info[:6], header.side_info[6:]


def test_side_information_is_rotation_angles_and_band_scales(tiny_codec, photo):
    header, _ = parse(tiny_codec.encode(photo, step=0.5, mode="analytic").data)
    latent = [side // 8 for side in (128, 192)]  # the photo is 150 x 101, padded to 192 x 128
    assert len(header.side_info) == 6 + 4 * transform.band_count(*latent) == 6 + 4 * 6
    angles, scales = _side_layout(header)
    assert all(abs(a) <= math.pi for a in angles) and any(a != 0 for a in angles)
    assert all(s >= 0 for s in scales) and any(s > 0 for s in scales)


@pytest.mark.parametrize("change,message", [
    (lambda side: side[:-1], "carries 30 side-information values \\(6 rotation angles, 24 band scales\\)"),
    (lambda side: side + (1.0,), "carries 30 side-information values"),
    (lambda side: (3.5,) + side[1:], "rotation in the side information \\(angles must be within -pi..pi"),
    (lambda side: side[:6] + (-1.0,) + side[7:], "band scales in the side information \\(they must be 0 or positive"),
])
def test_forged_side_information_is_refused_before_decoding(tiny_codec, photo, monkeypatch, change, message):
    header, payloads = parse(tiny_codec.encode(photo, step=0.5, mode="analytic").data)
    monkeypatch.setattr(tiny_codec.adapters["analytic"], "decompress", lambda *a: pytest.fail("decompress called"))
    forged = pack(dataclasses.replace(header, side_info=change(header.side_info)), payloads)
    with pytest.raises(BitstreamError, match=message):
        tiny_codec.decode(forged)


def test_a_step_that_zeroes_every_band_switches_every_band_off(tiny_codec, photo):
    """Reverse water-filling's end: no band above the water, no coefficient coded; y_hat is the channel means."""
    data = tiny_codec.encode(photo, step=64.0, mode="analytic").data
    header, y_hat = tiny_codec.dequantize(data)
    assert all(s == 0 for s in _side_layout(header)[1])
    means = torch.tensor([-b / a for a, b in zip(header.scale, header.shift)]).view(1, -1, 1, 1)
    assert torch.allclose(y_hat, means.expand_as(y_hat), atol=1e-6)


def test_t_matches_the_error_the_quantizer_really_leaves(demo_codec, photo):
    """The encoder's t is the noise-matched step of the real mean squared error of y_hat (the demo
    backbone's latents are large enough for t to range over many steps)."""
    x = images.pad_to_multiple(images.to_tensor(photo), PAD_MULTIPLE)
    with torch.no_grad():
        y = demo_codec.backbone.encode(x)
    adapter = demo_codec.adapters["analytic"]
    ts = []
    for step in (4.0, 16.0, 32.0):  # this crop is mostly sky: small latent deviations
        result = demo_codec.encode(photo, step=step, mode="analytic")
        _, y_hat = demo_codec.dequantize(result.data)
        error = float((y - y_hat).pow(2).mean())
        assert abs(result.t - noise_matched_timestep(adapter.alphas_cumprod, error, adapter.t_max)) <= 1
        ts.append(result.t)
    assert ts[0] < ts[1] < ts[2], ts


def test_the_transform_is_orthonormal():
    x = torch.randn(1, 4, 16, 24, dtype=torch.float64)
    coefficients = transform.block_dct(x)
    assert torch.allclose(coefficients.pow(2).sum(), x.pow(2).sum())
    assert torch.allclose(transform.block_dct(coefficients, inverse=True), x)
    rotation = transform.channel_rotation(x)
    assert torch.allclose(rotation.T @ rotation, torch.eye(4, dtype=torch.float64))
    assert torch.allclose(transform.rotate(transform.rotate(x, rotation.T), rotation), x)
    angles = transform.rotation_angles(rotation)
    assert len(angles) == transform.angle_count(4) == 6
    assert torch.allclose(transform.rotation_from_angles(angles, 4), rotation)
    assert transform.block_size(16, 24) == 8 and transform.block_size(9, 17) == 1 and transform.block_size(12, 20) == 4
    assert math.prod(transform.band_map(16, 24).shape) == 16 * 24


@pytest.fixture(scope="module")
def demo_codec():
    from codec.core.diffusion_codec import DiffusionCodec

    return DiffusionCodec.load("demo", adapter=None, mode="analytic", device="cpu", dtype="float32")


@pytest.mark.parametrize("scale", [0.5, 3.0, 40.0])
def test_the_laplacian_model_is_a_laplacian_of_that_standard_deviation(scale):
    from codec.core.adapters.analytic import AnalyticAdapter

    values = torch.arange(-4000, 4001).float()
    pmf = AnalyticAdapter().conditional._likelihood(values, torch.full_like(values, scale))
    b = scale / math.sqrt(2.0)  # closed form: P(k) = F(k + 1/2) - F(k - 1/2), F the Laplace(0, b) CDF
    expected = torch.where(values == 0, 1 - math.exp(-0.5 / b),
                           0.5 * (torch.exp(-(values.abs() - 0.5) / b) - torch.exp(-(values.abs() + 0.5) / b)))
    assert torch.allclose(pmf, expected, atol=1e-6) and float(pmf.sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("scale", [0.05, 0.5, 1.0, 4.0, 100.0])
def test_the_closed_form_entropy_of_a_rounded_laplacian_equals_its_sum(scale):
    from codec.core.adapters.base import laplacian_entropy_bits

    b = scale / math.sqrt(2.0)
    k = torch.arange(-20000, 20001).double()
    cdf = lambda x: torch.where(x < 0, 0.5 * torch.exp(x / b), 1 - 0.5 * torch.exp(-x / b))  # noqa: E731
    p = cdf(k + 0.5) - cdf(k - 0.5)
    p = p[p > 0]
    assert float(laplacian_entropy_bits(torch.tensor([scale]))) == pytest.approx(float(-(p * torch.log2(p)).sum()), rel=1e-6)


@pytest.mark.parametrize("exponent", [-1.2, -0.2, 0.3])
def test_the_knob_guess_solves_a_power_law_and_gives_its_slope(exponent):
    """bits = 1e5 knob^exponent on a grid (falling with the knob like a quantizer step, or rising
    like lambda): the guess meets the payload asked for, with the exponent as its slope, and stays
    on the grid's ends (with their slope) beyond them."""
    from codec.core.adapters.base import knob_for_bits

    log_knobs = torch.linspace(math.log(1e-3), math.log(1e2), 257, dtype=torch.float64)
    bits = 1e5 * (exponent * log_knobs).exp()
    guess = knob_for_bits(log_knobs, bits, 2e5)
    assert guess.knob == pytest.approx(2.0 ** (1 / exponent), rel=1e-3)
    assert guess.slope == pytest.approx(exponent, rel=1e-6)
    beyond = knob_for_bits(log_knobs, bits, 1e30)
    assert beyond.knob == pytest.approx(1e-3 if exponent < 0 else 1e2) and beyond.slope == pytest.approx(exponent)
    assert knob_for_bits(log_knobs, torch.full_like(bits, 1e5), 2e5).slope is None  # flat: no slope to follow


@pytest.mark.parametrize("name", ["kite", "storm"])
@pytest.mark.parametrize("bpp", [0.02, 0.05, 0.1, 0.3, 0.5])
def test_the_predicted_step_lands_on_the_target_and_saves_probes(demo_codec, name, bpp):
    """Rate control starts at predicted_knob: analyse's estimate of the payload there is within 3 %
    of the payload asked for (0.985-1.003 on the test photos; a Laplacian of each band's RMS, the
    prediction before the histograms, missed by up to 25 %), and the search from there takes at
    most 2 probes (one on every test and validation photo at 0.02-0.3 bpp, benchmarks/rate_control.py)."""
    image = photo_named(name, width=384)
    x = images.pad_to_multiple(images.to_tensor(image), PAD_MULTIPLE)
    with torch.no_grad():
        y = demo_codec.backbone.encode(x)
    adapter = demo_codec.adapters["analytic"]
    payload_bits = bpp * image.width * image.height * 0.9    # the header takes the rest
    features = adapter.features(y)
    guess = adapter.predicted_knob(features, payload_bits)

    def estimate(step: float) -> float:
        q = adapter.quantization(y, step, features)
        return adapter.analyse(q.apply(y), q).estimated_bits

    assert 0.97 < estimate(guess.knob) / payload_bits < 1.03, estimate(guess.knob) / payload_bits
    # the guessed slope of log bits in log step is the estimate's own, within a third
    spread = 0.1
    slope = math.log(estimate(guess.knob * math.exp(spread)) / estimate(guess.knob / math.exp(spread))) / (2 * spread)
    assert guess.slope < 0 and abs(guess.slope / slope - 1) < 1 / 3, (guess.slope, slope)
    result = demo_codec.encode(image, target_bpp=bpp, mode="analytic")
    assert result.bpp <= bpp and result.timings["rate_control_probes"] <= 2
