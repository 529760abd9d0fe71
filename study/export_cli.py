"""`python -m study export --study FILE.yaml --db URL --out DIR`: the author's bundle of a study
(study.export_bundle): raw tables, scores, LaTeX, plots, a README with the column dictionary, a
SHA-256 manifest, and one zip. payments.csv (the raters' real platform ids, to pay them) is in it
unless --no-payments: use that for a bundle you share."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.export_bundle import FORMATS


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("export", help="votes, trials, raters and scores (CSV, JSON, Parquet), LaTeX, plots, "
                                             "manifest and a zip", description=__doc__)
    p.add_argument("--study", required=True, type=Path, metavar="FILE.yaml", help="the study file")
    p.add_argument("--db", required=True, metavar="URL", help="SQLAlchemy URL, e.g. sqlite:///study.db")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="a new or empty folder")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {','.join(FORMATS)}")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap rounds for the CIs")
    p.add_argument("--seed", type=int, default=0)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--with-exclusions", dest="exclusions", action="store_true", default=True,
                       help="score without the raters the study's exclusion rules exclude (the default)")
    which.add_argument("--no-exclusions", dest="exclusions", action="store_false",
                       help="score every rater (excluded ones are still marked in the tables)")
    p.add_argument("--no-payments", dest="payments", action="store_false",
                   help="leave out payments.csv (the only file with real platform ids): a bundle to share")
    p.set_defaults(func=run)
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def open_existing(study_file: Path, url: str):
    """The StudyService of a study already in the database at ``url``. Unlike StudyService.open,
    never creates a database: a mistyped path or URL is an error, not an empty export."""
    from sqlalchemy import inspect, select
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from study import db as dbmod
    from study.config import ConfigError, load
    from study.models import Study
    from study.service import StudyService

    try:
        cfg = load(study_file, check_files=False)   # the images need not be on this machine
    except ConfigError as e:
        raise LookupError(e.lines()[0]) from None
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LookupError("--db is not a database URL (e.g. sqlite:///study.db)") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).is_file()):
        raise LookupError(f"no such SQLite database file: {parsed.database or '(none given)'}")
    try:
        engine = dbmod.make_engine(url)
        with engine.connect() as conn:
            known = inspect(conn).has_table("studies") and conn.scalar(select(Study.id).where(Study.id == cfg.id))
        if not known:
            raise LookupError(f"study {cfg.id!r} is not in the database {shown}")
        dbmod.upgrade(engine)
        return StudyService(cfg, engine)
    except ImportError as e:
        raise LookupError(f"no driver installed for {parsed.drivername} ({e.name})") from None
    except SQLAlchemyError as e:
        detail = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise LookupError(f"cannot read the database {shown}: {detail}") from None


def run(args: argparse.Namespace) -> int:
    from study.export_bundle import build_bundle

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    try:
        service = open_existing(args.study, args.db)
        bundle = build_bundle(service, args.out, formats=formats, bootstrap=args.bootstrap,
                              exclusions=args.exclusions, seed=args.seed, payments=args.payments)
    except (LookupError, ValueError, OSError) as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    counts = bundle.manifest["counts"]
    print(f"study {service.cfg.id!r}: {counts['votes']} votes, {counts['trials']} trials, "
          f"{counts['sessions']} sessions, {counts['raters']} raters -> {len(bundle.files)} files in {bundle.folder}")
    if bundle.note:
        print(f"no scores: {bundle.note}")
    if bundle.payments is not None:
        print(f"payments.csv holds the raters' real platform ids: keep the zip private ({bundle.payments})")
    print(f"zip: {bundle.zip_path}")
    return 0
