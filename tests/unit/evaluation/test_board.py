"""The typed board: built from explicit arguments, saved and loaded exactly (dtypes, None apart from NaN), read from
the CSVs of a board written before the typed form existed; and the typed suite."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmark.evaluation import board, suite
from benchmark.evaluation import leaderboard as lb
from tests.unit.evaluation.stats.zoos import make_zoo

AXES = ["hp.model.depth", "hp.optimizer.lr", "hp.train.batch_size"]
TARGETS = ["metric.gap_error", "metric.test_error"]


class _Measure:
    def __init__(self, name, sign=1, oracle=False):
        self.name, self.family, self.sign, self.oracle, self.version = name, "f", sign, oracle, 1
        self.sample_size, self.invariances, self.description, self.reference = None, (), f"{name}.", "a test"


def _zoo() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = make_zoo(n_seeds=2)
    df.insert(0, "model_id", [f"m{i:02d}" for i in range(len(df))])
    df["measure.oracle_loss"] = df["metric.gap_loss"] * 2
    names = [c.removeprefix("measure.") for c in df if c.startswith("measure.")]
    info = lb.measure_info([_Measure(n, oracle=n == "oracle_loss") for n in names])
    return df, info


@pytest.fixture(scope="module")
def built() -> board.Board:
    df, info = _zoo()
    costs = pd.DataFrame({"measure": info.measure, "seconds": 0.01, "failures": 0, "failure_message": None,
                          "not_applicable": 0, "not_applicable_reason": None})
    return board.build("zoo-data", df, info, costs, AXES, TARGETS, n_boot=20, seed=0)


def test_build_computes_what_evaluate_computes(built):
    df, info = _zoo()
    assert built.name == "zoo-data" and built.alpha == 0.05 and built.axes == AXES and built.targets == TARGETS
    assert built.zoo is not None and built.early is None
    assert set(built.table.target) == {"gap_error", "test_error"} and "oracle_loss" not in set(built.table.measure)
    assert list(built.oracle.measure) == ["oracle_loss"]
    assert built.reliability == lb.reliability(df, info, targets=TARGETS, seed=0)
    noise = lb.gap_noise(df)
    assert built.noise.keys() == noise.keys()
    assert all(built.noise[k] == noise[k] or (math.isnan(built.noise[k]) and math.isnan(noise[k])) for k in noise)
    pd.testing.assert_frame_equal(built.baselines, lb.baseline_table(df, AXES, targets=TARGETS, n_boot=20, seed=0))
    assert built.table["tied_with_best"].map(lambda x: x is None or isinstance(x, bool)).all()


def test_a_saved_board_loads_equal_dtypes_and_missing_values_included(built, tmp_path):
    path = built.save(tmp_path / "zoo-data.board.json")
    loaded = board.load(path)
    assert loaded.equals(built) and json.dumps(loaded.typed(), separators=(",", ":")) == path.read_text()
    for name in ("table", "zoo", "baselines", "oracle"):
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(built, name), check_exact=True)
        assert list(getattr(loaded, name).dtypes) == list(getattr(built, name).dtypes)
    for column in [c for c in built.table if built.table[c].dtype.kind == "O"]:  # None stays None, NaN stays NaN
        assert [type(x) for x in loaded.table[column]] == [type(x) if not isinstance(x, np.generic) else
                                                             type(x.item()) for x in built.table[column]], column
    assert (loaded.reliability, loaded.alpha, loaded.axes, loaded.targets) == \
        (built.reliability, built.alpha, built.axes, built.targets)
    assert loaded.noise == pytest.approx(built.noise, rel=0, abs=0, nan_ok=True)


def test_equality_sees_a_changed_cell_none_against_nan_and_a_dtype():
    table = pd.DataFrame({"measure": ["a", "b"], "target": "gap_error", "tau": [0.5, 0.25], "tier": [1, None],
                          "identical": pd.Series(["", None], dtype=object)})
    zoo = pd.DataFrame({"metric.converged": [True, True], "metric.gap_error": [0.1, 0.2],
                        "metric.test_error": [0.2, 0.3], "metric.test_size": [100, 100]})
    one = board.Board("x", table, zoo)
    assert one.equals(board.Board("x", table.copy(), zoo.copy()))
    assert not one.equals(board.Board("x", table.assign(tau=[0.5, 0.25 + 1e-16 * 2.5]), zoo))
    assert not one.equals(board.Board("x", table.assign(identical=pd.Series(["", math.nan], dtype=object)), zoo))
    assert not one.equals(board.Board("x", table.assign(identical=["", None]), zoo))  # pandas' str dtype
    assert not one.equals(board.Board("x", table.assign(tau=table.tau.astype("float32")), zoo))
    assert not one.equals(board.Board("x", table, zoo, alpha=0.01))
    early = pd.DataFrame({"measure": ["a"], "fraction": [0.5], "tau": [math.nan]})
    with_early = board.Board("x", table, zoo, early=early)
    assert board.decode_table(board.encode_table(early)).equals(early) and not one.equals(with_early)


def test_a_table_the_typed_form_cannot_keep_is_refused():
    with pytest.raises(TypeError, match="category"):
        board.encode_table(pd.DataFrame({"a": pd.Categorical(["x"])}))
    with pytest.raises(ValueError, match="default index"):
        board.encode_table(pd.DataFrame({"a": [1.0]}, index=[3]))


def test_a_board_without_a_typed_form_is_read_from_its_tables(built, tmp_path):
    paths = {k: tmp_path / f"b.{k}" for k in ("results", "zoo", "oracle", "baselines", "summary", "early")}
    built.table.to_csv(paths["results"], index=False)
    built.zoo.to_csv(paths["zoo"], index=False)
    built.oracle.to_csv(paths["oracle"], index=False)
    paths["summary"].write_text(json.dumps({"reliability": built.reliability}))
    old = board.read("b", tmp_path / "b.board.json", paths)
    assert old.baselines.empty and old.early is None and old.alpha == board.ALPHA
    assert old.axes == AXES and old.targets == TARGETS and old.reliability == built.reliability
    assert old.noise["n_converged"] == built.noise["n_converged"]
    assert list(old.oracle.measure) == ["oracle_loss"]
    built.save(tmp_path / "b.board.json")
    assert board.read("b", tmp_path / "b.board.json", paths).equals(built)  # the typed form first


def test_a_suite_saves_and_loads_equal(built, tmp_path):
    other = board.Board("zoo-other", built.table.assign(tau=built.table.tau[::-1].to_numpy()), built.zoo,
                        reliability=built.reliability)
    made = suite.build("s", {"a": built, "b": other})
    assert list(made.tasks) == ["a", "b"] and made.tasks["a"]["axes"] == AXES
    assert {"tau.a", "tau.b", "worst_tau"} <= set(made.cross.columns) and len(made.pairs) == 1
    loaded = suite.load(made.save(tmp_path / "s.suite.json"))
    assert loaded.equals(made)
    pd.testing.assert_frame_equal(loaded.cross, made.cross, check_exact=True)
    assert loaded.agreement["concordance"] == pytest.approx(made.concordance, nan_ok=True)
