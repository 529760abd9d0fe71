"""The vote's hot path on SQLite and PostgreSQL: how many statements a vote sends, and the read
it skips (StudyService._ahead) never letting a vote be lost or counted twice; what a consent
costs the server (its trials in one short insert, planning on one BLAS thread)."""

import pytest
import threadpoolctl
from sqlalchemy import event, func, select

from study import scheduler
from study.models import Image, Session, Stimulus, Trial, Vote
from study.service import Forbidden, Participant, StudyService

from .conftest import vote_at_once

# Statements a vote sends, at most (SQLite: BEGIN IMMEDIATE and the writes one by one; the
# commit is no statement): the process that showed the trial (the consent's or the previous
# vote's answer) knows its row; another process (a restart) reads it first, one more.
VOTE = {"postgresql": 1, "sqlite": 4}


def start(svc, pid):
    st = svc.start_session(Participant("anonymous", pid))
    return svc.consent(st.token, True, st.consent_version)


def stored_votes(svc, trial_id):
    with svc.Session() as db:
        return db.scalar(select(func.count()).select_from(Vote).where(Vote.trial_id == trial_id))


def next_index(svc, token):
    with svc.Session() as db:
        return db.scalar(select(Session.next_index).where(Session.token == token))


def test_a_vote_sends_one_statement_on_postgresql(db_url, study_file):
    svc = StudyService.open(study_file, db_url, seed=1)
    backend = svc.engine.dialect.name
    sent = []
    event.listen(svc.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    st = start(svc, "counted")
    per_vote = []
    while st.index < 5:
        sent.clear()
        st = svc.vote(st.token, st.trial.id, "left").state
        per_vote.append(len(sent))
    assert max(per_vote) <= VOTE[backend], per_vote
    restarted = StudyService.open(study_file, db_url, seed=2)
    event.listen(restarted.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    while st.trial is not None:
        sent.clear()
        st = restarted.vote(st.token, st.trial.id, "left").state
        per_vote.append(len(sent))
    assert st.status == "completed" and len(per_vote) == st.total
    assert per_vote[5] <= VOTE[backend] + 1 and max(per_vote[6:]) <= VOTE[backend], per_vote


def test_a_stale_read_from_memory_is_caught_by_the_write(db_url, study_file):
    """Two server processes on one database: the one that voted trial 0 knows trial 1's row;
    the other records trial 1 meanwhile. The same vote sent to the first answers with the
    stored vote (a replay), and nothing is stored twice."""
    first = StudyService.open(study_file, db_url, seed=1)
    other = StudyService.open(study_file, db_url, seed=2)
    st = start(first, "two-servers")
    st = first.vote(st.token, st.trial.id, "left").state
    trial_1 = st.trial.id
    assert trial_1 in first._ahead
    other_answer = other.vote(st.token, trial_1, "right")
    assert not other_answer.replayed
    again = first.vote(st.token, trial_1, "left")
    assert again.replayed and again.choice == "right"
    assert stored_votes(first, trial_1) == 1 and next_index(first, st.token) == 2
    # and the session goes on from either server
    after = first.vote(st.token, again.state.trial.id, "left")
    assert not after.replayed and after.state.index == 3


def test_racing_votes_on_a_later_trial_store_one(db_url, study_file):
    """As test_racing_votes_on_one_trial_store_one, on a trial whose row one vote takes from
    memory while the others read it."""
    svc = StudyService.open(study_file, db_url, seed=1)
    st = start(svc, "later-racer")
    st = svc.vote(st.token, st.trial.id, "left").state
    results = vote_at_once(svc, st.token, st.trial.id)
    assert stored_votes(svc, st.trial.id) == 1 and sum(not r.replayed for r in results) == 1
    assert len({r.choice for r in results}) == 1
    assert all(r.state.index == 2 for r in results)
    assert next_index(svc, st.token) == 2


def test_a_foreign_token_gets_no_vote_from_memory(db_url, study_file):
    """A trial id with another session's token is refused, and the owner still votes on it."""
    svc = StudyService.open(study_file, db_url, seed=1)
    owner, intruder = start(svc, "owner"), start(svc, "intruder")
    owner = svc.vote(owner.token, owner.trial.id, "left").state
    with pytest.raises(Forbidden):
        svc.vote(intruder.token, owner.trial.id, "left")
    answer = svc.vote(owner.token, owner.trial.id, "right")
    assert not answer.replayed and stored_votes(svc, owner.trial.id) == 1


def test_a_consent_stores_its_plan_in_one_short_insert(db_url, study_file, monkeypatch):
    """The trials exactly as planned (pictures, sides, repeats; only the first one shown). On
    PostgreSQL in one statement with a parameter per column, whatever the number of trials:
    psycopg converts a statement once only when it has at most 50 parameters, and a multi-row
    VALUES list of 40 trials has 400 (parsed again at every consent, ~3 ms of CPU). The planner
    runs on one BLAS thread (threaded OpenBLAS spins on its tiny matrices)."""
    svc = StudyService.open(study_file, db_url, seed=1)
    plans, blas_threads = [], []

    def plan_session(**kwargs):
        blas_threads.extend(p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")
        plans.append(real_plan(**kwargs))
        return plans[-1]
    real_plan = scheduler.plan_session
    monkeypatch.setattr(scheduler, "plan_session", plan_session)
    inserts = []
    event.listen(svc.engine, "before_cursor_execute", lambda _c, _cur, sql, params, *_: inserts.append(params)
                 if sql.startswith("INSERT INTO trials") else None)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):    # the tests' conftest set 1
        st = start(svc, "planned")
    assert blas_threads and set(blas_threads) == {1}
    with svc.Session() as db:
        trials = db.scalars(select(Trial).join(Session).where(Session.token == st.token).order_by(Trial.index)).all()
    plan, = plans
    assert len(trials) == len(plan) == st.total and sum(t.kind == "repeat" for t in plan) == 2
    for i, (stored, planned) in enumerate(zip(trials, plan)):
        assert (stored.index, stored.kind, stored.swapped, stored.correct_side) == (
            i, planned.kind, planned.swapped, planned.correct_side)
        assert (stored.image_id, stored.left_id, stored.right_id) == (
            svc._image_ids[planned.image], svc._stimulus_ids[(planned.image, planned.left)],
            svc._stimulus_ids[(planned.image, planned.right)])
        assert stored.repeat_of == (None if planned.repeat_of is None else trials[planned.repeat_of].id)
        assert (stored.first_shown_at is not None) == (i == 0)
    assert st.trial.id == trials[0].id
    if svc.engine.dialect.name == "postgresql":
        assert len(inserts) == 1 and len(inserts[0]) == 10, [len(p) for p in inserts]


def test_the_planners_history_counts_every_planned_pair_and_vote(db_url, study_file):
    """What the next plan starts from (StudyService._history, one query over ids): planned
    regular comparisons per image and pair, voted or not, and the wins per ordered pair."""
    svc = StudyService.open(study_file, db_url, seed=1)
    for i in range(3):
        st = start(svc, f"history{i}")
        for n in range(5 + 7 * i):
            st = svc.vote(st.token, st.trial.id, ("left", "right")[(n + i) % 2]).state
    counts, wins = {}, {}
    with svc.Session() as db:
        for t in db.scalars(select(Trial).where(Trial.kind == "regular")):
            image, left, right = db.get(Image, t.image_id).key, db.get(Stimulus, t.left_id).key, db.get(Stimulus, t.right_id).key
            k = scheduler.pair_key(image, left, right)
            counts[k] = counts.get(k, 0) + 1
            choice = db.scalar(select(Vote.choice).where(Vote.trial_id == t.id))
            if choice is not None:
                won = (left, right) if choice == "left" else (right, left)
                wins[won] = wins.get(won, 0) + 1
        assert sum(wins.values()) > 10 and sum(counts.values()) > sum(wins.values())
        assert svc._history(db) == (counts, wins)
