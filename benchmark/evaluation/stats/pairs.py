"""The models and pairs every statistic works on: ranks, pair signs, groups of rows and the pair designs.

Every statistic of the package is a sum over *pairs of models* of products of pair signs
``sign(x_i - x_j)``. The functions here turn a zoo DataFrame into those pieces: average ranks
(:func:`_ranks`), the pairs ``i < j`` (:func:`_triu`) and their signs (:func:`_pair_signs`), integer
codes of joint hyperparameter values (:func:`_group_codes`, :func:`configurations`), and the
three pair designs, which depend on the hyperparameters only:

* :class:`_AxisCells` -- the cells of Jiang et al.'s granulated Kendall (ICLR 2020, Sec. 4);
* :class:`_Environments` -- the environments of Dziugaite et al. (NeurIPS 2020, Sec. 3);
* :class:`_ConditioningSet` -- the conditioning cells U_S of Jiang et al.'s CMI (ICLR 2020, Sec. 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from benchmark.store.columns import CONVERGED as CONVERGED_COLUMN  # noqa: F401  (re-exported by the package)

SEED_COLUMN = "hp.seed"

TEST_SIZE_COLUMN = "metric.test_size"
HP_PREFIX = "hp."


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
    """:func:`_ranks` of one column of ``df``."""
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


def _finite_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the finite entries along ``axis``; NaN where there are none (no warning)."""
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    count = ok.sum(axis=axis)
    total = np.where(ok, values, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


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
    """Index of the first entry of each run of equal labels in a sorted label array."""
    if len(sorted_labels) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])


def configurations(df: pd.DataFrame) -> np.ndarray:
    """Integer code of each row's configuration: the joint value of every varying ``hp.*``
    column but the seed (sorted keys). Rows with equal codes are seed replicates."""
    return _group_codes(df, [c for c in _varying_hp_columns(df) if c != SEED_COLUMN])


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
