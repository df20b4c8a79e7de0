"""Fault injection: kill -9 mid-sweep, concurrent writers, Hydra launchers, timeouts, corrupt checkpoints.

Each test counts what is in the store afterwards; a lost or half-written row fails it.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from multiprocessing import get_context

import pytest

import measures
from benchmark import pipeline
from benchmark.store import CheckpointError, Store
from tests.conftest import TINY

SIX = ["zoo.axes.dataset.label_noise=[0.0,0.1,0.2]", "zoo.axes.model.width=[8,16]",
       "zoo.axes.dataset.train_size=[240]"]  # 240 clean: 300 samples in all at label noise 0.2


def _cli(command, *args, root, multirun=False):
    cmd = [sys.executable, "-m", "benchmark.cli", command, *(["-m"] if multirun else []), *TINY,
           f"store.root={root}", *SIX, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _count(root, table):
    path = root / "genbench.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _kill_when(proc, root, table, at_least, limit=240):
    start = time.time()
    while _count(root, table) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < limit
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _consistent(store: Store) -> int:
    """Every model row has a loadable checkpoint; no temporary files survive a new Store."""
    for model_id in store.model_ids():
        store.load_states(model_id)
    assert not list((store.root / "checkpoints").glob("*.tmp"))
    return len(store.model_ids())


def test_kill9_during_training_then_resume(tiny_cfg, tmp_path):
    root = tmp_path / "store"
    _kill_when(_cli("train", root=root), root, "models", 2)
    store = Store(root)
    done = _consistent(store)
    assert 2 <= done < 6
    # a checkpoint renamed into place just before the kill has no row yet: it is not a completed model
    before = {i: store.checkpoint_path(i).stat().st_mtime_ns for i in store.model_ids()}
    counts = pipeline.train(tiny_cfg(*SIX))
    assert counts == {"reused": done, "trained": 6 - done, "converged": 6}
    assert all(store.checkpoint_path(i).stat().st_mtime_ns == t for i, t in before.items())  # none retrained
    assert _consistent(Store(root)) == 6


@pytest.fixture
def slow_plugin(tmp_path):
    path = tmp_path / "slow.py"
    path.write_text(textwrap.dedent('''
        import time
        from measures import measure

        @measure("test_slow.sleepy", family="plugin", reference="a test")
        def sleepy(ctx):
            """Sleeps, then returns the parameter count."""
            time.sleep(0.4)
            return float(ctx.num_params)
    '''))
    yield path
    if "test_slow.sleepy" in measures.REGISTRY:
        measures.REGISTRY.remove("test_slow.sleepy")
    from measures import plugins
    plugins._LOADED.discard(str(path.resolve()))


def test_kill9_during_measuring_then_resume(tiny_cfg, tmp_path, slow_plugin):
    root = tmp_path / "store"
    pipeline.train(tiny_cfg(*SIX))
    args = [f"measures.plugins=[{slow_plugin}]", "measures.include=[params,test_slow.sleepy]"]
    _kill_when(_cli("measure", *args, root=root), root, "measurements", 3)
    stored = _count(root, "measurements")
    assert 3 <= stored < 12
    counts = pipeline.measure(tiny_cfg(*SIX, *args))
    assert counts["reused"] == stored and counts["computed"] == 12 - stored and counts["failed"] == 0
    long = Store(root).measurements()
    assert len(long) == 12 and (long.status == "ok").all()
    assert not long.duplicated(["model_id", "measure", "version"]).any()


def _hammer(root, worker, n):
    store = Store(root)
    for i in range(n):
        store.save_measurement(f"model-{worker}", f"m{i}", 1, float(i), 0.0, "ok")


def test_concurrent_writers_lose_no_row(tmp_path):
    Store(tmp_path)
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(tmp_path, w, 60)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert _count(tmp_path, "measurements") == 6 * 60


@pytest.mark.parametrize("launcher,extra", [("joblib", ["hydra.launcher.n_jobs=4"]),
                                            ("submitit_local", ["hydra.launcher.timeout_min=10"])])
def test_hydra_launcher_sweep_shards_into_one_store(tmp_path, launcher, extra):
    root = tmp_path / "store"
    proc = _cli("train", f"hydra/launcher={launcher}", *extra, "zoo.num_shards=4", "zoo.shard=0,1,2,3",
                f"hydra.sweep.dir={tmp_path}/sweep", root=root, multirun=True)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert _consistent(Store(root)) == 6


def test_collect_merges_per_job_stores(tiny_cfg, tmp_path):
    for shard in (0, 1):
        pipeline.train(tiny_cfg(*SIX, "zoo.num_shards=2", f"zoo.shard={shard}", f"store.root={tmp_path}/jobs/{shard}"))
    main = tiny_cfg(*SIX, f"collect.sources=[{tmp_path}/jobs/*]")
    assert pipeline.collect(main) == {"models": 6, "measurements": 0, "early": 0, "conflicts": 0}
    assert pipeline.collect(main) == {"models": 0, "measurements": 0, "early": 0, "conflicts": 0}  # idempotent
    assert _consistent(Store(tmp_path / "store")) == 6
    assert pipeline.train(main)["trained"] == 0


def test_measure_past_its_time_budget_is_recorded(trained_tiny, tmp_path, slow_plugin):
    cfg = trained_tiny(f"measures.plugins=[{slow_plugin}]", "measures.include=[params,test_slow.sleepy]",
                       "measures.timeout_s=0.1")
    counts = pipeline.measure(cfg)
    assert counts["failed"] == 4
    long = Store(tmp_path / "store").measurements().set_index("measure")
    assert long.loc["test_slow.sleepy", "error"].str.contains("time budget of 0.1 s").all()
    assert (long.loc["params", "status"] == "ok").all()


def _corrupt_one(root):
    store = Store(root)
    victim = sorted(store.model_ids())[0]
    path = store.checkpoint_path(victim)
    path.write_bytes(path.read_bytes()[:50])
    return victim, path


def test_corrupt_checkpoint_is_retrained(trained_tiny, tmp_path):
    cfg = trained_tiny()
    victim, _ = _corrupt_one(tmp_path / "store")
    assert pipeline.train(cfg) == {"reused": 3, "trained": 1, "converged": 4}
    Store(tmp_path / "store").load_states(victim)


def test_corrupt_checkpoint_skip_and_fail(trained_tiny, tmp_path):
    tiny_cfg = trained_tiny
    victim, path = _corrupt_one(tmp_path / "store")
    counts = pipeline.measure(tiny_cfg("run.on_corrupt=skip", "measures.include=[params,log_prod_of_fro,path_norm]"))
    assert counts["computed"] == 3 and counts["reused"] == 6  # path_norm on the three healthy models
    with pytest.raises(CheckpointError, match=str(path)):
        pipeline.train(tiny_cfg("run.on_corrupt=fail"))
