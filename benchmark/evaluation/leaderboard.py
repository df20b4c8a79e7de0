"""The leaderboard's numbers: every statistic of every measure, the zoo's gap against test-set noise, costs,
failures and the oracle analyses. Formatting them is ``benchmark.report``'s job.

Every statistic is computed on the measure *oriented by its declared sign* (``sign · measure``), so a
τ of +1 means the measure orders the models exactly as the target does, in the direction its authors
predict; a negative τ means it predicts the opposite way. Oracle analyses (which see test data) are
listed separately and never ranked.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.errors import NothingToRankError
from benchmark.evaluation import stats
from benchmark.evaluation.cache import StatsCache, code_version, digest, zoo_columns
from benchmark.store import converged
from measures.registry import ADJUSTED

TARGETS = {"gap_error": "metric.gap_error", "test_error": "metric.test_error"}


def present_targets(df: pd.DataFrame, targets: Sequence[str]) -> list[str]:
    """The targets of ``targets`` that at least two converged models of ``df`` have a value of (a store trained
    before the shift metrics existed has none of them until ``genbench measure`` fills them in)."""
    conv = df[converged(df)]
    return [t for t in targets if t in conv and int(conv[t].notna().sum()) >= 2]


# the leaderboard's invariance column
INVARIANCE_CODES = {"permutation": "P", "rescaling": "R", "units": "U", "batchnorm_scaling": "B"}


def invariance_code(invariances) -> str:
    """``P R U``-style letters for a set of declared invariances (``INVARIANCE_CODES``); "—" for none."""
    return " ".join(c for name, c in INVARIANCE_CODES.items() if name in set(invariances)) or "—"


def measure_info(measures_list) -> pd.DataFrame:
    """One row per registered measure: name, family, sign, oracle, version, the sample-size adjustment, the
    declared invariances, description, reference."""
    return pd.DataFrame([{"measure": m.name, "family": m.family, "sign": m.sign, "oracle": m.oracle,
                          "version": m.version, "sample_size": ADJUSTED.get(m.sample_size, ""),
                          "invariances": invariance_code(m.invariances), "description": m.description,
                          "reference": m.reference}
                         for m in measures_list])


def _most_frequent(long: pd.DataFrame, status: str) -> pd.Series:
    return long[long.status == status].groupby("measure").error.agg(lambda s: s.value_counts().index[0])


def costs(long: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """Per measure: mean seconds per model, the numbers of failed and of not-applicable models, and the most
    frequent failure message and not-applicable reason."""
    columns = ["measure", "seconds", "failures", "failure_message", "not_applicable", "not_applicable_reason"]
    long = long[long.model_id.isin(set(ids))]
    if long.empty:
        return pd.DataFrame(columns=columns)
    latest = long.groupby("measure").version.transform("max")
    long = long[long.version == latest]
    out = long.groupby("measure").agg(seconds=("seconds", "mean"),
                                      failures=("status", lambda s: int((s == "failed").sum())),
                                      not_applicable=("status", lambda s: int((s == "not_applicable").sum())))
    out["failure_message"] = _most_frequent(long, "failed")
    out["not_applicable_reason"] = _most_frequent(long, "not_applicable")
    return out.reset_index()[columns]


def gap_noise(df: pd.DataFrame) -> dict:
    """The spread of generalization gaps against the noise of one model's gap, two ways.

    * The binomial standard error SE = √(p(1−p)/n_test) at the zoo's mean test error p (test-set sampling
      only); a ranking of models by gap is meaningful only when the spread (max − min) is several times it.
    * The seed noise measured from the replicates (``stats.seed_noise``): the pooled seed-to-seed standard
      deviation of the gap and of the test error within configurations (training randomness and test-set
      sampling together), against the standard deviation of the configuration means of the gap.
    """
    conv = df[converged(df)]
    gaps = conv["metric.gap_error"]
    p, n = conv["metric.test_error"].mean(), conv["metric.test_size"].median()
    se = math.sqrt(p * (1 - p) / n) if len(conv) else math.nan
    spread = gaps.max() - gaps.min() if len(conv) else math.nan
    gap_seed = stats.seed_noise(conv, "metric.gap_error")
    test_seed = stats.seed_noise(conv, "metric.test_error")
    return {"n_models": len(df), "n_converged": len(conv), "gap_min": gaps.min(), "gap_max": gaps.max(),
            "gap_std": gaps.std(), "gap_spread": spread, "test_error_se": se, "spread_over_se": spread / se,
            "gap_sd_seed": gap_seed["sd_seed"], "gap_sd_config": gap_seed["sd_config"],
            "gap_config_over_seed": gap_seed["ratio"], "test_error_sd_seed": test_seed["sd_seed"],
            "seed_dof": gap_seed["dof"]}


def check_rankable(df: pd.DataFrame, zoo: str) -> None:
    """A ``NothingToRankError`` with the counts when fewer than two models of ``df`` converged: no statistic
    is defined, so there is nothing to rank."""
    conv = converged(df)
    if int(conv.sum()) >= 2:
        return
    diverged = int(df["metric.diverged"].astype(bool).sum()) if "metric.diverged" in df else 0
    target = df["hp.train.target_loss"].iloc[0] if "hp.train.target_loss" in df and len(df) else math.nan
    raise NothingToRankError(
        f"nothing to rank: {int(conv.sum())} of the {len(df)} models of zoo {zoo!r} converged to training "
        f"cross-entropy ≤ {target:g} ({diverged} diverged, {len(df) - int(conv.sum()) - diverged} ran out of "
        f"epochs); a smaller optimizer.lr or more train.max_epochs may help")


def results(df: pd.DataFrame, info: pd.DataFrame, cost: pd.DataFrame, axes: list[str], *,
            targets: Sequence[str] = tuple(TARGETS.values()), n_boot: int = 200, seed: int = 0,
            alpha: float = 0.05, cache: StatsCache | None = None) -> pd.DataFrame:
    """Every statistic of every measure against every target, oriented by sign, with cost and metadata and what the
    measure adds beyond the hyperparameters (:func:`added_table`); ``alpha`` is the level of the paired test against
    #1; ``cache`` serves the statistics of measures seen before."""
    oriented, names = _oriented(df, info)
    groups = identical_groups(oriented[converged(oriented)], names)
    table = stats.evaluate(oriented, list(groups), targets=list(targets), axes=axes, n_boot=n_boot, seed=seed,
                           alpha=alpha, cache=cache, cache_kind="ranked")
    table["identical"] = [", ".join(c.removeprefix("measure.") for c in groups[m]) for m in table["measure"]]
    table["measure"] = table["measure"].str.removeprefix("measure.")
    table["target"] = table["target"].str.removeprefix("metric.")
    table = table.merge(info, on="measure", how="left").merge(cost, on="measure", how="left")
    table = table.merge(added_table(oriented, list(groups), targets, n_boot=n_boot, seed=seed),
                        on=["measure", "target"], how="left")
    noise = measure_seed_noise(oriented[converged(oriented)], table["measure"].unique(), cache)
    table["seed_noise"] = table["measure"].map(noise)
    return table.sort_values(["target", "tau"], ascending=[True, False], ignore_index=True)


ADDED_COLUMNS = ["added_tau", "added_lo", "added_hi", "added_configs"]


def added_table(df: pd.DataFrame, columns: Sequence[str], targets: Sequence[str], *, n_boot: int = 200,
                seed: int = 0) -> pd.DataFrame:
    """What each of ``columns`` (``measure.*``, already oriented) knows about each target beyond the hyperparameters:
    ``stats.within_configuration_tau``, Kendall's τ over seed replicates of one configuration, with its bootstrap
    interval over configurations; a lower end above 0 is information beyond seed noise. One row per (measure,
    target), both without their prefixes, with :data:`ADDED_COLUMNS`. Pair sums over the few pairs of replicates, for
    every measure at once: cheap enough to compute on every board instead of caching."""
    parts = [stats.within_configuration_tau(df, list(columns), t, n_boot=n_boot, seed=seed).assign(target=t)
             for t in targets]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["measure", "target", *ADDED_COLUMNS])
    out["measure"] = out["measure"].str.removeprefix("measure.")
    out["target"] = out["target"].str.removeprefix("metric.")
    return out[["measure", "target", *ADDED_COLUMNS]]


def adds_information(table: pd.DataFrame, target: str) -> pd.DataFrame:
    """The rows of ``table`` for ``target`` whose within-configuration τ interval lies above 0: the measures that
    order seed replicates of one configuration as the target does, beyond seed noise (none without the column)."""
    if "added_lo" not in table:
        return table.iloc[0:0]
    lo = pd.to_numeric(table["added_lo"], errors="coerce")
    return table[(table.target == target) & (lo > 0)]


def tied_value(tied) -> bool | None:
    """``tied_with_best`` as read back from a table (a bool, "True"/"False", or missing): None when untested."""
    if isinstance(tied, str):
        return tied.lower() == "true"
    if isinstance(tied, (bool, np.bool_)):
        return bool(tied)
    return None


def pareto_front(table: pd.DataFrame, target: str = "gap_error") -> list[str]:
    """The measures no other measure beats on both cost and τ against ``target``: sorted by seconds per model
    (ties by τ, best first), each measure whose τ exceeds that of every cheaper one. Cheapest first; rows
    without a finite cost or τ are left out."""
    if "seconds" not in table:
        return []
    t = table[(table.target == target) & np.isfinite(table.tau.astype(float)) & np.isfinite(
        table.seconds.astype(float))].sort_values(["seconds", "tau"], ascending=[True, False])
    front, best = [], -math.inf
    for name, tau in zip(t.measure, t.tau):
        if tau > best:
            front.append(name)
            best = tau
    return front


def cheapest_tied(table: pd.DataFrame, target: str = "gap_error") -> pd.Series | None:
    """The cheapest measure (seconds per model) that the paired test cannot tell apart from #1 on ``target``
    (#1 itself included); None without a paired test (no seed replicates) or costs."""
    t = table[(table.target == target) & table.tau.notna()]
    if "tied_with_best" not in t or "seconds" not in t or t.empty:
        return None
    best = t.loc[t.tau.idxmax()]
    tied = t[t["tied_with_best"].map(lambda x: tied_value(x) is True)]
    group = pd.concat([best.to_frame().T, tied]).drop_duplicates("measure")
    group = group[np.isfinite(group.seconds.astype(float))]
    return None if group.empty else group.loc[group.seconds.astype(float).idxmin()]


def measure_seed_noise(df: pd.DataFrame, names: Sequence[str], cache: StatsCache | None = None) -> dict[str, float]:
    """Each measure's own seed noise: its pooled seed-to-seed standard deviation within configurations over the
    standard deviation of its configuration means (``stats.seed_noise``: sd_seed / sd_config). Near 0 the
    measure is a property of the configuration; at 1 or more a rerun with other seeds moves a model as far as
    changing its hyperparameters does, and no ranking of single models by it can be trusted. NaN without
    replicates. A ``cache`` serves the measures whose values and zoo it has seen."""
    zoo = digest("seed_noise", zoo_columns(df), code_version()) if cache is not None else None
    out = {}
    for name in names:
        column = f"measure.{name}"
        if column not in df:
            out[name] = math.nan
        elif cache is None:
            out[name] = _seed_noise_ratio(df, column)
        else:
            out[name] = cache.memo("seed_noise", digest(zoo, df[column]), lambda: _seed_noise_ratio(df, column))
    return out


def _seed_noise_ratio(df: pd.DataFrame, column: str) -> float:
    n = stats.seed_noise(df, column)
    seed, config = n["sd_seed"], n["sd_config"]
    return seed / config if np.isfinite(seed) and np.isfinite(config) and config > 0 else math.nan


def _oriented(df: pd.DataFrame, info: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A copy of ``df`` with every ranked (non-oracle) measure multiplied by its declared sign, and their columns."""
    ranked = info[~info.oracle]
    oriented, names = df.copy(), []
    for name, sign in zip(ranked.measure, ranked.sign):
        col = f"measure.{name}"
        if col in df:
            oriented[col] = sign * df[col]
            names.append(col)
    return oriented, names


def identical_groups(df: pd.DataFrame, columns: Sequence[str], rtol: float = 1e-9) -> dict[str, list[str]]:
    """Columns that hold the same values on every model of ``df`` (NaN in the same places, the rest equal to
    ``rtol``), grouped under the first of them in ``columns`` order: {kept: [its duplicates]}. On an MLP zoo the
    FFT variants of the spectral measures equal the direct ones; the leaderboard ranks each group once and
    names the others beside it (``identical``), instead of listing tied rows. Columns without a value (a
    measure undefined on every model) are never grouped."""
    values = {c: df[c].to_numpy(dtype=float) for c in columns}
    missing = {c: np.isnan(v) for c, v in values.items()}
    # each column's first value: two columns whose first values differ (both finite) cannot be equal to rtol
    first = {c: float(v[~missing[c]][0]) if (~missing[c]).any() else math.nan for c, v in values.items()}
    groups: dict[str, list[str]] = {}
    for c in columns:
        v, nan, a = values[c], missing[c], first[c]
        for k in groups if (~nan).any() else ():
            b = first[k]
            if math.isfinite(a) and math.isfinite(b) and abs(a - b) > rtol * abs(b):
                continue
            if np.array_equal(nan, missing[k]) and np.allclose(v[~nan], values[k][~nan], rtol=rtol, atol=0.0):
                groups[k].append(c)
                break
        else:
            groups[c] = []
    return groups


EARLY_FINAL = 1.0  # the fraction column of the final models in the early-prediction table


def early_table(df: pd.DataFrame, early: pd.DataFrame, info: pd.DataFrame, axes: list[str], *,
                target: str = TARGETS["gap_error"], n_boot: int = 200, seed: int = 0,
                cache: StatsCache | None = None) -> pd.DataFrame:
    """How well each measure, computed on the weights kept at a fraction of training, predicts the final
    ``target`` of the same models: τ (oriented by the declared sign) with the leaderboard's seed-bootstrap
    interval, per measure and fraction, and the final models' τ (``fraction`` 1) beside them.

    ``early``: the store's early table (``Store.early``), at the versions of ``info``. Columns: measure, fraction,
    epoch_fraction (the mean real fraction of the snapshots: they are the kept epochs nearest the requested one),
    n_models, tau, tau_lo, tau_hi, and tau_final (the same measure on the final weights, where measured)."""
    columns = ["measure", "fraction", "epoch_fraction", "n_models", "tau", "tau_lo", "tau_hi", "tau_final"]
    sign = dict(zip(info.measure, info.sign))
    version = dict(zip(info.measure, info.version))
    early = early[[version.get(m) == v for m, v in zip(early.measure, early.version)]]
    early = early[early.model_id.isin(df.model_id)]
    if early.empty:
        return pd.DataFrame(columns=columns)
    wide = df[[c for c in df if not c.startswith("measure.")]].copy()  # the early.* columns are added below
    cols, where = [], {}
    epochs = df.set_index("model_id")["metric.epochs"]
    for (name, fraction), g in early.groupby(["measure", "fraction"]):
        col = f"early.{name}@{fraction:g}"
        values = g.set_index("model_id").value
        wide[col] = sign[name] * df.model_id.map(values).astype(float)
        ok = g[g.status == "ok"]  # a failed row may not know its snapshot's epoch
        real = (ok.set_index("model_id").epoch / epochs.reindex(ok.model_id).to_numpy())
        where[col] = (name, float(fraction), float(real.mean()))
        cols.append(col)
    for name in early.measure.unique():
        if f"measure.{name}" in df:
            col = f"early.{name}@{EARLY_FINAL:g}"
            wide[col] = sign[name] * df[f"measure.{name}"]
            where[col] = (name, EARLY_FINAL, EARLY_FINAL)
            cols.append(col)
    res = stats.evaluate(wide, cols, targets=[target], axes=axes, n_boot=n_boot, seed=seed, cmi_permutations=0,
                         cache=cache)
    rows = []
    for r in res.itertuples():
        name, fraction, real = where[r.measure]
        rows.append({"measure": name, "fraction": fraction, "epoch_fraction": real, "n_models": r.n_models,
                     "tau": r.tau, "tau_lo": r.tau_lo, "tau_hi": r.tau_hi})
    out = pd.DataFrame(rows)
    final = out[out.fraction == EARLY_FINAL].set_index("measure").tau
    out["tau_final"] = out.measure.map(final)
    order = list(dict.fromkeys(out.sort_values("tau_final", ascending=False, na_position="last").measure))
    out["measure"] = pd.Categorical(out.measure, order, ordered=True)
    return out.sort_values(["measure", "fraction"], ignore_index=True).assign(
        measure=lambda t: t.measure.astype(str))[columns]


BASELINE = "baseline"  # the family of the reference columns: shown with the leaderboard, never ranked


def baseline_columns(df: pd.DataFrame, axes: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Reference "measures" that calibrate every statistic of the leaderboard (Jiang et al. 2020, §6), as
    ``measure.baseline.*`` columns of a copy of ``df``:

    * ``baseline.random``: U(0, 1), seeded (``numpy.random.default_rng(seed)``): what chance scores.
    * ``baseline.noisy_oracle``: the model's real test error plus Gaussian noise of the seed noise measured on
      this zoo (``stats.seed_noise`` of the test error): the best a measure could do if it knew the test error
      only as well as one rerun does. Without replicates the noise is 0 and it is the oracle itself.
    * ``baseline.axis.<axis>``: the value of one numeric hyperparameter axis, oriented by the sign of its τ
      with the gap (chosen on the data, so optimistic): what knowing only that axis's direction scores, the
      canonical ordering of Jiang et al.

    The hyperparameter baseline (``baseline.hparams``) predicts one target and is scored against that target only;
    :func:`baseline_table` adds it per target.
    """
    out = df.copy()
    rng = np.random.default_rng(seed)
    out["measure.baseline.random"] = rng.random(len(df))
    noise = stats.seed_noise(df[converged(df)], "metric.test_error")["sd_seed"]
    noise = noise if math.isfinite(noise) else 0.0
    out["measure.baseline.noisy_oracle"] = df["metric.test_error"] + noise * rng.standard_normal(len(df))
    for axis in axes:
        if axis in df and pd.api.types.is_numeric_dtype(df[axis]) and df[axis].nunique() >= 2:
            tau = stats.kendall_tau(out.assign(_a=df[axis].astype(float)), "_a", "metric.gap_error")
            out[f"measure.baseline.axis.{axis.removeprefix('hp.')}"] = (-1.0 if tau < 0 else 1.0) * df[axis]
    return out


HPARAMS = "baseline.hparams"


def hparam_prediction(df: pd.DataFrame, target: str, seed: int = 0, cache: StatsCache | None = None) -> np.ndarray:
    """``stats.hparam_baseline`` of ``target`` from every hyperparameter that varies over the converged models (the
    seed excepted), one value per row of ``df``; a ``cache`` keeps it under the zoo, the target, the seed and the
    code, so a board evaluated again does not refit it."""
    hp = stats.default_axes(df[converged(df)])
    compute = lambda: stats.hparam_baseline(df, target, hp, seed=seed)  # noqa: E731
    if cache is None:
        return compute()
    key = digest("hparams", zoo_columns(df), target, hp, seed, code_version())
    return cache.memo("hparams", key, compute)


def baseline_table(df: pd.DataFrame, axes: list[str], *, targets: Sequence[str] = tuple(TARGETS.values()),
                   n_boot: int = 200, seed: int = 0, alpha: float = 0.05,
                   cache: StatsCache | None = None) -> pd.DataFrame:
    """The statistics of the baselines (:func:`baseline_columns`) and of the hyperparameter baseline
    (``baseline.hparams``: :func:`hparam_prediction` of each target, scored against that target only), computed like
    the measures' but apart from them, so that they never enter the ranking or its comparison with the best measure;
    with what each adds beyond the hyperparameters (:func:`added_table`: 0 for ``baseline.hparams`` by
    construction). One ``stats.evaluate`` per target, so each target's comparison with the best baseline includes
    that target's own ``baseline.hparams``."""
    with_baselines = baseline_columns(df, axes, seed)
    names = [c for c in with_baselines if c.startswith("measure.baseline.")]
    parts = []
    for target in targets:
        frame = with_baselines.assign(**{f"measure.{HPARAMS}": hparam_prediction(df, target, seed, cache)})
        columns = [*names, f"measure.{HPARAMS}"]
        part = stats.evaluate(frame, columns, targets=[target], axes=axes, n_boot=n_boot, seed=seed, alpha=alpha,
                              cache=cache)
        part["measure"] = part["measure"].str.removeprefix("measure.")
        part["target"] = part["target"].str.removeprefix("metric.")
        parts.append(part.merge(added_table(frame, columns, [target], n_boot=n_boot, seed=seed),
                                on=["measure", "target"], how="left"))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["measure", "target", "tau"])
    table["family"] = BASELINE
    return table.sort_values(["target", "tau"], ascending=[True, False], ignore_index=True)


def reliability(df: pd.DataFrame, info: pd.DataFrame, *, targets: Sequence[str] = tuple(TARGETS.values()),
                seed: int = 0, cache: StatsCache | None = None) -> dict:
    """Split-half reliability of the ranking of the ranked measures (oriented by sign; each group of identical
    measures once, as the leaderboard ranks them, since copies would agree with themselves), per target
    (``stats.split_half``)."""
    oriented, names = _oriented(df[converged(df)], info)
    names = list(identical_groups(oriented, names))
    return {t.removeprefix("metric."): stats.split_half(oriented, names, t, seed=seed, cache=cache) for t in targets}


def task_summary(table: pd.DataFrame, df: pd.DataFrame, reliability: dict, axes: Sequence[str]) -> dict:
    """One task of a suite in a few numbers: its models, the test error of its best configuration (the mean over
    the seeds), the axes it varies, its #1 on the gap, the size of the group tied with #1 and the split-half ρ."""
    conv = df[converged(df)]
    best = conv.groupby(stats.configurations(conv))["metric.test_error"].mean().min() if len(conv) else math.nan
    gap = table[(table.target == "gap_error") & table.tau.notna()]
    tied = gap["tied_with_best"].map(lambda x: tied_value(x) is True)
    return {"n_models": len(df), "n_converged": len(conv), "best_test_error": float(best), "axes": list(axes),
            "leader": gap.loc[gap.tau.idxmax(), "measure"] if len(gap) else "—",
            "tied": int(tied.sum()) if len(gap) else 0,
            "rho": (reliability.get("gap_error") or {}).get("rho", math.nan)}


def oracle_table(df: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """Oracle analyses (they see test data): their mean value and its correlation with the measured gap."""
    rows = []
    for name in info[info.oracle].measure:
        col = f"measure.{name}"
        if col not in df:
            continue
        v = df[col]
        rows.append({"measure": name, "mean": v.mean(), "mean_gap_loss": df["metric.gap_loss"].mean(),
                     "corr_with_gap_loss": v.corr(df["metric.gap_loss"]),
                     "n_models": int(v.notna().sum())})
    return pd.DataFrame(rows)
