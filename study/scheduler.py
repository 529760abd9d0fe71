"""Which pairs a session shows, in which order and on which side (pure functions, no database).

A session's whole plan is made at once when its rater consents (a batch, in the spirit of ASAP), from
the pair counts of every planned trial so far and the votes so far:
- "balanced": the least-compared (image, condition pair) first, ties broken at random;
- "active": greedy expected-information-gain batch under a Bradley-Terry posterior fitted to
  the votes (Laplace approximation); after each pick the posterior is updated with the expected
  information of that comparison, so a batch spreads over pairs. The image of a pair is the one
  where that pair was compared least.
Then catch trials (reference vs. a heavily degraded copy) go to random positions and repeats of
earlier regular trials (sides swapped) go after their originals. Sides are randomised per trial.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

REFERENCE, CATCH = "reference", "catch"     # stimulus keys next to the condition keys
PRIOR_SD = 2.0          # prior on BT log-strengths; keeps the fit finite with few votes
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(24)   # quadrature for E over a normal
_GH_W = _GH_W / _GH_W.sum()


@dataclass(frozen=True)
class PlannedTrial:
    kind: str                    # regular | catch | repeat
    image: str
    first: str                   # stimulus keys as the scheduler chose the pair
    second: str
    swapped: bool                # True: `second` is shown on the left
    repeat_of: int | None = None     # index of the earlier trial this repeats
    correct_side: str | None = None  # catch trials: the side of the undegraded image

    @property
    def left(self) -> str:
        return self.second if self.swapped else self.first

    @property
    def right(self) -> str:
        return self.first if self.swapped else self.second


def pair_key(image: str, a: str, b: str) -> tuple[str, str, str]:
    return (image, *sorted((a, b)))


# ---------------------------------------------------------------------------------------------
# Bradley-Terry posterior (MAP + Laplace) and expected information gain of one comparison.

def bt_posterior(conditions: list[str], wins: dict[tuple[str, str], int]) -> tuple[np.ndarray, np.ndarray]:
    """MAP log-strengths and their precision matrix; wins[(a, b)] = times a beat b."""
    k = len(conditions)
    idx = {c: i for i, c in enumerate(conditions)}
    w = np.zeros((k, k))
    for (a, b), n in wins.items():
        if a in idx and b in idx:
            w[idx[a], idx[b]] += n
    n = w + w.T
    theta = np.zeros(k)
    for _ in range(50):     # Newton on a strictly concave objective: converges in a few steps
        p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))   # p[i, j] = P(i beats j)
        grad = (w - n * p).sum(1) - theta / PRIOR_SD**2
        fisher = n * p * (1 - p)
        precision = np.diag(fisher.sum(1)) - fisher + np.eye(k) / PRIOR_SD**2
        step = np.linalg.solve(precision, grad)
        theta += step
        if np.abs(step).max() < 1e-9:
            break
    p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))
    fisher = n * p * (1 - p)
    return theta, np.diag(fisher.sum(1)) - fisher + np.eye(k) / PRIOR_SD**2


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def expected_information_gain(mean, var) -> np.ndarray:
    """Mutual information (nats) between one vote and the strength difference ~ N(mean, var);
    element-wise over arrays of means and variances."""
    mean, var = np.asarray(mean, dtype=float), np.asarray(var, dtype=float)
    p = 1.0 / (1.0 + np.exp(-(mean[..., None] + np.sqrt(var)[..., None] * _GH_X)))
    return _entropy(p @ _GH_W) - _entropy(p) @ _GH_W


# ---------------------------------------------------------------------------------------------

def _least_used_image(images, a, b, counts, previous, rng):
    options = sorted(images, key=lambda im: (counts.get(pair_key(im, a, b), 0), im == previous, rng.random()))
    return options[0]


def _balanced(images, conditions, n, counts, rng):
    counts = dict(counts)
    out, previous = [], None
    cands = [(im, a, b) for im in images for a, b in itertools.combinations(conditions, 2)]
    for _ in range(n):
        im, a, b = min(cands, key=lambda c: (counts.get(pair_key(*c), 0), c[0] == previous, rng.random()))
        counts[pair_key(im, a, b)] = counts.get(pair_key(im, a, b), 0) + 1
        out.append((im, a, b) if rng.random() < 0.5 else (im, b, a))
        previous = im
    return out


def _active(images, conditions, n, counts, wins, rng):
    theta, precision = bt_posterior(conditions, wins)
    pairs = list(itertools.combinations(range(len(conditions)), 2))

    def expect(precision, i, j, times):
        """Add the expected Fisher information of `times` comparisons of i and j."""
        p = 1.0 / (1.0 + np.exp(theta[j] - theta[i]))
        e = np.zeros(len(conditions))
        e[i], e[j] = 1.0, -1.0
        return precision + times * p * (1 - p) * np.outer(e, e)

    # Comparisons planned in other sessions but not voted on yet count as if done, so that
    # sessions starting at the same time do not all pile onto the same pair.
    for i, j in pairs:
        a, b = conditions[i], conditions[j]
        planned = sum(counts.get(pair_key(im, a, b), 0) for im in images)
        pending = planned - wins.get((a, b), 0) - wins.get((b, a), 0)
        if pending > 0:
            precision = expect(precision, i, j, pending)
    counts = dict(counts)
    first, second = np.array(pairs).T
    out, previous = [], None
    for _ in range(n):
        cov = np.linalg.inv(precision)
        gain = expected_information_gain(theta[first] - theta[second],
                                          cov[first, first] + cov[second, second] - 2 * cov[first, second])
        best = np.flatnonzero(gain >= gain.max() - 1e-12)     # ties broken at random
        i, j = pairs[best[rng.randrange(len(best))]]
        precision = expect(precision, i, j, 1)   # the next pick sees this one as done
        a, b = conditions[i], conditions[j]
        im = _least_used_image(images, a, b, counts, previous, rng)
        counts[pair_key(im, a, b)] = counts.get(pair_key(im, a, b), 0) + 1
        out.append((im, a, b) if rng.random() < 0.5 else (im, b, a))
        previous = im
    return out


def plan_session(*, images: list[str], conditions: list[str], regular: int, catch: int, repeats: int,
                 strategy: str, randomise_sides: bool, counts: dict, wins: dict,
                 rng: random.Random) -> list[PlannedTrial]:
    """The ordered trials of one session.

    counts: planned comparisons so far per pair_key(image, a, b) (all sessions, voted or not);
    wins: votes so far, wins[(a, b)] = times condition a was preferred to b (pooled over images).
    """
    if strategy == "active":
        pairs = _active(images, conditions, regular, counts, wins, rng)
    else:
        pairs = _balanced(images, conditions, regular, counts, rng)
    side = (lambda: rng.random() < 0.5) if randomise_sides else (lambda: False)
    trials: list[PlannedTrial] = [PlannedTrial("regular", im, a, b, side()) for im, a, b in pairs]

    # Repeats: the same pair and image with the sides swapped, at least two trials later when
    # there is room. Identity (not index) links a repeat to its original while inserting.
    originals = rng.sample(trials, repeats)
    order = list(trials)
    for orig in originals:
        pos = next(i for i, x in enumerate(order) if x is orig)   # equal twins may exist
        lo = min(pos + 3, len(order))
        order.insert(rng.randint(lo, len(order)), ("repeat", orig))
    for _ in range(catch):
        order.insert(rng.randint(0, len(order)), ("catch", rng.choice(images)))

    out: list[PlannedTrial] = []
    index_of: dict[int, int] = {}
    for item in order:
        if isinstance(item, PlannedTrial):
            index_of[id(item)] = len(out)
            out.append(item)
        elif item[0] == "repeat":
            orig = item[1]
            out.append(PlannedTrial("repeat", orig.image, orig.first, orig.second, not orig.swapped,
                                    repeat_of=index_of[id(orig)]))
        else:
            swapped = rng.random() < 0.5    # always random: a fixed side would teach the answer
            out.append(PlannedTrial("catch", item[1], REFERENCE, CATCH, swapped,
                                    correct_side="right" if swapped else "left"))
    return out
