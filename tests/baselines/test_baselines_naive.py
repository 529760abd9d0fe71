import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codec.evaluate import baselines
from codec.core.backbone import build_tiny_backbone, load_backbone
from codec.evaluate.baselines import NAIVE_STEPS, NaiveCodec, NaivePriorMissing, encode_at_bpp, encode_at_quality

from tests.photos import photo


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random backbone with a prior fitted on three training photos (not the test one)."""
    backbone = build_tiny_backbone(seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(baselines.PRIOR_DIRS_ENV, str(tmp_path_factory.mktemp("naive")))
        train = [photo(name, 192) for name in ("wood", "storm", "moss")]
        path = baselines.fit_naive_prior(backbone, train, steps=150)
        assert path.is_file() and path.parent == baselines.naive_prior_path(backbone).parent
        yield backbone


@pytest.fixture(scope="module")
def test_image():
    return photo("kite").crop((300, 200, 300 + 150, 200 + 101))  # odd size: padded to 192 x 128


def test_bpp_falls_as_the_step_grows(tiny, test_image):
    results = [encode_at_quality(test_image, "naive", step, backbone=tiny) for step in (0.03, 0.1, 0.3, 1.0)]
    bpps = [r.bpp for r in results]
    assert all(a > b for a, b in zip(bpps, bpps[1:])), bpps
    for r in results:
        assert r.method == "naive" and r.reached and r.image.size == test_image.size
        assert float(r.quality) in NAIVE_STEPS.tolist()


def test_round_trip_decodes_the_bytes(tiny, test_image):
    r = encode_at_quality(test_image, "naive", 0.05, backbone=tiny)
    again = baselines.decode(r.data, "naive", backbone=tiny)
    assert np.array_equal(np.asarray(again), np.asarray(r.image))
    # A fresh codec that reads the prior from disk decodes the same pixels.
    fresh = NaiveCodec(tiny)
    assert np.array_equal(np.asarray(fresh.decode(r.data)), np.asarray(r.image))
    # The file is header + payload; the VAE's output is not the input.
    h, w, step, length = baselines._HEADER.unpack_from(r.data)
    assert (h, w, length) == (test_image.height, test_image.width, len(r.data) - baselines._HEADER.size)
    assert step == r.quality
    assert not np.array_equal(np.asarray(r.image), np.asarray(test_image))


def test_target_bpp_is_not_exceeded(tiny, test_image):
    top = encode_at_quality(test_image, "naive", float(NAIVE_STEPS[0]), backbone=tiny).bpp
    for target in (0.3 * top, 0.6 * top, top):
        r = encode_at_bpp(test_image, "naive", target, backbone=tiny)
        assert r.reached and r.bpp <= target and r.iterations > 1
    r = encode_at_bpp(test_image, "naive", 1e-4, backbone=tiny)
    assert not r.reached and r.bpp > 1e-4 and r.quality == float(NAIVE_STEPS[-1])


def test_corrupt_files_are_refused(tiny, test_image):
    data = encode_at_quality(test_image, "naive", 0.1, backbone=tiny).data
    for bad in (data[:5], data[:-1], data + b"x", b"\x00\x00" + data[2:]):
        with pytest.raises(ValueError, match="naive-baseline"):
            baselines.decode(bad, "naive", backbone=tiny)


def test_missing_prior_says_how_to_fit_one(tmp_path, monkeypatch):
    monkeypatch.setenv(baselines.PRIOR_DIRS_ENV, str(tmp_path))
    backbone = build_tiny_backbone(seed=1)
    with pytest.raises(NaivePriorMissing, match="fit-naive"):
        encode_at_bpp(photo("kite", 128), "naive", 0.1, backbone=backbone)
    with pytest.raises(ValueError, match="backbone"):
        encode_at_bpp(photo("kite", 128), "naive", 0.1)


def test_fit_naive_cli(tmp_path, capsys):
    data = tmp_path / "photos"
    data.mkdir()
    for name in ("wood", "kite"):  # kite is a validation photo: left out by default
        photo(name, 128).save(data / f"{name}.png")
    args = ["fit-naive", "--backbone", "tiny", "--data", str(data), "--steps", "5", "--dir", str(tmp_path / "priors")]
    assert baselines.main(args) == 0
    out = baselines.naive_prior_path(build_tiny_backbone(), tmp_path / "priors")
    assert out.is_file() and "fitted on 1 photos" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert baselines.main(["fit-naive", "--backbone", "tiny", "--data", str(empty)]) == 2
    assert "no training photos" in capsys.readouterr().err


def test_the_shipped_priors_folder_is_the_repositorys():
    shipped = sorted(baselines._SHIPPED_PRIORS.glob("naive-prior-*.safetensors"))
    assert shipped, f"no shipped naive priors in {baselines._SHIPPED_PRIORS}"


@pytest.mark.slow
def test_the_demo_backbone_finds_its_shipped_prior(tmp_path, monkeypatch):
    """With an empty user cache the demo backbone's prior comes from assets/models/naive: the
    evaluation and the Compress tab run the naive baseline on a fresh clone."""
    monkeypatch.setenv(baselines.PRIOR_DIRS_ENV, str(tmp_path))
    backbone = load_backbone("demo")
    name = baselines.naive_prior_path(backbone).name
    assert (baselines._SHIPPED_PRIORS / name).is_file(), (
        f"{name} is not shipped: the demo backbone's fingerprint changed; fit its prior again "
        "(python -m codec.evaluate.baselines fit-naive --backbone demo ...) into assets/models/naive")
    prior = baselines.load_naive_prior(backbone)
    assert prior.channels == len(NAIVE_STEPS) * baselines._LATENT_CHANNELS
    assert not any(tmp_path.iterdir())  # nothing was fitted or written into the user cache
    r = encode_at_quality(photo("kite", 128), "naive", 0.5, backbone=backbone)
    assert np.array_equal(np.asarray(baselines.decode(r.data, "naive", backbone=backbone)), np.asarray(r.image))


def test_baselines_import_compressai_through_the_codecs_entropy_coding():
    """Not compressai's __init__, which imports its datasets and torch_geometric (slow, and a
    FutureWarning on every call of the evaluation)."""
    code = "import sys, codec.evaluate.baselines; print(sorted(m for m in ('torch_geometric', 'compressai.zoo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert out.strip() == "[]"
