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

import pandas as pd

from benchmark.errors import NothingToRankError
from benchmark.evaluation import stats
from measures.registry import ADJUSTED

TARGETS = {"gap_error": "metric.gap_error", "test_error": "metric.test_error"}


INVARIANCE_CODES = {"permutation": "P", "rescaling": "R", "units": "U"}  # the leaderboard's invariance column


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
    """The spread of generalization gaps against the binomial standard error of one model's test error.

    SE = √(p(1−p)/n_test) at the zoo's mean test error p; a ranking of models by gap is meaningful only when
    the spread (max − min) is several times the SE.
    """
    conv = df[df["metric.converged"].astype(bool)]
    gaps = conv["metric.gap_error"]
    p, n = conv["metric.test_error"].mean(), conv["metric.test_size"].median()
    se = math.sqrt(p * (1 - p) / n) if len(conv) else math.nan
    spread = gaps.max() - gaps.min() if len(conv) else math.nan
    return {"n_models": len(df), "n_converged": len(conv), "gap_min": gaps.min(), "gap_max": gaps.max(),
            "gap_std": gaps.std(), "gap_spread": spread, "test_error_se": se, "spread_over_se": spread / se}


def check_rankable(df: pd.DataFrame, zoo: str) -> None:
    """A ``NothingToRankError`` with the counts when fewer than two models of ``df`` converged: no statistic
    is defined, so there is nothing to rank."""
    conv = df["metric.converged"].astype(bool)
    if int(conv.sum()) >= 2:
        return
    diverged = int(df["metric.diverged"].astype(bool).sum()) if "metric.diverged" in df else 0
    target = df["hp.train.target_loss"].iloc[0] if "hp.train.target_loss" in df and len(df) else math.nan
    raise NothingToRankError(
        f"nothing to rank: {int(conv.sum())} of the {len(df)} models of zoo {zoo!r} converged to training "
        f"cross-entropy ≤ {target:g} ({diverged} diverged, {len(df) - int(conv.sum()) - diverged} ran out of "
        f"epochs); a smaller optimizer.lr or more train.max_epochs may help")


def results(df: pd.DataFrame, info: pd.DataFrame, cost: pd.DataFrame, axes: list[str], *,
            targets: Sequence[str] = tuple(TARGETS.values()), n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Every statistic of every measure against every target, oriented by sign, with cost and metadata."""
    ranked = info[~info.oracle]
    oriented = df.copy()
    names = []
    for name, sign in zip(ranked.measure, ranked.sign):
        col = f"measure.{name}"
        if col not in df:
            continue
        oriented[col] = sign * df[col]
        names.append(col)
    table = stats.evaluate(oriented, names, targets=list(targets), axes=axes, n_boot=n_boot, seed=seed)
    table["measure"] = table["measure"].str.removeprefix("measure.")
    table["target"] = table["target"].str.removeprefix("metric.")
    table = table.merge(info, on="measure", how="left").merge(cost, on="measure", how="left")
    return table.sort_values(["target", "tau"], ascending=[True, False], ignore_index=True)


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
