"""The pieces of ``genbench reproduce nmi``: the authors' protocol, the norm penalty and the stop on the
correctly labelled samples, the label-noise sweep with the clean count fixed, the trend intervals, and
verdicts that can come out either way."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from benchmark.errors import UserError
from benchmark.reproduce import nmi


def test_the_default_protocol_is_the_authors():
    p = nmi.protocol()
    assert (p.lr, p.batch_size, p.width, p.train_size) == (0.1, 25, 30, 4000)
    assert (p.stop_loss, p.stop_accuracy, p.max_epochs, p.penalty_epochs) == (1e-3, 0.99, 1000, 200)
    assert set(p.sweeps["batch_size"]) <= set(nmi.AUTHORS["batch_size"]) and len(p.seeds) >= 5
    assert set(p.sweeps["beta"]) <= set(nmi.AUTHORS["beta"]) and set(p.sweeps["lr"]) <= set(nmi.AUTHORS["lr"])
    assert p.sweeps["label_noise"] == nmi.AUTHORS["label_noise"]
    full = nmi.protocol("full")
    assert len(full.seeds) == 10
    for axis in ("lr", "batch_size", "beta", "label_noise", "train_size", "dropout"):
        assert full.sweeps[axis] == nmi.AUTHORS[axis]  # --full sweeps every value of the authors' code
    assert {"train_size", "init_scale", "dropout"} <= set(full.axes)
    assert nmi.protocol("quick").axes == ["batch_size", "label_noise"]  # an empty list drops a sweep


def test_sweep_overrides_and_bad_sweeps():
    p = nmi.protocol("quick", ["sweeps.lr=[0.05, 0.1]"])
    assert p.sweeps["lr"] == (0.05, 0.1) and p.axes == ["lr", "batch_size", "label_noise"]
    with pytest.raises(UserError, match="unknown sweep 'momentum'; valid: lr, batch_size, beta"):
        nmi.protocol("quick", ["sweeps.momentum=[0.9]"])
    with pytest.raises(UserError, match="unknown nmi protocol key 'sweep.lr'; valid: .*sweeps"):
        nmi.protocol("quick", ["sweep.lr=[0.1]"])


def test_settings_share_the_base_run_and_keep_the_clean_count_under_label_noise():
    p = nmi.protocol()
    todo = nmi.tasks(p)
    keys = {key for key, _, _ in todo}
    base = nmi.setting_key(*p.setting("lr", 0.1))
    assert base == nmi.setting_key(*p.setting("batch_size", 25)) == nmi.setting_key(*p.setting("beta", 0.0))
    assert nmi.setting_key(*p.setting("label_noise", 0.0)) != base  # the noise sweep has its own clean count
    n_settings = 1 + sum(len(v) - 1 for a, v in p.sweeps.items() if a != "label_noise") + len(p.sweeps["label_noise"])
    assert len(keys) == n_settings and len(todo) == n_settings * len(p.seeds)
    hp, beta = p.setting("label_noise", 0.2)
    assert hp.dataset.train_size == p.noise_train_size == 3200 and hp.dataset.n_train == 4000 and beta == 0
    assert p.setting("beta", 0.01)[1] == 0.01 and p.setting("batch_size", 400)[0].train.batch_size == 400


def test_the_norm_penalty_is_beta_times_the_norm_for_the_first_epochs():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.Linear(2, 1, bias=False))
    penalty = nmi.norm_penalty(0.5, epochs=200)
    norm = torch.cat([w.detach().reshape(-1) for w in model.parameters()]).norm()
    assert float(penalty(model, 1).detach()) == pytest.approx(0.5 * float(norm))  # ‖θ‖, not ‖θ‖²
    assert float(penalty(model, 200).detach()) == pytest.approx(0.5 * float(norm)) and penalty(model, 201) == 0.0


def test_the_stop_reads_only_the_correctly_labelled_samples():
    p = nmi.protocol("quick", ["stop_loss=0.2", "max_epochs=60"])
    hp, _ = p.setting("label_noise", 0.2)
    trained, data, metrics = nmi.train(p, hp, 0.0)
    clean = ~data.mislabeled
    assert metrics["converged"] and metrics["epochs"] < 60
    row, arrays = nmi.analyse(trained, data, 0)
    assert row["train_loss_clean"] < 0.2 and row["n_clean"] == 400 == int(clean.sum())
    assert metrics["train_loss"] > row["train_loss_clean"]  # the mislabeled samples are not fitted yet
    assert row["identity_error"] < 1e-9 and row["directions"] == 900
    assert np.all(np.diff(arrays["sigma_g"]) <= 0)  # the authors' order: σ_g, largest first


def _table(gap_slope: float, sharp_slope: float, size_slope: float, seeds: int = 5) -> pd.DataFrame:
    """A synthetic batch-size sweep: gap and factors linear in log B plus seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for b in (25, 100, 200, 400):
        for s in range(seeds):
            x = np.log(b)
            gap = 0.4 + gap_slope * x + rng.normal(0, 0.005)
            rows.append({"lr": 0.1, "batch_size": b, "beta": 0.0, "label_noise": 0.0, "train_size": 4000,
                         "init_scale": 1.0, "dropout": 0.0, "seed": s, "gap": gap,
                         "sharpness": 1 + sharp_slope * x + rng.normal(0, 0.005),
                         "size": 1 + size_slope * x + rng.normal(0, 0.005),
                         "mu_term": 0.001, "mean_dl": gap, "cov_term": gap - 0.001, "half_lambda_sigma_w2": gap})
    return pd.DataFrame(rows)


def test_trend_intervals_and_verdicts_can_come_out_either_way():
    p = nmi.protocol("default", ["sweeps={batch_size: [25, 100, 200, 400]}", "bootstrap=300"])
    table = _table(+0.05, +0.1, -0.1)
    rows = nmi.verdicts(table, p)
    assert rows[0][-1] == "yes" and rows[1][-1] == "yes"
    assert "carried by sharpness ‖σ_g‖; size ‖σ_w‖ moves against the gap" in rows[1][3]
    sub = nmi.sweep(table, "batch_size", p)
    assert len(sub) == 20 and len(nmi.sweep(table, "batch_size", p, [25, 400])) == 10
    t = nmi.trend(sub, "gap", p.bootstrap, "x")
    assert t["lo"] <= t["tau"] <= t["hi"]
    # over a sweep τ is Jonckheere's statistic: Σ over pairs of settings of (2U − n_i n_j), U Mann–Whitney's
    groups = [g.gap.to_numpy() for _, g in sub.groupby("x", sort=True)]
    pairs = [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:]]
    s = sum(2 * stats.mannwhitneyu(b, a).statistic - len(a) * len(b) for a, b in pairs)
    assert t["tau"] == pytest.approx(s / sum(len(a) * len(b) for a, b in pairs))
    # over all runs (each its own block) it is Kendall's τ, and the interval holds it
    t = nmi.trend(table, "gap", p.bootstrap, "y", x="sharpness", by=None)
    assert t["tau"] == pytest.approx(stats.kendalltau(table.sharpness, table.gap).statistic)
    assert t["lo"] <= t["tau"] <= t["hi"]
    # the gap falling with B, carried by neither factor: both verdicts say no
    table = _table(-0.05, +0.1, +0.1)
    rows = nmi.verdicts(table, p)
    assert rows[0][-1].startswith("**no**") and rows[1][-1] == "**no**" and "carried by neither" in rows[1][3]
    # no trend at all: not resolved, and nothing to carry
    table = _table(0.0, 0.0, 0.0)
    rows = nmi.verdicts(table, p)
    assert "no trend resolved" in rows[0][-1] and rows[1][-1].startswith("—")
