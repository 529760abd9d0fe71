"""The study's HTTP API under load, through a real server process (uvicorn on 127.0.0.1):
no acknowledged vote is lost or doubled, also when the server is SIGKILLed mid-load (SQLite
and PostgreSQL), and forged, foreign and replayed votes are refused. The load runs without
the per-client rate limits (its raters are far faster than people, all from one address);
tests/study/test_study_limits.py tests those."""
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import create_engine, text

from benchmarks.study_load import NO_RATE_LIMITS, Load, Server, run_load

from .conftest import make_study

RATERS, TRIALS = 50, 40
PROLIFIC = "{kind: prolific, completion_code: C1, screenout_code: S1, no_consent_code: N1}"


@pytest.fixture(scope="module")
def study_file(study_dir):
    """A Prolific study: the simulated raters come with Prolific links."""
    return make_study(study_dir, study_id="load", platform=PROLIFIC)


def stored_votes(db_url):
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT trial_id, choice FROM votes")).all()
    engine.dispose()
    return rows


@pytest.mark.slow
def test_50_raters_40_trials_every_acknowledged_vote_is_stored_once(db_url, study_file):
    with Server(study_file, db_url, env=NO_RATE_LIMITS) as server:
        load = run_load(server.url, RATERS)
        log = server.output()
    assert load.errors == [], load.errors[:5]
    assert len(load.acked) == RATERS * TRIALS == 2000 and load.replays == 0
    rows = stored_votes(db_url)
    assert len(rows) == 2000
    assert len({t for t, _ in rows}) == 2000                  # no trial has two votes
    assert dict(rows) == load.acked                           # each stored as acknowledged
    assert "Traceback" not in log


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_acknowledged_vote(db_url, study_file):
    url = db_url
    load, stop = Load(), threading.Event()
    server = Server(study_file, url, env=NO_RATE_LIMITS)
    worker = threading.Thread(target=run_load, args=(server.url, 20), kwargs={"stop": stop, "load": load})
    worker.start()
    deadline = time.time() + 120
    while len(load.acked) < 300 and time.time() < deadline and worker.is_alive():
        time.sleep(0.01)
    server.kill()                       # in the middle of the load: requests are in flight
    acked_before = dict(load.acked)
    worker.join(60)
    assert 300 <= len(acked_before) < 20 * TRIALS
    assert not [e for e in load.errors if e[0] != "transport"], load.errors[:3]

    if url.startswith("sqlite"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))   # the WAL is still there: recovered on open
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    rows = dict(stored_votes(url))
    lost = {t: c for t, c in acked_before.items() if rows.get(t) != c}
    assert lost == {}
    assert len(rows) >= len(acked_before)   # at most the in-flight votes were stored but not acknowledged

    # A new server over the same file: every rater resumes where the database says and finishes.
    with Server(study_file, url, env=NO_RATE_LIMITS) as again:
        after = run_load(again.url, 20)
    assert after.errors == []
    final = stored_votes(url)
    assert len(final) == 20 * TRIALS and len({t for t, _ in final}) == 20 * TRIALS
    assert all(dict(final)[t] == c for t, c in acked_before.items())


def test_forged_foreign_and_replayed_votes_are_refused(db_url, study_file):
    with Server(study_file, db_url) as server, httpx.Client(base_url=server.url) as http:
        def session(pid):
            st = http.post("/sessions", json={"params": {"PROLIFIC_PID": pid, "STUDY_ID": "s", "SESSION_ID": pid}}).json()
            return http.post(f"/sessions/{st['token']}/consent", json={"agree": True, "version": "2"}).json()

        me, other = session("me"), session("other")
        mine, theirs = me["trial"]["id"], other["trial"]["id"]
        vote = lambda tok, tid, choice="left": http.post(f"/sessions/{tok}/votes",
                                                          json={"trial_id": tid, "choice": choice})
        assert vote("x" * 43, mine).status_code == 404                 # forged token
        assert vote("é" * 43, mine).status_code == 404
        assert vote(me["token"], 2**70).status_code == 422
        assert vote(me["token"], theirs).status_code == 403             # someone else's trial
        assert vote(me["token"], mine, "up").status_code == 422
        assert http.post(f"/sessions/{me['token']}/votes", json={"choice": "left"}).status_code == 422
        first = vote(me["token"], mine, "left").json()
        replay = vote(me["token"], mine, "right").json()                # resubmitted, other answer
        assert not first["replayed"] and replay["replayed"] and replay["choice"] == "left"
        assert replay["state"]["trial"]["id"] == first["state"]["trial"]["id"]
        # the current trial of a session, images by opaque id, no method names anywhere
        trial = http.get(f"/sessions/{me['token']}/trial").json()
        assert trial["index"] == 1 and set(trial["urls"]) == {"reference", "left", "right"}
        img = http.get(trial["urls"]["left"].removeprefix("/api/study"))
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert "jpeg" not in str(trial) and "webp" not in str(trial)
        assert http.get("/stimuli/0123456789abcdef01234567").status_code == 404
        assert http.post(f"/sessions/{me['token']}/events", json={"kind": "zoom", "payload": {"z": 2}}).status_code == 204
        assert http.post(f"/sessions/{me['token']}/events", json={"kind": "drop table"}).status_code == 422
    rows = stored_votes(db_url)
    assert rows == [(mine, "left")]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_server_processes_on_postgresql_store_every_vote_once(postgres_url, study_file):
    """`serve --workers 2`: the raters' keep-alive connections spread over two processes, each
    with its own pool and its own read-ahead of votes; every acknowledged vote is stored once."""
    with Server(study_file, postgres_url, env=NO_RATE_LIMITS, workers=2) as server:
        workers = [pid for pid in server.processes() if "spawn_main" in _cmdline(pid)
                   and "resource_tracker" not in _cmdline(pid)]
        load = run_load(server.url, 20)
        log = server.output()
    assert len(workers) == 2, workers
    assert load.errors == [], load.errors[:5]
    assert len(load.acked) == 20 * TRIALS and load.replays == 0
    rows = stored_votes(postgres_url)
    assert len(rows) == len({t for t, _ in rows}) == 20 * TRIALS
    assert dict(rows) == load.acked
    assert "Traceback" not in log


def test_several_server_processes_are_refused_on_sqlite(study_file, tmp_path):
    done = subprocess.run([sys.executable, "-m", "study", "serve", str(study_file), "--db",
                           f"sqlite:///{tmp_path / 'study.db'}", "--workers", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "SQLite has one writer" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "study.db").exists()     # refused before anything was created


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_fewer_than_one_server_process_is_refused(study_file, tmp_path, workers):
    done = subprocess.run([sys.executable, "-m", "study", "serve", str(study_file), "--db",
                           f"sqlite:///{tmp_path / 'study.db'}", "--workers", workers],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers must be at least 1" in done.stderr
    assert not (tmp_path / "study.db").exists()


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""
