"""The robust sign error: Hoeffding weights, hand-worked environments and the noise filter."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmark import stats
from tests.unit.evaluation.stats.zoos import GAP, MU, pairs_df


# ---------------------------------------------------------------------------------------
# Robust sign error
# ---------------------------------------------------------------------------------------
def test_hoeffding_weight_behaves():
    assert stats.hoeffding_weight(0.02, 10_000) == pytest.approx((1 - 2 * math.exp(-2)) ** 2)
    assert stats.hoeffding_weight(0.02, 10_000) == pytest.approx(0.531921422608486)
    assert stats.hoeffding_weight(0.001, 10**12) == pytest.approx(1.0)
    assert stats.hoeffding_weight(0.0, 10**12) == 0.0
    assert stats.hoeffding_weight(0.01, 100) == 0.0  # 2 exp(-0.005) > 1: no confidence
    w = stats.hoeffding_weight(np.array([0.01, 0.02, 0.05]), 10_000)
    assert np.all(np.diff(w) > 0)
    assert stats.hoeffding_weight(0.02, 20_000) > stats.hoeffding_weight(0.02, 10_000)
    # unequal test sets: product of the two one-sided terms
    expected = (1 - 2 * math.exp(-10_000 * 0.02**2 / 2)) * (1 - 2 * math.exp(-5_000 * 0.02**2 / 2))
    assert stats.hoeffding_weight(0.02, 10_000, 5_000) == pytest.approx(expected)


def test_sign_error_hand_worked_grid():
    # (a,b):   (0,0) (1,0) (0,1) (1,1)
    # gap:      .1    .3    .2    .4
    # measure:   1     2     3     2
    # env a|b=0: gap up, mu up -> 0      env a|b=1: gap up, mu down -> 1
    # env b|a=0: gap up, mu up -> 0      env b|a=1: gap up, mu tie  -> 1/2
    df = pairs_df([0.1, 0.3, 0.2, 0.4], [1.0, 2.0, 3.0, 2.0], a=[0, 1, 0, 1], b=[0, 0, 1, 1])
    df["metric.test_size"] = 10**12  # weights are 1, (1 - 1/2)_+ after the filter
    assert stats.robust_sign_error(df, MU, GAP, ["hp.a", "hp.b"])["n_envs"] == 0  # one pair each: ESS 1 < 4
    out = stats.robust_sign_error(df, MU, GAP, ["hp.a", "hp.b"], min_ess=1)
    assert out["n_envs"] == 4 and out["n_below"] == 0
    assert out["mean"] == pytest.approx(0.375)
    assert out["p90"] == pytest.approx(0.5 + 0.7 * 0.5)  # sorted [0, 0, .5, 1], position 2.7
    assert out["max"] == pytest.approx(1.0)
    assert out["per_axis"]["hp.a"]["mean"] == pytest.approx(0.5)
    assert out["per_axis"]["hp.b"]["mean"] == pytest.approx(0.25)
    assert out["per_axis"]["hp.b"]["max"] == pytest.approx(0.5)


def _seed_environment(test_size: int) -> pd.DataFrame:
    # one environment (a=0 vs a=1), two seeds each -> 4 cross pairs:
    # (a0s0, a1s0): dg = -.20, dmu = -2 -> 0      (a0s0, a1s1): dg = -.05, dmu = +1 -> 1
    # (a0s1, a1s0): dg = -.10, dmu = -1 -> 0      (a0s1, a1s1): dg = +.05, dmu = +2 -> 0
    df = pairs_df([0.10, 0.20, 0.30, 0.15], [1.0, 2.0, 3.0, 0.0], a=[0, 0, 1, 1], seed=[0, 1, 0, 1])
    df["metric.test_size"] = test_size
    return df


def test_sign_error_seeds_are_repeats_within_an_environment():
    out = stats.robust_sign_error(_seed_environment(10**12), MU, GAP, ["hp.a"])
    assert out["n_envs"] == 1 and out["n_below"] == 0  # 4 equal weights: ESS = 4
    assert out["mean"] == pytest.approx(0.25)


def _w(delta, n):
    return (1 - 2 * math.exp(-n * delta**2 / 2)) ** 2


def test_sign_error_weights_filtered_as_the_authors_code():
    # (w - 1/2)_+ with w the squared Hoeffding term (their hoeffding_weight), at n = 4000 every pair passes
    w = {d: max(_w(d, 4000) - 0.5, 0.0) for d in (0.20, 0.05, 0.10)}
    out = stats.robust_sign_error(_seed_environment(4000), MU, GAP, ["hp.a"], min_ess=1)  # 4 unequal weights
    assert out["mean"] == pytest.approx(w[0.05] / (w[0.20] + 2 * w[0.05] + w[0.10]))
    assert 0 < out["mean"] < 0.25  # the one wrong pair has the smallest, least trusted difference


def test_sign_error_noise_filter_and_effective_sample_size():
    # at n = 1000 the wrong pair's difference 0.05 is noise: w = 0.18 < 1/2, filtered to 0; so is the
    # agreeing pair at +0.05; two pairs are left, ESS = (0.5 + 0.473)^2 / (0.25 + 0.224) = 2.0 < 4
    w = [max(_w(d, 1000) - 0.5, 0.0) for d in (0.20, 0.05, 0.10, 0.05)]
    assert w[1] == w[3] == 0.0
    ess = sum(w) ** 2 / sum(x * x for x in w)
    assert ess == pytest.approx(2.0, abs=0.01)
    out = stats.robust_sign_error(_seed_environment(1000), MU, GAP, ["hp.a"])
    assert out["n_envs"] == 0 and out["n_below"] == 1 and math.isnan(out["mean"])
    assert out["per_axis"]["hp.a"]["n_envs"] == 0 and out["per_axis"]["hp.a"]["n_below"] == 1
    relaxed = stats.robust_sign_error(_seed_environment(1000), MU, GAP, ["hp.a"], min_ess=ess - 1e-9)
    assert relaxed["n_envs"] == 1 and relaxed["mean"] == 0.0


def test_sign_error_zero_weight_environment_is_undefined():
    df = _seed_environment(10)  # tiny test sets: no pair is trusted
    out = stats.robust_sign_error(df, MU, GAP, ["hp.a"], min_ess=0.5)
    assert out["n_envs"] == 0 and math.isnan(out["mean"]) and out["n_below"] == 1
