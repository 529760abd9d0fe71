"""Admin tab: behind the admin token, the study's progress and a zip of everything an author needs.

The token is the value of the environment variable named by the `admin_token_env` setting (a
Space Secret). There is no logged-in state: every handler takes the token as an input and checks
it again, so calling a handler directly (the events are private, but the browser's queue
endpoint is open to anyone) gets no further than the page. A missing or wrong token gets the same
message and nothing else. The work itself is study.export_bundle's.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import gradio as gr

from ui.context import AppContext

WRONG_TOKEN = "Wrong token."  # also for a missing one: the answer must not tell them apart
WRONG_TOKEN_DELAY_S = 1.0  # slows down guessing
BOOTSTRAP_CHOICES = [200, 1000]


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

    def check(given) -> None:
        expected = ctx.settings.admin_token  # read at every call: a changed secret applies at once
        if not expected:
            raise gr.Error(f"Administration is off: the `{env}` secret is not set.", print_exception=False)
        if not token_matches(given, expected):
            time.sleep(WRONG_TOKEN_DELAY_S)
            raise gr.Error(WRONG_TOKEN, print_exception=False)

    def status(given) -> str:
        check(given)
        from study.export_bundle import status as study_status

        s = study_status(ctx.study)
        states = ", ".join(f"{n} {k}" for k, n in s["sessions_by_status"].items()) or "none"
        rules = ", ".join(f"{k} = {v:g}" for k, v in s["exclusion_rules"].items())
        excluded = (f"**{s['excluded_raters']}** raters excluded by {rules}" if s["excluded_raters"] is not None
                    else f"exclusion rules: {rules or 'none in the study file'}")
        return (f"{s['votes']} votes from {s['raters']} raters in {s['sessions']} sessions ({states}); "
                f"{s['catch_votes']} votes on catch trials; {excluded}; last vote: {s['last_vote'] or 'none yet'}.")

    def export(given, apply_rules: bool, rounds, progress=gr.Progress()):
        check(given)
        from study.export_bundle import build_bundle

        progress(0.1, desc=f"Scoring ({int(rounds)} bootstrap rounds)")
        folder = ctx.scratch_dir() / f"{ctx.study.cfg.id}-export-{time.strftime('%Y%m%d-%H%M%S')}"
        bundle = build_bundle(ctx.study, folder, bootstrap=int(rounds), exclusions=bool(apply_rules))
        note = f" No scores: {bundle.note}." if bundle.note else ""
        return (f"Exported {len(bundle.files)} files; `manifest.json` lists their SHA-256.{note}",
                str(bundle.zip_path))

    # Private: not in the API page nor callable through gradio_client; the token check above is
    # what protects them from a caller who posts to the queue directly.
    common = dict(api_visibility="private", concurrency_id="admin", concurrency_limit=1)
    status_btn.click(status, token, message, **common)
    export_btn.click(export, [token, exclusions, bootstrap], [message, export_file], **common)
