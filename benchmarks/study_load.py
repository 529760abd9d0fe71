"""Load on the study's HTTP API: simulated raters vote through a real server process.

    nice -n 10 .venv/bin/python benchmarks/study_load.py [--postgres URL] [--raters 1 10 50]
                                                         [--trials 40] [--think-ms 0 150]

Starts `python -m study serve` (uvicorn, one process) on 127.0.0.1 over a fresh database for
every row, runs N raters at once (one thread each, with a keep-alive http.client connection: the
lightest client, since it shares the CPU with the server). Every rater starts a session,
consents and votes through all its trials, pausing think-ms between votes. Prints vote latency
p50/p99 (and p99 without each rater's first vote, and p99 of the votes sent after the last
consent was answered: every rater starts and consents at once, and the votes of those already
consented meet that burst), the longest start + consent a rater waited, throughput, the CPU time
per vote of the server, of the PostgreSQL backends that serve it (a local server, lower bound;
SQLite does that work inside the server process) and of the simulated raters (this process), and
the machine's load average at the end of the row (other work on the machine shows there). On a
machine whose cores are all busy, votes/s follows the sum of the three CPU columns; with cores
to spare, mostly the server's (one process: its Python runs one thread at a time). The
PostgreSQL server keeps the priority it was started with (the backends are its children), which
`nice` on this command does not change. PostgreSQL rows run when --postgres or TEST_POSTGRES_URL
is given. The tests (tests/study) use the same server and rater code.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "studies" / "demo.yaml"
API = "/api/study"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Simulated raters vote far faster than people, all from 127.0.0.1: capacity is measured
# without the per-client rate limits (study.limits), everything else as served.
NO_RATE_LIMITS = {"STUDY_LIMIT_RATE_LIMITS": "0"}


class Server:
    """`python -m study serve FILE --db URL` in a child process, ready when its API answers.
    `env`: extra environment variables, e.g. STUDY_LIMIT_* settings."""

    def __init__(self, study_file: Path, db_url: str, timeout: float = 90, env: dict[str, str] | None = None,
                 workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{API}"
        self.log = tempfile.TemporaryFile()     # a pipe could fill up and stall the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "study", "serve", str(study_file), "--db", db_url, "--port", str(self.port),
             "--workers", str(workers)],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the study server exited: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("the study server did not start in time")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def processes(self) -> dict[int, int]:
        """The server's processes (it and its workers, `--workers`): pid -> CPU ticks used so far
        (user + system), from /proc."""
        stats = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:     # a process that just exited
                continue
            stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, ticks
        tree, grown = {self.proc.pid}, True
        while grown:    # descendants, whatever order their pids came in
            size = len(tree)
            tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
            grown = len(tree) > size
        return {pid: stats[pid][1] for pid in tree if pid in stats}

    def cpu_s(self) -> float:
        """CPU seconds the server's processes have used (user + system)."""
        return sum(self.processes().values()) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Load:
    """What the raters saw: every acknowledged vote, latencies, errors."""
    acked: dict = field(default_factory=dict)        # trial_id -> choice, from 200 answers
    latencies_ms: list = field(default_factory=list)
    first_vote: list = field(default_factory=list)   # per latency: was it the rater's first vote
    sent_at: list = field(default_factory=list)      # per latency: when the vote was sent (perf_counter)
    consent_ms: list = field(default_factory=list)   # start -> consent answered, per rater
    consented_at: list = field(default_factory=list)  # when each consent was answered (perf_counter)
    errors: list = field(default_factory=list)
    replays: int = 0
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def votes_per_s(self) -> float:
        return len(self.acked) / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float, later_only: bool = False, after_consents: bool = False) -> float:
        """Of every vote's latency, or (later_only) of the votes after each rater's first, or
        (after_consents) of the votes sent after the last rater's consent was answered."""
        last = max(self.consented_at, default=0.0)
        ms = [m for m, first, sent in zip(self.latencies_ms, self.first_vote, self.sent_at)
              if not (later_only and first) and not (after_consents and sent < last)]
        return float(np.percentile(ms, q)) if ms else float("nan")


def rater(base: str, pid: str, load: Load, stop: threading.Event | None = None, seed: int = 0,
          think_s: float = 0.0) -> str:
    """One participant from start to the last trial; returns the final session status.

    A restarted rater resumes (the same id gives the same session, at the same trial). Between
    an answer and the next vote the rater pauses think_s (x 0.5 to 1.5, at random).
    """
    rng = random.Random(seed)
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)   # keep-alive, light on CPU

    def post(path: str, body: dict) -> dict | None:
        conn.request("POST", url.path + path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status == 200:
            return json.loads(data)
        with load.lock:
            load.errors.append((pid, path.split("/")[-1], r.status, data[:200]))

    try:
        started = time.perf_counter()
        st = post("/sessions", {"params": {"PROLIFIC_PID": pid, "STUDY_ID": "bench", "SESSION_ID": f"s-{pid}"}})
        if st and st["status"] == "consent":
            st = post(f"/sessions/{st['token']}/consent", {"agree": True, "version": st["consent_version"]})
            with load.lock:
                load.consented_at.append(time.perf_counter())
                load.consent_ms.append((load.consented_at[-1] - started) * 1000)
        if st is None:
            return "error"
        while st["trial"] is not None and not (stop and stop.is_set()):
            trial = st["trial"]
            choice = rng.choice(["left", "right"])
            t0 = time.perf_counter()
            body = post(f"/sessions/{st['token']}/votes",
                        {"trial_id": trial["id"], "choice": choice, "client_ms": rng.uniform(500, 3000)})
            ms = (time.perf_counter() - t0) * 1000
            if body is None:
                return "error"
            with load.lock:
                load.latencies_ms.append(ms)
                load.sent_at.append(t0)
                load.first_vote.append(trial["index"] == 0)
                load.acked[body["trial_id"]] = body["choice"]
                load.replays += body["replayed"]
            st = body["state"]
            if think_s:
                time.sleep(think_s * rng.uniform(0.5, 1.5))
        return st["status"]
    finally:
        conn.close()


def run_load(base: str, n_raters: int, prefix: str = "r", stop: threading.Event | None = None,
             load: Load | None = None, think_s: float = 0.0) -> Load:
    load = load or Load()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_raters) as pool:
        futures = [pool.submit(rater, base, f"{prefix}{i}", load, stop, i, think_s) for i in range(n_raters)]
        for f in futures:
            try:
                f.result()
            except (OSError, http.client.HTTPException) as e:   # the server went away (the crash test)
                with load.lock:
                    load.errors.append(("transport", repr(e)))
    load.wall_s = time.perf_counter() - t0
    return load


def study_copy(source: Path, folder: Path, trials: int, sessions_per_rater: int = 1) -> Path:
    """A copy of a study file with `trials` trials per session and absolute paths, in `folder`."""
    data = yaml.safe_load(source.read_text())
    for im in data["images"]:
        im["path"] = str((source.parent / im["path"]).resolve())
    data["stimuli_dir"] = str((source.parent / data.get("stimuli_dir", f"{data['id']}_stimuli")).resolve())
    data.update(trials_per_session=trials, sessions_per_rater=sessions_per_rater,
                platform={"kind": "prolific", "completion_code": "BENCH", "screenout_code": "BENCHOUT",
                          "no_consent_code": "BENCHNO"})
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--think-ms", type=float, nargs="+", default=[0, 150],
                    help="each rater's pause between votes: 0 measures capacity (votes back to back); "
                         "real raters pause seconds, so 150 ms is still a heavy crowd")
    ap.add_argument("--study", type=Path, default=DEMO, help="a study whose stimuli are built (default: the demo)")
    ap.add_argument("--pg-workers", type=int, nargs="+", default=[1],
                    help="server processes for the PostgreSQL rows (`study serve --workers`); SQLite has one")
    ap.add_argument("--postgres", default=os.environ.get("TEST_POSTGRES_URL"),
                    help="SQLAlchemy URL of a PostgreSQL database the benchmark may fill (a fresh "
                         "database is created next to it for every row)")
    args = ap.parse_args()
    rows = [("sqlite", 1)] + [("postgresql", w) for w in args.pg_workers if args.postgres]
    print("| database | server processes | raters | think ms | votes | errors | p50 ms | p99 ms | p99 ms after 1st vote | p99 ms after the consents | start+consent max ms | votes/s "
          "| server CPU ms/vote | database CPU ms/vote | raters' CPU ms/vote | load avg (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        study = study_copy(args.study, Path(tmp), args.trials)
        for backend, workers in rows:
            for think in args.think_ms:
                for n in args.raters:
                    url, cleanup = fresh_db(backend, Path(tmp), args.postgres, f"{workers}_{n}_{think:g}")
                    try:
                        with Server(study, url, env=NO_RATE_LIMITS, workers=workers) as server:
                            cpu0, db0, own0 = server.cpu_s(), _backends_cpu_s(args.postgres, url), _own_cpu_s()
                            load = run_load(server.url, n, think_s=think / 1000)
                            votes = max(1, len(load.acked))
                            cpu = (server.cpu_s() - cpu0) * 1000 / votes
                            raters_cpu = (_own_cpu_s() - own0) * 1000 / votes
                            db1 = _backends_cpu_s(args.postgres, url)
                            db_cpu = (f"{sum(t - db0.get(pid, 0) for pid, t in db1.items()) * 1000 / votes:.2f}"
                                      if db0 is not None and db1 is not None else "-")
                    finally:
                        cleanup()
                    print(f"| {backend} | {workers} | {n} | {think:g} | {len(load.acked)} | {len(load.errors)} "
                          f"| {load.percentile(50):.1f} | {load.percentile(99):.1f} "
                          f"| {load.percentile(99, later_only=True):.1f} "
                          f"| {load.percentile(99, after_consents=True):.1f} | {max(load.consent_ms, default=0):.0f} "
                          f"| {load.votes_per_s:.0f} "
                          f"| {cpu:.2f} | {db_cpu} | {raters_cpu:.2f} | {os.getloadavg()[0]:.1f} |", flush=True)


def _own_cpu_s() -> float:
    """CPU seconds this process (the simulated raters) has used, user + system."""
    t = os.times()
    return t.user + t.system


def _backends_cpu_s(pg_url: str | None, url: str) -> dict[int, float] | None:
    """CPU seconds used so far by each PostgreSQL backend (pid) now serving database `url`,
    read from /proc: a local server only; None for SQLite (its work runs inside the study
    server, in "server CPU") or where /proc does not show them. A connection opened and closed
    between two readings is missed: their difference is a lower bound."""
    if not url.startswith("postgresql"):
        return None
    import psycopg
    from sqlalchemy.engine import make_url

    base, name = make_url(pg_url), make_url(url).database
    with psycopg.connect(host=base.host, port=base.port, user=base.username, password=base.password,
                         dbname=base.database) as conn:
        pids = [p for (p,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]
    cpu = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime
    return cpu


def fresh_db(backend: str, tmp: Path, pg_url: str | None, tag: str):
    if backend == "sqlite":
        path = tmp / f"bench-{tag}.db"
        return f"sqlite:///{path}", lambda: None
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    name = f"bench_{os.getpid()}_{tag}"
    info = dict(host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database,
                autocommit=True)
    with psycopg.connect(**info) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')

    def cleanup():
        with psycopg.connect(**info) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return url.set(database=name).render_as_string(hide_password=False), cleanup


if __name__ == "__main__":
    main()
