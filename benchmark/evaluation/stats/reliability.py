"""How far a ranking can be trusted: Kendall's W across tasks, the seed noise of a column and the split-half
reliability of a ranking of measures.

Sources: Kendall & Babington Smith (1939) for W with the tie correction (Friedman's chi2); the
pooled within-configuration standard deviation for the seed noise; split-half reliability by
Spearman's rho of the two halves' Kendall taus.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from benchmark.evaluation.cache import StatsCache, code_version, digest, zoo_columns
from benchmark.evaluation.stats.pairs import configurations
from benchmark.evaluation.stats.ranks import kendall_tau
from benchmark.evaluation.stats.resampling import _canonical


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
    df: pd.DataFrame, measures: Sequence[str], target: str, *, splits: int = 20, seed: int = 0,
    cache: StatsCache | None = None,
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
    configuration has two seeds or fewer than three measures have a tau on both halves. With a
    ``cache``, each measure's taus on the halves are read from it when its column, the zoo and the
    splits were seen before.
    """
    base = _canonical(df)
    configs = configurations(base)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(configs == g) for g in np.unique(configs)]
    groups = [g for g in groups if len(g) >= 2]
    per_half = min((len(g) // 2 for g in groups), default=0)
    halves = []
    for _ in range(splits if groups else 0):
        a, b = [], []
        for rows in groups:
            perm = rng.permutation(rows)
            h = len(rows) // 2
            a.append(perm[:h])
            b.append(perm[h : 2 * h])
        halves.append([np.sort(np.concatenate(x)) for x in (a, b)])
    taus = _half_taus(base, list(measures), target, halves, seed, cache)
    rhos = []
    for s in range(len(halves)):
        ok = np.isfinite(taus[:, s]).all(axis=1)
        if ok.sum() >= 3:
            rhos.append(float(scipy.stats.spearmanr(taus[ok, s, 0], taus[ok, s, 1]).statistic))
    rhos = [r for r in rhos if np.isfinite(r)]
    if not rhos:
        return {"rho": math.nan, "rho_min": math.nan, "rho_max": math.nan, "splits": 0, "seeds_per_half": per_half}
    return {"rho": float(np.mean(rhos)), "rho_min": float(min(rhos)), "rho_max": float(max(rhos)),
            "splits": len(rhos), "seeds_per_half": per_half}


def _half_taus(base: pd.DataFrame, measures: list[str], target: str, halves: list[list[np.ndarray]], seed: int,
               cache: StatsCache | None) -> np.ndarray:
    """Every measure's Kendall tau with ``target`` on each half of each split, (measures, splits, 2)."""
    out = np.full((len(measures), len(halves), 2), np.nan)
    keys = {}
    if cache is not None:
        zoo = digest("split_half", zoo_columns(base), target, len(halves), seed, code_version())
        keys = {m: digest(zoo, m, base[m]) for m in measures}
    todo = []
    for k, m in enumerate(measures):
        found = cache.get(keys[m]) if cache is not None else None
        if found is None:
            todo.append(k)
        else:
            out[k] = found
    if cache is not None:
        cache.reused["split_half"] += len(measures) - len(todo)
        cache.computed["split_half"] += len(todo)
    for s, pair in enumerate(halves):
        for h, rows in enumerate(pair):
            half = base.iloc[rows]
            for k in todo:
                out[k, s, h] = kendall_tau(half, measures[k], target)
    if cache is not None:
        for k in todo:
            cache.put(keys[measures[k]], "split_half", out[k].copy())
    return out
