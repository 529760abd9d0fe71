"""Engines and schema upgrades for the study store.

SQLite is the embedded default: WAL (readers never block the writer), a busy timeout, and BEGIN
IMMEDIATE so a transaction takes the write lock up front instead of failing when it upgrades a
read lock. synchronous=NORMAL: a committed transaction is in the WAL file before the commit
returns, so an acknowledged vote survives any crash of the server process (tested with SIGKILL);
only an operating-system crash or power cut can lose the last commits. FULL would fsync every
commit (about 7 ms on our VM disk, a ceiling near 140 votes/s); use PostgreSQL, which syncs
every commit, where machine crashes must not lose a vote. Checkpoints (WAL -> database file,
with an fsync) run in a background thread, not inside a request.
Any other SQLAlchemy URL is used as it is (PostgreSQL is the tested server, which syncs every
commit to disk: synchronous_commit stays on). Its pooled connections are pinged only after
IDLE_PING_S of idleness, not before every request: a ping is a round trip, which on a busy
server costs more than the vote's own work; a connection that died while in use fails one
request, and SQLAlchemy then replaces every connection of the pool. A server opens its pool's
connections before it serves (fill_pool), not in its first requests.
"""
from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, exc, make_url
from sqlalchemy.orm import sessionmaker

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
BUSY_TIMEOUT_MS = 10_000
IDLE_PING_S = 10.0
# As many pooled connections as threads that may run requests at once (anyio's default thread
# limiter, which FastAPI's sync endpoints use, is 40): a connection opened beyond pool_size is
# closed again on its return, and PostgreSQL forks a backend for every new one. A few more for
# threads outside that limiter (the Results tab, exports).
# Last in, first out: the connections in use stay few and warm. First in, first out cycled a
# vote through all 40, so psycopg (which prepares a statement on its 5th use per connection)
# rarely prepared it and each backend planned it again. At one rater on PostgreSQL a vote took
# StudyService.vote 5.9 ms, 1.7 ms with LIFO; the rater saw p50 9.7 -> 4.0 ms
# (benchmarks/study_load.py).
SERVER_POOL = {"pool_size": 40, "max_overflow": 10, "pool_use_lifo": True}
# psycopg prepares every statement on its first use: a vote's statement is planned once per
# connection, not on each of its first five uses (PostgreSQL backend CPU per vote 0.97-1.05 ->
# 0.73-0.85 ms at 10 and 50 raters).
SERVER_CONNECT_ARGS = {"prepare_threshold": 0}


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise ValueError("use a SQLite file: an in-memory database is lost at exit")
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": BUSY_TIMEOUT_MS / 1000},
                               pool_size=20, max_overflow=20)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None   # let the "begin" hook below issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA wal_autocheckpoint=0")   # checkpoints run in the background (below)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # A read-only engine (read_only() below) begins DEFERRED: a WAL reader takes no lock.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("study_read_only") else
                                 "BEGIN IMMEDIATE")

        _checkpointer(engine)
        return engine
    connect_args = SERVER_CONNECT_ARGS if make_url(url).get_driver_name() == "psycopg" else {}
    return _ping_when_idle(create_engine(url, connect_args=connect_args, **SERVER_POOL))


def fill_pool(engine: Engine) -> None:
    """Open the pool's connections now (a server, before it serves): connecting costs a
    PostgreSQL server a process and the client milliseconds, which the first votes would pay."""
    if engine.dialect.name == "sqlite":
        return
    conns = [engine.connect() for _ in range(engine.pool.size())]
    for conn in conns:
        conn.close()


def _ping_when_idle(engine: Engine) -> Engine:
    """Ping a pooled connection at checkout only when it sat idle IDLE_PING_S or more (a
    restarted database server shows up there); a failed ping hands out a fresh connection."""
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):
        if time.monotonic() - record.info.get("idle_since", time.monotonic()) >= IDLE_PING_S:
            try:
                engine.dialect.do_ping(dbapi_conn)
            except Exception as e:
                raise exc.DisconnectionError() from e   # the pool retries with a new connection
    return engine


def _checkpointer(engine: Engine, every_s: float = 1.0) -> threading.Thread:
    """Copy the WAL back into the database file in a background thread. A checkpoint syncs the
    file to disk; done inside a vote (SQLite's default, every 1000 pages) it holds the write lock
    meanwhile and every queued vote waits. PASSIVE never blocks readers or writers."""
    def run():
        ref = weakref.ref(engine)
        while (eng := ref()) is not None:
            raw = eng.raw_connection()
            try:
                raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:   # a busy or closed database: the next round tries again
                pass
            finally:
                raw.close()
            del eng
            time.sleep(every_s)
    thread = threading.Thread(target=run, name="sqlite-checkpoint", daemon=True)
    thread.start()
    return thread


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (the app calls this at start)."""
    cfg = Config(str(ALEMBIC_INI))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def read_only(engine: Engine) -> Engine:
    """The same engine for transactions that only read (on SQLite they take no write lock)."""
    return engine.execution_options(study_read_only=True)
