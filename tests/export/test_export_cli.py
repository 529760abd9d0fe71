"""`python -m study export` end to end on a study filled through the study service, on SQLite
and on PostgreSQL: every file, the manifest's hashes, the zip, Parquet against CSV, pseudonyms,
neutralised CSV cells, exclusions, and one-line errors."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

from study import analysis, export
from study.cli import main
from study.export_bundle import build_bundle
from study.models import Trial
from study.service import Participant, StudyService
from tests.study.conftest import make_study
from tests.ui.conftest import ROOT

from .conftest import CHEAT, PLATFORM, RATERS, STUDY_IDS, fill

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
                                               "per_image.csv", "leave_one_image_out.csv",
                                               "win_matrix.png", "win_matrix.pdf", "preference_vs_bitrate.png",
                                               "preference_vs_bitrate.pdf")}
    expected |= {"README.md", "study.yaml", "payments.csv"}
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

    # No raw platform id anywhere in the bundle (any file, any format) but payments.csv, only keyed pseudonyms.
    blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".zip" and p.name != "payments.csv"]
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
    run_export(export_study, filled_db, again, "--no-exclusions", "--formats", "parquet", "--no-payments")
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


def _sqlite(study: Path, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fill(study, url).engine.dispose()
    return url


def test_the_readme_describes_every_file_and_column_and_its_command_recomputes_the_scores(export_study, tmp_path):
    out = tmp_path / "bundle"
    run_export(export_study, _sqlite(export_study, tmp_path), out)
    with zipfile.ZipFile(out / "exp1-export.zip") as zf:
        zf.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / "bundle"
    readme = (folder / "README.md").read_text()

    # Every file is listed; every column of every CSV has a row in its table's section.
    for path in folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            stem, suffix = rel.rsplit(".", 1)
            assert f"`{rel}`" in readme or re.search(rf"`{re.escape(stem)}\.{{[a-z,]*{suffix}[a-z,]*}}`", readme), rel
    sections = dict(re.findall(r"^### (\S+)\n\n\| column \| meaning \(unit\) \|\n\|---\|---\|\n((?:\|.*\n)+)", readme,
                               flags=re.M))
    for path in folder.rglob("*.csv"):
        stem = path.relative_to(folder).with_suffix("").as_posix()
        documented = re.findall(r"^\| `([^`]+)` \| .+ \|$", sections[stem], flags=re.M)
        assert documented == list(pd.read_csv(path, nrows=0).columns), stem

    # The command the README gives, run as written in the unzipped folder, gives the same tables.
    command = re.search(r"^```\n(python -m study scores .+)\n```$", readme, flags=re.M).group(1)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "study"] and "--exclusions" in argv
    done = subprocess.run([sys.executable, *argv[1:]], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    for name in ("scores", "pairwise_tests", "raters", "per_image", "leave_one_image_out", "bitrate_controlled"):
        assert (folder / "recomputed" / f"{name}.csv").read_bytes() == (folder / "scores" / f"{name}.csv").read_bytes()


def test_payments_csv_has_every_exit_in_prolifics_shape(tmp_path):
    """One row per Prolific submission with the real ids: completed, screened out, no consent,
    and a session left unfinished (returned or timed out), each with its code and vote count."""
    study = make_study(tmp_path, trials=8, catch=2, repeats=0, max_fail=1, platform=PLATFORM, study_id="pay1")
    svc = StudyService.open(study, f"sqlite:///{tmp_path / 'pay.db'}", seed=1)
    ids = {}
    for who in ("done", "cheat", "declines", "leaves"):
        pid = secrets.token_hex(12)
        ids[who] = pid
        st = svc.start_session(Participant("prolific", pid, "STUDY" + pid[:4], "SUB" + pid[:6]))
        st = svc.consent(st.token, who != "declines", st.consent_version)
        answered = 0
        while st.trial is not None and not (who == "leaves" and answered == 3):
            with svc.Session() as db:
                trial = db.get(Trial, st.trial.id)
            wrong = {"left": "right", "right": "left"}
            choice = (wrong[trial.correct_side] if who == "cheat" else trial.correct_side) if trial.kind == "catch" \
                else "left"
            st = svc.vote(st.token, st.trial.id, choice).state
            answered += 1
    bundle = build_bundle(svc, tmp_path / "out", formats=["csv"], bootstrap=0)
    with open(bundle.payments, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:4] == ["participant_id", "bonus", "submission_id", "study_id"]
    table = pd.read_csv(bundle.payments, keep_default_na=False, dtype=str).set_index("participant_id")
    assert set(table.index) == set(ids.values())
    expect = {"done": ("completed", "C0MPL3TE"), "cheat": ("screened_out", "SCR33N"),
              "declines": ("no_consent", "N0C0NS3NT"), "leaves": ("returned_or_timed_out", "")}
    for who, (status, code) in expect.items():
        row = table.loc[ids[who]]
        assert (row["status"], row["completion_code"]) == (status, code), who
        assert row["submission_id"] == "SUB" + ids[who][:6] and row["study_id"] == "STUDY" + ids[who][:4]
    assert table.loc[ids["done"], "votes"] == "8" and table.loc[ids["leaves"], "votes"] == "3"
    assert table.loc[ids["declines"], "votes"] == "0"
    # Filled in, the first two columns are Prolific's bulk-bonus lines "<participant_id>,<amount>".
    bonus = "\n".join(f"{pid},{1.5:.2f}" for pid in table.index)
    assert re.fullmatch(r"([0-9a-f]{24},\d+\.\d\d\n?)+", bonus)
    # The real ids are in payments.csv and nowhere else in the bundle.
    for path in bundle.folder.rglob("*"):
        if path.is_file() and path.name not in ("payments.csv", "pay1-export.zip"):
            assert not any(pid.encode() in path.read_bytes() for pid in ids.values()), path


def test_export_votes_writes_the_keyed_pseudonyms_and_refuses_a_missing_database(export_study, tmp_path, capsys):
    url = _sqlite(export_study, tmp_path)
    assert main(["export-votes", str(export_study), "--db", url, "--out", str(tmp_path / "v.csv")]) == 0
    votes = pd.read_csv(tmp_path / "v.csv")
    assert len(votes) == N_VOTES and votes["rater"].str.fullmatch(r"r[0-9a-f]{16}").all()
    run_export(export_study, url, tmp_path / "bundle", "--formats", "parquet")
    assert set(votes["rater"]) == set(pd.read_parquet(tmp_path / "bundle/sessions.parquet")["rater"])
    capsys.readouterr()
    missing = tmp_path / "typo.db"
    assert main(["export-votes", str(export_study), "--db", f"sqlite:///{missing}", "--out", str(tmp_path / "w.csv")]) == 2
    assert "no such SQLite database file" in capsys.readouterr().err and not missing.exists()


def test_cant_tell_votes_reach_the_tie_rates_of_the_scores_and_the_results_tab(tmp_path):
    """A study with allow_tie: a rater who answers "can't tell" on every regular trial: the ties
    are stored as ties, count half in the scores, and show as tie rates per condition and pair."""
    from ui.results_tab import leaderboard_html, pairs_html

    study = make_study(tmp_path, trials=8, catch=2, repeats=0, platform=PLATFORM, study_id="tie1")
    study.write_text(study.read_text() + "allow_tie: true\n")
    svc = StudyService.open(study, f"sqlite:///{tmp_path / 'tie.db'}", seed=2)
    for n in range(2):
        pid = f"{n:024x}"
        st = svc.start_session(Participant("prolific", pid, "STUDY1", f"SUB{n}"))
        st = svc.consent(st.token, True, st.consent_version)
        while st.trial is not None:
            with svc.Session() as db:
                trial = db.get(Trial, st.trial.id)
            choice = trial.correct_side if trial.kind == "catch" else ("tie" if n == 0 else "left")
            st = svc.vote(st.token, st.trial.id, choice).state
    bundle = build_bundle(svc, tmp_path / "out", formats=["csv"], bootstrap=20)
    votes = pd.read_csv(bundle.folder / "votes.csv")
    regular = votes[~votes["is_catch"]]
    assert (regular["winner"] == "tie").sum() == 6 == (regular["choice"] == "tie").sum()
    tests = pd.read_csv(bundle.folder / "scores/pairwise_tests.csv")
    assert tests["ties"].sum() == 6 and ((tests["tie_rate"] - tests["ties"] / tests["votes"]).abs() < 1e-12).all()
    board = pd.read_csv(bundle.folder / "scores/scores.csv")
    assert (board["tie_rate"] > 0).any() and (board["tie_rate"] <= 1).all()
    result = analysis.analyse(svc.votes_frame(), bootstrap=0)
    shown = pairs_html(result.tests) + leaderboard_html(result.board, "bt", analysis.unstable(result.board, "bt"))
    for rate in result.tests["tie_rate"]:
        assert f">{100 * rate:.0f}%<" in shown
