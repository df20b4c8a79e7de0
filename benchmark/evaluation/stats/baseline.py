"""What the hyperparameters alone predict, and what a measure adds beyond them.

* :func:`hparam_baseline`: out-of-fold predictions of a target from every varying hyperparameter together, by a
  gradient-boosting regressor cross-validated with whole configurations held out. Scored like a measure, it is the
  baseline a measure must beat to say something a look at the configuration file does not.
* :func:`within_configuration_tau`: Kendall's tau between a measure and the target over pairs of seed replicates of
  the same configuration only. Such models have the same hyperparameters, so the baseline's prediction (a function of
  the hyperparameters) ties them all; whatever a measure orders right there, it knows beyond the hyperparameters.

Sources: Friedman (2001), "Greedy function approximation: a gradient boosting machine" (Ann. Statist. 29, 1189) for
the regressor, as ``sklearn.ensemble.GradientBoostingRegressor``; Taylor (1987), "Kendall's and Spearman's
correlation coefficients in the presence of a blocking variable" (Biometrics 43, 409) for Kendall's tau within
blocks combined over the blocks, here the configurations; Davison & Hinkley (1997, Sec. 3.8) for the bootstrap over
configurations (clusters).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.stats.pairs import _column_ranks, _pair_signs, _within_group_pairs, configurations
from benchmark.evaluation.stats.ranks import _cell_tau_from_sums
from benchmark.evaluation.stats.resampling import (
    _canonical,
    _check_bootstrap_args,
    _percentile_interval,
    bootstrap_counts,
    filter_converged,
)
from benchmark.store.columns import converged

# The regressor's fixed settings: scikit-learn's defaults for a small tabular problem, written out so that a change of
# library defaults cannot change the baseline; exact trees (the grids have a few values per axis, nothing to bin).
GBR_SETTINGS = {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3, "min_samples_leaf": 1, "subsample": 1.0,
                "loss": "squared_error"}
N_SPLITS = 5


def hparam_features(df: pd.DataFrame, hp_columns: Sequence[str]) -> np.ndarray:
    """The design matrix of :func:`hparam_baseline`, (rows, features): a numeric or boolean column as its values, a
    missing value placed below every present one of its column (trees split on order only, so that is a category of
    its own); any other column one-hot, a missing value its own category."""
    parts = []
    for c in hp_columns:
        col = df[c]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            v = col.to_numpy(dtype=float)
            missing = np.isnan(v)
            if missing.any():
                below = np.nanmin(v) - 1.0 if (~missing).any() else 0.0
                v = np.where(missing, below, v)
            parts.append(v[:, None])
        else:
            parts.append(pd.get_dummies(col.astype(object), dummy_na=True).to_numpy(dtype=float))
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(df), 0))


def configuration_folds(configs: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """The fold of each row, 0..k-1 with k = min(``n_splits``, number of configurations): the configurations are put
    in a seeded random order (``numpy.random.default_rng(seed)``) and dealt to the folds in turn, so every fold holds
    whole configurations (a seeded grouped k-fold) and their sizes differ by at most one configuration."""
    configs = np.asarray(configs, dtype=np.int64)
    labels, codes = np.unique(configs, return_inverse=True)
    k = max(1, min(int(n_splits), len(labels)))
    fold_of = np.empty(len(labels), dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(len(labels))] = np.arange(len(labels)) % k
    return fold_of[codes]


def hparam_baseline(df: pd.DataFrame, target: str, hp_columns: Sequence[str], seed: int = 0,
                    n_splits: int = N_SPLITS) -> np.ndarray:
    """Out-of-fold predictions of ``target`` from the hyperparameters ``hp_columns`` together, one per row of ``df``.

    The converged models with a finite target are the data. Their configurations (:func:`configurations`: the joint
    value of every varying ``hp.*`` column but the seed) are dealt to ``n_splits`` folds (:func:`configuration_folds`);
    each fold's models are predicted by a ``GradientBoostingRegressor`` (:data:`GBR_SETTINGS`, ``random_state=seed``)
    fitted on the other folds' models, so no configuration's seeds are both in the fit and in the prediction. The
    features are :func:`hparam_features` of ``hp_columns`` (the seed column is never one of them). The rows are fitted
    in an order that depends on the values only, so the result does not depend on the row order of ``df``.

    NaN for an unconverged model, a NaN target, and everywhere when fewer than two configurations are left (nothing
    can be held out) or ``hp_columns`` is empty.
    """
    from sklearn.ensemble import GradientBoostingRegressor  # ~1 s to import; only the evaluation needs it

    out = np.full(len(df), np.nan)
    y_all = df[target].to_numpy(dtype=float)
    rows = np.flatnonzero(converged(df).to_numpy(dtype=bool) & np.isfinite(y_all))
    hp_columns = [c for c in hp_columns if c != "hp.seed"]
    if len(rows) < 2 or not hp_columns:
        return out
    data = df.iloc[rows]
    configs = configurations(data)
    if len(np.unique(configs)) < 2:
        return out
    y = y_all[rows]
    order = np.lexsort((y, configs))  # by configuration, then target: rows tied in both are interchangeable
    x, y, configs, rows = hparam_features(data, hp_columns)[order], y[order], configs[order], rows[order]
    folds = configuration_folds(configs, n_splits, seed)
    for k in np.unique(folds):
        held = folds == k
        model = GradientBoostingRegressor(random_state=seed, **GBR_SETTINGS).fit(x[~held], y[~held])
        out[rows[held]] = model.predict(x[held])
    return out


def _within_taus(base: pd.DataFrame, measures: Sequence[str], target: str, counts: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The within-configuration tau of each measure on ``base`` (converged rows in canonical order), (measures,), its
    bootstrap replicates, (n_boot, measures), under the row multiplicities ``counts`` of a draw of whole
    configurations (:func:`bootstrap_counts` with ``resample="configurations"``), and the number of configurations
    with a defined tau_g, (measures,); the formula is :func:`within_configuration_tau`'s."""
    configs = configurations(base)
    i, j, g = _within_group_pairs(configs)
    n_boot, m = counts.shape[0], len(measures)
    if len(i) == 0 or m == 0:
        return np.full(m, np.nan), np.full((n_boot, m), np.nan), np.zeros(m, dtype=np.int64)
    block, labels = np.unique(g, return_inverse=True)  # the replicated configurations, and each pair's
    sy, vy = _pair_signs(_column_ranks(base, target), i, j)
    ranks = np.column_stack([_column_ranks(base, c) for c in measures])  # (models, measures)
    sx, vx = _pair_signs(ranks, i, j)  # (pairs, measures)
    valid = vx & vy[:, None]
    per_block = np.zeros((len(block), len(i)))
    per_block[labels, np.arange(len(i))] = 1.0  # (blocks, pairs): which block holds each pair
    num = per_block @ (sx * sy[:, None] * valid)
    dx = per_block @ (np.abs(sx) * valid)
    dy = per_block @ (np.abs(sy)[:, None] * valid)
    pairs = per_block @ valid.astype(float)
    taus = _cell_tau_from_sums(num, dx, dy)  # (blocks, measures); 0 where only the target varies
    defined = np.isfinite(taus)
    weight = np.where(defined, pairs, 0.0)
    filled = np.where(defined, taus, 0.0) * weight
    codes, first = np.unique(configs, return_index=True)
    first_row = first[np.searchsorted(codes, block)]
    mult = counts[:, first_row]  # (n_boot, blocks): how often each replicated configuration was drawn
    with np.errstate(invalid="ignore", divide="ignore"):
        point = filled.sum(axis=0) / weight.sum(axis=0)
        reps = (mult @ filled) / (mult @ weight)
    return point, reps, defined.sum(axis=0)


def within_configuration_tau(df: pd.DataFrame, measures: Sequence[str], target: str, *, n_boot: int = 200,
                             seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """What each measure knows about ``target`` beyond the hyperparameters: Kendall's tau over pairs of seed
    replicates of the same configuration, on the converged models.

    For each configuration g with at least two models, tau_g is Kendall's tau-b of the measure and the target over
    its models (rows where either is NaN dropped); tau_g = 0 where the target varies but the measure is constant
    (the measure carries no information there: a function of the hyperparameters alone scores exactly 0), and g is
    skipped where the target does not vary. The configurations are pooled by the pair-weighted mean

        added_tau = sum_g P_g tau_g / sum_g P_g,    P_g = pairs of g's models with both values present,

    Taylor's (Biometrics 1987) within-block Kendall tau with blocks weighted by their pairs. The models of one
    configuration differ only in their seeds, so the hyperparameter baseline (:func:`hparam_baseline`) ties them and
    any order a measure gets right there is information beyond the hyperparameters.

    Interval: the percentile bootstrap (``level``) over configurations: ``bootstrap_counts(configurations,
    n_boot, seed, resample="configurations")`` on the rows in canonical order (the draw every statistic's cluster
    bootstrap uses), each drawn configuration a configuration of its own, so a configuration drawn c times weighs
    c P_g. The measure adds information beyond seed noise when ``added_lo`` > 0.

    Returns one row per measure: ``measure``, ``added_tau``, ``added_lo``, ``added_hi`` and ``added_configs`` (the
    configurations with a defined tau_g); NaN (and 0 configurations) without seed replicates.
    """
    _check_bootstrap_args(n_boot, level)
    measures = list(measures)
    conv, _ = filter_converged(df)
    base = _canonical(conv)
    counts = (bootstrap_counts(configurations(base), n_boot, seed, "configurations") if len(base) and n_boot
              else np.zeros((0, len(base))))
    point, reps, n_configs = _within_taus(base, measures, target, counts)
    rows = []
    for k, name in enumerate(measures):
        lo, hi = _percentile_interval(reps[:, k], level) if len(reps) else (np.nan, np.nan)
        rows.append({"measure": name, "added_tau": float(point[k]), "added_lo": lo, "added_hi": hi,
                     "added_configs": int(n_configs[k])})
    return pd.DataFrame(rows, columns=["measure", "added_tau", "added_lo", "added_hi", "added_configs"])

