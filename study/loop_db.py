"""PostgreSQL statements run on the server's event loop, with psycopg's AsyncConnection: the
vote's fast path (StudyService.vote_on_loop).

Why: a vote that runs in a worker thread gives up the GIL at each database round trip and must
win it back from the event loop and the other threads; at 50 raters that turn-taking, not the
vote's work, was most of PostgreSQL's p99 (35-54 ms after the consents, against SQLite's 10-29 ms
on the loop; benchmarks/study_load.py). Awaiting the database on the loop costs no thread and no
hand-off.

The statement is compiled once by SQLAlchemy for the engine's dialect (the same SQL text the
thread path sends) and its parameters go through the same type processors (e.g. JSON), so both
paths write the same rows. Connections are autocommit, prepared on first use (as db.SERVER_CONNECT_ARGS),
and kept per event loop: a psycopg connection serves one loop at a time, and a server has one
loop per process (tests open several). At most `size` per loop: a statement that finds none free
does not wait for one (Unavailable: the caller takes its thread path).
"""
from __future__ import annotations

import asyncio
import weakref

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine

from study.db import SERVER_CONNECT_ARGS

LOOP_CONNECTIONS = 8    # per event loop; a vote holds one for a round trip of ~1 ms
APPLICATION_NAME = "study-vote-loop"    # how these connections show in pg_stat_activity


class CompiledStatement:
    """A SQLAlchemy statement as psycopg SQL text, and the parameters it takes."""

    def __init__(self, statement, engine: Engine):
        self._compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(self._compiled)
        self._processors = {name: fn for name, bind in self._compiled.binds.items()
                            if (fn := bind.type.bind_processor(engine.dialect)) is not None}

    def params(self, values: dict) -> dict:
        """`values` by bind name, plus the statement's literal binds, each as the database takes it."""
        params = self._compiled.construct_params(values)
        for name, process in self._processors.items():
            if name in params:
                params[name] = process(params[name])
        return params


class Unavailable(Exception):
    """The statement was not run on the loop (every loop connection busy), or it failed there (a
    restarted database, a broken connection): the caller takes its thread path."""


class LoopConnections:
    """Autocommit AsyncConnections to the engine's database, kept per event loop."""

    def __init__(self, engine: Engine, size: int = LOOP_CONNECTIONS):
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._idle: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> [connection]
        self._opened: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> count

    async def fetch_one(self, statement: CompiledStatement, values: dict):
        """Run `statement` on a connection of the running loop; its first row (a named tuple) or None.
        Raises Unavailable (see there). A connection that raised is closed, not reused."""
        loop = asyncio.get_running_loop()
        idle = self._idle.get(loop)
        if idle is None:
            idle = self._idle[loop] = []
            weakref.finalize(loop, _close_all, idle)    # a test's loop ends; a server's lives on
        opened = self._opened.get(loop, 0)
        if not idle and opened >= self._size:
            raise Unavailable("every loop connection is in use")
        conn = idle.pop() if idle else None    # last in, first out: the warm ones, with their prepared statements
        try:
            if conn is None:
                self._opened[loop] = opened + 1
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, row_factory=namedtuple_row, application_name=APPLICATION_NAME,
                    **SERVER_CONNECT_ARGS)
            cursor = await conn.execute(statement.sql, statement.params(values))
            row = await cursor.fetchone()
        except BaseException as exc:
            self._opened[loop] -= 1
            if conn is not None:
                conn.pgconn.finish()     # synchronous: a cancelled task cannot await a close
            if isinstance(exc, psycopg.Error):
                raise Unavailable(str(exc)) from exc
            raise
        idle.append(conn)
        return row


def _close_all(connections: list) -> None:
    for conn in connections:
        conn.pgconn.finish()
