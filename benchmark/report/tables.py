"""The leaderboard as text: the Markdown tables written next to the CSVs, and the terminal view."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.evaluation.board import Board
from benchmark.evaluation.suite import Suite
from benchmark.files import write_text
from benchmark.report import layout
from benchmark.report.families import suite_lines as suite_family_lines
from benchmark.report.format import count, fmt, fmt_ci, seconds_text
from benchmark.report.summary import lead_text, no_added, noise_text, reliability_text, suite_lead
from benchmark.report.targets import board_lines as target_lines
from benchmark.report.targets import suite_lines as suite_target_lines

_LEGEND = ("τ: Kendall τ-b with the target; Ψ: granulated Kendall (mean over axes of τ within cells that differ in "
          "that axis only); both oriented by the measure's declared sign (+1 = predicts as its authors claim), "
          "with bootstrap 95% intervals (the seeds of each configuration resampled, never the configurations "
          "themselves). Tier: a run of consecutive ranks that the paired bootstrap test (the difference of two "
          "measures' τ on the same resamples, Holm-adjusted, α = {alpha}) cannot split from its first member, like "
          "the bars of a critical-difference diagram: tier 1 is #1 and the measures right after it that cannot be "
          "told apart from it; comparing two measures' separate intervals would ignore that their estimates are "
          "correlated. "
          "CMI: conditional mutual information of the signs (Jiang et al.), minimised over conditioning sets of "
          "≤ 2 axes (0 = no information), with its chance level in brackets: the mean over 50 permutations of the "
          "measure across the models (the CSV has the permutation p-value, cmi_p). "
          "Sign error: Dziugaite et al.'s robust sign-error over environments "
          "(pairs of configurations one axis apart with all their seed pairs, each pair weighted (w − ½)₊ by the "
          "chance w that its gap difference is not test-set noise; environments with an effective sample size "
          "below 4 are left out and counted; lower is better). Cost: seconds per model; an intermediate shared "
          "by several measures (a σ search, a Hessian eigen-solve, an SGD continuation) is charged to the first "
          "measure of its family that computes it, and the others show only their own extra time. Seed noise: the "
          "measure's own seed-to-seed standard deviation within configurations over the standard deviation of its "
          "configuration means (0: a property of the hyperparameters; 1 or more: a rerun moves a model as far as "
          "changing its configuration; lower is better). Added: what the measure knows beyond the hyperparameters, "
          "Kendall τ over pairs of seed replicates of the same configuration only (models the hyperparameter "
          "baseline cannot tell apart), the configurations' τ averaged weighted by their pairs, with a bootstrap 95% "
          "interval over configurations; an interval above 0 is information beyond the hyperparameters and seed "
          "noise, and a function of the hyperparameters alone scores exactly 0. Invariant: "
          "the reparametrisations that leave the value unchanged, each tested — P: permuting hidden units, "
          "R: rescaling each hidden ReLU unit's incoming weights and bias by its own c > 0 and its outgoing ones by "
          "1/c, U: the units of the weights and the loss. m-adj.: the bound is reported adjusted for the "
          "training-set size m, as Dziugaite et al.'s code does. Failed: the measure raised or gave no finite "
          "value; n/a: the quantity is undefined for that model (not a failure).")


def legend(alpha: float) -> str:
    """What every column of the ranked tables means; ``alpha``: the level of the paired test (the board's)."""
    return _LEGEND.replace("{alpha}", f"{alpha:g}")


FLAT_SHARE = 0.8  # a column whose most common value (as printed) holds this share of the rows cannot rank
_WORST_CASE = {"sign_error_max": "maximum", "sign_error_p90": "90th percentile"}


def flat_columns(table: pd.DataFrame, columns=tuple(_WORST_CASE), share: float = FLAT_SHARE) -> dict[str, str]:
    """The columns of ``table`` (one target's rows) that cannot separate the measures on this zoo, each with the
    sentence that says so instead: the most common value, to the two decimals printed, holds at least ``share``
    of the rows that have one."""
    out = {}
    if "sign_error_mean" in table and len(table) and table["sign_error_mean"].isna().all():
        below = table.get("sign_error_n_below", pd.Series(dtype=float)).dropna()
        n = f"all {int(below.max())} environments fall" if len(below) else "every environment falls"
        reason = (f"The robust sign error is undefined for every measure on this zoo: {n} below the minimum "
                  f"effective sample size of 4, i.e. no gap difference between two configurations one axis apart "
                  f"is large enough against the test-set noise to count. Its columns are left out.")
        return {c: reason for c in ("sign_error_mean", *columns)}
    for col in columns:
        if col not in table:
            continue
        values = table[col].dropna().round(2)
        if len(values) < 2:
            continue
        top, k = values.value_counts().index[0], int(values.value_counts().iloc[0])
        if k < share * len(values):
            continue
        what = _WORST_CASE.get(col)
        if what:
            envs = table.get("sign_error_n_envs", pd.Series(dtype=float)).dropna()
            where = (f"{int(envs.min())}–{int(envs.max())}" if len(envs) and envs.min() != envs.max()
                     else (f"{int(envs.iloc[0])}" if len(envs) else "the"))
            out[col] = (f"The sign error's {what} is not shown: it is {fmt(top)} for {k} of the {len(values)} "
                        f"measures, so it cannot separate them. It is a worst case over {where} usable environments, "
                        f"and with that many nearly every measure orders some environment's pairs the wrong way; "
                        f"the CSV keeps it.")
        else:
            out[col] = f"`{col}` is not shown: it is {fmt(top)} for {k} of the {len(values)} measures."
    return out


def tier_text(tier) -> str:
    """A tier number as printed ("—" when untested: no seed replicates)."""
    return str(int(tier)) if isinstance(tier, (int, float, np.integer, np.floating)) and math.isfinite(tier) else "—"


def added_cell(r) -> str:
    """A row's within-configuration τ with its interval (``added_tau``, ``added_lo``, ``added_hi``), or "—"."""
    nan = float("nan")
    tau = getattr(r, "added_tau", nan)
    if tau is None or not math.isfinite(float(tau)):
        return "—"
    return fmt_ci(tau, getattr(r, "added_lo", nan), getattr(r, "added_hi", nan), 2, point_digits=3)


def added_note(table: pd.DataFrame) -> str:
    """The sentence under a table whose ``added`` column is empty, saying why; "" when it has values."""
    if not no_added(table):
        return ""
    if "added_configs" in table:
        return ("The added column is empty: no configuration has two converged seeds, so no two models share their "
                "hyperparameters and what a measure adds beyond them cannot be measured on this zoo.")
    return "The added column is empty: this board was evaluated before it existed."


def baselines_markdown(baselines: pd.DataFrame | None) -> list[str]:
    """The baselines' table (never ranked): τ, Ψ, the sign error and the within-configuration τ per target."""
    if baselines is None or baselines.empty:
        return []
    lines = ["## Baselines (never ranked)", "",
             "What chance, one axis's direction, the hyperparameters together and a noisy copy of the real test "
             "error score on the same statistics: a measure is informative to the extent it beats the random "
             "baseline and the single axes, the noisy oracle shows how far seed noise lets any measure go, and "
             "`baseline.hparams` is a gradient-boosting regressor of all the hyperparameters, fitted with whole "
             "configurations held out and scored against the target it predicts, which a measure that says "
             "nothing beyond the configuration cannot beat. Its added τ is 0 by construction: it ties the seeds of "
             "a configuration.", "",
             "| target | baseline | τ [95% CI] | Ψ [95% CI] | sign err. mean | added τ [95% CI] |",
             "|---|---|---|---|---|---|"]
    for r in baselines.itertuples():
        lines.append(f"| {r.target} | `{r.measure}` | {fmt_ci(r.tau, r.tau_lo, r.tau_hi, 2, point_digits=3)} | "
                     f"{fmt_ci(r.psi, r.psi_lo, r.psi_hi, 2, point_digits=3)} | {fmt(r.sign_error_mean, 2)} | "
                     f"{added_cell(r)} |")
    return lines + [""]


EARLY_TEXT = ("τ against the final generalization gap of each measure computed on the weights kept at about 25 %, "
              "50 % and 75 % of each model's epochs (the kept epoch nearest the fraction; their mean real fraction "
              "heads each column), beside the same measure on the final weights; 95 % seed-bootstrap intervals. "
              "A measure undefined part-way (a margin-normalised one while >10 % of the training set is still "
              "misclassified) has fewer models.")


def early_columns(early: pd.DataFrame) -> list[tuple[float, str]]:
    """(fraction, heading) of the early table's columns: the requested fraction, with the mean real one."""
    out = []
    for f, g in early.groupby("fraction"):
        real = g.epoch_fraction.mean()
        out.append((f, "final" if f >= 1 else f"{100 * f:.0f} % ({100 * real:.0f} %)"))
    return out


def early_markdown(early: pd.DataFrame | None) -> list[str]:
    """The early-prediction table as Markdown lines (none when there is no table)."""
    if early is None or early.empty:
        return []
    cols = early_columns(early)
    lines = ["## Early prediction: the measure part-way through training against the final gap", "", EARLY_TEXT, "",
             "| measure | " + " | ".join(h for _, h in cols) + " | models |", "|---|" + "---|" * (len(cols) + 1)]
    for name, g in early.groupby("measure", sort=False):
        cell = {r.fraction: fmt_ci(r.tau, r.tau_lo, r.tau_hi, 2) if math.isfinite(r.tau) else "—"
                for r in g.itertuples()}
        models = "/".join(str(int(r.n_models)) for r in g.itertuples())
        lines.append(f"| `{name}` | " + " | ".join(cell.get(f, "—") for f, _ in cols) + f" | {models} |")
    return lines + [""]


def markdown(board: Board) -> str:
    """The leaderboard as Markdown: the noise floor and reliability, one ranked table per target, the baselines,
    early prediction, a per-axis breakdown, oracle analyses."""
    table, axes, oracle = board.table, board.axes, board.oracle
    lines = [f"# Leaderboard: {board.name}", ""]
    lead = lead_text(table, board.baselines)
    lines += [lead, ""] if lead else []
    lines += [noise_text(board.noise), ""]
    rel = reliability_text(board.reliability)
    lines += [rel, ""] if rel else []
    lines += [legend(board.alpha), ""]
    for target, t in table.groupby("target", sort=False):
        t = t.sort_values("tau", ascending=False)
        flat = flat_columns(t)
        show_mean, show_max = "sign_error_mean" not in flat, "sign_error_max" not in flat
        sign_head = "sign err. mean / max | " if show_max else ("sign err. mean | " if show_mean else "")
        lines += [f"## Predicting `{target}`", "",
                  "| # | tier | measure | family | τ [95% CI] | Ψ [95% CI] | CMI (chance) | " + sign_head
                  + "cost per model | seed noise | added τ [95% CI] | invariant | m-adj. | failed | n/a |",
                  "|---|---|---|---|---|---|---|" + "---|" * (7 + bool(sign_head)) + ""]
        for rank, r in enumerate(t.itertuples(), 1):
            tau = fmt_ci(r.tau, r.tau_lo, r.tau_hi, 2, point_digits=3)
            chance = getattr(r, "cmi_null", None)
            same = getattr(r, "identical", "")
            same = f" (= {', '.join(f'`{m}`' for m in same.split(', '))})" if isinstance(same, str) and same else ""
            psi = fmt_ci(r.psi, r.psi_lo, r.psi_hi, 2, point_digits=3)
            sign = fmt(r.sign_error_mean, 2) + (f" / {fmt(r.sign_error_max, 2)}" if show_max else "")
            sign = f"{sign} | " if show_mean else ""
            lines.append(f"| {rank} | {tier_text(getattr(r, 'tier', None))} | `{r.measure}`{same} | {r.family} | "
                         f"{tau} | {psi} | {fmt(r.cmi, 3)} ({fmt(chance, 3)}) | {sign}{seconds_text(r.seconds)} | "
                         f"{fmt(getattr(r, 'seed_noise', float('nan')), 2)} | {added_cell(r)} | "
                         f"{_text(getattr(r, 'invariances', ''))} | "
                         f"{_text(getattr(r, 'sample_size', ''))} | "
                         f"{count(r.failures)} | {count(getattr(r, 'not_applicable', float('nan')))} |")
        lines.append("")
        if flat:
            lines += [flat.get("sign_error_mean", flat.get("sign_error_max", "")), ""]
        note = added_note(t)
        lines += [note, ""] if note else []
    lines += baselines_markdown(board.baselines)
    lines += target_lines(board)
    lines += early_markdown(board.early)
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


def write(files: layout.BoardFiles, board: Board) -> list[Path]:
    """The leaderboard's tables: results CSV, Markdown, the zoo DataFrame, the oracle analyses, the baselines,
    the reliability summary, the early-prediction table (an older one is removed when there is none) and the
    board's typed form (``files.typed``), which the page and the suite view read back."""
    files.folder.mkdir(parents=True, exist_ok=True)
    paths = [write_text(files.results, board.table.to_csv(index=False)),
             write_text(files.markdown, markdown(board)),
             write_text(files.zoo, board.zoo.to_csv(index=False)),
             write_text(files.oracle, board.oracle.to_csv(index=False)),
             write_text(files.baselines, board.baselines.to_csv(index=False)),
             write_text(files.summary, json.dumps({"reliability": board.reliability}, indent=1, allow_nan=True))]
    if board.early is not None and not board.early.empty:
        paths.append(write_text(files.early, board.early.to_csv(index=False)))
    else:
        files.early.unlink(missing_ok=True)
    return [*paths, board.save(files.typed)]


ORDERS = ("auto", "asc", "desc")
_LOWER_IS_BETTER = ("sign_error", "seconds", "seed_noise", "failures", "n_failed", "not_applicable")  # column prefixes


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
        "tier": [tier_text(x) for x in t.get("tier", pd.Series([None] * len(t)))],
        "measure": [m + (f" (= {same})" if isinstance(same, str) and same else "")
                    for m, same in zip(t.measure, t.get("identical", pd.Series([""] * len(t))))],
        "family": t.family.values,
        "tau": [fmt_ci(a, b, c, 2, point_digits=3) for a, b, c in zip(t.tau, t.tau_lo, t.tau_hi)],
        "psi": [fmt_ci(a, b, c, 2, point_digits=3) for a, b, c in zip(t.psi, t.psi_lo, t.psi_hi)],
        "cmi": [fmt(x, 3) for x in t.cmi], "sign_err": [fmt(x, 2) for x in t.sign_error_mean],
        "sec/model": [fmt(x, 3) for x in t.seconds],
        "seed_noise": [fmt(x, 2) for x in t.get("seed_noise", pd.Series([float("nan")] * len(t)))],
        "added": [added_cell(r) for r in t.itertuples()],
        "invariant": [_text(x) for x in t.get("invariances", pd.Series([""] * len(t)))],
        "failed": [count(x) for x in t.failures],
        "n/a": [count(x) for x in t.get("not_applicable", pd.Series([float("nan")] * len(t)))]})
    undefined = flat_columns(table[table.target == target]).get("sign_error_mean")  # the only one shown here
    if undefined:
        return f"{show.drop(columns='sign_err').to_string(index=False)}\n\n{undefined}"
    return show.to_string(index=False)


def suite_markdown(suite: Suite, top: int | None = None) -> str:
    """A suite's cross-task summary: the tasks, the agreement of their rankings (``summary.suite_lead``), and every
    measure's τ per task ranked by its worst task."""
    names, cross = list(suite.tasks), suite.cross
    lines = [f"# Suite: {suite.name}", "", *suite_lead(suite.name, suite.agreement, suite.tasks,
                                                        "## Do the tasks agree?")]
    lines += suite_family_lines(suite)
    lines += suite_target_lines(suite.targets, suite.target_cross, top)
    lines += ["", "## Every measure on every task (predicting `gap_error`)", "",
              "τ per task with its tier on that task in brackets (tier 1: cannot be told apart from that task's "
              "#1 by the paired test); worst: the smallest τ over the tasks, with the lower end of its 95% "
              "interval.", "",
              "| # | measure | family | worst τ (lower CI) | worst task | mean τ | mean rank | "
              + " | ".join(names) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(names)]
    rows = cross.head(top) if top else cross
    for rank, r in enumerate(rows.to_dict("records"), 1):
        cells = []
        for t in names:
            tier = r.get(f"tier.{t}")
            tier = f" ({int(tier)})" if isinstance(tier, (int, float)) and math.isfinite(tier) else ""
            cells.append(f"{fmt(r[f'tau.{t}'], 3)}{tier}")
        same = r.get("identical")
        same = f" (= {', '.join(f'`{m}`' for m in same.split(', '))})" if isinstance(same, str) and same else ""
        lines.append(f"| {rank} | `{r['measure']}`{same} | {_text(r['family'])} | {fmt(r['worst_tau'], 3)} "
                     f"({fmt(r['worst_tau_lo'], 2)}) | {_text(r['worst_task'])} | {fmt(r['mean_tau'], 3)} | "
                     f"{fmt(r['mean_rank'], 1)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def suite_terminal(cross: pd.DataFrame, tasks: list[str], top: int | None = None) -> str:
    """The cross-task table for the terminal: worst τ, its task, the mean and τ per task."""
    t = cross.head(top) if top else cross
    names = [m + (f" (= {same})" if isinstance(same, str) and same else "")
             for m, same in zip(t.measure, t.get("identical", pd.Series([""] * len(t))))]
    show = pd.DataFrame({"#": range(1, len(t) + 1), "measure": names, "family": t.family.values,
                         "worst_tau": [fmt(x, 3) for x in t.worst_tau], "worst_task": t.worst_task.values,
                         "mean_tau": [fmt(x, 3) for x in t.mean_tau],
                         **{task: [fmt(x, 3) for x in t[f"tau.{task}"]] for task in tasks}})
    return show.to_string(index=False)
