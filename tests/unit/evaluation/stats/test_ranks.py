"""Kendall tau and Spearman against scipy, and the granulated Kendall Psi on hand-worked grids."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark import stats
from tests.unit.evaluation.stats.zoos import GAP, MU, pairs_df


# ---------------------------------------------------------------------------------------
# Kendall tau and Spearman against scipy
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_kendall_tau_matches_scipy(seed, ties):
    rng = np.random.default_rng(seed)
    n = 37
    x, y = rng.standard_normal(n), rng.standard_normal(n) + 0.5 * np.arange(n) / n
    if ties:
        x, y = np.round(x * 2), np.round(y * 3)  # many ties in both
    df = pd.DataFrame({MU: x, GAP: y})
    expected = scipy.stats.kendalltau(x, y, variant="b").statistic
    assert stats.kendall_tau(df, MU, GAP) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_drops_nans():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(30), rng.standard_normal(30)
    x[[1, 5, 7]] = np.nan
    y[[2, 5]] = np.nan
    keep = ~(np.isnan(x) | np.isnan(y))
    expected = scipy.stats.kendalltau(x[keep], y[keep], variant="b").statistic
    assert stats.kendall_tau(pd.DataFrame({MU: x, GAP: y}), MU, GAP) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_undefined_cases():
    assert math.isnan(stats.kendall_tau(pd.DataFrame({MU: [1.0], GAP: [2.0]}), MU, GAP))
    assert math.isnan(stats.kendall_tau(pd.DataFrame({MU: [1.0, 1.0, 1.0], GAP: [1.0, 2.0, 3.0]}), MU, GAP))
    assert math.isnan(stats.kendall_tau(pd.DataFrame({MU: [1.0, np.nan, 3.0], GAP: [1.0, 2.0, np.nan]}), MU, GAP))


def test_kendall_tau_hand_worked_with_tie():
    # pairs: (0,1) concordant, (0,2) concordant, (1,2) tied in the measure only
    # tau_b = 2 / sqrt(3 * 2)
    df = pd.DataFrame({MU: [1.0, 2.0, 2.0], GAP: [1.0, 2.0, 3.0]})
    assert stats.kendall_tau(df, MU, GAP) == pytest.approx(2 / math.sqrt(6), abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x, y = np.round(rng.standard_normal(40) * 3), rng.standard_normal(40)
    x[[0, 9]] = np.nan
    keep = ~np.isnan(x)
    expected = scipy.stats.spearmanr(x[keep], y[keep]).statistic
    assert stats.spearman_rho(pd.DataFrame({MU: x, GAP: y}), MU, GAP) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(stats.spearman_rho(pd.DataFrame({MU: [2.0, 2.0, 2.0], GAP: [1.0, 2.0, 3.0]}), MU, GAP))


# ---------------------------------------------------------------------------------------
# Granulated Kendall
# ---------------------------------------------------------------------------------------
def test_psi_hand_worked_2x3_grid():
    # (a, b):   (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    # gap:        1     2     3     4     5     6
    # measure:    1     3     2     4     6     6
    # axis a, cells b=0,1,2: pairs (1,4), (2,5)/(3,6), (3,6)/(2,6): all concordant -> tau = 1
    # axis b, cell a=0: gap 1,2,3 vs mu 1,3,2: C, C, D -> tau = (2 - 1) / 3 = 1/3
    #         cell a=1: gap 4,5,6 vs mu 4,6,6: C, C, tie in mu -> tau_b = 2 / sqrt(3 * 2)
    df = pairs_df([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 6], a=[0, 0, 0, 1, 1, 1], b=[0, 1, 2, 0, 1, 2])
    out = stats.granulated_kendall(df, MU, GAP, ["hp.a", "hp.b"])
    psi_b = (1 / 3 + 2 / math.sqrt(6)) / 2
    assert out["per_axis"]["hp.a"] == pytest.approx(1.0)
    assert out["per_axis"]["hp.b"] == pytest.approx(psi_b)
    assert out["psi"] == pytest.approx((1.0 + psi_b) / 2)
    assert out["cells"] == {"hp.a": 3, "hp.b": 2}


def test_psi_cells_pool_the_seed_replicates_of_a_configuration():
    # two configurations (a=0, a=1) with two seeds each form ONE cell of 4 cross pairs:
    # (a0s0, a1s0) gap 1<2 mu 1<2 concordant; (a0s1, a1s1) 10<20, 0<5 concordant;
    # (a0s0, a1s1) 1<20, 1<5 concordant; (a0s1, a1s0) 10>2 but 0<2 discordant -> tau-b = (3-1)/4
    df = pairs_df([1, 2, 10, 20], [1, 2, 0, 5], a=[0, 1, 0, 1], seed=[0, 0, 1, 1])
    out = stats.granulated_kendall(df, MU, GAP, ["hp.a"])
    assert out["psi"] == pytest.approx(0.5)
    assert out["cells"] == {"hp.a": 1}


def test_psi_ignores_pairs_with_the_same_axis_value():
    # no seed column, two repeats of a=0 in the same cell: the pair of repeats (discordant:
    # gap 1 < 2, mu 2 > 1) does not differ in a and is not used; the two a0-a1 pairs are
    # concordant -> tau = 1 (with the repeat pair it would be (2 - 1) / 3)
    df = pairs_df([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], a=[0, 0, 1])
    assert stats.granulated_kendall(df, MU, GAP, ["hp.a"])["psi"] == pytest.approx(1.0)


def test_psi_skips_undefined_cells_and_nans():
    # cell b=1 has a NaN measure -> only one valid model -> tau undefined, skipped
    df = pairs_df([1, 2, 3, 4], [1, 2, np.nan, 0], a=[0, 1, 0, 1], b=[0, 0, 1, 1])
    out = stats.granulated_kendall(df, MU, GAP, ["hp.a"])
    assert out["psi"] == pytest.approx(1.0)
    assert out["cells"]["hp.a"] == 1
