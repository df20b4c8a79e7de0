"""Tests of benchmark.stats: scipy references, hand-worked cases, invariances, evaluate()."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark import stats

GAP = "metric.gap_error"
MU = "measure.mu"


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------
def _pairs_df(gap, mu, **hps) -> pd.DataFrame:
    return pd.DataFrame({**{f"hp.{k}": v for k, v in hps.items()}, GAP: gap, MU: mu})


def make_zoo(seed: int = 0, n_seeds: int = 2, unconverged: int = 0) -> pd.DataFrame:
    """Full grid over 3 axes (3 x 2 x 2) x seeds with a synthetic gap and measures."""
    rng = np.random.default_rng(seed)
    grid = list(product([1, 2, 3], [0.01, 0.1], [32, 128], range(n_seeds)))
    df = pd.DataFrame(grid, columns=["hp.model.depth", "hp.optimizer.lr", "hp.train.batch_size", "hp.seed"])
    n = len(df)
    gap = (
        0.05 * df["hp.model.depth"]
        - 0.3 * df["hp.optimizer.lr"]
        + 0.0004 * df["hp.train.batch_size"]
        + 0.01 * rng.standard_normal(n)
    ).to_numpy()
    train_error = 0.01 * rng.random(n)
    df["metric.gap_error"] = gap
    df["metric.test_error"] = gap + train_error
    df["metric.gap_loss"] = 2 * gap
    df["metric.test_size"] = 10_000
    converged = np.ones(n, dtype=bool)
    converged[rng.choice(n, size=unconverged, replace=False)] = False
    df["metric.converged"] = converged
    df["measure.perfect"] = np.exp(10 * gap)  # strictly increasing in the gap
    df["measure.noise"] = rng.standard_normal(n)
    df["measure.depth"] = df["hp.model.depth"].astype(float)
    with_nan = gap + 0.02 * rng.standard_normal(n)
    with_nan[rng.choice(n, size=n // 4, replace=False)] = np.nan
    df["measure.with_nan"] = with_nan
    df["measure.all_nan"] = np.nan
    return df


MEASURES = ["measure.perfect", "measure.noise", "measure.depth", "measure.with_nan", "measure.all_nan"]
AXES = ["hp.model.depth", "hp.optimizer.lr", "hp.train.batch_size"]


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
    df = _pairs_df([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 6], a=[0, 0, 0, 1, 1, 1], b=[0, 1, 2, 0, 1, 2])
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
    df = _pairs_df([1, 2, 10, 20], [1, 2, 0, 5], a=[0, 1, 0, 1], seed=[0, 0, 1, 1])
    out = stats.granulated_kendall(df, MU, GAP, ["hp.a"])
    assert out["psi"] == pytest.approx(0.5)
    assert out["cells"] == {"hp.a": 1}


def test_psi_ignores_pairs_with_the_same_axis_value():
    # no seed column, two repeats of a=0 in the same cell: the pair of repeats (discordant:
    # gap 1 < 2, mu 2 > 1) does not differ in a and is not used; the two a0-a1 pairs are
    # concordant -> tau = 1 (with the repeat pair it would be (2 - 1) / 3)
    df = _pairs_df([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], a=[0, 0, 1])
    assert stats.granulated_kendall(df, MU, GAP, ["hp.a"])["psi"] == pytest.approx(1.0)


def test_psi_skips_undefined_cells_and_nans():
    # cell b=1 has a NaN measure -> only one valid model -> tau undefined, skipped
    df = _pairs_df([1, 2, 3, 4], [1, 2, np.nan, 0], a=[0, 1, 0, 1], b=[0, 0, 1, 1])
    out = stats.granulated_kendall(df, MU, GAP, ["hp.a"])
    assert out["psi"] == pytest.approx(1.0)
    assert out["cells"]["hp.a"] == 1


# ---------------------------------------------------------------------------------------
# Conditional mutual information
# ---------------------------------------------------------------------------------------
def _binary_entropy(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_cmi_identical_sign_is_one():
    rng = np.random.default_rng(0)
    gap = rng.standard_normal(20)
    df = _pairs_df(gap, gap**3 + 1.0, a=np.arange(20) % 2)
    out = stats.conditional_mutual_information(df, MU, GAP, ["hp.a"])
    assert out["cmi"] == pytest.approx(1.0)
    assert out["set"] == ()  # every set scores 1; the first in enumeration order wins


def test_cmi_independent_is_zero():
    # unordered pairs of gap [0,1,2,3] vs mu [1,3,0,2]: 3 of 6 agree in sign; with both
    # orientations V_g and V_mu are balanced and p(agree) = 1/2 -> independent -> I = 0
    df = _pairs_df([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 0.0, 2.0])
    out = stats.conditional_mutual_information(df, MU, GAP, [])
    assert out["cmi"] == pytest.approx(0.0, abs=1e-12)


def test_cmi_hand_worked_in_between():
    # gap [0,1,2], mu [0,2,1]: pairs (0,1) agree, (0,2) agree, (1,2) disagree.
    # Given V_mu, V_g is right with prob. 2/3 -> I = H(V_g) - H(V_g|V_mu) = 1 - H_b(1/3); H(V_g) = 1
    df = _pairs_df([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])
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
    df = _pairs_df(a + 0.1 * rng.random(8), a.astype(float), a=a, seed=np.tile(np.arange(4), 2))
    out = stats.conditional_mutual_information(df, MU, GAP, ["hp.a"])
    assert out["per_set"][()] == pytest.approx(4 / 7)
    assert out["per_set"][("hp.a",)] == pytest.approx(0.0, abs=1e-12)
    assert out["cmi"] == pytest.approx(0.0, abs=1e-12)
    assert out["set"] == ("hp.a",)


def test_cmi_drops_tied_target_pairs():
    # gap [0,0,1], mu [1,0,2]: the pair (0,1) has tied gaps and is dropped; the two others
    # agree -> 1 (keeping it as "-gap" against "+measure" would lower the score)
    df = _pairs_df([0.0, 0.0, 1.0], [1.0, 0.0, 2.0])
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
    df = _pairs_df(
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
    df = _pairs_df([0.1, 0.3, 0.2, 0.4], [1.0, 2.0, 3.0, 2.0], a=[0, 1, 0, 1], b=[0, 0, 1, 1])
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
    df = _pairs_df([0.10, 0.20, 0.30, 0.15], [1.0, 2.0, 3.0, 0.0], a=[0, 0, 1, 1], seed=[0, 1, 0, 1])
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


# ---------------------------------------------------------------------------------------
# Invariances over the whole API
# ---------------------------------------------------------------------------------------
def _all_stats(df: pd.DataFrame, measure: str) -> dict:
    psi = stats.granulated_kendall(df, measure, GAP, AXES)
    cmi = stats.conditional_mutual_information(df, measure, GAP, AXES)
    se = stats.robust_sign_error(df, measure, GAP, AXES)
    return {
        "tau": stats.kendall_tau(df, measure, GAP),
        "spearman": stats.spearman_rho(df, measure, GAP),
        "psi": psi["psi"],
        **{f"psi.{a}": v for a, v in psi["per_axis"].items()},
        "cmi": cmi["cmi"],
        "se_mean": se["mean"],
        "se_max": se["max"],
        **{f"se.{a}": v["mean"] for a, v in se["per_axis"].items()},
    }


@pytest.fixture(scope="module")
def zoo() -> pd.DataFrame:
    df = make_zoo(seed=5, n_seeds=3)
    df["measure.mu"] = df[GAP] + 0.03 * np.random.default_rng(9).standard_normal(len(df))
    return df


def test_monotone_transform_changes_nothing(zoo):
    base = _all_stats(zoo, MU)
    transformed = zoo.assign(**{MU: np.exp(3 * zoo[MU]) + zoo[MU] ** 3})
    assert _all_stats(transformed, MU) == pytest.approx(base, nan_ok=True)


def test_negation_flips_tau_and_psi(zoo):
    base = _all_stats(zoo, MU)
    neg = _all_stats(zoo.assign(**{MU: -zoo[MU]}), MU)
    for key in ["tau", "spearman", "psi"] + [f"psi.{a}" for a in AXES]:
        assert neg[key] == pytest.approx(-base[key])
    assert base["tau"] > 0.3
    assert neg["cmi"] == pytest.approx(base["cmi"])  # mutual information ignores the labels' sign
    assert neg["se_mean"] == pytest.approx(1 - base["se_mean"])  # no measure ties here


def test_row_permutation_changes_nothing(zoo):
    base = _all_stats(zoo, MU)
    shuffled = zoo.sample(frac=1.0, random_state=np.random.default_rng(0)).reset_index(drop=True)
    assert _all_stats(shuffled, MU) == pytest.approx(base, nan_ok=True, abs=1e-12)
    ci = stats.bootstrap_ci(zoo, lambda d: stats.kendall_tau(d, MU, GAP), n_boot=30, seed=1)
    assert stats.bootstrap_ci(shuffled, lambda d: stats.kendall_tau(d, MU, GAP), n_boot=30, seed=1) == ci


def test_functions_do_not_mutate_input(zoo):
    before = zoo.copy()
    _all_stats(zoo, MU)
    stats.bootstrap_ci(zoo, lambda d: stats.kendall_tau(d, MU, GAP), n_boot=5)
    stats.filter_converged(zoo)
    stats.evaluate(zoo, [MU], n_boot=5)
    pd.testing.assert_frame_equal(zoo, before)


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
# filter_converged and evaluate
# ---------------------------------------------------------------------------------------
def test_filter_converged():
    df = pd.DataFrame({"metric.converged": [True, False, np.nan, None, True], MU: [1.0, 2.0, 3.0, 4.0, 5.0]})
    kept, dropped = stats.filter_converged(df)
    assert dropped == 3  # missing counts as not converged
    assert kept[MU].tolist() == [1.0, 5.0]


def test_default_axes_exclude_seed_and_constants():
    df = make_zoo().assign(**{"hp.dataset.name": "mnist1d"})
    assert stats.default_axes(df) == AXES


@pytest.fixture(scope="module")
def evaluated():
    df = make_zoo(seed=2, n_seeds=3, unconverged=4)
    return df, stats.evaluate(df, MEASURES, n_boot=30, seed=7)


def test_evaluate_shape_and_columns(evaluated):
    df, res = evaluated
    assert len(res) == len(MEASURES) * 2
    assert list(res["measure"]) == MEASURES * 2
    assert list(res["target"]) == ["metric.gap_error"] * 5 + ["metric.test_error"] * 5
    expected = (
        ["measure", "target", "n_models", "n_failed", "tau", "tau_lo", "tau_hi", "spearman"]
        + ["psi", "psi_lo", "psi_hi"]
        + [f"psi.{a}" for a in AXES]
        + ["cmi", "cmi_set", "cmi_null", "cmi_p", "sign_error_mean", "sign_error_p90", "sign_error_max"]
        + [f"sign_error.{a}" for a in AXES]
        + ["sign_error_n_envs", "sign_error_n_below", "sign_error_unusable_axes"]
        + [f"{s}_vs_best{x}" for s in ("tau", "psi") for x in ("", "_lo", "_hi", "_p", "_p_holm")]
        + ["tied_with_best", "tier"]
    )
    assert list(res.columns) == expected
    assert res.attrs["resample"] == "seeds" and res.attrs["replicated"]
    assert res.attrs["n_unconverged"] == 4
    assert res.attrs["axes"] == AXES


def test_evaluate_perfect_measure(evaluated):
    _, res = evaluated
    row = res[(res.measure == "measure.perfect") & (res.target == GAP)].iloc[0]
    assert row.n_models == 36 - 4
    assert row.tau == 1.0 and row.psi == 1.0 and row.spearman == pytest.approx(1.0)
    assert row.tau_lo == 1.0 and row.tau_hi == 1.0
    assert row.cmi == pytest.approx(1.0)
    assert row.cmi_set == ""  # every set scores 1: the empty set comes first
    assert row.sign_error_mean == 0.0 and row.sign_error_max == 0.0
    assert all(row[f"psi.{a}"] == 1.0 for a in AXES)


def test_evaluate_nan_measures(evaluated):
    df, res = evaluated
    conv, _ = stats.filter_converged(df)
    row = res[(res.measure == "measure.with_nan") & (res.target == GAP)].iloc[0]
    assert row.n_failed == conv["measure.with_nan"].isna().sum() > 0
    assert row.n_models == conv["measure.with_nan"].notna().sum()
    assert np.isfinite([row.tau, row.tau_lo, row.tau_hi, row.psi, row.cmi, row.sign_error_mean]).all()
    assert row.tau == pytest.approx(stats.kendall_tau(conv, "measure.with_nan", GAP))
    empty = res[res.measure == "measure.all_nan"]
    assert (empty.n_models == 0).all()
    numeric = ["tau", "tau_lo", "tau_hi", "spearman", "psi", "psi_lo", "psi_hi", "cmi", "sign_error_mean"]
    assert empty[numeric].isna().all().all()
    assert empty.cmi_set.isna().all()


def test_evaluate_matches_the_single_statistics(evaluated):
    df, res = evaluated
    conv, _ = stats.filter_converged(df)
    for _, row in res.iterrows():
        m, t = row.measure, row.target
        if m == "measure.all_nan":
            continue
        assert row.tau == pytest.approx(stats.kendall_tau(conv, m, t), abs=1e-12)
        assert row.spearman == pytest.approx(stats.spearman_rho(conv, m, t), abs=1e-12)
        psi = stats.granulated_kendall(conv, m, t, AXES)
        assert row.psi == pytest.approx(psi["psi"], abs=1e-12)
        cmi = stats.conditional_mutual_information(conv, m, t, AXES)
        assert row.cmi == pytest.approx(cmi["cmi"], abs=1e-12)
        assert row.cmi_set == ",".join(cmi["set"])
        se = stats.robust_sign_error(conv, m, t, AXES)
        assert row.sign_error_mean == pytest.approx(se["mean"], abs=1e-12)
        assert row.sign_error_p90 == pytest.approx(se["p90"], abs=1e-12)
        for a in AXES:
            assert row[f"sign_error.{a}"] == pytest.approx(se["per_axis"][a]["mean"], abs=1e-12)


def test_evaluate_bootstrap_equals_generic_bootstrap(evaluated):
    df, res = evaluated
    conv, _ = stats.filter_converged(df)
    for m in ["measure.noise", "measure.with_nan"]:
        row = res[(res.measure == m) & (res.target == GAP)].iloc[0]
        tau_ci = stats.bootstrap_ci(conv, lambda d: stats.kendall_tau(d, m, GAP), n_boot=30, seed=7)
        psi_ci = stats.bootstrap_ci(
            conv, lambda d: stats.granulated_kendall(d, m, GAP, AXES)["psi"], n_boot=30, seed=7
        )
        assert (row.tau_lo, row.tau_hi) == pytest.approx(tau_ci, abs=1e-12)
        assert (row.psi_lo, row.psi_hi) == pytest.approx(psi_ci, abs=1e-12)
        assert row.tau_lo <= row.tau <= row.tau_hi


def test_evaluate_depth_measure_is_explained_by_depth(evaluated):
    _, res = evaluated
    row = res[(res.measure == "measure.depth") & (res.target == GAP)].iloc[0]
    # constant along the other axes while the gap moves -> those cells score 0 (Jiang's convention)
    assert row["psi.hp.optimizer.lr"] == 0.0 and row["psi.hp.train.batch_size"] == 0.0
    assert row["psi.hp.model.depth"] > 0.9
    assert row.psi == pytest.approx(row["psi.hp.model.depth"] / 3)
    assert row.cmi_set != "" and "hp.model.depth" in row.cmi_set.split(",")
    assert row.cmi < 0.05


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


def _null_zoo(rng, gap_noise=0.01, noise_a=0.01, noise_b=0.01, configs=(4, 3, 3), seeds=3):
    grid = list(product(*[range(c) for c in configs], range(seeds)))
    df = pd.DataFrame(grid, columns=["hp.x", "hp.y", "hp.z", "hp.seed"])
    truth = 0.02 * df["hp.x"] - 0.015 * df["hp.y"] + 0.01 * df["hp.z"] ** 2
    df[GAP] = truth + gap_noise * rng.standard_normal(len(df))
    df["metric.test_error"] = df[GAP]
    df["metric.test_size"] = 10_000
    df["metric.converged"] = True
    df["measure.a"] = truth + noise_a * rng.standard_normal(len(df))
    df["measure.b"] = truth + noise_b * rng.standard_normal(len(df))
    return df


def test_paired_test_is_calibrated_under_the_null_and_has_power():
    """Two measures equally good (the same truth plus independent noise of one size): the paired test says
    "different" at about the nominal 5 % over 300 synthetic zoos of 36 configurations x 3 seeds (0.04 with
    Rao & Wu's k - 1 draws; the plain k-of-k seed bootstrap gives 0.09 here, and fails this test); a planted
    ordering (a less noisy measure) is found in most of them."""
    rng = np.random.default_rng(11)
    null = [stats.compare(_null_zoo(rng), "measure.a", "measure.b", GAP, n_boot=200, seed=k)["tau"]["p"]
            for k in range(300)]
    rate = np.mean(np.array(null) < 0.05)
    assert 0.02 <= rate <= 0.08, rate  # nominal 0.05; the binomial sd over 300 zoos is 0.013
    planted = [stats.compare(_null_zoo(rng, noise_a=0.003, noise_b=0.02), "measure.a", "measure.b", GAP,
                             n_boot=200, seed=k)["tau"] for k in range(40)]
    assert np.mean([d["p"] < 0.05 and d["diff"] > 0 for d in planted]) >= 0.8


def test_evaluate_marks_the_group_tied_with_the_best(evaluated):
    _, res = evaluated
    gap = res[res.target == GAP].set_index("measure")
    assert gap.loc["measure.perfect", "tied_with_best"] is True
    assert gap.loc["measure.perfect", "tau_vs_best"] == 0.0
    assert gap.loc["measure.noise", "tied_with_best"] is False
    assert gap.loc["measure.noise", "tau_vs_best"] < 0 and gap.loc["measure.noise", "tau_vs_best_p_holm"] < 0.05
    assert gap.loc["measure.all_nan", "tied_with_best"] is None
    assert (gap.tau_vs_best_p_holm.dropna() >= gap.tau_vs_best_p.dropna()).all()
    d = stats.compare(stats.filter_converged(evaluated[0])[0], "measure.with_nan", "measure.perfect", GAP,
                      n_boot=30, seed=7)
    assert d["tau"]["diff"] == pytest.approx(gap.loc["measure.with_nan", "tau_vs_best"])
    assert d["tau"]["p"] == pytest.approx(gap.loc["measure.with_nan", "tau_vs_best_p"])


# ---------------------------------------------------------------------------------------
# Noise floor and split-half reliability
# ---------------------------------------------------------------------------------------
def test_seed_noise_hand_worked():
    # a=0: seeds 1, 3 (mean 2, SS 2); a=1: seeds 2, 2, 5 (mean 3, SS 6): pooled sd sqrt(8/3), configs sd(2, 3)
    df = _pairs_df([1.0, 3.0, 2.0, 2.0, 5.0], [0] * 5, a=[0, 0, 1, 1, 1], seed=[0, 1, 0, 1, 2])
    out = stats.seed_noise(df, GAP)
    assert out["sd_seed"] == pytest.approx(math.sqrt(8 / 3)) and out["dof"] == 3
    assert out["sd_config"] == pytest.approx(np.std([2.0, 3.0], ddof=1))
    assert out["ratio"] == pytest.approx(out["sd_config"] / out["sd_seed"])
    one = stats.seed_noise(make_zoo(n_seeds=1), GAP)
    assert math.isnan(one["sd_seed"]) and one["dof"] == 0 and one["configurations"] == 12


def _reliability_zoo(seed, n_measures=8):
    """A synthetic zoo with measures of graded quality: the observed gap plus noise of growing size."""
    rng = np.random.default_rng(seed)
    df = _null_zoo(rng)
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
# CMI permutation null
# ---------------------------------------------------------------------------------------
def test_cmi_null_p_values_are_uniform_under_the_null():
    """A measure that is pure noise: its permutation p-values over 150 synthetic zoos are uniform (Kolmogorov-
    Smirnov against U(0, 1), with the discreteness of 1/(1 + n_perm) taken as its resolution), while the chance
    level, the null's mean, is above 0."""
    rng = np.random.default_rng(8)
    ps, means = [], []
    for k in range(150):
        df = _null_zoo(rng, configs=(3, 2, 2), seeds=2)
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


# ---------------------------------------------------------------------------------------
# Tiers and Kendall's W
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


def test_evaluate_tiers_agree_with_tied_with_best(evaluated):
    _, res = evaluated
    gap = res[res.target == GAP]
    ok = gap.tau.notna()
    assert set(gap.loc[ok & (gap.tier == 1), "measure"]) <= set(gap.loc[gap.tied_with_best == True, "measure"])  # noqa: E712
    assert gap.loc[~ok, "tier"].isna().all()
    ranked = gap[ok].sort_values("tau", ascending=False)
    assert ranked.tier.is_monotonic_increasing


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
