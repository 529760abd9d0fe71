"""The one pseudonym of a rater, wherever rater ids leave the database: the Results tab,
`python -m study export-votes` and the export bundle.

A pseudonym is HMAC-SHA256 of the platform and the platform's id under a random key that only
the server holds: kept in the study's own event log, one per study, made on first use. Whoever
sees a pseudonym cannot test a known Prolific or MTurk id against it (a plain hash of the id,
salted with the study id or not, can be recomputed by anyone who knows the id); whoever holds the
database holds the raw ids anyway. The same rater keeps the same pseudonym from one call to the
next and from one export to the next.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import weakref

from sqlalchemy import select

from study.models import Event

KEY_EVENT = "pseudonym_key"   # the event that holds the study's key

_keys: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # service -> key (it never changes)
_lock = threading.Lock()


def study_key(service) -> bytes:
    """The study's secret key, made and stored on first use. Two first uses at once (two
    processes) may both append one; the oldest is the key from then on, for both."""
    with _lock:
        key = _keys.get(service)
        if key is None:
            key = _keys[service] = _load_or_make(service)
        return key


def _load_or_make(service) -> bytes:
    def oldest(db):
        return db.scalar(select(Event.payload).where(Event.study_id == service.cfg.id, Event.kind == KEY_EVENT)
                         .order_by(Event.id).limit(1))

    with service.Reader() as db:
        payload = oldest(db)
    if payload is None:
        with service.Session.begin() as db:
            db.add(Event(study_id=service.cfg.id, kind=KEY_EVENT, payload={"key": secrets.token_hex(32)}))
        with service.Reader() as db:
            payload = oldest(db)
    return bytes.fromhex(payload["key"])


def pseudonym(key: bytes, platform: str, external_id: str) -> str:
    """"r" and 16 hex digits (64 bits: no collision in any study's lifetime of raters)."""
    return "r" + hmac.new(key, f"{platform}\0{external_id}".encode(), hashlib.sha256).hexdigest()[:16]
