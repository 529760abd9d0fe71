"""What a hostile client can make the study API do, through a real server (`python -m study
serve`, uvicorn): oversized and pathological bodies are refused before they are parsed while
/health keeps answering, errors never repeat the request, every client is rate limited, and no
known id takes over another rater's session."""
from __future__ import annotations

import json
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.study_load import Server, run_load
from study.limits import Buckets, Limits, Rate, json_shape_problem

from .conftest import make_study

PROLIFIC = "{kind: prolific, completion_code: C1, screenout_code: S1, no_consent_code: N1}"


@pytest.fixture(scope="module")
def open_study(study_dir) -> Path:
    return make_study(study_dir, study_id="limits_open", trials=6, catch=1, repeats=0, per_rater=2)


@pytest.fixture(scope="module")
def prolific_study(study_dir) -> Path:
    return make_study(study_dir, study_id="limits_prolific", trials=5, catch=1, repeats=0, platform=PROLIFIC)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def post_raw(port: int, path: str, head: dict[str, str], chunks, limit_mb: int = 64) -> tuple[int, bytes, int]:
    """POST through a bare socket, sending `chunks` until the server answers (or `limit_mb`
    went out); returns the status, the answer and the bytes sent. The server may answer and
    close while the client still sends, as a real client would."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in head.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent = 0
    try:
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0] or sent > limit_mb * 2**20:
                break
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    sock.close()
    return int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[1], sent


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


class Probe:
    """GET /health every 10 ms in a thread; latencies in ms."""

    def __init__(self, base: str):
        self.base, self.ms, self.stop = base, [], threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self):
        with httpx.Client(base_url=self.base, timeout=60) as http:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                assert http.get("/health").status_code == 200
                self.ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_oversized_bodies_are_refused_before_parsing_while_health_answers(tmp_path, open_study):
    """The attack of issue 9: one 14 MB vote whose `client` has 1M keys stalled every endpoint
    (/health too) while it was parsed. Now it is refused from its Content-Length, and a
    chunked body of unknown length after 64 KB, and the server neither reads nor keeps it."""
    with Server(open_study, f"sqlite:///{tmp_path / 'big.db'}") as server:
        base = server.url.removesuffix("/api/study")
        http = httpx.Client(base_url=server.url, timeout=30)
        st = http.post("/sessions", json={}).json()
        st = http.post(f"/sessions/{st['token']}/consent", json={"agree": True, "version": "2"}).json()
        vote = f"/api/study/sessions/{st['token']}/votes"
        big = json.dumps({"trial_id": st["trial"]["id"], "choice": "left",
                          "client": {f"k{i}": 1 for i in range(1_000_000)}}).encode()
        rss0 = rss_mb(server.proc.pid)
        with Probe(base) as probe:
            declared = [post_raw(server.port, vote, {"Content-Length": str(len(big))},
                                 (big[i:i + 2**16] for i in range(0, len(big), 2**16))) for _ in range(3)]
            chunked = [post_raw(server.port, vote, {"Transfer-Encoding": "chunked"},
                                iter(lambda: b"10000\r\n" + b" " * 2**16 + b"\r\n", None)) for _ in range(3)]
        grown = rss_mb(server.proc.pid) - rss0
        after = http.post(f"/sessions/{st['token']}/votes", json={"trial_id": st["trial"]["id"], "choice": "left"})
        log = server.output()
    for status, answer, _ in declared + chunked:
        assert status == 413 and json.loads(answer) == {"detail": "the body is larger than 64 KB"}
    assert max(sent for *_, sent in chunked) < 8 * 2**20     # refused long before the 64 MB it would send
    assert after.status_code == 200 and not after.json()["replayed"]    # the refused votes stored nothing
    assert grown < 30, f"the server grew by {grown:.0f} MB"
    assert probe.ms and "Traceback" not in log
    print(f"\n/health while 3 x {len(big) / 1e6:.1f} MB (Content-Length) and 3 chunked bodies were refused: "
          f"{len(probe.ms)} probes, p50 {np.percentile(probe.ms, 50):.1f} ms, max {max(probe.ms):.1f} ms; "
          f"server RSS +{grown:.1f} MB; chunked bytes sent before the 413: {[s for *_, s in chunked]}")


def test_json_shape_is_bounded_and_errors_never_echo_the_body(tmp_path, open_study):
    with Server(open_study, f"sqlite:///{tmp_path / 'shape.db'}") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        st = http.post("/sessions", json={}).json()
        st = http.post(f"/sessions/{st['token']}/consent", json={"agree": True, "version": "2"}).json()
        votes = f"/sessions/{st['token']}/votes"
        ok = {"trial_id": st["trial"]["id"], "choice": "left"}
        nested: dict = {"x": 1}
        for _ in range(6):
            nested = {"a": nested}
        secret = "SECRET-" * 500
        refusals = {
            "deep": http.post(votes, json={**ok, "client": nested}),
            "wide": http.post(votes, json={**ok, "client": {f"k{i}": i for i in range(600)}}),
            "deeper than orjson": http.post(votes, content=b'{"a":' * 5000 + b"1" + b"}" * 5000),
            "not json": http.post(votes, content=b"{" + secret.encode()),
            "NaN": http.post(votes, content=b'{"trial_id": 1, "choice": "left", "client_ms": NaN}'),
            "type": http.post(votes, json={**ok, "trial_id": secret}),
            "huge int": http.post(votes, json={**ok, "trial_id": 2**70}),
            "extra key": http.post("/sessions", json={"anonymous_id": secret}),
            "long key": http.post("/sessions", json={secret: 1}),
            "event": http.post(f"/sessions/{st['token']}/events", json={"kind": secret}),
            "study": http.post("/sessions", json={"study_id": secret}),
        }
        for name, r in refusals.items():
            assert r.status_code in (404, 422), (name, r.status_code)
            assert "SECRET" not in r.text and len(r.content) < 400, (name, r.text[:500])
            assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str), name
        assert "deeper than 6" in refusals["deep"].json()["detail"]
        assert "more than 512" in refusals["wide"].json()["detail"]
        assert "deeper than 6" in refusals["deeper than orjson"].json()["detail"]
        assert refusals["type"].json()["detail"].startswith("body.trial_id:")
        # a vote in the limits goes through, with a client object of a sensible size
        r = http.post(votes, json={**ok, "client": {"viewport": [1280, 800], "dpr": 2, "zooms": 3}})
        assert r.status_code == 200 and not r.json()["replayed"]


def test_json_shape_counts_keys_items_and_depth():
    assert json_shape_problem(b"", 6, 10) is None
    assert json_shape_problem(b'{"a": [1, 2, {"b": null}]}', 6, 10) is None     # 1 + 2 + 3 + 2 values
    assert json_shape_problem(b'{"a": [1, 2, {"b": null}]}', 6, 7)
    assert json_shape_problem(b"[[[[1]]]]", 4, 100) is None and json_shape_problem(b"[[[[[1]]]]]", 4, 100)
    assert json_shape_problem(b"[1, 2", 6, 10) == "the body is not valid JSON"


def test_token_buckets_refill_and_forget_the_oldest():
    now = [0.0]
    b = Buckets(Rate(per_s=2, burst=3), size=2, clock=lambda: now[0])
    assert [b.take("a") for _ in range(3)] == [0, 0, 0]
    assert b.take("a") == pytest.approx(0.5)         # empty: one request back in 1/2 s
    now[0] += 0.5
    assert b.take("a") == 0 and b.take("a") > 0
    b.take("b"), b.take("c")                          # "a" is the least recently used of three
    assert len(b._buckets) == 2 and "a" not in b._buckets


def test_limits_from_the_environment():
    lim = Limits.from_env({"STUDY_LIMIT_VOTE_PER_SESSION": "1/4", "STUDY_LIMIT_RATE_LIMITS": "false",
                           "STUDY_LIMIT_MAX_BODY_BYTES": "1000"})
    assert lim.vote_per_session == Rate(1, 4) and not lim.rate_limits and lim.max_body_bytes == 1000
    assert Limits.from_env({}) == Limits()
    with pytest.raises(ValueError, match="STUDY_LIMIT_VOTE_PER_ADDRESS"):
        Limits.from_env({"STUDY_LIMIT_VOTE_PER_ADDRESS": "fast"})


def test_rate_limits_answer_429_with_retry_after(tmp_path, open_study):
    env = {"STUDY_LIMIT_VOTE_PER_SESSION": "1/3", "STUDY_LIMIT_EVENT_PER_SESSION": "1/2",
           "STUDY_LIMIT_VOTE_PER_ADDRESS": "0.01/8", "STUDY_LIMIT_START_PER_ADDRESS": "0.2/4",
           "STUDY_LIMIT_START_OVERALL": "0.01/7"}
    with Server(open_study, f"sqlite:///{tmp_path / 'rate.db'}", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        xff = lambda ip: {"X-Forwarded-For": f"{ip}, 10.0.0.1"}     # the first entry is the visitor's
        token = http.post("/sessions", json={}).json()["token"]
        st = http.post(f"/sessions/{token}/consent", json={"agree": True, "version": "2"}).json()
        vote = lambda: http.post(f"/sessions/{token}/votes", json={"trial_id": st["trial"]["id"], "choice": "left"})
        assert [vote().status_code for _ in range(4)] == [200, 200, 200, 429]   # a vote, two replays, dry
        wait = vote().headers["Retry-After"]
        time.sleep(int(wait))
        assert vote().status_code == 200                        # waiting as told is enough
        events = [http.post(f"/sessions/{token}/events", json={"kind": "zoom"}).status_code for _ in range(3)]
        assert events == [204, 204, 429]
        # per address: fresh (here forged) tokens do not get around it
        forged = [http.post(f"/sessions/{i:043d}/votes", json={"trial_id": 1, "choice": "left"},
                            headers=xff("192.0.2.50")).status_code for i in range(9)]
        assert forged == [404] * 8 + [429]

        start = lambda ip: http.post("/sessions", json={}, headers=xff(ip))
        assert [start("192.0.2.1").status_code for _ in range(5)] == [200] * 4 + [429]   # per address
        refused = start("192.0.2.1")
        assert 1 <= int(refused.headers["Retry-After"]) <= 5 and "too many requests" in refused.json()["detail"]
        assert start("198.51.100.7").status_code == 200         # another address has its own bucket
        # the server's own bucket (7 starts here), which forged addresses cannot dodge
        assert [start(f"203.0.113.{i}").status_code for i in range(2)] == [200, 429]


@pytest.mark.slow
def test_fifty_raters_behind_one_address_never_hit_the_default_limits(tmp_path, prolific_study):
    """A lab of 50 raters behind one NAT, voting every ~1 s (people answer in seconds)."""
    with Server(prolific_study, f"sqlite:///{tmp_path / 'lab.db'}") as server:
        load = run_load(server.url, 50, think_s=1.0)
    assert load.errors == [] and len(load.acked) == 50 * 5


def test_no_takeover_by_a_known_id_over_http(tmp_path, open_study, prolific_study):
    with Server(open_study, f"sqlite:///{tmp_path / 'anon.db'}") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/sessions", json={"anonymous_id": "alice"}).status_code == 422   # gone
        alice = http.post("/sessions", json={}).json()
        assert len(alice["rater_key"]) >= 24
        assert http.post("/sessions", json={"rater_key": alice["rater_key"]}).json()["token"] == alice["token"]
        assert http.post("/sessions", json={"token": alice["token"]}).json()["token"] == alice["token"]
        mallory = http.post("/sessions", json={}).json()
        assert mallory["token"] != alice["token"] and mallory["rater_key"] != alice["rater_key"]
        assert http.post("/sessions", json={"rater_key": "alice"}).status_code == 422         # not a key
    link = {"PROLIFIC_PID": "5f00aa", "STUDY_ID": "S1", "SESSION_ID": "64f1c2e9a0b1"}
    with Server(prolific_study, f"sqlite:///{tmp_path / 'pro.db'}") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        first = http.post("/sessions", json={"params": link}).json()
        assert first["rater_key"] is None
        pid_only = http.post("/sessions", json={"params": {"PROLIFIC_PID": link["PROLIFIC_PID"]}})
        guessed = http.post("/sessions", json={"params": {**link, "SESSION_ID": "guess"}})
        visitor = http.post("/sessions", json={})
        assert pid_only.status_code == 422 and guessed.status_code == 409 and visitor.status_code == 403
        for r in (pid_only, guessed, visitor):
            assert first["token"] not in r.text
        # the same rater in a second browser, and after a reload with the kept token
        with httpx.Client(base_url=server.url, timeout=30) as other_browser:
            assert other_browser.post("/sessions", json={"params": dict(link)}).json()["token"] == first["token"]
        assert http.post("/sessions", json={"params": link, "token": first["token"]}).json()["token"] == first["token"]
