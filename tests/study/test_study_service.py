"""The study service on SQLite and PostgreSQL: the session life, resuming, limits, integrity."""
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from study import quality
from study.db import ALEMBIC_INI, upgrade
from study.models import Base, Event, Rater, Session, Trial, Vote
from study.service import (Conflict, Forbidden, Invalid, NotFound, Participant, StudyService, new_rater_key)

from .conftest import make_study, vote_at_once


def count(svc, model, *where):
    with svc.Session() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where))


def start(svc, pid="p1", agree=True):
    st = svc.start_session(Participant("anonymous", pid))
    return svc.consent(st.token, agree, st.consent_version)


def test_schema_from_migrations_matches_the_models(db_url, study_file):
    svc = StudyService.open(study_file, db_url)
    with svc.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    # the migration goes down (tables and triggers) and up again
    cfg = Config(str(ALEMBIC_INI))
    with svc.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(svc.engine).get_table_names()) == {"alembic_version"}
    upgrade(svc.engine)
    assert len(inspect(svc.engine).get_table_names()) == len(Base.metadata.tables) + 1


def test_a_whole_session(db_url, study_file):
    svc = StudyService.open(study_file, db_url, seed=1)
    st = svc.start_session(Participant("anonymous", "p1"), user_agent="pytest")
    assert st.status == "consent" and st.trial is None and st.total == 40
    assert count(svc, Trial) == 0           # planned at consent: pages left unanswered hold none
    st = svc.consent(st.token, True, "2")
    assert count(svc, Trial) == 40
    seen = []
    while st.trial is not None:
        assert st.trial.index == st.index == len(seen)
        assert st.trial.reference and st.trial.left != st.trial.right
        seen.append(st.trial.id)
        r = svc.vote(st.token, st.trial.id, "left" if len(seen) % 3 else "right", client_ms=900.0,
                     client={"viewport": [1280, 800], "dpr": 1})
        assert not r.replayed
        st = r.state
    assert st.status == "completed" and st.index == 40 and len(set(seen)) == 40
    assert count(svc, Vote) == 40
    df = svc.votes_frame()
    assert len(df) == 40 and set(df.winner) == {"a", "b"}
    assert (df.trial_kind == "catch").sum() == 3 and (df.trial_kind == "repeat").sum() == 2
    assert df.server_ms.notna().all() and (df.server_ms >= 0).all() and (df.client_ms == 900).all()
    reg = df[df.trial_kind == "regular"]
    assert reg.method_a.isin(["jpeg", "webp"]).all() and (reg.bpp_a > 0).all()
    assert df.rater.nunique() == 1 and "p1" not in df.rater[0]           # a pseudonym
    stats = quality.rater_stats(df)                # the frame is what the analysis reads
    assert stats.loc[0, "catch_trials"] == 3 and stats.loc[0, "repeats"] == 2
    # finished: replaying returns the stored vote and adds nothing; the state stays completed
    again = svc.vote(st.token, seen[0], "right")     # the first vote was "left"
    assert again.replayed and again.choice == "left"
    assert count(svc, Vote) == 40 and again.state.status == "completed"


def test_resume_returns_the_same_session_and_trial(db_url, study_file):
    svc = StudyService.open(study_file, db_url, seed=2)
    st = start(svc)
    for _ in range(3):
        st = svc.vote(st.token, st.trial.id, "right").state
    again = svc.start_session(Participant("anonymous", "p1"))
    assert again.token == st.token and again.index == 3 and again.trial.id == st.trial.id
    assert svc.state(st.token).trial == st.trial
    # a new service (a restarted server) resumes the same way
    svc2 = StudyService(svc.cfg, svc.engine)
    assert svc2.start_session(Participant("anonymous", "p1")).trial.id == st.trial.id
    assert count(svc, Session) == 1 and count(svc, Event, Event.kind == "resume") == 2


def test_refusals(db_url, study_file):
    svc = StudyService.open(study_file, db_url, seed=3)
    mine, other = start(svc, "me"), start(svc, "other")
    with pytest.raises(Forbidden):
        svc.vote(mine.token, other.trial.id, "left")         # a trial of someone else's session
    with pytest.raises(Forbidden):
        svc.vote(mine.token, 10**9, "left")                  # a trial that does not exist
    with pytest.raises(NotFound):
        svc.vote("forged-token-0123456789abcdef", mine.trial.id, "left")
    with pytest.raises(Invalid):
        svc.vote(mine.token, mine.trial.id, "both")
    with svc.Session() as db:
        later = db.scalar(select(Trial.id).join(Session).where(Session.token == mine.token, Trial.index == 5))
    with pytest.raises(Conflict, match="not the current trial"):
        svc.vote(mine.token, later, "left")                  # skipping ahead
    with pytest.raises(Conflict, match="consent"):
        svc.consent(svc.start_session(Participant("anonymous", "new")).token, True, "1")  # stale text
    assert count(svc, Vote) == 0
    assert count(svc, Event, Event.kind == "vote_refused") == 2
    # the refused attempts changed nothing: the real vote still goes through
    assert not svc.vote(mine.token, mine.trial.id, "left").replayed


def test_session_limit_and_declined_consent(db_url, study_dir):
    study = make_study(study_dir, study_id="limit", trials=4, catch=0, repeats=0, per_rater=2)
    svc = StudyService.open(study, db_url, seed=4)
    for _ in range(2):
        st = start(svc, "p")
        while st.trial:
            st = svc.vote(st.token, st.trial.id, "left").state
        assert st.status == "completed"
    last = svc.start_session(Participant("anonymous", "p"))
    assert last.token == st.token and last.status == "completed" and last.trial is None
    assert count(svc, Session) == 2
    declined = start(svc, "q", agree=False)
    assert declined.status == "declined" and declined.trial is None and declined.code is None
    assert count(svc, Trial, Trial.session_id == select(Session.id).where(Session.token == declined.token)
                 .scalar_subquery()) == 0


def test_catch_failures_screen_out(db_url, study_dir):
    study = make_study(study_dir, study_id="screen", trials=12, catch=6, repeats=0, max_fail=2,
                       platform="{kind: prolific, completion_code: DONE1, screenout_code: OUT1, no_consent_code: NO1}")
    svc = StudyService.open(study, db_url, seed=5)
    with pytest.raises(Forbidden, match="Prolific"):
        svc.start_session(Participant("anonymous", "x"))
    who = Participant.from_params({"PROLIFIC_PID": "5f1a", "STUDY_ID": "s1", "SESSION_ID": "abc"})
    st = svc.start_session(who)
    st = svc.consent(st.token, True, st.consent_version)
    with svc.Session() as db:
        trials = {t.id: t for t in db.scalars(select(Trial).join(Session).where(Session.token == st.token))}
    while st.trial:
        t = trials[st.trial.id]
        wrong = {"left": "right", "right": "left"}.get(t.correct_side, "left")   # fail every catch
        st = svc.vote(st.token, st.trial.id, wrong).state
    assert st.status == "screened_out" and st.code == "OUT1"
    assert st.redirect_url == "https://app.prolific.com/submissions/complete?cc=OUT1"
    assert count(svc, Vote) < 12
    with svc.Session() as db:
        voted = set(db.scalars(select(Vote.trial_id)))
    left = min(set(trials) - voted)
    with pytest.raises(Conflict, match="finished"):     # a finished session takes no more votes
        svc.vote(st.token, left, "left")


def test_participant_ids_from_the_page_url():
    p = Participant.from_params({"PROLIFIC_PID": "abc", "STUDY_ID": "st", "SESSION_ID": "se"})
    assert (p.platform, p.external_id, p.platform_study_id, p.platform_session_id) == ("prolific", "abc", "st", "se")
    m = Participant.from_params({"workerId": "W1", "assignmentId": "A1", "hitId": "H1"})
    assert (m.platform, m.external_id, m.platform_session_id) == ("mturk", "W1", "A1")
    assert Participant.from_params({"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "H"}).preview
    assert Participant.from_params({}) is None
    for partial in ({"PROLIFIC_PID": "abc"}, {"PROLIFIC_PID": "abc", "STUDY_ID": "st"}, {"workerId": "W1"}):
        with pytest.raises(Invalid):        # an id without its submission's ids resumes nothing
            Participant.from_params(partial)
    with pytest.raises(Invalid):
        Participant.from_params({"PROLIFIC_PID": "<script>", "STUDY_ID": "st", "SESSION_ID": "se"})
    key = new_rater_key()
    a = Participant.anonymous(key)
    assert a.platform == "anonymous" and key not in a.external_id and a == Participant.anonymous(key)
    assert Participant.anonymous(new_rater_key()) != a
    for weak in ("", "alice", "x" * 65, None):
        with pytest.raises(Invalid):
            Participant.anonymous(weak)


def test_a_known_platform_id_takes_over_no_session(db_url, study_dir):
    """Knowing a rater's PROLIFIC_PID or workerId gives nobody their session; the same full ids
    (a second browser of the same rater) resume it, and so does the token the browser kept."""
    study = make_study(study_dir, study_id="takeover", trials=4, catch=0, repeats=0, per_rater=2,
                       platform="{kind: prolific, completion_code: DONE1, screenout_code: OUT1, no_consent_code: NO1}")
    svc = StudyService.open(study, db_url, seed=11)
    link = {"PROLIFIC_PID": "5f1a", "STUDY_ID": "s1", "SESSION_ID": "sess-secret"}
    mine = svc.start_session(Participant.from_params(link))
    mine = svc.consent(mine.token, True, mine.consent_version)
    other_submission = Participant.from_params({**link, "SESSION_ID": "guess"})
    with pytest.raises(Conflict, match="another link") as refused:
        svc.start_session(other_submission)
    assert mine.token not in str(refused.value)
    with pytest.raises(Conflict):       # a kept token does not open someone else's session either
        svc.start_session(other_submission, token=mine.token)
    # the rater's second browser (the same link) and the kept token resume the same session
    assert svc.start_session(Participant.from_params(dict(link))).token == mine.token
    assert svc.start_session(Participant.from_params(link), token=mine.token).trial == mine.trial
    # a shared computer: the next rater's link starts their own session despite the kept token
    next_rater = svc.start_session(Participant.from_params({**link, "PROLIFIC_PID": "6b2c"}), token=mine.token)
    assert next_rater.token != mine.token and next_rater.status == "consent"
    # finished, the same link shows the end again; another submission may start a second session
    st = mine
    while st.trial:
        st = svc.vote(st.token, st.trial.id, "left").state
    again = svc.start_session(Participant.from_params(link))
    assert again.token == mine.token and again.status == "completed" and again.code == "DONE1"
    second = svc.start_session(other_submission)
    assert second.token != mine.token and second.status == "consent"
    svc.consent(second.token, False, second.consent_version)
    with pytest.raises(Conflict, match="as often"):
        svc.start_session(Participant.from_params({**link, "SESSION_ID": "third"}))
    assert count(svc, Session) == 3


def test_a_visitor_is_known_by_the_server_issued_key_alone(db_url, study_file):
    svc = StudyService.open(study_file, db_url, seed=12)
    key = new_rater_key()
    st = svc.start_session(Participant.anonymous(key))
    assert svc.start_session(Participant.anonymous(key)).token == st.token
    assert svc.start_session(Participant.anonymous(new_rater_key())).token != st.token
    # the stored id is a hash of the key: reading the raters table gives no key to resume with
    with svc.Session() as db:
        stored = db.scalars(select(Rater.external_id)).all()
    assert key not in stored and all(len(x) == 64 for x in stored)
    # a visitor who kept the token (not the key) resumes too: the token is the session's secret
    assert svc.start_session(Participant.anonymous(new_rater_key()), token=st.token).token == st.token


def test_client_events_per_session_are_capped(db_url, study_file, monkeypatch):
    import study.service as service

    monkeypatch.setattr(service, "MAX_CLIENT_EVENTS", 5)
    svc = StudyService.open(study_file, db_url, seed=13)
    st, other = start(svc, "p"), start(svc, "q")
    svc.vote(st.token, st.trial.id, "left")
    for _ in range(3):
        svc.vote(st.token, st.trial.id, "left")          # replays count
    svc.log_event(st.token, "zoom", {"z": 2})
    with pytest.raises(Forbidden):
        svc.vote(st.token, other.trial.id, "left")       # refused votes count
    with pytest.raises(Conflict, match="5 events"):
        svc.log_event(st.token, "zoom", {"z": 3})
    svc.vote(st.token, st.trial.id, "left")              # a replay past the cap: answered, not logged
    svc.log_event(other.token, "zoom")                   # other sessions have their own count
    client_kinds = ("zoom", "vote_replayed", "vote_refused", "resume")
    assert count(svc, Event, Event.session_id == select(Session.id).where(Session.token == st.token)
                 .scalar_subquery(), Event.kind.in_(client_kinds)) == 5


def test_votes_and_events_are_append_only(db_url, study_file):
    svc = StudyService.open(study_file, db_url, seed=6)
    st = start(svc)
    svc.vote(st.token, st.trial.id, "left")
    for sql in ("UPDATE votes SET choice = 'right'", "DELETE FROM votes", "UPDATE events SET kind = 'x'",
                "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with svc.engine.begin() as conn:
                conn.execute(text(sql))
    assert count(svc, Vote, Vote.choice == "left") == 1


def test_export_votes_then_scores_from_the_command_line(tmp_path, study_file):
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    svc = StudyService.open(study_file, url, seed=8)
    for pid in ("u1", "u2", "u3"):
        st = start(svc, pid)
        while st.trial:
            st = svc.vote(st.token, st.trial.id, "left" if st.index % 2 else "right").state
    csv = tmp_path / "votes.csv"
    run = lambda *a: subprocess.run([sys.executable, "-m", "study", *a], capture_output=True, text=True,
                                    cwd=Path(__file__).resolve().parents[2])
    out = run("export-votes", str(study_file), "--db", url, "--out", str(csv))
    assert out.returncode == 0 and "120 votes" in out.stdout, out.stderr
    out = run("scores", str(csv), "--model", "bt", "--bootstrap", "0")
    assert out.returncode == 0, out.stderr
    for cond in ("jpeg@0.5", "jpeg@1.5", "webp@0.5", "webp@2"):
        assert cond in out.stdout


def test_sqlite_wal_is_checkpointed_in_the_background(tmp_path, study_file):
    import shutil
    import sqlite3
    import time

    db = tmp_path / "wal.db"
    svc = StudyService.open(study_file, f"sqlite:///{db}", seed=9)
    st = start(svc)
    for _ in range(10):
        st = svc.vote(st.token, st.trial.id, "left").state
    with svc.engine.connect() as conn:      # no checkpoint inside a request
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    deadline = time.time() + 10
    while True:     # the database file alone (without its WAL) catches up within seconds
        shutil.copy(db, tmp_path / "alone.db")
        con = sqlite3.connect(tmp_path / "alone.db")
        try:
            n = con.execute("SELECT count(*) FROM votes").fetchone()[0]
        except sqlite3.OperationalError:    # not even the tables are in the file yet
            n = 0
        con.close()
        if n == 10 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert n == 10


def test_racing_votes_on_one_trial_store_one(db_url, study_file):
    """Votes on one trial at once (a double click, two tabs): one is stored, every answer names
    it, the session moves on by one trial. On PostgreSQL a vote reads without a lock: the
    write's guard decides, and the losers answer as for a resubmission."""
    svc = StudyService.open(study_file, db_url, seed=1)
    for n in range(4):
        st = start(svc, f"racer{n}")
        results = vote_at_once(svc, st.token, st.trial.id)
        stored = count(svc, Vote, Vote.trial_id == st.trial.id)
        assert stored == 1 and sum(not r.replayed for r in results) == 1
        assert len({r.choice for r in results}) == 1
        assert all(r.state.index == 1 and r.state.trial.index == 1 for r in results)
        with svc.Session() as db:
            assert db.scalar(select(Session.next_index).where(Session.token == st.token)) == 1
