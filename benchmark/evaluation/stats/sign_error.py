"""The robust sign error of a measure over environments, with Hoeffding weights for test-set noise.

Sources: Dziugaite et al., "In Search of Robust Measures of Generalization" (NeurIPS 2020, Sec. 3-4)
and their code (nitarshan/robust-generalization-measures); Hoeffding's inequality for the weights.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.stats.pairs import (
    TEST_SIZE_COLUMN,
    _column_ranks,
    _Environments,
    _environments,
    _pair_signs,
)


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
    """The result of :func:`robust_sign_error` from the per-environment errors, overall and per axis."""
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
