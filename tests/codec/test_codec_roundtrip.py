import hashlib
import inspect
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from codec.core.adapters.analytic import AnalyticAdapter
from codec.core.adapters.base import Adapter
from codec.core.adapters.learned import LearnedAdapter
from codec.core.bitstream import BitstreamError, parse
from codec.core.denoise import denoise
from codec.core.diffusion_codec import DiffusionCodec, load_adapter

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["learned", "analytic"])
def test_encode_decode_keeps_size_and_header(tiny_codec, photo, mode):
    # analytic: t matches the error the quantizer leaves, and the tiny latent's std is 0.04: only a step
    # that zeroes every band leaves an error above step 1's noise
    knob = {"lam": 1.0} if mode == "learned" else {"step": 16.0}
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
    with pytest.raises(ValueError, match="lam is not the analytic adapter's knob; it takes step"):
        tiny_codec.encode(photo, lam=1.0, mode="analytic")
    assert tiny_codec.encode(photo, knob=8.0, mode="analytic").data == tiny_codec.encode(photo, step=8.0, mode="analytic").data


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), "0.1"])
@pytest.mark.parametrize("name,mode", [("lam", "learned"), ("step", "analytic"), ("knob", "analytic"),
                                       ("target_bpp", "learned")])
def test_a_rate_knob_that_is_not_a_positive_number_is_refused_by_name(tiny_codec, photo, name, mode, value):
    """Before: a ZeroDivisionError, "cannot convert float NaN to integer", "math domain error", or
    (target_bpp=nan) a file at the highest rate."""
    with pytest.raises(ValueError, match=f"^{name} must be a positive number"):
        tiny_codec.encode(photo, mode=mode, **{name: value})


@pytest.mark.parametrize("mode,knob", [("learned", {"lam": 1e5}), ("analytic", {"step": 1.0})])
def test_t_0_means_no_denoising(tiny_codec, photo, monkeypatch, mode, knob):
    """Both adapters choose t = 0 at high rates; the decoder then VAE-decodes y_hat itself."""
    result = tiny_codec.encode(photo, mode=mode, **knob)
    assert (result.t, result.steps, result.header["format_version"]) == (0, 0, 3)
    _, y_hat = tiny_codec.dequantize(result.data)
    monkeypatch.setattr(tiny_codec.backbone, "model_output", lambda *a: pytest.fail("the denoiser ran at t = 0"))
    decoded = tiny_codec.decode(result.data, intermediates=True)
    with torch.no_grad():
        expected = tiny_codec.backbone.decode(y_hat)
    from codec.core import images

    assert np.array_equal(np.asarray(decoded.image), np.asarray(images.to_pil(images.crop(expected, *photo.size[::-1]))))
    assert decoded.intermediates == [] and not any(k.startswith("denoise_step") for k in decoded.timings)
    latent = torch.randn(1, 4, 3, 5)
    assert torch.equal(denoise(tiny_codec.backbone, latent, 0, 0).latent, latent)


def test_the_learned_adapter_says_no_denoising_only_where_its_timestep_vanishes(tiny_codec):
    from codec.core.adapters.learned import NO_DENOISING_BELOW

    adapter = tiny_codec.adapters["learned"]
    coded = [adapter.coded_timestep(v) for v in (0.0, NO_DENOISING_BELOW / 2, NO_DENOISING_BELOW, 0.3, 1.6, 1e9)]
    assert coded == [0, 0, 1, 1, 2, adapter.t_max]


def test_learned_and_analytic_adapters_have_one_interface():
    """Every method and property of Adapter, with the same signature in both (the codec never asks the mode)."""
    members = [name for name, value in vars(Adapter).items() if getattr(value, "__isabstractmethod__", False)]
    assert {"features", "quantization", "analyse", "compress", "decompress", "symbol_counts"} <= set(members)
    for name in members:
        learned, analytic = getattr(LearnedAdapter, name), getattr(AnalyticAdapter, name)
        if callable(learned):
            assert list(inspect.signature(learned).parameters) == list(inspect.signature(analytic).parameters), name
    assert not LearnedAdapter.__abstractmethods__ and not AnalyticAdapter.__abstractmethods__


def test_the_header_mode_picks_the_adapter_that_decodes(tiny_codec, photo):
    analytic = tiny_codec.encode(photo, step=8.0, mode="analytic")
    assert tiny_codec.mode == "learned" and tiny_codec.decode(analytic.data).header["mode"] == "analytic"
    only_analytic = DiffusionCodec(tiny_codec.backbone)
    assert set(only_analytic.adapters) == {"analytic"}
    assert only_analytic.decode(analytic.data).image.size == photo.size
    with pytest.raises(BitstreamError, match="encoded with a learned adapter, but none is loaded"):
        only_analytic.decode(tiny_codec.encode(photo, lam=1.0).data)
    with pytest.raises(ValueError, match="No learned adapter is loaded"):
        DiffusionCodec(tiny_codec.backbone, mode="learned")


def test_adapters_save_and_load_the_diffusers_way(tiny_codec, photo, tmp_path, monkeypatch):
    """save_pretrained -> from_pretrained on a folder, on a subfolder, and on a hub id from the local
    Hugging Face cache (offline): the reloaded adapters write the same bytes."""
    learned = tiny_codec.adapters["learned"]
    learned.save_pretrained(tmp_path / "repo" / "adapter")
    AnalyticAdapter(step_max=32.0).save_pretrained(tmp_path / "analytic")
    assert not (tmp_path / "analytic" / "adapter.safetensors").exists()  # nothing trained, nothing stored

    reloaded = LearnedAdapter.from_pretrained(tmp_path / "repo", subfolder="adapter")
    assert reloaded.fingerprint == learned.fingerprint
    codec = DiffusionCodec(tiny_codec.backbone, reloaded)
    assert codec.encode(photo, lam=3.0).data == tiny_codec.encode(photo, lam=3.0).data
    analytic = load_adapter(tmp_path / "analytic")
    assert isinstance(analytic, AnalyticAdapter) and analytic.config["step_max"] == 32.0
    with pytest.raises(FileNotFoundError, match="does not describe a LearnedAdapter"):
        LearnedAdapter.from_pretrained(tmp_path / "analytic")
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        load_adapter(tmp_path)

    # A hub snapshot as huggingface_hub lays it out in its cache: refs/main -> snapshots/<commit>/...
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    commit = "0" * 40
    snapshot = cache / "models--someone--codec-adapter" / "snapshots" / commit
    learned.save_pretrained(snapshot / "adapter")
    (cache / "models--someone--codec-adapter" / "refs").mkdir()
    (cache / "models--someone--codec-adapter" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    from_hub = load_adapter("someone/codec-adapter", subfolder="adapter")
    assert isinstance(from_hub, LearnedAdapter) and from_hub.fingerprint == learned.fingerprint
    with pytest.raises(FileNotFoundError, match="Adapter someone/not-downloaded: .* not in the local Hugging Face cache"):
        load_adapter("someone/not-downloaded")


DATA = REPO / "tests" / "codec" / "data"


@pytest.mark.parametrize("mode", ["learned", "analytic"])
def test_stored_version_1_files_still_decode(tiny_codec, mode):
    """Files written by the version-1 encoder (tests/codec/data/README.md says how) decode to what
    the version-1 decoder made of them; version 1 keeps its rule t >= 1."""
    data = (DATA / f"v1-{mode}.dfc").read_bytes()
    header, _ = parse(data)
    assert (header.version, header.mode, header.t) == (1, mode, 50 if mode == "learned" else 7)
    decoded = tiny_codec.decode(data)
    assert decoded.header["format_version"] == 1
    expected = np.asarray(Image.open(DATA / f"v1-{mode}.png"), dtype=np.int16)
    assert np.abs(np.asarray(decoded.image, dtype=np.int16) - expected).max() <= 2  # other CPUs may round differently
    no_denoising = bytearray(data)
    no_denoising[16:19] = b"\0\0\0"  # t = 0, steps = 0: version 2 only
    no_denoising[-4:] = struct.pack("<I", zlib.crc32(bytes(no_denoising[:-4])))
    with pytest.raises(BitstreamError, match="Invalid diffusion timestep t=0"):
        parse(bytes(no_denoising))


@pytest.mark.parametrize("name,mode", [("v2-learned", "learned"), ("v2-analytic", "analytic"),
                                       ("v2-demo-analytic", "analytic")])
def test_stored_version_2_files_still_decode(tiny_codec, name, mode):
    """Files written by the version-2 encoder (symbols in value order; tests/codec/data/README.md
    says how) decode to what the version-2 decoder made of them."""
    codec = DiffusionCodec.load("demo", None, "analytic") if "demo" in name else tiny_codec
    data = (DATA / f"{name}.dfc").read_bytes()
    header, _ = parse(data)
    assert (header.version, header.mode) == (2, mode)
    decoded = codec.decode(data)
    assert decoded.header["format_version"] == 2
    expected = np.asarray(Image.open(DATA / f"{name}.png"), dtype=np.int16)
    assert np.abs(np.asarray(decoded.image, dtype=np.int16) - expected).max() <= 2  # other CPUs may round differently
