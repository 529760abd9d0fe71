"""`python -m study scores` end to end, as a subprocess on real CSV files."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from study.simulate import simulate_votes

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "study", "scores", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def votes_csv(tmp_path_factory):
    info = pd.DataFrame({"method": ["ours", "ours", "bpg", "bpg"], "bpp": [0.1, 0.2, 0.1, 0.2]},
                        index=["ours@0.1", "ours@0.2", "bpg@0.1", "bpg@0.2"])
    utility = pd.Series([0.6, 1.0, -0.8, -0.2], index=info.index)
    votes = simulate_votes(utility, 800, n_raters=10, seed=3, info=info)
    votes["image"] = "kodim0" + (votes["trial_id"] % 3).astype(str)
    votes["is_catch"], votes["catch_correct"] = False, ""
    catch = pd.DataFrame({"trial_id": range(800, 820), "rater": [f"rater{k % 10:03d}" for k in range(20)],
                          "condition_a": "reference", "condition_b": "jpeg_q5", "catch_correct": "a",
                          "winner": ["b" if k % 10 == 0 else "a" for k in range(20)], "is_catch": True})
    path = tmp_path_factory.mktemp("cli") / "votes.csv"
    pd.concat([votes, catch], ignore_index=True).to_csv(path, index=False)
    return path


def test_scores_end_to_end(votes_csv, tmp_path):
    rules = tmp_path / "study.yaml"
    rules.write_text("id: demo\nexclusion:\n  max_catch_failure_rate: 0.5\n  min_repeat_consistency: null\n")
    out = tmp_path / "out"
    done = _run(votes_csv, "--bootstrap", 60, "--seed", 1, "--exclusions", rules, "--out", out)
    assert done.returncode == 0, done.stderr
    # rater000 failed both catch trials: its 80 votes and all 20 catch trials are set aside
    assert "720 votes from 9 raters on 4 conditions (100 set aside" in done.stdout
    assert "1 raters excluded" in done.stdout and "reference" not in done.stdout
    assert "P(ours preferred over bpg at 2x its bitrate)" in done.stdout
    for name in ("scores.csv", "scores.json", "scores.tex", "pairwise_tests.csv", "raters.csv",
                 "bitrate_controlled.csv", "win_matrix.png", "win_matrix.pdf", "preference_vs_bitrate.png",
                 "preference_vs_bitrate.pdf"):
        assert (out / name).stat().st_size > 0, name
    scores = pd.read_csv(out / "scores.csv")
    assert scores["condition"].tolist()[0] == "ours@0.2" and len(scores) == 4
    result = json.loads((out / "scores.json").read_text())
    assert result["settings"]["bootstrap"] == 60 and result["settings"]["n_raters_scored"] == 9
    assert result["settings"]["votes_file"] == str(votes_csv)
    assert result["bitrate_controlled"]["beta"]["beta_per_doubling"] > 0
    raters = pd.read_csv(out / "raters.csv").set_index("rater")
    assert bool(raters.loc["rater000", "excluded"]) and raters["excluded"].sum() == 1


def test_scores_single_model_same_numbers_as_all(votes_csv):
    bt_only = _run(votes_csv, "--model", "bt", "--bootstrap", 40)
    assert bt_only.returncode == 0, bt_only.stderr
    header = bt_only.stdout.splitlines()[1].split()
    assert "bt" in header and "elo" not in header and "jod" not in header


@pytest.mark.parametrize("content, message", [
    ("rater,condition_a,condition_b\nr1,x,y\n", "error: missing column(s): winner"),
    ("rater,condition_a,condition_b,winner\nr1,x,y,left\n", "error: column 'winner' must be a, b or tie"),
    ("rater,condition_a,condition_b,winner\nr1,x,x,a\n", "error: condition_a equals condition_b"),
    ("", "not a readable CSV"),
])
def test_malformed_input_gives_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    done = _run(path, "--bootstrap", 10)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_file_and_bad_rules(tmp_path, votes_csv):
    done = _run(tmp_path / "nope.csv")
    assert done.returncode == 2 and "no such file" in done.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text("exclusion:\n  max_catch_rate: 0.5\n")
    done = _run(votes_csv, "--exclusions", rules, "--bootstrap", 0)
    assert done.returncode == 2 and "unknown exclusion rule" in done.stderr and "Traceback" not in done.stderr


def test_live_elo_follows_csv_timestamps(tmp_path):
    # x wins the first 60 votes and loses the last 60; the file lists them newest first
    n = 60
    votes = pd.DataFrame({"rater": [f"r{k % 4}" for k in range(2 * n)], "condition_a": "x", "condition_b": "y",
                          "winner": ["a"] * n + ["b"] * n,
                          "timestamp": (pd.Timestamp("2026-12-01T09:00:00Z") + pd.to_timedelta(range(2 * n), unit="s"))
                          .map(lambda t: t.isoformat())})
    newest_first, in_time = tmp_path / "newest_first.csv", tmp_path / "in_time.csv"
    votes.iloc[::-1].to_csv(newest_first, index=False)
    votes.drop(columns="timestamp").to_csv(in_time, index=False)
    boards = {}
    for path in (newest_first, in_time):
        done = _run(path, "--model", "elo", "--bootstrap", 0)
        assert done.returncode == 0, done.stderr
        boards[path.stem] = [line.split() for line in done.stdout.splitlines()[2:4]]
    assert boards["newest_first"] == boards["in_time"]
    assert boards["in_time"][0][0] == "y"  # the later wins count; row order would put x first
    votes.loc[5, "timestamp"] = "not a time"
    votes.to_csv(newest_first, index=False)
    done = _run(newest_first, "--model", "elo", "--bootstrap", 0)
    assert done.returncode == 2 and "column 'timestamp' is missing or unreadable in 1 row(s)" in done.stderr
