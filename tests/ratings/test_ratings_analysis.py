"""analysis.analyse / write_files: the pipeline shared by the CLI, the Results tab and the export."""

import hashlib

import numpy as np

import pandas as pd
import pytest

from study import analysis, export, ratings
from study.simulate import simulate_votes


@pytest.fixture(scope="module")
def votes():
    info = pd.DataFrame({"method": ["ours", "ours", "jpeg", "jpeg"], "bpp": [0.1, 0.2, 0.1, 0.2]},
                        index=["ours@0.1", "ours@0.2", "jpeg@0.1", "jpeg@0.2"])
    v = simulate_votes(pd.Series([0.5, 1.0, -1.0, -0.5], index=info.index), 600, n_raters=6, seed=2, info=info)
    v["response_ms"] = [300.0 if r == "rater005" else 2500.0 for r in v["rater"]]
    return v


def test_with_and_without_exclusions(votes):
    rules = {"min_median_response_ms": 1000}
    strict = analysis.analyse(votes, rules=rules, bootstrap=30)
    loose = analysis.analyse(votes, rules=rules, drop_excluded=False, bootstrap=30)
    assert strict.settings["n_raters_excluded"] == 1 and strict.settings["n_votes_scored"] == 500
    assert loose.settings["n_votes_scored"] == 600 and loose.votes["excluded"].sum() == 100
    assert strict.bitrate is not None and strict.models == ["elo", "bt", "jod"]
    assert set(strict.board["condition"]) == set(votes["condition_a"]) | set(votes["condition_b"])
    with pytest.raises(ratings.VoteTableError, match="no votes left"):
        analysis.analyse(votes, rules={"min_median_response_ms": 1e9}, bootstrap=0)


def test_files_and_manifest(votes, tmp_path):
    result = analysis.analyse(votes, models=("bt",), bootstrap=20)
    paths = analysis.write_files(result, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(["scores.csv", "pairwise_tests.csv", "raters.csv", "scores.tex", "bitrate_controlled.csv",
                            "scores.json", "win_matrix.png", "win_matrix.pdf", "preference_vs_bitrate.png",
                            "preference_vs_bitrate.pdf"])
    manifest = export.build_manifest(paths, root=tmp_path, study_yaml="id: t\n", software_version="v")
    entry = next(f for f in manifest["files"] if f["path"] == "scores.csv")
    assert entry["sha256"] == hashlib.sha256((tmp_path / "scores.csv").read_bytes()).hexdigest()


def test_tie_rates_per_condition_and_pair(votes):
    tied = votes.copy()
    pair = tied["condition_a"].isin(["ours@0.1", "ours@0.2"]) & tied["condition_b"].isin(["ours@0.1", "ours@0.2"])
    tied.loc[pair, "winner"] = "tie"
    result = analysis.analyse(tied, bootstrap=0)
    tests = result.tests.set_index(["condition_a", "condition_b"])
    ours = tests.loc[("ours@0.1", "ours@0.2")]
    assert ours["tie_rate"] == 1.0 and ours["ties"] == ours["votes"] == pair.sum()
    assert (tests.drop(index=("ours@0.1", "ours@0.2"))["tie_rate"] == 0).all()
    board = result.board.set_index("condition")
    n = board.loc["ours@0.1", "votes"]
    assert board.loc["ours@0.1", "tie_rate"] == pytest.approx(pair.sum() / n)
    assert board.loc["jpeg@0.1", "tie_rate"] == 0


def test_too_few_votes_for_a_stable_rank_are_warned(votes):
    few = analysis.analyse(votes.head(25), models=("bt",), bootstrap=100)
    assert (few.board["votes"] < analysis.MIN_STABLE_VOTES).all()
    assert few.board["warning"].str.contains("a stable rank needs 50").all()
    many = analysis.analyse(votes, models=("bt",), bootstrap=100)
    assert (many.board["warning"] == "").all(), many.board[["condition", "votes", "bt_lo", "bt_hi", "warning"]]
    # A unanimous pair: the interval runs off, and the warning says so whatever the vote count.
    wide = analysis.unstable(many.board.assign(bt_lo=-2224.0, bt_hi=1110.0), "bt")
    assert wide.str.contains("95% CI 3.33e\\+03 points wide").all()


def test_per_image_breakdown_shows_an_image_that_drives_the_result(votes):
    v = votes.copy()
    v["image"] = np.where(np.arange(len(v)) % 3 == 0, "odd", np.where(np.arange(len(v)) % 3 == 1, "b", "c"))
    # On "odd" only, jpeg@0.1 wins every comparison it is in: enough to lift it when "odd" counts.
    odd = (v["image"] == "odd") & ((v["condition_a"] == "jpeg@0.1") | (v["condition_b"] == "jpeg@0.1"))
    v.loc[odd, "winner"] = np.where(v.loc[odd, "condition_a"] == "jpeg@0.1", "a", "b")
    result = analysis.analyse(v, models=("bt",), bootstrap=0)
    per = result.images.set_index(["image", "condition"])
    assert per.loc[("odd", "jpeg@0.1"), "win_rate"] == 1.0
    assert per["votes"].sum() == 2 * len(v)
    without = result.without_image.set_index("image")
    assert set(without.index) == {"odd", "b", "c"} and without["votes_left_out"].sum() == len(v)
    assert without.loc["odd", "kendall_tau"] > without.loc["b", "kendall_tau"]
    assert analysis.analyse(votes, models=("bt",), bootstrap=0).images.empty    # no image column
