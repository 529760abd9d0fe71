"""The README of an export bundle: every file, every column with its unit and meaning, how each
score was computed and the command that recomputes the scores from the votes file.

``COLUMNS`` is the column dictionary. ``readme`` refuses a table with a column it does not
describe, so a new column cannot reach an export undocumented.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

_RATER = ("keyed pseudonym of the rater: \"r\" + 16 hex digits of HMAC-SHA256(platform, platform id) under "
          "a secret key that stays on the server; the same rater has the same pseudonym in every table and "
          "every export of this study")
_SCORE = {
    "elo": "online Elo (FastChat; K = 4, 400-point scale, start 1000): median over the bootstrap rounds",
    "bt": "Bradley-Terry maximum-likelihood strength on the Elo scale: 1000 + 400 log10(strength), mean 1000; "
          "400 points difference = 10:1 odds",
    "jod": "Thurstone Case V scaling in JOD (just-objectionable differences): 1 JOD = 75% of raters prefer "
           "the better one; mean 0",
}

COLUMNS: dict[str, dict[str, str]] = {
    "votes": {
        "rater": _RATER,
        "session": "session number (sessions.session)",
        "image": "source image, as keyed in study.yaml",
        "trial_id": "trial number (trials.trial_id)",
        "trial_index": "position of the trial in its session, from 0",
        "trial_kind": "regular, catch (the original against a badly damaged copy) or repeat (an earlier trial "
                      "again, sides swapped)",
        "repeat_of": "for a repeat trial, the trial_id it repeats; empty otherwise",
        "condition_a": "condition shown on the left (A): a condition key of study.yaml, or reference / catch "
                       "on catch trials",
        "condition_b": "condition shown on the right (B)",
        "method_a": "codec of the left image (empty for the reference and the catch copy)",
        "method_b": "codec of the right image",
        "bpp_a": "measured bitrate of the left image, bits per pixel (file bits / pixels)",
        "bpp_b": "measured bitrate of the right image, bits per pixel",
        "target_bpp_a": "target bitrate of the left image's condition in study.yaml, bits per pixel",
        "target_bpp_b": "target bitrate of the right image's condition, bits per pixel",
        "choice": "the answer as given: left, right or tie (\"can't tell\")",
        "server_ms": "milliseconds from the server first showing the trial to receiving the vote",
        "client_ms": "milliseconds measured by the browser from the images being shown to the answer; empty "
                     "when the browser sent none",
        "timestamp": "when the vote was stored, UTC (ISO 8601)",
        "winner": "a (left preferred), b (right) or tie: the column the scores read",
        "is_catch": "true on catch trials; they never enter the scores",
        "catch_correct": "on catch trials, the side of the undamaged image (a or b)",
        "response_ms": "response time used for screening, milliseconds: client_ms, else server_ms",
        "excluded": "true when the rater breaks one of the study's exclusion rules (the vote is kept, marked)",
        "exclusion_reason": "which exclusion rule the rater breaks, with the rater's value",
    },
    "trials": {
        "trial_id": "trial number",
        "session": "session number (sessions.session)",
        "rater": _RATER,
        "index": "position of the trial in its session, from 0",
        "kind": "regular, catch or repeat (see votes.trial_kind)",
        "image": "source image, as keyed in study.yaml",
        "left": "stimulus shown on the left: a condition key, reference or catch",
        "right": "stimulus shown on the right",
        "swapped": "true when the scheduler's first item was put on the right (side randomisation)",
        "repeat_of": "for a repeat trial, the trial_id it repeats",
        "correct_side": "on catch trials, the side of the undamaged image (left or right)",
        "first_shown_at": "when the trial was first shown, UTC; empty if it never was",
        "choice": "the answer (left, right or tie); empty for a trial never answered",
        "voted_at": "when the answer was stored, UTC",
    },
    "sessions": {
        "session": "session number",
        "rater": _RATER,
        "platform": "prolific, mturk or anonymous",
        "ordinal": "1 for the rater's first session, 2 for the second, ...",
        "status": "consent (never answered the consent), active (unfinished), completed, screened_out (ended "
                  "after too many failed catch trials) or declined (did not consent)",
        "n_trials": "trials planned for the session",
        "trials_done": "trials answered",
        "catch_failures": "catch trials answered wrongly",
        "consent_version": "version of the consent text the rater agreed to (study.yaml consent.version)",
        "created_at": "when the session started, UTC",
        "consented_at": "when the rater agreed, UTC",
        "finished_at": "when the session ended (completed, screened out or declined), UTC",
        "user_agent": "the browser's own User-Agent text (first 400 characters)",
    },
    "raters": {
        "rater": _RATER,
        "platform": "prolific, mturk or anonymous",
        "sessions": "sessions the rater started",
        "first_seen": "start of the rater's first session, UTC",
        "sessions_<status>": "sessions of the rater with that status (see sessions.status)",
        "votes": "votes of the rater, catch trials included",
        "catch_trials": "catch trials answered",
        "catch_failures": "catch trials answered wrongly (a tie counts as wrong)",
        "catch_failure_rate": "catch_failures / catch_trials (0 to 1); empty without catch trials",
        "repeats": "repeat trials whose original is in the table",
        "repeat_consistency": "share of repeat trials answered like their original (0 to 1)",
        "median_response_ms": "median response time, milliseconds",
        "log10_likelihood": "pwcmp's leave-one-rater-out statistic: log10 likelihood per trial of the rater's "
                            "answers under the JOD scale fitted on everyone else",
        "outlier_score": "(Q1 - L) / IQR of log10_likelihood for raters below the first quartile, else 0; above "
                         "1.5 deserves a look (Tukey's fence); empty below 3 raters",
        "side_bias": "share of decided votes on the side the rater picked more often (0.5 balanced, 1 always "
                     "the same side)",
        "careless_reason": "why the rater looks careless by fixed limits (study.quality.CARELESS: catch failure "
                           "rate over 50%, repeat consistency under 50%, median response under 600 ms, the same "
                           "side over 90% of the time, outlier score over 1.5 among 8 raters or more); a flag for a look, "
                           "not an exclusion",
        "careless": "true when careless_reason is not empty",
        "excluded": "true when the rater breaks one of the study's exclusion rules",
        "exclusion_reason": "which exclusion rule, with the rater's value",
    },
    "scores/scores": {
        "condition": "condition key (method@bpp)",
        "method": "codec",
        "bpp": "mean measured bitrate of the condition's stimuli in the scored votes, bits per pixel",
        "target_bpp": "target bitrate in study.yaml, bits per pixel",
        "elo": _SCORE["elo"],
        "elo_lo": "Elo, 2.5th percentile of the bootstrap (lower end of the 95% interval)",
        "elo_hi": "Elo, 97.5th percentile of the bootstrap",
        "bt": _SCORE["bt"],
        "bt_lo": "Bradley-Terry, lower end of the 95% bootstrap interval (votes resampled)",
        "bt_hi": "Bradley-Terry, upper end of the 95% bootstrap interval",
        "jod": _SCORE["jod"],
        "jod_lo": "JOD, lower end of the 95% bootstrap interval (raters resampled)",
        "jod_hi": "JOD, upper end of the 95% bootstrap interval",
        "votes": "scored votes the condition took part in",
        "win_rate": "share of those votes the condition won, a tie counting half (0 to 1)",
        "tie_rate": "share of those votes answered \"can't tell\" (0 to 1)",
        "rank_ub": "Rank (UB), as on lmarena: 1 + the number of conditions whose interval lies wholly above this "
                   "one's (by the first of bt, jod, elo); the best rank the intervals allow",
        "warning": "why the condition's rank is not yet stable (fewer than 50 votes, or a 95% interval wider "
                   "than 400 points / 2 JOD); empty when it is",
    },
    "scores/pairwise_tests": {
        "condition_a": "first condition of the pair",
        "condition_b": "second condition of the pair",
        "wins_a": "votes preferring condition_a",
        "wins_b": "votes preferring condition_b",
        "ties": "votes answered \"can't tell\"",
        "win_rate_a": "wins_a / (wins_a + wins_b), ties left out (0 to 1)",
        "p_value": "exact two-sided binomial (sign) test of wins_a against wins_b",
        "p_holm": "p_value after Holm-Bonferroni correction over all pairs",
        "significant": "p_holm < 0.05",
        "votes": "votes on the pair, ties included",
        "tie_rate": "ties / votes (0 to 1)",
    },
    "scores/bitrate_controlled": {
        "method_a": "method A",
        "method_b": "method B",
        "effect": "log-odds of preferring A over B at equal bitrate (Bradley-Terry per method with log2 of the "
                  "bitrate ratio as a covariate)",
        "effect_lo": "lower end of the 95% bootstrap interval of effect",
        "effect_hi": "upper end of the 95% bootstrap interval of effect",
        "p_equal_bpp": "P(A preferred over B) at equal bitrate (0 to 1)",
        "p_at_ratio": "P(A preferred over B when B has bpp_ratio times A's bitrate; see scores.json)",
        "p_at_ratio_lo": "lower end of its 95% bootstrap interval",
        "p_at_ratio_hi": "upper end of its 95% bootstrap interval",
    },
    "scores/per_image": {
        "image": "source image",
        "condition": "condition key",
        "votes": "scored votes on this image the condition took part in",
        "win_rate": "share of them it won, a tie counting half (0 to 1)",
        "tie_rate": "share of them answered \"can't tell\" (0 to 1)",
    },
    "scores/leave_one_image_out": {
        "image": "the image left out",
        "votes_left_out": "scored votes on that image",
        "first_without": "the condition ranked first (by the leaderboard's score, no bootstrap) without them",
        "kendall_tau": "Kendall's tau between the order without them and the full order (1 = unchanged)",
    },
    "scores/raters": {},   # the same columns as raters, filled in below
    "payments": {
        "participant_id": "Prolific PROLIFIC_PID or MTurk workerId: the participant's REAL platform id",
        "bonus": "empty: fill in a bonus in the study's currency (e.g. 1.50) where you pay one",
        "submission_id": "Prolific SESSION_ID (the submission id) or MTurk assignmentId",
        "study_id": "Prolific STUDY_ID or MTurk hitId, as the link carried it",
        "platform": "prolific or mturk",
        "status": "completed, screened_out (ended after too many failed catch trials), no_consent (declined "
                  "the consent) or returned_or_timed_out (started and never finished: returned on the "
                  "platform, ran out of time, or still working if the study is open; see last_activity_at)",
        "completion_code": "the code the participant was sent back to the platform with (empty if none)",
        "votes": "trials the participant answered in this session",
        "catch_failures": "catch trials answered wrongly",
        "careless_reason": "see raters.careless_reason",
        "excluded": "true when the participant breaks one of the study's exclusion rules",
        "exclusion_reason": "which exclusion rule, with the participant's value",
        "started_at": "when the session started, UTC",
        "last_activity_at": "the last vote, or the start if none, UTC",
        "finished_at": "when the session ended, UTC; empty when it did not",
    },
}
COLUMNS["scores/raters"] = {k: v for k, v in COLUMNS["raters"].items()
                            if k not in ("platform", "sessions", "first_seen", "sessions_<status>")}

FILES = {
    "README.md": "this file",
    "study.yaml": "the study file the study ran with (its SHA-256 is in manifest.json)",
    "manifest.json": "every other file with its size and SHA-256, the study file, the software version (git "
                     "commit), the settings of the analysis and the counts",
    "payments.csv": "ADMIN ONLY, the one file with the participants' real platform ids: one row per "
                    "Prolific submission / MTurk assignment, to approve, reject or bonus them. Do not share it",
    "votes": "one row per vote (catch trials and excluded raters included, marked)",
    "trials": "one row per planned trial, answered or not",
    "sessions": "one row per session",
    "raters": "one row per rater: sessions and the quality statistics",
    "scores/scores": "the leaderboard: every condition with its scores and 95% intervals",
    "scores/scores.tex": "the leaderboard as a LaTeX booktabs table",
    "scores/scores.json": "the settings of the analysis, the leaderboard, the tests, the bitrate-controlled "
                          "model and the leave-one-image-out check in one file",
    "scores/pairwise_tests": "one row per compared pair of conditions",
    "scores/raters": "the rater statistics the analysis used",
    "scores/bitrate_controlled": "is A preferred over B even when B gets more bits?",
    "scores/per_image": "win and tie rate of every condition on every image",
    "scores/leave_one_image_out": "the ranking with each image left out in turn: does one image drive it?",
    "scores/win_matrix": "figure: P(row preferred over column), with the number of comparisons",
    "scores/preference_vs_bitrate": "figure: score against bits per pixel per method, with 95% intervals",
}

_METHODS = """\
Catch trials never enter the scores. Ties ("can't tell") count as half a win for each side in every
model and are left out of the binomial tests. Intervals are 2.5th-97.5th bootstrap percentiles.

- **Bradley-Terry** (`bt`, the headline score): maximum likelihood of P(A over B) = 1 / (1 + e^-(s_A - s_B))
  over the vote counts per pair, shown on the Elo scale (1000 + 400 log10 strength, mean 1000).
  Bootstrap: votes resampled.
- **JOD** (`jod`): Thurstone Case V, P(A over B) = Phi((q_A - q_B) / 1.4826), so 1 JOD = 75% preference,
  with a Gaussian prior on compared distances (pwcmp), mean 0. Bootstrap: raters resampled.
- **Elo** (`elo`): FastChat's online Elo (K = 4); each bootstrap round replays resampled votes in random
  order; the score is the median over rounds.
- **Rank (UB)**: 1 + the number of conditions whose interval lies wholly above this one's.
- **Bitrate-controlled Bradley-Terry**: one strength per method plus beta * log2(bpp_A / bpp_B).
- **Exclusions** (study.yaml `exclusion:`) mark raters; with them applied, the marked raters' votes
  are left out of the scores and stay in the tables.

The formulas, their references and how to report them are in docs/statistics.md of the software.
"""


def describe(stem: str, column: str) -> str:
    """The codebook entry of a column (``sessions_<status>`` covers every status count)."""
    entries = COLUMNS[stem]
    if column in entries:
        return entries[column]
    if column.startswith("sessions_") and "sessions_<status>" in entries:
        return entries["sessions_<status>"].replace("that status", f"status {column[len('sessions_'):]}")
    raise KeyError(f"the codebook does not describe column {column!r} of {stem}")


def readme(*, study_id: str, title: str, tables: dict[str, pd.DataFrame], files: list[str], formats,
           software_version: str, recompute: str | None, settings: dict) -> str:
    """README.md of a bundle. ``tables``: file stem (e.g. "votes", "scores/scores") -> the table
    written; ``files``: every path in the bundle, relative to its folder."""
    lines = [f"# Export of study `{study_id}`: {title}", "",
             f"Made by the software at commit `{software_version}`. Rater ids are keyed pseudonyms; the raters' "
             "real platform ids are in payments.csv alone" + (" (in this bundle: keep it private)."
                                                            if "payments.csv" in files else
                                                            " (not in this bundle)."), "",
             "## Files", ""]
    grouped: dict[str, list[str]] = {}   # a file named in FILES, or a table / figure stem -> its suffixes
    for path in sorted(files):
        key = path if path in FILES else path.rsplit(".", 1)[0]
        grouped.setdefault(key, []).append(path.rsplit(".", 1)[-1])
    for key, suffixes in grouped.items():
        name = key if key in files else f"{key}.{suffixes[0]}" if len(suffixes) == 1 else \
            f"{key}.{{{','.join(suffixes)}}}"
        lines.append(f"- `{name}`: {FILES[key]}")
    lines += ["", "Tables come in " + ", ".join(formats) + " with the same rows and columns. In CSV, a text cell "
              "that a spreadsheet would run as a formula starts with a single quote. Times are UTC.", "",
              "## Columns", ""]
    for stem, frame in tables.items():
        lines += [f"### {stem}", "", "| column | meaning (unit) |", "|---|---|"]
        lines += [f"| `{c}` | {describe(stem, c)} |" for c in frame.columns]
        lines.append("")
    lines += ["## How the scores were computed", "", _METHODS]
    lines += [f"Settings of this export: {settings['bootstrap']} bootstrap rounds, seed {settings['seed']}, "
              + (f"exclusion rules applied: {settings['rules']}." if settings["applied"] else
                 f"exclusion rules not applied to the scores (rules in the study file: {settings['rules'] or 'none'})."),
              ""]
    if recompute:
        lines += ["## Recompute the scores from the votes", "",
                  "In this folder, with the software at the commit above installed:", "", "```",
                  recompute, "```", "",
                  "`recomputed/` then holds the same scores.csv, pairwise_tests.csv, raters.csv, per_image.csv, "
                  "leave_one_image_out.csv and bitrate_controlled.csv as `scores/`.", ""]
    return "\n".join(lines)


def write_readme(path: Path, **kwargs) -> Path:
    path.write_text(readme(**kwargs), encoding="utf-8")
    return path
