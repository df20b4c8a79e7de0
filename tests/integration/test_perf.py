"""Smoke test of ``genbench perf --quick``: it runs in well under a minute and writes every key."""
from __future__ import annotations

import importlib.util
import json

from benchmark import cli


def test_quick_run_writes_every_key_and_target(tmp_path, capsys):
    path = tmp_path / "perf.json"
    # through the CLI: the console script does sys.exit(main()), so main must return None (exit 0)
    assert cli.main(["perf", "--json", str(path), "--quick", "--threads", "1"]) is None
    report = json.loads(path.read_text())
    assert "train_speedup" in capsys.readouterr().out  # the readable table
    keys = ["train_speedup", "train_peak_fraction", "suite_over_training", "hessian_speedup_vs_pyhessian",
            "hessian_agreement", "models_slope", "params_slope", "peak_memory_gib"]
    have_pyhessian = importlib.util.find_spec("pyhessian") is not None
    for key in keys:
        assert key in report, key
        t = report["targets"][key]
        assert set(t) >= {"value", "target", "met"}
        if key.startswith("hessian") and not have_pyhessian:
            assert report[key] is None and t["met"] is None
        else:
            assert isinstance(report[key], float) and t["met"] in (True, False), key
    assert report["quick"] is True
    assert {"cpu", "cores", "torch", "threads"} <= set(report["machine"])
    zoo = report["details"]["zoo"]
    assert zoo["model_steps"] > 0 and zoo["max_abs_param_diff"] < 1e-4  # both trainers made the same models
    from measures import REGISTRY
    assert set(report["details"]["measures"]["per_measure"]) == set(REGISTRY.names())
    assert 0 < report["peak_memory_gib"] < 64
