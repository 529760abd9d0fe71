"""The real app, started as `python app.py` in a subprocess on 127.0.0.1 with the tiny random
backbone and the demo study (votes in a fresh SQLite file): how it is started and its settings.
Its fixtures (`server`, `client`, `study_votes`) are in tests/conftest.py, shared with tests/export."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "assets" / "examples" / "coffee.png"
MAX_PIXELS = 1_000_000
MAX_UPLOAD_MB = 2
QUEUE_SIZE = 4
WORKER_MEMORY_MB = 4096  # the tiny backbone's model process needs about 1 GB
ADMIN_TOKEN = "test-admin-token-3f9a"
SERVER = {}  # of the running app: "pid" (the server process), "results" (its RESULTS_DIR) and "url"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(tmp: Path, **env):
    """`python app.py` with the tiny backbone on a free port of 127.0.0.1, the environment's
    variables plus `env`, its log in tmp/server.log: yields (process, base URL) once /health
    answers; its log is shown if it fails to start."""
    port = _free_port()
    env = dict(os.environ, APP_BACKBONE="tiny", APP_MODE="analytic", RESULTS_DIR=str(tmp / "results"),
               GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", ADMIN_TOKEN=ADMIN_TOKEN,
               # These tests call the queue as fast as it answers: test_ui_guard.py tests its limit.
               APP_CLIENT_QUEUE_BURST="1000", **env)
    url = f"http://127.0.0.1:{port}"
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while True:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"app did not start:\n{(tmp / 'server.log').read_text()[-4000:]}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield proc, url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def small_png(tmp_path_factory) -> Path:
    """A 256x160 crop of a real photo: big enough for MS-SSIM, small enough to be quick."""
    path = tmp_path_factory.mktemp("img") / "small.png"
    with Image.open(EXAMPLE) as im:
        im.convert("RGB").crop((128, 80, 384, 240)).save(path)
    return path
