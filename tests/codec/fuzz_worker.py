"""Fuzzing worker: decodes untrusted bitstreams for the tests in a process of its own, and its client.

A segfault or a hang in native code kills or stalls this process, not pytest; the test names the
case it was decoding. Protocol: one JSON line {"backbone": hex, "adapter": hex} when ready; then
for each case read from stdin as a 4-byte little-endian length and the file's bytes, one JSON line
with the outcome, wall and CPU seconds, and the peak resident memory the case added.

Run as `python -m tests.codec.fuzz_worker [--crash-on HEX]` from the repository root; --crash-on
makes it segfault on that one file, to test that the harness reports a crash.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import select
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from codec.core.bitstream import BitstreamError, padded_size, parse
from tests.codec.conftest import make_tiny_codec

FULL_DECODE_PIXELS = 128 * 128  # padded area up to which a case also runs the tiny UNet and VAE (cheap)
REPO = Path(__file__).resolve().parents[2]
STARTUP_S, HANG_S = 120, 30  # wall-clock watchdogs only (the machine is shared): the tests assert measured limits


class Worker:
    """The test side: starts the worker, sends it files, and fails naming the case if it dies or hangs."""

    def __init__(self, *args):
        self.args = args
        self._start()

    def _start(self):
        self.stderr = tempfile.TemporaryFile()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.codec.fuzz_worker", *self.args], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self.hello = json.loads(self._line(STARTUP_S, "startup"))

    def run(self, data: bytes) -> dict:
        if self.proc.poll() is not None:  # died on an earlier case (which failed): a fresh one for this case
            self._start()
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported by _line with the exit status
        return json.loads(self._line(HANG_S, data.hex()))

    def _line(self, timeout: float, case: str) -> bytes:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if line:
            return line
        hung = not ready
        self.close()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-1500:]
        what = f"hung for {timeout} s" if hung else f"died (exit status {self.proc.returncode})"
        raise AssertionError(f"fuzz worker {what} on case {case}\n{tail}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as refs:  # "5" resets VmHWM (Linux >= 4.0)
        refs.write("5")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode(codec, data: bytes) -> str:
    """As far as a case goes: parse, entropy decoding, and the whole decoder for small images."""
    try:
        header, _ = parse(data)
        height, width = padded_size(header.height, header.width)
        if height * width <= FULL_DECODE_PIXELS:
            image = codec.decode(data).image
            assert image.size == (header.width, header.height)
            return "decoded"
        codec.dequantize(data)
        return "entropy-decoded"
    except BitstreamError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return "refused"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-on", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    codec = make_tiny_codec()
    out = sys.stdout
    out.write(json.dumps({"backbone": codec.backbone.fingerprint.hex(), "adapter": codec.adapters["learned"].fingerprint.hex()}) + "\n")
    out.flush()
    stdin = sys.stdin.buffer
    while header := stdin.read(4):
        data = stdin.read(struct.unpack("<I", header)[0])
        if data.hex() == args.crash_on:
            ctypes.string_at(0)  # a real segfault, as a native bug would cause
        _reset_peak_rss()
        rss_before, wall, cpu = _rss_kib("VmRSS"), time.perf_counter(), _cpu_seconds()
        try:
            outcome = decode(codec, data)
        except Exception as exc:  # anything but BitstreamError is a bug; the test fails and shows it
            outcome = f"error: {type(exc).__name__}: {exc}"
        result = {"outcome": outcome, "wall_s": time.perf_counter() - wall, "cpu_s": _cpu_seconds() - cpu,
                  "rss_kib": _rss_kib("VmHWM") - rss_before, "base_rss_kib": rss_before}
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
