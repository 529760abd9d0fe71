"""The planner's history (study/history.py) kept in memory and read by id deltas: equal to a full
read after sessions and votes of two server processes in any order, cost flat in the study's
size, and healed by the periodic full read where rows commit below the ids already seen."""

from sqlalchemy import func, select

from study.history import PairHistory
from study.models import Session, Trial, Vote
from study.service import StudyService

from .conftest import make_study
from .test_study_vote_path import start


def full_read(svc):
    """The history from scratch (a new PairHistory reads every row)."""
    with svc.Reader() as db:
        return PairHistory(svc._pair_keys).read(db)


def vote_some(svc, st, n, offset):
    choices = ("left", "right", "tie") if svc.cfg.allow_tie else ("left", "right")
    for i in range(n):
        if st.trial is None:
            break
        st = svc.vote(st.token, st.trial.id, choices[(i + offset) % len(choices)]).state
    return st


def test_the_read_by_deltas_equals_a_full_read_across_two_processes(db_url, study_file):
    one = StudyService.open(study_file, db_url, seed=1)
    two = StudyService.open(study_file, db_url, seed=2)  # another server process on the same database
    sessions = []
    for step in range(6):
        svc, other = (one, two) if step % 2 == 0 else (two, one)
        sessions.append(start(svc, f"history-{step}"))
        sessions = [vote_some(other if i % 2 else svc, st, 3, step + i) for i, st in enumerate(sessions)]
        for s in (one, two):
            with s.Reader() as db:
                assert s._history(db) == full_read(s), step
    counts, wins = full_read(one)
    assert sum(counts.values()) > sum(wins.values()) > 20


def kind_of(svc, trial_id: int) -> str:
    with svc.Reader() as db:
        return db.scalar(select(Trial.kind).where(Trial.id == trial_id))


class Recording:
    """A database session that keeps what each statement answered."""

    def __init__(self, db):
        self.db, self.answers = db, []

    def execute(self, *args, **kwargs):
        self.answers.append(list(self.db.execute(*args, **kwargs)))
        return self.answers[-1]


def test_a_read_gets_only_the_rows_stored_since_the_last_one(db_url, study_file):
    svc = StudyService.open(study_file, db_url, seed=3)
    history = PairHistory(svc._pair_keys)
    for i in range(4):
        vote_some(svc, start(svc, f"warm-{i}"), 5, i)
    with svc.Reader() as db:
        first = Recording(db)
        history.read(first)
        assert sum(n for *_, n, _ in first.answers[0]) > 20   # every planned regular trial
        again = Recording(db)
        assert history.read(again) == full_read(svc)
        assert again.answers == [[], []]    # nothing new: no row read again
    st = start(svc, "one-more")
    while kind_of(svc, st.trial.id) != "regular":  # the rater's view does not say
        st = svc.vote(st.token, st.trial.id, "left").state
    svc.vote(st.token, st.trial.id, "left")
    with svc.Reader() as db:
        delta = Recording(db)
        assert history.read(delta) == full_read(svc)
    trials, votes = delta.answers
    with svc.Reader() as db:
        planned = db.scalar(select(func.count()).select_from(Trial).join(Session)
                            .where(Session.token == st.token, Trial.kind == "regular"))
    assert sum(n for *_, n, _ in trials) == planned > 0     # the new session's regular trials only
    assert [(choice, n) for *_, choice, n, _ in votes] == [("left", 1)]     # and its one regular vote


def test_rows_committed_below_the_mark_are_counted_by_the_next_full_read(db_url, study_file):
    """PostgreSQL can commit a row whose id is below one already seen (concurrent transactions);
    the deltas miss it, the full read every `full_every_s` seconds counts it."""
    svc = StudyService.open(study_file, db_url, seed=4)
    now = [0.0]
    history = PairHistory(svc._pair_keys, full_every_s=60.0, clock=lambda: now[0])
    with svc.Reader() as db:
        history.read(db)
    vote_some(svc, start(svc, "late"), 6, 0)
    with svc.Reader() as db:
        # as if those rows had committed after rows with higher ids that were read first
        history._last_trial = db.scalar(select(func.max(Trial.id)))
        history._last_vote = db.scalar(select(func.max(Vote.id)))
        assert history.read(db) == ({}, {})
        now[0] += 59.0
        assert history.read(db) == ({}, {})
        now[0] += 1.0
        assert history.read(db) == full_read(svc) != ({}, {})


def test_another_studys_rows_in_the_same_database_are_not_counted(db_url, study_file):
    """The deltas are read by id over the whole database; a row is this study's by its image."""
    other_file = make_study(study_file.parent, trials=12, catch=1, repeats=1, study_id="t2-history")
    svc = StudyService.open(study_file, db_url, seed=5)
    other = StudyService.open(other_file, db_url, seed=6)
    vote_some(svc, start(svc, "mine"), 4, 0)
    with svc.Reader() as db:
        mine = svc._history(db)
    theirs = vote_some(other, start(other, "theirs"), 6, 1)
    with svc.Reader() as db:
        assert svc._history(db) == mine == full_read(svc)
        planned = db.scalar(select(func.count()).select_from(Trial).join(Session)
                            .where(Session.token == theirs.token, Trial.kind == "regular"))
    with other.Reader() as db:
        counts, wins = other._history(db)
    assert sum(counts.values()) == planned > 0 and 0 < sum(wins.values()) <= 6
