"""Conditional mutual information between the signs of a measure and of the target, and its permutation null.

Sources: Jiang et al., "Fantastic Generalization Measures and Where to Find Them" (ICLR 2020, Sec. 5)
and the PGDL competition (Jiang et al., NeurIPS 2020 competition track) for the score; Phipson &
Smyth (2010) for the permutation p-value of :func:`cmi_null`.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.stats.pairs import (
    _column_ranks,
    _conditioning_sets,
    _ConditioningSet,
    _pair_signs,
    _triu,
)

# Scores closer than this are equal when choosing the arg-min conditioning set.
_TIE_TOLERANCE = 1e-12


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
    """The score, arg-min set and per-set scores of :func:`conditional_mutual_information` from pair signs."""
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
    """Target and measure pair signs and the pairs used: both defined and the target not tied."""
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
    configurations (integer counts, so exactly its own bincount, in two matrix products by one-hot maps of the
    configurations to the set's values), and the normalised CMIs of all tables come in one pass (padded to the
    largest set's cells: empty cells of weight 0)."""
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
    onehots = []
    for s, c in enumerate(sets):
        onehot = np.zeros((big, c.n_values))
        onehot[np.arange(big), configs[:, s]] = 1.0
        onehots.append(onehot)
    # sum over model i's configurations into every set's values at once: (Σ values, copies · big · 6), one product
    first = np.concatenate(onehots, 1).T @ counts.transpose(1, 0, 2, 3).reshape(big, copies * big * 6)
    start = 0
    for s, (c, onehot) in enumerate(zip(sets, onehots)):
        k = c.n_values
        t = first[start:start + k].reshape(k, copies, big, 6)  # (a, c, v, x)
        start += k
        t = onehot.T @ t.transpose(2, 0, 1, 3).reshape(big, k * copies * 6)  # over model j's: (b, a · c · x)
        t = t.reshape(k, k, copies, 6).transpose(2, 1, 0, 3).reshape(copies, k, k, 2, 3)
        tables[s, :, :k * k] = (t + t.transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]).reshape(copies, k * k, 2, 3)
    per_set = _normalised_cmi_many(tables.reshape(len(sets) * copies, width, 2, 3)).reshape(len(sets), copies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a copy with every set undefined: NaN
        return np.nanmin(per_set, axis=0)


def _cmi_null_from(
    sets: Sequence[_ConditioningSet], rm: np.ndarray, rg: np.ndarray, i: np.ndarray, j: np.ndarray,
    perms: np.ndarray, observed: float,
) -> dict:
    """The null summary of :func:`cmi_null` for the measure ranks ``rm`` permuted by each row of ``perms``."""
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
