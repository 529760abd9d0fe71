"""Rater quality: catch trials, repeat consistency, response time, side bias, outlier score;
careless-rater flags; exclusions.

Flags and exclusions are different things. ``rater_stats`` flags every rater who looks careless
by fixed, lenient limits (``CARELESS``), so an author sees them whatever the study file says;
only the study's own ``exclusion:`` rules exclude anyone. Exclusion never deletes a vote:
``apply_exclusions`` marks rows (``excluded``, ``exclusion_reason``) and
``ratings.scoring_votes`` leaves them out of the scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study import ratings

# Study-YAML ``exclusion:`` key -> (rater statistic, "max" or "min" allowed value).
RULES = {
    "max_catch_failure_rate": ("catch_failure_rate", "max"),
    "min_repeat_consistency": ("repeat_consistency", "min"),
    "min_median_response_ms": ("median_response_ms", "min"),
    "max_outlier_score": ("outlier_score", "max"),
}


# Limits beyond which a rater is flagged as careless (never excluded by these: see the docstring).
# statistic -> ("max" or "min" allowed value, the limit, (the count it needs, at least), the words).
CARELESS = {
    "catch_failure_rate": ("max", 0.5, ("catch_trials", 1), "failed {v:.0%} of the catch trials (limit {l:.0%})"),
    "repeat_consistency": ("min", 0.5, ("repeats", 2), "answered {v:.0%} of the repeats alike (limit {l:.0%})"),
    "median_response_ms": ("min", 600.0, ("votes", 1), "median response {v:.0f} ms (limit {l:.0f} ms)"),
    "side_bias": ("max", 0.9, ("votes", 10), "chose the same side {v:.0%} of the time (limit {l:.0%})"),
    "outlier_score": ("max", 1.5, ("votes", 1), "outlier score {v:.2f} (limit {l:g}): disagrees with the others"),
}
# Among fewer raters the quartiles of the outlier score are too noisy to flag anyone by it (an
# honest simulated rater among 5 scores 1.8).
MIN_RATERS_FOR_OUTLIER_FLAG = 8


def _flag(votes: pd.DataFrame, column: str) -> np.ndarray:
    if column not in votes.columns:
        return np.zeros(len(votes), dtype=bool)
    return votes[column].fillna(False).astype(bool).to_numpy()


def _chosen(votes: pd.DataFrame) -> pd.Series:
    """The condition the rater preferred ("=" for a tie), so swapped repeats compare equal."""
    return pd.Series(
        np.where(votes["winner"] == "a", votes["condition_a"],
                 np.where(votes["winner"] == "b", votes["condition_b"], "=")),
        index=votes.index,
    )


def _trial_keys(series: pd.Series) -> pd.Series:
    """Trial ids as comparable strings: 7, 7.0 and "7" are one trial."""
    numeric = pd.to_numeric(series, errors="coerce")
    whole = numeric.notna() & (numeric == np.round(numeric))
    keys = series.astype(object).where(series.isna(), series.astype(str))
    keys[whole] = numeric[whole].astype("int64").astype(str)
    return keys


def catch_failures(votes: pd.DataFrame) -> pd.DataFrame:
    """Per rater: catch trials seen and failed (a tie on a catch trial is a failure)."""
    catch = votes.loc[_flag(votes, "is_catch")]
    if catch.empty:
        return pd.DataFrame(columns=["rater", "catch_trials", "catch_failures"])
    if "catch_correct" not in catch.columns or catch["catch_correct"].isna().any():
        raise ratings.VoteTableError("catch trials need column 'catch_correct' (a or b) on every catch row")
    correct = catch["catch_correct"].astype(str).str.strip().str.lower()
    if not correct.isin(["a", "b"]).all():
        raise ratings.VoteTableError("column 'catch_correct' must be a or b")
    failed = catch["winner"].to_numpy() != correct.to_numpy()
    return (pd.DataFrame({"rater": catch["rater"].to_numpy(), "failed": failed})
            .groupby("rater").agg(catch_trials=("failed", "size"), catch_failures=("failed", "sum")).reset_index())


def repeat_consistency(votes: pd.DataFrame) -> pd.DataFrame:
    """Per rater: repeated trials whose original is in the table, and the share answered alike."""
    if not {"trial_id", "repeat_of"} <= set(votes.columns):
        return pd.DataFrame(columns=["rater", "repeats", "repeat_consistency"])
    chosen = _chosen(votes)
    by_trial = pd.Series(chosen.to_numpy(), index=_trial_keys(votes["trial_id"]).to_numpy())
    by_trial = by_trial[~by_trial.index.duplicated()]
    repeats = votes["repeat_of"].notna().to_numpy()
    original = _trial_keys(votes.loc[repeats, "repeat_of"]).map(by_trial)
    found = original.notna().to_numpy()
    same = (chosen[repeats].to_numpy() == original.to_numpy())[found]
    frame = pd.DataFrame({"rater": votes.loc[repeats, "rater"].to_numpy()[found], "same": same})
    return (frame.groupby("rater").agg(repeats=("same", "size"), repeat_consistency=("same", "mean"))
            .reset_index())


def outlier_scores(votes: pd.DataFrame) -> pd.DataFrame:
    """pwcmp's leave-one-rater-out score: (Q1 - L) / IQR for raters below the first quartile
    of per-trial log10-likelihoods L, else 0. Values above 1.5 deserve a look (Tukey's fence).
    Needs at least 3 raters; otherwise the score is NaN."""
    lik = ratings.leave_one_rater_out_likelihood(votes)
    L = lik["log10_likelihood"].to_numpy()
    q1, q3 = np.percentile(L, [25, 75])
    iqr = q3 - q1
    if len(L) < 3 or iqr <= 0:
        lik["outlier_score"] = np.nan
    else:
        lik["outlier_score"] = np.where(L < q1, (q1 - L) / iqr, 0.0)
    return lik[["rater", "log10_likelihood", "outlier_score"]]


def side_bias(votes: pd.DataFrame) -> pd.Series:
    """Per rater: the share of decided votes on the side the rater picked more often (0.5 =
    balanced, 1 = always the same side; side a is the left image as shown)."""
    decided = votes.loc[votes["winner"] != "tie"]
    share_a = (decided["winner"] == "a").groupby(decided["rater"]).mean()
    return np.maximum(share_a, 1 - share_a)


def careless_flags(stats: pd.DataFrame) -> pd.Series:
    """Per row of ``rater_stats``: why the rater looks careless ("" when not), by ``CARELESS``."""
    reasons = pd.Series([[] for _ in range(len(stats))], index=stats.index)
    for column, (kind, limit, (evidence, least), words) in CARELESS.items():
        if column == "outlier_score" and len(stats) < MIN_RATERS_FOR_OUTLIER_FLAG:
            continue
        value = pd.to_numeric(stats[column], errors="coerce")
        broken = (value > limit if kind == "max" else value < limit) & (stats[evidence] >= least)
        for i in stats.index[broken.fillna(False).to_numpy()]:
            reasons[i].append(words.format(v=value[i], l=limit))
    return reasons.map("; ".join)


def rater_stats(votes: pd.DataFrame) -> pd.DataFrame:
    """One row per rater: votes, catch failure rate, repeat consistency, median response time,
    side bias, outlier score (computed on the scoring votes, i.e. without catch trials), and
    ``careless`` / ``careless_reason`` by the fixed limits of ``CARELESS``."""
    stats = votes.groupby("rater").size().rename("votes").reset_index()
    stats = stats.merge(catch_failures(votes), on="rater", how="left")
    stats["catch_trials"] = stats["catch_trials"].fillna(0).astype(int)
    stats["catch_failures"] = stats["catch_failures"].fillna(0).astype(int)
    stats["catch_failure_rate"] = stats["catch_failures"] / stats["catch_trials"].where(stats["catch_trials"] > 0)
    stats = stats.merge(repeat_consistency(votes), on="rater", how="left")
    stats["repeats"] = stats["repeats"].fillna(0).astype(int)
    if "response_ms" in votes.columns:
        ms = pd.to_numeric(votes["response_ms"], errors="coerce").groupby(votes["rater"]).median()
        stats["median_response_ms"] = stats["rater"].map(ms)
    else:
        stats["median_response_ms"] = np.nan
    scoring = ratings.scoring_votes(votes, drop_excluded=False)
    if scoring.empty:
        stats[["log10_likelihood", "outlier_score"]] = np.nan
    else:
        stats = stats.merge(outlier_scores(scoring), on="rater", how="left")
    stats["side_bias"] = stats["rater"].map(side_bias(votes))
    stats["careless_reason"] = careless_flags(stats)
    stats["careless"] = stats["careless_reason"] != ""
    return stats


def check_rules(rules: dict | None) -> dict:
    """Validate an ``exclusion:`` mapping; returns the rules that are set (None = off)."""
    rules = dict(rules or {})
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise ValueError(f"unknown exclusion rule(s): {', '.join(unknown)}; known: {', '.join(RULES)}")
    active = {}
    for key, value in rules.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"exclusion rule {key} must be a number, got {value!r}")
        active[key] = float(value)
    return active


def mark_raters(raters_stats: pd.DataFrame, rules: dict | None) -> pd.DataFrame:
    """Rater table plus ``excluded`` and ``exclusion_reason``. A missing statistic (no catch
    trials, no repeats, too few raters) never excludes anyone."""
    active = check_rules(rules)
    out = raters_stats.copy()
    reasons = pd.Series([[] for _ in range(len(out))], index=out.index)
    for key, limit in active.items():
        column, kind = RULES[key]
        value = pd.to_numeric(out[column], errors="coerce")
        broken = value > limit if kind == "max" else value < limit
        for i in out.index[broken.fillna(False).to_numpy()]:
            reasons[i].append(f"{column}={value[i]:.4g} {'>' if kind == 'max' else '<'} {limit:g}")
    out["excluded"] = reasons.map(bool)
    out["exclusion_reason"] = reasons.map("; ".join)
    return out


def apply_exclusions(votes: pd.DataFrame, raters_stats: pd.DataFrame, rules: dict | None) -> pd.DataFrame:
    """A copy of the votes with every vote of an excluded rater marked; nothing is removed."""
    marked = mark_raters(raters_stats, rules).set_index("rater")
    out = votes.copy()
    out["excluded"] = out["rater"].map(marked["excluded"]).fillna(False).astype(bool)
    out["exclusion_reason"] = out["rater"].map(marked["exclusion_reason"]).fillna("")
    return out
