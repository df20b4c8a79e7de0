"""Resampling and testing: the converged filter, the bootstrap over seeds or configurations, the paired
test, Holm's adjustment and the tiers of a ranking.

Sources: Efron (1979) for the percentile bootstrap; Rao & Wu (JASA 83, 1988) for the k - 1 draws
within a configuration; Davison & Hinkley (1997, Sec. 3.8) for the cluster bootstrap; Efron &
Tibshirani (1993, Sec. 16) for the bootstrap standard-error test; Holm (1979); Demsar (JMLR 2006)
for the tiers of a critical-difference diagram.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from benchmark.evaluation.stats.pairs import configurations
from benchmark.store.columns import converged


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
    """The central ``level`` quantiles (linear interpolation) of the finite replicates; NaN if none."""
    reps = np.asarray(replicates, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _check_bootstrap_args(n_boot: int, level: float) -> None:
    """Reject a negative number of replicates or a level outside (0, 1) before any work is done."""
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


def filter_converged(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the models with ``metric.converged`` True; returns (kept rows, number dropped).

    A missing value (NaN/None) counts as not converged.
    """
    mask = converged(df).to_numpy(dtype=bool)
    return df.loc[mask].copy(), int((~mask).sum())
