"""The Study tab: a rater's page. Consent -> instructions with an example -> trials -> completion.

All decisions (who the rater is, which trial, whether a vote counts) are StudyService calls; this
module only renders its answers. Images are served by the study router (API_PREFIX) under opaque
ids, at native resolution, in one zoom/pan frame shared by the reference, A and B (the small
script below). Keys: 1 or Left arrow = A, 2 or Right arrow = B, +/- zoom, 0 reset.

The session token is kept in the browser (localStorage), so a reload resumes the same trial.
"""
from __future__ import annotations

import html
import json
import secrets
from urllib.parse import urlsplit

import gradio as gr
from gradio.context import Context

from study.http import API_PREFIX
from study.service import Participant, SessionState, StudyError, StudyService

# Runs once when the trial view mounts; listeners are on the document, so they keep working
# as the view's HTML is replaced from trial to trial.
VIEW_JS = r"""
if (!window.__studyView) {
  window.__studyView = true;
  const S = {trial: null, shownAt: 0, loaded: false, voted: false, z: 1, x: 0, y: 0, zooms: 0, pans: 0};
  const view = () => document.querySelector('#study-view .sv');
  const visible = (el) => el && el.offsetParent !== null;
  const apply = () => {
    const pane = document.querySelector('#study-view .sv-pane');
    const img = pane && pane.querySelector('img');
    if (img) {      // keep the image covering the pane: no panning into empty space
      S.x = Math.min(0, Math.max(pane.clientWidth - img.width * S.z, S.x));
      S.y = Math.min(0, Math.max(pane.clientHeight - img.height * S.z, S.y));
    }
    document.querySelectorAll('#study-view .sv-pane img').forEach((im) => {
      im.style.transform = `translate(${S.x}px, ${S.y}px) scale(${S.z})`;
      im.classList.toggle('sv-pixels', S.z > 1);
    });
  };
  const zoom = (f, cx, cy) => {
    const z = Math.min(16, Math.max(1, S.z * f));
    S.x = cx - (cx - S.x) * (z / S.z); S.y = cy - (cy - S.y) * (z / S.z); S.z = z;
    if (z === 1) { S.x = 0; S.y = 0; }
    S.zooms += 1; apply();
  };
  const fresh = () => {           // a new trial rendered: reset zoom, time from images loaded
    const v = view();
    if (!v || v.dataset.trial === S.trial) return;
    Object.assign(S, {trial: v.dataset.trial, loaded: false, voted: false, z: 1, x: 0, y: 0, zooms: 0, pans: 0});
    const imgs = [...v.querySelectorAll('img')];
    const done = () => { if (imgs.every((i) => i.complete && i.naturalWidth > 0) && !S.loaded) {
      S.loaded = true; S.shownAt = performance.now(); v.classList.add('sv-ready'); } };
    imgs.forEach((i) => i.addEventListener('load', done));
    done(); apply();
  };
  new MutationObserver(fresh).observe(document.body, {childList: true, subtree: true});
  window.studyClientInfo = () => JSON.stringify({
    trial: S.trial, ms: S.loaded ? performance.now() - S.shownAt : null,
    viewport: [window.innerWidth, window.innerHeight], dpr: window.devicePixelRatio,
    zooms: S.zooms, pans: S.pans});
  const press = (id) => {
    if (!S.loaded || S.voted) return;    // no vote before both images are there, one per trial
    S.voted = true;
    const el = document.getElementById(id);
    (el && el.tagName === 'BUTTON' ? el : el && el.querySelector('button'))?.click();
  };
  document.addEventListener('keydown', (e) => {
    if (!visible(view()) || e.ctrlKey || e.metaKey || e.altKey || /INPUT|TEXTAREA/.test(e.target.tagName)) return;
    const k = e.key;
    if (k === '1' || k === 'ArrowLeft') { e.preventDefault(); press('study-vote-a'); }
    else if (k === '2' || k === 'ArrowRight') { e.preventDefault(); press('study-vote-b'); }
    else if (k === '+' || k === '=') zoom(1.5, 0, 0);
    else if (k === '-') zoom(1 / 1.5, 0, 0);
    else if (k === '0') { S.z = 1; S.x = 0; S.y = 0; apply(); }
  });
  document.addEventListener('click', (e) => {
    const z = e.target.closest('#study-view .sv-zoom');
    if (!z) return;
    const pane = document.querySelector('#study-view .sv-pane');
    const c = [pane.clientWidth / 2, pane.clientHeight / 2];    // zoom around the middle
    if (z.dataset.zoom === 'in') zoom(1.5, ...c);
    else if (z.dataset.zoom === 'out') zoom(1 / 1.5, ...c);
    else { S.z = 1; S.x = 0; S.y = 0; apply(); }
  });
  document.addEventListener('click', (e) => {       // a mouse click on a vote button counts once too
    const b = e.target.closest('#study-vote-a, #study-vote-b');
    if (b && e.isTrusted) { if (!S.loaded || S.voted) { e.stopPropagation(); e.preventDefault(); } else S.voted = true; }
  }, true);
  document.addEventListener('wheel', (e) => {
    const pane = e.target.closest('#study-view .sv-pane');
    if (!pane) return;
    e.preventDefault();
    const r = pane.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  let drag = null;
  document.addEventListener('pointerdown', (e) => {   // panning also shows the rest of an image wider than a phone
    if (e.target.closest('#study-view .sv-pane')) { drag = [e.clientX - S.x, e.clientY - S.y]; e.preventDefault(); }
  });
  document.addEventListener('pointermove', (e) => { if (drag) { S.x = e.clientX - drag[0]; S.y = e.clientY - drag[1]; apply(); } });
  document.addEventListener('pointerup', () => { if (drag) { drag = null; S.pans += 1; } });
  document.addEventListener('dblclick', (e) => {
    if (e.target.closest('#study-view .sv-pane')) { S.z = 1; S.x = 0; S.y = 0; apply(); }
  });
}
"""

VIEW_CSS = """
.sv { display: flex; flex-direction: column; align-items: center; gap: 10px; opacity: 0.35; }
.sv.sv-ready { opacity: 1; }
.sv-row { display: flex; flex-wrap: wrap; justify-content: center; gap: 14px; max-width: 100%; }
.sv-side { display: flex; flex-direction: column; align-items: center; max-width: 100%; }
.sv-label { font-weight: 600; margin-bottom: 4px; }
.sv-pane { overflow: hidden; position: relative; max-width: 100%; touch-action: pan-y; cursor: zoom-in;
           outline: 1px solid #d4d4d8; background: #f4f4f5; }
.sv-pane img { display: block; transform-origin: 0 0; max-width: none; user-select: none; -webkit-user-drag: none; }
.sv-pane img.sv-pixels { image-rendering: pixelated; }
.sv-hint { color: #71717a; font-size: 0.85rem; text-align: center; }
.sv-zoom { min-width: 2.2em; padding: 2px 8px; margin-right: 4px; border: 1px solid #d4d4d8; border-radius: 4px;
           background: #fff; color: #27272a; cursor: pointer; }
.sv-progress { display: flex; align-items: center; gap: 10px; }
.sv-bar { flex: 1; height: 10px; border-radius: 5px; background: #e4e4e7; overflow: hidden; }
.sv-bar > div { height: 100%; background: #ea580c; }
.sv-code { font-size: 1.6rem; font-weight: 700; letter-spacing: 0.08em; }
"""


def _url(public_id: str) -> str:
    return f"{API_PREFIX}/stimuli/{public_id}"


def _pane(label: str, public_id: str, width: int, height: int) -> str:
    # The pane is the image's native size; the image inside zooms and pans, clipped by the pane.
    return (f'<div class="sv-side"><div class="sv-label">{label}</div>'
            f'<div class="sv-pane" style="width:{width}px;height:{height}px">'
            f'<img src="{_url(public_id)}" width="{width}" height="{height}" alt="{label}" draggable="false"></div></div>')


def trial_html(state: SessionState) -> str:
    t = state.trial
    w, h = t.width, t.height
    ref = f'<div class="sv-row">{_pane("Reference", t.reference, w, h)}</div>' if t.reference else ""
    return (f'<div class="sv" data-trial="{t.id}">{ref}'
            f'<div class="sv-row">{_pane("A &nbsp;(1 or ←)", t.left, w, h)}{_pane("B &nbsp;(2 or →)", t.right, w, h)}</div>'
            '<div class="sv-hint"><button class="sv-zoom" data-zoom="in" title="zoom in (+)">+</button>'
            '<button class="sv-zoom" data-zoom="out" title="zoom out (-)">&minus;</button>'
            '<button class="sv-zoom" data-zoom="reset" title="native size (0)">1:1</button> '
            'Zoom with these buttons, the mouse wheel or + and -; drag to pan. All images move together.</div></div>')


def progress_html(state: SessionState) -> str:
    n = min(state.index + 1, state.total)
    done = 100 * state.index / max(1, state.total)
    return (f'<div class="sv-progress" id="study-progress-bar"><span>Trial <b>{n}</b> of <b>{state.total}</b></span>'
            f'<div class="sv-bar" role="progressbar" aria-valuenow="{state.index}" aria-valuemax="{state.total}">'
            f'<div style="width:{done:.1f}%"></div></div></div>')


def done_html(state: SessionState, params: dict) -> str:
    if state.status == "completed":
        head = "<h2>Thank you, you are done!</h2>"
    elif state.status == "declined":
        head = "<h2>You did not give consent, so the study ends here.</h2><p>No answers were recorded.</p>"
    else:
        head = "<h2>Thank you for your time.</h2><p>The study ends here for you.</p>"
    body = head
    if state.code:
        body += f'<p>Your code: <span class="sv-code" id="study-code">{html.escape(state.code)}</span></p>'
    if state.redirect_url:
        url = html.escape(state.redirect_url, quote=True)
        body += (f'<p data-redirect="{url}">You will be taken back in a few seconds, or '
                 f'<a href="{url}" id="study-return">return now</a>.</p>')
    submit = params.get("turkSubmitTo", "")
    to_mturk = urlsplit(submit).scheme == "https" and (urlsplit(submit).hostname or "").endswith(".mturk.com")
    if to_mturk and params.get("assignmentId") and state.status == "completed":   # no form to other sites
        action = html.escape(submit.rstrip("/") + "/mturk/externalSubmit", quote=True)
        body += (f'<form method="POST" action="{action}"><input type="hidden" name="assignmentId" '
                 f'value="{html.escape(params["assignmentId"], quote=True)}"><input type="hidden" name="code" '
                 f'value="{html.escape(state.code or "", quote=True)}"><button type="submit">Submit the HIT</button></form>')
    return f'<div id="study-done-page">{body}</div>'


def build_study_tab(ctx) -> None:
    """The Study tab's contents; call inside `with gr.Tab("Study")`."""
    svc: StudyService | None = ctx.study
    if svc is None:
        gr.Markdown("No study is configured on this Space.", elem_id="study-none")
        return
    cfg = svc.cfg
    # Kept in localStorage. BrowserState encrypts with a key that gradio sends to the page; the
    # default key changes at every server start, which would make a restarted Space forget
    # every visitor's session. The study file's hash stays the same across restarts.
    token = gr.BrowserState(None, storage_key=f"study-{cfg.id}-token", secret=cfg.digest[:32])
    browser_id = gr.BrowserState(None, storage_key="study-browser-id", secret=cfg.digest[:32])
    params = gr.State({})
    gr.Markdown(f"## {html.escape(cfg.title)}", elem_id="study-title")
    message = gr.Markdown("", elem_id="study-message")

    with gr.Column(visible=False, elem_id="study-consent") as consent_box:
        gr.Markdown(f"### Consent (version {html.escape(cfg.consent_version)})\n\n{cfg.consent_text}")
        with gr.Row():
            agree = gr.Button("I agree, start", variant="primary", elem_id="study-agree")
            decline = gr.Button("I do not agree", elem_id="study-decline")

    with gr.Column(visible=False, elem_id="study-instructions") as intro_box:
        gr.Markdown(f"### Instructions\n\n{cfg.instructions}\n\n**{cfg.question}**")
        example = svc.example()
        if example:
            ref, bad, w, h = example
            gr.HTML(f'<div class="sv sv-ready"><div class="sv-row">{_pane("Reference", ref, w, h)}</div>'
                    f'<div class="sv-row">{_pane("A", ref, w, h)}{_pane("B", bad, w, h)}</div>'
                    '<div class="sv-hint">Example: B is clearly damaged, so here you would press 1 '
                    '(A looks more like the reference).</div></div>', css_template=VIEW_CSS,
                    elem_id="study-example")
        begin = gr.Button("Begin", variant="primary", elem_id="study-begin")

    with gr.Column(visible=False, elem_id="study-trials") as trial_box:
        progress = gr.HTML("", elem_id="study-progress", css_template=VIEW_CSS)
        gr.Markdown(f"**{cfg.question}**", elem_id="study-question")
        view = gr.HTML("", elem_id="study-view", css_template=VIEW_CSS, js_on_load=VIEW_JS)
        with gr.Row():     # A left, B right, also on a phone
            vote_a = gr.Button("1 · A", variant="primary", elem_id="study-vote-a", min_width=80)
            vote_b = gr.Button("2 · B", variant="primary", elem_id="study-vote-b", min_width=80)
        client = gr.Textbox(visible=False)

    with gr.Column(visible=False, elem_id="study-done") as done_box:
        done = gr.HTML("", elem_id="study-done-html", css_template=VIEW_CSS)
        # Open studies (no platform) may allow several sessions per visitor.
        again = gr.Button("Take part again", elem_id="study-again",
                          visible=cfg.platform.kind == "none" and cfg.sessions_per_rater > 1)

    outputs = [token, message, consent_box, intro_box, trial_box, done_box, progress, view, done]

    def render(st: SessionState | None, page_params: dict, note: str = "", intro: bool = False,
               ask_consent: bool = False):
        """The page for session state `st`; ask_consent: the consent page of a session to come."""
        show = {"consent": ask_consent or (st is not None and st.status == "consent"),
                "intro": st is not None and st.status == "active" and intro,
                "trial": st is not None and st.status == "active" and not intro and st.trial is not None,
                "done": st is not None and st.status not in ("consent", "active")}
        trial = st and show["trial"]
        return (st.token if st else None, note,
                gr.Column(visible=show["consent"]), gr.Column(visible=show["intro"]),
                gr.Column(visible=show["trial"]), gr.Column(visible=show["done"]),
                progress_html(st) if trial else "", trial_html(st) if trial else "",
                done_html(st, page_params) if show["done"] else "")

    def on_load(saved_token, saved_browser_id, request: gr.Request):
        page = {k: v for k, v in request.query_params.items()}
        browser = saved_browser_id or secrets.token_hex(12)
        try:
            who = Participant.from_params(page, anonymous_id=browser)
            if who.preview:
                return (*render(None, page, "This is a preview: accept the task to take part."), page, browser)
            if who.platform == "anonymous":
                # A visitor of an open study gets a session only when they agree (on_consent):
                # opening the Space creates nothing. A reload finds the session in the browser.
                try:
                    st = svc.state(saved_token) if saved_token else None
                except StudyError:
                    st = None
                if st is None:
                    return (*render(None, page, ask_consent=True), page, browser)
            else:
                st = svc.start_session(who, request.headers.get("user-agent"))
            return (*render(st, page, intro=st.status == "active" and st.index == 0), page, browser)
        except StudyError as e:
            return (*render(None, page, f"**{html.escape(e.message)}**"), page, browser)

    # The tab has no Blocks of its own: the page-load event belongs to the app's root Blocks.
    # Study events are short database calls: no queue limit (the service orders the writes),
    # and they stay out of the public API page.
    quick = {"concurrency_limit": None, "api_visibility": "private"}
    Context.root_block.load(on_load, inputs=[token, browser_id], outputs=[*outputs, params, browser_id], **quick)

    def on_consent(agreed: bool):
        def handler(tok, page, browser, request: gr.Request):
            try:
                if not tok:     # an open study's visitor: the session starts with the answer
                    tok = svc.start_session(Participant("anonymous", browser), request.headers.get("user-agent")).token
                st = svc.consent(tok, agreed, cfg.consent_version)
                return render(st, page, intro=st.status == "active" and st.index == 0)
            except StudyError as e:
                return render(None, page, f"**{html.escape(e.message)}** Reload the page.")
        return handler

    agree.click(on_consent(True), [token, params, browser_id], outputs, **quick)
    decline.click(on_consent(False), [token, params, browser_id], outputs, **quick)

    def on_begin(tok, page):
        try:
            return render(svc.state(tok), page)
        except StudyError as e:
            return render(None, page, f"**{html.escape(e.message)}** Reload the page.")

    begin.click(on_begin, [token, params], outputs, **quick)

    def on_again(tok, page, browser):
        try:
            st = svc.start_session(Participant("anonymous", browser))
        except StudyError as e:
            return render(None, page, f"**{html.escape(e.message)}**")
        if st.token == tok:     # the limit is reached: start_session gave the last one back
            return render(st, page, f"You have taken part {cfg.sessions_per_rater} times, "
                                    "as often as this study allows. Thank you!")
        return render(st, page)

    again.click(on_again, [token, params, browser_id], outputs, **quick)

    def on_vote(choice: str):
        def handler(tok, page, info):
            try:
                data = json.loads(info or "{}")
                trial = data.pop("trial", None)
                ms = data.pop("ms", None)
                if trial is None:
                    return render(svc.state(tok), page, "The images were still loading: please vote again.")
                result = svc.vote(tok, int(trial), choice, ms, data)
                return render(result.state, page)
            except (StudyError, ValueError) as e:
                note = e.message if isinstance(e, StudyError) else "that vote could not be read"
                try:
                    return render(svc.state(tok), page, f"**{html.escape(note)}**")
                except StudyError:
                    return render(None, page, f"**{html.escape(note)}** Reload the page.")
        return handler

    read_client = "(tok, page, info) => [tok, page, window.studyClientInfo ? window.studyClientInfo() : '']"
    go_back = ("() => { const r = document.querySelector('#study-done-page [data-redirect]');"
               " if (r && !window.__studyLeaving) { window.__studyLeaving = true;"
               " setTimeout(() => { window.location.href = r.dataset.redirect; }, 5000); } }")
    for button, choice in ((vote_a, "left"), (vote_b, "right")):
        button.click(on_vote(choice), [token, params, client], outputs, js=read_client,
                     **quick).then(None, js=go_back, **quick)
