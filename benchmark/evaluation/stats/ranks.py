"""Rank correlation of a measure with the target: Kendall's tau-b, Spearman's rho and the granulated Kendall Psi.

Sources: Kendall (1945), "The treatment of ties in ranking problems" (tau-b); Spearman's rho as
``scipy.stats.spearmanr``; Jiang et al., "Fantastic Generalization Measures and Where to Find Them"
(ICLR 2020, Sec. 4) for Psi. tau-b is computed from pair sums (:func:`_tau_from_sums`), which the
bootstrap replicates of :mod:`benchmark.evaluation.stats.replicates` reuse with weighted pairs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from benchmark.evaluation.stats.pairs import (
    _axis_cells,
    _AxisCells,
    _column_ranks,
    _finite_mean,
    _pair_signs,
    _ranks,
    _triu,
)


def _tau_from_sums(num, dx, dy) -> np.ndarray:
    """tau-b = num / sqrt(dx dy); NaN where a denominator is 0 (fewer than 2 rows, constant)."""
    num, dx, dy = (np.asarray(a, dtype=float) for a in (num, dx, dy))
    den = dx * dy
    out = np.full(np.broadcast(num, den).shape, np.nan)
    ok = den > 0
    out[ok] = np.clip(num[ok] / np.sqrt(den[ok]), -1.0, 1.0)
    return out


def _cell_tau_from_sums(num, dx, dy) -> np.ndarray:
    """tau-b of a Psi cell; a cell where the target varies but the measure is constant scores 0 (the measure
    carries no information along that axis, Jiang et al.'s convention) instead of being skipped."""
    tau = _tau_from_sums(num, dx, dy)
    return np.where((np.asarray(dx) == 0) & (np.asarray(dy) > 0), 0.0, tau)


def kendall_tau(df: pd.DataFrame, measure: str, target: str) -> float:
    """Kendall's tau-b between the measure and the target over the models of ``df``.

    tau_b = sum_{i<j} s^x_ij s^y_ij / sqrt(n_x n_y),  s^x_ij = sign(x_i - x_j),
    n_x = #pairs not tied in x (= n0 - n1), n_y likewise (Kendall 1945, "The treatment of
    ties in ranking problems"; identical to ``scipy.stats.kendalltau(variant="b")``).
    Rows where the measure or the target is NaN are dropped. NaN when fewer than 2 rows
    remain or one column is constant. Implemented with vectorised pair signs, O(n^2) memory.
    """
    x = df[measure].to_numpy(dtype=float)
    y = df[target].to_numpy(dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    i, j = _triu(len(x))
    sx, _ = _pair_signs(_ranks(x), i, j)
    sy, _ = _pair_signs(_ranks(y), i, j)
    tau = _tau_from_sums((sx * sy).sum(), np.abs(sx).sum(), np.abs(sy).sum())
    return float(tau)


def spearman_rho(df: pd.DataFrame, measure: str, target: str) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks; scipy.stats.spearmanr).

    Rows where the measure or the target is NaN are dropped; NaN when fewer than 2 rows
    remain or one column is constant.
    """
    x = df[measure].to_numpy(dtype=float)
    y = df[target].to_numpy(dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(scipy.stats.spearmanr(x, y).statistic)


# ---------------------------------------------------------------------------------------
# Granulated Kendall (Psi)
# ---------------------------------------------------------------------------------------
def _cell_taus(cells: _AxisCells, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """tau-b of every cell of one axis, (n_cells,), NaN where undefined."""
    sx, vx = _pair_signs(rx, cells.i, cells.j)
    sy, vy = _pair_signs(ry, cells.i, cells.j)
    valid = vx & vy
    n = cells.n_cells
    num = np.bincount(cells.cell, weights=sx * sy * valid, minlength=n)
    dx = np.bincount(cells.cell, weights=np.abs(sx) * valid, minlength=n)
    dy = np.bincount(cells.cell, weights=np.abs(sy) * valid, minlength=n)
    return _cell_tau_from_sums(num, dx, dy)


def _psi_from_cells(all_cells: Sequence[_AxisCells], rx: np.ndarray, ry: np.ndarray) -> dict:
    """Psi, psi_i per axis and the number of defined cells per axis from prebuilt cells and ranks
    (the result of :func:`granulated_kendall`)."""
    per_axis, n_cells = {}, {}
    for cells in all_cells:
        taus = _cell_taus(cells, rx, ry)
        per_axis[cells.axis] = float(_finite_mean(taus))
        n_cells[cells.axis] = int(np.isfinite(taus).sum())
    psi = float(_finite_mean(np.array(list(per_axis.values()), dtype=float))) if per_axis else np.nan
    return {"psi": psi, "per_axis": per_axis, "cells": n_cells}


def granulated_kendall(df: pd.DataFrame, measure: str, target: str, axes: Sequence[str]) -> dict:
    """Granulated Kendall coefficient Psi (Jiang et al., "Fantastic Generalization Measures
    and Where to Find Them", ICLR 2020, Sec. 4, eq. for psi_i and Psi).

    For axis i, models are grouped into cells that agree on every other ``hp.*`` column that
    varies in ``df`` (all of them, not only the other axes) except the seed, and inside a
    cell only pairs with different values of axis i count -- so every pair differs in axis i
    alone, up to its seeds. Seed replicates are repeats: a cell of two configurations with k
    seeds each holds all k^2 cross pairs (as Dziugaite et al.'s environments do), not k
    separate one-seed cells. tau_cell is Kendall's tau-b over those pairs (NaN rows dropped), and

        psi_i = mean over cells with a defined tau_cell,   Psi = mean over axes with a defined psi_i.

    (Jiang et al. average over all cells, m_i = |Theta_1 x ... x Theta_{i-1} x Theta_{i+1} ...|.)

    tau-b, not tau-a: Jiang et al. write the cell coefficient as tau over the pairs of the
    cell, concordant minus discordant over all pairs (tau-a), for continuous measures where
    ties do not occur. Here ties do occur -- replicates with equal test errors, measures that
    are constant along an axis (the parameter count along the learning rate), discrete
    measures -- and tau-a would score a cell of tied targets as a weak correlation. tau-b
    divides by the untied pairs of each variable instead, so a cell is +-1 exactly when the
    measure orders the untied pairs as the target does; without ties the two coincide.
    A cell where the target varies but the measure is constant scores tau_cell = 0, as in Jiang et
    al.'s count (no concordant minus discordant pairs): a measure that does not move along axis i
    (e.g. the parameter count along the learning-rate axis) gets psi_i = 0 there, not a pass.
    Cells without two valid models with different targets are undefined and skipped.

    Returns ``{"psi": Psi, "per_axis": {axis: psi_i}, "cells": {axis: number of cells with a
    defined tau}}``.
    """
    rx, ry = _column_ranks(df, measure), _column_ranks(df, target)
    return _psi_from_cells([_axis_cells(df, a) for a in axes], rx, ry)
