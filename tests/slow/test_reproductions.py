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
    assert {"lr", "batch_size", "effective_reg"} <= set(table.columns)
    assert (tmp_path / "results.md").exists() and any(tmp_path.glob("*.png"))


def test_quick_nmi_reproduction(tmp_path):
    df = reproduce.run("nmi", tmp_path, "quick")
    assert {"decomposition_vs_gap.png", "factors_vs_hparams.png", "spectra.png", "results.md", "results.csv"} <= {
        p.name for p in tmp_path.iterdir()}
    assert ((df["oracle.sum_directions"] - df["oracle.mean_dl"]).abs() < 1e-9).all()  # the decomposition is exact


def test_quick_mlst_reproduction_through_the_command_line(tmp_path, capsys):
    assert cli.main(["reproduce", "mlst", "--quick", "--out", str(tmp_path)]) is None
    assert f"wrote {tmp_path}" in capsys.readouterr().out
    assert {"phases_rho0.3.png", "results.md", "phases.csv"} <= {p.name for p in tmp_path.iterdir()}
    import pandas as pd
    table = pd.read_csv(tmp_path / "phases.csv")
    assert set(table["phase"]) <= {"I", "II", "III", "IV"} and table["phase"].iloc[0] == "I"
