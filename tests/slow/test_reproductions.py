"""The four paper reproductions at toy scale (``genbench reproduce <paper> --quick``): each writes its
figures, tables and ``results.md``, and its central number is what the analysis says it must be. How long
they take is ``genbench perf``'s business, not a test's."""
from __future__ import annotations

import pytest

from benchmark import cli, reproduce

pytestmark = pytest.mark.slow


def test_quick_pnas_reproduction(tmp_path):
    table = reproduce.run("pnas", tmp_path, "quick", ["seeds=[0, 1, 2]"])
    assert {"psi", "r2", "rho", "null_psi", "null_rho", "gamma", "null_gamma"} <= set(table.columns)
    assert len(table) == 6 and table["null_rho"].notna().sum() == 3  # the control runs on the base setting
    assert {"sigma2_vs_flatness.png", "psi_vs_range.png", "spectrum.png", "loss_profiles.png", "results.csv"} <= {
        p.name for p in tmp_path.iterdir()}
    text = (tmp_path / "results.md").read_text()
    assert "genbench reproduce pnas --quick seeds=[0, 1, 2]" in text and "random walk" in text
    assert "## Implementation checks" in text and "(3 seeds)" in text
    assert (table["total_variance_check"] < 1e-6).all()


def test_quick_prl_reproduction(tmp_path):
    table = reproduce.run("prl", tmp_path, "quick")
    assert {"lr", "batch_size", "seed", "lambda_max", "log_penalty", "anisotropy"} <= set(table.columns)
    assert len(table) == 2 * 2  # two settings, two seeds
    assert {"results.md", "results.csv", "ceiling.csv", "sweep.png", "valley.png", "noise_vs_curvature.png"} <= {
        p.name for p in tmp_path.iterdir()}
    text = (tmp_path / "results.md").read_text()
    assert "too much noise stops convergence" in text and "## Implementation checks" in text


def test_quick_nmi_reproduction(tmp_path):
    table = reproduce.run("nmi", tmp_path, "quick")
    assert {"decomposition_vs_gap.png", "factors_vs_hparams.png", "spectra.png", "results.md", "results.csv"} <= {
        p.name for p in tmp_path.iterdir()}
    assert len(table) == 4 * 2  # base, B = 100, and the noise sweep's ρ = 0 and 0.2 at 400 clean images
    assert (table["identity_error"] < 1e-9).all()  # the decomposition is exact over the complete basis
    noisy = table[table.label_noise > 0]
    assert (noisy["n_clean"] == 400).all() and (noisy["n_train"] == 500).all()  # the clean count fixed
    text = (tmp_path / "results.md").read_text()
    assert "carried by" in text and "## Implementation checks" in text and "Quick mode" in text


def test_quick_mlst_reproduction_through_the_command_line(tmp_path, capsys):
    assert cli.main(["reproduce", "mlst", "--quick", "--out", str(tmp_path)]) is None
    assert f"wrote {tmp_path}" in capsys.readouterr().out
    assert {"phases_rho0.3.png", "phase_test_error.png", "results.md", "phases.csv"} <= {
        p.name for p in tmp_path.iterdir()}
    import pandas as pd
    table = pd.read_csv(tmp_path / "phases.csv")
    assert set(table["phase"]) <= {"I", "II", "III", "IV"} and table["phase"].iloc[0] == "I"
    assert set(table["seed"]) == {0, 1} and table["blind_ok"].all()  # phases placed without the test set
    text = (tmp_path / "results.md").read_text()
    assert "the test error rises in phase III" in text and "## Implementation checks" in text
