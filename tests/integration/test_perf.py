"""Smoke test of ``genbench perf --quick``: the real pipeline on the smoke zoo, the Hessian against PyHessian
(CI installs the ``perf`` extra), stacked against looped training; every key, target and both reports."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from benchmark import cli
from benchmark.perf.bench import TARGETS, MemorySampler, _best_times, matmul_peak
from benchmark.perf.floor import counted_flops, step_operands
from benchmark.perf.timing import scaled_to_peak

KEYS = ["pipeline_models_per_minute", "zoo_peak_fraction", "suite_over_training", "hessian_speedup_vs_pyhessian",
        "hessian_agreement", "models_slope", "peak_memory_gib", "train_speedup", "pipeline_floor_models_per_minute",
        "step_matmul_ceiling", "suite_peak_fraction", "suite_over_training_floor", "isolation_overhead",
        "guard_ms_per_measure", "pipeline_s_at_70_gflops", "peak_elasticity", "plugin_score_s",
        "plugin_score_speedup"]
REPORTED = {"guard_ms_per_measure", "train_speedup", "pipeline_floor_models_per_minute", "step_matmul_ceiling",
            "suite_peak_fraction", "suite_over_training_floor", "peak_elasticity", "plugin_score_speedup"}


def test_quick_run_writes_every_key_target_and_the_markdown(tmp_path, capsys):
    path, md = tmp_path / "perf.json", tmp_path / "perf.md"
    # through the CLI: the console script does sys.exit(main()), so main must return None (exit 0)
    assert cli.main(["perf", "--json", str(path), "--md", str(md), "--quick"]) is None
    report = json.loads(path.read_text())
    assert "pipeline_models_per_minute" in capsys.readouterr().out  # the readable table
    assert set(KEYS) <= set(TARGETS)
    have_pyhessian = importlib.util.find_spec("pyhessian") is not None
    for key in KEYS:
        t = report["targets"][key]
        assert set(t) >= {"value", "target", "met"}
        if key == "hessian_speedup_vs_pyhessian" and not have_pyhessian:
            assert report[key] is None and t["met"] is None
        elif key != "peak_elasticity":  # a slice timed with 1 and 2 threads on a busy machine may come out < 0
            assert isinstance(report[key], float) and report[key] > 0, key
            assert t["met"] in ((None,) if key in REPORTED else (True, False)), key
    assert report["quick"] is True
    d = report["details"]
    p, q = d["pipeline"], d["quarter"]
    assert p["models"] == 8 and q["models"] == 2 and p["converged"] == 8  # the smoke zoo and its first shard
    from measures import REGISTRY
    assert set(p["per_measure_s"]) == set(REGISTRY.names())  # every registered measure ran
    assert p["measure_values"] == 8 * len(REGISTRY.names())
    assert sum(p["stage_s"].values()) == pytest.approx(p["total_s"])
    split = p["measure_split_s"]  # the measure stage: the final weights, then the early-prediction table
    assert split["final"] > 0 and split["early"] > 0 and sum(split.values()) <= p["stage_s"]["measure"]
    assert p["early_values"] > 0 and 0 < p["early_seconds_per_model"] < split["early"] * 2
    assert p["models_per_minute"] == pytest.approx(8 / p["total_s"] * 60)
    assert 0 < p["zoo_peak_fraction"] < 2 and p["useful_flops"]["total"] > 0
    assert d["zoo"]["model_steps"] > 0 and d["zoo"]["max_abs_param_diff"] < 1e-4  # both trainers, same models
    h = d["hessian"]
    assert h["samples"] > 0 and h["genbench_rel_err"]["top_eig"] < 1e-2  # against ARPACK to 1e-8
    if have_pyhessian:
        assert h["pyhessian_s"] > 0 and "PyHessian `eigenvalues()`" in md.read_text()
    assert 0 < report["peak_memory_gib"] < 64
    f = d["floor"]  # what the machine allows: a bound the timed pipeline must respect
    c = f["suite_flops"]
    assert c["counted_models"] == 2 and c["groups"] >= 2 and c["models"] == 8
    assert c["final"] == pytest.approx(sum(c["per_model"].values()) * 8) and c["early"] > 0
    assert report["pipeline_floor_models_per_minute"] > report["pipeline_models_per_minute"]
    best = max(p["matmul_peak_gflops"], q["matmul_peak_gflops"])  # the floor runs at the highest peak the run measured
    assert f["floor_peak_gflops"] == best and f["suite_peak_fraction"] > 0
    assert f["floor_s"] == pytest.approx((p["useful_flops"]["total"] + c["total"]) / best / 1e9)
    # the two targets' joint bound: training at 0.5 of a peak, the measures' counted FLOPs at that peak
    assert f["suite_over_training_floor"] == pytest.approx(0.5 * c["total"] / p["useful_flops"]["total"])
    assert report["suite_over_training"] > report["suite_over_training_floor"] * p["zoo_peak_fraction"] / 0.5
    assert 0 < report["step_matmul_ceiling"] < 1.5
    i = d["isolation"]  # isolated against in process: the same values, one worker each way
    assert i["models"] == 8 and i["values"] == 8 * len(REGISTRY.names())
    assert report["isolation_overhead"] == pytest.approx(i["isolated_s"] / i["in_process_s"])
    assert 0 < report["guard_ms_per_measure"] < 50
    text = md.read_text()
    assert text.startswith("# genbench perf") and "| `pipeline_models_per_minute` |" in text
    assert "## Isolated measures" in text
    for key, timed in (("pipeline", p), ("quarter", q)):  # each pipeline's time, scaled by its own run's peak
        sc = d["scaled"][key]
        assert sc["wall_s"] == timed["total_s"] and sc["peak_gflops"] == timed["matmul_peak_gflops"]
        assert sc["at_reference_s"] == pytest.approx(timed["total_s"] * timed["matmul_peak_gflops"] / 70)
    assert report["pipeline_s_at_70_gflops"] == d["scaled"]["pipeline"]["at_reference_s"]
    assert report["targets"]["pipeline_s_at_70_gflops"]["target"] == "<= 600"
    e = d["peak_scaling"]  # the assumption behind the scaling, checked on a slice of training
    assert 1 <= e["models"] <= 4 and min(e["slice_s"]) > 0 and min(e["peak_gflops"]) > 0
    assert e["peak_ratio"] == pytest.approx(e["peak_gflops"][1] / e["peak_gflops"][0])
    if e["peak_ratio"] >= 1.1:
        assert e["elasticity"] == pytest.approx(math.log(e["time_ratio"]) / math.log(e["peak_ratio"]))
        assert "an elasticity of" in text
    else:  # the second core was busy: no ratio to divide by
        assert e["elasticity"] is None and "other core is busy" in e["why"] and "was not checked" in text
    assert "## The pipeline at a 70 GFLOP/s peak" in text
    inc = d["incremental"]["default zoo"]  # a new measure scored with the caches, and with everything recomputed
    assert inc["overrides"] == ["experiment=smoke"] and len(inc["incremental_runs_s"]) == len(inc["full_runs_s"]) == 1
    assert report["plugin_score_s"] == inc["incremental_s"] > 0
    assert report["plugin_score_speedup"] == pytest.approx(inc["full_s"] / inc["incremental_s"])
    assert report["standard_plugin_score_s"] is None and report["targets"]["standard_plugin_score_s"]["met"] is None
    assert "## Scoring a new measure" in text and "recomputing every statistic and figure" in text


def test_time_scaled_to_the_reference_peak():
    """120 s at a 140 GFLOP/s peak is 16,800 GFLOP·s of the machine's speed: 240 s at 70 GFLOP/s."""
    sc = scaled_to_peak(120.0, 140.0, 2)
    assert sc["gflop_seconds"] == 16800.0 and sc["at_reference_s"] == 240.0 and sc["peak_threads"] == 2
    assert scaled_to_peak(120.0, 35.0, 1, reference=35.0)["at_reference_s"] == 120.0


def test_counted_flops_of_one_forward_pass_are_the_closed_form():
    """A measure that runs the network once over its training set is counted 2·n·Σ in·out FLOPs (the Linear
    layers' multiply-adds); one that raises is counted up to where it stopped."""
    from measures import Context
    from measures.registry import Measure
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = torch.randn(11, 7, generator=g), torch.randint(0, 3, (11,), generator=g)
    ctx = Context(net, train=(x, y))

    def once(c):
        return c.model(c.x_train).sum().item()

    def fails(c):
        once(c)
        raise RuntimeError("after one pass")
    make = lambda fn: Measure("t", fn, frozenset({"model", "train_data"}), 1, "", "norm", "")
    assert counted_flops(make(once), ctx) == 2 * 11 * (7 * 5 + 5 * 3)
    assert counted_flops(make(fails), ctx) == 2 * 11 * (7 * 5 + 5 * 3)


def test_bare_step_operands_are_the_three_matmuls_of_each_layer():
    """The ceiling's FLOP count equals what the flop counter counts for its operands, and equals forward plus
    backward of a stacked Linear network of those shapes (6 · members · batch · Σ in·out)."""
    from torch.utils.flop_counter import FlopCounterMode
    dims = [(40, 16), (16, 16), (16, 10)]
    ops, flops = step_operands(3, 8, dims, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        for a, b in ops:
            torch.bmm(a, b)
    assert counter.get_total_flops() == flops == 6 * 3 * 8 * sum(i * o for i, o in dims)
    assert [tuple(a.shape) for a, _ in ops[:3]] == [(3, 8, 40), (3, 8, 16), (3, 40, 8)]


def test_memory_sampler_counts_child_processes(tmp_path):
    """A child holding ~200 MiB shows up in the process tree's peak."""
    import subprocess
    import sys
    import time
    code = "import time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(1.5)"
    with MemorySampler(0.05) as sampler:
        child = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(1.0)
        child.wait()
    alone = MemorySampler.tree_gib()
    assert sampler.peak - alone > 0.15


def test_timed_in_turn_least_of_each():
    """The Hessian comparison times genbench and PyHessian in alternating rounds (one untimed call each first),
    so a drift of the machine's speed hits both; each gets its least time."""
    import time
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.02 if len(calls) > 2 else 0.05)  # the untimed first call is slower, and not counted

    def fast():
        calls.append("fast")
    best = _best_times([slow, fast], 3, torch.device("cpu"))
    assert calls == ["slow", "fast"] + ["slow", "fast"] * 3
    assert 0.02 <= best[0] < 0.05 and best[1] < best[0]


def test_matmul_peak_is_a_rate():
    assert 0.1 < matmul_peak(torch.device("cpu"), 1) < 1e5


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_perf_says_why_it_cannot_run_here(capsys):
    """CPU-only machines (CI) skip the GPU check: asking for it prints one line and exits 2."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["perf", "--device", "cuda", "--quick"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]
