"""`python -m codec.evaluate` end to end on two small photos with the tiny random backbone."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from codec.data import datasets
from codec.evaluate import baselines, metrics
from codec.evaluate import run as evaluate_run
from codec.evaluate.__main__ import main as evaluate_main
from codec.core.adapters.learned import LearnedAdapter
from codec.core.backbone import build_tiny_backbone

from tests.photos import PHOTOS, photo

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
           "--out", str(out), "--backbone", "tiny", "--adapter", str(adapter), "--save-reconstructions"]
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
    markdown = (out / "bd_rate.md").read_text()
    assert "BD-rate (%) on PSNR" in markdown
    # BD-PSNR, what papers quote beside BD-rate, is a table too, with the JSON's value in each cell
    quality = tables["psnr"]["webp"]["jpeg"]["bd_quality"]
    bd_psnr = markdown.split("### BD-PSNR")[1].split("###")[0]
    assert quality is not None and f"{quality:+.2f} dB" in bd_psnr.split("\n| webp |")[1].splitlines()[0], bd_psnr
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


def test_reconstructions_are_saved_and_feed_the_set_metrics(run, monkeypatch):
    """--save-reconstructions keeps each decoded image (the one scored); the set metrics (patch FID/KID)
    are computed from those files at the merge. A stub FID stands in for the Inception weights."""
    out, _ = run
    row = next(r for r in csv.DictReader((out / "per_image.csv").open())
               if r["method"] == "heic" and r["image"] == "kite.png" and float(r["target_bpp"]) == TARGETS[0])
    with Image.open(out / "reconstructions" / "heic" / f"{TARGETS[0]:g}" / "kite.png") as im, \
            Image.open(out.parent / "data" / "kite.png") as original:
        assert im.size == (160, 120)
        assert f"{metrics.psnr(original, im):.6g}" == row["psnr"]

    seen = []

    def stub_fid(originals, reconstructions):
        seen.append((len(originals), reconstructions[0].size))
        return float(metrics.psnr(originals[0], reconstructions[0]))  # any number computed from the files

    fid = dataclasses.replace(metrics.PER_SET["fid"], fn=stub_fid, needs_weights=False)
    monkeypatch.setitem(metrics.PER_SET, "fid", fid)
    monkeypatch.setitem(metrics.METRICS, "fid", fid)
    settings = evaluate_run.Settings(methods=["ours", "jpeg"], targets=list(TARGETS), backbone="tiny",
                                     adapter=str(out.parent / "adapter"))
    files = datasets.list_images(out.parent / "data", "kite.png,wood.png")
    merged = out.parent / "merged"
    shutil.copytree(out / "rows", merged / "rows")
    shutil.copytree(out / "reconstructions", merged / "reconstructions")
    report = evaluate_run.merge(files, settings, merged, evaluate_run.RowStore(merged))
    assert len(seen) == 2 * len(TARGETS) and seen[0] == (2, (160, 120))
    assert len(report.results["jpeg"]["results"]["fid"]) == len(TARGETS)
    assert "fid" in json.loads((merged / "results-jpeg.json").read_text())["results"]


def test_bad_arguments_give_one_line_errors(tmp_path, capsys):
    # Library code raises typed errors; codec/evaluate/__main__.py prints one line and exits with 2.
    (tmp_path / "list.txt").write_text("../outside.png\n")
    for args, message in ((["--data", str(tmp_path / "none")], "not a folder"),
                          (["--data", str(tmp_path), "--methods", "bpg"], "unknown method"),
                          (["--data", str(tmp_path), "--bpp", "x"], "--bpp"),
                          (["--data", str(tmp_path), "--crop", "3x"], "size like 256"),
                          (["--data", str(tmp_path), "--images", str(tmp_path / "list.txt")], "without '..'"),
                          (["--data", str(tmp_path)], "no images"),
                          (["--data", str(PHOTOS), "--out", str(tmp_path / "list.txt")], "is a file; it names the output folder")):
        assert evaluate_main(["--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_the_default_methods_leave_out_ours_where_the_backbone_has_no_learned_adapter(tmp_path, capsys):
    """Without --methods every method runs that the backbone can run: the demo ships no learned
    adapter, so 'ours' (the learned mode) is left out; asked for by name it is a one-line error."""
    photo("kite").crop((300, 200, 364, 264)).save(tmp_path / "kite.png")
    asked = ["--data", str(tmp_path), "--backbone", "tiny", "--bpp", "0.5", "--out", str(tmp_path / "o")]
    assert evaluate_main([*asked, "--methods", "ours,jpeg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'ours' needs a trained adapter") and err.count("\n") == 1, err

    settings = evaluate_run.Settings(methods=evaluate_run.parse_methods(",".join(evaluate_run.METHODS)),
                                     targets=[0.5], backbone="tiny", ours_if_trained=True)
    codec = evaluate_run._load_codec(settings, torch.device("cpu"))
    assert "learned" not in codec.adapters
    assert settings.methods == [m for m in evaluate_run.METHODS if m != "ours"]
