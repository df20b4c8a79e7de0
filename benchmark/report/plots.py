"""Figures of one leaderboard, written under ``leaderboard/<name>/`` next to its tables.

    scatter/<measure>.png   the measure (oriented by its declared sign) against the target, one panel per zoo
                            axis with the points coloured by that axis's value; titled with τ, Ψ and each ψ_i
    summary.png             τ and Ψ of every measure with their 95% bootstrap intervals, ranked by τ
    psi_heatmap.png         ψ_i per measure (rows, ranked by τ) and zoo axis (columns)
    tiers.png               τ per measure with its interval, ranked, and a bar joining each tier that the paired
                            test cannot split (as in a critical-difference diagram)
    cost.png                τ per measure against its cost in seconds per model, the Pareto front joined and
                            named, the cheapest measure tied with #1 ringed

A suite (``experiment=standard``) adds ``<suite>/tasks.png``: each measure's τ on every task, ranked by its
worst task.

Inputs are a board's (``benchmark.evaluation.board.Board``) long results table and zoo DataFrame, and its level
α of the paired test. Only converged models are drawn, as only they enter the statistics.

Figures use matplotlib's object API on an Agg canvas (no pyplot, no global figure registry, nothing to close),
a fixed style, and PNG metadata without a version string, so the same tables give the same bytes. The scatter
figure is built once per leaderboard and only its points and titles change from measure to measure: panels,
colours and legends depend on the zoo alone. That keeps ~60 measures × 5 axes to about ten CPU seconds.

Figures are drawn again only when what they show changed: each figure's inputs are gathered first (exactly the
data it is drawn from: for a scatter the converged models' axis, target and measure columns and the table cells in
its titles; for the other figures the table columns they read), and their digest is compared with the one in the
folder's manifest ``figures.json`` (``benchmark.report.figure_cache``). Scoring one new measure against a cached
zoo draws its scatter and the figures that rank every measure, and reuses the rest.
"""
from __future__ import annotations

import functools
import inspect
import math
from concurrent.futures import Executor
from pathlib import Path
from typing import Callable

import matplotlib
import matplotlib.ticker
import matplotlib.transforms
import numpy as np
import pandas as pd
import PIL.Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.evaluation.board import ALPHA, Board, psi_axes
from benchmark.evaluation.leaderboard import cheapest_tied, pareto_front
from benchmark.files import write_atomic
from benchmark.report import figure_cache
from benchmark.report.figure_cache import Manifest
from benchmark.report.format import fmt, fmt_ci, ranked, short
from benchmark.report.layout import COST_FIGURE, HEATMAP_FIGURE, SUMMARY_FIGURE, TIERS_FIGURE, scatter_file
from benchmark.store import converged

CONVERGED = "metric.converged"
DPI = 100
STYLE = {"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "axes.formatter.limits": (-3, 4), "axes.titlepad": 6.0}
TAU_COLOR, PSI_COLOR = "#3b6ea8", "#d9822b"


# ------------------------------------------------------------------------------------------------ helpers
axes_of = psi_axes  # the zoo axes (``hp.*`` columns) the results table breaks ψ_i down by


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))


def _save_canvas(canvas: FigureCanvasAgg, path: Path) -> Path:
    """The canvas as it stands (no redraw) as an RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PIL.Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    return write_atomic(path, lambda tmp: image.save(tmp, format="png", compress_level=3))


def _order_key(value):
    """Numbers in numeric order, then everything else (strings, None) by text."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _colors(k: int) -> list:
    """``k`` colours in order along viridis (its bright yellow end cut off: unreadable on white)."""
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.0)] if k == 1 else [cmap(v) for v in np.linspace(0.0, 0.85, k)]


def _limits(values: np.ndarray) -> tuple[float, float]:
    """Data limits with 6% padding; a sensible window when there is one value or none."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(lo) * 0.05, 1e-3)
    return lo - pad, hi + pad


def _converged(zoo: pd.DataFrame) -> pd.DataFrame:
    return zoo[converged(zoo)].reset_index(drop=True) if CONVERGED in zoo else zoo


# ------------------------------------------------------------------------------------------------ figures
SCATTER_FIELDS = ("measure", "sign", "family", "tau", "tau_lo", "tau_hi", "psi", "psi_lo", "psi_hi")


def scatter_inputs(zoo: pd.DataFrame, table: pd.DataFrame, target: str = "gap_error"
                   ) -> tuple[pd.DataFrame, list, dict[str, tuple[dict, np.ndarray]]]:
    """What the scatter plots are drawn from, and nothing else: the converged models' axis and target columns
    (shared by every scatter), the axes, and per ranked measure its table cells in the titles and its x values
    (``sign · measure``)."""
    conv = _converged(zoo)
    axes = axes_of(table) or [None]
    shared = pd.DataFrame({**{a: conv[a] for a in axes if a is not None},
                           f"metric.{target}": conv[f"metric.{target}"].to_numpy(dtype=float)})
    fields = [*SCATTER_FIELDS, *(f"psi.{a}" for a in axes if a is not None)]
    measures = {}
    for r in ranked(table, target).to_dict("records"):
        column = f"measure.{r['measure']}"
        sign = -1 if r.get("sign") == -1 else 1
        x = sign * conv[column].to_numpy(dtype=float) if column in conv else np.full(len(conv), np.nan)
        measures[r["measure"]] = ({k: r.get(k, "" if k == "family" else None) for k in fields}, x)
    return shared, axes, measures


def write_scatters(zoo: pd.DataFrame, table: pd.DataFrame, out_dir: Path, target: str = "gap_error") -> list[Path]:
    """One PNG per ranked measure: ``sign · measure`` against ``metric.<target>``, one panel per axis."""
    shared, axes, measures = scatter_inputs(zoo, table, target)
    return _draw_scatters(shared, axes, measures, target, Path(out_dir))


def _draw_scatters(conv: pd.DataFrame, axes: list, measures: dict[str, tuple[dict, np.ndarray]], target: str,
                   out_dir: Path) -> list[Path]:
    """The scatters of ``measures`` over the converged models ``conv`` (``scatter_inputs`` gives both).

    What does not depend on the measure (y axis, legends, axis names, frames) is rendered once; for every measure
    only the points, the x axes and the short titles are drawn over a copy of that background (Agg blitting), so
    drawing some of the measures gives the same bytes as drawing all of them.
    Matplotlib rasterises text glyph by glyph, so the per-measure text is kept short.
    """
    y = conv[f"metric.{target}"].to_numpy(dtype=float)
    if not measures:
        return []
    paths = []
    with matplotlib.rc_context(STYLE):
        width = max(8.0, 0.95 + 2.3 * len(axes))  # the title line needs ~8 inches
        fig = _figure(width, 2.8)
        panels = fig.subplots(1, len(axes), sharey=True, squeeze=False)[0]
        fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, top=0.78, bottom=0.22, wspace=0.08)
        layers = []  # per panel: [(collection, row mask)], one collection per value of the panel's axis
        for ax, axis in zip(panels, axes):
            if axis is None:
                groups = [("all models", np.ones(len(conv), dtype=bool))]
            else:
                col = conv[axis]
                values = sorted(col.dropna().unique(), key=_order_key)
                groups = [(_label(v), (col == v).to_numpy()) for v in values]
                if col.isna().any():
                    groups.append(("unset", col.isna().to_numpy()))
            layer = []
            for (label, mask), color in zip(groups, _colors(len(groups))):
                coll = ax.scatter(np.zeros(int(mask.sum())), y[mask], s=16, color=color, label=label,
                                  edgecolors="none", alpha=0.85)
                layer.append((coll, mask))
            layers.append(layer)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(groups), 4), frameon=False,
                      handletextpad=0.1, columnspacing=0.8)
            ax.set_ylim(*_limits(y))
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
            ax.set_title(short(axis) if axis else "", loc="left")
        panels[0].set_ylabel(target)
        fig.text(0.5, 0.915, f"x: the measure × its sign;  y: {target} of converged models;  "
                 f"colour: the panel's hyperparameter;  ψ: granulated τ along it",
                 ha="center", va="top", fontsize=7, color="#555")
        # drawn per measure
        title = fig.text(0.5, 0.975, "", ha="center", va="top", fontsize=9)
        empty = fig.text(0.5, 0.5, "", ha="center", color="#a33", fontsize=9)
        psis = [ax.text(1.0, 1.0, "", ha="right", va="baseline",  # where the axis name (the left title) sits
                        transform=matplotlib.transforms.offset_copy(ax.transAxes, fig, y=STYLE["axes.titlepad"],
                                                                    units="points")) for ax in panels]
        dynamic = [ax.xaxis for ax in panels] + [c for layer in layers for c, _ in layer]

        canvas = fig.canvas
        for artist in dynamic:
            artist.set_visible(False)
        canvas.draw()
        background = canvas.copy_from_bbox(fig.bbox)
        for artist in dynamic:
            artist.set_visible(True)

        for r, x in measures.values():
            sign = -1 if r["sign"] == -1 else 1
            finite = np.isfinite(x)
            canvas.restore_region(background)
            for ax, axis, layer, psi in zip(panels, axes, layers, psis):
                ax.set_xlim(*_limits(x))
                fig.draw_artist(ax.xaxis)
                for coll, mask in layer:
                    keep = mask & finite
                    coll.set_offsets(np.column_stack([x[keep], y[keep]]))
                    fig.draw_artist(coll)
                psi.set_text(f"ψ = {fmt(r[f'psi.{axis}'])}" if axis else "")
                fig.draw_artist(psi)
            title.set_text(f"{'−' if sign < 0 else ''}{r['measure']} ({r['family']}, sign {sign:+d}):  "
                           f"τ = {fmt_ci(r['tau'], r['tau_lo'], r['tau_hi'])}   "
                           f"Ψ = {fmt_ci(r['psi'], r['psi_lo'], r['psi_hi'])}   "
                           f"({int(finite.sum())}/{len(conv)} models)")
            fig.draw_artist(title)
            if not finite.any():
                empty.set_text("no value on any converged model (the measure failed)")
                fig.draw_artist(empty)
            paths.append(_save_canvas(canvas, out_dir / scatter_file(r["measure"])))
    return paths


def write_summary(table: pd.DataFrame, path: Path, target: str = "gap_error") -> Path:
    """Horizontal bars of τ and Ψ per measure, ranked by τ, with the 95% bootstrap intervals as lines."""
    return _draw_summary(*_summary_inputs(table, target), path)


def _summary_inputs(table: pd.DataFrame, target: str) -> tuple:
    return ranked(table, target)[["measure", "tau", "tau_lo", "tau_hi", "psi", "psi_lo", "psi_hi"]], target


def _draw_summary(rows: pd.DataFrame, target: str, path: Path) -> Path:
    n = max(len(rows), 1)
    labels = [f"{i}. {m}" for i, m in enumerate(rows.measure, 1)]
    left = 0.25 + 0.056 * max((len(s) for s in labels), default=8)
    width = left + 6.0
    with matplotlib.rc_context(STYLE):
        fig = _figure(width, 0.95 + 0.17 * n)
        panels = fig.subplots(1, 2, sharey=True)
        fig.subplots_adjust(left=left / width, right=0.98, top=1 - 0.55 / (0.95 + 0.17 * n),
                            bottom=0.4 / (0.95 + 0.17 * n), wspace=0.06)
        ypos = np.arange(len(rows))
        for ax, col, color, name in ((panels[0], "tau", TAU_COLOR, "τ (Kendall)"),
                                     (panels[1], "psi", PSI_COLOR, "Ψ (granulated Kendall)")):
            v = rows[col].to_numpy(dtype=float)
            lo, hi = rows[f"{col}_lo"].to_numpy(dtype=float), rows[f"{col}_hi"].to_numpy(dtype=float)
            ax.barh(ypos, np.nan_to_num(v), height=0.62, color=color)
            ok = np.isfinite(lo) & np.isfinite(hi)
            ax.hlines(ypos[ok], lo[ok], hi[ok], color="black", lw=1)
            ax.plot(lo[ok], ypos[ok], "|", hi[ok], ypos[ok], "|", color="black", ms=4)
            ax.axvline(0, color="#666", lw=0.8)
            ax.set_xlim(-1.05, 1.05)
            ax.set_title(f"{name} with {target}, 95% CI", loc="left")
            ax.grid(axis="y", visible=False)
        panels[0].set_yticks(ypos, labels)
        panels[0].set_ylim(len(rows) - 0.5, -0.5)
        path = _save(fig, path)
    return path


def write_psi_heatmap(table: pd.DataFrame, path: Path, target: str = "gap_error") -> Path | None:
    """ψ_i of every measure (rows, ranked by τ) along every axis (columns); None when the zoo has no axis."""
    inputs = _heatmap_inputs(table, target)
    return None if inputs is None else _draw_heatmap(*inputs, path)


def _heatmap_inputs(table: pd.DataFrame, target: str) -> tuple | None:
    axes = axes_of(table)
    return (ranked(table, target)[["measure", *(f"psi.{a}" for a in axes)]], axes, target) if axes else None


def _draw_heatmap(rows: pd.DataFrame, axes: list[str], target: str, path: Path) -> Path:
    values = rows[[f"psi.{a}" for a in axes]].to_numpy(dtype=float)  # (measures, axes)
    n = max(len(rows), 1)
    left = 0.2 + 0.056 * max((len(m) for m in rows.measure), default=8)
    width, height = left + 0.95 * len(axes) + 1.1, max(2.5, 1.35 + 0.17 * n)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#e4e4e4")
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(width, height)
        ax = fig.add_axes((left / width, 0.2 / height, 0.95 * len(axes) / width, 1 - 1.35 / height))
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1, aspect="auto",
                          interpolation="nearest")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, fmt(v), ha="center", va="center", fontsize=6.5,
                    color="white" if math.isfinite(v) and abs(v) > 0.6 else "black")
        ax.set_yticks(range(len(rows)), rows.measure)
        ax.set_xticks(range(len(axes)), [short(a) for a in axes], rotation=30, ha="left")
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        cax = fig.add_axes(((left + 0.95 * len(axes) + 0.15) / width, 0.2 / height, 0.15 / width,
                            1 - 1.35 / height))
        fig.colorbar(image, cax=cax, label=f"ψ_i with {target}")
        path = _save(fig, path)
    return path


def write_tiers(table: pd.DataFrame, path: Path, target: str = "gap_error", alpha: float = ALPHA) -> Path | None:
    """τ of every measure with its 95% interval, ranked, coloured by tier, and a bar at the right joining the
    measures of each tier (the groups the paired test at level ``alpha`` cannot split); None when the table has no
    tiers (a zoo without seed replicates)."""
    inputs = _tiers_inputs(table, target, alpha)
    return None if inputs is None else _draw_tiers(*inputs, path)


def _tiers_inputs(table: pd.DataFrame, target: str, alpha: float) -> tuple | None:
    rows = ranked(table, target)
    if "tier" not in rows or not rows["tier"].notna().any():
        return None
    return rows[["measure", "tau", "tau_lo", "tau_hi", "tier"]], target, alpha


def _draw_tiers(rows: pd.DataFrame, target: str, alpha: float, path: Path) -> Path:
    tier = rows["tier"].to_numpy(dtype=float)
    n = max(len(rows), 1)
    labels = [f"{i}. {m}" for i, m in enumerate(rows.measure, 1)]
    left = 0.25 + 0.056 * max((len(s) for s in labels), default=8)
    width, height = left + 5.2, 1.0 + 0.17 * n
    k = int(np.nanmax(tier))
    colors = [matplotlib.colormaps["tab10"](i % 10) for i in range(k)]
    with matplotlib.rc_context(STYLE):
        fig = _figure(width, height)
        ax = fig.add_axes((left / width, 0.4 / height, 4.2 / width, 1 - 1.0 / height))
        bars = fig.add_axes(((left + 4.3) / width, 0.4 / height, 0.8 / width, 1 - 1.0 / height), sharey=ax)
        ypos = np.arange(len(rows))
        v = rows["tau"].to_numpy(dtype=float)
        lo, hi = rows["tau_lo"].to_numpy(dtype=float), rows["tau_hi"].to_numpy(dtype=float)
        for t in range(1, k + 1):
            at = tier == t
            c = colors[t - 1]
            ax.hlines(ypos[at], lo[at], hi[at], color=c, lw=1.2)
            ax.plot(v[at], ypos[at], "o", color=c, ms=3.5)
            members = ypos[at]
            column = (t - 1) % 4
            bars.vlines(column, members.min() - 0.3, members.max() + 0.3, color=c, lw=3)
            bars.text(column + 0.2, members.mean(), str(t), va="center", fontsize=6.5, color=c)
        ax.axvline(0, color="#666", lw=0.8)
        ax.set_yticks(ypos, labels)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_title(f"τ with {target}, 95% CI; tiers of the paired test (Holm, α = {alpha:g})", loc="left")
        ax.grid(axis="y", visible=False)
        bars.set_xlim(-0.5, 4.0)
        bars.axis("off")
        path = _save(fig, path)
    return path


def write_tasks(cross: pd.DataFrame, tasks: list[str], path: Path) -> Path:
    """Each measure's τ on every task (one marker per task), ranked by its worst task, the worst marked by a line
    from zero; the cross-task table of ``benchmark.evaluation.suite.cross_task``. Drawn only when its data
    changed since it was last drawn (the manifest of its folder, ``benchmark.report.figure_cache``)."""
    path = Path(path)
    inputs = (cross[["measure", "worst_tau", *(f"tau.{t}" for t in tasks)]], list(tasks))
    manifest, digest = Manifest(path.parent), figure_cache.digest(_code(), path.name, inputs)
    if manifest.stale(path, digest):
        manifest.drop([path])
        _draw_tasks(*inputs, path)
    manifest.record({path: digest})
    return path


def _draw_tasks(cross: pd.DataFrame, tasks: list[str], path: Path) -> Path:
    n = max(len(cross), 1)
    left = 0.25 + 0.056 * max((len(m) for m in cross.measure), default=8)
    width, height = left + 5.0, 1.1 + 0.17 * n
    colors = _colors(len(tasks))
    markers = "os^Dv<>p"
    with matplotlib.rc_context(STYLE):
        fig = _figure(width, height)
        ax = fig.add_axes((left / width, 0.4 / height, 4.7 / width, 1 - 1.1 / height))
        ypos = np.arange(len(cross))
        worst = cross["worst_tau"].to_numpy(dtype=float)
        ok = np.isfinite(worst)
        ax.hlines(ypos[ok], 0, worst[ok], color="#999", lw=2.5, alpha=0.6)
        for i, t in enumerate(tasks):
            ax.plot(cross[f"tau.{t}"].to_numpy(dtype=float), ypos, markers[i % len(markers)], color=colors[i],
                    ms=3.5, label=t, alpha=0.9)
        ax.axvline(0, color="#666", lw=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_yticks(ypos, [f"{i}. {m}" for i, m in enumerate(cross.measure, 1)])
        ax.set_ylim(len(cross) - 0.5, -0.5)
        ax.set_title("τ with gap_error on each task; grey bar: the worst task", loc="left")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0 + 0.25 / height), ncol=len(tasks), frameon=False)
        ax.grid(axis="y", visible=False)
        path = _save(fig, path)
    return path


COST_FLOOR = 1e-6  # seconds per model; a measure timed below it (a cached value) is drawn at this floor


def write_cost(table: pd.DataFrame, path: Path, target: str = "gap_error") -> Path | None:
    """τ of every measure against its cost (seconds per model, log scale) with the τ interval, the Pareto
    front (no measure both cheaper and better) joined and labelled, and the cheapest measure that the paired test
    cannot tell apart from #1 ringed; None without costs."""
    inputs = _cost_inputs(table, target)
    return None if inputs is None else _draw_cost(*inputs, path)


def _cost_inputs(table: pd.DataFrame, target: str) -> tuple | None:
    rows = table[(table.target == target) & table.tau.notna()]
    if "seconds" not in rows or not np.isfinite(rows.seconds.astype(float)).any():
        return None
    rows = rows[np.isfinite(rows.seconds.astype(float))]
    cheap = cheapest_tied(rows, target)
    cheap = None if cheap is None else (cheap.measure, float(cheap.seconds), float(cheap.tau))
    return (rows[["measure", "seconds", "tau", "tau_lo", "tau_hi"]].reset_index(drop=True),
            list(pareto_front(rows, target)), cheap, target)


def _draw_cost(rows: pd.DataFrame, front: list[str], cheap: tuple | None, target: str, path: Path) -> Path:
    cost = np.maximum(rows.seconds.to_numpy(dtype=float), COST_FLOOR)
    tau = rows.tau.to_numpy(dtype=float)
    on = rows.measure.isin(front).to_numpy()
    with matplotlib.rc_context(STYLE):
        fig = _figure(7.5, 4.8)
        ax = fig.add_axes((0.09, 0.11, 0.88, 0.8))
        # each interval from its ends: with few models a bootstrap interval need not contain the estimate
        ax.vlines(cost, rows.tau_lo.to_numpy(dtype=float), rows.tau_hi.to_numpy(dtype=float), color="#bbb", lw=0.8)
        ax.plot(cost[~on], tau[~on], "o", ms=3.5, color="#999", label="measure")
        order = np.argsort(cost[on])
        ax.plot(cost[on][order], tau[on][order], "o-", ms=4.5, color=TAU_COLOR, lw=1, drawstyle="steps-post",
                label="Pareto front (none both cheaper and better)")
        for name, x, y in zip(rows.measure[on], cost[on], tau[on]):
            ax.annotate(name, (x, y), xytext=(4, -9), textcoords="offset points", fontsize=6.5, color=TAU_COLOR)
        if cheap is not None:
            name, seconds, tau_cheap = cheap
            ax.plot(max(seconds, COST_FLOOR), tau_cheap, "o", ms=10, mfc="none", mec=PSI_COLOR, mew=1.5,
                    label=f"cheapest tied with #1: {name}")
        ax.set_xscale("log")
        ax.axhline(0, color="#666", lw=0.8)
        ax.set_xlabel(f"seconds per model (log; below {COST_FLOOR:g} s drawn at {COST_FLOOR:g})")
        ax.set_ylabel(f"τ with {target}")
        ax.set_title(f"cost against predictive power ({target}); lines: 95% CI of τ", loc="left")
        ax.legend(loc="lower right", frameon=False)
        path = _save(fig, path)
    return path


class Figures(list):
    """The paths of a leaderboard's figures, in the order :func:`write` always gave them, and ``drawn``: those this
    call drew because their data changed; the others (``reused``) were left as they were."""

    def __init__(self, paths: list[Path], drawn: list[Path]):
        super().__init__(paths)
        self.drawn = list(drawn)

    @property
    def reused(self) -> list[Path]:
        drawn = set(self.drawn)
        return [p for p in self if p not in drawn]


def write(board: Board, out_dir: Path, target: str | None = None, helper: Executor | None = None) -> Figures:
    """Every figure of one leaderboard under ``out_dir``; scatter plots of measures no longer listed are removed.

    A figure is drawn only when the data it shows changed since it was drawn into ``out_dir`` (or its file is
    missing): its digest is kept in the folder's manifest (``benchmark.report.figure_cache``). The files are the
    same bytes as a full drawing would give. ``target``: default ``gap_error``, or the table's first target when
    it was not evaluated. ``helper``: an executor (another process) that draws about half of the figures while this
    process draws the others; the manifest is written here once both are done.
    """
    out_dir, table = Path(out_dir), board.table
    if target is None:
        target = "gap_error" if table.empty or "gap_error" in set(table.target) else str(table.target.iloc[0])
    code = _code()
    shared, axes, measures = scatter_inputs(board.zoo, table, target)
    common = figure_cache.digest(code, "scatter", shared, axes, target)
    scatters = {m: out_dir / scatter_file(m) for m in measures}
    digests = {scatters[m]: figure_cache.digest(common, fields, x) for m, (fields, x) in measures.items()}
    aggregates = {out_dir / SUMMARY_FIGURE: (_draw_summary, _summary_inputs(table, target)),
                  out_dir / HEATMAP_FIGURE: (_draw_heatmap, _heatmap_inputs(table, target)),
                  out_dir / TIERS_FIGURE: (_draw_tiers, _tiers_inputs(table, target, board.alpha)),
                  out_dir / COST_FIGURE: (_draw_cost, _cost_inputs(table, target))}
    for path, (_, inputs) in aggregates.items():
        if inputs is None:
            path.unlink(missing_ok=True)
        else:
            digests[path] = figure_cache.digest(code, path.name, inputs)

    manifest = Manifest(out_dir)
    drawn = [p for p, d in digests.items() if manifest.stale(p, d)]
    manifest.drop(drawn)
    redraw = set(drawn)
    for stale in set((out_dir / "scatter").glob("*.png")) - set(scatters.values()):
        stale.unlink()
    todo = [m for m in measures if scatters[m] in redraw]
    halves = [todo] if helper is None or len(todo) < 2 else [todo[:len(todo) // 2], todo[len(todo) // 2:]]
    jobs = [(SCATTER_S[0] + SCATTER_S[1] * len(half), _draw_scatters,
             (shared, axes, {m: measures[m] for m in half}, target, out_dir)) for half in halves if half]
    jobs += [(AGGREGATE_S[path.name], draw, (*inputs, path)) for path, (draw, inputs) in aggregates.items()
             if path in redraw]
    _run(jobs, helper)
    manifest.record(digests, complete=True)
    return Figures(list(digests), drawn)


# about what drawing takes (s), to share a board's figures between two processes: a scatter's background and each
# scatter drawn over it, and each of the figures that rank every measure (on a board of about 90 measures)
SCATTER_S = (0.3, 0.06)
AGGREGATE_S = {SUMMARY_FIGURE: 1.0, HEATMAP_FIGURE: 0.9, TIERS_FIGURE: 0.6, COST_FIGURE: 0.5}


def _run(jobs: list[tuple[float, Callable, tuple]], helper: Executor | None) -> None:
    """Each (cost, function, arguments) job: all here without a ``helper``; else the largest first, each to the
    side (this process or ``helper``, an executor) with the less work so far, and wait for the helper's."""
    if helper is None:
        for _, draw, args in jobs:
            draw(*args)
        return
    here, there, mine, theirs = 0.0, 0.0, [], []
    for cost, draw, args in sorted(jobs, key=lambda job: -job[0]):
        if there < here:
            theirs.append(helper.submit(draw, *args))
            there += cost
        else:
            mine.append((draw, args))
            here += cost
    for draw, args in mine:
        draw(*args)
    for future in theirs:
        future.result()


@functools.cache
def _code() -> str:
    """The figure code's version: this module's and the number formatting's source, and the rendering libraries'
    versions. Editing either file, or upgrading a library, draws every figure again."""
    return figure_cache.sources_digest([Path(__file__), Path(inspect.getfile(fmt))],
                                       f"matplotlib {matplotlib.__version__}", f"pillow {PIL.__version__}",
                                       f"numpy {np.__version__}")
