"""Seed noise, split-half reliability and Kendall's W."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from benchmark import stats
from tests.unit.evaluation.stats.zoos import GAP, MEASURES, make_zoo, null_zoo, pairs_df


# ---------------------------------------------------------------------------------------
# Noise floor and split-half reliability
# ---------------------------------------------------------------------------------------
def test_seed_noise_hand_worked():
    # a=0: seeds 1, 3 (mean 2, SS 2); a=1: seeds 2, 2, 5 (mean 3, SS 6): pooled sd sqrt(8/3), configs sd(2, 3)
    df = pairs_df([1.0, 3.0, 2.0, 2.0, 5.0], [0] * 5, a=[0, 0, 1, 1, 1], seed=[0, 1, 0, 1, 2])
    out = stats.seed_noise(df, GAP)
    assert out["sd_seed"] == pytest.approx(math.sqrt(8 / 3)) and out["dof"] == 3
    assert out["sd_config"] == pytest.approx(np.std([2.0, 3.0], ddof=1))
    assert out["ratio"] == pytest.approx(out["sd_config"] / out["sd_seed"])
    one = stats.seed_noise(make_zoo(n_seeds=1), GAP)
    assert math.isnan(one["sd_seed"]) and one["dof"] == 0 and one["configurations"] == 12


def _reliability_zoo(seed, n_measures=8):
    """A synthetic zoo with measures of graded quality: the observed gap plus noise of growing size."""
    rng = np.random.default_rng(seed)
    df = null_zoo(rng)
    for k in range(n_measures):
        df[f"measure.q{k}"] = df[GAP] + 0.004 * (k + 1) * rng.standard_normal(len(df))
    return df


def test_split_half_reliability_separates_a_stable_ranking_from_noise():
    df = _reliability_zoo(0)
    graded = [f"measure.q{k}" for k in range(8)]
    out = stats.split_half(df, graded, GAP, splits=10, seed=1)
    assert out["seeds_per_half"] == 1 and out["splits"] == 10
    assert out["rho"] > 0.8 and out["rho_min"] <= out["rho"] <= out["rho_max"]
    rng = np.random.default_rng(5)
    for k in range(8):  # now every measure is pure noise: the two halves' rankings agree by chance only
        df[f"measure.q{k}"] = rng.standard_normal(len(df))
    noise = stats.split_half(df, graded, GAP, splits=10, seed=1)
    assert abs(noise["rho"]) < 0.3
    assert math.isnan(stats.split_half(make_zoo(n_seeds=1), MEASURES[:3], GAP)["rho"])


# ---------------------------------------------------------------------------------------
# Kendall's W
# ---------------------------------------------------------------------------------------
def test_kendall_w_against_friedman_and_hand_worked():
    # identical rankings: W = 1; two opposite rankings: W = 0
    assert stats.kendall_w([[1, 2, 3, 4], [10, 20, 30, 40]])["w"] == pytest.approx(1.0)
    assert stats.kendall_w([[1, 2, 3], [3, 2, 1]])["w"] == pytest.approx(0.0)
    # hand: ranks (1,2,3), (1,3,2): R = (2, 5, 5), mean 4, S = 4 + 1 + 1 = 6, W = 12*6 / (4 * 24) = 0.75
    assert stats.kendall_w([[1, 2, 3], [1, 3, 2]])["w"] == pytest.approx(0.75)
    rng = np.random.default_rng(2)
    for ties in (False, True):
        x = rng.standard_normal((4, 9)) + np.linspace(0, 2, 9)
        if ties:
            x = np.round(x)  # ties within rows: the tie-corrected W still equals Friedman's chi2 / (m (n - 1))
        out = stats.kendall_w(x)
        ref = scipy.stats.friedmanchisquare(*x.T)
        assert out["chi2"] == pytest.approx(ref.statistic) and out["p"] == pytest.approx(ref.pvalue)
        assert out["w"] == pytest.approx(ref.statistic / (4 * 8))
    with_nan = rng.standard_normal((3, 5))
    with_nan[1, 2] = np.nan
    assert stats.kendall_w(with_nan)["n"] == 4
    assert math.isnan(stats.kendall_w([[1.0, 2.0]])["w"])
