"""`python -m study ...`: validate a study file, build its stimuli, migrate a database, serve the
study's JSON API on its own, export the votes, (study.scores_cli) compute scores and
(study.export_cli) export the author's bundle."""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from study import export_cli, scores_cli
from study.config import ConfigError, load


def _validate(args) -> int:
    try:
        cfg = load(args.file)
    except ConfigError as e:
        print("\n".join(e.lines()), file=sys.stderr)
        print(f"{len(e.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{cfg.source}: ok: study {cfg.id!r}, {len(cfg.images)} images x {len(cfg.conditions)} conditions, "
          f"{cfg.trials_per_session} trials per session ({cfg.catch_trials} catch, {cfg.repeat_trials} repeats), "
          f"{cfg.scheduler} scheduling")
    for warning in cfg.warnings():
        print(f"warning: {warning}")
    return 0


def _build(args) -> int:
    from study.stimuli import build
    try:
        cfg = load(args.file)
    except ConfigError as e:
        print("\n".join(e.lines()), file=sys.stderr)
        return 1
    build(cfg)
    return 0


def _upgrade(args) -> int:
    from study.db import make_engine, upgrade
    upgrade(make_engine(args.db))
    print(f"schema at head: {args.db}")
    return 0


def _export_votes(args) -> int:
    """Raters appear by study.pseudonym's keyed pseudonym, as in the Results tab and the bundle."""
    from pathlib import Path

    from study.export import write_csv

    try:
        service = export_cli.open_existing(Path(args.file), args.db)   # a mistyped --db is an error
        frame = service.votes_frame()
        write_csv(frame, args.out)
    except (LookupError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(f"{len(frame)} votes of study {service.cfg.id!r} -> {args.out}")
    return 0


# How `serve --workers N` hands the study to its worker processes (uvicorn starts each one fresh
# and calls _worker_app): the study file and the database URL.
_WORKER_ENV = "STUDY_SERVE_WORKER"


def _serve(args) -> int:
    import uvicorn

    from study.service import StudyService

    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and args.db.startswith("sqlite"):
        print("error: SQLite has one writer at a time: serve it from one process (--workers 1), "
              "or use PostgreSQL for several", file=sys.stderr)
        return 2
    # Migrate and register the study once, before any worker starts: workers that did it at once
    # would race to insert the same rows.
    service = StudyService.open(args.file, args.db)
    options = dict(host=args.host, port=args.port, log_level="warning", access_log=False)
    if args.workers == 1:
        uvicorn.run(_app(service), **options)
        return 0
    service.engine.dispose()
    os.environ[_WORKER_ENV] = json.dumps({"file": str(Path(args.file).resolve()), "db": args.db})
    uvicorn.run("study.cli:_worker_app", factory=True, workers=args.workers, **options)
    return 0


def _app(service):
    """The JSON API under API_PREFIX and /health, outside the API and its limits (as in the Space)."""
    from fastapi import FastAPI

    from study.http import API_PREFIX, build_api

    app = FastAPI(title=f"study {service.cfg.id}")
    app.get("/health")(lambda: {"status": "ok"})
    app.mount(API_PREFIX, build_api(service))     # limits from $STUDY_LIMIT_* (study.limits)
    # Everything loaded so far lives as long as the server: moved out of the collector's reach,
    # a full collection scans only what requests create (we saw 90 ms pauses stall every vote).
    gc.freeze()
    return app


def _worker_app():
    """One worker process of `serve --workers N` (uvicorn's app factory): the study as the parent
    registered it, on its own connection pool."""
    from study import db as dbmod
    from study.service import StudyService

    spec = json.loads(os.environ[_WORKER_ENV])
    return _app(StudyService(load(spec["file"]), dbmod.make_engine(spec["db"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a study YAML file; every problem with its line")
    p.add_argument("file")
    p.set_defaults(func=_validate)

    p = sub.add_parser("build-stimuli", help="encode the study's images at its conditions (resumable)")
    p.add_argument("file")
    p.set_defaults(func=_build)

    p = sub.add_parser("upgrade", help="migrate a study database to the current schema")
    p.add_argument("--db", required=True, help="SQLAlchemy URL, e.g. sqlite:///study.db")
    p.set_defaults(func=_upgrade)

    p = sub.add_parser("export-votes", help="write every vote as a CSV for `scores` (raters by keyed pseudonym)")
    p.add_argument("file")
    p.add_argument("--db", required=True, help="SQLAlchemy URL, e.g. sqlite:///study.db")
    p.add_argument("--out", required=True, help="the CSV file to write")
    p.set_defaults(func=_export_votes)

    p = sub.add_parser("serve", help="serve the study's JSON API alone (no Gradio), e.g. for load tests")
    p.add_argument("file")
    p.add_argument("--db", required=True, help="SQLAlchemy URL, e.g. sqlite:///study.db")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (PostgreSQL only): one process runs Python on one core at a time")
    p.set_defaults(func=_serve)

    scores_cli.register(sub)
    export_cli.register(sub)

    args = parser.parse_args(argv)
    return args.func(args)
