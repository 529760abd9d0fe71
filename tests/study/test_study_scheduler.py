"""The scheduler: balanced coverage, information-seeking active batches, catch and repeat trials."""
import random
from collections import Counter

import choix
import numpy as np

from study import scheduler as sch

IMAGES = ["i1", "i2", "i3"]
CONDS = ["a", "b", "c", "d"]


def plan(strategy="balanced", counts=None, wins=None, seed=0, regular=30, catch=3, repeats=3, randomise=True):
    return sch.plan_session(images=IMAGES, conditions=CONDS, regular=regular, catch=catch, repeats=repeats,
                            strategy=strategy, randomise_sides=randomise, counts=counts or {}, wins=wins or {},
                            rng=random.Random(seed))


def test_balanced_covers_every_image_pair_evenly_across_sessions():
    counts = Counter()
    for s in range(7):
        for t in plan(counts=dict(counts), seed=s, regular=25):
            if t.kind == "regular":
                counts[sch.pair_key(t.image, t.first, t.second)] += 1
    assert len(counts) == len(IMAGES) * 6          # every (image, pair) shown
    assert max(counts.values()) - min(counts.values()) <= 1   # 175 comparisons over 18 cells


def test_session_layout_catch_repeats_and_sides():
    trials = plan(seed=3)
    kinds = Counter(t.kind for t in trials)
    assert kinds == {"regular": 30, "catch": 3, "repeat": 3}
    for i, t in enumerate(trials):
        if t.kind == "repeat":
            orig = trials[t.repeat_of]
            assert orig.kind == "regular" and t.repeat_of < i
            assert (orig.image, orig.first, orig.second) == (t.image, t.first, t.second)
            assert (t.left, t.right) == (orig.right, orig.left)       # sides swapped
        if t.kind == "catch":
            assert {t.left, t.right} == {sch.REFERENCE, sch.CATCH}
            assert (t.left if t.correct_side == "left" else t.right) == sch.REFERENCE
    # consecutive regular trials avoid the same image when they can
    regular = [t.image for t in trials if t.kind == "regular"]
    assert sum(a == b for a, b in zip(regular, regular[1:])) <= 2
    # left/right randomised: over many sessions each condition is on the left about half the time
    left = Counter()
    shown = Counter()
    for s in range(40):
        for t in plan(seed=s):
            if t.kind == "regular":
                left[t.left] += 1
                shown[t.left] += 1
                shown[t.right] += 1
    for c in CONDS:
        assert 0.4 < left[c] / shown[c] < 0.6
    fixed = plan(randomise=False, seed=1)
    assert all(not t.swapped for t in fixed if t.kind == "regular")


def test_catch_positions_vary():
    positions = {tuple(i for i, t in enumerate(plan(seed=s)) if t.kind == "catch") for s in range(10)}
    assert len(positions) >= 8


def test_bt_posterior_agrees_with_choix_ranking():
    rng = np.random.default_rng(0)
    strength = {"a": 1.5, "b": 0.5, "c": 0.0, "d": -1.0}
    wins, data = Counter(), []
    for _ in range(600):
        x, y = rng.choice(4, 2, replace=False)
        cx, cy = CONDS[x], CONDS[y]
        p = 1 / (1 + np.exp(strength[cy] - strength[cx]))
        w, l = (x, y) if rng.random() < p else (y, x)
        wins[(CONDS[w], CONDS[l])] += 1
        data.append((w, l))
    theta, precision = sch.bt_posterior(CONDS, dict(wins))
    # choix penalises alpha * |theta|^2: the same MAP objective for alpha = 1 / (2 sd^2)
    ref = choix.opt_pairwise(4, data, alpha=1 / (2 * sch.PRIOR_SD**2))
    assert np.allclose(theta, ref, atol=1e-4)
    assert list(np.argsort(-theta)) == [0, 1, 2, 3]
    assert np.all(np.linalg.eigvalsh(precision) > 0)


def test_information_gain_prefers_uncertain_close_pairs():
    eig = sch.expected_information_gain
    assert eig(0.0, 1.0) > eig(2.0, 1.0) > eig(4.0, 1.0)
    assert eig(0.0, 4.0) > eig(0.0, 1.0) > eig(0.0, 0.01)
    assert 0 <= eig(0, 0.01) < 0.01


def test_active_spends_trials_where_the_order_is_unknown():
    # a >> b is settled by many votes; c vs d has never been compared.
    wins = {("a", "b"): 60, ("b", "a"): 2, ("a", "c"): 30, ("c", "a"): 3, ("a", "d"): 30, ("d", "a"): 3,
            ("b", "c"): 20, ("c", "b"): 18, ("b", "d"): 19, ("d", "b"): 20}
    planned, pairs = Counter(), Counter()
    for s in range(6):      # sessions started one after another, none voted yet
        for t in plan("active", counts=dict(planned), wins=wins, seed=s, regular=20):
            if t.kind == "regular":
                planned[sch.pair_key(t.image, t.first, t.second)] += 1
                pairs[frozenset((t.first, t.second))] += 1
    assert pairs.most_common(1)[0][0] == frozenset("cd")
    assert pairs[frozenset("ab")] == min(pairs[frozenset(p)] for p in ("ab", "ac", "ad", "bc", "bd", "cd"))
    assert len(pairs) >= 3      # planned comparisons count: later sessions move on to other pairs
