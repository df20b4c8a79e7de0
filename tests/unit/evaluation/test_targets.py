"""The cross-target view: each measure's worst target, and how far the i.i.d. and the shift rankings agree."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark.evaluation import targets


def _table(taus: dict[str, dict[str, float]], identical: dict[str, str] | None = None) -> pd.DataFrame:
    """A results table from ``{target: {measure: tau}}``."""
    return pd.DataFrame([{"measure": m, "target": t, "tau": tau, "family": "f" + m[0],
                          "identical": (identical or {}).get(m, "")}
                         for t, row in taus.items() for m, tau in row.items()])


def test_agreement_against_scipy_and_each_targets_number_one():
    rng = np.random.default_rng(1)
    names = [f"m{k}" for k in range(15)]
    iid = dict(zip(names, np.linspace(-0.4, 0.7, 15)))
    shift = {m: t + 0.3 * rng.standard_normal() for m, t in iid.items()}
    shift["m3"] = np.nan  # a measure without a τ on one target is left out of the comparison
    out = targets.agreement(_table({"gap_error": iid, "shift_gap": shift, "test_error": iid}))
    keep = [m for m in names if m != "m3"]
    x, y = np.array([iid[m] for m in keep]), np.array([shift[m] for m in keep])
    assert out["n_measures"] == 14
    assert out["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert out["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert out["top_a"] == "m14" and out["tau_top_a"] == pytest.approx(0.7)
    best = max(keep, key=shift.get)
    assert out["top_b"] == best and out["tau_top_b"] == pytest.approx(shift[best])
    assert targets.agreement(_table({"gap_error": iid})) is None  # no shift target: nothing to compare


def test_worst_target_is_the_smallest_tau_and_missing_values_go_last():
    table = _table({"gap_error": {"a": 0.5, "b": 0.3, "c": 0.2},
                    "shift.rotate": {"a": -0.1, "b": 0.35, "c": np.nan},
                    "shift_gap": {"a": 0.4, "b": 0.25, "c": 0.6}})
    out = targets.worst_targets({"k": table}).set_index("measure")
    assert list(out.index) == ["b", "a", "c"]  # c lacks a target, so it comes after the complete rows
    assert out.at["b", "worst_tau"] == 0.25 and out.at["b", "worst_target"] == "shift_gap"
    assert out.at["a", "worst_tau"] == -0.1 and out.at["a", "worst_target"] == "shift.rotate"
    assert out.at["c", "worst_tau"] == 0.2 and out.at["a", "mean_tau"] == pytest.approx(0.8 / 3)
    assert out.at["a", "tau.shift.rotate"] == -0.1 and "worst_task" not in out


def test_worst_case_over_tasks_and_targets_expands_identical_measures():
    one = _table({"gap_error": {"a": 0.5, "b": 0.3}, "shift_gap": {"a": 0.1, "b": 0.3}}, identical={"a": "a2"})
    two = _table({"gap_error": {"a": 0.6, "a2": 0.0, "b": 0.2}, "shift_gap": {"a": 0.4, "a2": 0.5, "b": 0.4}})
    out = targets.worst_targets({"one": one, "two": two}).set_index("measure")
    assert out.at["a", "worst_tau"] == 0.1 and (out.at["a", "worst_target"], out.at["a", "worst_task"]) == (
        "shift_gap", "one")
    assert out.at["a2", "tau.gap_error@one"] == 0.5 and out.at["a2", "worst_task"] == "two"
    assert out.at["b", "worst_tau"] == 0.2 and out.at["b", "worst_task"] == "two"
    rows = targets.suite_agreement({"one": one, "two": two, "iid-only": _table({"gap_error": {"a": 1.0}})})
    assert list(rows.task) == ["one", "two"]  # a task without the shift target has no row
