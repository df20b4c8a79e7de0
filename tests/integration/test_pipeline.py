"""End to end on real (tiny) training: zoo → store → measures → statistics → leaderboard, plus plugins,
reuse without retraining, failure recording and the CLI."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

import measures
from benchmark import pipeline
from benchmark.store import Store
from benchmark.zoo import expand


def _mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in (root / "checkpoints").glob("*.pt")}


def test_end_to_end_then_reuse(trained_tiny, tmp_path):
    """The session's tiny zoo was trained (4 models) and measured (12 values) by the pipeline; evaluate it,
    then rerun train and measure: nothing is recomputed."""
    cfg = trained_tiny()
    table = pipeline.evaluate(cfg)
    assert set(table.measure) == {"params", "log_prod_of_fro", "dist_init_fro"}
    assert set(table.target) == {"gap_error", "test_error", "shift_gap"}
    md = (tmp_path / "lb" / "smoke-digits.md").read_text()
    assert "`dist_init_fro`" in md and "spread" in md
    text = pipeline.leaderboard(cfg)
    assert "log_prod_of_fro" in text

    store = Store(tmp_path / "store")
    df = store.frame()
    assert len(df) == 4 and df["metric.converged"].all()
    assert {"hp.model.width", "metric.gap_error", "measure.params"} <= set(df.columns)
    # the width axis changes the parameter count exactly as the architecture says (digits: 64 inputs), and the
    # value is reported adjusted for the training-set size: ½(log ω − log m)
    for _, row in df.iterrows():
        w, m = row["hp.model.width"], row["hp.dataset.train_size"]
        assert row["measure.params"] == pytest.approx(0.5 * (math.log(64 * w + w + w * 10 + 10) - math.log(m)))

    before = _mtimes(tmp_path / "store")
    assert pipeline.train(cfg) == {"reused": 4, "trained": 0, "converged": 4}
    counts = pipeline.measure(cfg)
    seconds = counts.pop("seconds")  # the wall time of the two sub-stages (genbench perf reports them)
    assert set(seconds) == {"final", "early"} and all(t >= 0 for t in seconds.values())
    assert counts == {"reused": 12, "computed": 0, "failed": 0, "not_applicable": 0, "shift_filled": 0,
                      "early": {"computed": 0, "failed": 0, "without_snapshots": 0}}
    assert _mtimes(tmp_path / "store") == before


def test_same_config_same_model(tiny_cfg, tmp_path):
    from benchmark.training.loop import train_model
    from benchmark.zoo.datasets import make_data
    hp = expand(tiny_cfg())[0]
    a = train_model(hp, make_data(hp.dataset))
    b = train_model(hp, make_data(hp.dataset))
    assert a.metrics["epochs"] == b.metrics["epochs"]
    for k in a.final_state:
        assert torch.equal(a.final_state[k], b.final_state[k])


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_measures.py"
    path.write_text(textwrap.dedent('''
        import math
        from measures import Context, NotApplicable, measure

        @measure("test_plugin.sq_norm", needs=("model",), sign=1, family="plugin", reference="a test")
        def sq_norm(ctx: Context) -> float:
            """Sum of squared weights."""
            return sum(float((w ** 2).sum()) for w in ctx.weights)

        @measure("test_plugin.raises", needs=("model",), sign=1, family="plugin", reference="a test")
        def raises(ctx: Context) -> float:
            """Always raises."""
            raise RuntimeError("deliberate failure")

        @measure("test_plugin.nan", needs=("model",), sign=1, family="plugin", reference="a test")
        def nan(ctx: Context) -> float:
            """Always NaN."""
            return math.nan

        @measure("test_plugin.na", needs=("model", "train_data"), sign=1, family="plugin", reference="a test")
        def only_large(ctx: Context) -> float:
            """Defined on training sets of more than 200 samples only."""
            if len(ctx.y_train) <= 200:
                raise NotApplicable(f"needs more than 200 training samples, has {len(ctx.y_train)}")
            return float(len(ctx.y_train))
    '''))
    yield path
    for name in ("test_plugin.sq_norm", "test_plugin.raises", "test_plugin.nan", "test_plugin.na"):
        if name in measures.REGISTRY:
            measures.REGISTRY.remove(name)
    from measures import plugins
    plugins._LOADED.discard(str(path.resolve()))


def test_plugin_scored_on_stored_zoo_without_retraining(trained_tiny, tmp_path, plugin_file):
    tiny_cfg = trained_tiny
    before = _mtimes(tmp_path / "store")
    models_before = Store(tmp_path / "store").models()

    cfg = tiny_cfg(f"measures.plugins=[{plugin_file}]",
                   "measures.include=[params,log_prod_of_fro,dist_init_fro,test_plugin.sq_norm,"
                   "test_plugin.raises,test_plugin.nan,test_plugin.na]")
    assert pipeline.train(cfg)["trained"] == 0
    counts = pipeline.measure(cfg)
    assert counts.pop("seconds")["final"] > 0
    assert counts == {"reused": 12, "computed": 16, "failed": 8, "not_applicable": 2, "shift_filled": 0,
                      "early": {"computed": 0, "failed": 0, "without_snapshots": 0}}
    assert _mtimes(tmp_path / "store") == before
    pd.testing.assert_frame_equal(Store(tmp_path / "store").models(), models_before)

    long = Store(tmp_path / "store").measurements().set_index(["measure"])
    assert (long.loc["test_plugin.raises", "error"] == "RuntimeError: deliberate failure").all()
    assert long.loc["test_plugin.nan", "error"].str.contains("non-finite").all()
    assert (long.loc["test_plugin.sq_norm", "status"] == "ok").all()
    na = long.loc["test_plugin.na"]
    assert sorted(na.status) == ["not_applicable", "not_applicable", "ok", "ok"]
    assert set(na[na.status == "not_applicable"].error) == {"needs more than 200 training samples, has 150"}
    again = cfg.copy()
    again.measures.retry_failed = True
    retried = pipeline.measure(again)
    assert retried["computed"] == 8 and retried["not_applicable"] == 0  # the failures again, never the n/a

    table = pipeline.evaluate(cfg)
    row = table[(table.measure == "test_plugin.sq_norm") & (table.target == "gap_error")].iloc[0]
    assert row.family == "plugin" and row.failures == 0
    failed = table[(table.measure == "test_plugin.raises") & (table.target == "gap_error")].iloc[0]
    assert failed.failures == 4 and "deliberate failure" in failed.failure_message
    na = table[(table.measure == "test_plugin.na") & (table.target == "gap_error")].iloc[0]
    assert na.failures == 0 and na.not_applicable == 2 and "200 training samples" in na.not_applicable_reason
    board = (tmp_path / "lb" / "smoke-digits.md").read_text()
    assert "## Failures" in board and "## Not applicable" in board
    assert "`test_plugin.na` | 2 | needs more than 200" in board.split("## Not applicable")[1]


def test_plugin_errors_name_file_and_line(tmp_path):
    from measures.plugins import PluginError, load_file
    bad = tmp_path / "bad_syntax.py"
    bad.write_text("x = 1\ndef f(:\n    pass\n")
    with pytest.raises(PluginError, match=r"bad_syntax.py, line 2"):
        load_file(bad)
    dup = tmp_path / "dup.py"
    dup.write_text("from measures import measure\n\n@measure('params', family='plugin', reference='x')\n"
                   "def f(ctx):\n    return 1.0\n")
    with pytest.raises(PluginError, match=r"dup.py, line 3.*already registered"):
        load_file(dup)


def _genbench(*args, cwd):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_lists_measures_and_rejects_bad_input(tmp_path):
    out = _genbench("measures", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "dist_init_fro" in out.stdout and "reference:" in out.stdout
    n = int(out.stdout.split()[0])
    assert n == len(measures.REGISTRY)

    bad = _genbench("train", "optimizer.lr=-1", f"store.root={tmp_path}/s", cwd=tmp_path)
    assert bad.returncode != 0 and "optimizer.lr must be > 0" in bad.stderr
    assert not (tmp_path / "s" / "checkpoints").exists() or not any((tmp_path / "s" / "checkpoints").iterdir())
    unknown = _genbench("train", "dataset=nope", cwd=tmp_path)
    assert unknown.returncode != 0 and "mnist1d" in unknown.stderr  # lists the valid options
    cmd = _genbench("fly", cwd=tmp_path)
    assert cmd.returncode != 0 and "valid: run, train" in cmd.stderr
    repro = _genbench("reproduce", "nope", cwd=tmp_path)
    assert repro.returncode != 0 and "pnas" in repro.stderr
    m = _genbench("measures", "measures.include=[nope]", cwd=tmp_path)
    assert m.returncode != 0 and "unknown measure 'nope'; valid:" in m.stderr


def test_training_tasks_keep_stacks_whole_unless_workers_would_idle():
    from benchmark.training.jobs import split_tasks as _stacks
    from tests.conftest import make_cfg
    # the default zoo: 24 stacks of 6 (2 learning rates x 3 seed replicates); a stack shares its training-set
    # size, and with the clean count fixed every label-noise level has its own
    zoo = expand(make_cfg())
    tasks = _stacks(zoo, jobs=2)
    assert sorted(len(t) for t in tasks) == [6] * 24
    assert len({hp.seed for hp in tasks[0]}) == 3  # replicates train in one stack
    assert tasks[0][0].model.width == 128 and tasks[0][0].dataset.train_size == 2000  # costliest first
    one_stack = [hp for hp in zoo if hp.model.width == 64 and hp.train.batch_size == 32
                 and hp.dataset.train_size == 1000]
    assert sorted(len(t) for t in _stacks(one_stack, jobs=2)) == [6, 6, 6]
    assert sorted(len(t) for t in _stacks(one_stack[:6], jobs=2)) == [3, 3]  # one stack, split for 2 workers
    assert sorted(hp.model_id for t in _stacks(zoo, jobs=4) for hp in t) == sorted(hp.model_id for hp in zoo)
