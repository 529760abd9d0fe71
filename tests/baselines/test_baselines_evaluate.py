"""`python -m codec.evaluate` end to end on two small photos with the tiny random backbone."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from codec.evaluate import baselines
from codec.evaluate.__main__ import main as evaluate_main
from codec.core.adapters.learned import LearnedAdapter
from codec.core.backbone import build_tiny_backbone

from tests.photos import photo

REPO = Path(__file__).resolve().parents[2]
TARGETS = (0.3, 0.6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    data = tmp / "data"
    data.mkdir()
    photo("kite").crop((300, 200, 460, 320)).save(data / "kite.png")  # 160 x 120
    photo("wood").crop((100, 100, 228, 196)).save(data / "wood.png")  # 128 x 96
    photo("moss").save(data / "unused.png")  # left out by --images
    adapter = tmp / "adapter"
    torch.manual_seed(0)
    LearnedAdapter(hyper_channels=32).prepare().save_pretrained(adapter)  # untrained, real bitstreams
    cache = tmp / "cache"
    env = {**os.environ, baselines.PRIOR_DIRS_ENV: str(cache), "PYTHONPATH": str(REPO)}
    os.environ[baselines.PRIOR_DIRS_ENV] = str(cache)
    try:
        baselines.fit_naive_prior(build_tiny_backbone(), [photo("storm", 192)], steps=100)
    finally:
        del os.environ[baselines.PRIOR_DIRS_ENV]
    out = tmp / "out"
    cmd = [sys.executable, "-m", "codec.evaluate", "--data", str(data), "--images", "kite.png,wood.png",
           "--methods", "jpeg,webp,avif,heic,naive,ours,ours-analytic", "--bpp", ",".join(map(str, TARGETS)),
           "--out", str(out), "--backbone", "tiny", "--adapter", str(adapter)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_per_image_csv(run):
    out, _ = run
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    methods = ["ours", "ours-analytic", "jpeg", "webp", "avif", "heic", "naive"]
    assert len(rows) == 2 * len(TARGETS) * len(methods)
    assert {r["image"] for r in rows} == {"kite.png", "wood.png"}
    for r in rows:
        assert r["lpips"] == r["dists"] == "unavailable"
        assert 0 < float(r["bpp"]) and 0 < float(r["psnr"]) and 0 < float(r["ms_ssim"]) <= 1 and float(r["swd"]) >= 0
        if r["method"] in ("ours", "ours-analytic"):
            assert float(r["aimed_bpp"]) == float(r["target_bpp"])
        else:  # the baselines aim at the bpp ours reached on that image, never above
            ours = next(o for o in rows if o["method"] == "ours" and o["image"] == r["image"]
                        and o["target_bpp"] == r["target_bpp"])
            assert float(r["aimed_bpp"]) == pytest.approx(float(ours["bpp"]), abs=1e-6)
            assert (float(r["bpp"]) <= float(r["aimed_bpp"]) + 1e-9) == (r["within_aim"] == "True")


def test_results_json_in_compressai_format(run):
    out, _ = run
    for method in ("ours", "ours-analytic", "jpeg", "webp", "avif", "heic", "naive"):
        res = json.loads((out / f"results-{method}.json").read_text())
        assert res["name"] == method and "unavailable" in res["description"]
        r = res["results"]
        assert len(r["bpp"]) == len(r["psnr-rgb"]) == len(r["ms-ssim-rgb"]) == len(TARGETS)
        assert "lpips" not in r and "fid" not in r
        assert r["target_bpp"] == list(TARGETS)


def test_plots_and_bd_tables(run):
    out, proc = run
    for name in ("rd-psnr.png", "rd-ms-ssim.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 500 and im.size[1] > 300
    tables = json.loads((out / "bd_rate.json").read_text())
    assert set(tables) == {"psnr", "ms-ssim"}
    assert tables["psnr"]["jpeg"]["jpeg"] is None
    assert "BD-rate (%) on PSNR" in (out / "bd_rate.md").read_text()
    assert "unavailable (no local weights): LPIPS, DISTS, FID, KID" in proc.stdout
    # The weight-free realism metric of the registry reaches the CSV, the JSON and a plot with no edit here.
    with Image.open(out / "rd-swd.png") as im:
        assert im.size[0] > 500
    assert len(json.loads((out / "results-ours.json").read_text())["results"]["swd"]) == len(TARGETS)
    # One BD table per image, every method against the first baseline (JPEG), so an outlier image shows.
    per_image = json.loads((out / "bd_per_image.json").read_text())
    assert set(per_image) == {"psnr", "ms-ssim"}
    assert set(per_image["psnr"]) == {"kite.png", "wood.png"}
    assert set(per_image["psnr"]["kite.png"]) == {"ours", "ours-analytic", "webp", "avif", "heic", "naive"}
    assert "per image, against jpeg" in (out / "bd_per_image.md").read_text()


def test_bad_arguments_give_one_line_errors(tmp_path, capsys):
    # Library code raises typed errors; codec/evaluate/__main__.py prints one line and exits with 2.
    (tmp_path / "list.txt").write_text("../outside.png\n")
    for args, message in ((["--data", str(tmp_path / "none")], "not a folder"),
                          (["--data", str(tmp_path), "--methods", "bpg"], "unknown method"),
                          (["--data", str(tmp_path), "--bpp", "x"], "--bpp"),
                          (["--data", str(tmp_path), "--crop", "3x"], "size like 256"),
                          (["--data", str(tmp_path), "--images", str(tmp_path / "list.txt")], "without '..'"),
                          (["--data", str(tmp_path)], "no images")):
        assert evaluate_main(["--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
