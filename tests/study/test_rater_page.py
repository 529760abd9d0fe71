"""The raters' page as the app serves it (ui.app.build_app through an ASGI client): crowd-platform
links to "/" land on /study with their query string, the page's files are served with a strict
policy and name nothing that would unblind a rater, and the Space links to the page instead of
having a Study tab."""
from pathlib import Path

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from study.config import METHODS
from ui.app import build_app
from ui.rater_page import RATER_DIR
from ui.settings import Settings

DEMO = Path(__file__).resolve().parents[2] / "assets" / "studies" / "demo.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    app, blocks = build_app(Settings(backbone="tiny", mode="analytic", study_file=str(DEMO),
                                     results_dir=str(tmp_path_factory.mktemp("rater-app"))))
    return TestClient(app), blocks


@pytest.mark.parametrize("query", [
    "PROLIFIC_PID=5f1a&STUDY_ID=st&SESSION_ID=se",
    "workerId=W1&assignmentId=A1&hitId=H1&turkSubmitTo=https%3A%2F%2Fworkersandbox.mturk.com",
    "assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=H1",
])
def test_platform_links_to_the_space_go_to_the_rater_page(built, query):
    client, _ = built
    r = client.get(f"/?{query}", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"/study?{query}"


def test_the_old_study_tab_link_and_the_other_tabs(built):
    client, _ = built
    r = client.get("/?tab=study&PROLIFIC_PID=5f1a&STUDY_ID=st&SESSION_ID=se", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/study?PROLIFIC_PID=5f1a&STUDY_ID=st&SESSION_ID=se"
    assert client.get("/?tab=study", follow_redirects=False).headers["location"] == "/study"
    for plain in ("/", "/?tab=decode"):
        assert client.get(plain, follow_redirects=False).status_code == 200


def test_the_page_and_its_files(built):
    client, _ = built
    page = client.get("/study?PROLIFIC_PID=5f1a&STUDY_ID=st&SESSION_ID=se")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "form-action https://*.mturk.com" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    for name, kind in (("rater.js", "javascript"), ("rater.css", "text/css")):
        r = client.get(f"/study/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    # the page knows nothing that would unblind a rater, and leads nowhere but the study API
    for path in RATER_DIR.iterdir():
        text = path.read_text().lower()
        assert not [m for m in METHODS if m in text], path
        for elsewhere in ("results", "admin", "gradio", 'href="/"', "leaderboard"):
            assert elsewhere not in text, (path, elsewhere)


def test_the_space_links_to_the_page_and_has_no_study_tab(built):
    client, blocks = built
    tabs = [b.label for b in blocks.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Compress", "Decode", "Results", "Admin"]
    links = [b.value for b in blocks.blocks.values() if isinstance(b, gr.Markdown) and "](/study)" in (b.value or "")]
    assert len(links) == 1
    info = client.get("/api/study/").json()
    assert info["accepts"] == ["prolific", "anonymous"] and "mturk" in info["refusals"]
    assert info["allow_tie"] is True and info["consent"]["duration_minutes"] == "4"
