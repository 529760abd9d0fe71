"""`python -m codec.evaluate` at dataset scale: two CPU processes through `accelerate launch` give
the rows of one process; a run killed midway (SIGKILL) resumes to the outputs of an uninterrupted
run; compressai's plotting utility reads the results JSON. Tiny random backbone, three small photos,
cheap methods (JPEG and the analytic adapter), real subprocesses."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.photos import photo

REPO = Path(__file__).resolve().parents[2]
METHODS = "ours-analytic,jpeg"
TIMINGS = ("encode_s", "decode_s", "encoding_time", "decoding_time")


def _command(data: Path, out: Path) -> list[str]:
    return ["-m", "codec.evaluate", "--data", str(data), "--methods", METHODS, "--bpp", "0.3,0.6",
            "--backbone", "tiny", "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _evaluate(data: Path, out: Path, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
                if processes > 1 else [sys.executable])
    proc = subprocess.run(launcher + _command(data, out), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(out: Path) -> list[dict]:
    """per_image.csv without the timing columns (wall times differ between any two runs)."""
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader((out / "per_image.csv").open())]


def _results(out: Path) -> dict:
    results = {}
    for path in sorted(out.glob("results-*.json")):
        res = json.loads(path.read_text())
        res["results"] = {k: v for k, v in res["results"].items() if k not in TIMINGS}
        results[path.name] = res
    return results


def _outputs(out: Path) -> tuple:
    return (_rows(out), _results(out), (out / "bd_rate.json").read_text(), (out / "bd_rate.md").read_text(),
            sorted(p.name for p in out.glob("rd-*.png")))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dataset")
    photo("kite").crop((300, 200, 460, 320)).save(folder / "kite.png")  # 160 x 120
    photo("wood").crop((100, 100, 228, 196)).save(folder / "wood.png")  # 128 x 96
    photo("moss").crop((0, 0, 96, 96)).save(folder / "moss.png")
    return folder


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    _evaluate(data, out)
    return out


@pytest.mark.slow
def test_two_processes_write_the_files_of_one(data, one_process, tmp_path):
    out = tmp_path / "out"
    proc = _evaluate(data, out, processes=2)
    assert "process 1/2" in proc.stderr and "process 2/2" in proc.stderr  # both processes had a share
    assert proc.stdout.count("3 images x 2 methods x 2 rates") == 1  # only the main process reports
    rows = _rows(out)
    assert len(rows) == 3 * 2 * 2 and {r["image"] for r in rows} == {"kite.png", "wood.png", "moss.png"}
    assert _outputs(out) == _outputs(one_process)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_outputs(data, one_process, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, *_command(data, out)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = out / "rows"
    deadline = time.monotonic() + 300
    try:  # kill it as soon as the first image's first row is on disk
        while not any(rows.glob("*-*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = sum(len(json.loads(p.read_text())["rows"]) for p in rows.glob("*-*.json"))
    assert 1 <= done < 12, "the run should have been killed midway"
    assert not (out / "per_image.csv").exists()

    resumed = _evaluate(data, out)
    redone = [line for line in resumed.stderr.splitlines() if " target " in line and " bpp" in line]
    assert len(redone) == 12 - done  # every row already on disk was skipped
    assert _outputs(out) == _outputs(one_process)

    again = _evaluate(data, out)  # nothing left to do: no row is computed again
    assert not [line for line in again.stderr.splitlines() if " target " in line and " bpp" in line]
    assert _outputs(out) == _outputs(one_process)


def test_rows_of_another_evaluation_are_refused(data, one_process, tmp_path):
    proc = subprocess.run([sys.executable, *_command(data, one_process)[:-4], "--backbone", "demo", "--out",
                           str(one_process)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "holds rows of another evaluation" in proc.stderr


def test_compressai_plot_reads_the_results(one_process, tmp_path):
    files = [str(p) for p in sorted(one_process.glob("results-*.json"))]
    for metric in ("psnr", "ms-ssim"):
        figure = tmp_path / f"{metric}.png"
        proc = subprocess.run([sys.executable, "-m", "compressai.utils.plot", "-f", *files, "-m", metric,
                               "-o", str(figure)], cwd=tmp_path, env={**_env(), "MPLBACKEND": "Agg"},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with Image.open(figure) as im:
            assert im.size[0] > 1000  # compressai saves at 300 dpi
