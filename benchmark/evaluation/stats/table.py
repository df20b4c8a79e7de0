"""The leaderboard's long table: :func:`evaluate` computes every statistic of the package for many measures and
targets, and compares every measure with the best one.

The steps read top to bottom: :func:`_board` builds what every target shares (the converged models in a
canonical order, their pair design and bootstrap draw, the CMI permutations, each measure's pair signs);
:func:`_target_rows` computes one target's rows, column group by column group (:func:`_rank_columns`,
:func:`_cmi_columns`, :func:`_sign_error_columns`), then :func:`_compare_with_best`; :func:`_table` lays
the rows out. The formulas and their sources are in the modules of each statistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.cache import StatsCache, code_version, digest, zoo_columns
from benchmark.evaluation.stats.cmi import _cmi_from_sets, _cmi_null_from, _cmi_signs, _permutations
from benchmark.evaluation.stats.pairs import TEST_SIZE_COLUMN, _column_ranks, _pair_signs, configurations, default_axes
from benchmark.evaluation.stats.ranks import _psi_from_cells, _tau_from_sums, spearman_rho
from benchmark.evaluation.stats.replicates import (
    _boot_taus_blocked,
    _bootstrap_psi,
    _Design,
    _design,
    _psi_weights,
    _sign_columns,
)
from benchmark.evaluation.stats.resampling import (
    _canonical,
    _check_bootstrap_args,
    _percentile_interval,
    filter_converged,
    holm,
    paired_difference,
    replicated,
    tiers,
)
from benchmark.evaluation.stats.sign_error import MIN_ESS, _environment_sign_errors, _sign_error_summary

_VS_BEST_COLUMNS = [f"{s}_vs_best{x}" for s in ("tau", "psi") for x in ("", "_lo", "_hi", "_p", "_p_holm")]


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
    cache: StatsCache | None = None,
    cache_kind: str = "columns",
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
    min_ess = MIN_ESS if min_ess is None else min_ess
    measures, targets = list(measures), list(targets)
    found = _measure_rows(base, axes, measures, targets, n_boot=n_boot, seed=seed, resample=resample,
                          cmi_permutations=cmi_permutations, min_ess=min_ess, cache=cache, kind=cache_kind)
    rows = []
    for target in targets:
        rows += _compared(found, measures, target, alpha)
    attrs = {"n_unconverged": n_dropped, "axes": list(axes), "n_boot": n_boot, "seed": seed, "resample": resample,
             "replicated": replicated(configurations(base)), "alpha": alpha, "min_ess": min_ess}
    return _table(rows, axes, attrs)


def _measure_rows(base: pd.DataFrame, axes: tuple[str, ...], measures: list[str], targets: list[str], *,
                  n_boot: int, seed: int, resample: str, cmi_permutations: int, min_ess: float,
                  cache: StatsCache | None, kind: str) -> dict[tuple[str, str], tuple[dict, np.ndarray, np.ndarray]]:
    """Each (measure, target)'s own columns with its tau and Psi bootstrap replicates: everything of its rows that
    does not depend on the other measures. With a ``cache``, a measure whose column, zoo and settings were seen
    before is read from it, and the pair design is built only for the others; the measures read and computed are
    counted under ``kind``."""
    keys = {}
    if cache is not None:
        zoo = digest(zoo_columns(base), list(axes), n_boot, seed, resample, cmi_permutations, min_ess, code_version())
        keys = {(m, t): digest(zoo, m, base[m], t) for m in measures for t in targets}
    found = {k: v for k, v in ((k, cache.get(key)) for k, key in keys.items()) if v is not None}
    todo = [m for m in measures if any((m, t) not in found for t in targets)]
    if cache is not None:
        cache.reused[kind] += len(measures) - len(todo)
        cache.computed[kind] += len(todo)
    if todo:
        board = _board(base, axes, todo, n_boot=n_boot, seed=seed, resample=resample,
                       cmi_permutations=cmi_permutations)
        for target in targets:
            for m, value in zip(todo, _target_rows(board, target, min_ess)):
                found[(m, target)] = value
                if cache is not None:
                    cache.put(keys[(m, target)], kind, value)
    return found


@dataclass(frozen=True)
class _Board:
    """What every target of :func:`evaluate` shares: the converged models in canonical order (``base``),
    their pair design and bootstrap draw, the Psi pair weights of each replicate, the CMI permutations,
    and each measure's ranks and pair signs (``sx``, ``vx``: (pairs, measures))."""

    base: pd.DataFrame
    axes: tuple[str, ...]
    measures: list[str]
    design: _Design
    perms: np.ndarray
    psi_weights: list[np.ndarray]
    ranks: dict[str, np.ndarray]
    sx: np.ndarray
    vx: np.ndarray


def _board(base: pd.DataFrame, axes: tuple[str, ...], measures: list[str], *, n_boot: int, seed: int,
           resample: str, cmi_permutations: int) -> _Board:
    """Build the :class:`_Board` once, so that pairs, cells and draws are reused for every measure and target."""
    design = _design(base, axes, n_boot, seed, max_set_size=2, resample=resample)
    ranks = {m: _column_ranks(base, m) for m in measures}
    sx, vx = _sign_columns([ranks[m] for m in measures], design.i, design.j)
    return _Board(base=base, axes=axes, measures=measures, design=design,
                  perms=_permutations(len(base), cmi_permutations, seed), psi_weights=_psi_weights(design),
                  ranks=ranks, sx=sx, vx=vx)


def _target_rows(board: _Board, target: str, min_ess: float) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """One target's rows of the board's measures, each with its tau and Psi bootstrap replicates."""
    base, design = board.base, board.design
    ry = _column_ranks(base, target)
    g = base[target].to_numpy(dtype=float)
    n_test = base[TEST_SIZE_COLUMN].to_numpy(dtype=float) if design.envs.n_envs else np.zeros(len(base))
    sy, vy = _pair_signs(ry, design.i, design.j)
    valid = board.vx & vy[:, None]
    taus = _tau_from_sums(
        ((board.sx * sy[:, None]) * valid).sum(axis=0),
        (np.abs(board.sx) * valid).sum(axis=0),
        (np.abs(sy)[:, None] * valid).sum(axis=0),
    )
    boot_taus = _boot_taus_blocked(design, board.sx, board.vx, sy, vy)
    out = []
    for k, m in enumerate(board.measures):
        rx = board.ranks[m]
        boot_psi = _bootstrap_psi(design, board.psi_weights, rx, ry)
        row = {
            "measure": m,
            "target": target,
            **_rank_columns(board, m, target, rx, ry, taus[k], boot_taus[:, k], boot_psi),
            **_cmi_columns(board, rx, ry),
            **_sign_error_columns(board, rx, ry, g, n_test, min_ess),
        }
        out.append((row, boot_taus[:, k].copy(), boot_psi))
    return out


def _compared(found: dict, measures: list[str], target: str, alpha: float) -> list[dict]:
    """One target's rows in ``measures`` order, each compared with the best one (:func:`_compare_with_best`)."""
    parts = [found[(m, target)] for m in measures]
    rows = [dict(row) for row, _, _ in parts]
    n_boot = len(parts[0][1]) if parts else 0
    boot_taus = np.stack([b for _, b, _ in parts], axis=1) if parts else np.zeros((n_boot, 0))
    boot_psis = np.stack([p for _, _, p in parts], axis=1) if parts else np.zeros((n_boot, 0))
    _compare_with_best(rows, [float(r["tau"]) for r in rows], boot_taus, boot_psis, alpha)
    return rows


def _rank_columns(board: _Board, measure: str, target: str, rx: np.ndarray, ry: np.ndarray, tau: float,
                  boot_tau: np.ndarray, boot_psi: np.ndarray) -> dict:
    """The counts of models, tau and Psi with their bootstrap intervals, Spearman's rho and Psi per axis."""
    tau_lo, tau_hi = _percentile_interval(boot_tau, 0.95)
    psi = _psi_from_cells(board.design.cells, rx, ry)
    psi_lo, psi_hi = _percentile_interval(boot_psi, 0.95)
    return {
        "n_models": int((~np.isnan(rx) & ~np.isnan(ry)).sum()),
        "n_failed": int(np.isnan(rx).sum()),
        "tau": float(tau),
        "tau_lo": tau_lo,
        "tau_hi": tau_hi,
        "spearman": spearman_rho(board.base, measure, target),
        "psi": psi["psi"],
        "psi_lo": psi_lo,
        "psi_hi": psi_hi,
        **{f"psi.{a}": psi["per_axis"][a] for a in board.axes},
    }


def _cmi_columns(board: _Board, rx: np.ndarray, ry: np.ndarray) -> dict:
    """The CMI score, its arg-min conditioning set and its permutation null (chance level and p-value)."""
    design = board.design
    vg, vm, valid = _cmi_signs(rx, ry, design.i, design.j)
    cmi = _cmi_from_sets(design.sets, vg, vm, valid)
    null = _cmi_null_from(design.sets, rx, ry, design.i, design.j, board.perms, cmi["cmi"])
    return {
        "cmi": cmi["cmi"],
        "cmi_set": None if cmi["set"] is None else ",".join(cmi["set"]),
        "cmi_null": null["null_mean"],
        "cmi_p": null["p"],
    }


def _sign_error_columns(board: _Board, rx: np.ndarray, ry: np.ndarray, g: np.ndarray, n_test: np.ndarray,
                        min_ess: float) -> dict:
    """The robust sign error (mean, p90, max, per-axis mean) and its counts of environments."""
    envs, axes = board.design.envs, board.axes
    se = _sign_error_summary(envs, *_environment_sign_errors(envs, rx, ry, g, n_test, min_ess=min_ess))
    return {
        "sign_error_mean": se["mean"],
        "sign_error_p90": se["p90"],
        "sign_error_max": se["max"],
        **{f"sign_error.{a}": se["per_axis"][a]["mean"] for a in axes},
        "sign_error_n_envs": se["n_envs"],
        "sign_error_n_below": se["n_below"],
        "sign_error_unusable_axes": ",".join(a for a in axes if se["per_axis"][a]["n_envs"] == 0),
    }


def _compare_with_best(rows: list[dict], taus: list[float], boot_taus: np.ndarray, boot_psis: np.ndarray,
                       alpha: float) -> None:
    """Fill the ``*_vs_best`` columns and ``tied_with_best`` of one target's rows (evaluate's docstring)."""
    finite = [k for k, t in enumerate(taus) if np.isfinite(t)]
    for row in rows:
        row.update(dict.fromkeys(_VS_BEST_COLUMNS, np.nan), tied_with_best=None, tier=None)
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


def _table(rows: list[dict], axes: tuple[str, ...], attrs: dict) -> pd.DataFrame:
    """The rows as the long table, columns in their documented order, with the run's settings in ``.attrs``."""
    columns = (
        ["measure", "target", "n_models", "n_failed", "tau", "tau_lo", "tau_hi", "spearman", "psi", "psi_lo", "psi_hi"]
        + [f"psi.{a}" for a in axes]
        + ["cmi", "cmi_set", "cmi_null", "cmi_p", "sign_error_mean", "sign_error_p90", "sign_error_max"]
        + [f"sign_error.{a}" for a in axes]
        + ["sign_error_n_envs", "sign_error_n_below", "sign_error_unusable_axes"]
        + _VS_BEST_COLUMNS
        + ["tied_with_best", "tier"]
    )
    result = pd.DataFrame(rows, columns=columns)
    result.attrs.update(attrs)
    return result
