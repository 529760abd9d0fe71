"""Admin tab: behind the admin token, the study's progress and a zip of everything an author needs.

The token is the value of the environment variable named by the `admin_token_env` setting (a
Space Secret). There is no logged-in state: every handler takes the token as an input and checks
it again, so calling a handler directly (the events are private, but the browser's queue
endpoint is open to anyone) gets no further than the page. A missing or wrong token gets the same
message and nothing else. The work itself is study.export_bundle's.

Guessing is slowed per client (`Backoff`, shared by every form that takes the token through
`refusal`), without anyone waiting: the handlers run outside the queue (queue=False, so they
never take a place in it nor a model slot), and a client whose last attempts failed is told at
once when it may try again; its attempts until then are not checked.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict

import gradio as gr

from ui.context import AppContext

WRONG_TOKEN = "Wrong token."  # also for a missing one: the answer must not tell them apart
BOOTSTRAP_CHOICES = [200, 1000]


class Backoff:
    """Failed attempts by client: after n failures in a row a client's next attempt is refused
    unchecked until base_s * 2**(n-1) seconds (at most max_s) have passed since the last one.

    An attempt is counted as failed when it starts (`begin`) and forgiven when it succeeds, so
    concurrent guesses from one client do not all slip through the same open window. A client
    quiet for `forget_s` starts again from zero; at most `size` clients are remembered (the least
    recently seen are forgotten first)."""

    def __init__(self, base_s: float = 1.0, max_s: float = 600.0, forget_s: float = 3600.0, size: int = 10_000,
                 clock=time.monotonic):
        self.base_s, self.max_s, self.forget_s, self.size, self.clock = base_s, max_s, forget_s, size, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client -> (failures, last at)
        self._lock = threading.Lock()

    def begin(self, client: str) -> float:
        """0 when `client` may try now (the attempt is counted as failed until `succeeded`), else
        the seconds it must still wait."""
        with self._lock:
            now = self.clock()
            failures, last = self._failures.pop(client, (0, now))
            if failures and now - last > self.forget_s:
                failures = 0
            wait = last + self.delay(failures) - now if failures else 0.0
            if wait > 0:
                self._failures[client] = (failures, last)
                return wait
            self._failures[client] = (failures + 1, now)
            if len(self._failures) > self.size:
                self._failures.popitem(last=False)
            return 0.0

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def delay(self, failures: int) -> float:
        return min(self.base_s * 2 ** (failures - 1), self.max_s)


GUESSES = Backoff()  # one per server: every form that takes the admin token counts against it


def refusal(ctx: AppContext, given, request: gr.Request | None) -> str | None:
    """Why `given` does not open the admin functions (one line for the page), or None when it does.
    A client in back-off is told when to try again and its token is not even compared."""
    expected = ctx.settings.admin_token  # read at every call: a changed secret applies at once
    if not expected:
        return f"Administration is off: the `{ctx.settings.admin_token_env}` secret is not set."
    client = client_address(request)
    wait = GUESSES.begin(client)
    if wait:
        return f"Too many wrong tokens; try again in {math.ceil(wait)} s."
    if not token_matches(given, expected):
        return WRONG_TOKEN
    GUESSES.succeeded(client)
    return None


def client_address(request: gr.Request | None) -> str:
    """The visitor's address: the first entry of X-Forwarded-For, which the Spaces proxy sets
    (the socket shows only the proxy), else the socket's. Where nothing in front of the server
    overwrites that header a client can forge it; the token's length is then what holds."""
    if request is None:
        return ""
    forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
    return forwarded or (request.client.host if request.client else "")


def token_matches(given, expected: str) -> bool:
    """Constant-time comparison of SHA-256 digests: equal lengths whatever was typed, so the time
    taken tells nothing about the token's length or its first characters."""
    given = given if isinstance(given, str) else ""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def build_admin_tab(ctx: AppContext) -> None:
    env = ctx.settings.admin_token_env
    if ctx.study is None:
        gr.Markdown("No study is configured on this Space (setting `study_file`).")
        return
    gr.Markdown(f"Study administration. The token is the value of the `{env}` secret of this Space"
                + ("." if ctx.settings.admin_token else f": **administration is off until `{env}` is set**."))
    token = gr.Textbox(label="Admin token", type="password", elem_id="admin-token", max_lines=1)
    with gr.Row():
        exclusions = gr.Checkbox(value=True, label="Apply the study's exclusion rules to the scores",
                                 info="excluded raters stay in the tables, marked")
        bootstrap = gr.Dropdown(BOOTSTRAP_CHOICES, value=BOOTSTRAP_CHOICES[-1], label="Bootstrap rounds")
    with gr.Row():
        status_btn = gr.Button("Study status", elem_id="admin-status-btn")
        export_btn = gr.Button("Export votes, scores and plots (zip)", variant="primary", elem_id="admin-export-btn")
    message = gr.Markdown(elem_id="admin-message")
    export_file = gr.File(label="Export", elem_id="admin-export", interactive=False)

    exporting = threading.Lock()

    def status(given, request: gr.Request) -> str:
        if why := refusal(ctx, given, request):
            return why
        from study.export_bundle import status as study_status

        s = study_status(ctx.study)
        states = ", ".join(f"{n} {k}" for k, n in s["sessions_by_status"].items()) or "none"
        rules = ", ".join(f"{k} = {v:g}" for k, v in s["exclusion_rules"].items())
        excluded = (f"**{s['excluded_raters']}** raters excluded by {rules}" if s["excluded_raters"] is not None
                    else f"exclusion rules: {rules or 'none in the study file'}")
        warnings = "".join(f"\n\n**Warning:** {w}." for w in ctx.study.cfg.warnings())
        return (f"{s['votes']} votes from {s['raters']} raters in {s['sessions']} sessions ({states}); "
                f"{s['catch_votes']} votes on catch trials; {excluded}; last vote: {s['last_vote'] or 'none yet'}."
                f"{warnings}")

    def export(given, apply_rules: bool, rounds, request: gr.Request):
        if why := refusal(ctx, given, request):
            return why, None
        from study.export_bundle import build_bundle

        if not exporting.acquire(blocking=False):
            return "An export is already running; try again when it is done.", None
        try:
            folder = ctx.scratch_dir() / f"{ctx.study.cfg.id}-export-{time.strftime('%Y%m%d-%H%M%S')}"
            bundle = build_bundle(ctx.study, folder, bootstrap=int(rounds), exclusions=bool(apply_rules))
        finally:
            exporting.release()
        note = f" No scores: {bundle.note}." if bundle.note else ""
        return (f"Exported {len(bundle.files)} files; `manifest.json` lists their SHA-256.{note}",
                str(bundle.zip_path))

    # Private: not in the API page nor callable through gradio_client; the token check above is
    # what protects them from a caller who posts to the server directly. Outside the queue: a
    # guess is answered at once and never takes a place a visitor's request needs. (Refusals are
    # returned as the message, not raised: the page shows a raised error's text only for queued
    # events.)
    common = dict(api_visibility="private", queue=False)
    status_btn.click(status, token, message, **common)
    export_btn.click(lambda: "Exporting (scores with bootstrap intervals take a while)...", None, message, **common) \
        .then(export, [token, exclusions, bootstrap], [message, export_file], **common)
