"""Admin token checks cannot starve visitors (issue 9, item 5): they run outside the queue, answer at
once, and back off per client without sleeping anywhere. Through the running app: 24 clients posting
wrong tokens as fast as they are answered do not put a visitor's /decode behind them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest
from gradio_client import handle_file

from tests.ui.conftest import ADMIN_TOKEN, ROOT
from ui.admin_tab import Backoff, client_address, token_matches

HOSTILE_CLIENTS = 24


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_backoff_doubles_per_failure_and_a_success_forgives():
    clock = Clock()
    backoff = Backoff(base_s=1, max_s=8, clock=clock)
    assert backoff.begin("a") == 0  # first attempt: checked (and counted as failed until it succeeds)
    assert backoff.begin("a") == pytest.approx(1)  # refused unchecked, 1 s to wait
    assert backoff.begin("b") == 0  # other clients are not affected
    for failures, wait in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 8)):  # doubling, capped at max_s
        clock.now += wait - 0.01
        assert backoff.begin("a") == pytest.approx(0.01), failures
        clock.now += 0.01
        assert backoff.begin("a") == 0
    backoff.succeeded("a")
    assert backoff.begin("a") == 0 and backoff.begin("a") == pytest.approx(1)


def test_concurrent_guesses_of_one_client_get_one_check():
    backoff = Backoff(base_s=5)
    results = []
    threads = [threading.Thread(target=lambda: results.append(backoff.begin("a"))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[:2] == [0, pytest.approx(5, abs=0.1)] and results.count(0) == 1


def test_backoff_forgets_quiet_and_least_recent_clients():
    clock = Clock()
    backoff = Backoff(base_s=1, forget_s=60, size=3, clock=clock)
    backoff.begin("a")
    clock.now += 61
    assert backoff.begin("a") == 0 and backoff.begin("a") == pytest.approx(1)  # counted from zero again
    for client in "bcd":
        backoff.begin(client)
    assert backoff.begin("a") == 0  # dropped as the least recently seen: memory stays bounded


def test_client_address_is_the_first_forwarded_entry_else_the_socket():
    request = SimpleNamespace(headers={"x-forwarded-for": "203.0.113.7, 10.0.0.1"}, client=SimpleNamespace(host="10.0.0.1"))
    assert client_address(request) == "203.0.113.7"
    assert client_address(SimpleNamespace(headers={}, client=SimpleNamespace(host="127.0.0.1"))) == "127.0.0.1"


def test_token_compare_is_exact():
    assert token_matches("secret", "secret")
    assert not token_matches("secre", "secret") and not token_matches("secret ", "secret")
    assert not token_matches(None, "secret") and not token_matches(["secret"], "secret")


def _fn_index(config: dict, api_name: str) -> int:
    return next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name)


def _queued_decode(http: httpx.Client, base: str, fn_index: int, path: str) -> tuple[dict, list[dict], float]:
    """One /decode through the queue as the page does it: the final message, every queue
    message before it, and the seconds it took."""
    session = uuid.uuid4().hex
    started = time.perf_counter()
    data = [{"path": path, "meta": {"_type": "gradio.FileData"}}]
    joined = http.post(base + "/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session})
    if joined.status_code != 200:
        return {"msg": "refused", "detail": joined.text}, [], time.perf_counter() - started
    messages = []
    with http.stream("GET", base + "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message, messages, time.perf_counter() - started
                messages.append(message)
    raise AssertionError(f"the stream ended without an answer: {messages}")


def test_24_wrong_token_clients_do_not_delay_a_visitors_decode(server, client, small_png):
    base = server.rstrip("/")
    bitstream = client.predict(handle_file(str(small_png)), 0.3, ["jpeg"], api_name="/compress")[3]
    with httpx.Client(timeout=120) as http:
        config = http.get(base + "/config").json()
        decode_fn, status_fn = _fn_index(config, "decode"), _fn_index(config, "status")
        with open(bitstream, "rb") as f:
            uploaded = http.post(base + "/gradio_api/upload", files={"files": ("file.dfcx", f)}).json()[0]
        alone = [_queued_decode(http, base, decode_fn, uploaded) for _ in range(3)]

    stop, answers, lock = threading.Event(), [], threading.Lock()

    def hostile(n: int) -> None:
        """Wrong tokens as fast as they are answered, half through the page's route for this event
        (outside the queue), half pushed into the queue directly; each client at its own address."""
        headers = {"x-forwarded-for": f"198.51.100.{n}"}
        with httpx.Client(timeout=60, headers=headers) as http:
            while not stop.is_set():
                body = {"data": [f"guess-{n}-{uuid.uuid4().hex}"], "fn_index": status_fn, "session_hash": uuid.uuid4().hex}
                if n % 2:
                    route, answer = "page", http.post(base + "/gradio_api/run/predict", json=body).json()["data"][0]
                else:
                    route, answer = "queue", _queued(http, base, body)
                with lock:
                    answers.append((route, answer))

    threads = [threading.Thread(target=hostile, args=(n,), daemon=True) for n in range(HOSTILE_CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        with httpx.Client(timeout=120) as http:
            contested = [_queued_decode(http, base, decode_fn, uploaded) for _ in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)

    def times(runs):
        return ", ".join(f"{1000 * seconds:.0f}" for _, _, seconds in runs)

    print(f"\n/decode alone: {times(alone)} ms; with {HOSTILE_CLIENTS} wrong-token clients: {times(contested)} ms; "
          f"{len(answers)} wrong-token answers meanwhile")
    for final, queue_messages, _ in alone + contested:
        assert final.get("msg") == "process_completed" and final.get("success"), final
        # Nothing ahead of the visitor: every queue estimate it got says rank 0.
        ranks = [m["rank"] for m in queue_messages if m.get("msg") == "estimation"]
        assert all(rank == 0 for rank in ranks), ranks
    assert "Wrong token." in {a for _, a in answers}
    assert any(a and a.startswith("Too many wrong tokens; try again in") for _, a in answers)
    # The page's route never queues a token check. Guesses pushed into the queue directly may be
    # told "Queue is full" when the machine is slow: that refuses the attacker, not the visitor.
    page = {a for route, a in answers if route == "page"}
    assert page and not any(a and "queue" in a.lower() for a in page), page
    # The right token from an address that did not guess still works at once.
    with httpx.Client(timeout=60, headers={"x-forwarded-for": "192.0.2.1"}) as http:
        ok = http.post(base + "/gradio_api/run/predict",
                       json={"data": [ADMIN_TOKEN], "fn_index": status_fn, "session_hash": uuid.uuid4().hex})
    assert ok.status_code == 200 and "votes from" in ok.json()["data"][0], ok.text
    from study.config import load

    for warning in load(ROOT / "assets" / "studies" / "demo.yaml").warnings():  # what the admin should know
        assert f"**Warning:** {warning}." in ok.json()["data"][0]


def _queued(http: httpx.Client, base: str, body: dict) -> str | None:
    joined = http.post(base + "/gradio_api/queue/join", json=body)
    if joined.status_code != 200:
        return joined.text
    with http.stream("GET", base + "/gradio_api/queue/data", params={"session_hash": body["session_hash"]}) as stream:
        for line in stream.iter_lines():
            if '"process_completed"' in line:
                return json.loads(line[5:])["output"]["data"][0]
    return None
