"""The GPU check (``benchmark.perf.gpu``): its plumbing CPU against CPU on the smallest slice, the real check where a
CUDA device is lent, and the one-line refusal where none is."""
from __future__ import annotations

import json

import pytest
import torch

from benchmark import cli
from benchmark.perf import gpu

# a measure of each kind the check must wire: plain, seeded, needing the seed replicates, oracle (test data)
MEASURES = ("cross_entropy", "log_prod_of_fro", "sharpness.avg.l2", "replicate.disagreement", "oracle.duality_gap")


def test_cpu_against_cpu_dry_run_writes_both_reports_and_passes(tmp_path):
    """The same steps CPU against CPU: seeded training and measures give the very same numbers, so every
    comparison passes with differences of exactly 0; the JSON holds every step and the Markdown says so."""
    code = gpu.main(["--device", "cpu", "--quick", "--no-perf", "--measures", ",".join(MEASURES),
                     "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0 and report["passed"] is True and report["device"] == "cpu"
    assert set(report["tolerances"]) == {"loss_rtol", "loss_atol", "error_samples", "error_fraction",
                                         "measure_rtol", "measure_atol"}
    mlp, conv = report["mlp_training"], report["conv_training"]
    assert len(mlp["models"]) == gpu.QUICK.mlp_models and len(conv["models"]) == gpu.QUICK.conv_models
    for step in (mlp, conv):
        assert step["passed"] and step["epochs"] == 2
        for row in step["models"]:
            assert row["agree"] and row["epochs"] == [2, 2] and row["max_abs_param_diff"] == 0.0
            for key in ("train_loss", "train_error", "test_loss", "test_error"):
                a, b = row[key]
                assert a == b and 0 <= a
            assert 1.0 < row["train_loss"][0] < 2.5  # two epochs from chance (ln 10 = 2.3): trained, not converged
    assert [r["seed"] for r in mlp["models"]] == [0, 1]  # replicates of one configuration
    for key in ("mlp_measures", "conv_measures"):
        s = report[key]
        assert s["passed"] and s["measures"] == len(MEASURES) and not s["one_sided"] and not s["beyond_tolerance"]
        assert all(r["rel_diff"] == 0.0 and r["cpu"] == r["device"] for r in s["worst"])
    compared = {r["measure"] for r in report["mlp_measures"]["worst"]}
    assert {"replicate.disagreement", "oracle.duality_gap", "sharpness.avg.l2"} <= compared  # replicates, test data
    assert report["conv_measures"]["model"] == "cnn"
    assert "perf" not in report
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith("# genbench GPU check") and "`cpu` against `cpu`" in text and "**FAILED**" not in text


def test_tolerances_count_samples_and_relative_loss():
    """An error rate may move by 3 samples (or 0.5 % of a large set), a loss by 1 % relative."""
    assert gpu.error_agrees(0.1, 0.1 + 3 / 400, 400) and not gpu.error_agrees(0.1, 0.1 + 4 / 400, 400)
    assert gpu.error_agrees(0.1, 0.1 + 20 / 4000, 4000) and not gpu.error_agrees(0.1, 0.1 + 21 / 4000, 4000)
    assert gpu.loss_agrees(1.0, 1.0099) and not gpu.loss_agrees(1.0, 1.02)
    assert gpu.loss_agrees(0.0, 5e-5) and not gpu.loss_agrees(0.0, 2e-4)
    assert gpu.rel_diff(2.0, 1.0) == 0.5 and gpu.rel_diff(0.0, 0.0) == 0.0


def test_the_mlp_slice_starts_with_replicates_then_spreads_over_the_grid():
    hps = gpu.mlp_slice(6)
    assert [hp.seed for hp in hps] == [0, 1, 2, 0, 0, 0]
    assert len({gpu._config(hp) for hp in hps}) == 4
    assert hps[-1].model_id == gpu.expand(gpu.compose(*gpu.MLP_ZOO))[-3].model_id  # the grid's last configuration


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_check_without_a_gpu_says_so_in_one_line(capsys):
    """CPU-only machines (CI) skip the GPU check: asking for it prints one line and exits 2, from the module and
    from ``genbench perf --gpu-check``."""
    assert gpu._entry(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["perf", "--gpu-check", "--device", "cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU checks run only where one is lent")
def test_the_real_check_on_cuda(tmp_path):
    """The quick slice on the GPU against the CPU, every measure, and genbench perf --quick on it."""
    code = gpu.main(["--device", "cuda", "--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = [k for k in ("mlp_training", "conv_training", "mlp_measures", "conv_measures", "perf")
              if not report[k]["passed"]]
    assert code == 0 and not failed, (failed, (tmp_path / "gpu_check.md").read_text())
    p = report["perf"]
    assert p["models_per_minute"] > 0 and 0 < p["peak_fraction"] < 2 and p["matmul_peak_gflops"] > 1000
