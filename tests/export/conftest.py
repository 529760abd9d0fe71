"""Fixtures for the export tests: a small real study (tests/study's, with Prolific raters and an
exclusion rule) filled through the study service on SQLite and PostgreSQL; the real app server
of tests/ui for the Admin tab is tests/conftest.py's `server`."""
from __future__ import annotations

from pathlib import Path

import pytest

from study.models import Trial
from study.service import Participant, StudyService
from tests.study.conftest import make_study, postgres_url  # noqa: F401  (fixture)
from tests.ui.conftest import running_app

PLATFORM = "{kind: prolific, completion_code: C0MPL3TE, screenout_code: SCR33N, no_consent_code: N0C0NS3NT}"
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def filled_db(request, export_study, tmp_path) -> str:
    """URL of a database holding the export study with every rater's votes."""
    url = f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    svc = fill(export_study, url)
    svc.engine.dispose()
    return url


@pytest.fixture(scope="session")
def results_app(tmp_path_factory, export_study):
    """The real app (`python app.py`) serving the export study, its SQLite database filled by
    `fill` first: (base URL, database URL). Results are private (the study file says nothing)."""
    yield from _serve(export_study, tmp_path_factory.mktemp("results_app"))


@pytest.fixture(scope="session")
def public_results_app(tmp_path_factory, export_study):
    """As results_app, for the same study with `results_public: true`."""
    public = export_study.with_name("exp1-public.yaml")
    public.write_text(export_study.read_text() + "results_public: true\n")
    yield from _serve(public, tmp_path_factory.mktemp("public_results_app"))


def _serve(study_file: Path, tmp: Path):
    url = f"sqlite:///{tmp / 'study.db'}"
    fill(study_file, url).engine.dispose()
    with running_app(tmp, APP_STUDY_FILE=str(study_file), DATABASE_URL=url) as (_, base):
        yield base, url


def _config(server: str) -> tuple[dict, dict]:
    import httpx

    config = httpx.get(server + "/config", timeout=30).raise_for_status().json()
    return config, {c["props"].get("elem_id"): c["id"] for c in config["components"]}


def events_by_trigger(server: str, *elem_ids: str) -> dict:
    """fn_index, trigger id and config of the first event fired by each component with these elem_ids."""
    config, ids = _config(server)
    events = {}
    for dep in config["dependencies"]:
        for target, _ in dep["targets"]:
            for name in elem_ids:
                if target == ids.get(name) and name not in events:
                    events[name] = (dep["id"], target, dep)
    assert set(events) == set(elem_ids), set(elem_ids) - set(events)
    return events


def event_writing(server: str, elem_id: str):
    """fn_index, trigger id and config of the event whose outputs include the component ``elem_id``."""
    config, ids = _config(server)
    for dep in config["dependencies"]:
        if ids.get(elem_id) in dep["outputs"]:
            return dep["id"], (dep["targets"][0][0] if dep["targets"] else None), dep
    raise AssertionError(f"no event writes {elem_id}")


def call(server: str, event, *data, client: str | None = None) -> dict:
    """One event through the queue endpoints the browser uses (no client library), as the client
    at address ``client`` (X-Forwarded-For, as the Spaces proxy sets it; a new one by default, so
    one test's wrong tokens do not slow the next test's right one)."""
    import json
    import secrets

    import httpx

    fn_index, trigger, _ = event
    session = secrets.token_hex(8)
    client = client or f"198.51.100.{secrets.randbelow(250) + 1}, 10.{secrets.randbelow(250)}.0.1"
    with httpx.Client(base_url=server, timeout=180, headers={"X-Forwarded-For": client}) as http:
        http.post("/gradio_api/queue/join", json={"data": list(data), "fn_index": fn_index, "trigger_id": trigger,
                                                  "session_hash": session, "event_data": None}).raise_for_status()
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the event never completed")
