"""The pieces of ``genbench reproduce pnas``: the protocol file, the window before the stop, the
random-walk control, the statistics over seeds, and verdicts that can come out either way."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from benchmark import cli
from benchmark.errors import UserError
from benchmark.reproduce import common, pnas
from benchmark.training.loop import train_model
from benchmark.zoo.datasets import make_data
from benchmark.zoo.hparams import DatasetHP
from measures import flatness as fl


def test_the_default_protocol_is_the_authors_analysis():
    p = pnas.protocol()
    assert p.fit == tuple(range(11, 992, 10))  # PCs 11, 21, …, 991 as in the authors' demo
    assert p.window == 12000 and p.width == 50 and (p.lr, p.batch_size) == (0.1, 50)
    assert len(p.seeds) >= 5 and set(p.fit) <= set(p.scanned) and set(range(2, 51)) <= set(p.scanned)
    full = pnas.protocol("full")
    assert (full.dataset, full.train_size, full.stop_loss) == ("mnist", 60000, 5e-5)


def test_overrides_are_parsed_as_yaml_and_bad_ones_name_the_valid_keys():
    p = pnas.protocol("full", ["dataset=mnist5k", "train_size=4000", "seeds=[3, 4]", "stop_loss=1e-3"])
    assert (p.dataset, p.train_size, p.seeds, p.stop_loss) == ("mnist5k", 4000, (3, 4), 1e-3)
    with pytest.raises(UserError, match="unknown pnas protocol key 'windoww'; valid: .*window"):
        pnas.protocol("default", ["windoww=10"])
    with pytest.raises(UserError, match="not key=value"):
        pnas.protocol("default", ["window"])
    with pytest.raises(UserError, match="no 'fast' protocol; valid: default, full, quick"):
        pnas.protocol("fast")
    with pytest.raises(UserError, match="fit_pcs is"):
        pnas.protocol("default", ["fit_pcs=[11, 991]"])


def test_reproduce_rejects_a_bad_protocol_key_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["reproduce", "pnas", "--quick", "windoww=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "unknown pnas protocol key 'windoww'; valid:" in err[0]
    for paper in ("prl", "nmi", "mlst"):  # every reproduction reads its protocol file the same way
        with pytest.raises(SystemExit) as exit_:
            cli.main(["reproduce", paper, "--quick", "seedz=[1]"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and f"unknown {paper} protocol key 'seedz'" in err[0]


def test_spread_is_the_student_t_interval():
    x = [1.0, 2.5, 2.0, 4.0, 3.1]
    s = common.spread(x + [math.nan])
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert s["n"] == 5 and s["sd"] == pytest.approx(np.std(x, ddof=1))
    assert (s["lo"], s["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert math.isnan(common.spread([1.0])["lo"]) and common.pm(common.spread([])) == "—"


def test_the_window_keeps_the_last_steps_in_order():
    w = pnas.Window("weight", 3)
    m = torch.nn.Linear(2, 1, bias=False)
    for i in range(5):
        with torch.no_grad():
            m.weight.fill_(float(i))
        w(m)
    assert w.count == 5 and w.snapshots()[:, 0].tolist() == [2.0, 3.0, 4.0]
    short = pnas.Window("weight", 10)
    short(m)
    assert short.snapshots().shape == (1, 2)


def test_the_window_records_the_weights_before_every_step():
    data = make_data(DatasetHP(name="digits", train_size=120, test_size=50))
    p = pnas.protocol("quick", ["dataset=digits", "train_size=120", "test_size=50", "width=8", "window=1000"])
    hp = pnas.hparams(p, 0.1, 50, 0).replace(**{"train.max_epochs": 2})
    name = pnas.penultimate_weight(hp, data)
    w = pnas.Window(name, 1000)
    result = train_model(hp, data, before_step=w)
    assert name == "net.2.weight" or name.endswith("weight")
    assert w.count == result.history[-1]["step"] == 2 * math.ceil(120 / 50)
    snaps = w.snapshots()
    init = result.init_state[name].reshape(-1)
    assert torch.equal(snaps[0], init)  # before the first step: the initial weights
    assert not torch.equal(snaps[-1], result.final_state[name].reshape(-1))  # before the last step, not after


def test_the_random_walk_matches_the_step_size_and_has_the_random_walk_spectrum():
    gen = torch.Generator().manual_seed(0)
    like = torch.randn(4000, 300, generator=gen).mul_(0.01).cumsum(0)
    walk = pnas.random_walk(like, torch.Generator().manual_seed(1))
    assert torch.equal(walk[0], like[0])
    ratio = walk.diff(dim=0).pow(2).mean() / like.diff(dim=0).pow(2).mean()
    assert float(ratio) == pytest.approx(1.0, rel=0.02)
    pca = fl.snapshot_pca(walk, len(walk), 50)
    # PCA of a random walk: σ_i² ∝ i^-2 well below the number of steps (Antognini & Sohl-Dickstein 2018)
    assert pnas._gamma(pca.spectrum.numpy(), (5, 40)) == pytest.approx(2.0, abs=0.2)


def _table(psi_base, psi_other, rho=-0.9, null_rho=0.0, gamma=2.5, null_gamma=2.0):
    rows = []
    for i, (a, b) in enumerate(zip(psi_base, psi_other)):
        rows.append(dict(lr=0.1, batch_size=50, seed=i, psi=a, rho=rho + 0.01 * i, null_rho=null_rho - 0.01 * i,
                         null_psi=0.1, gamma=gamma + 0.01 * i, null_gamma=null_gamma + 0.01 * i, n90_without_pc1=35))
        rows.append(dict(lr=0.2, batch_size=50, seed=i, psi=b, rho=rho, n90_without_pc1=35, gamma=gamma))
    return pd.DataFrame(rows)


def test_verdicts_can_fail():
    p = pnas.protocol("default", ["sweep=[[0.2, 50]]"])
    good = {r[0]: r[4] for r in pnas.verdicts(_table([4.0, 4.2, 3.9, 4.1, 4.05], [4.1, 3.95, 4.0, 4.2, 4.0]), p)}
    assert all(v == "yes" for v in good.values()), good
    bad = {r[0]: r[4] for r in pnas.verdicts(
        _table([-1.0, -1.2, -0.9, -1.1, -1.0], [3.0, 3.1, 2.9, 3.0, 3.2], rho=0.5, null_rho=0.5, gamma=2.0), p)}
    assert bad["inverse relation: ψ > 0 on the base setting"] == "**no**"
    assert bad["ψ > 0 in every (α, B) setting"] == "**no**"
    assert bad["ψ does not depend on α and B (one-way ANOVA over the settings)"] == "**no**"
    assert sum(v == "**no**" for v in bad.values()) >= 6
