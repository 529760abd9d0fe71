"""The model runs in a process of its own (codec/core/isolated.py): killing it in the middle of a visitor's
/decode costs that request only. The next /decode succeeds with the same image, /health answers,
and the study's votes -- the ones already stored and one cast while the model process is down --
are all there."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import time
import urllib.request

import httpx
import numpy as np
import psutil
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.ui.conftest import SERVER, WORKER_MEMORY_MB


def _model_process() -> psutil.Process:
    server = psutil.Process(SERVER["pid"])
    workers = [p for p in server.children() if "codec.core.isolated" in " ".join(p.cmdline())]
    assert len(workers) == 1, [p.cmdline() for p in server.children()]
    return workers[0]


def _queued_bytes(process: psutil.Process) -> int:
    """Bytes waiting to be read on the model process's connection to the server (its fd is the
    last argument of its command line), from the kernel's socket diagnostics (what `ss -x`
    shows as Recv-Q): a netlink dump of every Unix socket with its receive queue's length."""
    inode = os.stat(f"/proc/{process.pid}/fd/{process.cmdline()[-1]}").st_ino
    sock_diag, by_family, request_dump, show_rqlen, attr_rqlen = 4, 20, 0x301, 0x10, 4
    request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show_rqlen, 0, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, sock_diag) as nl:
        nl.sendall(struct.pack("=IHHII", 16 + len(request), by_family, request_dump, 1, 0) + request)
        while True:
            data, at = nl.recv(1 << 16), 0
            while at < len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                assert kind == by_family, f"socket {inode} not in the dump (netlink message type {kind})"
                if struct.unpack_from("=I", data, at + 20)[0] == inode:
                    attr = at + 32
                    while attr < at + length:
                        attr_len, attr_kind = struct.unpack_from("=HH", data, attr)
                        if attr_kind == attr_rqlen:
                            return struct.unpack_from("=I", data, attr + 4)[0]
                        attr += (attr_len + 3) & ~3
                at += (length + 3) & ~3


def _votes() -> int:
    with sqlite3.connect(SERVER["results"] / "study.db") as db:
        return db.execute("SELECT count(*) FROM votes").fetchone()[0]


def _vote_once(api: str) -> None:
    """A new anonymous rater consents and answers one trial; raises unless every call succeeds."""
    with httpx.Client(timeout=30) as http:
        info = http.get(api + "/").raise_for_status().json()
        token = http.post(api + "/sessions", json={"params": {}}).raise_for_status().json()["token"]
        http.post(f"{api}/sessions/{token}/consent", json={"agree": True, "version": info["consent_version"]}
                  ).raise_for_status()
        trial = http.get(f"{api}/sessions/{token}/trial").raise_for_status().json()
        http.post(f"{api}/sessions/{token}/votes", json={"trial_id": trial["id"], "choice": "left"}).raise_for_status()


@pytest.fixture(scope="module")
def bitstream(client, small_png) -> str:
    return client.predict(handle_file(str(small_png)), 0.3, ["jpeg"], api_name="/compress")[3]


def test_the_model_process_has_the_configured_memory_limit(client, bitstream):
    with open(f"/proc/{_model_process().pid}/limits") as f:
        line = next(row for row in f if row.startswith("Max data size"))
    assert line.split()[3:5] == [str(WORKER_MEMORY_MB * 2**20)] * 2, line


def test_killing_the_model_process_mid_decode_costs_that_request_only(server, client, bitstream, study_votes):
    reference = client.predict(handle_file(bitstream), api_name="/decode")[0]
    stored = _votes()
    assert stored == study_votes > 0
    assert SERVER["url"] == server  # the process below is this server's
    worker = _model_process()

    # Freeze the model process and wait until the next decode has been sent to it, so that the
    # request is certainly in its hands when it is killed (however slow the server is).
    worker.suspend()
    try:
        assert _queued_bytes(worker) == 0
        job = client.submit(handle_file(bitstream), api_name="/decode")
        deadline = time.time() + 60
        while _queued_bytes(worker) == 0:
            # The job finishing while the process is stopped means another process answered (seen
            # when SERVER named a second server, started by a second definition of its fixture).
            assert time.time() < deadline and not job.done(), (
                job.status(), worker.status(), [(p.pid, p.status(), p.cmdline()[-3:]) for p in
                                                psutil.Process(SERVER["pid"]).children()])
            time.sleep(0.05)
    except BaseException:
        worker.kill()  # a stopped process would outlive the server: it cannot run its exit-with-parent check
        raise
    _vote_once(server + "/api/study")  # the study does not depend on the model process
    worker.kill()
    with pytest.raises(AppError, match="stopped while working") as info:
        job.result(timeout=60)
    print("the killed decode answered:", info.value)

    with urllib.request.urlopen(server + "/health", timeout=5) as r:
        assert json.load(r)["status"] == "ok"
    started = time.perf_counter()
    image = client.predict(handle_file(bitstream), api_name="/decode")[0]  # waits for the restarted process
    print(f"next /decode (restart included): {time.perf_counter() - started:.1f} s")
    with Image.open(reference) as a, Image.open(image) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert _model_process().pid != worker.pid
    assert _votes() == stored + 1  # nothing lost, and the vote cast during the crash was kept
