"""JSON API of a study (FastAPI router); the app mounts it at API_PREFIX next to Gradio.

The session token in the path is the caller's secret: whoever holds it is that session. Every
endpoint is a thin call into StudyService; its refusals become HTTP errors with a message.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from fastapi import APIRouter, HTTPException, Request
import orjson
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from study.service import Participant, StudyError, StudyService

API_PREFIX = "/api/study"
T = TypeVar("T")


class StartRequest(BaseModel):
    study_id: str | None = None
    params: dict[str, str] = Field(default_factory=dict, description="the page URL's query parameters")
    anonymous_id: str | None = Field(None, description="a random id the browser keeps, when no platform id")


class ConsentRequest(BaseModel):
    agree: bool
    version: str


class VoteRequest(BaseModel):
    trial_id: int = Field(ge=1, le=2**62)
    choice: str = Field(description="left or right, as shown")
    client_ms: float | None = Field(None, description="images loaded -> answer, measured in the browser")
    client: dict | None = Field(None, description="viewport, devicePixelRatio, zoom count, ...")


class EventRequest(BaseModel):
    kind: str
    payload: dict | None = None


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except StudyError as e:
        raise HTTPException(status_code=e.status, detail=e.message) from None


def _json(fn: Callable[[], dict]) -> Response:
    """Run `fn` and answer its dict as JSON directly (the votes path is hot: no re-validation)."""
    return Response(orjson.dumps(_call(fn)), media_type="application/json")


def build_router(service: StudyService) -> APIRouter:
    router = APIRouter(tags=["study"])
    cfg = service.cfg

    @router.get("/")
    def study_info() -> dict:
        """What a page needs before a session starts: the wording, the consent text."""
        return {"id": cfg.id, "title": cfg.title, "question": cfg.question, "instructions": cfg.instructions,
                "show_reference": cfg.show_reference, "trials_per_session": cfg.trials_per_session,
                "consent_text": cfg.consent_text, "consent_version": cfg.consent_version,
                "platform": cfg.platform.kind}

    @router.post("/sessions")
    def start(body: StartRequest, request: Request) -> Response:
        """Start a session, or resume the rater's unfinished one (same token, same trial)."""
        if body.study_id not in (None, cfg.id):
            raise HTTPException(404, f"no study {body.study_id!r} here")

        def run():
            who = Participant.from_params(body.params, body.anonymous_id)
            if who is None:
                raise HTTPException(422, "no participant id: give platform parameters or anonymous_id")
            return service.start_session(who, request.headers.get("user-agent")).to_dict()
        return _json(run)

    @router.get("/sessions/{token}")
    def state(token: str) -> Response:
        return _json(lambda: service.state(token).to_dict())

    @router.get("/sessions/{token}/trial")
    def trial(token: str) -> dict:
        """The current trial; 409 when the session has none (consent first, or finished)."""
        st = _call(lambda: service.state(token))
        if st.trial is None:
            raise HTTPException(409, f"no trial to show: the session is {st.status}")
        return {**st.to_dict()["trial"], "urls": {k: f"{API_PREFIX}/stimuli/{v}" for k, v in
                                                  (("reference", st.trial.reference), ("left", st.trial.left),
                                                   ("right", st.trial.right)) if v}}

    @router.post("/sessions/{token}/consent")
    def consent(token: str, body: ConsentRequest) -> Response:
        return _json(lambda: service.consent(token, body.agree, body.version).to_dict())

    def vote(token: str, body: VoteRequest) -> Response:
        """Record the vote for `trial_id`; sent again, it returns the stored vote (replayed)."""
        return _json(lambda: service.vote(token, body.trial_id, body.choice, body.client_ms,
                                          body.client).to_dict())

    if service.engine.dialect.name == "sqlite":
        # SQLite writes one vote at a time anyway, in well under a millisecond: answering on the
        # event loop saves a thread hop per vote and the GIL contention of many waiting threads.
        # Other databases work on votes in parallel, so there the vote waits in a worker thread.
        async def vote_on_loop(token: str, body: VoteRequest) -> Response:
            return vote(token, body)
        vote_on_loop.__doc__ = vote.__doc__
        router.post("/sessions/{token}/votes")(vote_on_loop)
    else:
        router.post("/sessions/{token}/votes")(vote)

    @router.post("/sessions/{token}/events", status_code=204)
    def event(token: str, body: EventRequest) -> None:
        _call(lambda: service.log_event(token, body.kind, body.payload))

    @router.get("/stimuli/{public_id}")
    def stimulus(public_id: str) -> FileResponse:
        path = _call(lambda: service.stimulus_file(public_id))
        # The id is random and the file never changes: browsers may keep it.
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    return router
