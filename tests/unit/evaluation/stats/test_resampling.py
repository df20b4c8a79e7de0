"""The bootstrap over seeds or configurations, the converged filter, the paired test, Holm and tiers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark import stats
from tests.unit.evaluation.stats.zoos import GAP, MEASURES, MU, make_zoo, null_zoo


# ---------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------
def test_bootstrap_deterministic_and_contains_estimate(zoo):
    def tau(d):
        return stats.kendall_tau(d, MU, GAP)

    ci = stats.bootstrap_ci(zoo, tau, n_boot=60, seed=3)
    assert ci == stats.bootstrap_ci(zoo, tau, n_boot=60, seed=3)
    assert ci != stats.bootstrap_ci(zoo, tau, n_boot=60, seed=4)
    low, high = ci
    assert low < tau(zoo) < high
    assert 0.0 < low and high <= 1.0
    wide = stats.bootstrap_ci(zoo, tau, n_boot=60, seed=3, level=0.99)
    assert wide[0] <= low and wide[1] >= high


def test_bootstrap_nan_safe():
    df = pd.DataFrame({MU: [1.0, 2.0, 3.0], GAP: [3.0, 1.0, 2.0]})
    assert all(math.isnan(v) for v in stats.bootstrap_ci(df, lambda d: float("nan"), n_boot=10))
    calls = iter(range(1000))

    def sometimes_nan(d):
        k = next(calls)
        return float("nan") if k % 2 else float(k)

    low, high = stats.bootstrap_ci(df, sometimes_nan, n_boot=10, level=0.5)
    # finite replicates 0, 2, 4, 6, 8 -> quartiles 2 and 6
    assert (low, high) == (2.0, 6.0)


# ---------------------------------------------------------------------------------------
# filter_converged
# ---------------------------------------------------------------------------------------
def test_filter_converged():
    df = pd.DataFrame({"metric.converged": [True, False, np.nan, None, True], MU: [1.0, 2.0, 3.0, 4.0, 5.0]})
    kept, dropped = stats.filter_converged(df)
    assert dropped == 3  # missing counts as not converged
    assert kept[MU].tolist() == [1.0, 5.0]


# ---------------------------------------------------------------------------------------
# Bootstrap over seeds within configurations
# ---------------------------------------------------------------------------------------
def test_bootstrap_counts_never_draw_rows_across_configurations():
    configs = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    counts = stats.bootstrap_counts(configs, 500, seed=4, resample="seeds")
    assert counts.shape == (500, 10)
    for g in range(4):
        rows = configs == g
        # k - 1 draws inside each configuration of k >= 2 (Rao & Wu), none across configurations
        assert (counts[:, rows].sum(1) == max(rows.sum() - 1, 1)).all()
    assert (counts[:, 5] == 1).all()  # a one-seed configuration is kept as it is
    assert counts[:, :3].std(0).min() > 0  # and the others are resampled
    assert np.array_equal(counts, stats.bootstrap_counts(configs, 500, seed=4, resample="seeds"))
    # the multiplicities in a configuration of 3 follow the multinomial(2; 1/3, 1/3, 1/3)
    assert counts[:, 0].mean() == pytest.approx(2 / 3, abs=0.08)
    assert counts[:, 0].var() == pytest.approx(2 * (1 / 3) * (2 / 3), abs=0.08)


def test_seed_bootstrap_variance_of_a_mean_is_unbiased():
    """Rao & Wu's k - 1 draws: the bootstrap variance of the mean of a stratified sample (G configurations of k
    seeds) equals the usual unbiased estimate sum_g s_g^2 / k / G^2, which the k-out-of-k draw would give
    times (k - 1)/k."""
    rng = np.random.default_rng(2)
    configs = np.repeat(np.arange(40), 3)
    y = rng.standard_normal(len(configs)) + configs
    counts = stats.bootstrap_counts(configs, 20000, seed=1)
    means = (counts * y).sum(1) / counts.sum(1)
    within = pd.Series(y).groupby(configs).var(ddof=1).to_numpy()
    assert means.var() == pytest.approx(within.sum() / 3 / 40**2, rel=0.05)


def test_bootstrap_counts_by_configuration_move_whole_configurations():
    configs = np.array([0, 0, 1, 1, 1, 2])
    counts = stats.bootstrap_counts(configs, 300, seed=0, resample="configurations")
    for g in range(3):
        block = counts[:, configs == g]
        assert (block == block[:, :1]).all()  # all rows of a configuration move together
    drawn = counts[:, [0, 2, 5]]  # one column per configuration: how often it was drawn
    assert (drawn.sum(1) == 3).all()
    with pytest.raises(ValueError, match="resample"):
        stats.bootstrap_counts(configs, 3, seed=0, resample="rows")


def test_bootstrap_ci_needs_replicates_to_resample_seeds():
    one_seed = make_zoo(seed=1, n_seeds=1)
    tau = lambda d: stats.kendall_tau(d, "measure.noise", GAP)  # noqa: E731
    assert all(math.isnan(v) for v in stats.bootstrap_ci(one_seed, tau, n_boot=20))
    lo, hi = stats.bootstrap_ci(one_seed, tau, n_boot=20, resample="configurations")
    assert lo < hi
    res = stats.evaluate(one_seed, MEASURES, n_boot=20)
    assert not res.attrs["replicated"] and res.tau_lo.isna().all() and res.tied_with_best.isna().sum() > 0


# ---------------------------------------------------------------------------------------
# Paired comparisons and Holm
# ---------------------------------------------------------------------------------------
def test_paired_difference_uses_the_correlation_of_the_replicates():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(4000)
    a_reps, b_reps = 0.5 + shared + 0.01 * rng.standard_normal(4000), 0.4 + shared + 0.01 * rng.standard_normal(4000)
    out = stats.paired_difference(a_reps, b_reps, 0.5, 0.4)
    se = np.std(a_reps - b_reps, ddof=1)
    assert out["se"] == pytest.approx(se) and out["se"] == pytest.approx(0.01 * math.sqrt(2), rel=0.05)
    assert out["p"] == pytest.approx(2 * scipy.stats.norm.sf(0.1 / se))
    assert out["lo"] == pytest.approx(0.1 - 1.959964 * se) and out["hi"] == pytest.approx(0.1 + 1.959964 * se)
    # the separate intervals (sd 1 each) overlap completely; the paired test still separates them
    assert out["p"] < 1e-10
    same = stats.paired_difference(a_reps, a_reps + 0.0, 0.5, 0.5)
    assert math.isnan(same["p"])
    shifted = stats.paired_difference(a_reps, a_reps - 0.1, 0.5, 0.4)
    assert shifted["p"] < 1e-12 and shifted["diff"] == pytest.approx(0.1)


def test_holm_hand_worked_and_with_nan():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, 1*0.04 -> 0.06
    assert stats.holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(stats.holm(p)[4])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]).size == 0


def test_holm_brute_force_closed_testing():
    # Holm equals the closed testing procedure with Bonferroni local tests: p~_i = max over every subset
    # S containing i of min(1, |S| min_{j in S} p_j)
    from itertools import combinations as subsets
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = rng.random(5) ** 3
        brute = [max(min(1.0, len(s) * min(p[list(s)])) for k in range(1, 6) for s in subsets(range(5), k) if i in s)
                 for i in range(5)]
        assert stats.holm(p) == pytest.approx(brute)


def test_paired_test_is_calibrated_under_the_null_and_has_power():
    """Two measures equally good (the same truth plus independent noise of one size): the paired test says
    "different" at about the nominal 5 % over 300 synthetic zoos of 36 configurations x 3 seeds (0.04 with
    Rao & Wu's k - 1 draws; the plain k-of-k seed bootstrap gives 0.09 here, and fails this test); a planted
    ordering (a less noisy measure) is found in most of them."""
    rng = np.random.default_rng(11)
    null = [stats.compare(null_zoo(rng), "measure.a", "measure.b", GAP, n_boot=200, seed=k)["tau"]["p"]
            for k in range(300)]
    rate = np.mean(np.array(null) < 0.05)
    assert 0.02 <= rate <= 0.08, rate  # nominal 0.05; the binomial sd over 300 zoos is 0.013
    planted = [stats.compare(null_zoo(rng, noise_a=0.003, noise_b=0.02), "measure.a", "measure.b", GAP,
                             n_boot=200, seed=k)["tau"] for k in range(40)]
    assert np.mean([d["p"] < 0.05 and d["diff"] > 0 for d in planted]) >= 0.8


# ---------------------------------------------------------------------------------------
# Tiers
# ---------------------------------------------------------------------------------------
def test_tiers_hand_worked():
    # replicates: a shared component plus each measure's own small noise, so the paired se of two
    # measures' difference is about 0.01 * sqrt(2): points 0.01 apart tie, 0.2 apart separate
    rng = np.random.default_rng(0)
    points = np.array([0.80, 0.795, 0.50, 0.49, 0.20, np.nan])
    shared = rng.standard_normal((2000, 1))
    reps = points + shared + 0.01 * rng.standard_normal((2000, 6))
    assert stats.tiers(points, reps).tolist() == [1, 1, 2, 2, 3, 0]
    # tier 1 is the group evaluate() calls tied with the best
    p = stats.holm([stats.paired_difference(reps[:, k], reps[:, 0], points[k], points[0])["p"] for k in range(1, 5)])
    assert [k for k, pk in zip(range(1, 5), p) if pk > 0.05] == [1]
    # the order of the columns does not matter
    perm = np.array([4, 2, 0, 5, 1, 3])
    assert stats.tiers(points[perm], reps[:, perm]).tolist() == [3, 2, 1, 0, 1, 2]
    # a tier is a run of consecutive ranks: 0.6's replicates are uncorrelated with the leader's (wide paired
    # interval, not separated from 0.8), but 0.7 below it is separated, so the tier ends at 0.7
    pts = np.array([0.8, 0.7, 0.6])
    r = np.column_stack([shared[:, 0] + 0.01 * rng.standard_normal(2000),
                         shared[:, 0] - 0.1 + 0.01 * rng.standard_normal(2000), 0.6 + rng.standard_normal(2000)])
    r[:, 0] += 0.8
    r[:, 1] += 0.8
    assert stats.tiers(pts, r).tolist() == [1, 2, 2]
