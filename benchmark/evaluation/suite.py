"""The cross-task view of a suite: each measure's results over the tasks, its worst case, and how far the
tasks' rankings agree. Pure functions of the per-task results tables (``leaderboard.results``).

A measure that predicts generalization should do so on every task, so the cross-task table ranks the measures
by their *worst* τ over the tasks (the smallest oriented τ), not their mean: one task where a measure
predicts the wrong way is a counterexample that the mean would hide (the robustness view of Dziugaite et
al. 2020, applied to tasks instead of environments).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from benchmark.evaluation import stats, targets
from benchmark.evaluation.board import Board, decode_table, encode_table, plain
from benchmark.evaluation.leaderboard import task_summary
from benchmark.evaluation.targets import expand_identical
from benchmark.files import write_text
from benchmark.zoo.registry import MODELS


def _per_task(tables: Mapping[str, pd.DataFrame], target: str) -> dict[str, pd.DataFrame]:
    out = {}
    for task, table in tables.items():
        t = expand_identical(table)
        t = t[t["target"] == target].drop_duplicates("measure").set_index("measure")
        t = t.assign(rank=t["tau"].rank(ascending=False, method="min"))
        out[task] = t
    return out


def cross_task(tables: Mapping[str, pd.DataFrame], target: str = "gap_error") -> pd.DataFrame:
    """One row per measure over the tasks' results tables (``{task: table}``).

    Columns: ``measure``, ``family``, ``n_tasks`` (tasks with a finite τ), ``worst_tau`` and ``worst_task``
    (the smallest τ and its task), ``worst_tau_lo`` (the lower end of that task's interval), ``mean_tau``,
    ``worst_psi``, ``mean_rank``, then per task ``tau.<task>``, ``tau_lo.<task>``, ``tau_hi.<task>``,
    ``psi.<task>``, ``rank.<task>`` and ``tier.<task>``. Sorted by worst τ, measures present in every
    task first.
    """
    per = _per_task(tables, target)
    tasks = list(per)
    names = list(dict.fromkeys(m for t in per.values() for m in t.index))
    rows = []
    for m in names:
        row = {"measure": m, "family": next((per[t].at[m, "family"] for t in tasks if m in per[t].index), None)}
        taus = {}
        for t in tasks:
            have = m in per[t].index
            for col, src in (("tau", "tau"), ("tau_lo", "tau_lo"), ("tau_hi", "tau_hi"), ("psi", "psi"),
                             ("rank", "rank"), ("tier", "tier")):
                value = per[t].at[m, src] if have and src in per[t] else np.nan
                row[f"{col}.{t}"] = value
            if have and np.isfinite(per[t].at[m, "tau"]):
                taus[t] = float(per[t].at[m, "tau"])
        row["n_tasks"] = len(taus)
        worst = min(taus, key=taus.get) if taus else None
        row["worst_task"] = worst
        row["worst_tau"] = taus[worst] if worst else np.nan
        row["worst_tau_lo"] = row[f"tau_lo.{worst}"] if worst else np.nan
        row["mean_tau"] = float(np.mean(list(taus.values()))) if taus else np.nan
        psis = [row[f"psi.{t}"] for t in tasks if np.isfinite(row[f"psi.{t}"])]
        row["worst_psi"] = float(min(psis)) if psis else np.nan
        ranks = [row[f"rank.{t}"] for t in tasks if np.isfinite(row[f"rank.{t}"])]
        row["mean_rank"] = float(np.mean(ranks)) if ranks else np.nan
        rows.append(row)
    rows = _collapse_identical(rows, per)
    head = ["measure", "family", "identical", "n_tasks", "worst_tau", "worst_task", "worst_tau_lo", "mean_tau",
            "worst_psi", "mean_rank"]
    per_task = [f"{c}.{t}" for t in tasks for c in ("tau", "tau_lo", "tau_hi", "psi", "rank", "tier")]
    out = pd.DataFrame(rows, columns=head + per_task)
    out["_complete"] = out["n_tasks"] == len(tasks)
    out = out.sort_values(["_complete", "worst_tau"], ascending=[False, False], na_position="last")
    return out.drop(columns="_complete").reset_index(drop=True)


def _collapse_identical(rows: list[dict], per: dict[str, pd.DataFrame]) -> list[dict]:
    """Measures that every task found identical (the same group representative on every task) as one row, the
    others named in its ``identical`` column; a measure identical on some tasks only keeps its own row."""
    def key(m: str) -> tuple:
        return tuple((t.at[m, "copy_of"] or m) if m in t.index else None for t in per.values())

    first: dict[tuple, dict] = {}
    out = []
    for row in rows:
        k = key(row["measure"])
        if k in first:
            same = first[k]
            same["identical"] = ", ".join(filter(None, [same["identical"], row["measure"]]))
            continue
        row["identical"] = ""
        first[k] = row
        out.append(row)
    return out


def _common(tables: Mapping[str, pd.DataFrame], per: dict[str, pd.DataFrame], target: str) -> list[str]:
    """The measures every task ranks with a finite τ, those identical on every task once (their cross-task row)."""
    return [m for m in cross_task(tables, target).measure
            if all(m in t.index and np.isfinite(t.at[m, "tau"]) for t in per.values())]


def agreement(tables: Mapping[str, pd.DataFrame], target: str = "gap_error") -> dict:
    """How far the tasks rank the measures alike, on the measures every task ranks (those identical on every task
    once).

    ``pairs``: one row per pair of tasks with Kendall's τ-b and Spearman's ρ between their τ columns;
    ``concordance``: Kendall's W over all tasks (:func:`stats.kendall_w`) with Friedman's χ² and p-value.
    """
    import scipy.stats  # here: reading a stored suite needs no scipy
    per = _per_task(tables, target)
    tasks = list(per)
    common = _common(tables, per, target)
    rows = []
    for a, b in combinations(tasks, 2):
        x, y = per[a].loc[common, "tau"].to_numpy(float), per[b].loc[common, "tau"].to_numpy(float)
        ok = len(common) >= 2
        rows.append({"task_a": a, "task_b": b, "n_measures": len(common),
                     "kendall_tau": float(scipy.stats.kendalltau(x, y).statistic) if ok else np.nan,
                     "spearman": float(scipy.stats.spearmanr(x, y).statistic) if ok else np.nan})
    scores = np.vstack([per[t].loc[common, "tau"].to_numpy(float) for t in tasks]) if common else np.zeros((0, 0))
    return {"pairs": pd.DataFrame(rows, columns=["task_a", "task_b", "n_measures", "kendall_tau", "spearman"]),
            "concordance": stats.kendall_w(scores) if common else {"w": np.nan, "chi2": np.nan, "p": np.nan,
                                                                     "m": len(tasks), "n": 0}}


def architectures(df: pd.DataFrame) -> dict:
    """A task's architectures (``model``, joined with " + ") and their family (``family``; an architecture's
    family is declared with it in ``benchmark.zoo.registry``, e.g. ``cnn_bn`` and ``resnet`` are both
    ``BatchNorm conv``)."""
    names = sorted(set(df["hp.model.name"])) if "hp.model.name" in df else []
    family = " + ".join(sorted({MODELS.get(n).family if n in MODELS else n for n in names}))
    return {"model": " + ".join(names) or "—", "family": family or "—"}


def by_family(tables: Mapping[str, pd.DataFrame], families: Mapping[str, str], target: str = "gap_error",
              reference: str = "MLP", pairs: pd.DataFrame | None = None) -> dict:
    """The cross-task view grouped by architecture family (``families``: ``{task: family}``), on the measures
    every task ranks (those identical on every task once), as :func:`agreement` counts them; ``pairs``: its pairs
    table, when already computed.

    ``families``: one row per family: its tasks; Kendall's W over their τ columns and the mean Kendall τ between
    two of them (NaN for a family of one task); its #1, the measure whose worst τ over the family's tasks is
    largest, with that τ. ``between``: the mean Kendall τ between two tasks' τ columns, for pairs of one family
    and pairs of two, and Kendall's W over the families' mean τ columns (each measure's τ averaged over the
    family's tasks). ``change``: each measure's rank by its mean τ over the ``reference`` family's tasks and over
    all the others, and the change (positive: ranked higher on the others), largest change first; None when
    either side has no task."""
    per = _per_task(tables, target)
    common = _common(tables, per, target)
    taus = pd.DataFrame({t: per[t].loc[common, "tau"].astype(float) for t in per}, index=common)  # measure × task
    groups: dict[str, list[str]] = {}
    for t in per:
        groups.setdefault(families.get(t, "—"), []).append(t)
    pairs = agreement(tables, target)["pairs"] if pairs is None else pairs
    same = pairs.apply(lambda r: families.get(r.task_a) == families.get(r.task_b), axis=1) if len(pairs) else \
        pd.Series(dtype=bool)
    nan_w = {"w": np.nan, "p": np.nan}
    rows = []
    for family, members in groups.items():
        inner = pairs[same & pairs.task_a.isin(members)] if len(pairs) else pairs
        w = stats.kendall_w(taus[members].to_numpy().T) if len(members) > 1 and len(common) > 1 else nan_w
        worst = taus[members].min(axis=1)
        leader = worst.idxmax() if len(worst) else None
        rows.append({"family": family, "tasks": ", ".join(members), "n_tasks": len(members), "w": w["w"],
                     "w_p": w["p"], "mean_pair_tau": float(inner.kendall_tau.mean()) if len(inner) else np.nan,
                     "leader": leader, "leader_worst_tau": float(worst[leader]) if leader else np.nan})
    means = pd.DataFrame({f: taus[members].mean(axis=1) for f, members in groups.items()})  # measure × family
    across = stats.kendall_w(means.to_numpy().T) if common and len(groups) > 1 else nan_w
    between = {"families": len(groups), "n_measures": len(common),
               "within_tau": float(pairs[same].kendall_tau.mean()) if same.any() else np.nan,
               "across_tau": float(pairs[~same].kendall_tau.mean()) if (~same).any() else np.nan,
               "w_families": across["w"], "w_families_p": across["p"]}
    ref = groups.get(reference, [])
    others = [t for t in per if t not in ref]
    change = None
    if ref and others and common:
        a, b = taus[ref].mean(axis=1), taus[others].mean(axis=1)
        ra, rb = a.rank(ascending=False, method="min"), b.rank(ascending=False, method="min")
        change = pd.DataFrame({"measure": common, "tau_ref": a.to_numpy(), "rank_ref": ra.to_numpy(),
                               "tau_other": b.to_numpy(), "rank_other": rb.to_numpy(),
                               "change": (ra - rb).to_numpy()})
        change = change.reindex(change["change"].abs().sort_values(ascending=False, kind="stable").index)
        change = change.reset_index(drop=True)
    return {"families": pd.DataFrame(rows, columns=["family", "tasks", "n_tasks", "w", "w_p", "mean_pair_tau",
                                                    "leader", "leader_worst_tau"]),
            "between": between, "change": change}


@dataclass(frozen=True, eq=False)
class Suite:
    """A suite's cross-task view: the cross-task table (:func:`cross_task`), the agreement of the tasks' rankings
    (:func:`agreement`: ``pairs`` and ``concordance``) and each task in a few numbers
    (``leaderboard.task_summary``), in task order."""

    name: str
    cross: pd.DataFrame
    pairs: pd.DataFrame
    concordance: dict
    tasks: dict[str, dict]
    targets: pd.DataFrame | None = None  # per task, the i.i.d. and the shift rankings' agreement (targets.py)
    target_cross: pd.DataFrame | None = None  # each measure's worst τ over the tasks and their targets
    families: pd.DataFrame | None = None  # the tasks grouped by architecture family (by_family)
    between: dict | None = None  # agreement within and across the families
    change: pd.DataFrame | None = None  # each measure's rank on MLPs against the other families

    @property
    def agreement(self) -> dict:
        return {"pairs": self.pairs, "concordance": self.concordance}

    def typed(self) -> dict:
        """The suite as plain JSON values: exact, and the form :meth:`save` writes."""
        return {"format": 1, "name": self.name, "cross": encode_table(self.cross), "pairs": encode_table(self.pairs),
                "concordance": plain(self.concordance), "tasks": plain(self.tasks),
                "targets": encode_table(self.targets), "target_cross": encode_table(self.target_cross),
                "families": encode_table(self.families), "between": plain(self.between),
                "change": encode_table(self.change)}

    def save(self, path: Path) -> Path:
        return write_text(Path(path), json.dumps(self.typed(), allow_nan=True, separators=(",", ":")))

    def equals(self, other: Suite) -> bool:
        return isinstance(other, Suite) and json.dumps(self.typed(), allow_nan=True) == json.dumps(
            other.typed(), allow_nan=True)


def build(name: str, boards: Mapping[str, Board], cross: pd.DataFrame | None = None) -> Suite:
    """The suite of the tasks' ``boards`` (``{task: board}``, in task order); ``cross``: a cross-task table
    already computed (a suite stored before its typed form existed), else computed here."""
    results = {task: b.table for task, b in boards.items()}
    cross = cross_task(results) if cross is None else cross
    agree = agreement(results)
    tasks = {task: {**task_summary(b.table, b.zoo, b.reliability, b.axes), **architectures(b.zoo)}
             for task, b in boards.items()}
    fam = by_family(results, {task: info["family"] for task, info in tasks.items()}, pairs=agree["pairs"])
    return Suite(name, cross, agree["pairs"], agree["concordance"], tasks, targets.suite_agreement(results),
                 targets.worst_targets(results), fam["families"], fam["between"], fam["change"])


def load(path: Path) -> Suite:
    """The suite saved at ``path`` (:meth:`Suite.save`)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return Suite(data["name"], decode_table(data["cross"]), decode_table(data["pairs"]), data["concordance"],
                 data["tasks"], decode_table(data.get("targets")), decode_table(data.get("target_cross")),
                 decode_table(data.get("families")), data.get("between"), decode_table(data.get("change")))
