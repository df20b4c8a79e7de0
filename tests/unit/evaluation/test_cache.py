"""The statistics cache: a board built with it equals the board built without it, value by value; a measure seen
before is read from the cache and a new or changed one computed; any change to the zoo or the settings misses,
and a board says why in one line."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from benchmark import stats
from benchmark.evaluation import board
from benchmark.evaluation import leaderboard as lb
from benchmark.evaluation.cache import StatsCache, digest, zoo_columns
from tests.unit.evaluation.stats.zoos import make_zoo

AXES = ["hp.model.depth", "hp.optimizer.lr", "hp.train.batch_size"]
TARGETS = ["metric.gap_error", "metric.test_error"]


class _Measure:
    def __init__(self, name, sign=1):
        self.name, self.family, self.sign, self.oracle, self.version = name, "f", sign, False, 1
        self.sample_size, self.invariances, self.description, self.reference = None, (), f"{name}.", "a test"


def _zoo(extra: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A zoo with three seeds per configuration, its measures' info and costs; ``extra`` adds a fourth measure
    that carries seed-level information (the gap plus small noise)."""
    df = make_zoo(seed=3, n_seeds=3)
    df.insert(0, "model_id", [f"m{i:03d}" for i in range(len(df))])
    if extra:
        df["measure.new"] = df["metric.gap_error"] + 0.01 * np.random.default_rng(1).standard_normal(len(df))
    names = [c.removeprefix("measure.") for c in df if c.startswith("measure.")]
    info = lb.measure_info([_Measure(n) for n in names])
    costs = pd.DataFrame({"measure": info.measure, "seconds": 0.01, "failures": 0, "failure_message": None,
                          "not_applicable": 0, "not_applicable_reason": None})
    return df, info, costs


def _build(df, info, costs, cache=None, n_boot=20):
    return board.build("zoo", df, info, costs, AXES, TARGETS, n_boot=n_boot, seed=0, cache=cache)


def test_digest_tells_apart_values_dtypes_order_and_types():
    a = pd.Series([1.0, 2.0, np.nan])
    assert digest(a) == digest(a.copy()) == digest(np.array([1.0, 2.0, np.nan]))
    assert digest(a) != digest(a[::-1].reset_index(drop=True))
    assert digest(a) != digest(a.astype("float32"))
    assert digest(np.array([1.0, 2.0, 3.0])) != digest(np.array([1.0, 2.0, 3.0 + 1e-15]))
    assert digest(1) != digest(1.0) != digest("1") and digest(True) != digest(1)
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1}) != digest({"a": 2, "b": 1})
    assert digest("ab", "c") != digest("a", "bc")
    frame = pd.DataFrame({"x": [1, 2], "measure.m": [3.0, 4.0], "early.m@0.5": [1.0, 1.0]})
    assert list(zoo_columns(frame).columns) == ["x"]


def test_evaluate_with_a_cache_equals_evaluate_without(tmp_path):
    df = make_zoo(seed=2, n_seeds=3, unconverged=4)
    names = [c for c in df if c.startswith("measure.")]
    plain = stats.evaluate(df, names, n_boot=30, seed=7)
    cache = StatsCache(tmp_path / "s.sqlite")
    cold = stats.evaluate(df, names, n_boot=30, seed=7, cache=cache)
    warm = stats.evaluate(df, names, n_boot=30, seed=7, cache=StatsCache(tmp_path / "s.sqlite"))
    pd.testing.assert_frame_equal(cold, plain)
    pd.testing.assert_frame_equal(warm, plain)
    assert cold.attrs == plain.attrs == warm.attrs
    assert cache.computed["columns"] == len(names) and cache.reused["columns"] == 0


def test_a_new_measure_is_the_only_one_computed_and_the_board_equals_a_full_build(tmp_path):
    base, base_info, base_costs = _zoo()
    full_df, info, costs = _zoo(extra=True)
    full = _build(full_df, info, costs)
    cache = StatsCache(tmp_path / "s.sqlite")
    cache.start("zoo", {})
    _build(base, base_info, base_costs, cache)
    cache.start("zoo", {})
    incremental = _build(full_df, info, costs, cache)
    assert incremental.equals(full)
    assert cache.computed["ranked"] == 1 and cache.computed["split_half"] == len(TARGETS)
    assert cache.reused["ranked"] > 0
    new = incremental.table.query("measure == 'new' and target == 'gap_error'").iloc[0]
    assert 0.5 < new.tau < 1 and np.isfinite(new.tau_vs_best_p_holm)  # compared with #1, Holm over one more


def test_a_changed_value_a_changed_setting_and_a_new_model_miss(tmp_path):
    df, info, costs = _zoo()
    path = tmp_path / "s.sqlite"
    cache = StatsCache(path)
    cache.start("zoo", {})
    _build(df, info, costs, cache)
    names = len(info)

    changed = df.copy()
    col = f"measure.{info.measure.iloc[0]}"
    changed.loc[0, col] = changed.loc[0, col] * (1 + 1e-12)
    cache.start("zoo", {})
    assert _build(changed, info, costs, cache).equals(_build(changed, info, costs))
    assert cache.computed["ranked"] == 1

    cache.start("zoo", {})
    assert _build(df, info, costs, cache, n_boot=21).equals(_build(df, info, costs, n_boot=21))
    assert cache.reused["ranked"] == 0 and cache.computed["ranked"] >= names

    cache.start("zoo", {})
    fewer = df.iloc[1:].reset_index(drop=True)
    assert _build(fewer, info, costs, cache).equals(_build(fewer, info, costs))
    assert cache.reused["ranked"] == 0


def test_prune_drops_only_what_the_board_no_longer_uses(tmp_path):
    df, info, costs = _zoo(extra=True)
    cache = StatsCache(tmp_path / "s.sqlite")
    cache.start("zoo", {})
    _build(df, info, costs, cache)
    assert cache.prune() == 0
    smaller, small_info, small_costs = _zoo()
    cache.start("zoo", {})
    _build(smaller, small_info, small_costs, cache)
    assert cache.prune() == 2 * len(TARGETS) + 1  # per target its rows and split-half taus, and its seed noise
    reopened = StatsCache(tmp_path / "s.sqlite")
    reopened.start("zoo", {})
    _build(smaller, small_info, small_costs, reopened)
    assert reopened.computed["ranked"] == 0 and reopened.computed["split_half"] == 0


def test_a_board_says_in_one_line_why_the_cache_cannot_serve_it(tmp_path):
    cache = StatsCache(tmp_path / "s.sqlite")
    state = {"zoo": "a", "models": 10, "code": "c", "settings": {"n_boot": 200, "seed": 0}}
    assert cache.start("b", state) is None and cache.start("b", state) is None
    why = cache.start("b", {**state, "zoo": "z", "models": 11, "settings": {"n_boot": 100, "seed": 0}})
    assert why == "the zoo changed (10 → 11 models); the evaluation settings changed (n_boot 200 → 100)"
    assert "\n" not in why
    assert StatsCache.why(state, {**state, "code": "d"}) == "genbench's statistics code or numerical libraries changed"
    assert StatsCache.why(state, {**state, "zoo": "y"}) == "the zoo's models or metrics changed"


def test_an_unwritable_cache_says_so_once_and_works_in_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="genbench"):
        cache = StatsCache(blocker / "cache" / "s.sqlite")
    assert len(caplog.records) == 1 and "cannot be written" in caplog.records[0].getMessage()
    df, info, costs = _zoo()
    cache.start("zoo", {})
    first = _build(df, info, costs, cache)
    cache.start("zoo", {})
    assert _build(df, info, costs, cache).equals(first) and cache.computed["ranked"] == 0


@pytest.mark.parametrize("splits", [0, 5])
def test_split_half_with_a_cache_equals_split_half_without(tmp_path, splits):
    df = make_zoo(seed=4, n_seeds=3 if splits else 1)
    names = [c for c in df if c.startswith("measure.")]
    plain = stats.split_half(df, names, "metric.gap_error", splits=splits or 5, seed=3)
    cache = StatsCache(tmp_path / "s.sqlite")
    for _ in range(2):
        assert stats.split_half(df, names, "metric.gap_error", splits=splits or 5, seed=3, cache=cache) == plain
