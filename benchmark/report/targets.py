"""The cross-target view in Markdown (``benchmark.evaluation.targets``): on a board, how far the ranking for the
i.i.d. gap agrees with the ranking for the gap on shifted test sets, and each measure's worst target; on a suite,
the same per task and each measure's worst case over every task and target."""
from __future__ import annotations

import pandas as pd

from benchmark.evaluation import targets
from benchmark.evaluation.board import Board
from benchmark.report.format import fmt


def agreement_sentence(row: dict) -> str:
    """One board's agreement of two targets' rankings (``targets.agreement``) in a sentence."""
    a, b = row["target_a"], row["target_b"]
    return (f"Over {int(row['n_measures'])} measures the ranking for `{b}` agrees with the ranking for `{a}` at "
            f"Kendall τ = {fmt(row['kendall_tau'], 2)} (Spearman ρ = {fmt(row['spearman'], 2)}). #1 for `{a}`: "
            f"`{row['top_a']}` (τ = {fmt(row['tau_top_a'])}); #1 for `{b}`: `{row['top_b']}` "
            f"(τ = {fmt(row['tau_top_b'])}).")


def board_lines(board: Board) -> list[str]:
    """The board's "Across targets" section; none when the board ranks against fewer than two targets."""
    table = board.table
    shown = list(dict.fromkeys(table["target"]))
    if len(shown) < 2:
        return []
    lines = ["## Across targets", ""]
    agree = targets.agreement(table)
    if agree is not None:
        lines += [agreement_sentence(agree), ""]
    worst = targets.worst_targets({board.name: table}, shown)
    lines += ["Each measure's τ for every target, ranked by its worst (smallest) τ: a measure that predicts one "
              "target and not another is found out by its worst case.", "",
              "| # | measure | family | worst τ | worst target | " + " | ".join(f"`{t}`" for t in shown) + " |",
              "|---|---|---|---|---|" + "---|" * len(shown)]
    for rank, r in enumerate(worst.to_dict("records"), 1):
        lines.append(f"| {rank} | `{r['measure']}` | {r['family']} | {fmt(r['worst_tau'], 3)} | "
                     f"{r['worst_target'] or '—'} | " + " | ".join(fmt(r[f'tau.{t}'], 3) for t in shown) + " |")
    return lines + [""]


def suite_lines(agree: pd.DataFrame | None, cross: pd.DataFrame | None, top: int | None = None) -> list[str]:
    """The suite's "Do the targets agree?" section, led by a blank line: the i.i.d. and shift rankings' agreement
    per task, and every measure's worst τ over the tasks and their targets; none without a shift target."""
    if agree is None or cross is None or agree.empty:
        return []
    lines = ["", "## Do the targets agree?", "",
             "| task | measures | Kendall τ | Spearman ρ | #1 for the i.i.d. gap | #1 for the shift gap |",
             "|---|---|---|---|---|---|"]
    for r in agree.to_dict("records"):
        lines.append(f"| {r['task']} | {int(r['n_measures'])} | {fmt(r['kendall_tau'], 2)} | "
                     f"{fmt(r['spearman'], 2)} | `{r['top_a']}` ({fmt(r['tau_top_a'])}) | "
                     f"`{r['top_b']}` ({fmt(r['tau_top_b'])}) |")
    finite = agree["kendall_tau"].astype(float)
    finite = finite[finite.notna()]
    if len(finite):
        lines += ["", f"Mean agreement over the tasks: Kendall τ = {fmt(finite.mean(), 2)} (from "
                      f"{fmt(finite.min(), 2)} to {fmt(finite.max(), 2)})."]
    rows = cross.head(top) if top else cross
    lines += ["", "### Every measure's worst case over tasks and targets", "",
              "| # | measure | family | worst τ | worst target | worst task | mean τ |",
              "|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(rows.to_dict("records"), 1):
        lines.append(f"| {rank} | `{r['measure']}` | {r['family']} | {fmt(r['worst_tau'], 3)} | "
                     f"{r['worst_target'] or '—'} | {r.get('worst_task') or '—'} | {fmt(r['mean_tau'], 3)} |")
    return lines
