"""The cross-task view of a suite: hand-worked tables, the identical-measure expansion and the agreement."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark.evaluation import suite


def _table(taus: dict[str, float], identical: dict[str, str] | None = None, tiers: dict | None = None):
    rows = [{"measure": m, "target": "gap_error", "tau": t, "tau_lo": t - 0.05, "tau_hi": t + 0.05, "psi": t / 2,
             "family": "f", "identical": (identical or {}).get(m, ""), "tier": (tiers or {}).get(m, 1)}
            for m, t in taus.items()]
    rows.append({"measure": "a", "target": "test_error", "tau": -1.0, "tau_lo": -1, "tau_hi": -1, "psi": 0,
                 "family": "f", "identical": "", "tier": 1})
    return pd.DataFrame(rows)


def test_cross_task_ranks_by_the_worst_task():
    tables = {"t1": _table({"a": 0.6, "b": 0.5, "c": 0.1}),
              "t2": _table({"a": -0.2, "b": 0.4, "c": 0.3}, tiers={"a": 3, "b": 1, "c": 2}),
              "t3": _table({"a": 0.9, "b": 0.45})}  # c missing on t3
    out = suite.cross_task(tables).set_index("measure")
    assert list(out.index) == ["b", "a", "c"]  # complete rows first, by worst tau; c lacks a task
    assert out.at["b", "worst_tau"] == 0.4 and out.at["b", "worst_task"] == "t2"
    assert out.at["a", "worst_tau"] == -0.2 and out.at["a", "worst_tau_lo"] == pytest.approx(-0.25)
    assert out.at["a", "mean_tau"] == pytest.approx((0.6 - 0.2 + 0.9) / 3)
    assert out.at["a", "mean_rank"] == pytest.approx((1 + 3 + 1) / 3)
    assert out.at["c", "n_tasks"] == 2 and np.isnan(out.at["c", "tau.t3"])
    assert out.at["a", "tier.t2"] == 3 and out.at["b", "worst_psi"] == pytest.approx(0.2)


def test_identical_measures_are_expanded_on_the_tasks_that_group_them():
    tables = {"mlp": _table({"spec": 0.3, "x": 0.1}, identical={"spec": "spec_fft"}),
              "cnn": _table({"spec": 0.2, "spec_fft": 0.25, "x": 0.0})}
    out = suite.cross_task(tables).set_index("measure")
    assert out.at["spec_fft", "tau.mlp"] == 0.3 and out.at["spec_fft", "tau.cnn"] == 0.25
    assert out.at["spec_fft", "n_tasks"] == 2 and out.at["spec", "identical"] == ""
    # identical on every task: one row, the other named beside it
    both = {"a": _table({"spec": 0.3, "x": 0.1}, identical={"spec": "spec_fft, spec_x"}),
            "b": _table({"spec": 0.2, "x": 0.0}, identical={"spec": "spec_fft"})}
    out = suite.cross_task(both).set_index("measure")
    assert list(out.index) == ["spec", "x", "spec_x"] and out.at["spec", "identical"] == "spec_fft"
    assert out.at["spec_x", "n_tasks"] == 1


def test_agreement_against_scipy():
    rng = np.random.default_rng(0)
    names = [f"m{k}" for k in range(12)]
    base = np.linspace(-0.5, 0.8, 12)
    taus = {t: dict(zip(names, base + 0.2 * rng.standard_normal(12))) for t in ("t1", "t2", "t3")}
    out = suite.agreement({t: _table(v) for t, v in taus.items()})
    pair = out["pairs"].set_index(["task_a", "task_b"]).loc[("t1", "t3")]
    x, y = np.array(list(taus["t1"].values())), np.array(list(taus["t3"].values()))
    assert pair.kendall_tau == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert pair.spearman == pytest.approx(scipy.stats.spearmanr(x, y).statistic) and pair.n_measures == 12
    assert len(out["pairs"]) == 3
    ref = scipy.stats.friedmanchisquare(*np.array([list(v.values()) for v in taus.values()]).T)
    assert out["concordance"]["chi2"] == pytest.approx(ref.statistic) and out["concordance"]["m"] == 3
    assert out["concordance"]["w"] > 0.5
