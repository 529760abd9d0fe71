"""Fixtures for the export tests: a small real study (tests/study's, with Prolific raters and an
exclusion rule) filled through the study service on SQLite and PostgreSQL, and the real app
server of tests/ui for the Admin tab."""
from __future__ import annotations

from pathlib import Path

import pytest

from study.models import Trial
from study.service import Participant, StudyService
from tests.study.conftest import make_study, postgres_url  # noqa: F401  (fixture)
from tests.ui.conftest import client, server, study_votes  # noqa: F401  (fixtures)

PLATFORM = "{kind: prolific, completion_code: C0MPL3TE}"
EXCLUSION = "exclusion: {max_catch_failure_rate: 0.5}\n"
# Raw Prolific ids (24 hex digits) and what each rater's browser sends as its user agent: text a
# spreadsheet would run as a formula if the export did not neutralise it.
RATERS = [("5f0c1e2d3b4a59687786a5b1", "=HYPERLINK(\"http://evil.example\",\"x\")"),
          ("5f0c1e2d3b4a59687786a5b2", "+SUM(1,2)"),
          ("5f0c1e2d3b4a59687786a5b3", "-2+3"),
          ("5f0c1e2d3b4a59687786a5b4", "@A1"),
          ("5f0c1e2d3b4a59687786a5b5", "\tMozilla/5.0")]
CHEAT = RATERS[-1][0]  # fails every catch trial: excluded by the rule above
STUDY_IDS = ("-prolificstudy", "@prolificsession")  # STUDY_ID / SESSION_ID, never exported


@pytest.fixture(scope="session")
def export_study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export_study")
    path = make_study(folder, trials=12, catch=2, repeats=1, platform=PLATFORM, study_id="exp1")
    path.write_text(path.read_text() + EXCLUSION)
    return path


def fill(study_file: Path, url: str) -> StudyService:
    """Every rater of RATERS finishes one session through the service; CHEAT answers every catch
    trial wrongly, the others answer catch trials right and the rest by a fixed rule."""
    svc = StudyService.open(study_file, url, seed=3)
    for n, (pid, agent) in enumerate(RATERS):
        st = svc.start_session(Participant("prolific", pid, *STUDY_IDS), user_agent=agent)
        st = svc.consent(st.token, True, st.consent_version)
        while st.trial is not None:
            with svc.Session() as db:
                trial = db.get(Trial, st.trial.id)
            if trial.kind == "catch":
                right = trial.correct_side
                choice = right if pid != CHEAT else ("left" if right == "right" else "right")
            else:
                choice = "left" if (trial.id + n) % 3 else "right"
            st = svc.vote(st.token, st.trial.id, choice, client_ms=700.0 + 10 * n).state
        assert st.status == "completed"
    return svc


@pytest.fixture(params=["sqlite", "postgres"])
def filled_db(request, export_study, tmp_path) -> str:
    """URL of a database holding the export study with every rater's votes."""
    url = f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    svc = fill(export_study, url)
    svc.engine.dispose()
    return url
