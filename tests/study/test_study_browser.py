"""A whole session in headless Chromium, driven by the keyboard: consent, instructions, every
trial (with a reload in the middle), the completion page. Screenshots go to artifacts/screenshots.

The app is the Study tab alone plus the study router, mounted like the Space mounts them."""
import contextlib
import os
import re
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select

from benchmarks.study_load import free_port
from study.http import API_PREFIX, build_router
from study.models import Session, Vote
from study.service import StudyService
from ui.study_tab import build_study_tab

from .conftest import need, make_study

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
DEMO = Path(__file__).resolve().parents[2] / "assets" / "studies" / "demo.yaml"
pytestmark = pytest.mark.browser


@pytest.fixture
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        need("chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield browser
        browser.close()


@contextlib.contextmanager
def serve_tab(svc, port=None):
    """The Study tab alone plus the study router, mounted the way the Space mounts them."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    port = port or free_port()
    with gr.Blocks(title="study") as blocks:
        with gr.Tab("Study"):
            build_study_tab(SimpleNamespace(study=svc, settings=None))
    app = FastAPI()
    app.include_router(build_router(svc), prefix=API_PREFIX)

    @app.get("/returned")
    def returned(cc: str) -> dict:
        return {"returned": cc}

    app = gr.mount_gradio_app(app, blocks, path="/", run_history=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))   # gradio keeps a stream open
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def app_url(tmp_path, study_dir):
    port = free_port()
    study = make_study(study_dir, study_id="browser", trials=8, catch=2, repeats=1, per_rater=1,
                       platform="{kind: prolific, completion_code: C0DE42, "
                                f"redirect_url: 'http://127.0.0.1:{port}/returned?cc={{code}}'}}")
    svc = StudyService.open(study, f"sqlite:///{tmp_path / 'browser.db'}", seed=7)
    with serve_tab(svc, port) as url:
        yield url, svc


def current_trial(page, previous=None, timeout=20_000):
    """Wait until a trial other than `previous` is on screen with its images loaded."""
    page.wait_for_function(
        "(prev) => { const v = document.querySelector('#study-view .sv.sv-ready');"
        " return v && v.offsetParent !== null && v.dataset.trial !== prev; }", arg=previous, timeout=timeout)
    return page.locator("#study-view .sv").get_attribute("data-trial")


def test_a_whole_session_with_the_keyboard(chromium, app_url):
    from playwright.sync_api import expect

    url, svc = app_url
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = chromium.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url + "/?PROLIFIC_PID=pw-rater-1&STUDY_ID=st1&SESSION_ID=se1", wait_until="domcontentloaded")
    expect(page.locator("#study-consent")).to_be_visible(timeout=30_000)
    page.screenshot(path=SHOTS / "study-1-consent.png", full_page=True)
    page.locator("#study-agree").click()
    expect(page.locator("#study-instructions")).to_be_visible()
    expect(page.locator("#study-example img")).to_have_count(3)
    page.screenshot(path=SHOTS / "study-2-instructions.png", full_page=True)
    page.locator("#study-begin").click()

    keys = ["1", "ArrowRight", "2", "ArrowLeft"]
    seen, trial = [], None
    for i in range(8):
        trial = current_trial(page, trial)
        expect(page.locator("#study-progress")).to_contain_text(f"Trial {i + 1} of 8")
        # reference, A and B at native size (64x64 here), side by side
        boxes = [page.locator(f"#study-view .sv-pane >> nth={k}").bounding_box() for k in range(3)]
        assert all(round(b["width"]) == 64 and round(b["height"]) == 64 for b in boxes)
        assert boxes[1]["y"] == boxes[2]["y"] and boxes[1]["x"] < boxes[2]["x"]
        if i == 0:
            pane = page.locator("#study-view .sv-pane >> nth=1")
            pane.hover()
            page.mouse.wheel(0, -300)                       # zoom one image: all three follow
            page.wait_for_timeout(200)
            transforms = page.eval_on_selector_all("#study-view .sv-pane img", "els => els.map(e => e.style.transform)")
            assert len(set(transforms)) == 1 and "scale(1.25" in transforms[0]
            page.screenshot(path=SHOTS / "study-3-trial-zoomed.png", full_page=True)
            page.keyboard.press("0")
            page.locator("#study-view .sv-zoom[data-zoom=in]").click()     # the touch-friendly way
            assert "scale(1.5)" in page.eval_on_selector("#study-view .sv-pane img", "e => e.style.transform")
            page.locator("#study-view .sv-zoom[data-zoom=reset]").click()
        if i == 3:
            page.reload(wait_until="domcontentloaded")      # a reload resumes at the same trial
            assert current_trial(page) == trial
            expect(page.locator("#study-progress")).to_contain_text("Trial 4 of 8")
        seen.append(int(trial))
        page.keyboard.press(keys[i % 4])

    expect(page.locator("#study-done-page")).to_be_visible()
    expect(page.locator("#study-code")).to_have_text("C0DE42")
    assert page.locator("#study-return").get_attribute("href").endswith("/returned?cc=C0DE42")
    page.screenshot(path=SHOTS / "study-4-done.png", full_page=True)
    page.wait_for_url(re.compile(r"/returned\?cc=C0DE42"), timeout=15_000)   # the platform redirect

    with svc.Session() as db:
        votes = db.scalars(select(Vote).order_by(Vote.id)).all()
    assert [v.trial_id for v in votes] == seen
    assert [v.choice for v in votes] == ["left", "right", "right", "left"] * 2
    assert all(v.client_ms is not None and v.client_ms >= 0 and v.server_ms > 0 for v in votes)
    assert votes[0].client["viewport"] == [1280, 800] and votes[0].client["zooms"] >= 1

    # Back on the study page, the finished session shows its code and takes no more votes.
    page.goto(url + "/?PROLIFIC_PID=pw-rater-1&STUDY_ID=st1&SESSION_ID=se1", wait_until="domcontentloaded")
    expect(page.locator("#study-code")).to_have_text("C0DE42", timeout=30_000)
    expect(page.locator("#study-trials")).to_be_hidden()


def test_phone_layout(chromium, app_url):
    from playwright.sync_api import expect

    url, _ = app_url
    page = chromium.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(url + "/?PROLIFIC_PID=phone-rater", wait_until="domcontentloaded")
    page.locator("#study-agree").click(timeout=30_000)
    page.locator("#study-begin").click()
    current_trial(page)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the page scrolls sideways on a phone"
    expect(page.locator("#study-vote-a")).to_be_visible()
    page.screenshot(path=SHOTS / "study-5-phone.png", full_page=True)


def test_demo_study_on_a_desktop_and_a_phone(chromium, tmp_path):
    """The shipped demo study (anonymous raters): real stimuli at native size, resume by reload."""
    from playwright.sync_api import expect

    svc = StudyService.open(DEMO, f"sqlite:///{tmp_path / 'demo.db'}", seed=9)
    with serve_tab(svc) as url:
        for name, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
            page = chromium.new_context(viewport=viewport).new_page()
            page.goto(url + "/", wait_until="domcontentloaded")
            expect(page.locator("#study-consent")).to_be_visible(timeout=30_000)
            if name == "desktop":   # opening the page creates nothing; agreeing starts the session
                with svc.Session() as db:
                    assert db.scalar(select(func.count()).select_from(Session)) == 0
            page.locator("#study-agree").click()
            expect(page.locator("#study-example img")).to_have_count(3)
            page.screenshot(path=SHOTS / f"study-demo-{name}-instructions.png", full_page=True)
            page.locator("#study-begin").click()
            first = current_trial(page)
            page.keyboard.press("1")
            second = current_trial(page, first)
            natural = page.eval_on_selector_all("#study-view img", "els => els.map(e => [e.naturalWidth, e.width])")
            assert all(n == w for n, w in natural)      # shown at native resolution
            page.screenshot(path=SHOTS / f"study-demo-{name}.png", full_page=True)
            page.reload(wait_until="domcontentloaded")   # the browser keeps the session: same trial
            assert current_trial(page) == second
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            if name == "desktop":       # finish, then start a second session (the demo allows 3)
                trial, left = second, svc.cfg.trials_per_session - 1    # one vote is in
                for k in range(left):
                    page.keyboard.press("2")
                    if k < left - 1:
                        trial = current_trial(page, trial)
                expect(page.locator("#study-done-page")).to_contain_text("Thank you")
                page.locator("#study-again").click()
                expect(page.locator("#study-consent")).to_be_visible()
            page.context.close()


def test_a_restarted_server_resumes_an_open_study_visitor(chromium, tmp_path):
    url_db = f"sqlite:///{tmp_path / 'restart.db'}"
    port = free_port()
    page = chromium.new_page(viewport={"width": 1280, "height": 800})
    with serve_tab(StudyService.open(DEMO, url_db, seed=10), port) as url:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.locator("#study-agree").click(timeout=30_000)
        page.locator("#study-begin").click()
        first = current_trial(page)
        page.keyboard.press("1")
        second = current_trial(page, first)
    with serve_tab(StudyService.open(DEMO, url_db), port) as url:     # a new process, same database
        page.reload(wait_until="domcontentloaded")
        assert current_trial(page) == second
