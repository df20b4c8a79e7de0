"""The leaderboard as text: the Markdown tables written next to the CSVs, and the terminal view."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.files import write_text
from benchmark.report import layout
from benchmark.report.format import count, fmt, fmt_ci

LEGEND = ("τ: Kendall τ-b with the target; Ψ: granulated Kendall (mean over axes of τ within cells that differ in "
          "that axis only); both oriented by the measure's declared sign (+1 = predicts as its authors claim), "
          "with bootstrap 95% intervals (the seeds of each configuration resampled, never the configurations "
          "themselves). ≈#1: = where the paired bootstrap test against #1 (the difference of the two τ on the "
          "same resamples, Holm-adjusted over all measures, α = 0.05) cannot tell the measure apart from #1; "
          "comparing two measures' separate intervals would ignore that their estimates are correlated. "
          "CMI: conditional mutual information of the signs (Jiang et al.), minimised over conditioning sets of "
          "≤ 2 axes (0 = no information), with its chance level in brackets: the mean over 50 permutations of the "
          "measure across the models (the CSV has the permutation p-value, cmi_p). "
          "Sign error: Dziugaite et al.'s robust sign-error over environments "
          "(pairs of configurations one axis apart with all their seed pairs, each pair weighted (w − ½)₊ by the "
          "chance w that its gap difference is not test-set noise; environments with an effective sample size "
          "below 4 are left out and counted; lower is better). Cost: seconds per model; an intermediate shared "
          "by several measures (a σ search, a Hessian eigen-solve, an SGD continuation) is charged to the first "
          "measure of its family that computes it, and the others show only their own extra time. Invariant: "
          "the reparametrisations that leave the value unchanged, each tested — P: permuting hidden units, "
          "R: rescaling each hidden ReLU unit's incoming weights and bias by its own c > 0 and its outgoing ones by "
          "1/c, U: the units of the weights and the loss. m-adj.: the bound is reported adjusted for the "
          "training-set size m, as Dziugaite et al.'s code does. Failed: the measure raised or gave no finite "
          "value; n/a: the quantity is undefined for that model (not a failure).")


def tied_value(tied) -> bool | None:
    """``tied_with_best`` as read back from a table (a bool, "True"/"False", or missing): None when untested."""
    if isinstance(tied, str):
        return tied.lower() == "true"
    if isinstance(tied, (bool, np.bool_)):
        return bool(tied)
    return None


def tied_mark(tied) -> str:
    """"=" for a measure the paired test cannot tell apart from #1 (``tied_with_best``), "" otherwise or
    when untested (no seed replicates)."""
    return "=" if tied_value(tied) else ""


def noise_text(noise: dict) -> str:
    """The gap-vs-noise statement: how many models, and how far the gaps spread beyond test-set noise and
    beyond the seed noise measured from the replicates."""
    text = (f"{noise['n_converged']} converged models of {noise['n_models']} "
            f"({noise['n_models'] - noise['n_converged']} unconverged, excluded). "
            f"Generalization gap (test − train error) from {fmt(noise['gap_min'], 3)} to {fmt(noise['gap_max'], 3)}: "
            f"spread {fmt(noise['gap_spread'], 3)} = {fmt(noise['spread_over_se'], 1)}× the binomial standard error "
            f"of one model's test error ({fmt(noise['test_error_se'], 4)}).")
    sd = noise.get("gap_sd_seed", float("nan"))
    if sd is not None and math.isfinite(sd):
        text += (f" Noise floor measured from the seed replicates: the gap's seed-to-seed standard deviation within a "
                 f"configuration is {fmt(sd, 4)} (test error {fmt(noise.get('test_error_sd_seed'), 4)}); the "
                 f"configurations' mean gaps spread with a standard deviation of {fmt(noise.get('gap_sd_config'), 4)}, "
                 f"{fmt(noise.get('gap_config_over_seed'), 1)}× the seed noise.")
    else:
        text += " One seed per configuration: the seed noise cannot be measured on this zoo."
    return text


def reliability_text(rel: dict | None, target: str = "gap_error") -> str:
    """The split-half reliability sentence (``leaderboard.reliability``), or "" when not computed."""
    r = (rel or {}).get(target)
    if not r:
        return ""
    if not math.isfinite(r.get("rho", float("nan"))):
        return ("**Reliability:** the split-half reliability of the ranking is undefined here (no configuration has "
                "two seeds).")
    return (f"**Reliability:** ranked on two disjoint halves of the seeds ({r['seeds_per_half']} per configuration "
            f"each, {r['splits']} random splits), the measures' τ against `{target}` agree with Spearman ρ = "
            f"{fmt(r['rho'])} (from {fmt(r['rho_min'])} to {fmt(r['rho_max'])}); the whole zoo, with all seeds, "
            f"ranks more reliably than one half.")


def baselines_markdown(baselines: pd.DataFrame | None) -> list[str]:
    """The baselines' table (never ranked): τ, Ψ and the sign error per target."""
    if baselines is None or baselines.empty:
        return []
    lines = ["## Baselines (never ranked)", "",
             "What chance, one axis's direction and a noisy copy of the real test error score on the same "
             "statistics: a measure is informative to the extent it beats the random baseline and the single axes, "
             "and the noisy oracle shows how far seed noise lets any measure go.", "",
             "| target | baseline | τ [95% CI] | Ψ [95% CI] | sign err. mean |", "|---|---|---|---|---|"]
    for r in baselines.itertuples():
        lines.append(f"| {r.target} | `{r.measure}` | {fmt_ci(r.tau, r.tau_lo, r.tau_hi, 2, point_digits=3)} | "
                     f"{fmt_ci(r.psi, r.psi_lo, r.psi_hi, 2, point_digits=3)} | {fmt(r.sign_error_mean, 2)} |")
    return lines + [""]


def markdown(table: pd.DataFrame, noise: dict, oracle: pd.DataFrame, title: str, axes: list[str],
             baselines: pd.DataFrame | None = None, reliability: dict | None = None) -> str:
    """The leaderboard as Markdown: the noise floor and reliability, one ranked table per target, the baselines,
    a per-axis breakdown, oracle analyses."""
    lines = [f"# Leaderboard: {title}", "", noise_text(noise), ""]
    rel = reliability_text(reliability)
    lines += [rel, ""] if rel else []
    lines += [LEGEND, ""]
    for target, t in table.groupby("target", sort=False):
        t = t.sort_values("tau", ascending=False)
        lines += [f"## Predicting `{target}`", "",
                  "| # | ≈#1 | measure | family | τ [95% CI] | Ψ [95% CI] | CMI (chance) | sign err. mean / max "
                  "| cost s | invariant | m-adj. | failed | n/a |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rank, r in enumerate(t.itertuples(), 1):
            tau = fmt_ci(r.tau, r.tau_lo, r.tau_hi, 2, point_digits=3)
            tied = tied_mark(getattr(r, "tied_with_best", None))
            chance = getattr(r, "cmi_null", None)
            same = getattr(r, "identical", "")
            same = f" (= {', '.join(f'`{m}`' for m in same.split(', '))})" if isinstance(same, str) and same else ""
            psi = fmt_ci(r.psi, r.psi_lo, r.psi_hi, 2, point_digits=3)
            lines.append(f"| {rank} | {tied} | `{r.measure}`{same} | {r.family} | {tau} | "
                         f"{psi} | {fmt(r.cmi, 3)} ({fmt(chance, 3)}) | "
                         f"{fmt(r.sign_error_mean, 2)} / {fmt(r.sign_error_max, 2)} | {fmt(r.seconds, 3)} | "
                         f"{_text(getattr(r, 'invariances', ''))} | {_text(getattr(r, 'sample_size', ''))} | "
                         f"{count(r.failures)} | {count(getattr(r, 'not_applicable', float('nan')))} |")
        lines.append("")
    lines += baselines_markdown(baselines)
    gap = table[table.target == "gap_error"].sort_values("tau", ascending=False)
    psi_cols = [f"psi.{a}" for a in axes if f"psi.{a}" in table]
    if psi_cols:
        lines += ["## Per-axis granulated τ (ψ_i) against the gap", "",
                  "| measure | " + " | ".join(c.removeprefix("psi.hp.") for c in psi_cols) + " |",
                  "|---|" + "---|" * len(psi_cols)]
        for _, r in gap.iterrows():
            lines.append(f"| `{r['measure']}` | " + " | ".join(fmt(r[c], 3) for c in psi_cols) + " |")
        lines.append("")
    for column, message, title, what in (("failures", "failure_message", "Failures", "failed models"),
                                         ("not_applicable", "not_applicable_reason", "Not applicable", "models")):
        if column not in table:
            continue
        rows = table[(table.target == "gap_error") & (table[column].fillna(0) > 0)]
        if len(rows):
            lines += [f"## {title}", "", f"| measure | {what} | {'message' if column == 'failures' else 'reason'} |",
                      "|---|---|---|"]
            for r in rows.itertuples():
                lines.append(f"| `{r.measure}` | {int(getattr(r, column))} | {str(getattr(r, message))[:160]} |")
            lines.append("")
    if len(oracle):
        lines += ["## Oracle analyses (use test data — not measures, never ranked)", "",
                  "| analysis | mean value | mean measured loss gap | correlation with loss gap | models |",
                  "|---|---|---|---|---|"]
        for r in oracle.itertuples():
            lines.append(f"| `{r.measure}` (oracle) | {fmt(r.mean, 4)} | {fmt(r.mean_gap_loss, 4)} | "
                         f"{fmt(r.corr_with_gap_loss, 3)} | {r.n_models} |")
        lines.append("")
    return "\n".join(lines)


def _text(x) -> str:
    return x if isinstance(x, str) and x else "—"


def write(board: layout.BoardFiles, table: pd.DataFrame, zoo: pd.DataFrame, noise: dict, oracle: pd.DataFrame,
          axes: list[str], baselines: pd.DataFrame | None = None, reliability: dict | None = None) -> list[Path]:
    """The leaderboard's tables: results CSV, Markdown, the zoo DataFrame, the oracle analyses, the baselines and
    the reliability summary."""
    board.folder.mkdir(parents=True, exist_ok=True)
    paths = [write_text(board.results, table.to_csv(index=False)),
             write_text(board.markdown, markdown(table, noise, oracle, board.name, axes, baselines, reliability)),
             write_text(board.zoo, zoo.to_csv(index=False)), write_text(board.oracle, oracle.to_csv(index=False))]
    if baselines is not None:
        paths.append(write_text(board.baselines, baselines.to_csv(index=False)))
    if reliability is not None:
        paths.append(write_text(board.summary, json.dumps({"reliability": reliability}, indent=1, allow_nan=True)))
    return paths


ORDERS = ("auto", "asc", "desc")
_LOWER_IS_BETTER = ("sign_error", "seconds", "failures", "n_failed", "not_applicable")  # column prefixes


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
        "#": range(1, len(t) + 1),
        "~#1": [tied_mark(x) or "·" for x in t.get("tied_with_best", pd.Series([None] * len(t)))],
        "measure": [m + (f" (= {same})" if isinstance(same, str) and same else "")
                    for m, same in zip(t.measure, t.get("identical", pd.Series([""] * len(t))))],
        "family": t.family.values,
        "tau": [fmt_ci(a, b, c, 2, point_digits=3) for a, b, c in zip(t.tau, t.tau_lo, t.tau_hi)],
        "psi": [fmt_ci(a, b, c, 2, point_digits=3) for a, b, c in zip(t.psi, t.psi_lo, t.psi_hi)],
        "cmi": [fmt(x, 3) for x in t.cmi], "sign_err": [fmt(x, 2) for x in t.sign_error_mean],
        "sec/model": [fmt(x, 3) for x in t.seconds],
        "invariant": [_text(x) for x in t.get("invariances", pd.Series([""] * len(t)))],
        "failed": [count(x) for x in t.failures],
        "n/a": [count(x) for x in t.get("not_applicable", pd.Series([float("nan")] * len(t)))]})
    return show.to_string(index=False)
