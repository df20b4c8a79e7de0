"""Smoke test of ``genbench perf --quick``: the real pipeline on the smoke zoo, the Hessian against PyHessian
(CI installs the ``perf`` extra), stacked against looped training; every key, target and both reports."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from benchmark import cli
from benchmark.perf.bench import TARGETS, MemorySampler, matmul_peak

KEYS = ["pipeline_models_per_minute", "zoo_peak_fraction", "suite_over_training", "hessian_speedup_vs_pyhessian",
        "hessian_agreement", "models_slope", "peak_memory_gib", "train_speedup"]


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
        else:
            assert isinstance(report[key], float) and report[key] > 0, key
            assert t["met"] in ((None,) if key == "train_speedup" else (True, False)), key
    assert report["quick"] is True
    d = report["details"]
    p, q = d["pipeline"], d["quarter"]
    assert p["models"] == 8 and q["models"] == 2 and p["converged"] == 8  # the smoke zoo and its first shard
    from measures import REGISTRY
    assert set(p["per_measure_s"]) == set(REGISTRY.names())  # every registered measure ran
    assert p["measure_values"] == 8 * len(REGISTRY.names())
    assert sum(p["stage_s"].values()) == pytest.approx(p["total_s"])
    assert p["models_per_minute"] == pytest.approx(8 / p["total_s"] * 60)
    assert 0 < p["zoo_peak_fraction"] < 2 and p["useful_flops"]["total"] > 0
    assert d["zoo"]["model_steps"] > 0 and d["zoo"]["max_abs_param_diff"] < 1e-4  # both trainers, same models
    h = d["hessian"]
    assert h["samples"] > 0 and h["genbench_rel_err"]["top_eig"] < 1e-2  # against ARPACK to 1e-8
    if have_pyhessian:
        assert h["pyhessian_s"] > 0 and "PyHessian `eigenvalues()`" in md.read_text()
    assert 0 < report["peak_memory_gib"] < 64
    text = md.read_text()
    assert text.startswith("# genbench perf") and "| `pipeline_models_per_minute` |" in text


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
