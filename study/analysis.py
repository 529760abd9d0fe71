"""The whole analysis of a study in one call, and the files it produces.

``analyse`` is what `python -m study scores`, the Results tab and the export share: validate the
votes, screen raters, apply the study's exclusion rules (marking, never deleting), then score,
test, break the result down by image and, when methods and bitrates are known, fit the
bitrate-controlled model. It also says where a rank is not yet stable (``unstable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from study import export, quality, ratings

# A condition's rank is called unstable below this many votes (with 50 votes a win rate's 95%
# interval is still about +-14 points) or when its 95% interval is wider than this: 400 points of
# Elo / Bradley-Terry are 10:1 odds, 2 JOD an 0.75 -> 0.92 preference. Intervals that wide come
# from pairs that are unanimous or too rarely compared.
MIN_STABLE_VOTES = 50
MAX_STABLE_CI = {"elo": 400.0, "bt": 400.0, "jod": 2.0}


@dataclass(frozen=True)
class Analysis:
    votes: pd.DataFrame  # every vote, validated; ``excluded``/``exclusion_reason`` when rules were given
    raters: pd.DataFrame  # quality.rater_stats, plus ``excluded``/``exclusion_reason`` under rules
    scoring: pd.DataFrame  # the votes that entered the scores
    board: pd.DataFrame  # ratings.leaderboard, plus target_bpp, tie_rate and ``warning`` (see unstable)
    tests: pd.DataFrame  # ratings.pairwise_tests, plus votes and tie_rate per pair
    bitrate: ratings.BitrateControlled | None  # None without method_a/_b and bpp_a/_b
    images: pd.DataFrame = field(default_factory=pd.DataFrame)  # per_image
    without_image: pd.DataFrame = field(default_factory=pd.DataFrame)  # leave_one_image_out
    settings: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [m for m in ("elo", "bt", "jod") if m in self.board.columns]

    @property
    def primary(self) -> str:
        """The score the table is ordered and ranked by (as ratings.leaderboard)."""
        return ratings.primary_model(self.models)


def analyse(votes: pd.DataFrame, *, rules: dict | None = None, drop_excluded: bool = True,
            models=("elo", "bt", "jod"), bootstrap: int = 1000, by: str | None = None, seed: int = 0,
            anchor: str | None = None, bpp_ratio: float = 2.0) -> Analysis:
    """Raises ``ratings.VoteTableError`` (bad table, nothing left to score) or ``ValueError``
    (bad rules or settings) with a one-line message."""
    # Marks from an earlier run (an exported votes table) never exclude anyone by themselves:
    # only the rules given here do.
    votes = ratings.validate_votes(votes).drop(columns=["excluded", "exclusion_reason"], errors="ignore")
    raters = quality.rater_stats(votes)
    if rules:
        votes = quality.apply_exclusions(votes, raters, rules)
        raters = quality.mark_raters(raters, rules)
    scoring = ratings.scoring_votes(votes, drop_excluded=drop_excluded)
    if scoring.empty:
        raise ratings.VoteTableError("no votes left to score (all are catch trials or from excluded raters)")
    if by == "rater" and scoring["rater"].nunique() < 2:
        raise ratings.VoteTableError("a bootstrap over raters needs votes from at least 2 raters")
    board = ratings.leaderboard(scoring, models=models, bootstrap=bootstrap, by=by, seed=seed, anchor=anchor)
    primary = ratings.primary_model(board.columns)
    board = _with_condition_extras(board, scoring)
    board["warning"] = unstable(board, primary)
    bitrate = None
    if {"method_a", "method_b", "bpp_a", "bpp_b"} <= set(scoring.columns):
        bitrate = ratings.bitrate_controlled_bt(scoring, bootstrap=bootstrap, by=by or "vote", seed=seed,
                                                bpp_ratio=bpp_ratio)
    settings = {"models": list(models), "bootstrap": bootstrap, "by": by, "seed": seed, "anchor": anchor,
                "bpp_ratio": bpp_ratio, "exclusion_rules": quality.check_rules(rules),
                "drop_excluded": drop_excluded, "n_votes_total": len(votes), "n_votes_scored": len(scoring),
                "n_raters_scored": int(scoring["rater"].nunique()),
                "n_raters_excluded": int(raters["excluded"].sum()) if "excluded" in raters.columns else 0}
    tests = ratings.pairwise_tests(scoring)
    tests["votes"] = tests["wins_a"] + tests["wins_b"] + tests["ties"]
    tests["tie_rate"] = tests["ties"] / tests["votes"]
    images, without = per_image(scoring, board, primary)
    return Analysis(votes, raters, scoring, board, tests, bitrate, images, without, settings)


def _with_condition_extras(board: pd.DataFrame, votes: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard plus each condition's target bitrate (when the votes carry target_bpp_a/_b)
    and its tie rate: the share of its votes that were "can't tell"."""
    sides = pd.DataFrame({"condition": np.r_[votes["condition_a"], votes["condition_b"]],
                          "tie": np.r_[votes["winner"], votes["winner"]] == "tie"})
    if {"target_bpp_a", "target_bpp_b"} <= set(votes.columns):
        sides["target_bpp"] = pd.to_numeric(np.r_[votes["target_bpp_a"], votes["target_bpp_b"]], errors="coerce")
    else:
        sides["target_bpp"] = np.nan
    per = sides.groupby("condition").agg(target_bpp=("target_bpp", "first"), tie_rate=("tie", "mean"))
    out = board.merge(per, left_on="condition", right_index=True, how="left")
    columns = list(board.columns)
    columns.insert(columns.index("bpp") + 1, "target_bpp")
    columns.insert(columns.index("win_rate") + 1, "tie_rate")
    return out[columns]


def unstable(board: pd.DataFrame, model: str) -> pd.Series:
    """Per condition, why its rank by ``model`` is not yet stable ("" when it is): fewer than
    MIN_STABLE_VOTES votes, or a 95% interval wider than MAX_STABLE_CI[model]."""
    width = board[f"{model}_hi"] - board[f"{model}_lo"]
    unit = " JOD" if model == "jod" else " points"
    notes = []
    for votes, w in zip(board["votes"], width):
        why = []
        if votes < MIN_STABLE_VOTES:
            why.append(f"only {int(votes)} votes (a stable rank needs {MIN_STABLE_VOTES})")
        if pd.notna(w) and w > MAX_STABLE_CI[model]:
            why.append(f"95% CI {w:.3g}{unit} wide")
        notes.append("; ".join(why))
    return pd.Series(notes, index=board.index, dtype=object)


def per_image(votes: pd.DataFrame, board: pd.DataFrame, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Does one image drive the result?

    Returns (per image and condition: votes, win rate and tie rate; per image left out: the
    votes left out, the condition that comes first without them and Kendall's tau between the
    order without them and the full order, by ``model`` without bootstrap). Both are empty when
    the votes have no ``image`` column or only one image."""
    from scipy.stats import kendalltau

    if "image" not in votes.columns or votes["image"].nunique() < 2:
        return pd.DataFrame(), pd.DataFrame()
    y = ratings.outcome(votes)
    sides = pd.DataFrame({"image": np.r_[votes["image"], votes["image"]],
                          "condition": np.r_[votes["condition_a"], votes["condition_b"]],
                          "score": np.r_[y, 1.0 - y], "tie": np.r_[y, y] == 0.5})
    table = (sides.groupby(["image", "condition"]).agg(votes=("score", "size"), win_rate=("score", "mean"),
                                                       tie_rate=("tie", "mean")).reset_index())
    order = list(board["condition"])
    rows = []
    for image in sorted(votes["image"].unique()):
        rest = votes.loc[votes["image"] != image]
        fit = ratings.leaderboard(rest, models=(model,), bootstrap=0)
        scores = fit.set_index("condition")[model].reindex(order)
        known = scores.notna().to_numpy()
        tau = kendalltau(board[model].to_numpy()[known], scores.to_numpy()[known]).statistic if known.sum() > 1 \
            else np.nan
        rows.append({"image": image, "votes_left_out": int((votes["image"] == image).sum()),
                     "first_without": fit["condition"].iloc[0], "kendall_tau": tau})
    return table, pd.DataFrame(rows)


def write_files(result: Analysis, out: str | Path, extra_settings: dict | None = None) -> list[Path]:
    """Scores (CSV, JSON, LaTeX), tests, rater table, bitrate model and figures (PNG, PDF) in
    ``out``; returns the paths written, e.g. for ``export.build_manifest``."""
    from study import plots  # matplotlib only when files are asked for

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [export.write_csv(result.board, out / "scores.csv"),
             export.write_csv(result.tests, out / "pairwise_tests.csv"),
             export.write_csv(result.raters, out / "raters.csv")]
    tex = out / "scores.tex"
    tex.write_text(export.to_latex(result.board), encoding="utf-8")
    paths.append(tex)
    summary = {"settings": {**result.settings, **(extra_settings or {})}, "scores": result.board,
               "pairwise_tests": result.tests}
    if result.bitrate is not None:
        paths.append(export.write_csv(result.bitrate.pairs, out / "bitrate_controlled.csv"))
        summary["bitrate_controlled"] = result.bitrate.to_dict()
    if not result.images.empty:
        paths.append(export.write_csv(result.images, out / "per_image.csv"))
        paths.append(export.write_csv(result.without_image, out / "leave_one_image_out.csv"))
        summary["leave_one_image_out"] = result.without_image
    paths.append(export.write_json(summary, out / "scores.json"))
    order = list(result.board["condition"])  # best first, as in the table
    win_rate = ratings.win_rate_matrix(result.scoring).loc[order, order]
    counts = ratings.count_matrix(result.scoring).loc[order, order]
    paths += plots.save_figure(plots.win_matrix_heatmap(win_rate, counts), out / "win_matrix")
    if result.board["bpp"].notna().any():
        paths += plots.save_figure(plots.preference_vs_bitrate(result.board, score=result.primary),
                                   out / "preference_vs_bitrate")
    return paths
