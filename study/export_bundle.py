"""Everything an author takes away from a study, in one folder and one zip.

``build_bundle`` reads the study database and writes the raw tables (votes, trials, sessions,
raters) in CSV, JSON and Parquet, the full analysis of ``study.analysis`` (scores, tests,
per-image breakdown, LaTeX table, plots in PNG and PDF) in ``scores/``, the study file, a
README with the column dictionary (study.codebook) and the command that recomputes the scores,
``manifest.json`` with the software version and the SHA-256 of every file; then zips it all.
Both ``python -m study export`` and the Admin tab call it; ``status`` is what the Admin tab shows.

Rater ids are study.pseudonym's keyed pseudonyms everywhere but in ``payments.csv``: the one
file with the raters' real Prolific or MTurk ids, for paying them, written only when asked
(``payments=True``: the admin's export; leave it out of a bundle meant for sharing).
"""
from __future__ import annotations

import shlex
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from study import analysis, codebook, export, quality, ratings
from study.models import Image, Rater, Session, Stimulus, Trial, Vote
from study.pseudonym import pseudonym, study_key

FORMATS = ("csv", "json", "parquet")
PAYMENT_STATUS = {"completed": "completed", "screened_out": "screened_out", "declined": "no_consent",
                  "consent": "returned_or_timed_out", "active": "returned_or_timed_out"}


@dataclass(frozen=True)
class Bundle:
    folder: Path
    files: list[Path]          # every file the manifest lists (the manifest itself last)
    zip_path: Path             # the files under a folder named as ``folder`` (not in the manifest: it holds it)
    manifest: dict
    note: str                  # why there are no scores, when there are none; else ""
    payments: Path | None = None   # payments.csv (real platform ids), when asked for


def exclusion_rules(cfg) -> dict | None:
    """The study YAML's ``exclusion:`` mapping (e.g. max_catch_failure_rate: 0.5), or None."""
    data = yaml.safe_load(cfg.source.read_text(encoding="utf-8")) or {}
    return data.get("exclusion") or None


def _sessions(service, key: bytes) -> pd.DataFrame:
    """One row per session, its rater pseudonymised. The user agent is the browser's own text:
    kept (device analyses need it) and neutralised in CSV like every other cell."""
    q = (select(Session.id, Rater.platform, Rater.external_id, Session.ordinal, Session.status, Session.n_trials,
                Session.next_index, Session.catch_failures, Session.consent_version, Session.created_at,
                Session.consented_at, Session.finished_at, Session.user_agent)
         .join(Rater, Session.rater_id == Rater.id).where(Session.study_id == service.cfg.id).order_by(Session.id))
    cols = ["session", "platform", "external_id", "ordinal", "status", "n_trials", "trials_done", "catch_failures",
            "consent_version", "created_at", "consented_at", "finished_at", "user_agent"]
    with service.Reader() as db:
        df = pd.DataFrame(db.execute(q).all(), columns=cols)
    df.insert(1, "rater", [pseudonym(key, p, e) for p, e in zip(df["platform"], df["external_id"])])
    return df.drop(columns=["external_id"])


def _trials(service, rater_of: pd.Series) -> pd.DataFrame:
    """Every planned trial, voted or not, with the conditions as shown (left, right)."""
    L, R = aliased(Stimulus), aliased(Stimulus)
    q = (select(Trial.id, Trial.session_id, Trial.index, Trial.kind, Image.key, L.key, R.key, Trial.swapped,
                Trial.repeat_of, Trial.correct_side, Trial.first_shown_at, Vote.choice, Vote.created_at)
         .select_from(Trial).join(Session, Trial.session_id == Session.id).join(Image, Trial.image_id == Image.id)
         .join(L, Trial.left_id == L.id).join(R, Trial.right_id == R.id).outerjoin(Vote, Vote.trial_id == Trial.id)
         .where(Session.study_id == service.cfg.id).order_by(Trial.session_id, Trial.index))
    cols = ["trial_id", "session", "index", "kind", "image", "left", "right", "swapped", "repeat_of", "correct_side",
            "first_shown_at", "choice", "voted_at"]
    with service.Reader() as db:
        df = pd.DataFrame(db.execute(q).all(), columns=cols)
    df.insert(2, "rater", df["session"].map(rater_of))
    df["repeat_of"] = df["repeat_of"].astype("Int64")
    return df


def _raters(sessions: pd.DataFrame, stats: pd.DataFrame | None) -> pd.DataFrame:
    """One row per rater: platform, sessions by status, and the quality statistics of the
    analysis (with ``excluded`` and ``exclusion_reason`` under the study's rules)."""
    counts = pd.crosstab(sessions["rater"], sessions["status"]).add_prefix("sessions_")
    out = (sessions.groupby("rater").agg(platform=("platform", "first"), sessions=("session", "size"),
                                         first_seen=("created_at", "min"))
           .join(counts).reset_index())
    if stats is not None:
        out = out.merge(stats, on="rater", how="left")
    return out


def _iso_times(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamps as ISO 8601 text (None where missing), which JSON can hold."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = [None if pd.isna(t) else t.isoformat() for t in out[column]]
    return out


def _write_table(frame: pd.DataFrame, stem: Path, formats) -> list[Path]:
    paths = []
    if "csv" in formats:
        paths.append(export.write_csv(frame, stem.with_suffix(".csv")))
    if "json" in formats:
        paths.append(export.write_json(_iso_times(frame), stem.with_suffix(".json")))
    if "parquet" in formats:
        frame.to_parquet(stem.with_suffix(".parquet"), index=False)
        paths.append(stem.with_suffix(".parquet"))
    return paths


def _payments(service, stats: pd.DataFrame | None, key: bytes) -> pd.DataFrame:
    """One row per Prolific submission or MTurk assignment (session) with the real platform ids.

    The first two columns are what Prolific's bulk bonus takes (``<participant_id>,<amount>`` a
    line, once ``bonus`` is filled in); ``participant_id`` alone is its bulk-approve list, and
    ``submission_id`` the submission ids its API prefers. For MTurk: workerId, assignmentId, hitId."""
    last_vote = (select(Vote.session_id, func.count().label("n"), func.max(Vote.created_at).label("last"))
                 .group_by(Vote.session_id).subquery())
    q = (select(Rater.platform, Rater.external_id, Session.platform_session_id, Session.platform_study_id,
                Session.status, last_vote.c.n, Session.catch_failures, Session.created_at, last_vote.c.last,
                Session.finished_at)
         .join(Rater, Session.rater_id == Rater.id).outerjoin(last_vote, last_vote.c.session_id == Session.id)
         .where(Session.study_id == service.cfg.id, Rater.platform.in_(("prolific", "mturk"))).order_by(Session.id))
    cols = ["platform", "participant_id", "submission_id", "study_id", "status", "votes", "catch_failures",
            "started_at", "last_activity_at", "finished_at"]
    with service.Reader() as db:
        df = pd.DataFrame(db.execute(q).all(), columns=cols)
    df["completion_code"] = [service.cfg.platform.code_for(s) or "" for s in df["status"]]   # as the rater saw it
    df["status"] = df["status"].map(lambda s: PAYMENT_STATUS.get(s, s))
    df["votes"] = df["votes"].fillna(0).astype(int)
    df["last_activity_at"] = df["last_activity_at"].fillna(df["started_at"])
    df["bonus"] = ""
    rater = pd.Series([pseudonym(key, p, e) for p, e in zip(df["platform"], df["participant_id"])], index=df.index,
                      dtype=object)
    for column in ("careless_reason", "excluded", "exclusion_reason"):   # joined on the pseudonym, not exported
        known = stats is not None and column in stats.columns
        df[column] = rater.map(stats.set_index("rater")[column]) if known else None
    return df[list(codebook.COLUMNS["payments"])]


def build_bundle(service, out: str | Path, *, formats=FORMATS, bootstrap: int = 1000,
                 exclusions: bool = True, seed: int = 0, payments: bool = True) -> Bundle:
    """Write the bundle into ``out`` (created; must be new or empty) and zip it.

    ``exclusions``: apply the study YAML's exclusion rules (excluded raters are marked in the
    tables either way when rules exist, and left out of the scores only when this is True).
    ``payments``: add payments.csv, the one file with real platform ids (the admin's export;
    False for a bundle to share). With no votes to score, the tables are still written and
    ``note`` says why scores are missing."""
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"unknown format(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}")
    if bootstrap < 0:
        raise ValueError("bootstrap rounds must be 0 or more")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    cfg = service.cfg
    rules = exclusion_rules(cfg)

    key = study_key(service)
    sessions = _sessions(service, key)
    rater_of = sessions.set_index("session")["rater"]
    votes = service.votes_frame()   # pseudonymised with the same key
    trials = _trials(service, rater_of)

    note, stats, result = "", None, None
    files: list[Path] = []
    if votes.empty:
        note = "no votes yet"
    else:
        try:
            result = analysis.analyse(votes, rules=rules, drop_excluded=exclusions, bootstrap=bootstrap, seed=seed)
            stats = result.raters
            votes = result.votes   # with the excluded / exclusion_reason marks
            files += analysis.write_files(result, out / "scores")   # scores.csv and .json among them
        except ratings.VoteTableError as e:
            note = str(e)
    tables = {"votes": votes, "trials": trials, "sessions": sessions, "raters": _raters(sessions, stats)}
    for name, frame in tables.items():
        files += _write_table(frame, out / name, formats)
    if result is not None:
        if "parquet" in formats:
            files += _write_table(result.board, out / "scores" / "scores", ["parquet"])
        written = {p.relative_to(out).with_suffix("").as_posix() for p in files}
        tables.update({stem: frame for stem, frame in
                       (("scores/scores", result.board), ("scores/pairwise_tests", result.tests),
                        ("scores/raters", result.raters), ("scores/per_image", result.images),
                        ("scores/leave_one_image_out", result.without_image),
                        ("scores/bitrate_controlled", None if result.bitrate is None else result.bitrate.pairs))
                       if stem in written})
    if payments:
        tables["payments"] = _payments(service, stats, key)
        files.append(export.write_csv(tables["payments"], out / "payments.csv"))
    study_file = out / "study.yaml"
    study_yaml = cfg.source.read_text(encoding="utf-8")
    study_file.write_text(study_yaml, encoding="utf-8")
    files.append(study_file)

    version = export.software_version()
    applied = bool(exclusions and rules)
    recompute = None
    if result is not None and "csv" in formats:
        recompute = shlex.join(["python", "-m", "study", "scores", "votes.csv", "--bootstrap", str(bootstrap),
                                "--seed", str(seed), *(["--exclusions", "study.yaml"] if applied else []),
                                "--out", "recomputed"])
    names = [p.relative_to(out).as_posix() for p in files] + ["README.md", "manifest.json"]
    files.append(codebook.write_readme(
        out / "README.md", study_id=cfg.id, title=cfg.title, tables=tables, files=names, formats=formats,
        software_version=version, recompute=recompute,
        settings={"bootstrap": bootstrap, "seed": seed, "applied": applied, "rules": quality.check_rules(rules)}))
    extra = {"study_id": cfg.id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "formats": list(formats), "bootstrap": bootstrap, "seed": seed,
             "exclusion_rules": quality.check_rules(rules), "exclusions_applied": applied,
             "counts": {"votes": len(votes), "trials": len(trials), "sessions": len(sessions),
                        "raters": int(sessions["rater"].nunique())},
             "recompute": recompute, "payments": bool(payments), "note": note}
    manifest = export.build_manifest(files, root=out, study_yaml=study_yaml, software_version=version, extra=extra)
    files.append(export.write_json(manifest, out / "manifest.json"))

    zip_path = out / f"{cfg.id}-export.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:   # under one folder, as unzip should leave it
            zf.write(path, f"{out.name}/{path.relative_to(out).as_posix()}")
    return Bundle(out, files, zip_path, manifest, note, out / "payments.csv" if payments else None)


def status(service) -> dict:
    """The study at a glance: sessions by status, raters, votes, and how many raters the study's
    exclusion rules exclude (computed, never stored: exclusion only marks)."""
    with service.Reader() as db:
        by_status = dict(db.execute(select(Session.status, func.count()).where(Session.study_id == service.cfg.id)
                                    .group_by(Session.status)).all())
        raters = db.scalar(select(func.count(func.distinct(Session.rater_id)))
                           .where(Session.study_id == service.cfg.id))
    votes = service.votes_frame()
    rules = exclusion_rules(service.cfg)
    excluded = None
    if rules and not votes.empty:
        stats = quality.rater_stats(ratings.validate_votes(votes))
        excluded = int(quality.mark_raters(stats, rules)["excluded"].sum())
    return {"study": service.cfg.id, "title": service.cfg.title, "votes": len(votes), "raters": int(raters or 0),
            "sessions": sum(by_status.values()), "sessions_by_status": dict(sorted(by_status.items())),
            "catch_votes": int(votes["is_catch"].sum()) if len(votes) else 0,
            "exclusion_rules": quality.check_rules(rules), "excluded_raters": excluded,
            "last_vote": str(votes["timestamp"].iloc[-1]) if len(votes) else None}
