"""Bradley-Terry, Elo, JOD, matrices and tests on small data with known answers."""

import warnings

import choix
import numpy as np
import pandas as pd
import pytest

from study import ratings
from study.simulate import simulate_votes

UTILITY = pd.Series(np.linspace(-2.25, 2.25, 10), index=[f"c{k}" for k in range(10)])


@pytest.fixture(scope="module")
def votes():
    return ratings.validate_votes(simulate_votes(UTILITY, 3000, n_raters=30, seed=7))


def _choix_data(votes, conds):
    index = {c: k for k, c in enumerate(conds)}
    a, b = votes["condition_a"].map(index), votes["condition_b"].map(index)
    return [(i, j) if w == "a" else (j, i) for i, j, w in zip(a, b, votes["winner"], strict=True)]


def test_bt_equals_choix_on_tie_free_data(votes):
    conds = ratings.conditions(votes)
    ours = ratings.bradley_terry(votes, bootstrap=0, scale=1.0, base=np.e, offset=0.0)["bt"].to_numpy()
    for theirs in (choix.ilsr_pairwise(len(conds), _choix_data(votes, conds), alpha=0.0),
                   choix.opt_pairwise(len(conds), _choix_data(votes, conds), alpha=0.0, tol=1e-10)):
        theirs = theirs - theirs.mean()
        assert np.abs(ours - theirs).max() < 1e-4
        assert abs(ours.mean()) < 1e-9


def test_bt_elo_scale_anchor_and_row_order(votes):
    scores = ratings.bradley_terry(votes, bootstrap=50, seed=1)
    assert scores["bt"].mean() == pytest.approx(1000.0)
    assert (scores["bt_lo"] < scores["bt"]).all() and (scores["bt"] < scores["bt_hi"]).all()
    anchored = ratings.bradley_terry(votes, bootstrap=50, seed=1, anchor="c0")
    assert anchored.set_index("condition").loc["c0", "bt"] == pytest.approx(1000.0)
    assert anchored.set_index("condition").loc["c0", ["bt_lo", "bt_hi"]].tolist() == pytest.approx([1000.0, 1000.0])
    # differences do not depend on the centring
    assert np.allclose(np.diff(anchored["bt"]), np.diff(scores["bt"]))
    shuffled = votes.sample(frac=1.0, random_state=3)
    again = ratings.bradley_terry(shuffled, bootstrap=50, seed=1)
    pd.testing.assert_frame_equal(scores, again)


def test_bt_ties_count_as_half_wins():
    # 3 a-wins, 1 b-win, 2 ties == 4 wins against 2 losses: theta_x - theta_y = ln 2
    rows = [("x", "y", "a")] * 3 + [("x", "y", "b")] + [("x", "y", "tie")] * 2
    v = ratings.validate_votes(pd.DataFrame(rows, columns=["condition_a", "condition_b", "winner"]).assign(rater="r"))
    bt = ratings.bradley_terry(v, bootstrap=0, scale=1.0, base=np.e, offset=0.0).set_index("condition")["bt"]
    assert bt["x"] - bt["y"] == pytest.approx(np.log(2.0), abs=1e-6)


def test_rater_bootstrap_is_wider_when_raters_disagree():
    # half the raters prefer x, half prefer y: vote-level CIs ignore that clustering, rater-level do not
    rows = []
    for r in range(10):
        rows += [(f"r{r}", "x", "y", "a" if r % 2 else "b")] * 20 + [(f"r{r}", "x", "z", "a")] * 5
    v = ratings.validate_votes(pd.DataFrame(rows, columns=["rater", "condition_a", "condition_b", "winner"]))
    by_vote = ratings.bradley_terry(v, bootstrap=300, by="vote", l2=1e-3).set_index("condition")
    by_rater = ratings.bradley_terry(v, bootstrap=300, by="rater", l2=1e-3).set_index("condition")
    width = lambda t: t.loc["x", "bt_hi"] - t.loc["x", "bt_lo"]  # noqa: E731
    assert width(by_rater) > 1.5 * width(by_vote)


def test_elo_bootstrap_does_not_depend_on_row_order(votes):
    first = ratings.elo(votes, bootstrap=100, seed=5)
    for state in (1, 2):
        shuffled = votes.sample(frac=1.0, random_state=state).reset_index(drop=True)
        pd.testing.assert_frame_equal(first, ratings.elo(shuffled, bootstrap=100, seed=5))
    assert list(first.sort_values("elo")["condition"])[-1] == "c9"
    # the single online pass does depend on the order (why the bootstrap exists)
    assert not np.allclose(ratings.elo(votes, bootstrap=0)["elo"],
                           ratings.elo(votes.iloc[::-1], bootstrap=0)["elo"])


def _swing(n=60):
    """x wins the first n votes and loses the next n: the live Elo ends with y ahead in time order."""
    v = pd.DataFrame({"rater": "r", "condition_a": "x", "condition_b": "y", "winner": ["a"] * n + ["b"] * n})
    return v.assign(seconds=np.arange(2 * n) * 7.5)


@pytest.mark.parametrize("stamp", [
    lambda s: s,                                                                      # numbers
    lambda s: pd.Timestamp("2026-12-01T09:00:00Z") + pd.to_timedelta(s, unit="s"),    # datetimes
    lambda s: (pd.Timestamp("2026-12-01T10:00:00+01:00") + pd.to_timedelta(s, unit="s")).map(
        lambda t: t.isoformat()),                                                     # ISO text, as in a CSV
], ids=["numbers", "datetimes", "iso text"])
def test_live_elo_follows_the_timestamps(stamp):
    v = _swing()
    in_time = ratings.elo(ratings.validate_votes(v.drop(columns="seconds")), bootstrap=0)
    shuffled = v.assign(timestamp=stamp(v["seconds"])).sample(frac=1.0, random_state=3)
    live = ratings.elo(ratings.validate_votes(shuffled.drop(columns="seconds")), bootstrap=0)
    pd.testing.assert_frame_equal(live, in_time)
    assert live.set_index("condition").loc["y", "elo"] > 1000.0
    # without the timestamps the shuffled rows give another standing
    assert not np.allclose(ratings.elo(ratings.validate_votes(shuffled.drop(columns="seconds")).assign(
        timestamp=np.nan), bootstrap=0)["elo"], in_time["elo"])


def test_vote_order_refuses_a_partial_or_unreadable_timestamp():
    v = _swing(2)
    assert ratings.vote_order(v.assign(timestamp=[np.nan] * 4)).tolist() == [0, 1, 2, 3]  # empty: row order
    assert ratings.vote_order(v.assign(timestamp=[3.0, 1.0, 1.0, 0.5])).tolist() == [3, 1, 2, 0]  # stable
    for bad in ([1.0, np.nan, 2.0, 3.0], ["2026-12-01T09:00:00Z", "yesterday", None, "2026-12-01T09:00:01Z"]):
        with pytest.raises(ratings.VoteTableError, match="timestamp"):
            ratings.elo(ratings.validate_votes(v.assign(timestamp=bad)), bootstrap=0)


def test_elo_parameters():
    v = ratings.validate_votes(pd.DataFrame({"rater": ["r"], "condition_a": ["x"], "condition_b": ["y"],
                                             "winner": ["a"]}))
    one = ratings.elo(v, bootstrap=0, k=32, init=1500).set_index("condition")["elo"]
    assert one["x"] == pytest.approx(1516.0) and one["y"] == pytest.approx(1484.0)
    tie = ratings.elo(v.assign(winner="tie"), bootstrap=0).set_index("condition")["elo"]
    assert tie["x"] == pytest.approx(1000.0)
    # base e, scale 1: expected score 1/(1+e^0) = 0.5, so one win moves k/2
    e = ratings.elo(v, bootstrap=0, k=1.0, base=np.e, scale=1.0, init=0.0).set_index("condition")["elo"]
    assert e["x"] == pytest.approx(0.5)


def test_jod_75_percent_is_one_jod():
    rows = [("x", "y", "a")] * 750 + [("x", "y", "b")] * 250
    v = pd.DataFrame(rows, columns=["condition_a", "condition_b", "winner"])
    v["rater"] = [f"r{k}" for k in np.random.default_rng(0).integers(0, 25, len(v))]  # raters differ a little
    j = ratings.jod(ratings.validate_votes(v), bootstrap=200, seed=0).set_index("condition")
    assert j.loc["x", "jod"] - j.loc["y", "jod"] == pytest.approx(1.0, abs=0.01)
    assert j["jod"].sum() == pytest.approx(0.0, abs=1e-9)
    assert j.loc["x", "jod_lo"] < j.loc["x", "jod"] < j.loc["x", "jod_hi"]


def _rows(plan):
    """{(a, b, rater): (wins of a, wins of b)} -> a validated vote table."""
    rows = [(a, b, "a" if k < wa else "b", r) for (a, b, r), (wa, wb) in plan.items() for k in range(wa + wb)]
    return ratings.validate_votes(pd.DataFrame(rows, columns=["condition_a", "condition_b", "winner", "rater"]))


@pytest.mark.parametrize("plan", [
    {("x", "y", "r1"): (1, 0)},                                                  # a single vote
    {("x", "y", "r1"): (5, 0), ("y", "z", "r2"): (4, 0)},                        # every pair unanimous
    {("x", "y", "r1"): (1, 1), ("z", "w", "r2"): (2, 1)},                        # two unlinked groups
    {("x", "y", "r1"): (3, 2), ("x", "y", "r2"): (1, 4), ("x", "c", "r3"): (1, 0)},  # c missing from replicates
], ids=["single vote", "unanimous", "disconnected", "condition of one rater"])
def test_jod_on_degenerate_votes_warns_of_nothing(plan):
    votes = _rows(plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. "invalid value encountered in divide"
        j = ratings.jod(votes, bootstrap=100, seed=0)
        lik = ratings.leave_one_rater_out_likelihood(votes)  # one rater left out: no votes remain
        board = ratings.leaderboard(votes, bootstrap=20)
    assert np.isfinite(j[["jod", "jod_lo", "jod_hi"]].to_numpy()).all()
    assert (j["jod_lo"] <= j["jod_hi"]).all()
    assert j["jod"].sum() == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(lik["log10_likelihood"]).all() and len(board) == len(j)


def test_jod_recovers_probit_utilities():
    truth = pd.Series([-1.0, 0.0, 0.5, 1.5], index=list("abcd"))
    v = ratings.validate_votes(simulate_votes(truth, 6000, link="probit", seed=2))
    j = ratings.jod(v, bootstrap=0).set_index("condition")["jod"]
    assert np.abs(j - (truth - truth.mean())).max() < 0.1


def test_matrices_and_pairwise_tests():
    rows = [("x", "y", "a")] * 8 + [("y", "x", "a")] * 2 + [("x", "y", "tie")] * 2 + [("y", "z", "b")] * 3
    v = ratings.validate_votes(pd.DataFrame(rows, columns=["condition_a", "condition_b", "winner"]).assign(rater="r"))
    counts = ratings.count_matrix(v)
    assert counts.loc["x", "y"] == counts.loc["y", "x"] == 12 and counts.loc["x", "z"] == 0
    wins = ratings.wins_matrix(v)
    assert wins.loc["x", "y"] == 9.0 and wins.loc["y", "x"] == 3.0 and wins.loc["z", "y"] == 3.0
    rate = ratings.win_rate_matrix(v, ties="exclude")
    assert rate.loc["x", "y"] == pytest.approx(0.8) and np.isnan(rate.loc["x", "z"])
    tests = ratings.pairwise_tests(v).set_index(["condition_a", "condition_b"])
    xy = tests.loc[("x", "y")]
    assert (xy["wins_a"], xy["wins_b"], xy["ties"]) == (8, 2, 2)
    assert xy["p_value"] == pytest.approx(0.109375)  # 2 * P(X >= 8), X ~ Bin(10, 1/2) = 2 * 56/1024
    assert tests.loc[("y", "z"), "p_value"] == pytest.approx(0.25)  # 2 * (1/2)^3
    assert tests.loc[("x", "y"), "p_holm"] == pytest.approx(min(1.0, 2 * 0.109375))


def test_holm_against_hand_computed_values():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max -> .02 .03 .06 .06
    assert ratings.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert ratings.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert ratings.holm([0.02]) == pytest.approx([0.02])
    p = np.random.default_rng(0).random(7)  # monotone in p and never below p
    adj = ratings.holm(p)
    assert (adj >= p).all() and (np.diff(adj[np.argsort(p)]) >= 0).all()


def test_rank_ub():
    assert ratings.rank_ub([10, 5, 0], [12, 11, 6]).tolist() == [1, 1, 2]


def test_leaderboard_columns_and_order(votes):
    board = ratings.leaderboard(votes, bootstrap=50)
    assert list(board.columns) == ["condition", "method", "bpp", "elo", "elo_lo", "elo_hi", "bt", "bt_lo", "bt_hi",
                                   "jod", "jod_lo", "jod_hi", "votes", "win_rate", "rank_ub"]
    assert list(board["condition"]) == [f"c{k}" for k in range(9, -1, -1)]
    assert board["votes"].sum() == 2 * len(votes)
    assert board["rank_ub"].iloc[0] == 1 and (np.diff(board["rank_ub"]) >= 0).all()
    only = ratings.leaderboard(votes, models=("jod",), bootstrap=0)
    assert "bt" not in only.columns and only["rank_ub"].tolist() == [1] * 10  # no CI, no separation
    with pytest.raises(ValueError):
        ratings.leaderboard(votes, models=("glicko",))


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"rater": ["r"], "condition_a": ["x"], "winner": ["a"]}), "missing column"),
    (pd.DataFrame({"rater": ["r"], "condition_a": ["x"], "condition_b": ["y"], "winner": ["left"]}), "'left'"),
    (pd.DataFrame({"rater": ["r"], "condition_a": ["x"], "condition_b": ["x"], "winner": ["a"]}), "equals"),
    (pd.DataFrame({"rater": [None], "condition_a": ["x"], "condition_b": ["y"], "winner": ["a"]}), "empty"),
    (pd.DataFrame({"rater": ["r"], "condition_a": ["x"], "condition_b": ["y"], "winner": ["a"], "bpp_a": [-1],
                   "bpp_b": [1]}), "positive"),
])
def test_validation_messages(frame, message):
    with pytest.raises(ratings.VoteTableError, match=message):
        ratings.validate_votes(frame)


def test_scoring_votes_drops_catch_and_excluded_only():
    v = pd.DataFrame({"rater": ["a", "b", "c"], "condition_a": "x", "condition_b": "y", "winner": "a",
                      "is_catch": [True, False, False], "excluded": [False, True, False]})
    assert ratings.scoring_votes(v)["rater"].tolist() == ["c"]
    assert ratings.scoring_votes(v, drop_excluded=False)["rater"].tolist() == ["b", "c"]
