"""The leading summary of a leaderboard and of a suite, in one place for every output.

* :func:`lead_text`: the opening paragraph of the Markdown table (#1, the group tied with it, the baselines, and
  what the measures add beyond the hyperparameters, :func:`beyond_text`).
* :func:`summary`: the generated summary of the page and the README (which measure predicts the gap best, along
  which hyperparameter it fails, how sure we are).
* :func:`noise_text` and :func:`reliability_text`: the gap-vs-noise and reliability sentences both print.
* :func:`suite_lead`: a suite's tasks and the agreement of their rankings, for its Markdown and the README, and
  :func:`agreement_text`, the sentence the page opens a suite with.

Every fact comes from a :class:`benchmark.evaluation.board.Board` (or a suite) in memory: the level α of the
paired test and the gap noise are the board's.
"""
from __future__ import annotations

import math
import statistics

import pandas as pd

from benchmark.evaluation.board import GAP, Board
from benchmark.evaluation.leaderboard import HPARAMS, adds_information, cheapest_tied, tied_value
from benchmark.report.format import fmt, fmt_ci, fmt_p, ranked, seconds_text, short


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
        se = noise["test_error_se"]
        if math.isfinite(se) and sd > 0:
            text += (f" The binomial standard error is {fmt(se / sd, 2)}× the gap's seed-to-seed deviation: "
                     + ("the test set is large enough to see seed-level differences (at most ½×)." if se <= sd / 2
                        else "by the rule that it be at most ½×, the test set is too small to see seed-level "
                             "differences."))
    else:
        text += " One seed per configuration: the seed noise cannot be measured on this zoo."
    return text


def reliability_text(rel: dict | None, target: str = GAP) -> str:
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


def baseline_facts(baselines: pd.DataFrame | None, target: str, taus) -> dict | None:
    """What the baselines (never ranked) score on ``target``: the noisy oracle's, the best single axis's (its name
    and τ, and how many of the ranked measures' ``taus`` beat it) and the random baseline's τ, each None when that
    baseline is absent; None without baselines for ``target``."""
    if baselines is None or baselines.empty or "tau" not in baselines:
        return None
    b = baselines[baselines.target == target].set_index("measure")
    if b.empty:
        return None
    axes = b[b.index.str.startswith("baseline.axis.")]
    tau = lambda name: b.at[name, "tau"] if name in b.index else None
    best_axis = None
    if len(axes):
        best_axis = (axes.tau.idxmax().removeprefix("baseline.axis."), axes.tau.max(),
                     sum(t > axes.tau.max() for t in taus))
    return {"noisy_oracle": tau("baseline.noisy_oracle"), "axis": best_axis, "random": tau("baseline.random"),
            "hparams": tau(HPARAMS)}


def no_added(table: pd.DataFrame) -> bool:
    """Whether no measure has a within-configuration τ (no configuration with two seeds, or a board evaluated before
    the column existed)."""
    return "added_tau" not in table or pd.to_numeric(table["added_tau"], errors="coerce").isna().all()


def beyond_text(table: pd.DataFrame, baselines: pd.DataFrame | None, target: str = GAP) -> str:
    """What the hyperparameters alone predict of ``target`` against #1, and how many ranked measures know more: the
    hyperparameter baseline's τ beside the best measure's, and the number of measures whose within-configuration τ
    interval (``added_lo``) lies above 0; "" when neither is known."""
    t = table[(table.target == target) & table.tau.notna()]
    if t.empty:
        return ""
    best = t.loc[t.tau.idxmax()]
    facts = baseline_facts(baselines, target, t.tau) if baselines is not None and len(baselines) else None
    hparams = None if facts is None else facts["hparams"]
    parts = []
    if hparams is not None and math.isfinite(float(hparams)):
        parts.append(f"the hyperparameters alone (gradient boosting on every hyperparameter, whole configurations held "
                     f"out) predict `{target}` with τ = {fmt(hparams)}, against {fmt(best.tau)} for #1 "
                     f"(`{best.measure}`)")
    if no_added(t):
        if "added_tau" in t:
            parts.append("no configuration has two converged seeds, so what a measure adds beyond them cannot be "
                         "measured here")
    else:
        adds = adds_information(t, target)
        named = ", ".join(f"`{m}`" for m in adds.sort_values("added_tau", ascending=False).measure[:3])
        parts.append(f"{len(adds)} of the {len(t)} measures order the seeds of one configuration as the target does "
                     f"beyond seed noise (within-configuration τ interval above 0)"
                     + (f", led by {named}" if len(adds) else ""))
    return ("**Beyond the hyperparameters:** " + "; ".join(parts) + ".") if parts else ""


def lead_text(table: pd.DataFrame, baselines: pd.DataFrame | None, target: str = GAP) -> str:
    """What a reader of the Markdown needs first: #1 on ``target``, the measures the paired test cannot tell apart
    from it (``tied_with_best``) and what the baselines score."""
    t = table[(table.target == target) & table.tau.notna()].sort_values("tau", ascending=False)
    if t.empty:
        return ""
    best = t.iloc[0]
    tested = t["tied_with_best"].map(tied_value) if "tied_with_best" in t else pd.Series(None, index=t.index)
    group = t[tested == True]  # noqa: E712  (None: untested)
    if len(group):
        names = ", ".join(f"`{m}`" for m in group.measure)
        text = (f"**#1 predicting `{target}`:** `{best.measure}`, τ = {fmt(best.tau)} [{fmt(best.tau_lo)}, "
                f"{fmt(best.tau_hi)}]. " + (f"The paired test cannot tell {len(group) - 1} other measure"
                                            f"{'s' if len(group) > 2 else ''} apart from it ({names})."
                                            if len(group) > 1 else "The paired test separates it from every other "
                                            "measure."))
    else:
        text = (f"**#1 predicting `{target}`:** `{best.measure}`, τ = {fmt(best.tau)}; without seed replicates no "
                f"paired test can say whether it leads beyond noise.")
    cheap = cheapest_tied(table, target)
    if cheap is not None and len(group) > 1:
        text += (f" **Cheapest tied with #1:** `{cheap.measure}`, {seconds_text(cheap.seconds)} per model"
                 + (" (#1 itself)." if cheap.measure == best.measure else
                    f" against {seconds_text(best.seconds)} for #1 (an intermediate two measures share is charged "
                    f"to the first that computes it)."))
    facts = baseline_facts(baselines, target, t.tau) if baselines is not None and len(baselines) else None
    if facts:
        parts = []
        if facts["noisy_oracle"] is not None:
            parts.append(f"the noisy oracle τ = {fmt(facts['noisy_oracle'])}")
        if facts["axis"] is not None:
            axis, tau, beat = facts["axis"]
            parts.append(f"the best single axis (`{axis}`) τ = {fmt(tau)}, beaten by {int(beat)} of the {len(t)} "
                         f"measures")
        if facts["random"] is not None:
            parts.append(f"random τ = {fmt(facts['random'])}")
        if parts:
            text += " **Baselines:** " + "; ".join(parts) + "."
    beyond = beyond_text(table, baselines, target)
    return f"{text} {beyond}" if beyond else text


def _baselines_text(board: Board, target: str, rows: list[dict]) -> str:
    """How the ranked measures compare with the baselines (never ranked) on τ."""
    facts = baseline_facts(board.baselines, target, [r["tau"] for r in rows])
    if facts is None:
        return ""
    parts = []
    if facts["noisy_oracle"] is not None:
        parts.append(f"the noisy oracle (the test error plus one rerun's seed noise) τ = {fmt(facts['noisy_oracle'])}")
    if facts["axis"] is not None:
        parts.append(f"the best single axis (`{facts['axis'][0]}`) τ = {fmt(facts['axis'][1])}")
    if facts["random"] is not None:
        parts.append(f"random τ = {fmt(facts['random'])}")
    text = "**Baselines:** " + ", ".join(parts) + "."
    if facts["axis"] is not None:
        text += f" {facts['axis'][2]} of the {len(rows)} measures beat the best single axis."
    return text


def _interval(r) -> str:
    return f"τ = {fmt_ci(r['tau'], r['tau_lo'], r['tau_hi'])}"


def _tied(r) -> bool | None:
    return tied_value(r.get("tied_with_best"))


def _versus(r) -> str:
    return (f"τ − τ_best = {fmt_ci(r.get('tau_vs_best'), r.get('tau_vs_best_lo'), r.get('tau_vs_best_hi'))}, "
            f"Holm-adjusted p = {fmt(r.get('tau_vs_best_p_holm'), 3)}")


def summary(board: Board, target: str = GAP) -> str:
    """Generated sentences (Markdown) for the page and the README: the best measure by τ with its interval and the
    group of measures the paired test cannot tell apart from it; the axis with its lowest ψ_i; and where the
    uncertainty is widest (intervals, gap vs. noise)."""
    if target not in set(board.table.target):
        target = board.shown_targets[0] if board.shown_targets else target
    rows = ranked(board.table, target)
    rows = rows[rows.tau.notna()].to_dict("records")
    noise = board.noise
    if not rows:
        return (f"No measure has a defined τ against `{target}` here (too few converged models, or every measure "
                f"failed); {noise['n_converged']} of {noise['n_models']} models converged.")
    best = rows[0]
    out = [f"**Best predictor of `{target}`:** `{best['measure']}` ({best['family']}), {_interval(best)}."]
    if best["tau"] <= 0:
        out.append("No measure here orders the models in the direction its authors predict (every τ ≤ 0).")
    if len(rows) > 1:
        runner = rows[1]
        tied = [r for r in rows[1:] if _tied(r)]
        if _tied(runner) is None:
            out.append(f"The runner-up is `{runner['measure']}` ({_interval(runner)}); without seed replicates "
                       f"there is no paired test, so this zoo cannot say whether the two differ.")
        elif tied:
            names = ", ".join(f"`{r['measure']}`" for r in tied[:5]) + (", …" if len(tied) > 5 else "")
            out.append(f"The paired test (bootstrap over the seeds of each configuration, Holm-adjusted over the "
                       f"{len(rows) - 1} comparisons, α = {board.alpha:g}) cannot tell {len(tied)} of the other "
                       f"measures apart from it: {names}. The runner-up, `{runner['measure']}`: {_versus(runner)}.")
            cheap = cheapest_tied(board.table, target)
            if cheap is not None and cheap.measure != best["measure"]:
                out.append(f"The cheapest of them is `{cheap.measure}`, {seconds_text(cheap.seconds)} per model "
                           f"against {seconds_text(best.get('seconds'))} for #1.")
        else:
            out.append(f"It leads beyond seed noise: the paired test (bootstrap over the seeds of each configuration, "
                       f"Holm-adjusted) separates it from every other measure; the runner-up, "
                       f"`{runner['measure']}`: {_versus(runner)}.")
    for extra in (_baselines_text(board, target, rows), beyond_text(board.table, board.baselines, target),
                  reliability_text(board.reliability, target)):
        if extra:
            out.append(extra)
    psi = {a: best.get(f"psi.{a}") for a in board.psi_axes}
    psi = {a: float(v) for a, v in psi.items() if v is not None and math.isfinite(float(v))}
    if psi:
        axis = min(psi, key=psi.get)
        v = psi[axis]
        verdict = ("it orders the models the wrong way when only this hyperparameter changes" if v < -0.05 else
                   "it carries almost no information when only this hyperparameter changes" if v <= 0.05 else
                   "its weakest axis, though it still orders models the right way along it")
        out.append(f"**Where it fails:** its lowest per-axis granulated τ is ψ = {fmt(v)} along "
                   f"`{short(axis)}` — {verdict}.")
    else:
        out.append("**Where it fails:** no per-axis ψ is defined (no two converged models differ in one axis only).")
    widths = [(r["tau_hi"] - r["tau_lo"], "τ", r) for r in rows] + \
             [(r["psi_hi"] - r["psi_lo"], "Ψ", r) for r in rows]
    widths = [w for w in widths if math.isfinite(w[0])]
    if widths:
        width, stat, r = max(widths, key=lambda w: w[0])
        lo, hi = (r["tau_lo"], r["tau_hi"]) if stat == "τ" else (r["psi_lo"], r["psi_hi"])
        tau_widths = [w for w, s, _ in widths if s == "τ"]
        out.append(f"**How sure:** the best measure's τ interval is {fmt(best['tau_hi'] - best['tau_lo'])} wide "
                   f"(median over the {len(tau_widths)} measures: {fmt(statistics.median(tau_widths))}); "
                   f"the widest uncertainty is `{r['measure']}`'s {stat} interval [{fmt(lo)}, {fmt(hi)}] "
                   f"(width {fmt(width)}).")
    else:
        out.append("**How sure:** no bootstrap intervals were computed (evaluate.n_boot=0).")
    ratio = noise["spread_over_se"]
    if math.isfinite(ratio):
        out.append(f"The gaps spread {fmt(ratio, 1)}× the binomial standard error of one model's test error "
                   f"over {noise['n_converged']} converged models"
                   + (" — under 3×, so differences in gap are close to test-set noise and every ranking here is "
                      "fragile." if ratio < 3 else "."))
    return " ".join(out)


def agreement_text(concordance: dict) -> str:
    """How far a suite's tasks rank the measures alike: Kendall's W with Friedman's test."""
    w = concordance
    return (f"Over the {w['n']} measures every task ranks, Kendall's coefficient of concordance of the tasks' τ "
            f"columns is W = {fmt(w['w'], 3)} (1: the same ranking everywhere, 0: none; Friedman χ² = "
            f"{fmt(w['chi2'], 1)}, {fmt_p(w['p'])}).")


def suite_lead(name: str, agree: dict, tasks: dict[str, dict], heading: str) -> list[str]:
    """A suite's opening lines (Markdown): its tasks, each in a few numbers, then the agreement of their rankings
    under ``heading`` (a Markdown heading in the suite's own file, bold in the README). ``tasks[task]`` holds
    ``family`` (its architectures' family; absent from suites stored before it), ``n_models``, ``n_converged``,
    ``best_test_error``, ``axes``, ``leader``, ``tied`` (the size of the group that cannot be told apart from #1)
    and ``rho`` (the split-half reliability)."""
    names = list(tasks)
    total = sum(t["n_converged"] for t in tasks.values())
    lines = [f"{total} converged models over {len(names)} tasks, each its own leaderboard "
             f"({', '.join(f'[{name}-{t}]({name}-{t}.md)' for t in names)}). A measure that predicts generalization "
             f"should do so on every task, so the measures are ranked by their worst τ over the tasks.", "",
             "| task | family | models (converged) | axes | best test error | #1 on the gap | tied with #1 | "
             "split-half ρ |", "|---|---|---|---|---|---|---|---|"]
    for t, info in tasks.items():
        lines.append(f"| {t} | {info.get('family', '—')} | {info['n_models']} ({info['n_converged']}) | "
                     f"{', '.join(a.removeprefix('hp.') for a in info['axes'])} | {fmt(info['best_test_error'], 3)} | "
                     f"`{info['leader']}` | {info['tied']} | {fmt(info['rho'])} |")
    lines += ["", heading, "", agreement_text(agree["concordance"]), "",
              "| task | task | Kendall τ | Spearman ρ |", "|---|---|---|---|"]
    for r in agree["pairs"].itertuples():
        lines.append(f"| {r.task_a} | {r.task_b} | {fmt(r.kendall_tau, 3)} | {fmt(r.spearman, 3)} |")
    return lines
