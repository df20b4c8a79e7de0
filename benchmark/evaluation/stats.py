"""Statistics of the evaluator: how well does a generalization measure rank a zoo of models?

Everything here is a pure function of a "zoo DataFrame" (one row per trained model) and
column names: hyperparameters ``hp.*``, metrics ``metric.*`` (``metric.gap_error``,
``metric.test_error``, ``metric.converged``, ``metric.test_size``, ...) and measures
``measure.*`` (NaN where the measure failed). No function mutates its input and no result
depends on the row order (the bootstrap puts rows in a canonical order before resampling).

Statistics (sources in each docstring):

* :func:`kendall_tau`, :func:`spearman_rho` -- rank correlation with the target.
* :func:`granulated_kendall` -- Jiang et al. (ICLR 2020) granulated Kendall Psi.
* :func:`conditional_mutual_information` -- Jiang et al. (2020) Sec. 5 / PGDL (NeurIPS 2020).
* :func:`robust_sign_error` -- Dziugaite et al. (NeurIPS 2020) environments and sign error.
* :func:`bootstrap_counts`, :func:`bootstrap_ci` -- percentile bootstrap that resamples seed
  replicates within configurations (or whole configurations), never rows across them.
* :func:`paired_difference`, :func:`holm`, :func:`compare` -- paired comparison of two
  measures on the same bootstrap replicates, Holm's multiplicity adjustment; :func:`tiers`
  groups the ranking into tiers that the paired test cannot split.
* :func:`kendall_w` -- Kendall's coefficient of concordance of several rankings (tasks).
* :func:`seed_noise`, :func:`split_half` -- the noise floor measured from the seed replicates,
  and the split-half reliability of the ranking.
* :func:`evaluate` -- all of the above for many measures, as the long leaderboard table, with
  every measure compared with the best one.

Implementation note: every statistic is a sum over *pairs of models* of products of pair
signs ``sign(x_i - x_j)``. Pair index arrays and their grouping (cells, environments,
conditioning cells) depend only on the hyperparameters, so :func:`evaluate` builds them once
(``_Design``) and reuses them for every measure, target and bootstrap replicate. A bootstrap
replicate that draws model ``i`` ``c_i`` times contributes each pair ``(i, j)`` ``c_i c_j``
times (pairs of two copies of one model are ties and contribute nothing), so replicates are
weighted pair sums -- matrix products instead of a Python loop over resampled DataFrames.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from benchmark.store.columns import CONVERGED as CONVERGED_COLUMN
from benchmark.store.columns import converged

__all__ = [
    "SEED_COLUMN",
    "CONVERGED_COLUMN",
    "TEST_SIZE_COLUMN",
    "default_axes",
    "kendall_tau",
    "spearman_rho",
    "granulated_kendall",
    "conditional_mutual_information",
    "cmi_null",
    "hoeffding_weight",
    "robust_sign_error",
    "bootstrap_ci",
    "bootstrap_counts",
    "configurations",
    "replicated",
    "paired_difference",
    "holm",
    "tiers",
    "compare",
    "kendall_w",
    "seed_noise",
    "split_half",
    "filter_converged",
    "evaluate",
]

SEED_COLUMN = "hp.seed"

TEST_SIZE_COLUMN = "metric.test_size"
HP_PREFIX = "hp."

# Scores closer than this are equal when choosing the arg-min conditioning set.
_TIE_TOLERANCE = 1e-12

# Largest float64 work array (elements) built at once for bootstrap pair weights (~64 MB).
_MAX_BLOCK_ELEMENTS = 8_000_000


# ---------------------------------------------------------------------------------------
# Small shared helpers
# ---------------------------------------------------------------------------------------
def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks of the non-NaN entries, NaN kept where the input is NaN.

    Pair signs of ranks equal pair signs of values (ties included), and ranks make
    ``+inf``/``-inf`` ordinary extreme values instead of producing ``inf - inf = NaN``.
    """
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape, np.nan)
    ok = ~np.isnan(values)
    out[ok] = scipy.stats.rankdata(values[ok])
    return out


def _column_ranks(df: pd.DataFrame, column: str) -> np.ndarray:
    return _ranks(df[column].to_numpy(dtype=float))


@lru_cache(maxsize=16)
def _triu(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of ``range(n)`` as two read-only index arrays."""
    i, j = np.triu_indices(n, k=1)
    i.setflags(write=False)
    j.setflags(write=False)
    return i, j


def _pair_signs(r: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sign(r_i - r_j)`` per pair (0 where either is NaN) and the pair-validity mask."""
    a, b = r[i], r[j]
    valid = ~(np.isnan(a) | np.isnan(b))
    s = np.where(valid, np.sign(np.where(valid, a - b, 0.0)), 0.0)
    return s, valid


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


def _finite_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the finite entries along ``axis``; NaN where there are none (no warning)."""
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    count = ok.sum(axis=axis)
    total = np.where(ok, values, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _summary(values: np.ndarray) -> dict:
    """Mean, 90th percentile (linear interpolation) and max of the finite values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": np.nan, "p90": np.nan, "max": np.nan, "n_envs": 0}
    return {
        "mean": float(values.mean()),
        "p90": float(np.percentile(values, 90)),
        "max": float(values.max()),
        "n_envs": int(values.size),
    }


def _group_codes(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Integer code per row of the joint value of ``columns`` (sorted keys, NaN is a value)."""
    if len(columns) == 0:
        return np.zeros(len(df), dtype=np.int64)
    return df.groupby(list(columns), dropna=False, sort=True).ngroup().to_numpy(dtype=np.int64)


def _varying_hp_columns(df: pd.DataFrame) -> list[str]:
    """``hp.*`` columns that take at least two values (NaN counts as a value)."""
    return [c for c in df.columns if c.startswith(HP_PREFIX) and df[c].nunique(dropna=False) >= 2]


def default_axes(df: pd.DataFrame) -> list[str]:
    """Every ``hp.*`` column that takes >= 2 values, except the seed column ``hp.seed``."""
    return [c for c in _varying_hp_columns(df) if c != SEED_COLUMN]


def _within_group_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``(i, j)``, ``i < j``, of rows with equal ``codes``; returns ``(i, j, code)``.

    Pairs come out sorted by code (each group's pairs contiguous).
    """
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(codes) else []
    ends = np.r_[starts[1:], len(codes)] if len(codes) else []
    pi, pj, pg = [], [], []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        a, b = _triu(int(e - s))
        members = np.sort(order[s:e])
        pi.append(members[a])
        pj.append(members[b])
        pg.append(np.full(len(a), sorted_codes[s], dtype=np.int64))
    if not pi:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(pi), np.concatenate(pj), np.concatenate(pg)


def _compact(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel integer keys as ``0..K-1`` in sorted order; returns (labels, K)."""
    uniq, labels = np.unique(keys, return_inverse=True)
    return labels.astype(np.int64), len(uniq)


def _segment_starts(sorted_labels: np.ndarray) -> np.ndarray:
    if len(sorted_labels) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])


# ---------------------------------------------------------------------------------------
# Pair designs: which pairs enter each statistic (depend on hyperparameters only)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _AxisCells:
    """Pairs of models that differ in ``axis`` only, grouped by cell (for Psi)."""

    axis: str
    i: np.ndarray
    j: np.ndarray
    cell: np.ndarray  # (pairs,) cell label 0..n_cells-1, sorted
    n_cells: int
    starts: np.ndarray  # (n_cells,) first pair of each cell


def _axis_cells(df: pd.DataFrame, axis: str) -> _AxisCells:
    """Cells of Jiang et al.'s granulated Kendall for one axis.

    A cell is a set of configurations that agree on every *other* varying ``hp.*`` column
    but the seed; inside a cell only pairs with different ``axis`` values are used, so every
    pair differs in ``axis`` (and, between seed replicates, in its seed) and in nothing else.
    The seeds are repeats, not an axis: a cell holds every pair of replicates of its
    configurations, so its tau is an average over the seed noise rather than one draw of it.
    """
    others = [c for c in _varying_hp_columns(df) if c not in (axis, SEED_COLUMN)]
    i, j, g = _within_group_pairs(_group_codes(df, others))
    axis_codes = _group_codes(df, [axis])
    keep = axis_codes[i] != axis_codes[j]
    i, j, g = i[keep], j[keep], g[keep]
    cell, n_cells = _compact(g)
    return _AxisCells(axis, i, j, cell, n_cells, _segment_starts(cell))


@dataclass(frozen=True)
class _Environments:
    """Pairs of models from two configurations that differ in exactly one axis."""

    i: np.ndarray
    j: np.ndarray
    env: np.ndarray  # (pairs,) environment label 0..n_envs-1
    n_envs: int
    env_axis: np.ndarray  # (n_envs,) index into ``axes``
    axes: tuple[str, ...]


def _environments(df: pd.DataFrame, axes: Sequence[str]) -> _Environments:
    """Environments of Dziugaite et al. (2020).

    A configuration is the joint value of every varying ``hp.*`` column except the seed
    (``hp.seed``). An environment is an unordered pair of configurations that differ in
    exactly one axis; its pairs are all (model, model') with model in one configuration and
    model' in the other, so seeds act as Monte-Carlo repeats inside an environment.
    """
    config_cols = [c for c in _varying_hp_columns(df) if c != SEED_COLUMN]
    config = _group_codes(df, config_cols)
    n_config = int(config.max()) + 1 if len(config) else 0
    parts_i, parts_j, parts_key, parts_axis = [], [], [], []
    for a, axis in enumerate(axes):
        others = [c for c in config_cols if c != axis]
        i, j, _ = _within_group_pairs(_group_codes(df, others))
        axis_codes = _group_codes(df, [axis])
        keep = axis_codes[i] != axis_codes[j]
        i, j = i[keep], j[keep]
        lo, hi = np.minimum(config[i], config[j]), np.maximum(config[i], config[j])
        parts_i.append(i)
        parts_j.append(j)
        parts_key.append(lo * n_config + hi)
        parts_axis.append(np.full(len(i), a, dtype=np.int64))
    if not parts_i:
        empty = np.zeros(0, dtype=np.int64)
        return _Environments(empty, empty, empty, 0, empty, tuple(axes))
    i, j = np.concatenate(parts_i), np.concatenate(parts_j)
    key, pair_axis = np.concatenate(parts_key), np.concatenate(parts_axis)
    env, n_envs = _compact(key)
    env_axis = np.zeros(n_envs, dtype=np.int64)
    env_axis[env] = pair_axis  # a pair of configurations differs in one axis only
    return _Environments(i, j, env, n_envs, env_axis, tuple(axes))


@dataclass(frozen=True)
class _ConditioningSet:
    """Cell key ``U_S = (values of S for model i, values of S for model j)`` per pair."""

    axes: tuple[str, ...]
    key: np.ndarray  # (pairs,) code_S[i] * n_values + code_S[j] for the pair (i, j), i < j
    n_values: int  # distinct joint values of S over models
    codes: np.ndarray  # (models,) code_S of each model


def _conditioning_sets(
    df: pd.DataFrame, axes: Sequence[str], max_set_size: int, i: np.ndarray, j: np.ndarray
) -> list[_ConditioningSet]:
    """Every subset S of ``axes`` with ``|S| <= max_set_size`` (empty set first)."""
    out = []
    for size in range(0, max_set_size + 1):
        for subset in combinations(axes, size):
            codes = _group_codes(df, list(subset))
            k = int(codes.max()) + 1 if len(codes) else 1
            out.append(_ConditioningSet(tuple(subset), codes[i] * k + codes[j], k, codes))
    return out


# ---------------------------------------------------------------------------------------
# Kendall tau and Spearman rho
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# Conditional mutual information (Jiang et al. 2020 Sec. 5; PGDL)
# ---------------------------------------------------------------------------------------
def _cmi_tables(conditioning: _ConditioningSet, valid: np.ndarray, sign_code: np.ndarray) -> np.ndarray:
    """Counts over *ordered* pairs: (cells, 2 [V_g = -1, +1], 3 [V_mu = -1, 0, +1]).

    ``valid``: (pairs,) mask of the pairs ``i < j`` used; ``sign_code``: (valid pairs,)
    ``3 [V_g > 0] + V_mu + 1``. The table is completed by the mirror pair ``(j, i)``, which has
    the cell ``(value_j, value_i)`` and both signs flipped.
    """
    k = conditioning.n_values
    flat = conditioning.key[valid] * 6 + sign_code
    table = np.bincount(flat, minlength=k * k * 6).reshape(k, k, 2, 3).astype(float)
    table = table + table.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
    return table.reshape(k * k, 2, 3)


def _normalised_cmi(table: np.ndarray) -> float:
    """I(V_mu; V_g | U) / H(V_g | U) in bits from counts (cells, 2, 3); NaN if H = 0."""
    return float(_normalised_cmi_many(table[None])[0])


def _normalised_cmi_many(tables: np.ndarray) -> np.ndarray:
    """:func:`_normalised_cmi` of each of several count tables (tables, cells, 2, 3) at once. An empty cell
    has weight p(U_S) = 0 and adds nothing; a table without pairs, or with H = 0, gives NaN."""
    n_cell = tables.sum(axis=(2, 3))  # (tables, cells)
    total = n_cell.sum(axis=1)
    p_cell = n_cell / np.where(total > 0, total, 1.0)[:, None]  # p(U_S), weight of a cell = its share of pairs
    joint = tables / np.where(n_cell > 0, n_cell, 1.0)[:, :, None, None]  # p(V_g, V_mu | U_S)
    pg = joint.sum(axis=3)  # p(V_g | U_S)
    pm = joint.sum(axis=2)  # p(V_mu | U_S)
    indep = pg[:, :, :, None] * pm[:, :, None, :]
    pos = joint > 0
    ratio = np.where(pos, joint, 1.0) / np.where(pos, indep, 1.0)
    mi_cell = np.where(pos, joint * np.log2(ratio), 0.0).sum(axis=(2, 3))
    h_cell = -np.where(pg > 0, pg * np.log2(np.where(pg > 0, pg, 1.0)), 0.0).sum(axis=2)
    mi, h = (p_cell * mi_cell).sum(axis=1), (p_cell * h_cell).sum(axis=1)
    defined = (total > 0) & (h > 1e-12)
    return np.where(defined, np.clip(mi / np.where(defined, h, 1.0), 0.0, 1.0), np.nan)


def _cmi_from_sets(
    sets: Sequence[_ConditioningSet], vg: np.ndarray, vm: np.ndarray, valid: np.ndarray
) -> dict:
    sign_code = ((vg[valid] > 0) * 3 + vm[valid] + 1).astype(np.int64)
    per_set = {c.axes: _normalised_cmi(_cmi_tables(c, valid, sign_code)) for c in sets}
    finite = {s: v for s, v in per_set.items() if np.isfinite(v)}
    if not finite:
        return {"cmi": float("nan"), "set": None, "per_set": per_set}
    lowest = min(finite.values())
    # first set (smaller sets first) within rounding of the minimum, so that float noise
    # does not pick the arg-min among sets with equal scores
    best = next(s for s, v in finite.items() if v <= lowest + _TIE_TOLERANCE)
    return {"cmi": lowest, "set": best, "per_set": per_set}


def _cmi_signs(
    rm: np.ndarray, rg: np.ndarray, i: np.ndarray, j: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vm, vmv = _pair_signs(rm, i, j)
    vg, vgv = _pair_signs(rg, i, j)
    return vg, vm, vmv & vgv & (vg != 0)


def conditional_mutual_information(
    df: pd.DataFrame,
    measure: str,
    target: str,
    axes: Sequence[str],
    max_set_size: int = 2,
) -> dict:
    """Conditional-independence score of Jiang et al. (ICLR 2020, Sec. 5) and the PGDL
    competition (Jiang et al., NeurIPS 2020 competition track).

    Over pairs of models (i, j): V_mu = sign(mu_i - mu_j), V_g = sign(g_i - g_j), and U_S =
    (values of the axes in S for model i, the same for model j). With p(U_S) the share of
    pairs in cell U_S,

        I(V_mu; V_g | U_S) = sum_u p(u) sum_{a,b} p(a, b | u) log2[p(a, b | u) / (p(a | u) p(b | u))]
        H(V_g | U_S)       = -sum_u p(u) sum_b p(b | u) log2 p(b | u)
        score              = min over S subset of axes, |S| <= max_set_size (empty set included)
                             of I(V_mu; V_g | U_S) / H(V_g | U_S).

    1 means the measure orders every pair like the target in every cell; 0 that, given the
    best conditioning set of hyperparameters, it carries no information about the order.

    Choices (where the PGDL scoring kit differs):

    * Pairs are all ordered pairs i != j of distinct models, i.e. each unordered pair once in
      each orientation. The kit also counts every model paired with itself (always "-gap,
      -measure"), which inflates the apparent agreement. Using both orientations makes the
      score independent of the row order and V_g balanced without cell conditioning.
    * Pairs whose target values tie (V_g = 0) are dropped: there is no order to predict. The
      measure keeps three values {-1, 0, +1}; a measure tie is not credited (the kit folds
      ties into "-").
    * Cells are weighted by their share of pairs, p(U_S) as in Jiang et al.'s formula; the kit
      averages MI and H over all value combinations without weights, empty cells included.
    * The kit minimises over |S| = 2 only; here over |S| <= max_set_size including S = {}.
      A set with H(V_g | U_S) = 0 (S fixes the order of every pair) has no defined score and
      is skipped.
    * Rows with NaN in the measure or the target are dropped.
    * The arg-min is the first set in enumeration order (by size, then in the order of
      ``axes``) whose score is within 1e-12 of the minimum.

    Returns ``{"cmi": score, "set": arg-min S as a tuple of axes (None if undefined),
    "per_set": {S: score}}``.
    """
    i, j = _triu(len(df))
    sets = _conditioning_sets(df, axes, max_set_size, i, j)
    vg, vm, valid = _cmi_signs(_column_ranks(df, measure), _column_ranks(df, target), i, j)
    return _cmi_from_sets(sets, vg, vm, valid)


def _permutations(n: int, n_perm: int, seed: int) -> np.ndarray:
    """(n_perm, n) row permutations from ``numpy.random.default_rng(seed)``, shared by every measure."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(n_perm)]) if n_perm else np.zeros((0, n), np.int64)


def _cmi_many(sets: Sequence[_ConditioningSet], rms: np.ndarray, rg: np.ndarray, i: np.ndarray, j: np.ndarray
              ) -> np.ndarray:
    """The score of :func:`_cmi_from_sets` for each row of ``rms`` (copies, models), one measure's ranks per row
    (the permutation null), all at once. One ``bincount`` counts every copy's pairs by (joint configuration of
    all the sets' axes for model i, the same for model j, signs); each set's table sums those counts over the
    configurations (integer counts, so exactly its own bincount), and the normalised CMIs of all tables come in
    one pass (padded to the largest set's cells: empty cells of weight 0)."""
    copies = len(rms)
    if copies == 0 or not sets:
        return np.full(copies, np.nan)
    codes = np.stack([c.codes for c in sets], 1)  # (models, sets)
    configs, joint = np.unique(codes, axis=0, return_inverse=True)
    joint = joint.reshape(-1)
    big = len(configs)
    vg, vgv = _pair_signs(rg, i, j)
    a, b = rms[:, i], rms[:, j]  # (copies, pairs)
    valid = ~(np.isnan(a) | np.isnan(b)) & (vgv & (vg != 0))[None, :]
    sign = (a > b).astype(np.int64) - (a < b) + ((vg > 0) * 3 + 1)[None, :]  # 3 [V_g > 0] + V_mu + 1
    key = (joint[i] * big + joint[j]) * 6  # (pairs,)
    flat = np.where(valid, np.arange(copies)[:, None] * (big * big * 6) + key[None, :] + sign, copies * big * big * 6)
    counts = np.bincount(flat.ravel(), minlength=copies * big * big * 6 + 1)[:-1]
    counts = counts.reshape(copies, big, big, 6).astype(float)
    width = max(c.n_values for c in sets) ** 2
    tables = np.zeros((len(sets), copies, width, 2, 3))
    for s, c in enumerate(sets):
        k = c.n_values
        onehot = np.zeros((big, k))
        onehot[np.arange(big), configs[:, s]] = 1.0
        t = np.einsum("cuvx,ua,vb->cabx", counts, onehot, onehot, optimize=True).reshape(copies, k, k, 2, 3)
        tables[s, :, :k * k] = (t + t.transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]).reshape(copies, k * k, 2, 3)
    per_set = _normalised_cmi_many(tables.reshape(len(sets) * copies, width, 2, 3)).reshape(len(sets), copies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a copy with every set undefined: NaN
        return np.nanmin(per_set, axis=0)


def _cmi_null_from(
    sets: Sequence[_ConditioningSet], rm: np.ndarray, rg: np.ndarray, i: np.ndarray, j: np.ndarray,
    perms: np.ndarray, observed: float,
) -> dict:
    null = _cmi_many(sets, rm[perms], rg, i, j)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return {"null_mean": float("nan"), "null_p95": float("nan"), "p": float("nan"), "n_perm": int(null.size)}
    return {"null_mean": float(null.mean()), "null_p95": float(np.percentile(null, 95)),
            "p": float((1 + np.sum(null >= observed - _TIE_TOLERANCE)) / (1 + null.size)), "n_perm": int(null.size)}


def cmi_null(
    df: pd.DataFrame, measure: str, target: str, axes: Sequence[str], *, n_perm: int = 50, seed: int = 0,
    max_set_size: int = 2,
) -> dict:
    """A permutation null for :func:`conditional_mutual_information`, so that a value can be read.

    The measure's values are permuted across the models ``n_perm`` times (seeded; the same
    permutations for every measure), which keeps its distribution and the design but breaks any
    link with the target, and the score is recomputed each time. Returns the observed ``cmi``,
    the null's mean ``null_mean`` (the chance level: the minimum over conditioning sets of a
    noisy estimate is above 0 even without information) and 95th percentile ``null_p95``, and
    the permutation p-value p = (1 + #{null >= observed}) / (1 + n_perm) (Phipson & Smyth 2010).
    NaN where the score is undefined.
    """
    i, j = _triu(len(df))
    sets = _conditioning_sets(df, axes, max_set_size, i, j)
    rm, rg = _column_ranks(df, measure), _column_ranks(df, target)
    observed = _cmi_from_sets(sets, *_cmi_signs(rm, rg, i, j))["cmi"]
    return {"cmi": observed, **_cmi_null_from(sets, rm, rg, i, j, _permutations(len(df), n_perm, seed), observed)}


# ---------------------------------------------------------------------------------------
# Robust sign error (Dziugaite et al. 2020)
# ---------------------------------------------------------------------------------------
def hoeffding_weight(delta, n_i, n_j=None) -> np.ndarray:
    """Probability bound that an observed difference of two test-set estimates has the right sign.

    Each error rate is a mean of n bounded losses in [0, 1]; by Hoeffding's inequality
    P(|e_hat - e| >= t) <= 2 exp(-2 n t^2). If both estimates are within |delta|/2 of the truth
    the observed sign of the difference is right, so with independent test sets

        w = (1 - 2 exp(-n_i delta^2 / 2))_+ * (1 - 2 exp(-n_j delta^2 / 2))_+ ,

    which for n_i = n_j is the weight of Dziugaite et al. (NeurIPS 2020),
    ``max(0, 1 - 2 exp(-2 n (delta/2)^2))^2`` (their filter additionally subtracts 0.5). The
    bound assumes the target is an error rate in [0, 1]; for a loss it is a heuristic.
    ``delta`` = 0 gives 0; n -> inf gives 1. ``n_j`` defaults to ``n_i``.
    """
    delta = np.abs(np.asarray(delta, dtype=float))
    n_i = np.asarray(n_i, dtype=float)
    n_j = n_i if n_j is None else np.asarray(n_j, dtype=float)

    def one(n):
        return np.maximum(0.0, 1.0 - 2.0 * np.exp(-n * delta**2 / 2.0))

    return one(n_i) * one(n_j)


MIN_WEIGHT = 0.5  # Dziugaite et al.'s filter: a pair counts with weight (w - 0.5)_+
MIN_ESS = 4.0  # smallest effective sample size (Sum w)^2 / Sum w^2 of a usable environment


def _environment_sign_errors(
    envs: _Environments,
    rm: np.ndarray,
    rg: np.ndarray,
    g: np.ndarray,
    n_test: np.ndarray,
    *,
    min_weight: float = MIN_WEIGHT,
    min_ess: float = MIN_ESS,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sign error of every environment, (n_envs,), NaN where it is not usable, and the
    mask of the environments left out for an effective sample size below ``min_ess``."""
    i, j = envs.i, envs.j
    sm, vm = _pair_signs(rm, i, j)
    sg, vg = _pair_signs(rg, i, j)
    w = hoeffding_weight(g[i] - g[j], n_test[i], n_test[j])
    w = np.where(vm & vg & np.isfinite(w), np.maximum(w - min_weight, 0.0), 0.0)
    err = 0.5 * (1.0 - sm * sg)  # 0 agree, 1 disagree, 1/2 measure tie
    total = np.bincount(envs.env, weights=w, minlength=envs.n_envs)
    total_sq = np.bincount(envs.env, weights=w * w, minlength=envs.n_envs)
    wrong = np.bincount(envs.env, weights=w * err, minlength=envs.n_envs)
    ess = np.where(total_sq > 0, total**2 / np.where(total_sq > 0, total_sq, 1.0), 0.0)
    usable = (total > 0) & ((ess > min_ess) | np.isclose(ess, min_ess))
    out = np.full(envs.n_envs, np.nan)
    out[usable] = wrong[usable] / total[usable]
    return out, ~usable


def _sign_error_summary(envs: _Environments, errors: np.ndarray, below: np.ndarray | None = None) -> dict:
    below = np.zeros(envs.n_envs, dtype=bool) if below is None else below
    out = _summary(errors)
    out["n_below"] = int(below.sum())
    out["per_axis"] = {}
    for k, a in enumerate(envs.axes):
        on_axis = envs.env_axis == k
        out["per_axis"][a] = {**_summary(errors[on_axis]), "n_below": int(below[on_axis].sum())}
    return out


def robust_sign_error(
    df: pd.DataFrame,
    measure: str,
    target: str,
    axes: Sequence[str],
    test_size_col: str = TEST_SIZE_COLUMN,
    *,
    min_weight: float = MIN_WEIGHT,
    min_ess: float = MIN_ESS,
) -> dict:
    """Weighted sign error over environments (Dziugaite et al., "In Search of Robust Measures
    of Generalization", NeurIPS 2020, Sec. 3-4, and their code,
    nitarshan/robust-generalization-measures, ``create_environments.py`` and
    ``figure_cdf_all_measures.py``).

    Environments: a configuration is the joint value of every varying ``hp.*`` column but the
    seed; an environment e is an unordered pair of configurations differing in exactly one
    axis (its axis), and its pairs are all cross pairs of their models (the seed replicates).
    For a pair, with Delta_g = g_i - g_j and Delta_mu = mu_i - mu_j,

        err_ij = (1 - sign(Delta_mu) sign(Delta_g)) / 2           (1/2 on a measure tie)
        w_ij   = (hoeffding_weight(Delta_g, n_i, n_j) - min_weight)_+    (n = ``test_size_col``)
        SE(e)  = sum_e w_ij err_ij / sum_e w_ij,
        ESS(e) = (sum_e w_ij)^2 / sum_e w_ij^2.

    The (w - 1/2)_+ filter drops pairs whose gap difference could be test-set noise with
    probability above 1/2, as in the authors' code. An environment is usable when its
    effective sample size is at least ``min_ess`` (the authors' default is 12 on zoos with
    more seeds; with k seeds an environment has at most k^2 pairs, 9 for k = 3, hence the
    default 4 here); the others are counted (``n_below``), never silently dropped, and an
    axis with no usable environment reports ``n_envs`` 0 and NaN. Reported: mean, 90th
    percentile (linear interpolation) and max (the paper's robust, worst-case view) of SE(e)
    over the usable environments, overall and per axis.

    Returns ``{"mean", "p90", "max", "n_envs", "n_below", "per_axis": {axis: {"mean", "p90",
    "max", "n_envs", "n_below"}}}``.
    """
    envs = _environments(df, axes)
    errors, below = _environment_sign_errors(
        envs,
        _column_ranks(df, measure),
        _column_ranks(df, target),
        df[target].to_numpy(dtype=float),
        df[test_size_col].to_numpy(dtype=float),
        min_weight=min_weight,
        min_ess=min_ess,
    )
    return _sign_error_summary(envs, errors, below)


# ---------------------------------------------------------------------------------------
# Bootstrap and filtering
# ---------------------------------------------------------------------------------------
def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by every column (object columns as strings), index reset.

    Makes resampling independent of the input's row order.
    """
    if len(df) == 0 or len(df.columns) == 0:
        return df.reset_index(drop=True)
    keys = pd.DataFrame(
        {
            k: (df[c].astype(str) if pd.api.types.is_object_dtype(df[c]) else df[c]).to_numpy()
            for k, c in enumerate(df.columns)
        }
    )
    order = keys.sort_values(list(keys.columns), kind="mergesort", na_position="last").index
    return df.iloc[order.to_numpy()].reset_index(drop=True)


RESAMPLING = ("seeds", "configurations")


def configurations(df: pd.DataFrame) -> np.ndarray:
    """Integer code of each row's configuration: the joint value of every varying ``hp.*``
    column but the seed (sorted keys). Rows with equal codes are seed replicates."""
    return _group_codes(df, [c for c in _varying_hp_columns(df) if c != SEED_COLUMN])


def replicated(configs: np.ndarray) -> bool:
    """Whether any configuration holds at least two rows (seed replicates)."""
    return bool(len(configs)) and int(np.bincount(configs).max()) >= 2


def _multiplicities(draw: np.ndarray, k: int) -> np.ndarray:
    """(n_boot, k) counts of each value 0..k-1 in each row of ``draw`` (n_boot, draws)."""
    n_boot = draw.shape[0]
    flat = (draw + k * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * k).reshape(n_boot, k).astype(float)


def bootstrap_counts(configs: np.ndarray, n_boot: int, seed: int, resample: str = "seeds") -> np.ndarray:
    """(n_boot, n) multiplicity of each row in each bootstrap replicate; rows are never drawn
    across configurations (``configs``: :func:`configurations` of the rows).

    * ``"seeds"`` (the default): within each configuration of k >= 2 rows, k - 1 rows are drawn
      with replacement -- Rao & Wu's rescaled bootstrap for stratified samples (JASA 83, 1988)
      with the configurations as strata and m = k - 1, whose weights k/(k-1) times the counts
      make the bootstrap variance of a linear statistic unbiased; the plain k-out-of-k draw
      underestimates it by the factor (k-1)/k, 2/3 at 3 seeds, which would make the paired test
      reject too often. The common factor k/(k-1) cancels in tau and Psi (ratios of pair sums),
      so the counts are returned unscaled. The design (which configurations exist) is kept and
      only the seed noise is resampled, the variability a rerun with other seeds would show. A
      configuration with one row keeps it in every replicate, so with one seed per
      configuration every replicate is the data itself.
    * ``"configurations"``: G configurations are drawn with replacement out of the G present,
      each bringing all of its rows (the cluster bootstrap; Davison & Hinkley 1997, Sec. 3.8).
      It also resamples the design, i.e. asks how the result would vary over other grids.

    One ``numpy.random.default_rng(seed)`` stream, configurations in code order.
    """
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
    configs = np.asarray(configs, dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(configs)))
    groups = [np.flatnonzero(configs == g) for g in np.unique(configs)]
    if resample == "seeds":
        for rows in groups:
            k = len(rows)
            if k == 1:
                counts[:, rows] = 1.0
            else:
                counts[:, rows] = _multiplicities(rng.integers(0, k, size=(n_boot, k - 1)), k)
    else:
        per = _multiplicities(rng.integers(0, len(groups), size=(n_boot, len(groups))), len(groups))
        for g, rows in enumerate(groups):
            counts[:, rows] = per[:, g : g + 1]
    return counts


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    reps = np.asarray(replicates, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _check_bootstrap_args(n_boot: int, level: float) -> None:
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_ci(
    df: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    resample: str = "seeds",
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` (Efron 1979), resampling seed
    replicates within configurations (or whole configurations): :func:`bootstrap_counts`.

    The rows are put in a canonical order (sorted by all columns), ``n_boot`` replicates are
    drawn by :func:`bootstrap_counts` and ``statistic`` is evaluated on each (a row drawn c
    times appears c times). Returns the ``(1-level)/2`` and ``(1+level)/2`` quantiles (linear
    interpolation) of the finite replicates; ``(nan, nan)`` if none is finite, ``df`` is
    empty, ``n_boot`` is 0, or ``resample="seeds"`` and no configuration has two seeds (there
    is no replicate noise to resample). Deterministic under ``seed`` and independent of the
    row order of ``df``.
    """
    _check_bootstrap_args(n_boot, level)
    if len(df) == 0 or n_boot == 0:
        return float("nan"), float("nan")
    base = _canonical(df)
    configs = configurations(base)
    if resample == "seeds" and not replicated(configs):
        return float("nan"), float("nan")
    counts = bootstrap_counts(configs, n_boot, seed, resample).astype(np.int64)
    rows = np.arange(len(base))
    reps = [statistic(base.iloc[np.repeat(rows, c)].reset_index(drop=True)) for c in counts]
    return _percentile_interval(np.array(reps, dtype=float), level)


def paired_difference(
    reps_a: np.ndarray, reps_b: np.ndarray, a: float, b: float, level: float = 0.95
) -> dict:
    """The difference a - b of two statistics computed on the same data, with an interval and
    a two-sided p-value from their paired bootstrap replicates.

    The replicates ``reps_a``, ``reps_b`` come from the SAME resamples, so their difference
    d_r = a_r - b_r carries the correlation of the two estimates (two measures of one zoo are
    strongly correlated; comparing their separate intervals ignores it). With s the standard
    deviation of the finite d_r (ddof 1), z = (a - b)/s and

        interval = (a - b) -+ Phi^-1((1 + level)/2) s,       p = 2 (1 - Phi(|z|))

    (the bootstrap standard-error test; Efron & Tibshirani 1993, Sec. 16). The normal form
    gives p-values finer than 1/n_boot, which the Holm correction over many measures needs.
    NaN where fewer than two replicates are finite or s = 0 with a = b; p = 0 when s = 0 and
    a != b.
    """
    d = np.asarray(reps_a, dtype=float) - np.asarray(reps_b, dtype=float)
    d = d[np.isfinite(d)]
    diff = float(a - b)
    nan = {"diff": diff, "lo": np.nan, "hi": np.nan, "se": np.nan, "p": np.nan}
    if not np.isfinite(diff) or d.size < 2:
        return nan
    se = float(d.std(ddof=1))
    if se == 0.0:
        return nan if diff == 0.0 else {"diff": diff, "lo": diff, "hi": diff, "se": 0.0, "p": 0.0}
    half = float(scipy.stats.norm.ppf((1.0 + level) / 2.0)) * se
    p = float(2.0 * scipy.stats.norm.sf(abs(diff) / se))
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "se": se, "p": p}


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of p-values for multiple comparisons (Holm 1979).

    With the m finite p-values in ascending order p_(1) <= ... <= p_(m), the adjusted values
    are p~_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)); rejecting where p~ <= alpha controls
    the family-wise error rate at alpha under any dependence. NaN entries stay NaN and do not
    count in m.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def tiers(points: Sequence[float], reps: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Tier numbers (1, 2, ...) of a ranking, each tier a run of consecutive ranks that the paired test
    cannot split from its first member, in the manner of the groups joined by a bar in a
    critical-difference diagram (Demsar, JMLR 2006).

    ``points[k]`` is measure k's statistic (higher is better) and ``reps[:, k]`` its bootstrap
    replicates, all on the same resamples. Greedy from the top: the best measure not yet placed
    leads a new tier; the measures ranked after it are compared with it by :func:`paired_difference`,
    Holm-adjusted over all of them, and join its tier down to the first one the test separates from
    the leader at ``alpha``; that one leads the next tier. Tier 1 is therefore #1 and the measures
    ranked right after it that cannot be told apart from it (``tied_with_best`` may also mark a
    measure further down whose estimate happens to be loosely correlated with #1's). Demsar's
    diagram tests average ranks over many datasets with the Nemenyi test; on one zoo the replicates
    are the seeds, so the test here is the paired bootstrap. 0 marks a non-finite point.
    """
    points = np.asarray(points, dtype=float)
    reps = np.asarray(reps, dtype=float)
    out = np.zeros(len(points), dtype=int)
    left = [k for k in np.argsort(-points, kind="stable") if np.isfinite(points[k])]
    tier = 0
    while left:
        tier += 1
        leader, rest = left[0], left[1:]
        p = holm([paired_difference(reps[:, k], reps[:, leader], points[k], points[leader])["p"] for k in rest])
        size = 1
        for pk in p:
            if np.isfinite(pk) and pk <= alpha:
                break
            size += 1
        for k in left[:size]:
            out[k] = tier
        left = left[size:]
    return out


def kendall_w(scores) -> dict:
    """Kendall's coefficient of concordance W of m rankings of the same n items.

    ``scores`` is (m, n): row r scores the n items (higher or lower, only the order counts).
    With R_i the sum over rows of item i's rank (average ranks for ties), S = sum_i (R_i - mean R)^2
    and T_r = sum over the tie groups of row r of (t^3 - t),

        W = 12 S / (m^2 (n^3 - n) - m sum_r T_r),   chi2 = m (n - 1) W,  p = P(chi2_{n-1} >= chi2)

    (Kendall & Babington Smith 1939, with the tie correction; chi2 is Friedman's statistic, as
    ``scipy.stats.friedmanchisquare`` computes it). W = 1: identical rankings; 0: no agreement.
    Items with a non-finite score in any row are dropped.
    """
    x = np.asarray(scores, dtype=float)
    x = x[:, np.all(np.isfinite(x), axis=0)]
    m, n = x.shape
    nan = {"w": np.nan, "chi2": np.nan, "p": np.nan, "m": m, "n": n}
    if m < 2 or n < 2:
        return nan
    ranks = np.vstack([scipy.stats.rankdata(row) for row in x])
    r = ranks.sum(axis=0)
    s = float(((r - r.mean()) ** 2).sum())
    ties = sum(float((c**3 - c).sum()) for c in (np.unique(row, return_counts=True)[1] for row in x))
    denom = m**2 * (n**3 - n) - m * ties
    if denom <= 0:
        return nan
    w = 12.0 * s / denom
    chi2 = m * (n - 1) * w
    return {"w": w, "chi2": chi2, "p": float(scipy.stats.chi2.sf(chi2, n - 1)), "m": m, "n": n}


def seed_noise(df: pd.DataFrame, column: str) -> dict:
    """The seed-to-seed noise of ``column`` measured from the replicates, against its spread across
    configurations.

    With y_gs the value of seed s of configuration g (k_g seeds), the pooled within-configuration
    standard deviation is

        sd_seed = sqrt( sum_g sum_s (y_gs - ybar_g)^2 / sum_g (k_g - 1) )

    (configurations with one seed add nothing), and sd_config is the standard deviation (ddof 1)
    of the configuration means ybar_g. ``ratio`` = sd_config / sd_seed: how far the configurations
    spread beyond the noise of one model; the spread of a mean of k seeds is sd_seed / sqrt(k).
    NaN where undefined (no replicates, fewer than two configurations). NaN rows are dropped.
    """
    d = df[[column]].assign(_config=configurations(df)).dropna(subset=[column])
    groups = d.groupby("_config")[column]
    dof = int((groups.size() - 1).sum())
    ss = float(groups.apply(lambda v: ((v - v.mean()) ** 2).sum()).sum()) if len(d) else 0.0
    sd_seed = math.sqrt(ss / dof) if dof > 0 else math.nan
    means = groups.mean()
    sd_config = float(means.std(ddof=1)) if len(means) >= 2 else math.nan
    ratio = sd_config / sd_seed if np.isfinite(sd_seed) and sd_seed > 0 and np.isfinite(sd_config) else math.nan
    return {"sd_seed": sd_seed, "sd_config": sd_config, "ratio": ratio, "configurations": int(len(means)),
            "dof": dof}


def split_half(
    df: pd.DataFrame, measures: Sequence[str], target: str, *, splits: int = 20, seed: int = 0
) -> dict:
    """Split-half reliability of the ranking of ``measures`` by Kendall tau with ``target``.

    Each split assigns, within every configuration of k >= 2 seeds, floor(k/2) seeds at random to
    half A and floor(k/2) others to half B (one seed is left out when k is odd; configurations
    with one seed are left out); every measure's tau is computed on A and on B, and the rank
    agreement of the two columns is Spearman's rho over the measures with both defined. Reported:
    the mean rho over ``splits`` seeded splits (``numpy.random.default_rng(seed)``), its range,
    and the seeds per half. A reliability near 1 means a rerun with other seeds would rank the
    measures the same; it is the reliability of a ranking from floor(k/2) seeds per
    configuration, so the full zoo's ranking is more reliable than this. NaN when no
    configuration has two seeds or fewer than three measures have a tau on both halves.
    """
    base = _canonical(df)
    configs = configurations(base)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(configs == g) for g in np.unique(configs)]
    groups = [g for g in groups if len(g) >= 2]
    rhos, per_half = [], min((len(g) // 2 for g in groups), default=0)
    for _ in range(splits if groups else 0):
        a, b = [], []
        for rows in groups:
            perm = rng.permutation(rows)
            h = len(rows) // 2
            a.append(perm[:h])
            b.append(perm[h : 2 * h])
        halves = [base.iloc[np.sort(np.concatenate(x))] for x in (a, b)]
        taus = np.array([[kendall_tau(h, m, target) for m in measures] for h in halves])
        ok = np.isfinite(taus).all(axis=0)
        if ok.sum() >= 3:
            rhos.append(float(scipy.stats.spearmanr(taus[0, ok], taus[1, ok]).statistic))
    rhos = [r for r in rhos if np.isfinite(r)]
    if not rhos:
        return {"rho": math.nan, "rho_min": math.nan, "rho_max": math.nan, "splits": 0, "seeds_per_half": per_half}
    return {"rho": float(np.mean(rhos)), "rho_min": float(min(rhos)), "rho_max": float(max(rhos)),
            "splits": len(rhos), "seeds_per_half": per_half}


def filter_converged(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the models with ``metric.converged`` True; returns (kept rows, number dropped).

    A missing value (NaN/None) counts as not converged.
    """
    mask = converged(df).to_numpy(dtype=bool)
    return df.loc[mask].copy(), int((~mask).sum())


# ---------------------------------------------------------------------------------------
# evaluate: the leaderboard table
# ---------------------------------------------------------------------------------------
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


def evaluate(
    df: pd.DataFrame,
    measures: Sequence[str],
    targets: Sequence[str] = ("metric.gap_error", "metric.test_error"),
    axes: Sequence[str] | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    resample: str = "seeds",
    alpha: float = 0.05,
    min_ess: float | None = None,
    cmi_permutations: int = 50,
) -> pd.DataFrame:
    """The long results table of the leaderboard: one row per (measure, target).

    Only converged models are used (:func:`filter_converged`); the number dropped is in
    ``result.attrs["n_unconverged"]``. ``axes=None`` means :func:`default_axes` of the
    converged models (every varying ``hp.*`` column but ``hp.seed``).

    Columns: ``measure`` and ``target`` (column names as given); ``n_models`` (converged
    models with a non-NaN measure and target); ``n_failed`` (converged models where the
    measure is NaN); ``tau`` (:func:`kendall_tau`) with its percentile bootstrap interval
    ``tau_lo``, ``tau_hi``; ``spearman`` (:func:`spearman_rho`); ``psi`` and ``psi.<axis>``
    (:func:`granulated_kendall`) with ``psi_lo``, ``psi_hi``; ``cmi`` and ``cmi_set``
    (:func:`conditional_mutual_information`, |S| <= 2; the arg-min set as a comma-separated
    string of axes, "" for the empty set, None when undefined); ``sign_error_mean``,
    ``sign_error_p90``, ``sign_error_max`` and ``sign_error.<axis>`` (per-axis mean) from
    :func:`robust_sign_error`.

    Bootstrap: seed replicates are resampled within their configurations (``resample="seeds"``,
    or whole configurations with ``"configurations"``; :func:`bootstrap_counts`), as in
    :func:`bootstrap_ci` with the same seed and draw, shared by every measure and target; for
    Psi the cells are re-formed from each resample (a model drawn twice adds only tied, i.e.
    uninformative, pairs). The interval equals ``bootstrap_ci(converged, lambda d:
    kendall_tau(d, m, t), n_boot=n_boot, seed=seed, resample=resample)`` (likewise for Psi) but
    is computed as pair sums weighted by how often each model was drawn, reusing pair index
    arrays across measures and replicates. Without seed replicates (one seed per
    configuration) ``"seeds"`` has nothing to resample and every interval is NaN.

    CMI null: ``cmi_null`` (the mean score of ``cmi_permutations`` permutations of the measure
    across the models, the chance level) and ``cmi_p`` (the permutation p-value), as
    :func:`cmi_null` with the same seed.

    Paired comparison with the best measure: per target, the measure with the largest tau is
    the best; every other measure's ``tau_vs_best`` = tau_m - tau_best and ``psi_vs_best``
    come with the interval and p-value of :func:`paired_difference` over the same bootstrap
    replicates, the p-values Holm-adjusted over the measures compared (:func:`holm`;
    ``*_p_holm``), and ``tied_with_best`` is True where the adjusted tau p-value is above
    ``alpha`` (the group that cannot be told apart from #1; the best itself included), None
    where it cannot be tested; ``tier`` is the measure's tier of :func:`tiers` on the tau
    replicates (tier 1 = the tied group; None without replicates). Sign error:
    :func:`robust_sign_error` with ``min_ess``, and its counts ``sign_error_n_envs`` (usable
    environments), ``sign_error_n_below`` (below the minimum effective sample size) and
    ``sign_error_unusable_axes`` (axes without a usable environment, comma-separated).
    """
    _check_bootstrap_args(n_boot, 0.95)
    converged, n_dropped = filter_converged(df)
    base = _canonical(converged)
    axes = tuple(default_axes(base) if axes is None else axes)
    design = _design(base, axes, n_boot, seed, max_set_size=2, resample=resample)
    min_ess = MIN_ESS if min_ess is None else min_ess
    perms = _permutations(len(base), cmi_permutations, seed)
    psi_weights = [design.counts[:, c.i] * design.counts[:, c.j] for c in design.cells]
    measures = list(measures)

    measure_ranks = {m: _column_ranks(base, m) for m in measures}
    pair_signs = [_pair_signs(measure_ranks[m], design.i, design.j) for m in measures]
    sx_all = np.stack([s for s, _ in pair_signs], axis=1) if measures else np.zeros((len(design.i), 0))
    vx_all = np.stack([v for _, v in pair_signs], axis=1) if measures else np.zeros((len(design.i), 0), bool)

    rows = []
    for target in targets:
        ry = _column_ranks(base, target)
        g = base[target].to_numpy(dtype=float)
        n_test = base[TEST_SIZE_COLUMN].to_numpy(dtype=float) if design.envs.n_envs else np.zeros(len(base))
        sy, vy = _pair_signs(ry, design.i, design.j)
        taus = _tau_from_sums(
            ((sx_all * sy[:, None]) * (vx_all & vy[:, None])).sum(axis=0),
            (np.abs(sx_all) * (vx_all & vy[:, None])).sum(axis=0),
            (np.abs(sy)[:, None] * (vx_all & vy[:, None])).sum(axis=0),
        )
        boot_taus = _boot_taus_blocked(design, sx_all, vx_all, sy, vy)
        boot_psis = np.full((design.counts.shape[0], len(measures)), np.nan)
        target_rows = []
        for k, m in enumerate(measures):
            rx = measure_ranks[m]
            tau_lo, tau_hi = _percentile_interval(boot_taus[:, k], 0.95)
            psi = _psi_from_cells(design.cells, rx, ry)
            boot_psis[:, k] = _bootstrap_psi(design, psi_weights, rx, ry)
            psi_lo, psi_hi = _percentile_interval(boot_psis[:, k], 0.95)
            vg, vm, valid = _cmi_signs(rx, ry, design.i, design.j)
            cmi = _cmi_from_sets(design.sets, vg, vm, valid)
            se = _sign_error_summary(
                design.envs, *_environment_sign_errors(design.envs, rx, ry, g, n_test, min_ess=min_ess)
            )
            row = {
                "measure": m,
                "target": target,
                "n_models": int((~np.isnan(rx) & ~np.isnan(ry)).sum()),
                "n_failed": int(np.isnan(rx).sum()),
                "tau": float(taus[k]),
                "tau_lo": tau_lo,
                "tau_hi": tau_hi,
                "spearman": spearman_rho(base, m, target),
                "psi": psi["psi"],
                "psi_lo": psi_lo,
                "psi_hi": psi_hi,
            }
            row.update({f"psi.{a}": psi["per_axis"][a] for a in axes})
            row["cmi"] = cmi["cmi"]
            row["cmi_set"] = None if cmi["set"] is None else ",".join(cmi["set"])
            null = _cmi_null_from(design.sets, rx, ry, design.i, design.j, perms, cmi["cmi"])
            row["cmi_null"], row["cmi_p"] = null["null_mean"], null["p"]
            row.update(
                {
                    "sign_error_mean": se["mean"],
                    "sign_error_p90": se["p90"],
                    "sign_error_max": se["max"],
                }
            )
            row.update({f"sign_error.{a}": se["per_axis"][a]["mean"] for a in axes})
            row.update(
                {
                    "sign_error_n_envs": se["n_envs"],
                    "sign_error_n_below": se["n_below"],
                    "sign_error_unusable_axes": ",".join(a for a in axes if se["per_axis"][a]["n_envs"] == 0),
                }
            )
            target_rows.append(row)
        _compare_with_best(target_rows, [float(t) for t in taus], boot_taus, boot_psis, alpha)
        rows += target_rows

    columns = (
        ["measure", "target", "n_models", "n_failed", "tau", "tau_lo", "tau_hi", "spearman", "psi", "psi_lo", "psi_hi"]
        + [f"psi.{a}" for a in axes]
        + ["cmi", "cmi_set", "cmi_null", "cmi_p", "sign_error_mean", "sign_error_p90", "sign_error_max"]
        + [f"sign_error.{a}" for a in axes]
        + ["sign_error_n_envs", "sign_error_n_below", "sign_error_unusable_axes"]
        + [f"{s}_vs_best{x}" for s in ("tau", "psi") for x in ("", "_lo", "_hi", "_p", "_p_holm")]
        + ["tied_with_best", "tier"]
    )
    result = pd.DataFrame(rows, columns=columns)
    result.attrs["n_unconverged"] = n_dropped
    result.attrs["axes"] = list(axes)
    result.attrs["n_boot"] = n_boot
    result.attrs["seed"] = seed
    result.attrs["resample"] = resample
    result.attrs["replicated"] = replicated(configurations(base))
    result.attrs["alpha"] = alpha
    result.attrs["min_ess"] = min_ess
    return result


def _compare_with_best(rows: list[dict], taus: list[float], boot_taus: np.ndarray, boot_psis: np.ndarray,
                       alpha: float) -> None:
    """Fill the ``*_vs_best`` columns and ``tied_with_best`` of one target's rows (evaluate's docstring)."""
    finite = [k for k, t in enumerate(taus) if np.isfinite(t)]
    keys = [f"{s}_vs_best{x}" for s in ("tau", "psi") for x in ("", "_lo", "_hi", "_p", "_p_holm")]
    for row in rows:
        row.update(dict.fromkeys(keys, np.nan), tied_with_best=None, tier=None)
    if not finite:
        return
    best = max(finite, key=lambda k: taus[k])
    others = [k for k in finite if k != best]
    for stat, reps in (("tau", boot_taus), ("psi", boot_psis)):
        point = [taus[k] if stat == "tau" else rows[k]["psi"] for k in range(len(rows))]
        diffs = {k: paired_difference(reps[:, k], reps[:, best], point[k], point[best]) for k in others}
        adjusted = holm([diffs[k]["p"] for k in others])
        for k, p_holm in zip(others, adjusted):
            d = diffs[k]
            rows[k].update({f"{stat}_vs_best": d["diff"], f"{stat}_vs_best_lo": d["lo"],
                            f"{stat}_vs_best_hi": d["hi"], f"{stat}_vs_best_p": d["p"],
                            f"{stat}_vs_best_p_holm": p_holm})
        if np.isfinite(point[best]):
            rows[best].update({f"{stat}_vs_best": 0.0, f"{stat}_vs_best_p": 1.0, f"{stat}_vs_best_p_holm": 1.0})
    rows[best]["tied_with_best"] = True
    if np.isfinite(boot_taus).any():  # without replicates there is no paired test, hence no tiers
        for row, t in zip(rows, tiers(taus, boot_taus, alpha)):
            row["tier"] = int(t) if t else None
    for k in others:
        p_holm = rows[k]["tau_vs_best_p_holm"]
        rows[k]["tied_with_best"] = None if not np.isfinite(p_holm) else bool(p_holm > alpha)


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
    (:func:`bootstrap_counts`; converged models only, as :func:`evaluate`). Returns
    ``{"tau": {...}, "psi": {...}}`` with keys diff, lo, hi, se, p."""
    _check_bootstrap_args(n_boot, level)
    base = _canonical(filter_converged(df)[0])
    axes = tuple(default_axes(base) if axes is None else axes)
    design = _design(base, axes, n_boot, seed, max_set_size=0, resample=resample)
    ry = _column_ranks(base, target)
    sy, vy = _pair_signs(ry, design.i, design.j)
    ranks = [_column_ranks(base, m) for m in (measure_a, measure_b)]
    signs = [_pair_signs(r, design.i, design.j) for r in ranks]
    sx, vx = np.stack([s for s, _ in signs], axis=1), np.stack([v for _, v in signs], axis=1)
    boot_t = _boot_taus_blocked(design, sx, vx, sy, vy)
    weights = [design.counts[:, c.i] * design.counts[:, c.j] for c in design.cells]
    boot_p = [_bootstrap_psi(design, weights, r, ry) for r in ranks]
    tau = [kendall_tau(base, m, target) for m in (measure_a, measure_b)]
    psi = [_psi_from_cells(design.cells, r, ry)["psi"] for r in ranks]
    return {"tau": paired_difference(boot_t[:, 0], boot_t[:, 1], tau[0], tau[1], level),
            "psi": paired_difference(boot_p[0], boot_p[1], psi[0], psi[1], level)}


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
