"""Invariances over the whole API: monotone transforms, negation, row order, no mutation; default axes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark import stats
from tests.unit.evaluation.stats.zoos import AXES, GAP, MU, make_zoo


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


def test_default_axes_exclude_seed_and_constants():
    df = make_zoo().assign(**{"hp.dataset.name": "mnist1d"})
    assert stats.default_axes(df) == AXES
