"""The leaderboard site: ``leaderboard/index.html`` and ``leaderboard/README.md`` over every leaderboard in the folder.

A leaderboard is the set of tables ``genbench evaluate`` writes for one zoo and dataset (their names are in
:mod:`benchmark.report.layout`): the long results table, the zoo DataFrame, the oracle analyses, and the
figures of :mod:`benchmark.report.plots`. The page renders boards (:class:`benchmark.evaluation.board.Board`) and
suites from memory: those ``genbench evaluate`` just built, and every other one in the folder as stored (its typed
form, or the tables of one written before that existed), so the page can be regenerated without the store::

    from benchmark.report import page
    page.write(Path("leaderboard"))

The page is one static file with relative links to the figures and tables (it opens from the file system,
offline), a little inline CSS and a few lines of vanilla JavaScript that sort a table by the clicked column.

Each leaderboard opens with a generated summary (:func:`benchmark.report.summary.summary`) answering three
questions: which measure predicts the generalization gap best, along which hyperparameter it fails, and how sure
we are.
"""
from __future__ import annotations

import math
import re
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence
from urllib.parse import quote

import pandas as pd

from benchmark.evaluation import board as stored
from benchmark.evaluation import suite as cross_task
from benchmark.evaluation import targets as by_target
from benchmark.evaluation.board import GAP, Board
from benchmark.evaluation.suite import Suite
from benchmark.files import write_text
from benchmark.report import layout
from benchmark.report.families import CHANGES, between_text
from benchmark.report.format import count, fmt, fmt_ci, short
from benchmark.report.format import ranked as ranked_rows
from benchmark.report.layout import (
    COST_FIGURE,
    HEATMAP_FIGURE,
    INDEX,
    README,
    SUMMARY_FIGURE,
    TIERS_FIGURE,
    BoardFiles,
    SuiteFiles,
    scatter_file,
)
from benchmark.report.summary import agreement_text, noise_text, suite_lead, summary
from benchmark.report.tables import EARLY_TEXT, added_cell, early_columns, flat_columns, legend, tier_text
from benchmark.report.targets import agreement_sentence


# ------------------------------------------------------------------------------------------------ HTML pieces
def _inline(text: str) -> str:
    """Escape, then the two bits of Markdown :func:`summary` uses: **bold** and `code`."""
    text = escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _num(x) -> str:
    """A ``data-v`` sort key: the number, or empty (sorted last)."""
    return repr(float(x)) if x is not None and x == x and math.isfinite(float(x)) else ""


def _text(x) -> str:
    """A table cell's text as read back from CSV: "" for a missing value (pandas reads it as NaN)."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def _records(table: pd.DataFrame) -> list[dict]:
    """The rows of ``table`` as dicts, a missing cell NaN whether the table holds None or NaN there (a cell with
    no value sorts last either way)."""
    return [{k: math.nan if v is None else v for k, v in r.items()} for r in table.to_dict("records")]


def _td(text: str, value=None, cls: str = "", style: str = "", title: str = "") -> str:
    """A cell; ``value`` is its sort key (a number, "" when missing, or a string such as a name)."""
    attrs = []
    if value is not None:
        attrs.append(f'data-v="{escape(value) if isinstance(value, str) else _num(value)}"')
    attrs += [f'{k}="{escape(v)}"' for k, v in (("class", cls), ("style", style), ("title", title)) if v]
    return f"<td {' '.join(attrs)}>{text}</td>" if attrs else f"<td>{text}</td>"


def _table(head: list[str], rows: list[str], cls: str = "sortable") -> str:
    ths = "".join(f"<th>{h}</th>" for h in head)
    return (f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>\n' + "\n".join(rows)
            + "\n</tbody></table>")


def _cmi_set(value, cmi) -> str:
    """The arg-min conditioning set (the CSV reads the empty set back as NaN, like an undefined CMI)."""
    if value is None or value != value or value == "":
        return "the empty set" if cmi == cmi else "undefined"
    return ", ".join(short(a) for a in str(value).split(","))


def _psi_color(v) -> str:
    """Background for ψ in [-1, 1]: red (wrong way) through white to blue (as predicted)."""
    if v is None or not math.isfinite(float(v)):
        return "background:#eee"
    v = max(-1.0, min(1.0, float(v)))
    end = (33, 102, 172) if v > 0 else (178, 24, 43)
    rgb = [round(255 + (c - 255) * abs(v) * 0.85) for c in end]
    return f"background:rgb({rgb[0]},{rgb[1]},{rgb[2]})" + (";color:#fff" if abs(v) > 0.65 else "")


def _src(board: Board, file: str) -> str:
    return f"{quote(board.name)}/{quote(file)}"


def _anchor(board: Board, measure: str) -> str:
    return f"{board.name}--{re.sub(r'[^A-Za-z0-9_.-]', '_', measure)}"


def _ranked_table(board: Board, target: str, folder: Path) -> str:
    """The ranked table of one target; worst-case columns that cannot separate the measures are left out, with
    the sentence that says why below the table."""
    rows = []
    ranked = ranked_rows(board.table, target)
    flat = flat_columns(ranked)
    for rank, r in enumerate(_records(ranked), 1):
        has_plot = (BoardFiles(folder, board.name).figures / scatter_file(r["measure"])).exists()
        name = f'<code>{escape(r["measure"])}</code>'
        if has_plot:
            name = f'<a href="#{escape(_anchor(board, r["measure"]))}">{name}</a>'
        same = r.get("identical")
        if isinstance(same, str) and same:
            name += f' <span class="same">= {", ".join(f"<code>{escape(m)}</code>" for m in same.split(", "))}</span>'
        cmi_title = f"arg-min conditioning set: {_cmi_set(r.get('cmi_set'), r['cmi'])}"
        cells = [
            _td(str(rank), rank),
            _td(tier_text(r.get("tier")), r.get("tier", math.nan), "num",
                title="tier 1: cannot be told apart from #1 by the paired test"),
            _td(name, r["measure"], title=_text(r.get("description"))),
            _td(escape(_text(r.get("family"))), _text(r.get("family"))),
            _td(fmt_ci(r["tau"], r["tau_lo"], r["tau_hi"]), r["tau"], "num"),
            _td(fmt_ci(r["psi"], r["psi_lo"], r["psi_hi"]), r["psi"], "num"),
            _td(added_cell(SimpleNamespace(**r)), r.get("added_tau", math.nan), "num",
                title="τ within configurations: over seed replicates, which no function of the hyperparameters "
                      "can tell apart"),
            _td(fmt(r["cmi"], 3), r["cmi"], "num", title=cmi_title),
            *[_td(fmt(r[c]), r[c], "num") for c in ("sign_error_mean", "sign_error_p90", "sign_error_max")
              if c not in flat],
            _td(fmt(r.get("seconds"), 3), r.get("seconds"), "num"),
            _td(fmt(r.get("seed_noise", math.nan), 2), r.get("seed_noise", math.nan), "num",
                title="seed-to-seed sd within configurations / sd of the configuration means (lower is better)"),
            _td(escape(_text(r.get("invariances"))), _text(r.get("invariances")),
                title="P: hidden-unit permutation, R: ReLU rescaling, U: units of weights and loss"),
            _td(escape(_text(r.get("sample_size")) or "—"), _text(r.get("sample_size")),
                title="reported adjusted for the training-set size m"),
            _td(count(r.get("failures")), r.get("failures", math.nan), "num"),
            _td(count(r.get("not_applicable")), r.get("not_applicable", math.nan), "num",
                title=_text(r.get("not_applicable_reason"))),
            _td(str(r["n_models"]), r["n_models"], "num"),
            _td(escape(_text(r.get("reference"))), None, "ref"),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = ["#", "tier", "measure", "family", "τ [95% CI]", "Ψ [95% CI]", "added τ [95% CI]", "CMI",
            *[h for c, h in (("sign_error_mean", "sign err. mean"), ("sign_error_p90", "p90"),
                             ("sign_error_max", "max")) if c not in flat],
            "s / model", "seed noise", "invariant", "m-adj.", "failed", "n/a", "models", "reference"]
    notes = "".join(f'<p class="legend">{_inline(text)}</p>' for text in dict.fromkeys(flat.values()))
    return _table(head, rows) + notes


def _axis_tables(board: Board, target: str, heatmap: str) -> str:
    """ψ_i per measure and axis (the heatmap, then the same as a sortable table) and the sign error per axis."""
    axes = board.psi_axes
    if not axes:
        return "<p>The zoo varies no hyperparameter, so there is no per-axis breakdown.</p>"
    ranked = _records(ranked_rows(board.table, target))
    psi_rows, se_rows = [], []
    for r in ranked:
        name = _td(f'<code>{escape(r["measure"])}</code>', r["measure"])
        psi_rows.append("<tr>" + name + "".join(
            _td(fmt(r.get(f"psi.{a}")), r.get(f"psi.{a}"), "num", _psi_color(r.get(f"psi.{a}"))) for a in axes)
            + "</tr>")
        se_rows.append("<tr>" + name + "".join(
            _td(fmt(r.get(f"sign_error.{a}")), r.get(f"sign_error.{a}"), "num") for a in axes) + "</tr>")
    head = ["measure"] + [f"<code>{escape(short(a))}</code>" for a in axes]
    return ("<p>ψ<sub>i</sub>: Kendall τ within cells of models that differ in that hyperparameter only (+1: the "
            "measure orders them as the target does, −1: the wrong way, 0: no information).</p>" + heatmap
            + "<details><summary>ψ<sub>i</sub> as a sortable table</summary>" + _table(head, psi_rows)
            + "</details><details><summary>Mean robust sign error per axis</summary><p>Dziugaite et al.; lower is "
              "better; — where no environment of that axis has two converged configurations.</p>"
            + _table(head, se_rows) + "</details>")


def _oracle_table(board: Board) -> str:
    if board.oracle.empty:
        return "<p>No oracle analyses were recorded for this leaderboard.</p>"
    rows = ["<tr>" + "".join([
        _td(f'<code>{escape(r["measure"])}</code> (oracle)', r["measure"]),
        _td(fmt(r["mean"], 4), r["mean"], "num"), _td(fmt(r["mean_gap_loss"], 4), r["mean_gap_loss"], "num"),
        _td(fmt(r["corr_with_gap_loss"], 3), r["corr_with_gap_loss"], "num"),
        _td(str(int(r["n_models"])), r["n_models"], "num")]) + "</tr>"
        for r in board.oracle.to_dict("records")]
    return ("<p>These analyses use the test data, so they are not generalization measures; they are shown for "
            "reference and never ranked.</p>"
            + _table(["analysis", "mean value", "mean measured loss gap", "correlation with loss gap", "models"],
                     rows, "sortable oracle"))


def _early_table(board: Board) -> str:
    """The early-prediction table: τ per measure at each kept fraction of training, and on the final weights."""
    if board.early is None or board.early.empty:
        return ""
    cols = early_columns(board.early)
    rows = []
    for name, g in board.early.groupby("measure", sort=False):
        cells = {r["fraction"]: r for r in g.to_dict("records")}
        rows.append("<tr>" + _td(f"<code>{escape(name)}</code>", name) + "".join(
            _td(fmt_ci(cells[f]["tau"], cells[f]["tau_lo"], cells[f]["tau_hi"], 2), cells[f]["tau"], "num")
            if f in cells and math.isfinite(cells[f]["tau"]) else _td("—") for f, _ in cols) + "</tr>")
    return (f"<h3>Early prediction</h3><p>{escape(EARLY_TEXT)}</p>"
            + _table(["measure", *[h for _, h in cols]], rows))


def _failures(board: Board, target: str) -> str:
    """The failed measures with their most frequent message, then the not-applicable ones with their reason."""
    out = ""
    for column, message, title, head in (
            ("failures", "failure_message", "Failures", ["measure", "failed models", "most frequent message"]),
            ("not_applicable", "not_applicable_reason", "Not applicable (not failures)",
             ["measure", "models", "reason"])):
        if column not in board.table:
            continue
        t = board.table[(board.table.target == target) & (board.table[column].fillna(0) > 0)]
        rows = ["<tr>" + _td(f"<code>{escape(r['measure'])}</code>", r["measure"])
                + _td(count(r[column]), r[column], "num")
                + _td(escape(_text(r.get(message))[:300])) + "</tr>" for r in t.to_dict("records")]
        if rows:
            out += f"<h3>{title}</h3>" + _table(head, rows)
    return out


def _figure(board: Board, folder: Path, file: str, alt: str, caption: str, anchor: str = "") -> str:
    if not (folder / board.name / file).exists():
        return ""
    ident = f' id="{escape(anchor)}"' if anchor else ""
    return (f'<figure{ident}><a href="{_src(board, file)}"><img src="{_src(board, file)}" alt="{escape(alt)}">'
            f"</a><figcaption>{caption}</figcaption></figure>")


def _targets_table(board: Board) -> str:
    """The cross-target view: how far the i.i.d. and the shift rankings agree, and each measure's τ per target ranked
    by its worst; "" for a board with one target."""
    shown = list(dict.fromkeys(board.table["target"]))
    if len(shown) < 2:
        return ""
    agree = by_target.agreement(board.table)
    worst = by_target.worst_targets({board.name: board.table}, shown)
    rows = ["<tr>" + "".join([_td(str(rank), rank), _td(f"<code>{escape(r['measure'])}</code>", r["measure"]),
                              _td(escape(_text(r["family"])), _text(r["family"])),
                              _td(fmt(r["worst_tau"], 3), r["worst_tau"], "num"),
                              _td(escape(r["worst_target"] or "—"), r["worst_target"]),
                              *[_td(fmt(r[f"tau.{t}"], 3), r[f"tau.{t}"], "num") for t in shown]]) + "</tr>"
            for rank, r in enumerate(worst.to_dict("records"), 1)]
    head = ["#", "measure", "family", "worst τ", "worst target", *[f"τ {escape(t)}" for t in shown]]
    text = f"<p>{_inline(agreement_sentence(agree))}</p>" if agree is not None else ""
    return f"<h3>Across targets</h3>{text}" + _table(head, rows)


def _section(board: Board, folder: Path) -> str:
    targets = board.shown_targets
    target = GAP if GAP in targets else (targets[0] if targets else GAP)
    name = escape(board.name)
    files = BoardFiles(folder, board.name)
    links = [f'<a href="{quote(path.name)}">{label}</a>'
             for path, label in ((files.markdown, "Markdown table"), (files.results, "results CSV"),
                                 (files.zoo, "zoo CSV"), (files.early, "early-prediction CSV")) if path.exists()]
    parts = [f'<section id="{name}" class="board"><h2>{name}</h2>',
             f'<p class="links">{" · ".join(links)}</p>',
             f'<div class="summary"><h3>Summary</h3><p>{_inline(summary(board, target))}</p></div>',
             f'<p class="noise"><strong>Gap vs. noise.</strong> {escape(noise_text(board.noise))}</p>',
             f'<p class="legend">{escape(legend(board.alpha))} Click a column header to sort.</p>']
    parts += [f"<h3>Predicting <code>{escape(target)}</code></h3>", _ranked_table(board, target, folder),
              _figure(board, folder, SUMMARY_FIGURE, f"τ and Ψ per measure, {board.name}",
                      f"τ and Ψ with <code>{escape(target)}</code> per measure, ranked by τ; lines are 95% "
                      f"bootstrap intervals."),
              _figure(board, folder, TIERS_FIGURE, f"tiers, {board.name}",
                      "τ per measure with its 95% interval, coloured by tier; a bar at the right joins the measures "
                      f"of each tier, which the paired test (Holm-adjusted, α = {board.alpha:g}) cannot split, as the "
                      "bars of a critical-difference diagram do. Tier 1 cannot be told apart from #1."),
              _figure(board, folder, COST_FIGURE, f"cost against τ, {board.name}",
                      "τ per measure against its cost in seconds per model: the Pareto front (no other measure both "
                      "cheaper and better) is joined and named, and the cheapest measure that the paired test cannot "
                      "tell apart from #1 is ringed.")]
    parts.append(_early_table(board))
    parts += [f"<details><summary>Predicting <code>{escape(t)}</code></summary>{_ranked_table(board, t, folder)}"
              f"</details>" for t in targets if t != target]
    parts.append(_targets_table(board))
    heatmap = _figure(board, folder, HEATMAP_FIGURE, f"ψ_i heatmap, {board.name}",
                      "ψ<sub>i</sub> per measure (rows ranked by τ) and hyperparameter: blue, the measure orders "
                      "models as the target does when only that hyperparameter changes; red, the wrong way.")
    parts += [f"<h3>Per-axis breakdown (against <code>{escape(target)}</code>)</h3>",
              _axis_tables(board, target, heatmap)]
    parts.append(_failures(board, target))
    parts.append("<h3>Oracle analyses (use test data — not measures, never ranked)</h3>")
    parts.append(_oracle_table(board))
    scatters = [_figure(board, folder, scatter_file(m), f"{m} against {target}",
                        f"<code>{escape(m)}</code> against <code>{escape(target)}</code>, one panel per "
                        f"hyperparameter.", _anchor(board, m))
                for m in ranked_rows(board.table, target).measure]
    if any(scatters):
        parts.append(f"<h3>Each measure against <code>{escape(target)}</code></h3>")
        parts.append('<div class="gallery">' + "".join(scatters) + "</div>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1280px;
     padding:0 16px 48px;color:#222}
h1{margin:24px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}h3{margin:28px 0 8px}
code{font:12.5px ui-monospace,Menlo,Consolas,monospace}
.summary{background:#f3f6fa;border-left:4px solid #3b6ea8;padding:4px 14px;margin:12px 0}
.summary h3{margin:8px 0 0}.noise,.legend{color:#444}.legend{font-size:12.5px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:12.5px}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#fafafa;position:sticky;top:0;cursor:pointer;white-space:nowrap;user-select:none}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}td.ref{color:#555;max-width:320px}
tbody tr:hover{background:#fff8e6}table.oracle{background:#fcfcf4}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12.5px;color:#555}nav ul{columns:2;padding-left:20px}
details{margin:8px 0}summary{cursor:pointer;font-weight:600;margin:12px 0 4px}
"""

SORT_SCRIPT = """
for (const table of document.querySelectorAll("table.sortable")) {
  const heads = Array.from(table.tHead.rows[0].cells);
  heads.forEach((th, col) => th.addEventListener("click", () => {
    const dir = th.dataset.dir === "desc" ? "asc" : "desc";
    heads.forEach(h => delete h.dataset.dir);
    th.dataset.dir = dir;
    const key = tr => { const c = tr.cells[col]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent; };
    const rows = Array.from(table.tBodies[0].rows);
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === "" || y === "") return (x === "") - (y === "");  // missing values last either way
      const d = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
      return dir === "asc" ? d : -d;
    });
    for (const r of rows) table.tBodies[0].appendChild(r);
  }));
}
"""


def _suite_section(folder: Path, suite: Suite) -> str:
    """A suite's cross-task table: each measure's worst τ over the tasks, its mean and its τ per task."""
    name, cross = suite.name, suite.cross
    files = SuiteFiles(folder, name)
    tasks = [c.removeprefix("tau.") for c in cross.columns if c.startswith("tau.")]
    rows = []
    for rank, r in enumerate(_records(cross), 1):
        same = r.get("identical")
        same = (f' <span class="same">= {", ".join(f"<code>{escape(m)}</code>" for m in same.split(", "))}</span>'
                if isinstance(same, str) and same else "")
        cells = [_td(str(rank), rank, "num"), _td(f"<code>{escape(r['measure'])}</code>{same}", r["measure"]),
                 _td(escape(_text(r["family"])), _text(r["family"])),
                 _td(fmt(r["worst_tau"], 3), r["worst_tau"], "num"),
                 _td(escape(_text(r["worst_task"])), _text(r["worst_task"])),
                 _td(fmt(r["mean_tau"], 3), r["mean_tau"], "num")]
        for t in tasks:
            tier = r.get(f"tier.{t}")
            mark = f" ({int(tier)})" if tier == tier and tier is not None else ""
            cells.append(_td(fmt(r[f"tau.{t}"], 3) + mark, r[f"tau.{t}"], "num"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    links = [f'<a href="{quote(p.name)}">{label}</a>' for p, label in
             ((files.markdown, "Markdown summary"), (files.results, "cross-task CSV"),
              (files.agreement, "agreement CSV"))]
    links += [f'<a href="#{escape(files.board(t))}">{escape(t)}</a>' for t in tasks]
    figure = (f'<figure><img src="{quote(name)}/{quote(files.figure.name)}" alt="τ per task, {escape(name)}" '
              f'loading="lazy"><figcaption>τ with <code>gap_error</code> of each measure on each task, ranked by '
              f'its worst task (the grey bar).</figcaption></figure>') if files.figure.exists() else ""
    intro = f"<p>{_inline(agreement_text(suite.concordance))}</p>"
    head = ["#", "measure", "family", "worst τ", "worst task", "mean τ", *[f"τ {escape(t)} (tier)" for t in tasks]]
    return "\n".join([f'<section id="{escape(name)}" class="board"><h2>Suite {escape(name)}</h2>',
                      f'<p class="links">{" · ".join(links)}</p>',
                      '<div class="summary"><p>A measure that predicts generalization should do so on every task: '
                      'the measures are ranked by their worst τ with the gap over the tasks. A tier in brackets: '
                      'tier 1 cannot be told apart from that task\'s #1.</p></div>', intro,
                      _table(head, rows), figure, _suite_families(suite), _suite_targets(suite), "</section>"])


def _suite_families(suite: Suite) -> str:
    """The suite's tasks by architecture family: agreement within and across families, each family's #1, and the
    measures whose rank moves most between MLPs and conv nets."""
    fam, between, change = suite.families, suite.between, suite.change
    if fam is None or between is None or len(fam) < 2:
        return ""
    rows = ["<tr>" + "".join([
        _td(escape(r["family"]), r["family"]), _td(escape(r["tasks"]), r["tasks"]),
        _td(fmt(r["w"], 3), r["w"], "num"), _td(fmt(r["mean_pair_tau"], 2), r["mean_pair_tau"], "num"),
        _td(f"<code>{escape(r['leader'])}</code> ({fmt(r['leader_worst_tau'])})" if r["leader"] else "—",
            r["leader"] or "")]) + "</tr>" for r in _records(fam)]
    out = ("<h3>By architecture family</h3>"
           + _table(["family", "tasks", "Kendall's W within", "mean τ between two of its tasks",
                     "#1 by its worst τ"], rows)
           + f"<p>{_inline(between_text(between))}</p>")
    if change is not None and len(change):
        moved = ["<tr>" + "".join([
            _td(f"<code>{escape(r['measure'])}</code>", r["measure"]), _td(fmt(r["tau_ref"], 3), r["tau_ref"], "num"),
            _td(str(int(r["rank_ref"])), r["rank_ref"], "num"), _td(fmt(r["tau_other"], 3), r["tau_other"], "num"),
            _td(str(int(r["rank_other"])), r["rank_other"], "num"),
            _td(f"{int(r['change']):+d}", r["change"], "num")]) + "</tr>" for r in _records(change.head(CHANGES))]
        out += ("<details><summary>The measures whose rank moves most between MLPs and conv nets</summary>"
                + _table(["measure", "mean τ, MLPs", "rank", "mean τ, conv nets", "rank", "change"], moved)
                + "</details>")
    return out


def _suite_targets(suite: Suite) -> str:
    """The suite's cross-target view: per task, the i.i.d. and shift rankings' agreement; each measure's worst τ
    over every task and target."""
    agree, cross = suite.targets, suite.target_cross
    if agree is None or cross is None or agree.empty:
        return ""
    rows = ["<tr>" + "".join([_td(escape(r["task"]), r["task"]), _td(str(r["n_measures"]), r["n_measures"], "num"),
                              _td(fmt(r["kendall_tau"], 2), r["kendall_tau"], "num"),
                              _td(f"<code>{escape(r['top_a'])}</code> ({fmt(r['tau_top_a'])})", r["top_a"]),
                              _td(f"<code>{escape(r['top_b'])}</code> ({fmt(r['tau_top_b'])})", r["top_b"])]) + "</tr>"
            for r in _records(agree)]
    worst = ["<tr>" + "".join([_td(str(rank), rank, "num"), _td(f"<code>{escape(r['measure'])}</code>", r["measure"]),
                               _td(fmt(r["worst_tau"], 3), r["worst_tau"], "num"),
                               _td(escape(_text(r["worst_target"])), _text(r["worst_target"])),
                               _td(escape(_text(r["worst_task"])), _text(r["worst_task"])),
                               _td(fmt(r["mean_tau"], 3), r["mean_tau"], "num")]) + "</tr>"
             for rank, r in enumerate(_records(cross), 1)]
    return ("<h3>Do the targets agree?</h3><p>Kendall τ between the measures' τ for the i.i.d. gap and their τ for "
            "the gap on the shifted test sets, per task.</p>"
            + _table(["task", "measures", "Kendall τ", "#1 i.i.d. gap", "#1 shift gap"], rows)
            + "<details><summary>Every measure's worst case over tasks and targets</summary>"
            + _table(["#", "measure", "worst τ", "worst target", "worst task", "mean τ"], worst) + "</details>")


def page(boards: list[Board], folder: Path, suites: Sequence[Suite] = ()) -> str:
    """The whole index page."""
    toc = "".join(f'<li><a href="#{escape(n)}">{escape(n)}</a></li>'
                  for n in [*(s.name for s in suites), *(b.name for b in boards)])
    body = "\n".join([*(_suite_section(folder, s) for s in suites), *(_section(b, folder) for b in boards)]) or \
        "<p>No leaderboards yet: run <code>genbench run</code>.</p>"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>genbench leaderboards</title><style>{STYLE}</style></head><body>\n"
            f"<header><h1>genbench leaderboards</h1><p>How well does each generalization measure rank a zoo of "
            f"trained networks by their generalization gap? One leaderboard per zoo and dataset, generated by "
            f"<code>genbench evaluate</code> from the tables in this folder (<a href=\"{README}\">README.md</a>)."
            f"</p><nav><ul>{toc}</ul></nav></header>\n{body}\n<script>{SORT_SCRIPT}</script></body></html>\n")


def readme(boards: list[Board], folder: Path, suites: Sequence[Suite] = ()) -> str:
    """``README.md``: the index of all leaderboards with their summaries and links."""
    lines = ["# Leaderboards", "",
             f"Generated by `genbench evaluate` from the tables in this folder. Open [{INDEX}]({INDEX}) in a browser "
             "(it works offline) for every table, the per-axis breakdown and the plots.", ""]
    if not boards:
        lines.append("No leaderboards yet: run `genbench run`.")
    for suite in suites:
        files, name = SuiteFiles(folder, suite.name), suite.name
        tasks = "\n".join(suite_lead(name, suite.agreement, suite.tasks, "**Do the tasks agree?**"))
        lines += [f"## Suite {name}", "", f"[Cross-task summary]({quote(files.markdown.name)}) · "
                  f"[page]({INDEX}#{quote(name)}) · [cross-task CSV]({quote(files.results.name)})", "", tasks, ""]
    for b in boards:
        files, n = BoardFiles(folder, b.name), quote(b.name)
        links = [f"[Markdown table]({quote(files.markdown.name)})", f"[page]({INDEX}#{n})",
                 f"[results CSV]({quote(files.results.name)})"]
        links += [f"[{label}]({n}/{quote(f)})" for label, f in (("τ/Ψ plot", SUMMARY_FIGURE),
                                                                 ("ψ heatmap", HEATMAP_FIGURE),
                                                                 ("tiers", TIERS_FIGURE),
                                                                 ("cost vs. τ", COST_FIGURE))
                  if (files.figures / f).exists()]
        links += [f"[early-prediction CSV]({quote(files.early.name)})"] if files.early.exists() else []
        lines += [f"## {b.name}", "", " · ".join(links), "", summary(b), "", noise_text(b.noise), ""]
    return "\n".join(lines)


def stored_board(folder: Path, name: str) -> Board:
    """The board ``name`` as stored in ``folder`` (``board.read``: its typed form, or its tables)."""
    files = BoardFiles(Path(folder), name)
    return stored.read(name, files.typed, files.tables)


def stored_suite(folder: Path, name: str, boards: dict[str, Board]) -> Suite:
    """The suite ``name`` as stored in ``folder``: its typed form, or, written before that existed, its cross-task
    table with the agreement and task summaries of its tasks' ``boards`` (``{board name: board}``)."""
    files = SuiteFiles(Path(folder), name)
    if files.typed.exists():
        return cross_task.load(files.typed)
    cross = pd.read_csv(files.results)
    tasks = [c.removeprefix("tau.") for c in cross.columns if c.startswith("tau.")]
    return cross_task.build(name, {t: boards[files.board(t)] for t in tasks if files.board(t) in boards}, cross)


def write(folder: Path, boards: Sequence[Board] = (), suites: Sequence[Suite] = ()) -> list[Path]:
    """Rebuild ``index.html`` and ``README.md`` in ``folder`` over every leaderboard and suite there: ``boards`` and
    ``suites`` as given (those just evaluated, in memory), the others as stored."""
    folder = Path(folder)
    given, given_suites = {b.name: b for b in boards}, {s.name: s for s in suites}
    every = {n: given[n] if n in given else stored_board(folder, n) for n in layout.boards(folder)}
    every_suite = [given_suites[n] if n in given_suites else stored_suite(folder, n, every)
                   for n in layout.suites(folder)]
    index, md = layout.index(folder), layout.readme(folder)
    return [write_text(index, page(list(every.values()), folder, every_suite)),
            write_text(md, readme(list(every.values()), folder, every_suite))]
