"""Conditional mutual information: hand-worked cases, a brute-force reference and the permutation null."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark import stats
from tests.unit.evaluation.stats.zoos import AXES, GAP, MU, make_zoo, null_zoo, pairs_df


# ---------------------------------------------------------------------------------------
# Conditional mutual information
# ---------------------------------------------------------------------------------------
def _binary_entropy(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_cmi_identical_sign_is_one():
    rng = np.random.default_rng(0)
    gap = rng.standard_normal(20)
    df = pairs_df(gap, gap**3 + 1.0, a=np.arange(20) % 2)
    out = stats.conditional_mutual_information(df, MU, GAP, ["hp.a"])
    assert out["cmi"] == pytest.approx(1.0)
    assert out["set"] == ()  # every set scores 1; the first in enumeration order wins


def test_cmi_independent_is_zero():
    # unordered pairs of gap [0,1,2,3] vs mu [1,3,0,2]: 3 of 6 agree in sign; with both
    # orientations V_g and V_mu are balanced and p(agree) = 1/2 -> independent -> I = 0
    df = pairs_df([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 0.0, 2.0])
    out = stats.conditional_mutual_information(df, MU, GAP, [])
    assert out["cmi"] == pytest.approx(0.0, abs=1e-12)


def test_cmi_hand_worked_in_between():
    # gap [0,1,2], mu [0,2,1]: pairs (0,1) agree, (0,2) agree, (1,2) disagree.
    # Given V_mu, V_g is right with prob. 2/3 -> I = H(V_g) - H(V_g|V_mu) = 1 - H_b(1/3); H(V_g) = 1
    df = pairs_df([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])
    out = stats.conditional_mutual_information(df, MU, GAP, [])
    assert out["cmi"] == pytest.approx(1 - _binary_entropy(1 / 3), abs=1e-12)
    assert out["per_set"] == {(): pytest.approx(0.0817041659455, abs=1e-10)}


def test_cmi_conditioning_on_the_explaining_axis_lowers_the_score():
    # gap = a + small noise, measure = a. Unconditioned: 16 cross-level pairs agree, 12 same-level
    # pairs have V_mu = 0 and V_g balanced -> I = 1 - 12/28 = 4/7, H = 1.
    # Given U = (a_i, a_j): same-level cells have V_mu = 0 (I = 0); cross-level cells have
    # a deterministic V_g (H = 0) -> score 0.
    rng = np.random.default_rng(1)
    a = np.repeat([0, 1], 4)
    df = pairs_df(a + 0.1 * rng.random(8), a.astype(float), a=a, seed=np.tile(np.arange(4), 2))
    out = stats.conditional_mutual_information(df, MU, GAP, ["hp.a"])
    assert out["per_set"][()] == pytest.approx(4 / 7)
    assert out["per_set"][("hp.a",)] == pytest.approx(0.0, abs=1e-12)
    assert out["cmi"] == pytest.approx(0.0, abs=1e-12)
    assert out["set"] == ("hp.a",)


def test_cmi_drops_tied_target_pairs():
    # gap [0,0,1], mu [1,0,2]: the pair (0,1) has tied gaps and is dropped; the two others
    # agree -> 1 (keeping it as "-gap" against "+measure" would lower the score)
    df = pairs_df([0.0, 0.0, 1.0], [1.0, 0.0, 2.0])
    assert stats.conditional_mutual_information(df, MU, GAP, [])["cmi"] == pytest.approx(1.0)


def _brute_force_cmi(df: pd.DataFrame, measure: str, target: str, subset: tuple) -> float:
    """Jiang et al.'s I(V_mu; V_g | U_S) / H(V_g | U_S) by counting ordered pairs in dicts."""
    rows = df.dropna(subset=[measure, target]).to_dict("records")
    counts: dict = {}
    for p in rows:
        for q in rows:
            if p is q or p[target] == q[target]:
                continue
            u = tuple((p[a], q[a]) for a in subset)
            vg = np.sign(p[target] - q[target])
            vm = np.sign(p[measure] - q[measure])
            counts.setdefault(u, {}).setdefault((vg, vm), 0)
            counts[u][(vg, vm)] += 1
    total = sum(sum(c.values()) for c in counts.values())
    mi = h = 0.0
    for cell in counts.values():
        n = sum(cell.values())
        pg, pm = {}, {}
        for (vg, vm), c in cell.items():
            pg[vg] = pg.get(vg, 0) + c / n
            pm[vm] = pm.get(vm, 0) + c / n
        mi += n / total * sum(c / n * math.log2(c / n / (pg[vg] * pm[vm])) for (vg, vm), c in cell.items())
        h += n / total * -sum(p * math.log2(p) for p in pg.values())
    return mi / h


@pytest.mark.parametrize("subset", [(), ("hp.a",), ("hp.a", "hp.b")])
def test_cmi_matches_brute_force_reference(subset):
    # unbalanced design (cells with different numbers of pairs), ties in both columns, NaNs
    rng = np.random.default_rng(4)
    n = 23
    df = pairs_df(
        np.round(rng.random(n) * 6),
        np.round(rng.standard_normal(n) * 2),
        a=rng.integers(0, 3, n),
        b=rng.integers(0, 2, n),
    )
    df[GAP] += 0.3 * df["hp.a"]
    df.loc[[3, 11], MU] = np.nan
    out = stats.conditional_mutual_information(df, MU, GAP, ["hp.a", "hp.b"])
    assert out["per_set"][subset] == pytest.approx(_brute_force_cmi(df, MU, GAP, subset), abs=1e-12)


def test_cmi_max_set_size_enumerates_subsets():
    df = make_zoo()
    out = stats.conditional_mutual_information(df, "measure.noise", GAP, AXES, max_set_size=2)
    assert len(out["per_set"]) == 1 + 3 + 3
    out1 = stats.conditional_mutual_information(df, "measure.noise", GAP, AXES, max_set_size=1)
    assert set(out1["per_set"]) == {(), *((a,) for a in AXES)}
    assert out["cmi"] <= out1["cmi"] + 1e-15


# ---------------------------------------------------------------------------------------
# CMI permutation null
# ---------------------------------------------------------------------------------------
def test_cmi_null_p_values_are_uniform_under_the_null():
    """A measure that is pure noise: its permutation p-values over 150 synthetic zoos are uniform (Kolmogorov-
    Smirnov against U(0, 1), with the discreteness of 1/(1 + n_perm) taken as its resolution), while the chance
    level, the null's mean, is above 0."""
    rng = np.random.default_rng(8)
    ps, means = [], []
    for k in range(150):
        df = null_zoo(rng, configs=(3, 2, 2), seeds=2)
        df["measure.a"] = rng.standard_normal(len(df))
        out = stats.cmi_null(df, "measure.a", GAP, ["hp.x", "hp.y", "hp.z"], n_perm=39, seed=k)
        ps.append(out["p"])
        means.append(out["null_mean"])
    ps = np.array(ps)
    assert scipy.stats.kstest(ps - rng.random(len(ps)) / 40, "uniform").pvalue > 0.01
    assert 0.05 <= np.mean(ps <= 0.1) <= 0.17
    assert np.mean(means) > 0.005


@pytest.mark.parametrize("measure", ["measure.with_nan", "measure.noise", "measure.depth"])
def test_cmi_null_batched_equals_one_permutation_at_a_time(measure):
    """The null scores all permutations at once (one bincount over the joint configurations); the same
    permutations applied to the DataFrame one at a time through the public conditional_mutual_information give
    the same null."""
    df = make_zoo(seed=4, n_seeds=2)
    out = stats.cmi_null(df, measure, GAP, AXES, n_perm=12, seed=3)
    perms = np.random.default_rng(3)
    one = []
    for _ in range(12):
        p = perms.permutation(len(df))
        shuffled = df.assign(**{measure: df[measure].to_numpy()[p]})
        one.append(stats.conditional_mutual_information(shuffled, measure, GAP, AXES)["cmi"])
    one = np.array(one, dtype=float)
    one = one[np.isfinite(one)]
    assert out["null_mean"] == pytest.approx(one.mean(), abs=1e-12) and out["n_perm"] == len(one)
    assert out["p"] == pytest.approx((1 + np.sum(one >= out["cmi"] - 1e-12)) / (1 + len(one)))


def test_cmi_null_recognises_an_informative_measure_and_evaluate_reports_it(evaluated):
    df, res = evaluated
    conv, _ = stats.filter_converged(df)
    out = stats.cmi_null(conv, "measure.perfect", GAP, AXES, n_perm=50, seed=7)
    assert out["cmi"] == pytest.approx(1.0) and out["p"] == pytest.approx(1 / 51) and out["null_mean"] < 0.5
    row = res[(res.measure == "measure.perfect") & (res.target == GAP)].iloc[0]
    noise = res[(res.measure == "measure.noise") & (res.target == GAP)].iloc[0]
    assert row.cmi_p == pytest.approx(1 / 51) and noise.cmi_p > row.cmi_p and noise.cmi_null > 0
