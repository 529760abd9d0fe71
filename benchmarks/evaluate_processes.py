"""Wall time of the same small evaluation with 1 and with N processes (accelerate launch), and the
mean per-image time of each method (encode with its rate control, plus decode), from per_image.csv.

    python benchmarks/evaluate_processes.py [--data tests/data/photos] [--images cups.png,kite.png,moss.png,storm.png]
        [--methods ours,ours-analytic,naive,jpeg,webp,avif,heic] [--bpp 0.1] [--backbone demo] [--processes 2]

Each run starts from an empty output folder (no resumed rows). On a CPU machine the N processes are
CPU workers (accelerate's torchrun launcher, `--multi_gpu`, with PartialState on the CPU). The
machine's load shows in the times: quote `uptime` with them.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(args, processes: int, out: Path) -> float:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = launcher + ["-m", "codec.evaluate", "--data", args.data, "--images", args.images, "--methods", args.methods,
                      "--bpp", args.bpp, "--backbone", args.backbone, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"evaluation failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO / "tests" / "data" / "photos"))
    parser.add_argument("--images", default="cups.png,kite.png,moss.png,storm.png")
    parser.add_argument("--methods", default="ours,ours-analytic,naive,jpeg,webp,avif,heic")
    parser.add_argument("--bpp", default="0.1")
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    n_images = len([n for n in args.images.split(",") if n.strip()])
    with tempfile.TemporaryDirectory() as tmp:
        walls = {p: _run(args, p, Path(tmp) / f"out{p}") for p in (1, args.processes)}
        per_method = defaultdict(list)
        with (Path(tmp) / "out1" / "per_image.csv").open() as f:
            for row in csv.DictReader(f):
                per_method[row["method"]].append(float(row["encode_s"]) + float(row["decode_s"]))
    print(f"{n_images} images x {len(per_method)} methods x {len(args.bpp.split(','))} rates, backbone {args.backbone}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'processes':>9} {'wall s':>8} {'s / image':>10}")
    for processes, wall in walls.items():
        print(f"{processes:>9} {wall:>8.1f} {wall / n_images:>10.1f}")
    print(f"\n{'method':<14} {'s per image and rate':>21}   (encode with its rate control + decode, 1 process)")
    for method, seconds in per_method.items():
        print(f"{method:<14} {sum(seconds) / len(seconds):>21.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
