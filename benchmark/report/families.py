"""A suite's tasks grouped by architecture family (``benchmark.evaluation.suite.by_family``), in Markdown: how far
the rankings agree within a family and across families, each family's #1, and the measures whose rank moves most
between the MLPs and the conv nets."""
from __future__ import annotations

import math

from benchmark.evaluation.suite import Suite
from benchmark.report.format import fmt, fmt_p

CHANGES = 10  # rows of the rank-change table


def between_text(between: dict) -> str:
    """Agreement within and across the families in two sentences."""
    within, across = between["within_tau"], between["across_tau"]
    out = (f"Over the {between['n_measures']} measures every task ranks, two tasks of one family rank them alike "
           f"at a mean Kendall τ of {fmt(within, 2)}, two tasks of different families at {fmt(across, 2)}.")
    if math.isfinite(between["w_families"]):
        out += (f" Averaging each measure's τ over a family's tasks, the {between['families']} families agree at "
                f"Kendall's W = {fmt(between['w_families'], 3)} ({fmt_p(between['w_families_p'])}).")
    return out


def suite_lines(suite: Suite, top: int = CHANGES) -> list[str]:
    """The suite's "By architecture family" section, led by a blank line; none for a suite stored without it or
    of a single family."""
    fam, between = suite.families, suite.between
    if fam is None or between is None or len(fam) < 2:
        return []
    lines = ["", "## By architecture family", "",
             "| family | tasks | Kendall's W within | mean τ between two of its tasks | #1 by its worst τ over the "
             "family's tasks |", "|---|---|---|---|---|"]
    for r in fam.to_dict("records"):
        leader = f"`{r['leader']}` ({fmt(r['leader_worst_tau'])})" if r["leader"] else "—"
        lines.append(f"| {r['family']} | {r['tasks']} | {fmt(r['w'], 3)} | {fmt(r['mean_pair_tau'], 2)} | "
                     f"{leader} |")
    lines += ["", between_text(between)]
    change = suite.change
    if change is not None and len(change):
        lines += ["", "### The measures whose rank moves most between MLPs and conv nets", "",
                  "Each measure's rank by its mean τ over the MLP tasks and over the conv tasks (every other "
                  "family); a positive change is a measure that ranks higher on conv nets.", "",
                  "| measure | mean τ, MLPs | rank | mean τ, conv nets | rank | change |", "|---|---|---|---|---|---|"]
        for r in change.head(top).to_dict("records"):
            lines.append(f"| `{r['measure']}` | {fmt(r['tau_ref'], 3)} | {int(r['rank_ref'])} | "
                         f"{fmt(r['tau_other'], 3)} | {int(r['rank_other'])} | {int(r['change']):+d} |")
    return lines
