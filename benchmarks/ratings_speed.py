"""Speed of the preference statistics on a large study: 100,000 votes over 40 conditions.

    nice -n 10 .venv/bin/python benchmarks/ratings_speed.py [--votes N] [--conditions K] [--rounds B]

Times Bradley-Terry (point fit, bootstrap over votes and over raters), JOD, Elo (bootstrap), and
choix.ilsr_pairwise on the same data, and prints one table. Targets (issue 5): BT fit <= 0.5 s
and not slower than choix; 1,000 bootstrap rounds <= 30 s on 2 cores.

JOD is pwcmp's method: its prior costs (compared pairs)^2 per evaluation, 780^2 here, so the
table also times JOD on a study of the size a paper reports (--small-conditions, 6,000 votes,
60 raters), which is what the Results tab and the export compute in practice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import choix
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study import ratings  # noqa: E402
from study.simulate import simulate_votes  # noqa: E402


def timed(fn, repeat=1):
    """Best wall time of ``repeat`` calls, and the last result."""
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=100_000)
    parser.add_argument("--conditions", type=int, default=40)
    parser.add_argument("--raters", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--small-conditions", type=int, default=12)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    utility = pd.Series(rng.normal(0.0, 1.0, args.conditions), index=[f"c{k:02d}" for k in range(args.conditions)])
    votes = ratings.validate_votes(simulate_votes(utility, args.votes, n_raters=args.raters, seed=1))
    conds = ratings.conditions(votes)
    index = {c: k for k, c in enumerate(conds)}
    a, b = votes["condition_a"].map(index).to_numpy(), votes["condition_b"].map(index).to_numpy()
    won = votes["winner"].to_numpy() == "a"
    pairs = list(zip(np.where(won, a, b).tolist(), np.where(won, b, a).tolist(), strict=True))

    natural = dict(bootstrap=0, scale=1.0, base=np.e, offset=0.0)
    rows = []
    t_bt, ours = timed(lambda: ratings.bradley_terry(votes, **natural)["bt"].to_numpy(), repeat=3)
    t_choix, theirs = timed(lambda: choix.ilsr_pairwise(len(conds), pairs, alpha=0.0), repeat=3)
    gap = np.abs(ours - (theirs - theirs.mean())).max()
    met = t_bt <= 0.5 and t_bt <= t_choix
    rows.append(("Bradley-Terry fit (from the vote table)", t_bt, "<= 0.5 s, <= choix", met))
    rows.append(("choix.ilsr_pairwise (from a list of pairs)", t_choix, "", None))
    for by in ("vote", "rater"):
        t, _ = timed(lambda by=by: ratings.bradley_terry(votes, bootstrap=args.rounds, by=by, seed=0))
        rows.append((f"Bradley-Terry + {args.rounds} bootstrap rounds by {by}", t, "<= 30 s", t <= 30))
    t_jod, _ = timed(lambda: ratings.jod(votes, bootstrap=0), repeat=3)
    rows.append(("JOD (Thurstone) fit", t_jod, "", None))
    t, _ = timed(lambda: ratings.jod(votes, bootstrap=args.rounds, by="rater", seed=0))
    rows.append((f"JOD + {args.rounds} bootstrap rounds by rater", t, "", None))
    K = args.small_conditions
    small = ratings.validate_votes(simulate_votes(utility.iloc[:K], 6000, n_raters=60, seed=2))
    t, _ = timed(lambda: ratings.jod(small, bootstrap=args.rounds, by="rater", seed=0))
    rows.append((f"JOD + {args.rounds} rounds by rater, {K} conditions, 6000 votes", t, "<= 30 s", t <= 30))
    t, _ = timed(lambda: ratings.elo(votes, bootstrap=args.rounds, seed=0))
    rows.append((f"Elo, {args.rounds} bootstrap rounds", t, "", None))

    print(f"{args.votes} votes, {args.conditions} conditions, {args.raters} raters; "
          f"{os.cpu_count()} CPUs visible; max |BT - choix| = {gap:.2e}")
    table = pd.DataFrame(rows, columns=["step", "seconds", "target", "met"])
    table["seconds"] = table["seconds"].map(lambda s: f"{s:.3f}")
    table["met"] = table["met"].map({True: "yes", False: "NO", None: ""})
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
