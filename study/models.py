"""SQLAlchemy 2 schema of the study store (the Alembic migrations create exactly this).

Votes and events are append-only (database triggers refuse UPDATE and DELETE, see the initial
migration); a trial index is unique within its session and a trial has at most one vote.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

CHOICES = ("left", "right", "tie")   # tie: "can't tell", only where the study allows it
TRIAL_KINDS = ("regular", "catch", "repeat")
SESSION_STATES = ("consent", "active", "completed", "screened_out", "declined")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64))          # sha256 of the YAML file
    config: Mapped[str] = mapped_column(Text)                # the YAML text itself
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Condition(Base):
    __tablename__ = "conditions"
    __table_args__ = (UniqueConstraint("study_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    target_bpp: Mapped[float] = mapped_column(Float)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("study_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    credit: Mapped[str] = mapped_column(Text, default="")


class Stimulus(Base):
    """One image file shown to raters: the reference, a condition's decoding, or a catch copy."""
    __tablename__ = "stimuli"
    __table_args__ = (UniqueConstraint("image_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))             # "reference", "catch" or a condition key
    condition_id: Mapped[int | None] = mapped_column(ForeignKey("conditions.id"), nullable=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)  # opaque id used in URLs
    path: Mapped[str] = mapped_column(Text)                  # relative to the stimuli folder
    bpp: Mapped[float | None] = mapped_column(Float, nullable=True)  # measured, not target
    sha256: Mapped[str] = mapped_column(String(64))


class Rater(Base):
    __tablename__ = "raters"
    __table_args__ = (UniqueConstraint("study_id", "platform", "external_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    platform: Mapped[str] = mapped_column(String(16))        # prolific | mturk | anonymous
    external_id: Mapped[str] = mapped_column(String(128))    # PROLIFIC_PID, workerId or a browser id
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Session(Base):
    __tablename__ = "sessions"
    # The ordinal makes the per-rater session limit hold under concurrent starts.
    __table_args__ = (UniqueConstraint("rater_id", "ordinal"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)   # secret bearer value
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="consent")
    next_index: Mapped[int] = mapped_column(Integer, default=0)   # first trial without a vote
    n_trials: Mapped[int] = mapped_column(Integer, default=0)
    catch_failures: Mapped[int] = mapped_column(Integer, default=0)
    # Events the client caused at will (telemetry, resumes, replays): capped, see service._client_event.
    client_events: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    platform_study_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    platform_session_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    consent_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    consented_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(400), nullable=True)


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("session_id", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))            # regular | catch | repeat
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    left_id: Mapped[int] = mapped_column(ForeignKey("stimuli.id"))
    right_id: Mapped[int] = mapped_column(ForeignKey("stimuli.id"))
    swapped: Mapped[bool] = mapped_column(Boolean)           # True: the scheduler's first item is on the right
    repeat_of: Mapped[int | None] = mapped_column(ForeignKey("trials.id"), nullable=True)
    correct_side: Mapped[str | None] = mapped_column(String(8), nullable=True)  # catch trials
    first_shown_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Vote(Base):
    __tablename__ = "votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), unique=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    choice: Mapped[str] = mapped_column(String(8))           # left | right (as shown) | tie
    server_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # first shown -> vote
    client_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # images loaded -> key
    client: Mapped[dict | None] = mapped_column(JSON, nullable=True)       # viewport, dpr, zooms
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Event(Base):
    """Append-only log of everything that happened (starts, consent, shows, refusals, ...)."""
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(String(64), index=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
