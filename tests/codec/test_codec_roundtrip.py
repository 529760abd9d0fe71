import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from codec.core.bitstream import BitstreamError, parse

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["learned", "analytic"])
def test_encode_decode_keeps_size_and_header(tiny_codec, photo, mode):
    knob = {"lam": 1.0} if mode == "learned" else {"step": 1.0}
    result = tiny_codec.encode(photo, mode=mode, **knob)
    header, payloads = parse(result.data)
    assert header.mode == mode and (header.width, header.height) == photo.size
    assert result.bpp == pytest.approx(8 * len(result.data) / (photo.width * photo.height))
    assert 1 <= result.t <= 100 and 1 <= result.steps <= result.t
    decoded = tiny_codec.decode(result.data, intermediates=True)
    assert decoded.image.size == photo.size and decoded.image.mode == "RGB"
    assert [tau for tau, _ in decoded.intermediates] == sorted({tau for tau, _ in decoded.intermediates}, reverse=True)
    assert decoded.intermediates[0][0] == result.t
    assert all(im.size == photo.size for _, im in decoded.intermediates)
    assert {"vae_decode", "entropy_decode", "denoise_step_1", "total"} <= set(decoded.timings)


def test_same_bytes_decode_identically_in_two_processes(tiny_codec, photo, tmp_path):
    data = tiny_codec.encode(photo, lam=2.0).data
    (tmp_path / "in.dfc").write_bytes(data)
    script = textwrap.dedent(f"""
        import hashlib, numpy as np
        from tests.codec.conftest import make_tiny_codec
        codec = make_tiny_codec()
        image = codec.decode(open({str(tmp_path / 'in.dfc')!r}, 'rb').read()).image
        print(hashlib.sha256(np.asarray(image).tobytes()).hexdigest())
    """)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-2000:]
    digests = {run.stdout.strip() for run in runs}
    here = hashlib.sha256(np.asarray(tiny_codec.decode(data).image).tobytes()).hexdigest()
    assert digests == {here}


def test_bpp_falls_monotonically_with_lambda(tiny_codec, photo):
    bpps = [tiny_codec.encode(photo, lam=lam).bpp for lam in (100.0, 10.0, 1.0, 0.1, 0.01)]
    assert all(a >= b for a, b in zip(bpps, bpps[1:])), bpps
    assert bpps[0] > 1.5 * bpps[-1]


def test_bpp_falls_monotonically_with_step(tiny_codec, photo):
    bpps = [tiny_codec.encode(photo, step=s, mode="analytic").bpp for s in (0.1, 0.3, 1.0, 3.0, 10.0)]
    assert all(a > b for a, b in zip(bpps, bpps[1:])), bpps


@pytest.mark.parametrize("mode", ["learned", "analytic"])
def test_target_bpp_never_exceeded_and_met_within_10_percent(tiny_codec, photo, mode):
    extremes = ({"lam": 1e-3}, {"lam": 1e3}) if mode == "learned" else ({"step": 64.0}, {"step": 0.05})
    lowest, highest = (tiny_codec.encode(photo, mode=mode, **k).bpp for k in extremes)
    assert lowest < highest
    for fraction in (0.1, 0.4, 0.8):
        target = lowest + fraction * (highest - lowest)
        result = tiny_codec.encode(photo, mode=mode, target_bpp=target)
        assert result.bpp <= target
        assert result.bpp >= 0.9 * target, (target, result.bpp)


def test_unreachable_target_returns_lowest_rate_honestly(tiny_codec, photo):
    result = tiny_codec.encode(photo, mode="analytic", target_bpp=1e-4)
    assert result.bpp > 1e-4  # reported as reached, never faked
    assert result.bpp == pytest.approx(8 * len(result.data) / (photo.width * photo.height))


def test_decoder_refuses_a_file_from_another_backbone(tiny_codec, photo):
    from codec.core.backbone import build_tiny_backbone
    from codec.core.diffusion_codec import DiffusionCodec

    other = DiffusionCodec(build_tiny_backbone(seed=1), mode="analytic")
    data = other.encode(photo, step=1.0).data
    with pytest.raises(BitstreamError, match="different backbone"):
        tiny_codec.decode(data)


def test_v_prediction_backbone_round_trip(photo):
    from codec.core.backbone import build_tiny_backbone
    from codec.core.diffusion_codec import DiffusionCodec

    codec = DiffusionCodec(build_tiny_backbone(prediction_type="v_prediction"), mode="analytic")
    result = codec.encode(photo, step=0.5)
    assert codec.decode(result.data).image.size == photo.size


def test_exactly_one_rate_knob(tiny_codec, photo):
    with pytest.raises(ValueError, match="exactly one"):
        tiny_codec.encode(photo, lam=1.0, target_bpp=0.1)
