"""`python -m study scores VOTES.csv`: scores with CIs from any tidy CSV of pairwise votes.

Columns: rater, condition_a, condition_b, winner (a, b or tie); optional image, bpp_a, bpp_b,
method_a, method_b, timestamp (ISO 8601 or numbers: the order of the live Elo, --bootstrap 0)
and the quality columns (is_catch, catch_correct, trial_id, repeat_of, response_ms). Catch
trials never enter the scores; raters are excluded only under --exclusions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

from study import analysis, quality, ratings

_TEXT_COLUMNS = {c: str for c in ("rater", "condition_a", "condition_b", "winner", "method_a", "method_b", "image")}


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``scores`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("scores", help="Elo / Bradley-Terry / JOD scores with bootstrap CIs from a votes CSV",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("votes", type=Path, help="tidy CSV, one row per vote")
    p.add_argument("--model", choices=["elo", "bt", "jod", "all"], default="all")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap rounds (0: no CIs)")
    p.add_argument("--by", choices=["rater", "vote"], default=None,
                   help="bootstrap unit (default: votes for Elo/BT, raters for JOD)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anchor", metavar="CONDITION", help="fix this condition (BT: 1000, JOD: 0) instead of the mean")
    p.add_argument("--bpp-ratio", type=float, default=2.0,
                   help="for the bitrate-controlled model: P(A over B when B uses this many times A's bitrate)")
    p.add_argument("--exclusions", type=Path, metavar="YAML",
                   help="YAML with an 'exclusion:' mapping (a study file works), e.g. max_catch_failure_rate: 0.5")
    p.add_argument("--out", type=Path, metavar="DIR", help="write CSV, JSON, LaTeX and plots here")
    p.set_defaults(func=run)
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _load_rules(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    rules = data.get("exclusion", data)
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: 'exclusion' must be a mapping")
    quality.check_rules(rules)  # fail early on a typo in a rule name
    return rules


def _fmt(row, m: str) -> str:
    d = 2 if m == "jod" else 0
    if pd.isna(row[f"{m}_lo"]):
        return f"{row[m]:.{d}f}"
    return f"{row[m]:.{d}f} [{row[f'{m}_lo']:.{d}f}, {row[f'{m}_hi']:.{d}f}]"


def _print_board(board: pd.DataFrame, models: list[str]) -> None:
    shown = pd.DataFrame({"condition": board["condition"], "method": board["method"]})
    if board["bpp"].notna().any():
        shown["bpp"] = board["bpp"].map(lambda x: f"{x:.3f}")
    for m in models:
        shown[m] = [_fmt(row, m) for _, row in board.iterrows()]
    shown["votes"] = board["votes"]
    shown["win_rate"] = board["win_rate"].map(lambda x: f"{x:.3f}")
    shown["rank_ub"] = board["rank_ub"]
    print(shown.to_string(index=False))


def run(args: argparse.Namespace) -> int:
    models = ["elo", "bt", "jod"] if args.model == "all" else [args.model]
    if args.bootstrap < 0:
        return _fail("--bootstrap must be 0 or more")
    try:
        raw = pd.read_csv(args.votes, dtype=_TEXT_COLUMNS)
    except FileNotFoundError:
        return _fail(f"{args.votes}: no such file")
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        return _fail(f"{args.votes}: not a readable CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    try:
        rules = _load_rules(args.exclusions) if args.exclusions else None
        result = analysis.analyse(raw, rules=rules, models=models, bootstrap=args.bootstrap, by=args.by,
                                  seed=args.seed, anchor=args.anchor, bpp_ratio=args.bpp_ratio)
    except (ratings.VoteTableError, ValueError, OSError, yaml.YAMLError) as e:
        return _fail(str(e).splitlines()[0])

    s = result.settings
    print(f"{s['n_votes_scored']} votes from {s['n_raters_scored']} raters on {len(result.board)} conditions "
          f"({s['n_votes_total'] - s['n_votes_scored']} set aside: catch trials or excluded raters; "
          f"{s['n_raters_excluded']} raters excluded); {args.bootstrap} bootstrap rounds, seed {args.seed}")
    _print_board(result.board, models)
    if result.bitrate is not None:
        b = result.bitrate.beta.iloc[0]
        print(f"\nbitrate-controlled BT: doubling a side's bpp adds {b['beta_per_doubling']:.3f} "
              f"[{b['beta_lo']:.3f}, {b['beta_hi']:.3f}] log-odds")
        for _, r in result.bitrate.pairs.iterrows():
            print(f"  P({r['method_a']} preferred over {r['method_b']} at {args.bpp_ratio:g}x its bitrate) = "
                  f"{r['p_at_ratio']:.3f} [{r['p_at_ratio_lo']:.3f}, {r['p_at_ratio_hi']:.3f}]")
    if args.out:
        analysis.write_files(result, args.out, extra_settings={"votes_file": str(args.votes)})
        print(f"\nwrote {args.out}")
    return 0
