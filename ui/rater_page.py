"""The rater's page at /study: a static page (ui/rater/) that runs the study through its JSON API
(study.http, at API_PREFIX). It shows the study and nothing else of the Space: no paper, no tabs,
no results; what it loads names no method, bitrate or score (stimuli have opaque ids).

Crowd-platform links to "/" (Prolific's PROLIFIC_PID, MTurk's workerId/assignmentId) and the old
`/?tab=study` are redirected here with their query string.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

PATH = "/study"
RATER_DIR = Path(__file__).with_name("rater")
PLATFORM_PARAMS = ("PROLIFIC_PID", "workerId", "assignmentId")
# The page loads only itself and the study API; MTurk's completion form posts to MTurk alone.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; form-action https://*.mturk.com; base-uri 'none'",
    "Referrer-Policy": "no-referrer",   # the URL carries the participant's platform ids
    "X-Robots-Tag": "noindex",
    "Cache-Control": "no-cache",
}


def add_rater_page(app: FastAPI) -> None:
    """Serve the page at PATH and redirect platform links to it; call before mounting Gradio at "/"."""

    @app.get(PATH, include_in_schema=False)
    def rater_page() -> FileResponse:
        return FileResponse(RATER_DIR / "index.html", media_type="text/html", headers=HEADERS)

    app.mount(f"{PATH}/static", StaticFiles(directory=RATER_DIR), name="rater-static")

    @app.middleware("http")
    async def platform_links_to_the_study(request: Request, call_next):
        q = request.query_params
        if request.url.path == "/" and (q.get("tab") == "study" or any(k in q for k in PLATFORM_PARAMS)):
            rest = urlencode([(k, v) for k, v in q.multi_items() if k != "tab"])
            return RedirectResponse(PATH + (f"?{rest}" if rest else ""), status_code=307)
        return await call_next(request)
