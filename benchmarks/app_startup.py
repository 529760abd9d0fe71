"""Start-up and first-compression time of the Space, measured from outside like a visitor would.

Starts `python app.py` (default backbone: the bundled demo), times how long until /health answers
(serving) and until the codec has finished loading in the background, then sends the first
/compress of a 768x512 photo with every baseline through gradio_client, then a second one; after
each, the /trajectory call the page makes next (it fills in the trajectory strip afterwards).

    python benchmarks/app_startup.py [--backbone demo] [--image PATH] [--bpp 0.1]

Targets (issue 3): serving <= 30 s on 2 CPU cores; first compress <= 10 s including baselines.
Besides wall time it reports the server's CPU time per step, which other processes on a busy
machine do not inflate, and the load average, so a slow number can be told apart from a busy host.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codec.data.datasets import cover_crop  # noqa: E402

DEFAULT_IMAGE = ROOT / "assets" / "examples" / "dandelions.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): unlike wall time, it does not
    grow when other processes compete for the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_average() -> float:
    return os.getloadavg()[0]


def _photo_768x512(source: Path, out: Path) -> Path:
    """The benchmark's input: `source` scaled to cover 768x512 and centre-cropped, saved as PNG."""
    with Image.open(source) as im:
        cover_crop(im, 768, 512).save(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="demo")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--bpp", type=float, default=0.1)
    parser.add_argument("--methods", default="jpeg,webp,avif,heic,naive")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    tmp = Path(tempfile.mkdtemp(prefix="app-bench-"))
    image = _photo_768x512(args.image, tmp / "photo_768x512.png")
    port = _free_port()
    env = dict(os.environ, APP_BACKBONE=args.backbone, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               RESULTS_DIR=str(tmp / "results"), GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_ANALYTICS_ENABLED="False")
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "w")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        while (health := _health(url)) is None:
            if proc.poll() is not None or time.perf_counter() - started > args.timeout:
                print((tmp / "server.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        serving = time.perf_counter() - started
        rows.append(("serving (/health answers)", serving, _cpu_seconds(proc.pid), 30.0))

        client = Client(url + "/", verbose=False)
        methods = [m for m in args.methods.split(",") if m]
        for label, target in (("first compress, 768x512, all baselines", 10.0), ("second compress", None)):
            tick, cpu = time.perf_counter(), _cpu_seconds(proc.pid)
            result = client.predict(handle_file(str(image)), args.bpp, methods, api_name="/compress")
            rows.append((label, time.perf_counter() - tick, _cpu_seconds(proc.pid) - cpu, target))
            tick, cpu = time.perf_counter(), _cpu_seconds(proc.pid)
            client.predict(handle_file(result[3]), api_name="/trajectory")
            rows.append(("  then its decoding trajectory", time.perf_counter() - tick, _cpu_seconds(proc.pid) - cpu,
                         None))
        loaded = _health(url) or {}
        table = result[2]
        print(f"\nbackbone: {loaded.get('backbone')}\nimage {args.image.name} -> 768x512; target {args.bpp} bpp; "
              f"CPU cores: {os.cpu_count()}; load average (1 min) at the end: {_load_average():.1f}")
        print(f"\n{'step':<42} {'wall s':>7} {'CPU s':>6} {'target':>7}  ok")
        for label, seconds, cpu, target in rows:
            ok = "" if target is None else ("yes" if seconds <= target else "NO")
            print(f"{label:<42} {seconds:7.2f} {cpu:6.2f} {'' if target is None else f'{target:.0f}':>7}  {ok}")
        print("(CPU s: the server process's user+system time in the step; on an otherwise idle 2-core machine\n"
              " the wall time lies between CPU s / 2 and CPU s)")
        print(f"\n{'method':<26} {'bytes':>7} {'bpp':>7} {'PSNR':>6} {'MS-SSIM':>8} {'enc ms':>7} {'dec ms':>7}")
        for row in table["data"]:
            if row[1] is None:  # the method could not run here; the note says why
                print(f"{row[0]:<26} {row[-1]}")
                continue
            print(f"{row[0]:<26} {row[1]:>7.0f} {row[2]:>7.4f} {row[3]:>6.2f} {row[4]:>8.4f} {row[5]:>7.0f} {row[6]:>7.0f}")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
