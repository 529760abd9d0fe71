"""The study's state machine on top of the database: start or resume a session, consent, serve
the current trial, record a vote. Every state change is one transaction; the HTTP router and
the Gradio tab both call this and hold no logic of their own.

Session life: consent -> active -> completed | screened_out; consent can also end in declined.
A session's trials are planned when its rater consents (study.scheduler) and stored, so a
reload or a dropped connection resumes at the same trial. A vote must name the session's current trial;
the same vote sent again returns the stored vote and adds nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import random
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import ARRAY, bindparam, cast, func, insert, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from threadpoolctl import ThreadpoolController

from study import db as dbmod
from study import loop_db
from study import scheduler
from study.config import StudyConfig, load
from study.history import PairHistory
from study.stimuli import read_manifest
from study.models import (CHOICES, Condition, Event, Image, Rater, Session, Stimulus, Study,
                          Trial, Vote, utcnow)

_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
RATER_KEY_CHARS = (24, 64)
CLIENT_EVENTS = {"zoom", "pan", "blur", "focus", "resize", "reload", "instructions", "example"}
MAX_EVENT_BYTES = 2000
# Events a session's client can add at will; with MAX_EVENT_BYTES, at most ~2 MB per session.
MAX_CLIENT_EVENTS = 1000
# Sessions whose next vote's read StudyService keeps in memory (~350 bytes each).
MAX_AHEAD = 20_000
_ONE_PLANNER = threading.Lock()     # see StudyService._plan


class StudyError(Exception):
    """A request the study refuses; `status` is the HTTP status the router answers with."""
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(StudyError):
    status = 404


class Forbidden(StudyError):
    status = 403


class Conflict(StudyError):
    status = 409


class Invalid(StudyError):
    status = 422


@dataclass(frozen=True)
class Participant:
    """Who is rating: a Prolific or MTurk participant as the page URL says, or a visitor known by
    a secret rater key that the server issued (never an id the browser chose).

    A session resumes only for the same platform ids, all of them (Prolific: PROLIFIC_PID,
    STUDY_ID and SESSION_ID; MTurk: workerId, hitId and assignmentId): a PROLIFIC_PID alone is
    no secret (researchers, screenshots, other studies see it), its SESSION_ID is."""
    platform: str                    # prolific | mturk | anonymous
    external_id: str                 # PROLIFIC_PID, workerId, or a hash of the rater key
    platform_study_id: str | None = None
    platform_session_id: str | None = None   # Prolific SESSION_ID, MTurk assignmentId
    preview: bool = False            # MTurk shows the task before the worker accepts it

    @classmethod
    def from_params(cls, params: dict) -> "Participant | None":
        """Read PROLIFIC_PID/STUDY_ID/SESSION_ID or workerId/assignmentId/hitId; None if neither."""
        get = {k: str(v).strip() for k, v in params.items() if v is not None and str(v).strip()}
        if "PROLIFIC_PID" in get:
            if not ("STUDY_ID" in get and "SESSION_ID" in get):
                raise Invalid("a Prolific link carries PROLIFIC_PID, STUDY_ID and SESSION_ID: open the study "
                              "from Prolific again")
            return cls("prolific", _checked(get["PROLIFIC_PID"]), _checked(get["STUDY_ID"]),
                       _checked(get["SESSION_ID"]))
        if get.get("assignmentId") == "ASSIGNMENT_ID_NOT_AVAILABLE":
            return cls("mturk", "preview", _opt(get.get("hitId")), None, preview=True)
        if "workerId" in get:
            if "assignmentId" not in get:
                raise Invalid("an MTurk link carries workerId and assignmentId: open the task from MTurk again")
            return cls("mturk", _checked(get["workerId"]), _opt(get.get("hitId")), _checked(get["assignmentId"]))
        return None

    @classmethod
    def anonymous(cls, rater_key: str) -> "Participant":
        """The visitor who holds `rater_key` (from new_rater_key()); only its hash is stored."""
        if not isinstance(rater_key, str) or not RATER_KEY_CHARS[0] <= len(rater_key) <= RATER_KEY_CHARS[1]:
            raise Invalid("not a rater key")
        return cls("anonymous", hashlib.sha256(rater_key.encode()).hexdigest())


def new_rater_key() -> str:
    """A visitor's secret: the browser keeps it to be the same rater in a later session."""
    return secrets.token_urlsafe(24)


def _checked(value: str) -> str:
    if not _ID.match(value):
        raise Invalid("a participant id must be 1-128 letters, digits or _ . : @ -")
    return value


def _opt(value: str | None) -> str | None:
    return _checked(value) if value else None


@dataclass(frozen=True)
class TrialView:
    """What a rater may see of a trial: opaque image ids, never the methods."""
    id: int
    index: int
    total: int
    reference: str | None   # stimulus public ids
    left: str
    right: str
    width: int              # the image's native size (every stimulus of a trial has it)
    height: int
    allow_tie: bool = False  # "can't tell" may be answered (the study offers it; never on a catch trial)


@dataclass(frozen=True)
class SessionState:
    token: str
    status: str
    index: int              # trials done
    total: int
    trial: TrialView | None
    consent_version: str
    code: str | None = None          # the platform code of the way the session ended
    redirect_url: str | None = None  # where the rater goes next (the platform, with that code)
    reason: str | None = None        # why it ended, in plain words, once finished

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VoteResult:
    trial_id: int
    choice: str
    replayed: bool          # True: this trial had a vote already; that stored vote is returned
    state: SessionState

    def to_dict(self) -> dict:
        return asdict(self)


# Prepared statements of the hot paths (vote, show a trial): built once, so a request pays only
# for executing them. bindparam names differ from the column names they set.
_T, _S, _V = Trial.__table__, Session.__table__, Vote.__table__
# Read without a lock: the writes below are guarded by what was read (see _record).
_VOTE_ROW = (select(_T.c.id, _T.c.index, _T.c.kind, _T.c.correct_side, _T.c.first_shown_at, _S.c.id.label("sid"),
                    _S.c.study_id, _S.c.token, _S.c.status, _S.c.next_index, _S.c.n_trials, _S.c.catch_failures,
                    _V.c.choice.label("stored"))
             .select_from(_T).join(_S, _T.c.session_id == _S.c.id).outerjoin(_V, _V.c.trial_id == _T.c.id)
             .where(_T.c.id == bindparam("trial_id")))
_INSERT_VOTE = insert(_V)
# Guarded by what the vote read (an active session at index `at`): a concurrent vote that moved
# the session on matches no row. Only votes change a session's index, failures and status once it
# is active, so this guard also covers a read from StudyService._ahead.
_MOVE_ON = (update(_S).where(_S.c.id == bindparam("sid"), _S.c.next_index == bindparam("at"),
                             _S.c.status == "active")
            .values(next_index=bindparam("to"), status=bindparam("new_status"),
                    catch_failures=bindparam("failures"), finished_at=bindparam("finished")))
_AT = (_T.c.session_id == bindparam("sid"), _T.c.index == bindparam("at"))
_TRIAL_COLS = (_T.c.id, _T.c.image_id, _T.c.left_id, _T.c.right_id, _T.c.kind, _T.c.correct_side)
_SHOW_FRESH = update(_T).where(*_AT).values(first_shown_at=bindparam("now")).returning(*_TRIAL_COLS)
_TRIAL_AT = select(*_TRIAL_COLS, _T.c.first_shown_at).where(*_AT)
# A vote's writes on PostgreSQL as ONE statement, so that in autocommit mode the vote is one
# round trip (two when it must read _VOTE_ROW: see StudyService._ahead) instead of six (BEGIN,
# read, three writes, COMMIT): move the session on (guarded as _MOVE_ON), and only if it moved,
# insert the vote, the end-of-session event if any, and mark the next trial shown while the
# session goes on. SQLite has no data-modifying CTEs: there _record runs the same writes one by
# one in its transaction.
def _param(name: str, column):
    """A parameter typed as `column` (a NULL in a SELECT list would otherwise be text)."""
    return cast(bindparam(name, type_=column.type), column.type)


_MOVED = _MOVE_ON.returning(_S.c.id, _S.c.status).cte("moved")
_VOTE_FIELDS = ("trial_id", "session_id", "choice", "server_ms", "client_ms", "client", "created_at")
_RECORDED = insert(_V).from_select(
    list(_VOTE_FIELDS),
    select(*(_MOVED.c.id if f == "session_id" else _param("now" if f == "created_at" else f, _V.c[f])
             for f in _VOTE_FIELDS))).returning(_V.c.id).cte("recorded")
_E = Event.__table__
_ENDED = insert(_E).from_select(
    ["study_id", "session_id", "kind", "payload", "created_at"],
    select(_param("study", _E.c.study_id), _MOVED.c.id, _param("event", _E.c.kind),
           _param("event_payload", _E.c.payload), _param("now", _E.c.created_at))
    .where(_param("event", _E.c.kind).is_not(None))).cte("ended")
_SHOWN = (update(_T).where(_T.c.session_id == _MOVED.c.id, _T.c.index == bindparam("to"), _MOVED.c.status == "active")
          .values(first_shown_at=bindparam("now")).returning(*_TRIAL_COLS).cte("shown"))
_RECORD = (select(_RECORDED.c.id.label("vote_id"), *_SHOWN.c)
           .select_from(_RECORDED.outerjoin(_SHOWN, true())).add_cte(_ENDED))
_SESSION = select(Session).where(Session.token == bindparam("token"), Session.study_id == bindparam("study"))
_SESSION_LOCKED = _SESSION.with_for_update()
_INSERT_TRIALS = insert(_T).returning(_T.c.index, _T.c.id)
# PostgreSQL: the same insert as one short statement of column arrays (unnest runs them in
# lockstep), which psycopg converts once and the server prepares. A multi-row VALUES list of
# 40 trials x 10 columns is a 400-parameter text that psycopg parses again at every consent.
_TRIAL_FIELDS = ("session_id", "index", "kind", "image_id", "left_id", "right_id", "swapped", "correct_side",
                 "repeat_of", "first_shown_at")
_INSERT_TRIAL_ARRAYS = insert(_T).from_select(
    list(_TRIAL_FIELDS), select(*(func.unnest(bindparam(f, type_=ARRAY(_T.c[f].type))) for f in _TRIAL_FIELDS))
).returning(_T.c.index, _T.c.id)
_SET_REPEAT = update(_T).where(_T.c.id == bindparam("tid")).values(repeat_of=bindparam("of"))
_SESSION_ID = select(_S.c.id).where(_S.c.token == bindparam("token"), _S.c.study_id == bindparam("study"))
# Counts an event against its session's cap; matches no row once the cap is reached.
_COUNT_EVENT = (update(_S).where(_S.c.id == bindparam("sid"), _S.c.client_events < bindparam("cap"))
                .values(client_events=_S.c.client_events + 1))
# Conditional: of two concurrent first shows, the earlier time stays.
_MARK_SHOWN = (update(_T).where(_T.c.id == bindparam("tid"), _T.c.first_shown_at.is_(None))
               .values(first_shown_at=bindparam("now")))


class StudyService:
    def __init__(self, cfg: StudyConfig, engine, *, seed: int | None = None):
        self.cfg = cfg
        self.engine = engine
        self.Session = dbmod.session_factory(engine)
        self.Reader = dbmod.session_factory(dbmod.read_only(engine))
        self._rng = random.Random(seed)
        # SQLite has one writer at a time. Threads of this process queue on a lock instead of
        # polling the busy timeout (whose sleeps of up to 100 ms would dominate the tail latency);
        # other processes still wait through busy_timeout.
        self._writer = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        # Votes on PostgreSQL run in autocommit mode: a vote's read and its one write statement
        # (_RECORD, guarded by what was read) need no transaction around them, and psycopg sends
        # no BEGIN and no COMMIT. On SQLite a vote is one BEGIN IMMEDIATE transaction.
        self._postgres = engine.dialect.name == "postgresql"
        self._votes = engine.execution_options(isolation_level="AUTOCOMMIT") if self._postgres else engine
        # What the next vote of a session would read (_VOTE_ROW), by trial id: a consent and a
        # vote's write know the trial shown next, so the vote on it needs no read (on PostgreSQL
        # a round trip, and the CPU of both sides). Taken out when used, so a retry reads the
        # database. A row here can be stale (another server process, a concurrent request, a
        # commit that failed): then the write's guard (_MOVE_ON) matches nothing and the vote
        # retries with a read.
        self._ahead: dict[int, _VoteRow] = {}
        self._ahead_lock = threading.Lock()
        # PostgreSQL: the common vote is awaited on the event loop instead (vote_on_loop).
        self._loop_record = loop_db.CompiledStatement(_RECORD, engine) if self._postgres else None
        self._loop_connections = loop_db.LoopConnections(engine) if self._postgres else None
        # The planner's matrices are a few conditions wide: threaded OpenBLAS spends far more
        # waking and spinning its threads than it saves (in a server, ~20 ms of CPU per consent,
        # taken from the votes), so planning uses one BLAS thread (as study.ratings' solvers).
        self._blas = ThreadpoolController()
        self._sync_study()
        # SQLite commits in id order, so its deltas miss nothing; PostgreSQL's can (study/history.py).
        self._pair_history = PairHistory(self._pair_keys, full_every_s=60.0 if self._postgres else None)

    @contextlib.contextmanager
    def _tx(self):
        """One transaction (committed at the end, rolled back on any exception)."""
        with self._writer, self.Session.begin() as db:
            yield db

    @classmethod
    def open(cls, study_file: str | Path, database_url: str, *, seed: int | None = None) -> "StudyService":
        """Load the study file, migrate the database to head and register the study in it."""
        cfg = load(study_file)
        engine = dbmod.make_engine(database_url)
        dbmod.upgrade(engine)
        return cls(cfg, engine, seed=seed)

    # -- study registration -------------------------------------------------------------------

    def _sync_study(self) -> None:
        """Insert what is missing: the study, its conditions, images and built stimuli."""
        cfg = self.cfg
        manifest = read_manifest(cfg.stimuli_dir)
        with self._tx() as db:
            study = db.get(Study, cfg.id)
            if study is None:
                db.add(Study(id=cfg.id, title=cfg.title, digest=cfg.digest, config=cfg.source.read_text()))
            elif study.digest != cfg.digest:
                # Keep the stored text as it was: votes already cast refer to it. The event
                # records that the file changed, with the new hash.
                _event(db, cfg.id, None, "config_changed", {"digest": cfg.digest})
            conds = {c.key: c for c in db.scalars(select(Condition).where(Condition.study_id == cfg.id))}
            for c in cfg.conditions:
                if c.key not in conds:
                    conds[c.key] = Condition(study_id=cfg.id, key=c.key, method=c.method, target_bpp=c.bpp)
                    db.add(conds[c.key])
            images = {i.key: i for i in db.scalars(select(Image).where(Image.study_id == cfg.id))}
            db.flush()
            for spec in cfg.images:
                entry = manifest.get(spec.key)
                if entry is None:
                    continue    # not built yet: sessions refuse to start until it is
                im = images.get(spec.key)
                if im is None:
                    im = images[spec.key] = Image(study_id=cfg.id, key=spec.key, width=entry["width"],
                                                  height=entry["height"], credit=spec.credit)
                    db.add(im)
                    db.flush()
                have = {x.key: x for x in db.scalars(select(Stimulus).where(Stimulus.image_id == im.id))}
                for key, st in entry["stimuli"].items():
                    old = have.get(key)
                    if old is None:
                        cond = conds.get(key)
                        db.add(Stimulus(image_id=im.id, key=key, condition_id=cond.id if cond else None,
                                        public_id=secrets.token_hex(12), path=st["file"], bpp=st.get("bpp"),
                                        sha256=st["sha256"]))
                    elif old.sha256 != st["sha256"]:
                        self._replace_stimulus(db, spec.key, old, st)
            db.flush()
            rows = db.execute(select(Stimulus.id, Stimulus.image_id, Stimulus.key, Stimulus.public_id,
                                     Stimulus.path).join(Image).where(Image.study_id == cfg.id)).all()
        # Stimuli never change once registered: the hot paths look them up here, not in the db.
        key_of = {im.id: im.key for im in images.values()}
        self._files = {pid: cfg.stimuli_dir / path for _, _, _, pid, path in rows}
        self._public = {sid: pid for sid, _, _, pid, _ in rows}
        self._reference = {iid: pid for _, iid, key, pid, _ in rows if key == scheduler.REFERENCE}
        self._sizes = {im.id: (im.width, im.height) for im in images.values()}
        self._image_ids = {key: im.id for key, im in images.items()}
        self._stimulus_ids = {(key_of[iid], key): sid for sid, iid, key, _, _ in rows}
        self._stimulus_key_of = {sid: key for sid, _, key, _, _ in rows}
        self._image_key_of = key_of
        self._stimuli_keys: dict[str, set[str]] = {}
        for image, key in self._stimulus_ids:
            self._stimuli_keys.setdefault(image, set()).add(key)

    def _replace_stimulus(self, db, image: str, old: Stimulus, st: dict) -> None:
        """A rebuilt stimulus: fine while no trial shows it; after that, votes refer to the old
        pixels, and the study must go on under a new id instead."""
        shown = select(func.count()).select_from(Trial).where((Trial.left_id == old.id) | (Trial.right_id == old.id))
        if db.scalar(shown):
            raise RuntimeError(f"the stimulus {image}/{old.key} of study {self.cfg.id!r} was rebuilt after raters "
                               "saw it: votes refer to the old image. Restore the old files, or give the study a new id.")
        old.path, old.sha256, old.bpp = st["file"], st["sha256"], st.get("bpp")
        _event(db, self.cfg.id, None, "stimulus_replaced", {"image": image, "key": old.key, "sha256": st["sha256"]})

    def example(self) -> tuple[str, str, int, int] | None:
        """Public ids of the reference and the catch copy of an image, and its size, for the
        instructions; None when the study has no catch copies."""
        for im in self.cfg.images:
            ref, bad = (self._stimulus_ids.get((im.key, k)) for k in (scheduler.REFERENCE, scheduler.CATCH))
            if ref and bad:
                return self._public[ref], self._public[bad], *self._sizes[self._image_ids[im.key]]
        return None

    def stimulus_file(self, public_id: str) -> Path:
        path = self._files.get(public_id)
        if path is None or not path.is_file():
            raise NotFound("no such image")
        return path

    def _images(self) -> list[str]:
        """Images whose reference, catch copy (if needed) and every condition are registered."""
        need = {c.key for c in self.cfg.conditions} | {scheduler.REFERENCE}
        if self.cfg.catch_trials:
            need.add(scheduler.CATCH)
        ready = [key for key, have in self._stimuli_keys.items() if need <= have]
        if not ready:
            raise Conflict(f"the stimuli of study {self.cfg.id!r} are not built yet: "
                           f"run `python -m study build-stimuli {self.cfg.source}`")
        return ready

    # -- sessions -------------------------------------------------------------------------------

    def start_session(self, who: Participant, user_agent: str | None = None,
                      token: str | None = None) -> SessionState:
        """Resume the rater's session, or start a new one if the study allows it.

        A platform participant resumes the session of the same platform ids (a reload of the
        completion page shows the end again); the same PROLIFIC_PID or workerId with other ids
        (another submission) starts a new session if the study allows more, and is refused
        while the first one is unfinished. A visitor resumes their unfinished session; when
        they have used all their sessions, the last one is returned as it is (finished).
        `token`: the session the browser kept; resumed when it belongs to `who` (a visitor: to
        whoever holds it), else ignored (a shared computer, a new submission).
        """
        if who.preview:
            raise Conflict("this is a preview: accept the task to start")
        if not self.cfg.platform.accepts(who.platform):
            raise Forbidden(self.cfg.platform.refusal(who.platform))
        for attempt in range(5):    # lost races on the unique keys are retried, not reported
            try:
                with self._tx() as db:
                    kept = self._kept(db, token, who) if token else None
                    if kept is not None:
                        self._client_event(db, kept.id, "resume")
                        return self._state(db, kept)
                    return self._start(db, who, user_agent)
            except IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _start(self, db, who: Participant, user_agent: str | None) -> SessionState:
        cfg = self.cfg
        rater = db.scalar(select(Rater).where(Rater.study_id == cfg.id, Rater.platform == who.platform,
                                              Rater.external_id == who.external_id))
        if rater is None:
            rater = Rater(study_id=cfg.id, platform=who.platform, external_id=who.external_id)
            db.add(rater)
            db.flush()
            sessions = []   # a rater inserted by this transaction has none (a query less)
        else:
            sessions = db.scalars(select(Session).where(Session.rater_id == rater.id).order_by(Session.ordinal)).all()
        open_ = [s for s in sessions if s.status in ("consent", "active")]
        if who.platform == "anonymous":
            if open_:
                self._client_event(db, open_[-1].id, "resume")
                return self._state(db, open_[-1])
            if len(sessions) >= cfg.sessions_per_rater:
                self._client_event(db, sessions[-1].id, "limit_reached")
                return self._state(db, sessions[-1])
        else:
            same = [s for s in sessions if _same_submission(s, who)]
            if same:
                self._client_event(db, same[-1].id, "resume")
                return self._state(db, same[-1])
            # Another submission of a known id: its sessions are not shown (their ids were not given).
            if open_:
                raise Conflict("this id has a session in progress that was opened from another link: "
                               "go back to that submission's link")
            if len(sessions) >= cfg.sessions_per_rater:
                raise Conflict(f"you have taken part {len(sessions)} time(s), as often as this study allows")
        self._images()      # refuse now, not after the consent, when the study cannot run
        s = Session(token=secrets.token_urlsafe(32), study_id=cfg.id, rater_id=rater.id,
                    ordinal=len(sessions) + 1, status="consent", next_index=0,
                    n_trials=cfg.trials_per_session, catch_failures=0,
                    platform_study_id=who.platform_study_id, platform_session_id=who.platform_session_id,
                    user_agent=(user_agent or "")[:400] or None)
        db.add(s)
        db.flush()
        _event(db, cfg.id, s.id, "start", {"platform": who.platform, "ordinal": s.ordinal})
        return self._state(db, s)

    def _kept(self, db, token: str, who: Participant) -> Session | None:
        """The session of a token the browser kept, if it is `who`'s."""
        try:
            s = self._session(db, token)
        except NotFound:
            return None
        rater = db.get(Rater, s.rater_id)
        if rater.platform != who.platform:
            return None
        if who.platform != "anonymous" and not (rater.external_id == who.external_id and _same_submission(s, who)):
            return None
        return s

    def _client_event(self, db, session_id: int, kind: str, payload: dict | None = None) -> bool:
        """Log an event that a client can cause at will (telemetry, resumes, replayed or refused
        votes), unless its session has logged MAX_CLIENT_EVENTS of them: False then."""
        if db.execute(_COUNT_EVENT, {"sid": session_id, "cap": MAX_CLIENT_EVENTS}).rowcount != 1:
            return False
        _event(db, self.cfg.id, session_id, kind, payload)
        return True

    def _plan(self, db) -> list[scheduler.PlannedTrial]:
        """A new session's trials, from the history so far (`db`: a read-only session). Reads
        only, outside the write lock: the planning takes milliseconds that queued votes should
        not wait for."""
        cfg = self.cfg
        images = self._images()
        counts, wins = self._history(db)
        # The limit is process-wide: two planners entering and leaving it out of step would
        # leave the process at the other's setting, so they take turns (3 ms each).
        with _ONE_PLANNER, self._blas.limit(limits=1, user_api="blas"):
            return scheduler.plan_session(
                images=images, conditions=[c.key for c in cfg.conditions], regular=cfg.regular_trials,
                catch=cfg.catch_trials, repeats=cfg.repeat_trials, strategy=cfg.scheduler,
                randomise_sides=cfg.randomise_sides, counts=counts, wins=wins, rng=self._rng)

    def _store_plan(self, db, session_id: int, plan: list[scheduler.PlannedTrial],
                    now: datetime) -> "_Shown":
        """Insert the session's trials, the first one shown `now` (the consent's answer shows
        it); returns that first trial."""
        rows = [{"session_id": session_id, "index": i, "kind": t.kind, "image_id": self._image_ids[t.image],
                 "left_id": self._stimulus_ids[(t.image, t.left)], "right_id": self._stimulus_ids[(t.image, t.right)],
                 "swapped": t.swapped, "correct_side": t.correct_side, "repeat_of": None,
                 "first_shown_at": now if i == 0 else None}
                for i, t in enumerate(plan)]
        if self._postgres:
            ids = dict(db.execute(_INSERT_TRIAL_ARRAYS, {f: [r[f] for r in rows] for f in _TRIAL_FIELDS}).all())
        else:
            ids = dict(db.execute(_INSERT_TRIALS, rows).all())    # index -> id, in one statement
        repeats = [{"tid": ids[i], "of": ids[t.repeat_of]} for i, t in enumerate(plan) if t.repeat_of is not None]
        if repeats:     # one executemany (psycopg pipelines it: one round trip)
            db.execute(_SET_REPEAT, repeats)
        first = rows[0]
        return _Shown(ids[0], first["image_id"], first["left_id"], first["right_id"], first["kind"],
                      first["correct_side"])

    def _history(self, db):
        """Planned regular comparisons per (image, pair), and wins per ordered condition pair."""
        return self._pair_history.read(db)

    def _pair_keys(self, image_id: int, left: int, right: int) -> tuple[str, str, str] | None:
        keys = self._image_key_of.get(image_id), self._stimulus_key_of.get(left), self._stimulus_key_of.get(right)
        return None if None in keys else keys   # None: another study's, or registered since this process started

    def _session_id(self, db, token: str) -> int:
        """The id of the session `token` (a Core query: `db` may be a Connection)."""
        _check_token(token)
        sid = db.execute(_SESSION_ID, {"token": token, "study": self.cfg.id}).scalar()
        if sid is None:
            raise NotFound("unknown session")
        return sid

    def _session(self, db, token: str, lock: bool = False) -> Session:
        _check_token(token)
        s = db.scalar(_SESSION_LOCKED if lock else _SESSION, {"token": token, "study": self.cfg.id})
        if s is None:
            raise NotFound("unknown session")
        return s

    def _state(self, db, s, mark_shown: bool = False, shown=None) -> SessionState:
        """State of session `s` (an ORM row or a Core row with the same column names).
        shown: the current trial's row, already marked shown (a vote's write returns it)."""
        trial = None
        if s.status == "active" and s.next_index < s.n_trials:
            at = {"sid": s.id, "at": s.next_index}
            if shown is not None:
                t = shown
            else:
                t = db.execute(_TRIAL_AT, at).one()
                if mark_shown and t.first_shown_at is None:
                    db.execute(_MARK_SHOWN, {"tid": t.id, "now": utcnow()})
            ref = self._reference[t.image_id] if self.cfg.show_reference else None
            trial = TrialView(t.id, s.next_index, s.n_trials, ref, self._public[t.left_id], self._public[t.right_id],
                              *self._sizes[t.image_id], allow_tie=self.cfg.allow_tie and t.kind != "catch")
        if s.status in ("consent", "active"):
            return SessionState(s.token, s.status, s.next_index, s.n_trials, trial, self.cfg.consent_version)
        cfg, plat = self.cfg, self.cfg.platform
        code = plat.code_for(s.status)
        reason = {"completed": f"You have answered all {s.n_trials} comparisons. Thank you!",
                  "screened_out": "The study ended early: in {} check trial{}, where one image is clearly damaged, "
                                  "the damaged image was chosen.".format(cfg.max_catch_failures,
                                                                         "s" if cfg.max_catch_failures != 1 else ""),
                  "declined": "You did not give consent, so the study ends here. No answers were recorded."}[s.status]
        if code and plat.allow_anonymous and db.scalar(
                select(Rater.platform).join(Session, Session.rater_id == Rater.id).where(Session.id == s.id)) == "anonymous":
            code = None     # a visitor without a platform id has no submission to complete
        return SessionState(s.token, s.status, s.next_index, s.n_trials, None, cfg.consent_version,
                            code, plat.completion_url(code) if code else None, reason)

    def state(self, token: str) -> SessionState:
        """The session as it stands, its current trial marked as shown (the server's clock starts)."""
        with self._tx() as db:
            return self._state(db, self._session(db, token), mark_shown=True)

    def consent(self, token: str, agree: bool, version: str) -> SessionState:
        # The trials are planned now, not at the start: pages opened and left without consent
        # neither hold trials nor count in the balance of the pairs. A plan made for a session
        # that another request consented meanwhile is dropped below.
        with self.Reader() as db:
            waiting = self._session(db, token).status == "consent"     # 404 for an unknown token
            plan = self._plan(db) if agree and waiting else None
        with self._tx() as db:
            s = self._session(db, token, lock=True)
            if s.status != "consent":
                return self._state(db, s, mark_shown=True)     # a repeated click changes nothing
            if str(version) != self.cfg.consent_version:
                raise Conflict("the consent text has changed: reload the page")
            now = utcnow()
            shown = None
            if agree:
                shown = self._store_plan(db, s.id, plan, now)
                s.status, s.consent_version, s.consented_at = "active", self.cfg.consent_version, now
                self._keep_ahead(_VoteRow(
                    id=shown.id, index=0, kind=shown.kind, correct_side=shown.correct_side, first_shown_at=now,
                    sid=s.id, study_id=self.cfg.id, token=s.token, status="active", next_index=0,
                    n_trials=s.n_trials, catch_failures=s.catch_failures))
            else:
                s.status, s.finished_at = "declined", now
            _event(db, self.cfg.id, s.id, "consent" if agree else "declined", {"version": self.cfg.consent_version})
            db.flush()
            return self._state(db, s, shown=shown)

    # -- votes ----------------------------------------------------------------------------------

    def vote(self, token: str, trial_id: int, choice: str, client_ms: float | None = None,
             client: dict | None = None) -> VoteResult:
        args = self._vote_args(token, trial_id, choice, client_ms, client)
        with self._writer, self._votes.connect() as conn:
            return self._vote_on(conn, *args)

    def _vote_args(self, token, trial_id, choice, client_ms, client) -> tuple:
        """The checks of a vote that need no database; the arguments as _vote_on takes them."""
        if not isinstance(token, str):
            raise NotFound("unknown session")
        if choice not in CHOICES:
            raise Invalid(f"choice must be one of {', '.join(CHOICES)}")
        if choice == "tie" and not self.cfg.allow_tie:
            raise Invalid("this study has no \"can't tell\" answer: choose left or right")
        if client_ms is not None and not (0 <= client_ms < 86_400_000):
            client_ms = None    # a broken client clock is not worth refusing a vote over
        return token, int(trial_id), choice, client_ms, _small_json(client)

    def _vote_on(self, conn, token, trial_id, choice, client_ms, client) -> VoteResult:
        """The vote's transaction on Core connection `conn` (no ORM unit of work on the hot path)."""
        try:
            with conn.begin():
                return self._vote(conn, token, trial_id, choice, client_ms, client)
        except (IntegrityError, _Lost):
            # The same trial was voted on concurrently and the other request won: answer with
            # that vote, exactly as for a resubmission.
            with conn.begin():
                return self._vote(conn, token, trial_id, choice, client_ms, client)
        except Forbidden as e:
            with conn.begin():
                self._client_event(conn, self._session_id(conn, token), "vote_refused",
                                   {"trial_id": trial_id, "reason": e.message})
            raise

    def _vote(self, db, token, trial_id, choice, client_ms, client) -> VoteResult:
        # The hot path: a read (from _ahead where it can), the decision here, then one write (_record).
        row = self._take_ahead(trial_id) or db.execute(_VOTE_ROW, {"trial_id": trial_id}).first()
        try:
            fresh = self._check(row, token, choice)
        except Forbidden:
            self._session_id(db, token)     # 404 for an unknown token, else:
            raise
        if not fresh:
            s = _Row(id=row.sid, token=row.token, status=row.status, next_index=row.next_index, n_trials=row.n_trials)
            self._client_event(db, s.id, "vote_replayed", {"trial_id": row.id, "choice": choice})
            return VoteResult(row.id, row.stored, True, self._state(db, s, mark_shown=True))
        params, event = self._writes(row, choice, client_ms, client)
        return self._voted(db, row, params, self._record(db, params, event))

    async def vote_on_loop(self, token: str, trial_id: int, choice: str, client_ms: float | None = None,
                           client: dict | None = None) -> VoteResult | None:
        """vote() on the event loop, for the common PostgreSQL vote: the trial's row is in
        _ahead, the vote is fresh and the session goes on, so it is one statement (_RECORD) awaited
        on a loop connection (study.loop_db). None for every other vote, and whenever that
        statement cannot be sent or loses a race: then vote() in a worker thread answers it (the
        row was put back where it was not used; a lost race makes vote() read the database)."""
        token, trial_id, choice, client_ms, client = self._vote_args(token, trial_id, choice, client_ms, client)
        row = self._take_ahead(trial_id) if self._loop_record is not None else None
        if row is None:
            return None
        try:
            fresh = self._check(row, token, choice)
        except StudyError:
            fresh = False
        params = self._writes(row, choice, client_ms, client)[0] if fresh else None
        if params is None or params["new_status"] != "active":  # a refusal, a replay, an end: they read the database
            self._keep_ahead(row)
            return None
        try:
            shown = await self._loop_connections.fetch_one(
                self._loop_record, {**params, "study": self.cfg.id, "event": None, "event_payload": None})
        except loop_db.Unavailable:
            self._keep_ahead(row)    # safe even if the statement ran: the write's guard catches a stale row
            return None
        if shown is None or shown.id is None:    # lost to a concurrent vote; or no next trial (never planned so)
            return None
        return self._voted(None, row, params, shown)

    def _check(self, row, token: str, choice: str) -> bool:
        """Whether `token` may vote `choice` on the trial of `row` (a _VOTE_ROW) now; False when it
        was voted on already (the stored vote is the answer). Raises the refusals."""
        if row is None or row.study_id != self.cfg.id or not hmac.compare_digest(row.token.encode(), token.encode()):
            raise Forbidden("this trial does not belong to your session")
        if row.stored is not None:
            return False
        if row.status != "active":
            raise Conflict("this session is finished")  # (a session waiting for consent has no trials)
        if row.index != row.next_index:
            raise Conflict(f"this is not the current trial (you are at trial {row.next_index + 1})")
        if choice == "tie" and row.kind == "catch":     # a check trial has a right answer
            raise Invalid("this trial has no \"can't tell\" answer: choose left or right")
        return True

    def _writes(self, row, choice, client_ms, client) -> tuple[dict, tuple[str, dict | None] | None]:
        """What a fresh vote on `row` writes (_record's parameters), and the session's end event if it ends."""
        now = utcnow()
        server_ms = None
        if row.first_shown_at is not None:
            shown = row.first_shown_at
            shown = shown if shown.tzinfo else shown.replace(tzinfo=timezone.utc)   # SQLite drops tz
            server_ms = (now - shown).total_seconds() * 1000
        status, finished, event = row.status, None, None
        failures = row.catch_failures + (row.kind == "catch" and choice != row.correct_side)
        limit = self.cfg.max_catch_failures
        if limit is not None and failures >= limit:
            status, finished, event = "screened_out", now, ("screened_out", {"catch_failures": failures})
        elif row.next_index + 1 >= row.n_trials:
            status, finished, event = "completed", now, ("completed", None)
        return {"trial_id": row.id, "choice": choice, "server_ms": server_ms, "client_ms": client_ms,
                "client": client, "now": now, "sid": row.sid, "at": row.next_index, "to": row.next_index + 1,
                "new_status": status, "failures": failures, "finished": finished}, event

    def _voted(self, db, row, p: dict, shown) -> VoteResult:
        """The answer to a vote that _record wrote with parameters `p`; `shown`: the next trial's
        row it returned (None when the session ended; `db` is then read for the end's code)."""
        after = _Row(id=row.sid, token=row.token, status=p["new_status"], next_index=p["to"], n_trials=row.n_trials)
        if shown is not None:
            self._keep_ahead(_VoteRow(
                id=shown.id, index=after.next_index, kind=shown.kind, correct_side=shown.correct_side,
                first_shown_at=p["now"], sid=row.sid, study_id=row.study_id, token=row.token, status=after.status,
                next_index=after.next_index, n_trials=row.n_trials, catch_failures=p["failures"]))
        return VoteResult(row.id, p["choice"], False, self._state(db, after, mark_shown=True, shown=shown))

    def _take_ahead(self, trial_id: int) -> "_VoteRow | None":
        with self._ahead_lock:
            return self._ahead.pop(trial_id, None)

    def _keep_ahead(self, row: "_VoteRow") -> None:
        with self._ahead_lock:
            self._ahead[row.id] = row
            if len(self._ahead) > MAX_AHEAD:   # the oldest first: sessions left unfinished
                del self._ahead[next(iter(self._ahead))]

    def _record(self, db, p: dict, event: tuple[str, dict | None] | None):
        """A vote's writes: move the session on from p["at"], insert the vote and the end event,
        mark the next trial shown; returns that trial's row (None when the session ended).
        Raises _Lost when a concurrent vote moved the session on first (nothing is written)."""
        if self._postgres:
            kind, payload = event or (None, None)
            r = db.execute(_RECORD, {**p, "study": self.cfg.id, "event": kind, "event_payload": payload}).first()
            if r is None:
                raise _Lost()
            return r if r.id is not None else None
        # The unique trial_id is checked here, before the session moves on.
        db.execute(_INSERT_VOTE, {**{f: p[f] for f in ("trial_id", "choice", "server_ms", "client_ms", "client")},
                                  "session_id": p["sid"], "created_at": p["now"]})
        if event:
            _event(db, self.cfg.id, p["sid"], *event)
        if db.execute(_MOVE_ON, p).rowcount != 1:
            raise _Lost()
        if p["new_status"] != "active":
            return None
        return db.execute(_SHOW_FRESH, {"sid": p["sid"], "at": p["to"], "now": p["now"]}).one()

    def log_event(self, token: str, kind: str, payload: dict | None = None) -> None:
        """Client telemetry (zoom, pan, focus changes, ...): appended, never interpreted here."""
        if kind not in CLIENT_EVENTS:
            raise Invalid(f"unknown event kind; one of {', '.join(sorted(CLIENT_EVENTS))}")
        payload = _small_json(payload)
        with self._tx() as db:
            if not self._client_event(db, self._session(db, token).id, kind, payload):
                raise Conflict(f"this session has logged {MAX_CLIENT_EVENTS} events, as many as it may")

    # -- reading the results --------------------------------------------------------------------

    def votes_frame(self):
        """One row per vote in the table layout of study.ratings / study.quality (a = left as
        shown). Rater ids are study.pseudonym's keyed pseudonyms, never the platform's ids."""
        import pandas as pd

        from study.pseudonym import pseudonym, study_key

        L, R = aliased(Stimulus), aliased(Stimulus)
        LC, RC = aliased(Condition), aliased(Condition)
        q = (select(Rater.platform, Rater.external_id, Session.id, Image.key, Trial.id, Trial.index, Trial.kind,
                    Trial.repeat_of, Trial.correct_side, L.key, R.key, LC.method, RC.method, L.bpp, R.bpp,
                    LC.target_bpp, RC.target_bpp, Vote.choice, Vote.server_ms, Vote.client_ms, Vote.created_at)
             .select_from(Vote).join(Trial, Vote.trial_id == Trial.id)
             .join(Session, Trial.session_id == Session.id).join(Rater, Session.rater_id == Rater.id)
             .join(Image, Trial.image_id == Image.id)
             .join(L, Trial.left_id == L.id).join(R, Trial.right_id == R.id)
             .outerjoin(LC, L.condition_id == LC.id).outerjoin(RC, R.condition_id == RC.id)
             .where(Session.study_id == self.cfg.id).order_by(Vote.id))
        cols = ["platform", "external_id", "session", "image", "trial_id", "trial_index", "trial_kind",
                "repeat_of", "correct_side", "condition_a", "condition_b", "method_a", "method_b", "bpp_a",
                "bpp_b", "target_bpp_a", "target_bpp_b", "choice", "server_ms", "client_ms", "timestamp"]
        with self.Session() as db:
            df = pd.DataFrame(db.execute(q).all(), columns=cols)
        side = {"left": "a", "right": "b"}
        key = study_key(self)
        df.insert(0, "rater", [pseudonym(key, p, e) for p, e in zip(df["platform"], df["external_id"])])
        df["winner"] = df["choice"].map({**side, "tie": "tie"})
        df["is_catch"] = df["trial_kind"] == "catch"
        df["catch_correct"] = df["correct_side"].map(side)
        df["response_ms"] = df["client_ms"].fillna(df["server_ms"])   # the browser's clock when it sent one
        return df.drop(columns=["platform", "external_id", "correct_side"])


def _event(db, study_id: str, session_id: int | None, kind: str, payload: dict | None = None) -> None:
    db.execute(insert(Event.__table__).values(study_id=study_id, session_id=session_id, kind=kind,
                                              payload=payload, created_at=utcnow()))


def _check_token(token) -> None:
    """NotFound for anything that cannot be a session token, before it reaches a query."""
    if not isinstance(token, str) or not 10 <= len(token) <= 64:
        raise NotFound("unknown session")


def _same_submission(s: Session, who: Participant) -> bool:
    return (s.platform_study_id, s.platform_session_id) == (who.platform_study_id, who.platform_session_id)


class _Lost(Conflict):
    """A vote's write found its session moved on by a concurrent vote (nothing was written):
    retried once, and answered 409 if it happens again."""

    def __init__(self):
        super().__init__("the session moved on meanwhile: reload")


@dataclass(frozen=True)
class _Shown:
    """The _TRIAL_COLS of a trial just marked shown (by a consent: see _store_plan)."""
    id: int
    image_id: int
    left_id: int
    right_id: int
    kind: str
    correct_side: str | None


@dataclass(frozen=True, slots=True)
class _VoteRow:
    """The columns of _VOTE_ROW, as a consent or a vote's write left them (StudyService._ahead)."""
    id: int
    index: int
    kind: str
    correct_side: str | None
    first_shown_at: datetime
    sid: int
    study_id: str
    token: str
    status: str
    next_index: int
    n_trials: int
    catch_failures: int
    stored: str | None = None


@dataclass(frozen=True)
class _Row:
    """The session columns _state reads, after a vote changed them."""
    id: int
    token: str
    status: str
    next_index: int
    n_trials: int


def _small_json(value: dict | None) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(json.dumps(value)) > MAX_EVENT_BYTES:
        raise Invalid(f"client data must be a JSON object under {MAX_EVENT_BYTES} bytes")
    return value

