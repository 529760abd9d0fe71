"""The whole analysis of a study in one call, and the files it produces.

``analyse`` is what `python -m study scores`, the Results tab and the export share: validate the
votes, screen raters, apply the study's exclusion rules (marking, never deleting), then score,
test and, when methods and bitrates are known, fit the bitrate-controlled model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from study import export, quality, ratings


@dataclass(frozen=True)
class Analysis:
    votes: pd.DataFrame  # every vote, validated; ``excluded``/``exclusion_reason`` when rules were given
    raters: pd.DataFrame  # quality.rater_stats, plus ``excluded``/``exclusion_reason`` under rules
    scoring: pd.DataFrame  # the votes that entered the scores
    board: pd.DataFrame  # ratings.leaderboard
    tests: pd.DataFrame  # ratings.pairwise_tests
    bitrate: ratings.BitrateControlled | None  # None without method_a/_b and bpp_a/_b
    settings: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [m for m in ("elo", "bt", "jod") if m in self.board.columns]


def analyse(votes: pd.DataFrame, *, rules: dict | None = None, drop_excluded: bool = True,
            models=("elo", "bt", "jod"), bootstrap: int = 1000, by: str | None = None, seed: int = 0,
            anchor: str | None = None, bpp_ratio: float = 2.0) -> Analysis:
    """Raises ``ratings.VoteTableError`` (bad table, nothing left to score) or ``ValueError``
    (bad rules or settings) with a one-line message."""
    votes = ratings.validate_votes(votes)
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
    bitrate = None
    if {"method_a", "method_b", "bpp_a", "bpp_b"} <= set(scoring.columns):
        bitrate = ratings.bitrate_controlled_bt(scoring, bootstrap=bootstrap, by=by or "vote", seed=seed,
                                                bpp_ratio=bpp_ratio)
    settings = {"models": list(models), "bootstrap": bootstrap, "by": by, "seed": seed, "anchor": anchor,
                "bpp_ratio": bpp_ratio, "exclusion_rules": quality.check_rules(rules),
                "drop_excluded": drop_excluded, "n_votes_total": len(votes), "n_votes_scored": len(scoring),
                "n_raters_scored": int(scoring["rater"].nunique()),
                "n_raters_excluded": int(raters["excluded"].sum()) if "excluded" in raters.columns else 0}
    return Analysis(votes, raters, scoring, board, ratings.pairwise_tests(scoring), bitrate, settings)


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
    paths.append(export.write_json(summary, out / "scores.json"))
    order = list(result.board["condition"])  # best first, as in the table
    win_rate = ratings.win_rate_matrix(result.scoring).loc[order, order]
    counts = ratings.count_matrix(result.scoring).loc[order, order]
    paths += plots.save_figure(plots.win_matrix_heatmap(win_rate, counts), out / "win_matrix")
    if result.board["bpp"].notna().any():
        primary = next(m for m in ("bt", "jod", "elo") if m in result.models)  # as in the leaderboard
        paths += plots.save_figure(plots.preference_vs_bitrate(result.board, score=primary),
                                   out / "preference_vs_bitrate")
    return paths
