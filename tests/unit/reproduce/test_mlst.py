"""The pieces of ``genbench reproduce mlst``: the protocol file, a phase detector that never sees the test
set, and verdicts about the test error that can come out either way."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmark.errors import UserError
from benchmark.reproduce import mlst


def test_the_protocol_and_its_checks():
    p = mlst.protocol()
    assert p.rhos == (0.0, 0.2, 0.4) and len(p.seeds) >= 5 and p.label_noise_mode == "fixed_clean"
    hp = mlst.hparams(p, 0.2, 3)
    assert hp.dataset.train_size == 2000 and hp.dataset.n_train == 2500 and hp.seed == 3
    assert mlst.hparams(mlst.protocol("default", ["label_noise_mode=fixed_total"]), 0.2, 0).dataset.n_train == 2000
    with pytest.raises(UserError, match="label_noise_mode must be one of fixed_clean, fixed_total"):
        mlst.protocol("default", ["label_noise_mode=replace"])


def test_blind_removes_every_test_column():
    history = [{"epoch": 1, "train_loss": 1.0, "test_error": 0.5, "test_loss": 2.0, "op.loss_auc": 0.9}]
    assert mlst.blind(history) == [{"epoch": 1, "train_loss": 1.0, "op.loss_auc": 0.9}]


def _phases(seed: int, shape: str) -> list[dict]:
    """Phase rows of one ρ = 0.2 run: the paper's picture, or its opposite."""
    good = shape == "paper"
    err = {"I": (0.6, 0.15), "II": (0.15, 0.14), "III": (0.14, 0.25), "IV": (0.25, 0.25)} if good else \
        {"I": (0.15, 0.6), "II": (0.6, 0.5), "III": (0.5, 0.3), "IV": (0.3, 0.1)}
    first = {"I": 1, "II": 5, "III": 11, "IV": 40}
    rows = []
    for k, ph in enumerate(mlst.PHASES):
        start, end = err[ph]
        rows.append({"rho": 0.2, "seed": seed, "phase": ph, "first_epoch": first[ph], "epochs": 5,
                     "test_error_start": start + 0.001 * seed, "test_error_end": end + 0.002 * seed,
                     "test_error_mean": (start + end) / 2 + 0.001 * seed,
                     "test_min_epoch": 8 if good else 60, "auc_peak_phase": "II" if good else "IV",
                     "loss_auc": (0.98 if ph == "II" else 0.9) if good else (0.7 if ph == "II" else 0.9) + 0.001 * seed,
                     "cos_correct_mislabeled": ((-0.3 if ph == "II" else 0.2) if good else 0.3) + 0.01 * seed})
    return rows


@pytest.mark.parametrize("shape,expected", [("paper", "yes"), ("opposite", "**no**")])
def test_verdicts_follow_the_test_error(shape, expected):
    p = mlst.protocol("default", ["rhos=[0.2]"])
    table = pd.DataFrame([r for s in p.seeds for r in _phases(s, shape)])
    rows = mlst.verdicts(table, p)
    assert rows[0][-1] == "yes"  # four phases in every seed either way
    assert [r[-1] for r in rows[1:]] == [expected] * (len(rows) - 1)
