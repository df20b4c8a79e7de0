"""Leaderboard: rank measures by how well they predict generalization, write tables, print them.

Every statistic is computed on the measure *oriented by its declared sign* (``sign · measure``), so a
τ of +1 means the measure orders the models exactly as the target does, in the direction its authors
predict; a negative τ means it predicts the opposite way. Oracle analyses (which see test data) are
listed separately and never ranked.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark import stats

TARGETS = {"gap_error": "metric.gap_error", "test_error": "metric.test_error"}


def measure_info(measures_list) -> pd.DataFrame:
    """One row per registered measure: name, family, sign, oracle, version, description, reference."""
    return pd.DataFrame([{"measure": m.name, "family": m.family, "sign": m.sign, "oracle": m.oracle,
                          "version": m.version, "description": m.description, "reference": m.reference}
                         for m in measures_list])


def costs(long: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """Per measure: mean seconds per model, number of failures and the most frequent failure message."""
    long = long[long.model_id.isin(set(ids))]
    if long.empty:
        return pd.DataFrame(columns=["measure", "seconds", "failures", "failure_message"])
    latest = long.groupby("measure").version.transform("max")
    long = long[long.version == latest]
    failed = long[long.status == "failed"]
    message = failed.groupby("measure").error.agg(lambda s: s.value_counts().index[0])
    out = long.groupby("measure").agg(seconds=("seconds", "mean"),
                                      failures=("status", lambda s: int((s == "failed").sum())))
    out["failure_message"] = message
    return out.reset_index()


def gap_noise(df: pd.DataFrame) -> dict:
    """The spread of generalization gaps against the binomial standard error of one model's test error.

    SE = √(p(1−p)/n_test) at the zoo's mean test error p; a ranking of models by gap is meaningful only when
    the spread (max − min) is several times the SE.
    """
    conv = df[df["metric.converged"].astype(bool)]
    gaps = conv["metric.gap_error"]
    p, n = conv["metric.test_error"].mean(), conv["metric.test_size"].median()
    se = math.sqrt(p * (1 - p) / n) if len(conv) else math.nan
    spread = gaps.max() - gaps.min() if len(conv) else math.nan
    return {"n_models": len(df), "n_converged": len(conv), "gap_min": gaps.min(), "gap_max": gaps.max(),
            "gap_std": gaps.std(), "gap_spread": spread, "test_error_se": se, "spread_over_se": spread / se}


def results(df: pd.DataFrame, info: pd.DataFrame, cost: pd.DataFrame, axes: list[str], *,
            targets: Sequence[str] = tuple(TARGETS.values()), n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Every statistic of every measure against every target, oriented by sign, with cost and metadata."""
    ranked = info[~info.oracle]
    oriented = df.copy()
    names = []
    for name, sign in zip(ranked.measure, ranked.sign):
        col = f"measure.{name}"
        if col not in df:
            continue
        oriented[col] = sign * df[col]
        names.append(col)
    table = stats.evaluate(oriented, names, targets=list(targets), axes=axes, n_boot=n_boot, seed=seed)
    table["measure"] = table["measure"].str.removeprefix("measure.")
    table["target"] = table["target"].str.removeprefix("metric.")
    table = table.merge(info, on="measure", how="left").merge(cost, on="measure", how="left")
    return table.sort_values(["target", "tau"], ascending=[True, False], ignore_index=True)


def oracle_table(df: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """Oracle analyses (they see test data): their mean value and its correlation with the measured gap."""
    rows = []
    for name in info[info.oracle].measure:
        col = f"measure.{name}"
        if col not in df:
            continue
        v = df[col]
        rows.append({"measure": name, "mean": v.mean(), "mean_gap_loss": df["metric.gap_loss"].mean(),
                     "corr_with_gap_loss": v.corr(df["metric.gap_loss"]),
                     "n_models": int(v.notna().sum())})
    return pd.DataFrame(rows)


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}f}"


def _ci(point, lo, hi) -> str:
    return f"{_fmt(point)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]"


# --- shared with benchmark/html.py (the page and README.md say the same) ------------------------------------
LEGEND = ("τ: Kendall τ-b with the target; Ψ: granulated Kendall (mean over axes of τ within cells that differ in "
          "that axis only); both oriented by the measure's declared sign (+1 = predicts as its authors claim), "
          "with bootstrap 95% intervals. CMI: conditional mutual information of the signs (Jiang et al.), "
          "minimised over conditioning sets of ≤ 2 axes (0 = no information). Sign error: Dziugaite et al.'s "
          "robust sign-error over environments (lower is better). Cost: seconds per model; an intermediate shared by "
          "several measures (a σ search, a Hessian eigen-solve, an SGD continuation) is charged to the first "
          "measure of its family that computes it, and the others show only their own extra time.")


def noise_text(noise: dict) -> str:
    """The gap-vs-noise statement: how many models, and how far the gaps spread beyond test-set noise."""
    return (f"{noise['n_converged']} converged models of {noise['n_models']} "
            f"({noise['n_models'] - noise['n_converged']} unconverged, excluded). "
            f"Generalization gap (test − train error) from {_fmt(noise['gap_min'])} to {_fmt(noise['gap_max'])}: "
            f"spread {_fmt(noise['gap_spread'])} = {_fmt(noise['spread_over_se'], 1)}× the binomial standard error "
            f"of one model's test error ({_fmt(noise['test_error_se'], 4)}).")
# --- end shared ---------------------------------------------------------------------------------------------


def markdown(table: pd.DataFrame, noise: dict, oracle: pd.DataFrame, title: str, axes: list[str]) -> str:
    """The leaderboard as Markdown: one ranked table per target, a per-axis breakdown, oracle analyses."""
    lines = [f"# Leaderboard: {title}", "", noise_text(noise), "", LEGEND, ""]
    for target, t in table.groupby("target", sort=False):
        t = t.sort_values("tau", ascending=False)
        lines += [f"## Predicting `{target}`", "",
                  "| # | measure | family | τ [95% CI] | Ψ [95% CI] | CMI | sign err. mean / max | cost s | failed |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for rank, r in enumerate(t.itertuples(), 1):
            lines.append(f"| {rank} | `{r.measure}` | {r.family} | {_ci(r.tau, r.tau_lo, r.tau_hi)} | "
                         f"{_ci(r.psi, r.psi_lo, r.psi_hi)} | {_fmt(r.cmi)} | "
                         f"{_fmt(r.sign_error_mean, 2)} / {_fmt(r.sign_error_max, 2)} | {_fmt(r.seconds, 3)} | "
                         f"{_fmt(r.failures) if r.failures == r.failures else '—'} |")
        lines.append("")
    gap = table[table.target == "gap_error"].sort_values("tau", ascending=False)
    psi_cols = [f"psi.{a}" for a in axes if f"psi.{a}" in table]
    if psi_cols:
        lines += ["## Per-axis granulated τ (ψ_i) against the gap", "",
                  "| measure | " + " | ".join(c.removeprefix("psi.hp.") for c in psi_cols) + " |",
                  "|---|" + "---|" * len(psi_cols)]
        for _, r in gap.iterrows():
            lines.append(f"| `{r['measure']}` | " + " | ".join(_fmt(r[c]) for c in psi_cols) + " |")
        lines.append("")
    failed = table[(table.target == "gap_error") & (table.failures.fillna(0) > 0)]
    if len(failed):
        lines += ["## Failures", "", "| measure | failed models | message |", "|---|---|---|"]
        for r in failed.itertuples():
            lines.append(f"| `{r.measure}` | {int(r.failures)} | {str(r.failure_message)[:160]} |")
        lines.append("")
    if len(oracle):
        lines += ["## Oracle analyses (use test data — not measures, never ranked)", "",
                  "| analysis | mean value | mean measured loss gap | correlation with loss gap | models |",
                  "|---|---|---|---|---|"]
        for r in oracle.itertuples():
            lines.append(f"| `{r.measure}` (oracle) | {_fmt(r.mean, 4)} | {_fmt(r.mean_gap_loss, 4)} | "
                         f"{_fmt(r.corr_with_gap_loss)} | {r.n_models} |")
        lines.append("")
    return "\n".join(lines)


def write(table: pd.DataFrame, noise: dict, oracle: pd.DataFrame, out_dir: Path, name: str,
          axes: list[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    table.to_csv(csv, index=False)
    md.write_text(markdown(table, noise, oracle, name, axes))
    return [csv, md]


ORDERS = ("auto", "asc", "desc")
_LOWER_IS_BETTER = ("sign_error", "seconds", "failures", "n_failed")  # column prefixes


def terminal(table: pd.DataFrame, target: str = "gap_error", sort: str = "tau", top: int | None = None,
             order: str = "auto") -> str:
    """A plain-text ranked table for the terminal.

    ``order``: ``auto`` puts the best first (descending τ, Ψ, CMI, ...; ascending sign errors, cost, failures;
    text columns A→Z), ``asc`` or ``desc`` force a direction. Missing values go last.
    """
    if target not in set(table.target):
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(sorted(set(table.target)))}")
    if sort not in table.columns:
        raise ValueError(f"unknown sort column {sort!r}; valid: {', '.join(table.columns)}")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
    if order == "auto":
        ascending = sort.startswith(_LOWER_IS_BETTER) or not pd.api.types.is_numeric_dtype(table[sort])
    else:
        ascending = order == "asc"
    t = table[table.target == target].sort_values(sort, ascending=ascending, na_position="last")
    if top:
        t = t.head(top)
    show = pd.DataFrame({
        "#": range(1, len(t) + 1), "measure": t.measure.values, "family": t.family.values,
        "tau": [_ci(a, b, c) for a, b, c in zip(t.tau, t.tau_lo, t.tau_hi)],
        "psi": [_ci(a, b, c) for a, b, c in zip(t.psi, t.psi_lo, t.psi_hi)],
        "cmi": [_fmt(x) for x in t.cmi], "sign_err": [_fmt(x, 2) for x in t.sign_error_mean],
        "sec/model": [_fmt(x) for x in t.seconds],
        "failed": [_fmt(x) if x == x else "—" for x in t.failures]})
    return show.to_string(index=False)
