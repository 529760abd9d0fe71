"""ui.guard: what one client may cost the Gradio side. Bodies over the upload limit are refused
before they are read (also chunked ones of unknown length); queue joins are rate-limited per
client address; everything else passes through untouched."""

from __future__ import annotations

import threading
import time
import urllib.request

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.ui.conftest import MAX_UPLOAD_MB
from ui.guard import JOIN_PATH, GradioGuard

UPLOAD_MB = 0.3                          # the guarded test app's upload limit
LIMIT = int(UPLOAD_MB * 1e6 * 4 / 3) + 64 * 1024


@pytest.fixture
def guarded():
    """A Starlette app that echoes the size of what reached it, behind GradioGuard."""
    seen = []

    async def echo(request: Request):
        body = await request.body()
        seen.append(len(body))
        return JSONResponse({"bytes": len(body)})

    routes = [Route(path, echo, methods=["GET", "POST"]) for path in (JOIN_PATH, "/gradio_api/upload", "/other")]
    app = GradioGuard(Starlette(routes=routes), max_upload_mb=UPLOAD_MB, joins_at_once=3, joins_per_minute=30)
    return TestClient(app), seen


def test_a_body_over_the_limit_is_refused_unread_by_its_length(guarded):
    client, seen = guarded
    r = client.post("/gradio_api/upload", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413 and "larger than 0.5 MB" in r.json()["detail"]
    assert seen == []
    assert client.post("/gradio_api/upload", content=b"x" * LIMIT).json() == {"bytes": LIMIT}


def test_a_chunked_body_is_cut_off_at_the_limit_and_one_within_it_arrives_whole(guarded):
    client, seen = guarded

    def chunks(total: int, size: int = 64 * 1024):
        for start in range(0, total, size):
            yield b"y" * min(size, total - start)
    assert client.post("/gradio_api/upload", content=chunks(10 * LIMIT)).status_code == 413
    assert seen == []
    assert client.post("/gradio_api/upload", content=chunks(LIMIT - 5)).json() == {"bytes": LIMIT - 5}


def test_queue_joins_are_limited_per_client_address_with_retry_after(guarded):
    client, _ = guarded
    me, other = {"x-forwarded-for": "203.0.113.7"}, {"x-forwarded-for": "203.0.113.8, 10.0.0.1"}
    answers = [client.post(JOIN_PATH, json={}, headers=me).status_code for _ in range(5)]
    assert answers == [200, 200, 200, 429, 429]
    refused = client.post(JOIN_PATH, json={}, headers=me)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) == 2   # 30 a minute
    assert "please wait 2 s" in refused.json()["detail"]
    assert client.post(JOIN_PATH, json={}, headers=other).status_code == 200     # another visitor
    # Uploads, other routes and GETs are not counted as joins.
    assert all(client.post("/gradio_api/upload", content=b"z", headers=me).status_code == 200 for _ in range(5))
    assert client.post("/other", content=b"z" * (10 * LIMIT)).status_code == 200
    assert client.get(JOIN_PATH, headers=me).status_code == 200


def test_the_server_refuses_a_huge_queue_join_while_health_answers(server):
    """The attack of issue 9: a 300 MB `data:` URL in a queue join was read, parsed and queued,
    stalling /health for a second. Now it is refused from its Content-Length, unread."""
    stop, health = threading.Event(), []

    def probe():
        while not stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(server + "/health", timeout=30):
                health.append(time.perf_counter() - started)
            time.sleep(0.02)
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        body = b'{"data": [{"url": "data:image/png;base64,' + b"A" * int(3 * MAX_UPLOAD_MB * 1e6) + b'"}]}'
        started = time.perf_counter()
        r = httpx.post(server + JOIN_PATH, content=body, headers={"content-type": "application/json"}, timeout=60)
        refused_in = time.perf_counter() - started
    except httpx.TransportError:     # the server may close before the client finished sending
        r, refused_in = None, time.perf_counter() - started
    finally:
        time.sleep(0.3)
        stop.set()
        prober.join()
    print(f"\nhuge join refused in {1000 * refused_in:.0f} ms; /health max {1000 * max(health):.0f} ms "
          f"over {len(health)} probes")
    assert r is None or (r.status_code == 413 and "larger than" in r.json()["detail"])
    assert health     # /health answered throughout (its latency is printed above)
