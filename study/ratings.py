"""Pairwise-preference statistics: pure functions over a tidy table of votes.

One row per vote: ``rater``, ``condition_a``, ``condition_b``, ``winner`` in {"a", "b", "tie"};
optional ``bpp_a``/``bpp_b``, ``method_a``/``method_b``, ``timestamp`` and the quality-control
columns used by ``study.quality``. Nothing here touches a database, a file or global state.

Models (formulas and citations in docs/statistics.md):
- online Elo (FastChat), bootstrap over resampled and reshuffled vote orders;
- Bradley-Terry maximum likelihood, ties as half wins (FastChat ``fit_bt``);
- Thurstone Case V in JOD units, pwcmp's method (1 JOD = 75 % preference; its Gaussian prior,
  mean0 regularisation and observer bootstrap), checked against pwcmp's published example;
- Bradley-Terry per method with the log2 bitrate ratio as a covariate;
- win-rate / count matrices, exact binomial tests with Holm correction, Rank (UB).

Bootstraps resample votes (multinomial over identical votes) or raters (cluster bootstrap) and
refit all replicates at once: every model is fitted on counts aggregated per distinct design
row, and a chunk of replicates is one L-BFGS problem with an analytic gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import minimize
from scipy.special import expit, gammaln, log_ndtr, ndtri
from threadpoolctl import threadpool_limits

WINNERS = ("a", "b", "tie")
REQUIRED = ("rater", "condition_a", "condition_b", "winner")
JOD_SIGMA = 1.4826  # Phi(1 / JOD_SIGMA) = 0.75: one JOD is a 75 % preference (pwcmp)
_CHUNK = 250  # bootstrap replicates fitted together; bounds memory at (chunk x design rows)
_PRIOR_CELLS = 2**21  # replicates x ordered pairs x pairs in the buffer of pwcmp's prior (16 MB)
PRIORS = ("gaussian", "none")  # pwcmp's distance priors


class VoteTableError(ValueError):
    """The vote table cannot be analysed; the message says why in one line."""


# ----------------------------------------------------------------------------- validation


def validate_votes(votes: pd.DataFrame) -> pd.DataFrame:
    """Check the vote-table contract and return a normalised copy (str ids, lower-case winner)."""
    missing = [c for c in REQUIRED if c not in votes.columns]
    if missing:
        raise VoteTableError(f"missing column(s): {', '.join(missing)}")
    if len(votes) == 0:
        raise VoteTableError("the vote table has no rows")
    out = votes.copy()
    for col in REQUIRED:
        blank = out[col].isna() | (out[col].astype(str).str.strip() == "")
        if blank.any():
            raise VoteTableError(f"column {col!r} is empty in {int(blank.sum())} row(s), first at row {_first(blank)}")
        out[col] = out[col].astype(str).str.strip()
    out["winner"] = out["winner"].str.lower()
    bad = ~out["winner"].isin(WINNERS)
    if bad.any():
        shown = ", ".join(repr(v) for v in out.loc[bad, "winner"].unique()[:3])
        raise VoteTableError(f"column 'winner' must be a, b or tie; found {shown} in {int(bad.sum())} row(s)")
    same = out["condition_a"] == out["condition_b"]
    if same.any():
        raise VoteTableError(f"condition_a equals condition_b in {int(same.sum())} row(s), first at row {_first(same)}")
    for col in ("bpp_a", "bpp_b"):
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce")
            if ((out[col] <= 0) | np.isinf(out[col])).any():
                raise VoteTableError(f"column {col!r} must be positive and finite where given")
    return out


def _first(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0])


def scoring_votes(votes: pd.DataFrame, drop_excluded: bool = True) -> pd.DataFrame:
    """The votes that enter the scores: no catch trials, and no excluded raters if asked."""
    keep = np.ones(len(votes), dtype=bool)
    if "is_catch" in votes.columns:
        keep &= ~votes["is_catch"].fillna(False).astype(bool).to_numpy()
    if drop_excluded and "excluded" in votes.columns:
        keep &= ~votes["excluded"].fillna(False).astype(bool).to_numpy()
    return votes.loc[keep]


def conditions(votes: pd.DataFrame) -> list[str]:
    """All conditions that appear on either side, sorted (the index order of every matrix)."""
    both = np.concatenate([votes["condition_a"].to_numpy(object), votes["condition_b"].to_numpy(object)])
    return sorted(pd.unique(both))


def outcome(votes: pd.DataFrame) -> np.ndarray:
    """1 if side a won, 0 if side b won, 0.5 for a tie."""
    return votes["winner"].map({"a": 1.0, "b": 0.0, "tie": 0.5}).to_numpy(dtype=float)


# ----------------------------------------------------------------------------- counts and tallies


@dataclass(frozen=True)
class _Tally:
    """Votes aggregated for fitting and resampling.

    rows: distinct design rows (oriented pairs, plus a covariate value for the bitrate model);
    cells: distinct (row, outcome); a bootstrap replicate is a vector of cell counts, which
    ``n_map``/``w_map`` turn into per-row totals ``n`` and a-wins ``w`` (ties count 0.5).
    """

    rows: np.ndarray  # (rows, key columns) the distinct design-row keys, sorted
    X: sparse.csr_matrix  # (rows, params) design, z = X @ theta
    n_map: sparse.csr_matrix  # (cells, rows) 1 where the cell belongs to the row
    w_map: sparse.csr_matrix  # (cells, rows) the cell's outcome y in {0, .5, 1}
    cell_counts: np.ndarray  # (cells,) observed counts
    rater_cells: sparse.csr_matrix  # (raters, cells) observed counts per rater

    def totals(self, cell_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, w) per design row for a (B, cells) array of cell counts."""
        return np.asarray(cell_counts @ self.n_map), np.asarray(cell_counts @ self.w_map)


def _tally(row_keys: np.ndarray, y: np.ndarray, raters: np.ndarray, design) -> _Tally:
    """Aggregate votes by design row. ``design(unique_row_keys)`` builds the sparse X."""
    keys = pd.DataFrame(row_keys)
    row_of_vote = keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy()  # hashing: fast
    rows = keys.drop_duplicates().sort_values(list(keys.columns)).to_numpy()
    cells, cell_of_vote = np.unique(3 * row_of_vote + np.rint(2 * y).astype(int), return_inverse=True)
    n_cells, n_rows = len(cells), len(rows)
    cell_row, cell_y = cells // 3, (cells % 3) / 2.0
    idx = np.arange(n_cells)
    n_map = sparse.csr_matrix((np.ones(n_cells), (idx, cell_row)), shape=(n_cells, n_rows))
    w_map = sparse.csr_matrix((cell_y, (idx, cell_row)), shape=(n_cells, n_rows))
    rater_codes, _ = pd.factorize(pd.Series(raters), sort=True)
    rater_cells = sparse.csr_matrix(
        (np.ones(len(y)), (rater_codes, cell_of_vote)), shape=(rater_codes.max() + 1, n_cells)
    )
    return _Tally(
        rows=rows,
        X=design(rows),
        n_map=n_map,
        w_map=w_map,
        cell_counts=np.bincount(cell_of_vote, minlength=n_cells).astype(float),
        rater_cells=rater_cells,
    )


def _pair_tally(votes: pd.DataFrame, conds: list[str]) -> _Tally:
    """Rows are unordered condition pairs (i < j); y is 'i won'."""
    index = {c: k for k, c in enumerate(conds)}
    ia = votes["condition_a"].map(index).to_numpy()
    ib = votes["condition_b"].map(index).to_numpy()
    y = outcome(votes)
    swap = ia > ib
    i, j = np.where(swap, ib, ia), np.where(swap, ia, ib)
    y = np.where(swap, 1.0 - y, y)
    return _tally(np.column_stack([i, j]), y, votes["rater"].to_numpy(),
                  lambda rows: _difference_design(rows, len(conds)))


def _difference_design(rows: np.ndarray, n_items: int, extra: np.ndarray | None = None) -> sparse.csr_matrix:
    """X[r] = e_i - e_j for rows (i, j, ...), plus optional covariate columns ``extra``."""
    r = np.arange(len(rows))
    i, j = rows[:, 0].astype(int), rows[:, 1].astype(int)
    X = sparse.csr_matrix((np.r_[np.ones(len(r)), -np.ones(len(r))], (np.r_[r, r], np.r_[i, j])),
                          shape=(len(r), n_items))
    return X if extra is None else sparse.hstack([X, sparse.csr_matrix(extra)]).tocsr()


def _replicates(tally: _Tally, rounds: int, by: str, rng: np.random.Generator):
    """Yield chunks of bootstrap cell counts, shape (chunk, cells)."""
    if by not in ("vote", "rater"):
        raise ValueError("by must be 'vote' or 'rater'")
    total = tally.cell_counts.sum()
    n_raters = tally.rater_cells.shape[0]
    for start in range(0, rounds, _CHUNK):
        size = min(_CHUNK, rounds - start)
        if by == "vote":
            yield rng.multinomial(int(total), tally.cell_counts / total, size=size).astype(float)
        else:
            weights = rng.multinomial(n_raters, np.full(n_raters, 1.0 / n_raters), size=size).astype(float)
            yield np.asarray((tally.rater_cells.T @ weights.T).T)


def count_matrix(votes: pd.DataFrame) -> pd.DataFrame:
    """Number of comparisons between each pair of conditions (symmetric, ties included)."""
    conds = conditions(votes)
    n = pd.crosstab(votes["condition_a"], votes["condition_b"]).reindex(index=conds, columns=conds, fill_value=0)
    return (n + n.T).rename_axis(index=None, columns=None)


def wins_matrix(votes: pd.DataFrame, ties: str = "half") -> pd.DataFrame:
    """wins[i, j]: how often row i was preferred over column j; ties count 0.5 or are dropped."""
    if ties not in ("half", "exclude"):
        raise ValueError("ties must be 'half' or 'exclude'")
    conds = conditions(votes)
    y = outcome(votes)
    tie_value = 0.5 if ties == "half" else 0.0
    frame = pd.DataFrame({
        "i": np.r_[votes["condition_a"], votes["condition_b"]],
        "j": np.r_[votes["condition_b"], votes["condition_a"]],
        "w": np.where(np.r_[y, y] == 0.5, tie_value, np.r_[y, 1.0 - y]),
    })
    wins = frame.pivot_table(index="i", columns="j", values="w", aggfunc="sum", fill_value=0.0)
    return wins.reindex(index=conds, columns=conds, fill_value=0.0).rename_axis(index=None, columns=None)


def win_rate_matrix(votes: pd.DataFrame, ties: str = "half") -> pd.DataFrame:
    """P(row preferred over column) as observed; NaN where the pair was never compared."""
    wins = wins_matrix(votes, ties)
    decided = wins + wins.T
    return wins / decided.where(decided > 0)


# ----------------------------------------------------------------------------- solvers


def _lbfgs(fun, x0: np.ndarray, gtol: float) -> np.ndarray:
    # scipy's L-BFGS-B calls BLAS on tiny vectors; threaded OpenBLAS then spends its time
    # waking threads (80x slower for 40 parameters on a busy 2-core machine), so use one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(
            fun, x0.ravel(), jac=True, method="L-BFGS-B",
            options={"maxiter": 5000, "gtol": gtol, "ftol": 1e-15, "maxcor": 20},
        )
    return res.x.reshape(x0.shape)


def _fit_logistic(X, n: np.ndarray, w: np.ndarray, theta0: np.ndarray, l2: float, gtol: float = 1e-9) -> np.ndarray:
    """Batched weighted logistic regression without intercept.

    Replicate b minimises  sum_r n_br softplus(z_br) - w_br z_br + l2/2 |theta_b|^2,  z_b = X theta_b,
    i.e. the Bradley-Terry log-likelihood with ties as half wins. Each replicate's loss is
    divided by its vote count so one tolerance fits any study size.
    """
    B, P = theta0.shape
    scale = n.sum(axis=1, keepdims=True)
    XT = X.T.tocsr()

    def fun(flat):
        theta = flat.reshape(B, P)
        z = np.asarray(X @ theta.T).T
        loss = (n * np.logaddexp(0.0, z) - w * z).sum() + 0.5 * l2 * np.einsum("bp,bp->b", theta, theta)
        grad = np.asarray(XT @ (n * expit(z) - w).T).T + l2 * theta
        return float((loss / scale.ravel()).sum()), (grad / scale).ravel()

    return _lbfgs(fun, theta0, gtol)


def _link_components(pairs: np.ndarray, n: np.ndarray, w: np.ndarray, K: int):
    """pwcmp's patch for a comparison graph in pieces (a design that never links two groups, or a
    bootstrap replicate that lost a condition): in each replicate, the best condition of every
    piece, by the ISO 20462 angular score pwcmp ranks with, gets one win and one loss against the
    best of every other piece. Returns (pairs, n, w), with any pair the links need appended."""
    from scipy.sparse.csgraph import connected_components

    links: dict[tuple[int, int], list[int]] = {}  # pair -> replicates that link it
    full = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(K, K))
    whole = connected_components(full, directed=False)[0] == 1
    for b in np.flatnonzero((n == 0).any(axis=1) | (not whole)):
        on = n[b] > 0
        graph = sparse.coo_matrix((np.ones(on.sum()), (pairs[on, 0], pairs[on, 1])), shape=(K, K))
        count, label = connected_components(graph, directed=False)
        if count == 1:
            continue
        # Q_j = sum_i -(12/pi asin(sqrt(M_ij)) - 3) / 2, M_ij = share of votes for i over j (ISO 20462)
        share = w[b, on] / n[b, on]
        Q = np.zeros(K)
        np.add.at(Q, pairs[on, 1], -(12 / np.pi * np.arcsin(np.sqrt(share)) - 3) / 2)
        np.add.at(Q, pairs[on, 0], -(12 / np.pi * np.arcsin(np.sqrt(1 - share)) - 3) / 2)
        best = sorted(int(np.flatnonzero(label == g)[np.argmax(Q[label == g])]) for g in range(count))
        for x in range(count):
            for y in range(x + 1, count):
                links.setdefault((best[x], best[y]), []).append(b)
    if not links:
        return pairs, n, w
    column = {(int(i), int(j)): c for c, (i, j) in enumerate(pairs)}
    extra = [p for p in links if p not in column]
    column.update({p: len(pairs) + e for e, p in enumerate(extra)})
    pad = np.zeros((n.shape[0], len(extra)))
    pairs = np.vstack([pairs, np.array(extra, dtype=int).reshape(-1, 2)])
    n, w = np.hstack([n, pad]), np.hstack([w, pad])
    for p, replicates in links.items():
        n[replicates, column[p]], w[replicates, column[p]] = 2.0, 1.0
    return pairs, n, w


class _GaussianPrior:
    """pwcmp's Gaussian prior on the distances of a batch of count vectors, with its gradient.

    pwcmp sums over the ordered compared pairs r (each unordered pair u forward and reversed, at
    y_r = +-x_u, x_u = (q_i - q_j) / 1.4826) and takes the same pairs' votes as data s, with the
    kernel K_s(y) = Phi(y)^k_s Phi(-y)^m_s, the likelihood of s's votes (for the prior only,
    unanimous pairs are shifted by one vote: k of n becomes 1 or n - 1):

        prior_u = sum_s (K_s(x_u) + K_s(-x_u)) / Z_s,   Z_s = sum_r K_s(y_r),
        loss    = -2 sum_u log(prior_u + 0.1).

    E[b, r, s] = log K_s(y_r) - max_r log K_s(y_r) is formed by one matrix product into a buffer
    kept between calls (fresh 10-MB arrays cost more than the arithmetic). The maximum needs no
    pass over E: log K_s is concave in y, so it lies at the sorted neighbours of the mode
    Phi^-1(k / (k + m)). Every Z_s is then >= 1, and nothing is divided by zero."""

    def __init__(self, n: np.ndarray, w: np.ndarray):
        on = n > 0
        lose = n - w
        self.on, self.rows_on = on, np.concatenate([on, on], axis=1)
        self.k = np.where(on & (w == 0), 1.0, np.where(on & (lose == 0), n - 1.0, w))
        self.m = np.where(on, n - self.k, 0.0)
        share = np.divide(self.k, self.k + self.m, out=np.full_like(self.k, 0.5), where=on)
        self.mode = np.arctan(ndtri(share))  # ndtri is +-inf where all of s's votes went one way
        B, U = n.shape
        self.E = np.empty((B, 2 * U, U))
        self.off = 4.0 * np.arange(B)[:, None]  # arctan < pi/2 < 4: replicate b's values sit in (4b - 2, 4b + 2]

    def __call__(self, x, a, b, da, db):
        """(loss (B,), d loss / d x (B, U)) at x, with a, b = log Phi(+-x), da, db their x-derivatives."""
        on, k, m, E = self.on, self.k, self.m, self.E
        U = x.shape[1]
        A, Bv = np.concatenate([a, b], axis=1), np.concatenate([b, a], axis=1)  # rows: forward, reversed
        big = np.where(self.rows_on, 0.0, -1e30)  # rows of pairs this replicate lacks: weight e^-700
        left = np.stack([A, Bv, np.ones_like(A), big], axis=2)
        right = np.stack([k, m, -self._top(np.concatenate([x, -x], axis=1), A, Bv), k + m + 1.0], axis=1)
        np.matmul(left, right, out=E)
        # terms under e^-700 of their column's largest: raised to e^-700, which no double-precision sum
        # can notice, as exp's path for results that underflow is ten times slower
        np.exp(np.maximum(E, -700.0, out=E), out=E)
        inv_z = np.divide(on, E.sum(axis=1), out=np.zeros_like(x), where=on)
        both = (E @ inv_z[:, :, None])[:, :, 0]
        prior = both[:, :U] + both[:, U:]
        loss = -2.0 * np.where(on, np.log(prior + 0.1), 0.0).sum(axis=1)
        c = on / (prior + 0.1)
        v = inv_z * (np.concatenate([c, c], axis=1)[:, None, :] @ E)[:, 0, :]
        FR = E @ (inv_z[:, :, None] * np.stack([k, m, k * v, m * v], axis=2))
        F, R = FR[:, :U], FR[:, U:]  # sums over s of W_rs (k_s, m_s, k_s v_s, m_s v_s), forward / reversed rows
        coef_a = c * (F[..., 0] + R[..., 1]) - (F[..., 2] + R[..., 3])
        coef_b = c * (F[..., 1] + R[..., 0]) - (F[..., 3] + R[..., 2])
        return loss, -2.0 * on * (da * coef_a + db * coef_b)

    def _top(self, y, A, Bv):
        """max over compared rows r of k_s A_r + m_s B_r, per column s (0 for columns not compared)."""
        B, R = y.shape
        t = np.where(self.rows_on, np.arctan(y), 2.0)  # monotone in y; absent rows sort last
        order = np.argsort(t, axis=1)
        flat = (np.take_along_axis(t, order, axis=1) + self.off).ravel()  # all replicates sorted at once
        hi = np.searchsorted(flat, (self.mode + self.off).ravel()).reshape(self.mode.shape) - R * np.arange(B)[:, None]
        last = np.maximum(self.rows_on.sum(axis=1, keepdims=True) - 1, 0)
        best = np.full(self.mode.shape, -np.inf)
        for idx in (np.clip(hi - 1, 0, last), np.clip(hi, 0, last)):
            r = np.take_along_axis(order, idx, axis=1)
            value = self.k * np.take_along_axis(A, r, axis=1) + self.m * np.take_along_axis(Bv, r, axis=1)
            best = np.maximum(best, value)
        return np.where(self.on & np.isfinite(best), best, 0.0)


def _fit_pwcmp(pairs: np.ndarray, n: np.ndarray, w: np.ndarray, K: int, q0: np.ndarray, prior: str,
               gtol: float = 1e-5) -> np.ndarray:
    """pwcmp's ``pw_scale`` for a batch of count vectors, from start ``q0``; returns JOD scores (B, K).

    Row u of ``pairs`` compares i = pairs[u, 0] and j = pairs[u, 1]; n[b, u] votes, w[b, u] of them
    for i (ties half). After ``_link_components``, pwcmp minimises over q, summing over *ordered*
    compared pairs (so over every unordered pair twice):

        -2 sum_u [w_u log Phi(x_u) + (n_u - w_u) log Phi(-x_u)]   x_u = (q_i - q_j) / 1.4826
        -2 sum_u log(prior_u + 0.1)                               (prior="gaussian": _GaussianPrior)
        + 0.01 mean(q)^2                                          (its "mean0" regularisation)

    The likelihood is taken in log space (pwcmp multiplies probabilities, which underflows on
    pairs with many votes; the value is otherwise the same)."""
    if prior not in PRIORS:
        raise ValueError("prior must be 'gaussian' or 'none'")
    pairs, n, w = _link_components(pairs, n, w, K)
    U = len(pairs)
    size = max(1, _PRIOR_CELLS // (2 * U * U)) if prior == "gaussian" else len(q0)  # bounds the prior's buffer
    return np.vstack([_solve_pwcmp(pairs, n[s:s + size], w[s:s + size], K, q0[s:s + size], prior, gtol)
                      for s in range(0, len(q0), size)])


def _solve_pwcmp(pairs, n, w, K, q0, prior, gtol):
    """The L-BFGS solve of ``_fit_pwcmp`` for one batch of linked count vectors.

    It runs in z, q = q0 + P z, with P P' the inverse of the objective's Hessian at q = 0 without
    the prior (n-weighted graph Laplacian, plus the mean0 term): there L-BFGS sees a Hessian near
    the identity, z is in standard errors and a few iterations suffice at any study size. The
    minimum is the same; only the path is shorter. As P depends on the counts only, a replicate
    equal to the data stops where the fit on the data did, even where the data put no bound on
    a distance (pairs that all went one way)."""
    D = _difference_design(pairs, K)  # x = D @ q / sigma
    DT = D.T.tocsr()
    lose = n - w
    B = len(q0)
    gaussian = _GaussianPrior(n, w) if prior == "gaussian" else None

    def terms(x):
        a, b = log_ndtr(x), log_ndtr(-x)
        log_phi = -0.5 * x**2 - 0.5 * np.log(2 * np.pi)
        return a, b, np.exp(log_phi - a), -np.exp(log_phi - b)  # log Phi(+-x) and their x-derivatives

    # the likelihood's curvature at q = 0 (pwcmp's start): -d2/dx2 log Phi(x) = 2 / pi there
    h = 2.0 * n * (2.0 / np.pi) / JOD_SIGMA**2
    H = np.full((B, K, K), 0.02 / K**2)
    for r, c, sign in ((0, 0, 1.0), (1, 1, 1.0), (0, 1, -1.0), (1, 0, -1.0)):
        np.add.at(H, (slice(None), pairs[:, r], pairs[:, c]), sign * h)
    P = np.linalg.inv(np.linalg.cholesky(H)).transpose(0, 2, 1)  # P = L^-T, H = L L'

    def fun(flat):
        q = q0 + np.einsum("bij,bj->bi", P, flat.reshape(B, K))
        x = np.asarray(D @ q.T).T / JOD_SIGMA
        a, b, da, db = terms(x)
        loss = -2.0 * (w * a + lose * b).sum(axis=1)
        g_x = -2.0 * (w * da + lose * db)
        if gaussian is not None:
            p_loss, p_grad = gaussian(x, a, b, da, db)
            loss, g_x = loss + p_loss, g_x + p_grad
        mean = q.mean(axis=1, keepdims=True)
        loss = loss + 0.01 * mean[:, 0] ** 2
        grad = np.asarray(DT @ g_x.T).T / JOD_SIGMA + 0.02 * mean / K
        return float(loss.sum()), np.einsum("bij,bi->bj", P, grad).ravel()

    # the Newton step of the preconditioned problem (Hessian ~ identity) as the start: L-BFGS-B
    # would cap its first step at length 1
    z0 = -fun(np.zeros(q0.size))[1]
    z = _lbfgs(fun, z0.reshape(q0.shape), gtol)
    return q0 + np.einsum("bij,bj->bi", P, z)


def _percentiles(samples: np.ndarray, ci: float, method: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.percentile(samples, [50 * (1 - ci), 50 * (1 + ci)], axis=0, method=method)
    return lo, hi


# ----------------------------------------------------------------------------- Elo


def vote_order(votes: pd.DataFrame) -> np.ndarray:
    """Row indices in the order the votes were cast: by ``timestamp`` when the table has one
    (numbers, datetimes, or ISO 8601 text as a CSV holds it; naive times are UTC; equal times keep
    their row order), else the row order. A timestamp column that is empty throughout counts as
    none; one that lacks or garbles some entries raises ``VoteTableError``, as any order chosen
    for those votes would be a guess."""
    if "timestamp" not in votes.columns or votes["timestamp"].isna().all():
        return np.arange(len(votes))
    stamps = votes["timestamp"]
    numeric = pd.api.types.is_numeric_dtype(stamps) and not pd.api.types.is_bool_dtype(stamps)
    if numeric:
        key = stamps.to_numpy(dtype=float)
        bad = ~np.isfinite(key)
    else:
        try:
            stamps = pd.to_datetime(stamps, utc=True, format="ISO8601", errors="coerce")
        except (TypeError, ValueError) as e:
            raise VoteTableError(f"column 'timestamp' cannot be read as times ({e})") from None
        bad = stamps.isna().to_numpy()
    if bad.any():
        raise VoteTableError(f"column 'timestamp' is missing or unreadable in {int(bad.sum())} row(s), "
                             f"first at row {int(np.flatnonzero(bad)[0])}")
    if not numeric:
        key = stamps.astype("int64").to_numpy()  # ticks of the column's own unit, which never overflow
    return np.argsort(key, kind="stable")


def _elo_run(ia: np.ndarray, ib: np.ndarray, y: np.ndarray, blocks, rounds: int, n_items: int, *, k: float,
             base: float, scale: float, init: float) -> np.ndarray:
    """Online Elo for ``rounds`` independent vote sequences at once; returns (rounds, n_items).

    ``blocks`` yields (steps, rounds) arrays of vote indices: step t of every sequence is applied
    together, so the Python loop runs once per step, not once per step and round."""
    rating = np.full(rounds * n_items, float(init))  # flat, so one fancy index reaches every round
    offset = np.arange(rounds) * n_items
    alpha = np.log(base) / scale  # 1 / (1 + base**((Rb - Ra) / scale)) == expit(alpha * (Ra - Rb))
    for block in blocks:
        fa, fb, yb = ia[block] + offset, ib[block] + offset, y[block]
        for t in range(len(block)):
            a, b = fa[t], fb[t]
            delta = k * (yb[t] - expit(alpha * (rating[a] - rating[b])))
            rating[a] += delta
            rating[b] -= delta
    return rating.reshape(rounds, n_items)


def elo(votes: pd.DataFrame, *, bootstrap: int = 1000, seed: int = 0, ci: float = 0.95, k: float = 4.0,
        base: float = 10.0, scale: float = 400.0, init: float = 1000.0) -> pd.DataFrame:
    """Online Elo (ties 0.5). With ``bootstrap`` > 0: median and percentile CI over resampled,
    reshuffled vote sequences drawn from the canonically sorted votes, so the result does not
    depend on the input row order. With ``bootstrap`` = 0: one pass in ``vote_order``, a
    provisional live standing without CI."""
    conds = conditions(votes)
    index = {c: n for n, c in enumerate(conds)}
    ia = votes["condition_a"].map(index).to_numpy()
    ib = votes["condition_b"].map(index).to_numpy()
    y = outcome(votes)
    params = dict(k=k, base=base, scale=scale, init=init)
    if bootstrap <= 0:
        order = vote_order(votes)
        point = _elo_run(ia, ib, y, [order[:, None]], 1, len(conds), **params)[0]
        return pd.DataFrame({"condition": conds, "elo": point, "elo_lo": np.nan, "elo_hi": np.nan})
    canonical = np.lexsort((y, ib, ia))  # only (a, b, outcome) matter to Elo
    ia, ib, y = ia[canonical], ib[canonical], y[canonical]
    rng = np.random.default_rng(seed)
    N, step = len(y), max(1, 2_000_000 // bootstrap)  # index blocks of about 16 MB
    blocks = (rng.integers(0, N, size=(min(step, N - s), bootstrap)) for s in range(0, N, step))
    samples = _elo_run(ia, ib, y, blocks, bootstrap, len(conds), **params)
    lo, hi = _percentiles(samples, ci)
    return pd.DataFrame({"condition": conds, "elo": np.median(samples, axis=0), "elo_lo": lo, "elo_hi": hi})


# ----------------------------------------------------------------------------- Bradley-Terry


def _to_scale(theta: np.ndarray, anchor_idx: int | None, *, scale: float, base: float, offset: float) -> np.ndarray:
    """Natural-log strengths -> display scale, centred on the mean or on the anchor."""
    ref = theta[..., [anchor_idx]] if anchor_idx is not None else theta.mean(axis=-1, keepdims=True)
    return offset + scale * (theta - ref) / np.log(base)


def bradley_terry(votes: pd.DataFrame, *, bootstrap: int = 1000, by: str = "vote", seed: int = 0, ci: float = 0.95,
                  anchor: str | None = None, scale: float = 400.0, base: float = 10.0, offset: float = 1000.0,
                  l2: float = 0.0) -> pd.DataFrame:
    """Bradley-Terry maximum likelihood, ties as half wins, on the Elo scale by default:
    score = offset + scale * log_base(strength), centred so the mean (or ``anchor``) is ``offset``.
    ``scale=1, base=e, offset=0`` gives natural-log strengths with mean 0 (choix's convention).
    CIs are bootstrap percentiles, resampling votes or whole raters (``by``)."""
    conds = conditions(votes)
    if anchor is not None and anchor not in conds:
        raise VoteTableError(f"anchor condition {anchor!r} does not appear in the votes")
    anchor_idx = None if anchor is None else conds.index(anchor)
    tally = _pair_tally(votes, conds)
    n, w = tally.totals(tally.cell_counts[None, :])
    theta = _fit_logistic(tally.X, n, w, np.zeros((1, len(conds))), l2)
    show = dict(scale=scale, base=base, offset=offset)
    out = pd.DataFrame({"condition": conds, "bt": _to_scale(theta[0], anchor_idx, **show)})
    out["bt_lo"], out["bt_hi"] = np.nan, np.nan
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = []
        for counts in _replicates(tally, bootstrap, by, rng):
            n_b, w_b = tally.totals(counts)
            fit = _fit_logistic(tally.X, n_b, w_b, np.repeat(theta, len(counts), axis=0), l2)
            samples.append(_to_scale(fit, anchor_idx, **show))
        out["bt_lo"], out["bt_hi"] = _percentiles(np.vstack(samples), ci)
    return out


# ----------------------------------------------------------------------------- Thurstone / JOD


def jod(votes: pd.DataFrame, *, bootstrap: int = 1000, by: str = "rater", seed: int = 0, ci: float = 0.95,
        prior: str = "gaussian", anchor: str | None = None) -> pd.DataFrame:
    """pwcmp's Thurstone Case V scaling in JOD units (1 JOD difference = 75 % preference):
    ``pw_scale`` (its Gaussian prior, or ``prior="none"``; mean 0, or ``anchor`` = 0, pwcmp's
    "fix0") and ``pw_scale_bootstrp`` (CIs: percentiles of refits over resampled raters by
    default). Ties count half. Formulas and the validation against pwcmp: docs/statistics.md."""
    if prior not in PRIORS:
        raise ValueError("prior must be 'gaussian' or 'none'")
    conds = conditions(votes)
    if anchor is not None and anchor not in conds:
        raise VoteTableError(f"anchor condition {anchor!r} does not appear in the votes")
    anchor_idx = None if anchor is None else conds.index(anchor)
    tally = _pair_tally(votes, conds)
    pairs = tally.rows.astype(int)
    K = len(conds)

    def centre(q):  # the objective depends on differences only, so this is pwcmp's mean0 / fix0 exactly
        return q - (q[..., [anchor_idx]] if anchor_idx is not None else q.mean(axis=-1, keepdims=True))

    n, w = tally.totals(tally.cell_counts[None, :])
    q = _fit_pwcmp(pairs, n, w, K, np.zeros((1, K)), prior)  # pwcmp starts from 0
    out = pd.DataFrame({"condition": conds, "jod": centre(q[0])})
    out["jod_lo"], out["jod_hi"] = np.nan, np.nan
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = []
        for counts in _replicates(tally, bootstrap, by, rng):
            n_b, w_b = tally.totals(counts)
            samples.append(centre(_fit_pwcmp(pairs, n_b, w_b, K, np.repeat(q, len(counts), axis=0), prior)))
        # MATLAB's prctile, which pwcmp calls, is numpy's "hazen" method
        out["jod_lo"], out["jod_hi"] = _percentiles(np.vstack(samples), ci, method="hazen")
    return out


def leave_one_rater_out_likelihood(votes: pd.DataFrame, prior: str = "gaussian") -> pd.DataFrame:
    """pwcmp's outlier statistic: for each rater, fit JOD (``pw_scale``) on all other raters, then
    the log10 binomial likelihood of this rater's answers under that fit, divided by the rater's
    trials. All leave-one-out fits are solved as one batch."""
    conds = conditions(votes)
    tally = _pair_tally(votes, conds)
    pairs = tally.rows.astype(int)
    mine = tally.rater_cells.toarray()  # (raters, cells)
    n_r, w_r = tally.totals(mine)
    n_o, w_o = tally.totals(tally.cell_counts[None, :] - mine)
    n_all, w_all = tally.totals(tally.cell_counts[None, :])
    start = _fit_pwcmp(pairs, n_all, w_all, len(conds), np.zeros((1, len(conds))), prior)  # close to every fit
    q = _fit_pwcmp(pairs, n_o, w_o, len(conds), np.repeat(start, len(mine), axis=0), prior)
    d = (q[:, pairs[:, 0]] - q[:, pairs[:, 1]]) / JOD_SIGMA
    log_binom = gammaln(n_r + 1) - gammaln(w_r + 1) - gammaln(n_r - w_r + 1)
    loglik = (log_binom + w_r * log_ndtr(d) + (n_r - w_r) * log_ndtr(-d)).sum(axis=1) / np.log(10)
    raters = sorted(pd.unique(votes["rater"]))  # the rater order of the tally (factorize, sort=True)
    trials = n_r.sum(axis=1)
    return pd.DataFrame({"rater": raters, "trials": trials, "log10_likelihood": loglik / trials})


# ----------------------------------------------------------------------------- bitrate-controlled BT


@dataclass(frozen=True)
class BitrateControlled:
    """Bradley-Terry per method with the log2 bitrate ratio as a covariate.

    logit P(a over b) = s[method_a] - s[method_b] + beta * log2(bpp_a / bpp_b)
    methods: method, strength (natural-log odds, mean 0) and CI;
    beta: the log-odds gained by doubling one's own bitrate, with CI;
    pairs: for each ordered (method A, method B): ``effect`` = s_A - s_B at equal bitrate, and
    ``p_at_ratio`` = P(A preferred over B when B uses ``bpp_ratio`` times A's bitrate), with CIs.
    """

    methods: pd.DataFrame
    beta: pd.DataFrame
    pairs: pd.DataFrame
    bpp_ratio: float

    def to_dict(self) -> dict:
        return {
            "bpp_ratio": self.bpp_ratio,
            "beta": self.beta.to_dict(orient="records")[0],
            "methods": self.methods.to_dict(orient="records"),
            "pairs": self.pairs.to_dict(orient="records"),
        }


def bitrate_controlled_bt(votes: pd.DataFrame, *, bootstrap: int = 1000, by: str = "vote", seed: int = 0,
                          ci: float = 0.95, bpp_ratio: float = 2.0, l2: float = 0.0) -> BitrateControlled:
    """Answer "is A preferred over B even when B uses ``bpp_ratio`` times the bitrate?"."""
    needed = [c for c in ("method_a", "method_b", "bpp_a", "bpp_b") if c not in votes.columns]
    if needed:
        raise VoteTableError(f"the bitrate-controlled model needs column(s): {', '.join(needed)}")
    usable = votes.dropna(subset=["method_a", "method_b", "bpp_a", "bpp_b"])
    if usable.empty:
        raise VoteTableError("no vote has both methods and both bitrates")
    methods = sorted(set(usable["method_a"].astype(str)) | set(usable["method_b"].astype(str)))
    index = {m: k for k, m in enumerate(methods)}
    ma = usable["method_a"].astype(str).map(index).to_numpy()
    mb = usable["method_b"].astype(str).map(index).to_numpy()
    x = np.round(np.log2(usable["bpp_a"].to_numpy(float) / usable["bpp_b"].to_numpy(float)), 9)
    y = outcome(usable)
    # One orientation per design row: lower method index first (equal methods: x >= 0).
    swap = (ma > mb) | ((ma == mb) & (x < 0))
    i, j = np.where(swap, mb, ma), np.where(swap, ma, mb)
    x, y = np.where(swap, -x, x), np.where(swap, 1.0 - y, y)
    M = len(methods)
    tally = _tally(np.column_stack([i, j, x]), y, usable["rater"].to_numpy(),
                   lambda rows: _difference_design(rows, M, extra=rows[:, 2:3]))

    def summarise(theta):  # (B, M + 1) -> centred strengths, beta, pair effects, p at ratio
        s = theta[:, :M] - theta[:, :M].mean(axis=1, keepdims=True)
        beta = theta[:, M]
        effect = s[:, :, None] - s[:, None, :]
        return s, beta, effect, expit(effect - beta[:, None, None] * np.log2(bpp_ratio))

    n, w = tally.totals(tally.cell_counts[None, :])
    theta = _fit_logistic(tally.X, n, w, np.zeros((1, M + 1)), l2)
    point = summarise(theta)
    bounds = [(np.full_like(p[0], np.nan, dtype=float),) * 2 for p in point]
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        fits = []
        for counts in _replicates(tally, bootstrap, by, rng):
            n_b, w_b = tally.totals(counts)
            fits.append(_fit_logistic(tally.X, n_b, w_b, np.repeat(theta, len(counts), axis=0), l2))
        bounds = [_percentiles(p, ci) for p in summarise(np.vstack(fits))]
    (s, beta, effect, p_ratio), (s_ci, b_ci, e_ci, p_ci) = [p[0] for p in point], bounds
    table = pd.DataFrame({"method": methods, "strength": s, "strength_lo": s_ci[0], "strength_hi": s_ci[1]})
    beta_table = pd.DataFrame({"beta_per_doubling": [beta], "beta_lo": [b_ci[0]], "beta_hi": [b_ci[1]],
                               "votes": [int(n.sum())]})
    A, B = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
    off = A != B
    pairs = pd.DataFrame({
        "method_a": np.array(methods)[A[off]], "method_b": np.array(methods)[B[off]],
        "effect": effect[off], "effect_lo": e_ci[0][off], "effect_hi": e_ci[1][off],
        "p_equal_bpp": expit(effect[off]),
        "p_at_ratio": p_ratio[off], "p_at_ratio_lo": p_ci[0][off], "p_at_ratio_hi": p_ci[1][off],
    })
    return BitrateControlled(table, beta_table, pairs, bpp_ratio)


# ----------------------------------------------------------------------------- tests and ranks


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def pairwise_tests(votes: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Exact two-sided binomial (sign) test per compared pair, ties left out, Holm-corrected."""
    from scipy.stats import binomtest  # scipy.stats takes ~0.7 s to import; only this needs it
    wins = wins_matrix(votes, ties="exclude")
    ties = wins_matrix(votes, ties="half") - wins
    conds = list(wins.index)
    rows = []
    for a in range(len(conds)):
        for b in range(a + 1, len(conds)):
            wa, wb = int(wins.iat[a, b]), int(wins.iat[b, a])
            n_ties = int(round(2 * ties.iat[a, b]))
            if wa + wb + n_ties == 0:
                continue
            p = binomtest(wa, wa + wb).pvalue if wa + wb else 1.0
            rows.append((conds[a], conds[b], wa, wb, n_ties, wa / (wa + wb) if wa + wb else np.nan, p))
    columns = ["condition_a", "condition_b", "wins_a", "wins_b", "ties", "win_rate_a", "p_value"]
    out = pd.DataFrame(rows, columns=columns)
    out["p_holm"] = holm(out["p_value"]) if len(out) else []
    out["significant"] = out["p_holm"] < alpha
    return out


def rank_ub(lo, hi) -> np.ndarray:
    """FastChat's Rank (UB): 1 + the number of conditions whose lower bound exceeds my upper bound."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return 1 + (lo[None, :] > hi[:, None]).sum(axis=1)


# ----------------------------------------------------------------------------- leaderboard


def condition_summary(votes: pd.DataFrame) -> pd.DataFrame:
    """Per condition: method (from method_a/_b, else the condition), mean bpp, votes, win rate."""
    y = outcome(votes)
    sides = pd.DataFrame({
        "condition": np.r_[votes["condition_a"], votes["condition_b"]],
        "score": np.r_[y, 1.0 - y],
        "method": np.r_[votes["method_a"], votes["method_b"]] if {"method_a", "method_b"} <= set(votes.columns)
        else np.r_[votes["condition_a"], votes["condition_b"]],
        "bpp": np.r_[votes["bpp_a"], votes["bpp_b"]] if {"bpp_a", "bpp_b"} <= set(votes.columns) else np.nan,
    })
    g = sides.groupby("condition", sort=True)
    return pd.DataFrame({
        "method": g["method"].agg(lambda s: s.mode().iat[0] if s.notna().any() else np.nan).astype(str),
        "bpp": g["bpp"].mean(),
        "votes": g.size(),
        "win_rate": g["score"].mean(),
    }).reset_index()


def primary_model(models) -> str:
    """The score a leaderboard of `models` is ordered and ranked by: the first of bt, jod, elo."""
    return next(m for m in ("bt", "jod", "elo") if m in models)


def leaderboard(votes: pd.DataFrame, *, models=("elo", "bt", "jod"), bootstrap: int = 1000, by: str | None = None,
                seed: int = 0, ci: float = 0.95, anchor: str | None = None, elo_params: dict | None = None,
                l2: float = 0.0) -> pd.DataFrame:
    """One table: condition, method, bpp, a score and CI per model, votes, win rate, Rank (UB).

    ``by=None`` uses each model's customary bootstrap unit (votes for BT, raters for JOD);
    Rank (UB) and the row order follow the first of bt, jod, elo that was computed. ``l2`` > 0 puts
    a Gaussian prior (variance 1/l2) on BT log-strengths: use it while a condition has never lost."""
    unknown = set(models) - {"elo", "bt", "jod"}
    if unknown or not models:
        raise ValueError(f"models must be a non-empty subset of elo, bt, jod; got {sorted(models)}")
    table = condition_summary(votes)
    common = dict(bootstrap=bootstrap, seed=seed, ci=ci)
    if "elo" in models:
        table = table.merge(elo(votes, **common, **(elo_params or {})), on="condition")
    if "bt" in models:
        table = table.merge(bradley_terry(votes, **common, by=by or "vote", anchor=anchor, l2=l2), on="condition")
    if "jod" in models:
        table = table.merge(jod(votes, **common, by=by or "rater", anchor=anchor), on="condition")
    primary = primary_model(models)
    table["rank_ub"] = rank_ub(table[f"{primary}_lo"], table[f"{primary}_hi"])
    table = table.sort_values(primary, ascending=False, kind="stable").reset_index(drop=True)
    columns = ["condition", "method", "bpp"] + [c for m in ("elo", "bt", "jod") if m in models
                                                for c in (m, f"{m}_lo", f"{m}_hi")] + ["votes", "win_rate", "rank_ub"]
    return table[columns]
