"""Fault injection for the measures: whatever a measure does inside its own code, that measure on that model is
recorded as failed with what happened, and every other measure and model goes on (``benchmark.measuring.isolation``).

The faults are real: a plugin that calls ``sys.exit`` or ``os._exit``, dereferences a null pointer (SIGSEGV),
aborts (SIGABRT), raises ``KeyboardInterrupt``, returns details that cannot be stored, or writes into its inputs
in place. The command-line tests run genbench as a user does, in a subprocess.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import measures
from benchmark import pipeline
from benchmark.measuring import isolation, jobs
from benchmark.store import Store
from tests.conftest import TINY, TINY_MODELS

BUILTINS = ["cross_entropy", "inverse_margin", "path_norm", "dist_init_fro"]

FAULTS = textwrap.dedent('''
    import ctypes
    import os
    import signal
    import sys

    import torch

    from measures import Value, measure


    @measure("fault.sys_exit", family="plugin", reference="a test")
    def sys_exit(ctx):
        """Calls sys.exit(3)."""
        sys.exit(3)


    @measure("fault.os_exit", family="plugin", reference="a test")
    def os_exit(ctx):
        """Ends its process with os._exit(1)."""
        os._exit(1)


    @measure("fault.segfault", family="plugin", reference="a test")
    def segfault(ctx):
        """Reads address 0 (SIGSEGV)."""
        ctypes.string_at(0)


    @measure("fault.abort", family="plugin", reference="a test")
    def abort(ctx):
        """Aborts (SIGABRT)."""
        os.abort()


    @measure("fault.sigkill", family="plugin", reference="a test")
    def sigkill(ctx):
        """Kills its own process with SIGKILL, as the out-of-memory killer would."""
        os.kill(os.getpid(), signal.SIGKILL)


    @measure("fault.memory", family="plugin", reference="a test")
    def memory(ctx):
        """Raises MemoryError, as an allocation past a memory limit does."""
        raise MemoryError("cannot allocate 1 TiB")


    @measure("fault.keyboard", family="plugin", reference="a test")
    def keyboard(ctx):
        """Raises KeyboardInterrupt itself."""
        raise KeyboardInterrupt("from inside a measure")


    @measure("fault.set_details", family="plugin", reference="a test")
    def set_details(ctx):
        """Returns details holding a set."""
        return Value(1.0, {"seen": {1, 2}})


    @measure("fault.huge_details", family="plugin", reference="a test")
    def huge_details(ctx):
        """Returns 4 MB of details."""
        return Value(1.0, {"blob": "x" * (4 << 20)})


    @measure("fault.centre_inputs", needs=("train_data",), family="plugin", reference="a test")
    def centre_inputs(ctx):
        """Centres the training inputs in place (x -= x.mean(0))."""
        x = ctx.x_train
        x -= x.mean(0)
        return float(x.abs().sum())


    @measure("fault.scale_weights", family="plugin", reference="a test")
    def scale_weights(ctx):
        """Doubles the first layer's weights in place and puts the model in training mode."""
        with torch.no_grad():
            ctx.weights[0].mul_(2.0)
        ctx.model.train()
        return 1.0


    @measure("fault.zero_margins", needs=("model", "train_data"), family="plugin", reference="a test")
    def zero_margins(ctx):
        """Zeroes the shared training margins in place."""
        ctx.margins.zero_()
        return 1.0


    @measure("fault.chdir", family="plugin", reference="a test")
    def chdir(ctx):
        """Moves the working directory to /."""
        os.chdir("/")
        return 2.0


    @measure("fault.undeclared", family="plugin", reference="a test")
    def undeclared(ctx):
        """Reads the training history without declaring it."""
        return float(len(ctx.history))


    @measure("fault.fine", family="plugin", reference="a test")
    def fine(ctx):
        """The parameter count: the well-behaved plugin measure."""
        return float(ctx.num_params)
''')
CRASHES = {"fault.os_exit": "the measure ended its process with status 1",
           "fault.segfault": "the measure killed by SIGSEGV",
           "fault.abort": "the measure killed by SIGABRT",
           "fault.sigkill": "the measure killed by SIGKILL (the system's out-of-memory killer sends it)"}


@pytest.fixture
def faults(tmp_path):
    path = tmp_path / "faults.py"
    path.write_text(FAULTS)
    yield path
    for name in [n for n in measures.REGISTRY.names() if n.startswith("fault.")]:
        measures.REGISTRY.remove(name)
    from measures import plugins
    plugins._LOADED.discard(str(path.resolve()))


def _values(root) -> dict[tuple[str, str], tuple]:
    long = Store(root).measurements()
    return {(r.model_id, r.measure): (r.value, r.status, r.error if isinstance(r.error, str) else None)
            for r in long.itertuples()}


def _genbench(*args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_every_fault_is_one_failed_value_and_the_rest_goes_on(trained_tiny, tmp_path, faults):
    """One `genbench measure` with every kind of fault, then built-in measures: exit 0; each fault is its own failed
    value saying what happened; every built-in value, computed after all the faults on the same models, equals that
    of a run without them."""
    reference = tmp_path / "reference"
    shutil.copytree(tmp_path / "store", reference)
    pipeline.measure(trained_tiny(f"store.root={reference}", f"measures.include=[{','.join(BUILTINS)}]"))
    order = [n.split('"')[1] for n in FAULTS.split("@measure(")[1:]] + BUILTINS  # the built-ins after every fault
    out = _genbench("measure", *TINY, f"store.root={tmp_path / 'store'}", f"measures.plugins=[{faults}]",
                    f"measures.include=[{','.join(order)}]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    got, want = _values(tmp_path / "store"), _values(reference)
    ids = sorted(Store(reference).model_ids())
    for model_id in ids:
        for name in BUILTINS:  # unchanged by the faults before them, bit for bit
            assert got[model_id, name] == want[model_id, name], name
            assert got[model_id, name][1] == "ok"
        assert got[model_id, "fault.fine"][1] == "ok"
        assert got[model_id, "fault.chdir"][1] == "ok"  # a chdir is undone, and moves no path of the run
        for name, why in {"fault.keyboard": "KeyboardInterrupt: from inside a measure",
                          "fault.set_details": "returned details that cannot be stored: Object of type set is not "
                                               "JSON serializable",
                          "fault.huge_details": "returned details that cannot be stored: 4,194,3",
                          "fault.centre_inputs": "changed its inputs in place (x_train)",
                          "fault.scale_weights": "changed its inputs in place (the model",
                          "fault.zero_margins": "changed its inputs in place (margins)",
                          "fault.undeclared": "UndeclaredInputError: measure 'fault.undeclared' uses ctx.history but "
                                              "does not declare needs=(..., 'history')"}.items():
            value, status, error = got[model_id, name]
            assert status == "failed" and why in error, (name, error)
    # a crash of the process itself: on the first MAX_CRASHES models, then the measure is not run again (sys.exit is
    # caught in the worker, which lives on: its value is failed on every model above)
    for name, why in CRASHES.items():
        errors = [got[m, name][2] for m in ids]
        assert all(got[m, name][1] == "failed" for m in ids)
        crashed = [e for e in errors if e == why]
        assert len(crashed) == min(isolation.MAX_CRASHES, TINY_MODELS), (name, errors)
        assert all(e.startswith("not run: the measure ended its worker process 3 times in this run (last: ")
                   for e in errors if e != why), errors
    assert len(got) == TINY_MODELS * len({*order, "params", "log_prod_of_fro"})  # the tiny store's values, kept


def test_a_measure_stuck_where_its_time_limit_cannot_reach_is_killed(trained_tiny, tmp_path, monkeypatch):
    """SIGALRM blocked, then a long sleep: the worker's own time limit cannot interrupt it, so the parent kills the
    worker once the hard limit passes without a result, and the other measures go on. The hard limit (8 s) leaves a
    fresh worker time to load its models on a loaded machine (2 s did not, at a load average of 5) and is still far
    below the sleep (5 minutes)."""
    plugin = tmp_path / "stuck.py"
    plugin.write_text(textwrap.dedent('''
        import signal
        import time

        from measures import measure

        @measure("stuck.sleeper", family="plugin", reference="a test")
        def sleeper(ctx):
            """Blocks SIGALRM, then sleeps for five minutes."""
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(300)
            return 0.0
    '''))
    monkeypatch.setattr(jobs, "hard_timeout", lambda timeout: 8.0)
    try:
        start = time.monotonic()
        counts = pipeline.measure(trained_tiny(f"measures.plugins=[{plugin}]", "measures.timeout_s=0.2",
                                               "measures.include=[stuck.sleeper,path_norm]", "early.measures=[]"))
        assert time.monotonic() - start < 120  # three kills at 8 s each, not five-minute sleeps
    finally:
        measures.REGISTRY.remove("stuck.sleeper")
        from measures import plugins
        plugins._LOADED.discard(str(plugin.resolve()))
    assert counts["failed"] == TINY_MODELS and counts["computed"] == 2 * TINY_MODELS
    values = _values(tmp_path / "store")
    errors = {e for (m, n), (v, s, e) in values.items() if n == "stuck.sleeper"}
    assert errors <= {"the measure ran past its time budget and did not stop (8 s without a result); its process "
                      "was killed", "not run: the measure ended its worker process 3 times in this run (last: ran "
                      "past its time budget and did not stop (8 s without a result); its process was killed)"}
    assert all(s == "ok" for (m, n), (v, s, e) in values.items() if n == "path_norm")


def test_ctrl_c_still_stops_the_run(trained_tiny, tmp_path):
    """Workers ignore SIGINT, so the user's Ctrl-C (to the whole process group, as a terminal sends it) reaches
    only genbench itself: exit 130, the message, no worker left, and the rerun finishes what is missing."""
    plugin = tmp_path / "slow.py"
    plugin.write_text(textwrap.dedent('''
        import time
        from measures import measure

        @measure("slow.nap", family="plugin", reference="a test")
        def nap(ctx):
            """Sleeps 0.5 s."""
            time.sleep(0.5)
            return 1.0
    '''))
    args = [*TINY, f"store.root={tmp_path / 'store'}", f"measures.plugins=[{plugin}]",
            "measures.include=[slow.nap,path_norm]"]
    # SIGINT back to its default in the child: a test run started in the background (`pytest &`, nohup) ignores it,
    # the child would inherit that, and Python would then never raise KeyboardInterrupt on Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "measure", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    start = time.time()
    while not any(n == "slow.nap" for (_, n) in _values(tmp_path / "store")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 120
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(0.5)
    left = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(proc.pid)], capture_output=True,
                          text=True).stdout.splitlines()
    assert not [line for line in left if line.split()[1][0] != "Z"], left  # a zombie has exited: not left running
    done = sum(n == "slow.nap" for (_, n) in _values(tmp_path / "store"))
    assert 1 <= done < TINY_MODELS
    rerun = _genbench("measure", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sum(n == "slow.nap" for (_, n) in _values(tmp_path / "store")) == TINY_MODELS


def test_a_plugin_that_exits_while_imported_is_one_line(tmp_path):
    plugin = tmp_path / "script.py"
    plugin.write_text("import sys\n\n\ndef main():\n    return 0\n\n\nsys.exit(main())\n")
    out = _genbench("measures", f"store.root={tmp_path / 's'}", f"measures.plugins=[{plugin}]", cwd=tmp_path)
    assert out.returncode == 2, out
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"measure plugin {plugin}, line 8 exited while being imported (sys.exit(0))" in lines[0]


def test_describe_exit():
    assert isolation.describe_exit(3) == "ended its process with status 3"
    assert isolation.describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert isolation.describe_exit(-signal.SIGKILL) == ("killed by SIGKILL (the system's out-of-memory killer "
                                                        "sends it)")


@pytest.mark.parametrize("details,why", [({"a": {1}}, "Object of type set is not JSON serializable"),
                                         ({"a": object()}, "Object of type object is not JSON serializable"),
                                         ([1, 2], "details must be a dict, got list")])
def test_details_that_cannot_be_stored(details, why):
    with pytest.raises(ValueError, match=why):
        jobs.storable(details)


def test_storable_details_become_plain_json():
    import numpy as np
    import torch
    got = jobs.storable({"t": torch.tensor([1.0, float("nan")]), "n": np.float32(2.5), "i": np.arange(2),
                         "inf": float("inf"), "nested": {"x": [torch.tensor(3)]}})
    assert got == {"t": [1.0, None], "n": 2.5, "i": [0, 1], "inf": None, "nested": {"x": [3]}}
