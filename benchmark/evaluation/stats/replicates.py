"""Bootstrap replicates of tau and Psi as weighted pair sums, and the paired comparison of two measures.

A bootstrap replicate that draws model ``i`` ``c_i`` times contributes each pair ``(i, j)``
``c_i c_j`` times (pairs of two copies of one model are ties and contribute nothing), so the
replicates are weighted pair sums -- matrix products instead of a Python loop over resampled
DataFrames. :class:`_Design` holds everything that depends on the hyperparameters and the
bootstrap draw (pairs, cells, environments, conditioning sets, counts), built once and reused
for every measure, target and replicate by :func:`compare` and
:func:`benchmark.evaluation.stats.table.evaluate`. The paired test is Efron & Tibshirani's (1993,
Sec. 16), as :func:`benchmark.evaluation.stats.resampling.paired_difference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.stats.pairs import (
    _axis_cells,
    _AxisCells,
    _column_ranks,
    _conditioning_sets,
    _ConditioningSet,
    _Environments,
    _environments,
    _finite_mean,
    _pair_signs,
    _triu,
    configurations,
    default_axes,
)
from benchmark.evaluation.stats.ranks import _cell_tau_from_sums, _psi_from_cells, _tau_from_sums, kendall_tau
from benchmark.evaluation.stats.resampling import (
    _canonical,
    _check_bootstrap_args,
    bootstrap_counts,
    filter_converged,
    paired_difference,
    replicated,
)

# Largest float64 work array (elements) built at once for bootstrap pair weights (~64 MB).
_MAX_BLOCK_ELEMENTS = 8_000_000


@dataclass(frozen=True)
class _Design:
    """Everything that depends on the hyperparameters and the bootstrap draw only."""

    n: int
    axes: tuple[str, ...]
    i: np.ndarray  # all pairs i < j
    j: np.ndarray
    cells: tuple[_AxisCells, ...]
    envs: _Environments
    sets: tuple[_ConditioningSet, ...]
    counts: np.ndarray  # (n_boot, n) multiplicity of each model in each replicate


def _design(
    df: pd.DataFrame, axes: Sequence[str], n_boot: int, seed: int, max_set_size: int, resample: str = "seeds"
) -> _Design:
    """The pairs, Psi cells, environments and conditioning sets (|S| <= ``max_set_size``) of ``df`` and the
    bootstrap draw of :func:`bootstrap_counts`: no draw (0 replicates) without rows, with ``n_boot`` 0, or when
    ``resample="seeds"`` finds no seed replicates to resample."""
    n = len(df)
    i, j = _triu(n)
    configs = configurations(df)
    if n > 0 and n_boot > 0 and (resample != "seeds" or replicated(configs)):
        counts = bootstrap_counts(configs, n_boot, seed, resample)
    else:
        counts = np.zeros((0, n))
    return _Design(
        n=n,
        axes=tuple(axes),
        i=i,
        j=j,
        cells=tuple(_axis_cells(df, a) for a in axes),
        envs=_environments(df, axes),
        sets=tuple(_conditioning_sets(df, axes, max_set_size, i, j)),
        counts=counts,
    )


def _bootstrap_taus(design: _Design, sx: np.ndarray, vx: np.ndarray, sy: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """tau-b of every bootstrap replicate for several measures at once, (n_boot, measures).

    ``sx``/``vx``: (pairs, measures) signs/validity; ``sy``/``vy``: (pairs,). Replicate b
    weighs pair (i, j) by c_bi c_bj, which equals tau-b on the resampled rows.
    """
    n_boot, m = design.counts.shape[0], sx.shape[1]
    valid = vx & vy[:, None]
    cols = np.concatenate([sx * sy[:, None] * valid, np.abs(sx) * valid, np.abs(sy)[:, None] * valid], axis=1)
    sums = np.empty((n_boot, 3 * m))
    n_pairs = len(design.i)
    step = max(1, _MAX_BLOCK_ELEMENTS // max(n_pairs, 1))
    for start in range(0, n_boot, step):
        c = design.counts[start : start + step]
        w = c[:, design.i] * c[:, design.j]  # (chunk, pairs)
        sums[start : start + step] = w @ cols
    return _tau_from_sums(sums[:, :m], sums[:, m : 2 * m], sums[:, 2 * m :])


def _boot_taus_blocked(
    design: _Design, sx_all: np.ndarray, vx_all: np.ndarray, sy: np.ndarray, vy: np.ndarray
) -> np.ndarray:
    """:func:`_bootstrap_taus` over blocks of measures to bound memory, (n_boot, measures)."""
    n_boot, m = design.counts.shape[0], sx_all.shape[1]
    out = np.full((n_boot, m), np.nan)
    if n_boot == 0 or m == 0 or len(design.i) == 0:
        return out
    block = max(1, _MAX_BLOCK_ELEMENTS // (3 * len(design.i)))
    for start in range(0, m, block):
        sl = slice(start, start + block)
        out[:, sl] = _bootstrap_taus(design, sx_all[:, sl], vx_all[:, sl], sy, vy)
    return out


def _bootstrap_psi(design: _Design, pair_weights: Sequence[np.ndarray], rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Psi of every bootstrap replicate (rows resampled, cells re-formed), (n_boot,)."""
    n_boot = design.counts.shape[0]
    per_axis = np.full((n_boot, len(design.cells)), np.nan)
    for a, (cells, w) in enumerate(zip(design.cells, pair_weights)):
        if cells.n_cells == 0:
            continue
        sx, vx = _pair_signs(rx, cells.i, cells.j)
        sy, vy = _pair_signs(ry, cells.i, cells.j)
        valid = vx & vy
        num = np.add.reduceat(w * (sx * sy * valid), cells.starts, axis=1)
        dx = np.add.reduceat(w * (np.abs(sx) * valid), cells.starts, axis=1)
        dy = np.add.reduceat(w * (np.abs(sy) * valid), cells.starts, axis=1)
        per_axis[:, a] = _finite_mean(_cell_tau_from_sums(num, dx, dy), axis=1)
    return _finite_mean(per_axis, axis=1)


def _psi_weights(design: _Design) -> list[np.ndarray]:
    """Per axis, (n_boot, cell pairs) weight c_bi c_bj of each pair of a Psi cell in each replicate."""
    return [design.counts[:, c.i] * design.counts[:, c.j] for c in design.cells]


def _sign_columns(ranks: Sequence[np.ndarray], i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair signs and validity of several measures' ranks as columns, (pairs, measures) each."""
    signs = [_pair_signs(r, i, j) for r in ranks]
    if not signs:
        return np.zeros((len(i), 0)), np.zeros((len(i), 0), bool)
    return np.stack([s for s, _ in signs], axis=1), np.stack([v for _, v in signs], axis=1)


def compare(
    df: pd.DataFrame,
    measure_a: str,
    measure_b: str,
    target: str,
    axes: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    resample: str = "seeds",
    level: float = 0.95,
) -> dict:
    """Paired comparison of two measures on one zoo: tau_a - tau_b and Psi_a - Psi_b, each with
    the interval and p-value of :func:`paired_difference` over the same bootstrap replicates
    (:func:`bootstrap_counts`; converged models only, as
    :func:`benchmark.evaluation.stats.table.evaluate`). Returns
    ``{"tau": {...}, "psi": {...}}`` with keys diff, lo, hi, se, p."""
    _check_bootstrap_args(n_boot, level)
    base = _canonical(filter_converged(df)[0])
    axes = tuple(default_axes(base) if axes is None else axes)
    design = _design(base, axes, n_boot, seed, max_set_size=0, resample=resample)
    ry = _column_ranks(base, target)
    sy, vy = _pair_signs(ry, design.i, design.j)
    ranks = [_column_ranks(base, m) for m in (measure_a, measure_b)]
    sx, vx = _sign_columns(ranks, design.i, design.j)
    boot_t = _boot_taus_blocked(design, sx, vx, sy, vy)
    weights = _psi_weights(design)
    boot_p = [_bootstrap_psi(design, weights, r, ry) for r in ranks]
    tau = [kendall_tau(base, m, target) for m in (measure_a, measure_b)]
    psi = [_psi_from_cells(design.cells, r, ry)["psi"] for r in ranks]
    return {"tau": paired_difference(boot_t[:, 0], boot_t[:, 1], tau[0], tau[1], level),
            "psi": paired_difference(boot_p[0], boot_p[1], psi[0], psi[1], level)}
