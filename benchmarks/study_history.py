"""What a consent costs as a study grows: the planner reads the study's history (study/history.py)
at every new session.

    python benchmarks/study_history.py [--sessions 100 1000 5000] [--postgres URL]

In-process (no HTTP): sessions of the demo study start and consent one after another; at each
row, the mean consent time since the previous row, and the median time of a history read with
nothing new to read. Then every trial gets a vote (one INSERT ... SELECT) and the same is
measured again. SQLite in a temporary folder; PostgreSQL too with --postgres (or
TEST_POSTGRES_URL), in a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.service import Participant, StudyService, new_rater_key  # noqa: E402
from study_load import fresh_db  # noqa: E402  (this script's folder is sys.path[0])

DEMO = Path(__file__).resolve().parent.parent / "assets" / "studies" / "demo.yaml"


def consent(svc: StudyService) -> None:
    st = svc.start_session(Participant.anonymous(new_rater_key()))
    svc.consent(st.token, True, st.consent_version)


def history_ms(svc: StudyService) -> float:
    def once():
        with svc.Reader() as db:
            started = time.perf_counter()
            svc._history(db)
            return 1000 * (time.perf_counter() - started)
    return statistics.median(once() for _ in range(7))


def run(name: str, url: str, sessions: list[int]) -> list[tuple]:
    svc = StudyService.open(DEMO, url, seed=0)
    rows, done = [], 0
    for target in sessions:
        started, before = time.perf_counter(), done
        while done < target:
            consent(svc)
            done += 1
        per = 1000 * (time.perf_counter() - started) / max(1, done - before)
        with svc.engine.connect() as c:
            trials = c.execute(text("SELECT count(*) FROM trials")).scalar()
        rows.append((name, done, trials, "no", per, history_ms(svc)))
    with svc.engine.begin() as c:
        c.execute(text("INSERT INTO votes (trial_id, session_id, choice, created_at) "
                       "SELECT t.id, t.session_id, CASE WHEN t.id % 2 = 0 THEN 'left' ELSE 'right' END, "
                       "CURRENT_TIMESTAMP FROM trials t LEFT JOIN votes v ON v.trial_id = t.id WHERE v.id IS NULL"))
        # What autovacuum does on PostgreSQL once a table has grown by a tenth: votes that arrive one
        # by one are in the statistics; 60,000 inserted at once are not yet.
        if svc.engine.dialect.name == "postgresql":
            c.execute(text("ANALYZE votes"))
    history_ms(svc)  # the first read after the bulk insert takes in every new vote
    started = time.perf_counter()
    for _ in range(20):
        consent(svc)
    rows.append((name, done + 20, trials, "every trial", 1000 * (time.perf_counter() - started) / 20, history_ms(svc)))
    svc.engine.dispose()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--postgres", default=os.environ.get("TEST_POSTGRES_URL"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("sqlite", "postgresql") if args.postgres else ("sqlite",):
            url, cleanup = fresh_db(backend, Path(tmp), args.postgres, "history")
            try:
                rows += run(backend, url, sorted(args.sessions))
            finally:
                cleanup()
    print("database | sessions | trials | votes | consent ms (mean since the row above) | history read ms (nothing new)")
    print("---|---:|---:|---|---:|---:")
    for name, n, trials, votes, per, hist in rows:
        print(f"{name} | {n} | {trials} | {votes} | {per:.1f} | {hist:.2f}")


if __name__ == "__main__":
    main()
