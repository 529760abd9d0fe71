"""Cold start of the codec CLI: each command in a fresh `python -m codec` process, as a user runs it.

    python benchmarks/cli_startup.py [--runs 5] [--image tests/data/photos/kite.png] [--backbone demo] [--bpp 0.1]

Times `info` on a real file, and `encode` / `decode` of a 768x512 photo with the given backbone,
N times each (median and min of wall time, and the child's CPU time), then runs each command once
under `python -X importtime` and lists the packages that cost the most import time. It also reports
every warning line a command wrote on stderr: normal output is one notice line (encode/decode) and
nothing else. The `import torch` row (`python -c "import torch, gc; gc.freeze()"`: importing torch,
and exiting as `python -m codec` does, without the final garbage collections) is the floor under
every command that runs a model.

encode and decode run twice: with torch's threads (one per core) and with OMP_NUM_THREADS=1. On a
machine whose cores other processes keep busy, the one-thread rows are the faster ones: each of
torch's parallel operations waits for its slowest thread, and a thread sharing a core with another
process gets the core only every few milliseconds (CPU time grows too: the waiting threads spin).
With scheduler autogroups (Linux's default for desktop sessions, and here) a nice-19 process in
another session still takes its full share of a core.

Targets (issue 11, item 9): info <= 0.3 s, encode/decode <= 1.5 s cold on 2 cores (demo backbone).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codec.data.datasets import cover_crop  # noqa: E402

DEFAULT_IMAGE = ROOT / "tests" / "data" / "photos" / "kite.png"
WARNING = re.compile(r"warn", re.IGNORECASE)
CODING_TIME = re.compile(r"([0-9.]+) s$")  # the CLI's own report of the codec's time, ending its stdout line
IMPORT_TIME = re.compile(r"^import time:\s*(\d+) \|\s*(\d+) \|(\s*)(\S+)")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # left to torch's default unless a row sets them


def _cli(args: list, importtime: bool = False, threads: int | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `python -m codec ARGS` (or `python -c CODE` for args ["-c", CODE]) in a fresh process
    with `threads` OpenMP threads (None: torch's default): (wall s, CPU s, result)."""
    program = list(args) if args[0] == "-c" else ["-m", "codec", *map(str, args)]
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), *program]
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env.update(HF_HUB_OFFLINE="1", **({} if threads is None else {"OMP_NUM_THREADS": str(threads)}))
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{run.stderr}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall, cpu, run


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if WARNING.search(line) and not line.startswith("import time:")]


def _import_offenders(stderr: str, top: int) -> list[tuple[str, float]]:
    """Import time (s) per top-level package, summing each module's own (self) time."""
    per_package = Counter()
    for line in stderr.splitlines():
        match = IMPORT_TIME.match(line)
        if match:
            per_package[match.group(4).split(".")[0]] += int(match.group(1)) / 1e6
    return per_package.most_common(top)


def _photo_768x512(source: Path, out: Path) -> Path:
    """The benchmark's input: `source` scaled to cover 768x512 and centre-cropped, saved as PNG."""
    with Image.open(source) as im:
        cover_crop(im, 768, 512).save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold runs per command (default 5)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--bpp", type=float, default=0.1)
    parser.add_argument("--top", type=int, default=6, help="packages listed per command in the import table")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = _photo_768x512(args.image, tmp / "photo.png")
        bits, decoded = tmp / "photo.dfc", tmp / "decoded.png"
        model = ["--backbone", args.backbone]
        encode, decode = ["encode", photo, bits, "--bpp", args.bpp, *model], ["decode", bits, decoded, *model]
        commands = {  # name: (arguments, threads)
            "import torch": (["-c", "import torch, gc; gc.freeze()"], None),
            "info": (["info", bits], None),
            "encode": (encode, None),
            "decode": (decode, None),
            "encode, 1 thread": (encode, 1),
            "decode, 1 thread": (decode, 1),
        }
        _cli(encode)  # the file info and decode read (and a warm page cache for all)

        load_before = os.getloadavg()[0]
        print(f"python -m codec, cold (a fresh process per run), {args.runs} runs, 768x512 photo "
              f"{args.image.name}, --backbone {args.backbone}, --bpp {args.bpp}, {os.cpu_count()} CPUs")
        print("wall: the whole process; CPU: its user+system time (all threads); coding: the codec's own time,")
        print("as the CLI reports it (the rest of wall is Python, imports and loading the model)")
        print(f"{'command':16} {'median s':>9} {'min s':>7} {'CPU s':>7} {'coding s':>9}  warning lines on stderr")
        for name, (command, threads) in commands.items():
            walls, cpus, coding, warnings = [], [], [], []
            for _ in range(args.runs):
                wall, cpu, run = _cli(command, threads=threads)
                walls.append(wall)
                cpus.append(cpu)
                reported = CODING_TIME.search(run.stdout.strip())
                if reported:
                    coding.append(float(reported.group(1)))
                warnings += _warning_lines(run.stderr)
            shown = "none" if not warnings else f"{len(warnings)}: {warnings[0][:70]}"
            coded = f"{statistics.median(coding):9.2f}" if coding else f"{'-':>9}"
            print(f"{name:16} {statistics.median(walls):9.2f} {min(walls):7.2f} {statistics.median(cpus):7.2f} {coded}  {shown}")
        print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")

        print("\nImport time by top-level package (-X importtime, self time summed, s):")
        for name, (command, threads) in commands.items():
            if threads is None:  # imports do not depend on the threads
                _, _, run = _cli(command, importtime=True)
                offenders = ", ".join(f"{package} {seconds:.2f}" for package, seconds in _import_offenders(run.stderr, args.top))
                print(f"{name:16} {offenders}")


if __name__ == "__main__":
    main()
