"""`python -m study export` end to end on a study filled through the study service, on SQLite
and on PostgreSQL: every file, the manifest's hashes, the zip, Parquet against CSV, pseudonyms,
neutralised CSV cells, exclusions, and one-line errors."""
from __future__ import annotations

import csv
import hashlib
import json
import zipfile
from pathlib import Path

import pandas as pd

from study import export
from study.cli import main

from .conftest import CHEAT, RATERS, STUDY_IDS

TABLES = ("votes", "trials", "sessions", "raters")
FORMULA = ("=", "+", "-", "@", "\t", "\r")
N_VOTES = 12 * len(RATERS)


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def run_export(study: Path, url: str, out: Path, *extra: str) -> None:
    assert main(["export", "--study", str(study), "--db", url, "--out", str(out), "--bootstrap", "30", *extra]) == 0


def test_export_writes_every_file_hashed_zipped_and_pseudonymised(export_study, filled_db, tmp_path, capsys):
    out = tmp_path / "bundle"
    run_export(export_study, filled_db, out)
    printed = capsys.readouterr().out
    assert f"{N_VOTES} votes, {N_VOTES} trials, {len(RATERS)} sessions, {len(RATERS)} raters" in printed

    # Every table in every format, the analysis with its LaTeX table and plots, the manifest, the zip.
    expected = {f"{t}.{f}" for t in TABLES for f in ("csv", "json", "parquet")}
    expected |= {f"scores/{name}" for name in ("scores.csv", "scores.json", "scores.parquet", "scores.tex",
                                               "pairwise_tests.csv", "raters.csv", "bitrate_controlled.csv",
                                               "win_matrix.png", "win_matrix.pdf", "preference_vs_bitrate.png",
                                               "preference_vs_bitrate.pdf")}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == expected | {"manifest.json", "exp1-export.zip"}
    assert (out / "scores/win_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "scores/preference_vs_bitrate.pdf").read_bytes()[:5] == b"%PDF-"
    assert r"\begin{tabular}" in (out / "scores/scores.tex").read_text()

    # The manifest: every other file once, with its true size and SHA-256; the study YAML; the version.
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["path"] for e in manifest["files"]} == expected
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"], entry["path"]
    assert manifest["study_yaml"] == export_study.read_text()
    assert len(manifest["software_version"]) >= 40          # a git commit
    assert manifest["counts"] == {"votes": N_VOTES, "trials": N_VOTES, "sessions": len(RATERS), "raters": len(RATERS)}

    # The zip holds exactly the manifest's files (and the manifest) under one folder, byte for byte.
    with zipfile.ZipFile(out / "exp1-export.zip") as zf:
        assert sorted(zf.namelist()) == sorted(f"bundle/{p}" for p in expected | {"manifest.json"})
        for path in expected | {"manifest.json"}:
            assert zf.read(f"bundle/{path}") == (out / path).read_bytes(), path

    # Parquet holds the same table as the CSV: written through the same CSV writer, the bytes match.
    for name in (*TABLES, "scores/scores"):
        frame = pd.read_parquet(out / f"{name}.parquet")
        export.write_csv(frame, tmp_path / "again.csv")
        assert (tmp_path / "again.csv").read_bytes() == (out / f"{name}.csv").read_bytes(), name
    board = pd.read_parquet(out / "scores/scores.parquet")
    assert json.loads((out / "scores/scores.json").read_text())["scores"] == export.records(board)
    for name in TABLES:
        assert len(json.loads((out / f"{name}.json").read_text())) == len(pd.read_parquet(out / f"{name}.parquet"))
    votes = pd.read_parquet(out / "votes.parquet")
    assert len(votes) == N_VOTES

    # No raw platform id anywhere in the bundle (any file, any format), only keyed pseudonyms.
    blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".zip"]
    for raw in [pid for pid, _ in RATERS] + list(STUDY_IDS):
        assert not any(raw.encode() in blob for blob in blobs), raw
    sessions = pd.read_parquet(out / "sessions.parquet")
    assert sessions["rater"].str.fullmatch(r"r[0-9a-f]{16}").all() and sessions["rater"].nunique() == len(RATERS)
    assert set(votes["rater"]) == set(sessions["rater"]) == set(pd.read_parquet(out / "trials.parquet")["rater"])

    # CSV injection: the browsers' user agents keep their text in Parquet and start with ' in CSV,
    # and no cell of any CSV starts like a formula unless it is a number (such as -0.5).
    assert sorted(sessions["user_agent"]) == sorted(agent for _, agent in RATERS)
    shown = pd.read_csv(out / "sessions.csv", keep_default_na=False)["user_agent"]
    assert sorted(shown) == sorted("'" + agent for _, agent in RATERS)
    for path in out.rglob("*.csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                assert all(_number(c) for c in row if c.startswith(FORMULA)), (path, row)

    # The study's exclusion rule marks the rater who failed every catch trial, in every table;
    # the scores leave them out (the default), their votes stay.
    raters = pd.read_parquet(out / "raters.parquet").set_index("rater")
    cheat = sessions.loc[sessions["user_agent"] == dict(RATERS)[CHEAT], "rater"].item()
    assert raters["excluded"].to_dict() == {r: r == cheat for r in raters.index}
    assert "catch_failure_rate=1 > 0.5" in raters.loc[cheat, "exclusion_reason"]
    assert votes.loc[votes["rater"] == cheat, "excluded"].all() and (votes["rater"] == cheat).sum() == 12
    assert manifest["exclusions_applied"] and manifest["exclusion_rules"] == {"max_catch_failure_rate": 0.5}
    scored = json.loads((out / "scores/scores.json").read_text())["settings"]
    assert scored["n_raters_excluded"] == 1 and scored["n_raters_scored"] == len(RATERS) - 1

    # A second export gives every rater the same pseudonym (the key is kept per study); without
    # exclusions every rater is scored, the cheat still marked.
    again = tmp_path / "again"
    run_export(export_study, filled_db, again, "--no-exclusions", "--formats", "parquet")
    assert not list(again.glob("*.csv")) and not (again / "votes.json").exists()
    assert sorted(pd.read_parquet(again / "sessions.parquet")["rater"]) == sorted(sessions["rater"])
    scored = json.loads((again / "scores/scores.json").read_text())["settings"]
    assert scored["n_raters_scored"] == len(RATERS) and scored["n_raters_excluded"] == 1


def _fails(capsys, *argv) -> str:
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_export_errors_are_one_line(export_study, tmp_path, capsys):
    out = str(tmp_path / "out")
    missing_db = f"sqlite:///{tmp_path / 'nope.db'}"
    err = _fails(capsys, "--study", str(export_study), "--db", missing_db, "--out", out)
    assert "no such SQLite database file" in err
    assert not (tmp_path / "nope.db").exists()        # nothing created on the way
    assert "cannot read the file" in _fails(capsys, "--study", str(tmp_path / "none.yaml"), "--db", missing_db,
                                            "--out", out)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert "is not in the database" in _fails(capsys, "--study", str(export_study), "--db", f"sqlite:///{empty}",
                                              "--out", out)
    err = _fails(capsys, "--study", str(export_study), "--db", "postgresql+psycopg://codec:s3cret@127.0.0.1:9/x",
                 "--out", out)
    assert "cannot read the database" in err and "s3cret" not in err
    assert not Path(out).exists()


def test_export_refuses_bad_options_and_a_used_folder(export_study, filled_db, tmp_path, capsys):
    args = ["--study", str(export_study), "--db", filled_db]
    assert "unknown format(s) xlsx" in _fails(capsys, *args, "--out", str(tmp_path / "a"), "--formats", "csv,xlsx")
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.csv").write_text("x\n")
    assert "not an empty folder" in _fails(capsys, *args, "--out", str(used))


def test_status_counts_and_exclusions(export_study, filled_db):
    from study.export_bundle import status
    from study.service import StudyService

    s = status(StudyService.open(export_study, filled_db))
    assert (s["votes"], s["raters"], s["sessions"]) == (N_VOTES, len(RATERS), len(RATERS))
    assert s["sessions_by_status"] == {"completed": len(RATERS)} and s["catch_votes"] == 2 * len(RATERS)
    assert s["excluded_raters"] == 1 and s["exclusion_rules"] == {"max_catch_failure_rate": 0.5}


def test_a_study_without_votes_exports_its_empty_tables(export_study, tmp_path, capsys):
    from study.service import StudyService

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    StudyService.open(export_study, url).engine.dispose()   # registered, nobody took part yet
    run_export(export_study, url, tmp_path / "out")
    assert "no scores: no votes yet" in capsys.readouterr().out
    assert not (tmp_path / "out/scores").exists()
    assert pd.read_csv(tmp_path / "out/votes.csv").empty and "rater" in pd.read_csv(tmp_path / "out/votes.csv").columns
    assert json.loads((tmp_path / "out/manifest.json").read_text())["note"] == "no votes yet"
