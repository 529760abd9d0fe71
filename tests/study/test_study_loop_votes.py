"""PostgreSQL's vote fast path (StudyService.vote_on_loop, study.loop_db): the common vote,
awaited on the event loop, writes and answers exactly what the thread path would; every other
vote, and every failure on the loop, is left to the thread path (vote_on_loop answers None);
no vote is lost or counted twice."""

import asyncio

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.engine import make_url

from study import loop_db
from study.http import build_api
from study.limits import Limits
from study.models import Event, Session, Trial, Vote
from study.service import Invalid, Participant, StudyService

pytestmark = pytest.mark.postgres
CLIENT = {"viewport": [390, 844], "dpr": 3}


def start(svc, pid):
    st = svc.start_session(Participant("anonymous", pid))
    return svc.consent(st.token, True, st.consent_version)


def statements(svc) -> list:
    sent = []
    event.listen(svc.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def votes_of(svc, token):
    with svc.Session() as db:
        return db.execute(select(Vote.choice, Vote.client_ms, Vote.client, Vote.server_ms).join(Session)
                          .where(Session.token == token).order_by(Vote.id)).all()


def test_loop_votes_write_and_answer_what_thread_votes_do(postgres_url, study_file):
    svc = StudyService.open(study_file, postgres_url, seed=1)
    on_loop, in_thread = start(svc, "loop"), start(svc, "thread")
    sent = statements(svc)

    async def session_on_loop(st):
        thread_votes = 0
        while st.trial is not None:
            sent.clear()
            answer = await svc.vote_on_loop(st.token, st.trial.id, "left", 812.5, CLIENT)
            if answer is None:    # only the last vote, which ends the session
                thread_votes += 1
                answer = svc.vote(st.token, st.trial.id, "left", 812.5, CLIENT)
            else:
                assert sent == []    # nothing went through the thread path's engine
            assert answer.state == svc.state(st.token)    # the answer is the database's view
            st = answer.state
        return st, thread_votes

    ended, thread_votes = asyncio.run(session_on_loop(on_loop))
    assert thread_votes == 1 and ended.status == "completed" and ended.code is None
    st = in_thread
    while st.trial is not None:
        st = svc.vote(st.token, st.trial.id, "left", 812.5, CLIENT).state
    assert st == svc.state(in_thread.token) and (st.status, st.index) == (ended.status, ended.index)

    loop_rows, thread_rows = votes_of(svc, on_loop.token), votes_of(svc, in_thread.token)
    assert len(loop_rows) == len(thread_rows) == ended.total
    for row in loop_rows + thread_rows:
        assert (row.choice, row.client_ms, row.client) == ("left", 812.5, CLIENT) and row.server_ms >= 0
    with svc.Session() as db:
        for token in (on_loop.token, in_thread.token):
            sid = db.scalar(select(Session.id).where(Session.token == token))
            assert db.scalar(select(Trial.id).where(Trial.session_id == sid, Trial.first_shown_at.is_(None))) is None
            assert db.scalars(select(Event.kind).where(Event.session_id == sid, Event.kind == "completed")).all() == [
                "completed"]


def test_refusals_replays_and_bad_input_are_left_to_the_thread_path(postgres_url, study_file):
    svc = StudyService.open(study_file, postgres_url, seed=1)
    owner, intruder = start(svc, "owner"), start(svc, "intruder")

    async def run():
        assert await svc.vote_on_loop(intruder.token, owner.trial.id, "left") is None    # not theirs
        first = await svc.vote_on_loop(owner.token, owner.trial.id, "right")    # the row was put back
        assert first is not None and not first.replayed
        assert await svc.vote_on_loop(owner.token, owner.trial.id, "left") is None    # voted already
        with pytest.raises(Invalid):
            await svc.vote_on_loop(owner.token, first.state.trial.id, "sideways")
        return first

    first = asyncio.run(run())
    again = svc.vote(owner.token, owner.trial.id, "left")
    assert again.replayed and again.choice == "right" and again.state == first.state
    assert [r.choice for r in votes_of(svc, owner.token)] == ["right"]


def test_a_stale_row_loses_on_the_loop_and_the_thread_path_answers(postgres_url, study_file):
    """Two server processes: the second records trial 1 while the first still holds its row."""
    first = StudyService.open(study_file, postgres_url, seed=1)
    other = StudyService.open(study_file, postgres_url, seed=2)
    st = first.vote(*(lambda s: (s.token, s.trial.id))(start(first, "two-servers")), "left").state
    assert not other.vote(st.token, st.trial.id, "right").replayed
    assert asyncio.run(first.vote_on_loop(st.token, st.trial.id, "left")) is None    # the write's guard
    again = first.vote(st.token, st.trial.id, "left")
    assert again.replayed and again.choice == "right" and again.state.index == 2
    assert [r.choice for r in votes_of(first, st.token)] == ["left", "right"]


def test_busy_or_broken_loop_connections_fall_back_and_recover(postgres_url, study_file):
    svc = StudyService.open(study_file, postgres_url, seed=1)
    st = start(svc, "unlucky")
    sent = statements(svc)
    admin = make_url(postgres_url)
    conninfo = dict(host=admin.host, port=admin.port, user=admin.username, password=admin.password,
                    dbname=admin.database, autocommit=True)

    async def run(st):
        warm = await svc.vote_on_loop(st.token, st.trial.id, "left")    # opens a loop connection
        assert warm is not None
        st = warm.state
        with psycopg.connect(**conninfo) as conn:    # the database drops it (a restart, an admin)
            killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name = %s", [loop_db.APPLICATION_NAME]).fetchone()[0]
        assert killed == 1
        await asyncio.sleep(0.2)
        assert await svc.vote_on_loop(st.token, st.trial.id, "left") is None
        sent.clear()
        st = svc.vote(st.token, st.trial.id, "left").state    # the row was kept: one statement
        assert len(sent) == 1
        recovered = await svc.vote_on_loop(st.token, st.trial.id, "left")    # a new loop connection
        assert recovered is not None
        svc._loop_connections = loop_db.LoopConnections(svc.engine, size=0)    # every one busy
        assert await svc.vote_on_loop(st.token, recovered.state.trial.id, "left") is None
        return recovered.state

    st = asyncio.run(run(st))
    sent.clear()
    assert svc.vote(st.token, st.trial.id, "left").state.index == 4 and len(sent) == 1
    assert len(votes_of(svc, st.token)) == 4


def test_the_http_api_votes_on_the_loop(postgres_url, study_file):
    svc = StudyService.open(study_file, postgres_url, seed=1)
    with TestClient(build_api(svc, Limits(rate_limits=False)), base_url="http://localhost") as client:
        st = client.post("/sessions", json={"params": {}}).json()
        st = client.post(f"/sessions/{st['token']}/consent",
                         json={"agree": True, "version": st["consent_version"]}).json()
        sent = statements(svc)
        for _ in range(3):
            answer = client.post(f"/sessions/{st['token']}/votes",
                                 json={"trial_id": st["trial"]["id"], "choice": "left", "client": CLIENT})
            assert answer.status_code == 200 and not answer.json()["replayed"]
            st = answer.json()["state"]
        assert sent == [] and st["index"] == 3
