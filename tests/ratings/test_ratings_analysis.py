"""analysis.analyse / write_files: the pipeline shared by the CLI, the Results tab and the export."""

import hashlib

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
