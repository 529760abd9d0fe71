"""Simulated raters with known utilities: order recovery, CI coverage, the bitrate covariate."""

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study import ratings
from study.simulate import simulate_votes

TRUTH = pd.Series(np.linspace(-2.25, 2.25, 10), index=[f"c{k}" for k in range(10)])
NATURAL = dict(scale=1.0, base=np.e, offset=0.0)  # natural-log strengths, mean 0


def _bt(votes, **kw):
    return ratings.bradley_terry(ratings.validate_votes(votes), **NATURAL, **kw).set_index("condition")


def test_true_order_recovered():
    scores = _bt(simulate_votes(TRUTH, 3000, seed=11), bootstrap=0)["bt"]
    assert list(scores.sort_values().index) == list(TRUTH.index)
    assert np.abs(scores - TRUTH).max() < 0.3


@pytest.mark.slow
def test_bootstrap_interval_coverage_over_200_studies():
    centred = TRUTH - TRUTH.mean()
    covered, taus, start = [], [], time.perf_counter()
    for study in range(200):
        fit = _bt(simulate_votes(TRUTH, 3000, n_raters=30, seed=1000 + study), bootstrap=200, seed=study)
        covered.append(((fit["bt_lo"] <= centred) & (centred <= fit["bt_hi"])).to_numpy())
        taus.append(stats.kendalltau(fit["bt"], centred).statistic)
    rate = np.mean(covered)
    print(f"coverage {rate:.3f} over {np.size(covered)} intervals, mean Kendall tau {np.mean(taus):.3f}, "
          f"{time.perf_counter() - start:.1f} s")
    assert 0.90 <= rate <= 0.99
    assert np.mean(taus) > 0.97


def _bitrate_study(seed, n_votes=3000):
    strength = {"ours": 0.8, "hific": 0.3, "bpg": -0.4, "jpeg": -0.7}
    info = pd.DataFrame([(f"{m}@{b}", m, b) for m in strength for b in (0.05, 0.1, 0.2, 0.4)],
                        columns=["condition", "method", "bpp"]).set_index("condition")
    beta = 0.7  # log-odds per doubling of the bitrate
    utility = pd.Series({c: strength[r.method] + beta * np.log2(r.bpp) for c, r in info.iterrows()})
    votes = ratings.validate_votes(simulate_votes(utility, n_votes, n_raters=25, seed=seed, info=info))
    return votes, strength, beta


def test_bitrate_controlled_bt_recovers_the_covariate():
    votes, strength, beta = _bitrate_study(seed=4)
    fit = ratings.bitrate_controlled_bt(votes, bootstrap=300, seed=0)
    b = fit.beta.iloc[0]
    assert b["beta_lo"] < beta < b["beta_hi"] and abs(b["beta_per_doubling"] - beta) < 0.1
    pair = fit.pairs.set_index(["method_a", "method_b"]).loc[("ours", "hific")]
    assert pair["effect_lo"] < 0.5 < pair["effect_hi"]
    truth = 1 / (1 + np.exp(-(0.5 - beta)))  # ours at x bpp against hific at 2x bpp
    assert pair["p_at_ratio_lo"] < truth < pair["p_at_ratio_hi"]
    assert pair["p_at_ratio"] < pair["p_equal_bpp"]
    methods = fit.methods.set_index("method")
    assert methods["strength"].sum() == pytest.approx(0.0, abs=1e-9)
    assert list(methods["strength"].sort_values().index) == ["jpeg", "bpg", "hific", "ours"]
    assert fit.to_dict()["beta"]["beta_per_doubling"] == pytest.approx(b["beta_per_doubling"])


def test_bitrate_controlled_bt_needs_methods_and_bpp():
    votes = ratings.validate_votes(simulate_votes(TRUTH, 100, seed=0))
    with pytest.raises(ratings.VoteTableError, match="method_a"):
        ratings.bitrate_controlled_bt(votes, bootstrap=0)
