"""How a session ends and what the rater is told (service level, SQLite and PostgreSQL): every
exit has its platform code, redirect and plain reason, also when the page is reloaded; "can't
tell" is stored as a tie where the study offers it, and never on a check trial."""
import pytest
from sqlalchemy import select

from study.models import Session, Trial, Vote
from study.service import Forbidden, Invalid, Participant, StudyService, new_rater_key

from .conftest import make_study

CODES = "completion_code: DONE7, screenout_code: OUT7, no_consent_code: NOPE7"
PROLIFIC = "https://app.prolific.com/submissions/complete?cc={}"


def link(pid):
    return Participant.from_params({"PROLIFIC_PID": pid, "STUDY_ID": "st", "SESSION_ID": f"se-{pid}"})


def kinds(svc, token):
    with svc.Session() as db:
        return {t.id: t for t in db.scalars(select(Trial).join(Session).where(Session.token == token))}


@pytest.fixture
def tie_study(study_dir):
    path = make_study(study_dir, study_id="ties", trials=8, catch=2, repeats=1, max_fail=2,
                      platform=f"{{kind: prolific, allow_anonymous: true, {CODES}}}")
    path.write_text(path.read_text() + "allow_tie: true\n")
    return path


def test_a_tie_is_stored_never_on_a_check_trial(db_url, tie_study):
    svc = StudyService.open(tie_study, db_url, seed=3)
    st = svc.start_session(link("tie-rater"))
    st = svc.consent(st.token, True, st.consent_version)
    trials, ties = kinds(svc, st.token), []
    while st.trial:
        t = trials[st.trial.id]
        assert st.trial.allow_tie == (t.kind != "catch")
        if t.kind == "catch":
            with pytest.raises(Invalid, match="can't tell"):
                svc.vote(st.token, t.id, "tie")
            st = svc.vote(st.token, t.id, t.correct_side).state
        else:
            ties.append(t.id)
            st = svc.vote(st.token, t.id, "tie").state
    assert st.status == "completed" and st.code == "DONE7"
    with svc.Session() as db:
        stored = dict(db.execute(select(Vote.trial_id, Vote.choice)).all())
    assert {stored[t] for t in ties} == {"tie"} and len(ties) == 6
    frame = svc.votes_frame().set_index("trial_id")
    assert set(frame.loc[ties, "winner"]) == {"tie"}
    assert set(frame.loc[~frame.index.isin(ties), "winner"]) <= {"a", "b"}
    assert not frame.loc[ties, "is_catch"].any()


def test_no_tie_where_the_study_offers_none(db_url, study_dir):
    study = make_study(study_dir, study_id="noties", trials=4, catch=0, repeats=0)
    svc = StudyService.open(study, db_url, seed=3)
    st = svc.start_session(Participant.anonymous(new_rater_key()))
    st = svc.consent(st.token, True, st.consent_version)
    assert st.trial.allow_tie is False
    with pytest.raises(Invalid, match="can't tell"):
        svc.vote(st.token, st.trial.id, "tie")


def test_every_exit_has_its_code_redirect_and_reason(db_url, tie_study):
    svc = StudyService.open(tie_study, db_url, seed=4)
    # completed
    st = svc.start_session(link("done"))
    st = svc.consent(st.token, True, st.consent_version)
    trials = kinds(svc, st.token)
    while st.trial:
        st = svc.vote(st.token, st.trial.id, trials[st.trial.id].correct_side or "left").state
    assert (st.status, st.code, st.redirect_url) == ("completed", "DONE7", PROLIFIC.format("DONE7"))
    assert "all 8 comparisons" in st.reason
    # screened out: both check trials answered the wrong way (max_catch_failures: 2)
    out = svc.start_session(link("careless"))
    out = svc.consent(out.token, True, out.consent_version)
    trials = kinds(svc, out.token)
    while out.trial:
        t = trials[out.trial.id]
        out = svc.vote(out.token, t.id, {"left": "right", "right": "left"}.get(t.correct_side, "left")).state
    assert (out.status, out.code, out.redirect_url) == ("screened_out", "OUT7", PROLIFIC.format("OUT7"))
    assert "check trials" in out.reason and "damaged" in out.reason
    # no consent
    no = svc.start_session(link("no"))
    no = svc.consent(no.token, False, no.consent_version)
    assert (no.status, no.code, no.redirect_url) == ("declined", "NOPE7", PROLIFIC.format("NOPE7"))
    assert "No answers were recorded" in no.reason
    # a reload (the same link, or the kept token) shows each end again, never a new consent page
    for pid, end in (("done", st), ("careless", out), ("no", no)):
        again = svc.start_session(link(pid))
        assert (again.token, again.status, again.code, again.reason) == (end.token, end.status, end.code, end.reason)
        assert svc.state(end.token) == again


def test_a_visitor_of_a_platform_study_gets_no_code(db_url, tie_study):
    svc = StudyService.open(tie_study, db_url, seed=5)
    st = svc.start_session(Participant.anonymous(new_rater_key()))
    st = svc.consent(st.token, False, st.consent_version)
    assert st.status == "declined" and st.code is None and st.redirect_url is None and st.reason


def test_a_prolific_link_to_an_open_study_is_told_why(db_url, study_dir):
    study = make_study(study_dir, study_id="open", trials=4, catch=0, repeats=0)
    svc = StudyService.open(study, db_url)
    with pytest.raises(Forbidden, match="not set up for Prolific") as refused:
        svc.start_session(link("lost"))
    assert "return the study on Prolific" in refused.value.message
    assert any("Prolific" in w for w in svc.cfg.warnings())
