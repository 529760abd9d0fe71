"""What the next session's plan starts from: a study's planned regular comparisons per (image,
left, right) stimulus and the wins per ordered stimulus pair, kept in memory and brought up to
date by reading only the trials and votes stored since the last read.

Reading the whole history at every consent cost time in proportion to the study's size (SQLite,
the demo study: 15 ms per consent at 30,000 trials, 20 ms once each had a vote); a public study
never stops growing. The delta reads go by primary key (ids above the highest one seen).

What they read never changes once stored (a trial's image, stimuli and kind; votes are
append-only, database triggers refuse UPDATE and DELETE), and ids only grow, so on SQLite (one
writer at a time: rows are committed in id order) the deltas are exact. On PostgreSQL concurrent
transactions can commit out of id order, so a row committed below the highest id already seen
would be missed: there the whole history is read again every `full_every_s` seconds, which bounds that
drift in time (the planner balances and aims its comparisons with these counts; no statistic is
computed from them).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from sqlalchemy import bindparam, func, select

from study.models import Trial, Vote
from study.scheduler import pair_key

_T, _V = Trial.__table__, Vote.__table__
# By primary key range only: a study's rows are told apart in Python, by their image (images
# belong to one study: `key_of` knows only this study's). A filter on the study in SQL makes
# SQLite walk the study's sessions and all their trials, which is the scan this avoids.
_NEW_TRIALS = (select(_T.c.image_id, _T.c.left_id, _T.c.right_id, func.count(), func.max(_T.c.id))
               .where(_T.c.kind == "regular", _T.c.id > bindparam("after"))
               .group_by(_T.c.image_id, _T.c.left_id, _T.c.right_id))
# The new votes first (a materialized CTE), then their trials by primary key: joined plainly,
# SQLite walks every trial and looks up its vote.
_NEW = select(_V.c.id, _V.c.trial_id, _V.c.choice).where(_V.c.id > bindparam("after")).cte("new").prefix_with("MATERIALIZED")
_NEW_VOTES = (select(_T.c.image_id, _T.c.left_id, _T.c.right_id, _NEW.c.choice, func.count(), func.max(_NEW.c.id))
              .select_from(_NEW).join(_T, _NEW.c.trial_id == _T.c.id).where(_T.c.kind == "regular")
              .group_by(_T.c.image_id, _T.c.left_id, _T.c.right_id, _NEW.c.choice))

# (image id, left stimulus id, right stimulus id) -> (image key, left key, right key), or None
# for one this process does not plan (another study's, or registered since it started: a newer
# study file)
KeyOf = Callable[[int, int, int], "tuple[str, str, str] | None"]


class PairHistory:
    def __init__(self, key_of: KeyOf, full_every_s: float | None = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        """`full_every_s` None: never read everything again (SQLite, where the deltas are exact)."""
        self._key_of, self._full_every_s, self._clock = key_of, full_every_s, clock
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._counts: dict = {}
        self._wins: dict = {}
        self._last_trial = self._last_vote = 0
        self._read_all_at = self._clock()

    def read(self, db) -> tuple[dict, dict]:
        """(planned regular comparisons per pair_key, wins per ordered (winner, loser) stimulus
        pair; a tie is half a win each way), up to date with what `db` sees; copies, which the
        caller may change."""
        with self._lock:
            if self._full_every_s is not None and self._clock() - self._read_all_at >= self._full_every_s:
                self._reset()
            self._add_trials(db)
            self._add_votes(db)
            return dict(self._counts), dict(self._wins)

    def _add_trials(self, db) -> None:
        for image_id, left, right, n, last in db.execute(_NEW_TRIALS, {"after": self._last_trial}):
            self._last_trial = max(self._last_trial, last)
            if (keys := self._key_of(image_id, left, right)) is not None:
                k = pair_key(*keys)
                self._counts[k] = self._counts.get(k, 0) + n

    def _add_votes(self, db) -> None:
        for image_id, left, right, choice, n, last in db.execute(_NEW_VOTES, {"after": self._last_vote}):
            self._last_vote = max(self._last_vote, last)
            if (keys := self._key_of(image_id, left, right)) is None:
                continue
            _, a, b = keys
            shares = {"left": [((a, b), n)], "right": [((b, a), n)], "tie": [((a, b), n / 2), ((b, a), n / 2)]}
            for key, won in shares[choice]:
                self._wins[key] = self._wins.get(key, 0) + won
