"""Simulated 2AFC studies with known utilities: for tests, benchmarks and demo dashboards."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, ndtr

from study.ratings import JOD_SIGMA


def simulate_votes(utility: pd.Series, n_votes: int, *, n_raters: int = 20, seed: int = 0, link: str = "logit",
                   info: pd.DataFrame | None = None) -> pd.DataFrame:
    """Votes on uniformly drawn pairs of distinct conditions; P(a over b) = F(u_a - u_b).

    ``utility``: condition -> true utility (natural-log strength for ``link="logit"``, JOD for
    ``link="probit"``, i.e. Phi((u_a - u_b) / 1.4826)). ``info`` (indexed by condition, columns
    ``method`` and ``bpp``) adds method_a/_b and bpp_a/_b. Raters take votes round-robin."""
    if link not in ("logit", "probit"):
        raise ValueError("link must be 'logit' or 'probit'")
    rng = np.random.default_rng(seed)
    names = np.asarray(utility.index, dtype=object)
    u = utility.to_numpy(dtype=float)
    a = rng.integers(0, len(u), n_votes)
    b = (a + rng.integers(1, len(u), n_votes)) % len(u)  # uniform over the other conditions
    diff = u[a] - u[b]
    p = expit(diff) if link == "logit" else ndtr(diff / JOD_SIGMA)
    votes = pd.DataFrame({
        "trial_id": np.arange(n_votes),
        "rater": [f"rater{r:03d}" for r in np.arange(n_votes) % n_raters],
        "condition_a": names[a].astype(str),
        "condition_b": names[b].astype(str),
        "winner": np.where(rng.random(n_votes) < p, "a", "b"),
    })
    if info is not None:
        for side, idx in (("a", a), ("b", b)):
            votes[f"method_{side}"] = info.loc[names[idx], "method"].to_numpy()
            votes[f"bpp_{side}"] = info.loc[names[idx], "bpp"].to_numpy(dtype=float)
    return votes
