"""evaluate(): the long table against the single statistics, the generic bootstrap and the paired test."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import stats
from tests.unit.evaluation.stats.zoos import AXES, GAP, MEASURES


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
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


def test_evaluate_tiers_agree_with_tied_with_best(evaluated):
    _, res = evaluated
    gap = res[res.target == GAP]
    ok = gap.tau.notna()
    assert set(gap.loc[ok & (gap.tier == 1), "measure"]) <= set(gap.loc[gap.tied_with_best == True, "measure"])  # noqa: E712
    assert gap.loc[~ok, "tier"].isna().all()
    ranked = gap[ok].sort_values("tau", ascending=False)
    assert ranked.tier.is_monotonic_increasing
