"""JSON API of a study: its own small FastAPI application, which the app mounts at API_PREFIX
next to Gradio (`app.mount(API_PREFIX, build_api(service))`), so that the limits of
study.limits and the error answers below apply to exactly these routes.

The session token in the path is the caller's secret: whoever holds it is that session. Every
endpoint is a thin call into StudyService; its refusals become HTTP errors with a one-line
message, and no error answer repeats what the request sent.
"""
from __future__ import annotations

from typing import Awaitable, Callable, TypeVar

import anyio
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
import orjson
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from study import db as dbmod
from study.limits import Guard, Limits
from study.service import Participant, StudyError, StudyService, new_rater_key

API_PREFIX = "/api/study"
PLANNING_THREADS = 1     # consents planned at once (see consent() below)
T = TypeVar("T")


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")   # e.g. the retired anonymous_id: refused, not ignored
    study_id: str | None = None
    params: dict[str, str] = Field(default_factory=dict, description="the page URL's query parameters")
    token: str | None = Field(None, description="the session token the browser kept, to resume that session")
    rater_key: str | None = Field(None, description="a visitor's key from an earlier answer (no platform id)")


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


def _http_error(e: StudyError) -> HTTPException:
    return HTTPException(status_code=e.status, detail=e.message)


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except StudyError as e:
        raise _http_error(e) from None


async def _awaited(answer: Awaitable[T]) -> T:
    try:
        return await answer
    except StudyError as e:
        raise _http_error(e) from None


def _json(fn: Callable[[], dict]) -> Response:
    """Run `fn` and answer its dict as JSON directly (the votes path is hot: no re-validation)."""
    return Response(orjson.dumps(_call(fn)), media_type="application/json")


# The names an error may quote: a location can also hold the client's own keys.
_FIELDS = {"body", "path", "query", "token", "public_id"} | {
    name for model in (StartRequest, ConsentRequest, VoteRequest, EventRequest) for name in model.model_fields}


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's default answer lists every error with the offending input: one line instead,
    which names our fields and pydantic's message (never the input or the client's keys)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(p if p in _FIELDS else "*" for p in first.get("loc", ()))
    msg = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return JSONResponse({"detail": f"{where}: {msg}{more}"[:300]}, status_code=422)


def build_api(service: StudyService, limits: Limits | None = None) -> FastAPI:
    """The study API as an application to mount at API_PREFIX, behind the limits of
    study.limits (default: Limits.from_env())."""
    dbmod.fill_pool(service.engine)
    api = FastAPI(title=f"study {service.cfg.id}", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.include_router(build_router(service))
    api.add_middleware(Guard, limits=limits or Limits.from_env())
    return api


def build_router(service: StudyService) -> APIRouter:
    router = APIRouter(tags=["study"])
    cfg = service.cfg

    @router.get("/")
    def study_info() -> dict:
        """What the rater page needs before a session starts: the wording, the consent, who may take
        part. The page is blinded: nothing here names a method, a bitrate or a score."""
        example = service.example()
        who = ("prolific", "mturk", "anonymous")
        return {"id": cfg.id, "title": cfg.title, "question": cfg.question, "instructions": cfg.instructions,
                "show_reference": cfg.show_reference, "trials_per_session": cfg.trials_per_session,
                "sessions_per_rater": cfg.sessions_per_rater, "allow_tie": cfg.allow_tie,
                "consent_text": cfg.consent_text, "consent_version": cfg.consent_version,
                "consent": dict(cfg.consent.details), "platform": cfg.platform.kind,
                "accepts": [p for p in who if cfg.platform.accepts(p)],
                "refusals": {p: cfg.platform.refusal(p) for p in who if not cfg.platform.accepts(p)},
                "example": None if example is None else {
                    "reference": f"{API_PREFIX}/stimuli/{example[0]}", "damaged": f"{API_PREFIX}/stimuli/{example[1]}",
                    "width": example[2], "height": example[3]}}

    @router.post("/sessions")
    def start(body: StartRequest, request: Request) -> Response:
        """Start a session, or resume the rater's (same platform ids, or the kept token).

        A visitor without platform ids is known by a rater key that the server issues: the
        answer carries it (`rater_key`) and the browser sends it back with later starts."""
        if body.study_id not in (None, cfg.id):
            raise HTTPException(404, "no such study here")

        def run():
            who = Participant.from_params(body.params)
            key = None
            if who is None:
                key = body.rater_key or new_rater_key()
                who = Participant.anonymous(key)
            st = service.start_session(who, request.headers.get("user-agent"), token=body.token)
            return {**st.to_dict(), "rater_key": key}
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

    # A consent plans the session's trials: ~20 ms of CPU, a vote needs about three. When many
    # raters start at once, 40 threads planning together starve the votes of the raters who
    # already started (on PostgreSQL each of a vote's round trips gives up the GIL and must win
    # it back). Two planners cut PostgreSQL's vote p99 at 50 raters from 83-98 to 17-33 ms; one
    # planner cut the median p99 of repeated runs again: SQLite's from 32 to 21 ms, PostgreSQL's
    # from 64 to 51 ms (one server process) and from 43 to 34 ms (two) (benchmarks/study_load.py,
    # 150 ms think time, 2 cores). Consents wait in line instead: when 50 raters consent at once,
    # the last waits 1.6-2.8 s (3-4 s on one PostgreSQL server process).
    planners = anyio.CapacityLimiter(PLANNING_THREADS)

    @router.post("/sessions/{token}/consent")
    async def consent(token: str, body: ConsentRequest) -> Response:
        return await anyio.to_thread.run_sync(
            _json, lambda: service.consent(token, body.agree, body.version).to_dict(), limiter=planners)

    def vote(token: str, body: VoteRequest) -> Response:
        """Record the vote for `trial_id`; sent again, it returns the stored vote (replayed)."""
        return _json(lambda: service.vote(token, body.trial_id, body.choice, body.client_ms,
                                          body.client).to_dict())

    if service.engine.dialect.name == "sqlite":
        # SQLite writes one vote at a time anyway, in well under a millisecond: answering on the
        # event loop saves a thread hop per vote and the GIL contention of many waiting threads.
        async def vote_on_loop(token: str, body: VoteRequest) -> Response:
            return vote(token, body)
    else:
        # PostgreSQL: the common vote is one statement awaited on the event loop (no thread, no
        # GIL hand-off per round trip); the others wait in a worker thread.
        async def vote_on_loop(token: str, body: VoteRequest) -> Response:
            result = await _awaited(service.vote_on_loop(token, body.trial_id, body.choice, body.client_ms,
                                                         body.client))
            if result is not None:
                return Response(orjson.dumps(result.to_dict()), media_type="application/json")
            return await anyio.to_thread.run_sync(vote, token, body)
    vote_on_loop.__doc__ = vote.__doc__
    router.post("/sessions/{token}/votes")(vote_on_loop)

    @router.post("/sessions/{token}/events", status_code=204)
    def event(token: str, body: EventRequest) -> None:
        _call(lambda: service.log_event(token, body.kind, body.payload))

    @router.get("/stimuli/{public_id}")
    def stimulus(public_id: str) -> FileResponse:
        path = _call(lambda: service.stimulus_file(public_id))
        # The id is random and the file never changes: browsers may keep it.
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    return router
