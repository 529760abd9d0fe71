"""The rater page (/study) in headless Chromium against the real app (ui.app.build_app, served by
uvicorn on 127.0.0.1): a Prolific rater of the demo study from the link to the redirect at
1280x800 and at 390x844, every exit's redirect, a reload after the end, votes that survive a
lost connection, and a blinded page. Nothing leaves the machine: every request to another host
is aborted, and Prolific's completion URL is answered by the test. Screenshots go to
artifacts/screenshots/rater-*.png."""
import contextlib
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import uvicorn
from sqlalchemy import select

from benchmarks.study_load import free_port
from study.models import Event, Rater, Session, Stimulus, Trial, Vote
from ui.app import build_app
from ui.settings import Settings

from .conftest import make_study, need

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
DEMO = ROOT / "assets" / "studies" / "demo.yaml"
PROLIFIC = "https://app.prolific.com/submissions/complete"
DESKTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
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
def serve(study_file: Path, results: Path):
    """The whole Space (build_app) on a free port, with `study_file`; yields (url, StudyService)."""
    settings = Settings(backbone="tiny", mode="analytic", study_file=str(study_file), results_dir=str(results))
    app, _ = build_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app.state.ctx.study
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with serve(DEMO, tmp_path_factory.mktemp("demo-app")) as served:
        yield served


class Rater_:
    """A browser context as one rater: other hosts unreachable, Prolific's completion page
    answered locally, every JSON answer of the study API kept (to check the blinding)."""

    def __init__(self, chromium, viewport, phone=False):
        # bypass_csp: Playwright evaluates its waiting functions, which the page's CSP forbids
        self.context = chromium.new_context(viewport=viewport, has_touch=phone, is_mobile=phone,
                                            device_scale_factor=3 if phone else 1, bypass_csp=True)
        self.returned: list[str] = []
        self.json: list[str] = []
        self.errors: list[str] = []
        self.context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/])"), lambda route: route.abort())

        def prolific(route):
            self.returned.append(route.request.url)
            route.fulfill(status=200, content_type="text/html", body="<title>Prolific</title><p>back on Prolific</p>")
        self.context.route(PROLIFIC + "*", prolific)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", self._keep)

    def _keep(self, response):
        if "/api/study" in response.url and "json" in (response.headers.get("content-type") or ""):
            self.json.append(response.text())

    def shot(self, name):
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SHOTS / f"rater-{name}.png")

    def close(self):
        self.context.close()


def screen(page, name, timeout=20_000):
    page.wait_for_selector(f"body[data-screen={name}]", timeout=timeout)


def wait_trial(page, previous=None):
    """Wait for a trial other than `previous` with its images loaded; returns its id."""
    page.wait_for_function(
        "(prev) => { const s = document.querySelector('#stage.ready'); return document.body.dataset.screen === 'trial'"
        " && s && s.dataset.trial !== prev && !document.querySelector('#vote-left').disabled; }", arg=previous,
        timeout=20_000)
    return page.get_attribute("#stage", "data-trial")


def within(box, viewport):
    return (box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5
            and box["y"] + box["height"] <= viewport["height"] + 0.5)


def measure(page, viewport):
    """The boxes of the images and the vote buttons: all inside the viewport, nothing scrolled."""
    panes = [page.locator("#stage .pane").nth(i).bounding_box() for i in range(page.locator("#stage .pane").count())]
    buttons = {b: page.locator(f"#{b}").bounding_box() for b in ("vote-left", "vote-right", "vote-tie")
               if page.locator(f"#{b}").is_visible()}
    assert panes and {"vote-left", "vote-right"} <= set(buttons)
    assert all(within(b, viewport) for b in panes + list(buttons.values())), (panes, buttons)
    width, scroll_x, scroll_y = page.evaluate("[document.documentElement.scrollWidth, scrollX, scrollY]")
    assert width <= viewport["width"] and scroll_x == 0 and scroll_y == 0, "the page scrolls"
    return panes, buttons


def forbidden_words(svc):
    """Whatever would unblind a rater: method names, condition keys, target and measured bpp."""
    cfg = svc.cfg
    words = {c.method for c in cfg.conditions} | {c.key for c in cfg.conditions} | {cfg.catch_method}
    numbers = {f"{c.bpp:g}" for c in cfg.conditions} | {f"{cfg.catch_bpp:g}"}
    with svc.Session() as db:
        numbers |= {repr(b)[:6] for b in db.scalars(select(Stimulus.bpp)) if b is not None}
    return words, numbers


def assert_blind(texts, svc):
    words, numbers = forbidden_words(svc)
    for text in texts:
        low = text.lower()
        assert not [w for w in words if w.lower() in low], [w for w in words if w.lower() in low]
        leaked = [n for n in numbers if re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", text)]
        assert not leaked, leaked


def db_trial(svc, pid):
    """The current trial of the rater whose PROLIFIC_PID is `pid`, as stored."""
    with svc.Session() as db:
        s = db.scalars(select(Session).join(Rater).where(Rater.external_id == pid).order_by(Session.id)).all()[-1]
        return db.scalar(select(Trial).where(Trial.session_id == s.id, Trial.index == s.next_index))


def link(url, pid, path="/study"):
    return f"{url}{path}?PROLIFIC_PID={pid}&STUDY_ID=demo-st&SESSION_ID=se-{pid}"


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_prolific_rater_from_the_link_to_the_redirect(chromium, demo, size):
    url, svc = demo
    viewport, phone = (PHONE, True) if size == "phone" else (DESKTOP, False)
    r = Rater_(chromium, viewport, phone)
    page, pid = r.page, f"pw-{size}"
    texts = []
    # Prolific's link points at "/": the Space sends it on to the rater page, query string intact.
    page.goto(link(url, pid, path="/"))
    assert urlsplit(page.url).path == "/study" and parse_qs(urlsplit(page.url).query)["PROLIFIC_PID"] == [pid]
    screen(page, "consent")
    for label in ("What this study is for", "How long it takes", "Payment", "What we store", "How long we keep it",
                  "Your right to withdraw", "Contact"):
        assert label in page.inner_text("#consent-details")
    assert "Consent version 2" in page.inner_text("#consent")
    r.shot(f"{size}-1-consent")
    texts += [page.inner_text("body"), page.content()]
    page.click("#agree")
    screen(page, "instructions")
    page.wait_for_function("[...document.querySelectorAll('#example img')].every(i => i.complete && i.naturalWidth)")
    r.shot(f"{size}-2-instructions")
    texts += [page.inner_text("body"), page.content()]
    page.click("#begin")

    shown, total, tie_voted = None, svc.cfg.trials_per_session, False
    for i in range(total):
        shown = wait_trial(page, shown)
        assert page.inner_text("#progress-text") == f"Trial {i + 1} of {total}"
        panes, buttons = measure(page, viewport)
        trial = db_trial(svc, pid)
        assert ("vote-tie" in buttons) == (trial.kind != "catch")          # never on a check trial
        # every demo image fits both screens at its native size
        sizes = page.eval_on_selector_all("#stage img", "els => els.map(e => [e.naturalWidth, e.width])")
        assert all(n == w for n, w in sizes) and "Shown at full size" in page.inner_text("#hint-text")
        hint = page.inner_text("#trial")
        if phone:       # one image at a time, switched in place; no talk of keys or a wheel
            assert len(panes) == 1 and page.locator("#toggle").is_visible()
            assert not re.search(r"press|key|wheel|mouse|ctrl", hint, re.I), hint
        else:
            assert len(panes) == 3 and panes[1]["y"] == panes[2]["y"] and panes[0]["x"] < panes[1]["x"] < panes[2]["x"]
            assert "Press 1 for A, 2 for B" in hint and ("3 for can't tell" in hint) == (trial.kind != "catch")
        if i == 0:
            print(f"\n{size} boxes: images {panes}; buttons {buttons}")
            r.shot(f"{size}-3-trial")
            if phone:
                check_touch(page)
            else:
                check_wheel(page)
        texts += [page.inner_text("body"), page.content()]
        if trial.kind == "catch":
            choice = trial.correct_side
        elif not tie_voted:
            choice, tie_voted = "tie", True
        else:
            choice = "left" if i % 2 else "right"
        if phone:
            if i == 1:
                page.click("#toggle [data-show=left]")
                page.click("#toggle [data-show=right]")
                assert page.eval_on_selector("#stage img[data-side=right]", "e => e.style.visibility") == "visible"
            page.tap(f"#vote-{choice}")
        else:
            page.keyboard.press({"left": "1", "right": "2", "tie": "3"}[choice])
    screen(page, "end")
    assert page.inner_text("#end-title") == "Thank you, you are done!"
    assert page.inner_text("#code") == "DEMODONE"
    code_size = page.eval_on_selector("#code", "e => parseFloat(getComputedStyle(e).fontSize)")
    assert code_size >= 32 and within(page.locator("#code").bounding_box(), viewport)
    assert page.get_attribute("#return-link", "href") == f"{PROLIFIC}?cc=DEMODONE"
    assert page.locator("#again").is_hidden()
    r.shot(f"{size}-4-end")
    texts += [page.inner_text("body"), page.content()]
    page.wait_for_url(f"{PROLIFIC}?cc=DEMODONE", timeout=15_000)       # redirected after a few seconds
    assert r.returned == [f"{PROLIFIC}?cc=DEMODONE"]

    with svc.Session() as db:
        s = db.scalars(select(Session).join(Rater).where(Rater.external_id == pid)).one()
        votes = db.scalars(select(Vote).where(Vote.session_id == s.id).order_by(Vote.id)).all()
    assert s.status == "completed" and s.consent_version == "2" and len(votes) == total
    assert [v.choice for v in votes].count("tie") == 1
    assert all(v.client_ms > 0 and v.client["viewport"] == [viewport["width"], viewport["height"]] for v in votes)
    assert votes[0].client["mode"] == ("flicker" if phone else "side-by-side")
    if phone:
        assert votes[1].client["flips"] >= 2 and votes[0].client["zooms"] >= 2
    frame = svc.votes_frame()
    tie = frame[frame["trial_id"] == next(v.trial_id for v in votes if v.choice == "tie")]
    assert list(tie["winner"]) == ["tie"]

    # Back on the link after the end: the end again (code, redirect), no consent, no new session.
    page.goto(link(url, pid))
    screen(page, "end")
    assert page.inner_text("#code") == "DEMODONE" and page.locator("#again").is_hidden()
    page.wait_for_url(f"{PROLIFIC}?cc=DEMODONE", timeout=15_000)
    with svc.Session() as db:
        assert len(db.scalars(select(Session).join(Rater).where(Rater.external_id == pid)).all()) == 1
    assert_blind(texts + r.json, svc)
    assert r.errors == []
    r.close()


def check_wheel(page):
    """Desktop: the wheel alone leaves the images (and the page) alone; Ctrl + wheel zooms all three."""
    transforms = "() => [...document.querySelectorAll('#stage img')].map(e => e.style.transform)"
    box = page.locator("#stage .pane").nth(1).bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(100)
    assert all("scale(1)" in t for t in page.evaluate(transforms))
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_timeout(100)
    zoomed = page.evaluate(transforms)
    assert len(set(zoomed)) == 1 and "scale(1)" not in zoomed[0]
    page.keyboard.press("0")
    assert all("scale(1)" in t for t in page.evaluate(transforms))


def check_touch(page):
    """Phone: a double tap zooms in (and again out); a two-finger pinch zooms."""
    img = "#stage img"
    box = page.locator("#stage .pane").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.touchscreen.tap(x, y)
    page.touchscreen.tap(x, y)
    assert "scale(2)" in page.eval_on_selector(img, "e => e.style.transform")
    page.wait_for_timeout(350)
    page.touchscreen.tap(x, y)
    page.touchscreen.tap(x, y)
    assert "scale(1)" in page.eval_on_selector(img, "e => e.style.transform")
    page.wait_for_timeout(350)      # not a third tap of the same gesture
    page.eval_on_selector("#stage .pane", """(pane, [x, y]) => {
        const ev = (type, id, dx) => pane.dispatchEvent(new PointerEvent(type, {pointerId: id, pointerType: 'touch',
            clientX: x + dx, clientY: y, bubbles: true}));
        ev('pointerdown', 11, -20); ev('pointerdown', 12, 20);
        ev('pointermove', 11, -30); ev('pointermove', 12, 30); ev('pointermove', 11, -60); ev('pointermove', 12, 60);
        ev('pointerup', 11, -60); ev('pointerup', 12, 60); }""", [x, y])
    scale = float(re.search(r"scale\(([\d.]+)\)", page.eval_on_selector(img, "e => e.style.transform")).group(1))
    assert scale > 1.5


@pytest.fixture(scope="module")
def exits(tmp_path_factory, study_dir):
    study = make_study(study_dir, study_id="exits", trials=5, catch=2, repeats=0, max_fail=1,
                       platform="{kind: prolific, completion_code: OK55, screenout_code: OUT55, no_consent_code: NO55}")
    with serve(study, tmp_path_factory.mktemp("exits-app")) as served:
        yield served


def test_screen_out_and_no_consent_redirect_with_their_codes(chromium, exits):
    url, svc = exits
    r = Rater_(chromium, PHONE, phone=True)
    page = r.page
    page.goto(link(url, "declines"))
    screen(page, "consent")
    page.click("#decline")
    screen(page, "end")
    assert page.inner_text("#end-title") == "No consent given" and page.inner_text("#code") == "NO55"
    assert "No answers were recorded" in page.inner_text("#end-reason")
    r.shot("phone-5-no-consent")
    page.wait_for_url(f"{PROLIFIC}?cc=NO55", timeout=15_000)
    page.goto(link(url, "declines"))        # a reload: still the end, no new consent page
    screen(page, "end")
    assert page.inner_text("#code") == "NO55"

    page.goto(link(url, "careless"))
    screen(page, "consent")
    page.click("#agree")
    screen(page, "instructions")
    page.click("#begin")
    shown = None
    while True:
        shown = wait_trial(page, shown)
        trial = db_trial(svc, "careless")
        if trial.kind == "catch":
            page.tap("#vote-right" if trial.correct_side == "left" else "#vote-left")
            break
        page.tap("#vote-left")
    screen(page, "end")
    assert page.inner_text("#end-title") == "The study has ended" and page.inner_text("#code") == "OUT55"
    assert "in 1 check trial, where one image is clearly damaged" in page.inner_text("#end-reason")
    r.shot("phone-6-screened-out")
    page.wait_for_url(f"{PROLIFIC}?cc=OUT55", timeout=15_000)
    assert r.returned == [f"{PROLIFIC}?cc=NO55", f"{PROLIFIC}?cc=OUT55"]
    r.close()


def test_no_vote_before_the_images_and_none_lost_with_the_connection(chromium, exits):
    """Keys pressed while the images load count for nothing; a vote whose answer is lost on the
    way back is sent again with the same trial id, stored once, and the page moves on."""
    url, svc = exits
    r = Rater_(chromium, DESKTOP)
    page = r.page
    held, holding = [], [True]
    page.route("**/api/study/stimuli/**", lambda route: held.append(route) if holding else route.continue_())
    page.goto(link(url, "steady"))
    screen(page, "consent")
    page.click("#agree")
    screen(page, "instructions")
    page.click("#begin")
    screen(page, "trial")
    page.wait_for_timeout(200)
    page.keyboard.press("1")
    page.click("#vote-right", force=True)
    page.wait_for_timeout(300)
    with svc.Session() as db:
        assert db.scalars(select(Vote).join(Session).join(Rater).where(Rater.external_id == "steady")).all() == []
    holding.clear()
    for route in held:
        route.continue_()
    first = wait_trial(page)
    trial = db_trial(svc, "steady")

    lost = []

    def lose_the_answer(route):
        if not lost:
            lost.append(route.fetch().status)      # the server stores the vote; its answer never arrives
            route.abort("connectionreset")
        else:
            route.continue_()
    page.route("**/votes", lose_the_answer)
    choice = trial.correct_side if trial.kind == "catch" else "right"     # stay in the study
    page.keyboard.press({"left": "1", "right": "2"}[choice])
    wait_trial(page, first)
    assert lost == [200]
    with svc.Session() as db:
        votes = db.scalars(select(Vote).join(Session).join(Rater).where(Rater.external_id == "steady")).all()
    assert [(v.trial_id, v.choice) for v in votes] == [(trial.id, choice)]
    assert page.inner_text("#progress-text") == "Trial 2 of 5"
    r.close()


def test_a_prolific_link_to_an_open_study_gets_a_clear_message(chromium, study_dir, tmp_path):
    study = make_study(study_dir, study_id="openonly", trials=3, catch=0, repeats=0)
    with serve(study, tmp_path) as (url, svc):
        r = Rater_(chromium, DESKTOP)
        r.page.goto(link(url, "lost-rater"))
        screen(r.page, "message")
        assert r.page.inner_text("#message-title") == "This link cannot start the study"
        assert "not set up for Prolific" in r.page.inner_text("#message-text")
        assert "return the study on Prolific" in r.page.inner_text("#message-text")
        r.shot("desktop-7-not-for-prolific")
        with svc.Session() as db:
            assert db.scalars(select(Session)).all() == []
        r.close()


def test_scaled_to_fit_a_smaller_window(chromium, demo):
    """A window too small for three images side by side: scaled down, said so, still one screen."""
    url, svc = demo
    small = {"width": 800, "height": 560}       # less than 3 x 256 px of images and their gaps
    r = Rater_(chromium, small)
    r.page.goto(link(url, "small-window"))
    screen(r.page, "consent")
    r.page.click("#agree")
    r.page.click("#begin")
    wait_trial(r.page)
    measure(r.page, small)
    natural, shown = r.page.eval_on_selector("#stage img", "e => [e.naturalWidth, e.width]")
    hint = r.page.inner_text("#hint-text")
    assert shown < natural and re.match(r"Scaled to \d+% to fit your screen", hint)
    r.shot("small-window-trial")
    r.close()


def test_a_visitor_without_a_platform_id(chromium, demo):
    """The demo also takes the Space's visitors: no session before they agree, a reload resumes
    the trial, and the end has no code and no redirect but offers another session."""
    url, svc = demo
    with svc.Session() as db:
        before = len(db.scalars(select(Session)).all())
    r = Rater_(chromium, DESKTOP)
    page = r.page
    page.goto(url + "/study")
    screen(page, "consent")
    with svc.Session() as db:
        assert len(db.scalars(select(Session)).all()) == before
    page.click("#agree")
    page.click("#begin")
    first = wait_trial(page)
    page.keyboard.press("1")
    second = wait_trial(page, first)
    page.reload()
    assert wait_trial(page) == second
    page.wait_for_timeout(300)       # the page reports the reload, without waiting for the answer
    with svc.Session() as db:
        session_id = db.get(Trial, int(second)).session_id
        assert db.scalars(select(Event.kind).where(Event.session_id == session_id, Event.kind == "reload")).all()
    shown = second
    for k in range(svc.cfg.trials_per_session - 1):
        with svc.Session() as db:
            t = db.get(Trial, int(shown))
        page.keyboard.press("1" if t.kind != "catch" or t.correct_side == "left" else "2")
        if k < svc.cfg.trials_per_session - 2:
            shown = wait_trial(page, shown)
    screen(page, "end")
    assert page.locator("#end-code").is_hidden() and page.locator("#end-return").is_hidden()
    assert page.locator("#again").is_visible()
    r.shot("desktop-8-visitor-end")
    page.click("#again")
    screen(page, "consent")
    assert r.returned == [] and r.errors == []
    r.close()


def test_mturk_submits_to_mturk_only(chromium, study_dir, tmp_path):
    study = make_study(study_dir, study_id="mturk", trials=2, catch=0, repeats=0,
                       platform="{kind: mturk, completion_code: MT42}")
    with serve(study, tmp_path) as (url, svc):
        for submit_to, posts in (("https://workersandbox.mturk.com", True), ("https://mturk.com.evil.example", False)):
            r = Rater_(chromium, DESKTOP)
            page = r.page
            worker = "W" + str(int(posts))
            page.goto(f"{url}/?workerId={worker}&assignmentId=A{worker}&hitId=H1&turkSubmitTo={submit_to}")
            assert urlsplit(page.url).path == "/study"
            screen(page, "consent")
            page.click("#agree")
            page.click("#begin")
            shown = wait_trial(page)
            page.keyboard.press("1")
            wait_trial(page, shown)
            page.keyboard.press("2")
            screen(page, "end")
            assert page.inner_text("#code") == "MT42"
            form = page.locator("#mturk-form")
            assert form.is_visible() == posts
            if posts:
                assert form.get_attribute("action") == "https://workersandbox.mturk.com/mturk/externalSubmit"
                assert page.input_value("#mturk-form [name=assignmentId]") == f"A{worker}"
            r.close()
        r = Rater_(chromium, DESKTOP)
        r.page.goto(f"{url}/study?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=H1")
        screen(r.page, "message")
        assert "preview" in r.page.inner_text("#message-text").lower()
        r.close()
