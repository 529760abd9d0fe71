"""Rater statistics and non-destructive exclusions."""

import numpy as np
import pandas as pd
import pytest

from study import quality, ratings
from study.simulate import simulate_votes


def _study():
    """12 raters; rater000 answers against the truth, rater001 fails catch trials, rater002 is fast and
    inconsistent on its repeats."""
    truth = pd.Series(np.linspace(-1.0, 1.0, 6), index=[f"c{k}" for k in range(6)])
    votes = simulate_votes(truth, 1200, n_raters=12, seed=5)
    flip = votes["rater"] == "rater000"
    votes.loc[flip, "winner"] = votes.loc[flip, "winner"].map({"a": "b", "b": "a"})
    votes["is_catch"], votes["repeat_of"], votes["response_ms"] = False, np.nan, 2500.0
    votes.loc[votes["rater"] == "rater002", "response_ms"] = 400.0
    extra, next_id = [], len(votes)
    for r in range(12):
        rater = f"rater{r:03d}"
        for _ in range(4):
            extra.append(dict(trial_id=next_id, rater=rater, condition_a="original", condition_b="jpeg_q5",
                              winner="b" if r == 1 else "a", is_catch=True, catch_correct="a", response_ms=2000.0))
            next_id += 1
        for original in votes.loc[votes["rater"] == rater].head(2).itertuples():
            same = {"a": "b", "b": "a"}[original.winner]  # shown swapped, so the same choice is the other side
            extra.append(dict(trial_id=next_id, rater=rater, condition_a=original.condition_b,
                              condition_b=original.condition_a, winner=original.winner if r == 2 else same,
                              is_catch=False, repeat_of=float(original.trial_id), response_ms=2500.0))
            next_id += 1
    return ratings.validate_votes(pd.concat([votes, pd.DataFrame(extra)], ignore_index=True))


@pytest.fixture(scope="module")
def study():
    votes = _study()
    return votes, quality.rater_stats(votes).set_index("rater")


def test_rater_statistics(study):
    votes, stats = study
    assert stats.loc["rater001", "catch_failure_rate"] == 1.0
    assert stats.loc["rater005", "catch_failure_rate"] == 0.0 and stats.loc["rater005", "catch_trials"] == 4
    assert stats.loc["rater002", "repeat_consistency"] == 0.0
    assert stats.loc["rater003", "repeat_consistency"] == 1.0 and stats.loc["rater003", "repeats"] == 2
    assert stats.loc["rater002", "median_response_ms"] == 400.0
    assert stats["votes"].sum() == len(votes)
    # the reversed rater is the clear outlier (pwcmp: investigate above 1.5)
    assert stats["outlier_score"].idxmax() == "rater000"
    assert stats.loc["rater000", "outlier_score"] > 1.5
    assert (stats.drop(index="rater000")["outlier_score"] < 1.5).all()


def test_exclusions_mark_and_never_delete(study):
    votes, stats = study
    rules = {"max_catch_failure_rate": 0.25, "min_repeat_consistency": 0.5, "min_median_response_ms": 1000,
             "max_outlier_score": 1.5}
    marked = quality.apply_exclusions(votes, stats.reset_index(), rules)
    assert len(marked) == len(votes) and "excluded" not in votes.columns
    excluded = set(marked.loc[marked["excluded"], "rater"])
    assert excluded == {"rater000", "rater001", "rater002"}
    reason = marked.loc[marked["rater"] == "rater002", "exclusion_reason"].iloc[0]
    assert "repeat_consistency" in reason and "median_response_ms" in reason
    kept = ratings.scoring_votes(marked)
    assert not kept["rater"].isin(excluded).any() and not kept["is_catch"].any()
    # rules switched off (None) or absent exclude nobody
    assert not quality.apply_exclusions(votes, stats.reset_index(), {"max_outlier_score": None})["excluded"].any()


def test_missing_statistics_never_exclude():
    votes = ratings.validate_votes(simulate_votes(pd.Series([0.0, 1.0], index=["x", "y"]), 40, n_raters=2))
    stats = quality.rater_stats(votes)
    assert stats["catch_failure_rate"].isna().all() and stats["outlier_score"].isna().all()
    marked = quality.apply_exclusions(votes, stats, {"max_catch_failure_rate": 0.0, "max_outlier_score": 0.0,
                                                     "min_repeat_consistency": 1.0, "min_median_response_ms": 1e9})
    assert not marked["excluded"].any()


def test_rule_validation():
    with pytest.raises(ValueError, match="unknown exclusion rule"):
        quality.check_rules({"max_catch_rate": 0.5})
    with pytest.raises(ValueError, match="must be a number"):
        quality.check_rules({"max_outlier_score": "high"})


def test_catch_rows_need_the_correct_answer():
    votes = pd.DataFrame({"rater": ["r"], "condition_a": ["o"], "condition_b": ["d"], "winner": ["a"],
                          "is_catch": [True]})
    with pytest.raises(ratings.VoteTableError, match="catch_correct"):
        quality.rater_stats(votes)


def test_a_careless_rater_is_flagged_whatever_the_rules():
    """The issue's rater: every catch trial failed, 425 ms median. Flagged with the reasons, by
    fixed limits; excluded only by the study's own rules."""
    truth = pd.Series([0.0, 0.5, 1.0], index=["x", "y", "z"])
    votes = simulate_votes(truth, 300, n_raters=5, seed=3)
    votes["is_catch"], votes["response_ms"] = False, 2400.0
    votes.loc[votes["rater"] == "rater004", "response_ms"] = 425.0
    catch = [dict(rater=f"rater{r:03d}", condition_a="reference", condition_b="catch", winner="b" if r == 4 else "a",
                  is_catch=True, catch_correct="a", response_ms=2000.0) for r in range(5) for _ in range(2)]
    votes = ratings.validate_votes(pd.concat([votes, pd.DataFrame(catch)], ignore_index=True))
    stats = quality.rater_stats(votes).set_index("rater")
    assert stats.loc["rater004", "careless"] and not stats.drop(index="rater004")["careless"].any()
    reason = stats.loc["rater004", "careless_reason"]
    assert "failed 100% of the catch trials" in reason and "median response" in reason and "425 ms" in reason
    assert "excluded" not in stats.columns          # flags are not exclusions


def test_side_bias_flags_a_rater_who_always_picks_one_side():
    votes = pd.DataFrame({"rater": ["s"] * 12 + ["t"] * 12, "condition_a": ["x", "y"] * 12,
                          "condition_b": ["y", "x"] * 12, "winner": ["a"] * 12 + ["a", "b"] * 6})
    stats = quality.rater_stats(ratings.validate_votes(votes)).set_index("rater")
    assert stats.loc["s", "side_bias"] == 1.0 and stats.loc["t", "side_bias"] == 0.5
    assert "same side 100%" in stats.loc["s", "careless_reason"] and not stats.loc["t", "careless"]
