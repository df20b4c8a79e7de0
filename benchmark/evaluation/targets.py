"""The cross-target view: does a measure that ranks models by their i.i.d. gap also rank them by their gap on
shifted test sets (``metric.shift_gap``)? Pure functions of results tables (``leaderboard.results``), per board and
over a suite's tasks.

* :func:`agreement`: how alike two targets rank the measures, Kendall's τ-b and Spearman's ρ between the measures'
  τ for one target and their τ for the other, and each target's #1.
* :func:`worst_targets`: each measure's τ per target and its *worst* target (the smallest τ): a measure that
  predicts the i.i.d. gap but not the shifted one is found out by its worst case, as the cross-task table finds a
  measure that fails on one task.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

IID, SHIFT = "gap_error", "shift_gap"
AGREEMENT_COLUMNS = ["task", "target_a", "target_b", "n_measures", "kendall_tau", "spearman", "top_a", "tau_top_a",
                     "top_b", "tau_top_b"]


def expand_identical(table: pd.DataFrame) -> pd.DataFrame:
    """The results table with a row for every measure that ``identical`` names beside its group's
    representative (the representative's numbers, ``copy_of`` naming it), so that tasks whose groups differ
    line up."""
    table = table.assign(copy_of="")
    if "identical" not in table:
        return table
    extra = []
    grouped = table["identical"].map(lambda x: isinstance(x, str) and x != "")
    for _, row in table[grouped].iterrows():
        for name in str(row["identical"]).split(", "):
            copy = row.copy()
            copy["measure"], copy["copy_of"] = name, row["measure"]
            extra.append(copy)
    return pd.concat([table, pd.DataFrame(extra)], ignore_index=True) if extra else table


def _taus(table: pd.DataFrame, target: str) -> pd.Series:
    t = table[table["target"] == target]
    return t.drop_duplicates("measure").set_index("measure")["tau"].astype(float)


def agreement(table: pd.DataFrame, a: str = IID, b: str = SHIFT) -> dict | None:
    """How alike ``table`` ranks the measures for targets ``a`` and ``b``, over the measures with a finite τ for
    both: ``n_measures``, ``kendall_tau`` (τ-b), ``spearman``, and each target's #1 (``top_a``, ``tau_top_a``,
    ``top_b``, ``tau_top_b``). None when the table lacks either target."""
    import scipy.stats
    targets = set(table["target"])
    if a not in targets or b not in targets:
        return None
    x, y = _taus(table, a), _taus(table, b)
    common = [m for m in x.index if m in y.index and np.isfinite(x[m]) and np.isfinite(y[m])]
    xs, ys = x[common].to_numpy(), y[common].to_numpy()
    ok = len(common) >= 2 and np.ptp(xs) > 0 and np.ptp(ys) > 0  # a constant column ranks nothing
    top = lambda s: (str(s.idxmax()), float(s.max())) if s.notna().any() else ("", np.nan)  # noqa: E731
    (top_a, tau_a), (top_b, tau_b) = top(x), top(y)
    return {"target_a": a, "target_b": b, "n_measures": len(common),
            "kendall_tau": float(scipy.stats.kendalltau(xs, ys).statistic) if ok else np.nan,
            "spearman": float(scipy.stats.spearmanr(xs, ys).statistic) if ok else np.nan,
            "top_a": top_a, "tau_top_a": tau_a, "top_b": top_b, "tau_top_b": tau_b}


def worst_targets(tables: Mapping[str, pd.DataFrame], targets: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per measure over one or more boards' results tables (``{task: table}``) and their targets: ``tau.
    <target>`` per board (``tau.<target>@<task>`` with several boards), the ``worst_tau`` over every board and
    target with its ``worst_target`` (and ``worst_task``), and ``mean_tau``. Over several boards, measures identical
    to another on a board enter under each name (as in the cross-task table); on one, once, as the board ranks
    them. Sorted by worst τ, measures with a τ everywhere first."""
    several = len(tables) > 1
    columns: dict[str, pd.Series] = {}
    keys: list[tuple[str, str]] = []
    family: dict[str, str] = {}
    for task, table in tables.items():
        table = expand_identical(table) if several else table
        family.update(table.drop_duplicates("measure").set_index("measure")["family"].astype(str).to_dict())
        for target in targets or list(dict.fromkeys(table["target"])):
            if target in set(table["target"]):
                columns[f"tau.{target}" + (f"@{task}" if several else "")] = _taus(table, target)
                keys.append((target, task))
    if not columns:
        return pd.DataFrame(columns=["measure", "family", "worst_tau", "worst_target", "mean_tau"])
    wide = pd.DataFrame(columns)
    values = wide.to_numpy(float)
    finite = np.isfinite(values)
    worst = np.where(finite, values, np.inf).argmin(axis=1)
    out = pd.DataFrame({"measure": wide.index, "family": [family.get(m, "") for m in wide.index]})
    masked, some = np.where(finite, values, np.nan), finite.any(axis=1)
    worst_tau, mean_tau = np.full(len(wide), np.nan), np.full(len(wide), np.nan)
    worst_tau[some], mean_tau[some] = np.nanmin(masked[some], axis=1), np.nanmean(masked[some], axis=1)
    where = [keys[i] if some[k] else ("", "") for k, i in enumerate(worst)]
    out["worst_tau"] = worst_tau
    out["worst_target"] = [target for target, _ in where]
    if several:
        out["worst_task"] = [task for _, task in where]
    out["mean_tau"] = mean_tau
    out["complete"] = finite.all(axis=1)
    for c in wide.columns:
        out[c] = wide[c].to_numpy()
    out = out.sort_values(["complete", "worst_tau"], ascending=[False, False], na_position="last")
    return out.drop(columns="complete").reset_index(drop=True)


def suite_agreement(tables: Mapping[str, pd.DataFrame], a: str = IID, b: str = SHIFT) -> pd.DataFrame:
    """:func:`agreement` per task, one row each (``task`` first), for the tasks whose tables hold both targets (each
    group of identical measures once, as the task's board ranks them)."""
    rows = [{"task": task, **found} for task, table in tables.items()
            if (found := agreement(table, a, b)) is not None]
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
