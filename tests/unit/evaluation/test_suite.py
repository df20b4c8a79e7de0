"""The cross-task view of a suite: hand-worked tables, the identical-measure expansion and the agreement."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark.evaluation import suite


def _table(taus: dict[str, float], identical: dict[str, str] | None = None, tiers: dict | None = None):
    rows = [{"measure": m, "target": "gap_error", "tau": t, "tau_lo": t - 0.05, "tau_hi": t + 0.05, "psi": t / 2,
             "family": "f", "identical": (identical or {}).get(m, ""), "tier": (tiers or {}).get(m, 1)}
            for m, t in taus.items()]
    rows.append({"measure": "a", "target": "test_error", "tau": -1.0, "tau_lo": -1, "tau_hi": -1, "psi": 0,
                 "family": "f", "identical": "", "tier": 1})
    return pd.DataFrame(rows)


def test_cross_task_ranks_by_the_worst_task():
    tables = {"t1": _table({"a": 0.6, "b": 0.5, "c": 0.1}),
              "t2": _table({"a": -0.2, "b": 0.4, "c": 0.3}, tiers={"a": 3, "b": 1, "c": 2}),
              "t3": _table({"a": 0.9, "b": 0.45})}  # c missing on t3
    out = suite.cross_task(tables).set_index("measure")
    assert list(out.index) == ["b", "a", "c"]  # complete rows first, by worst tau; c lacks a task
    assert out.at["b", "worst_tau"] == 0.4 and out.at["b", "worst_task"] == "t2"
    assert out.at["a", "worst_tau"] == -0.2 and out.at["a", "worst_tau_lo"] == pytest.approx(-0.25)
    assert out.at["a", "mean_tau"] == pytest.approx((0.6 - 0.2 + 0.9) / 3)
    assert out.at["a", "mean_rank"] == pytest.approx((1 + 3 + 1) / 3)
    assert out.at["c", "n_tasks"] == 2 and np.isnan(out.at["c", "tau.t3"])
    assert out.at["a", "tier.t2"] == 3 and out.at["b", "worst_psi"] == pytest.approx(0.2)


def test_identical_measures_are_expanded_on_the_tasks_that_group_them():
    tables = {"mlp": _table({"spec": 0.3, "x": 0.1}, identical={"spec": "spec_fft"}),
              "cnn": _table({"spec": 0.2, "spec_fft": 0.25, "x": 0.0})}
    out = suite.cross_task(tables).set_index("measure")
    assert out.at["spec_fft", "tau.mlp"] == 0.3 and out.at["spec_fft", "tau.cnn"] == 0.25
    assert out.at["spec_fft", "n_tasks"] == 2 and out.at["spec", "identical"] == ""
    # identical on every task: one row, the other named beside it
    both = {"a": _table({"spec": 0.3, "x": 0.1}, identical={"spec": "spec_fft, spec_x"}),
            "b": _table({"spec": 0.2, "x": 0.0}, identical={"spec": "spec_fft"})}
    out = suite.cross_task(both).set_index("measure")
    assert list(out.index) == ["spec", "x", "spec_x"] and out.at["spec", "identical"] == "spec_fft"
    assert out.at["spec_x", "n_tasks"] == 1


def test_agreement_against_scipy():
    rng = np.random.default_rng(0)
    names = [f"m{k}" for k in range(12)]
    base = np.linspace(-0.5, 0.8, 12)
    taus = {t: dict(zip(names, base + 0.2 * rng.standard_normal(12))) for t in ("t1", "t2", "t3")}
    out = suite.agreement({t: _table(v) for t, v in taus.items()})
    pair = out["pairs"].set_index(["task_a", "task_b"]).loc[("t1", "t3")]
    x, y = np.array(list(taus["t1"].values())), np.array(list(taus["t3"].values()))
    assert pair.kendall_tau == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert pair.spearman == pytest.approx(scipy.stats.spearmanr(x, y).statistic) and pair.n_measures == 12
    assert len(out["pairs"]) == 3
    ref = scipy.stats.friedmanchisquare(*np.array([list(v.values()) for v in taus.values()]).T)
    assert out["concordance"]["chi2"] == pytest.approx(ref.statistic) and out["concordance"]["m"] == 3
    assert out["concordance"]["w"] > 0.5


def _w(columns: list[np.ndarray]) -> float:
    """Kendall's W from its textbook formula (no ties): 12 S / (m² (n³ − n)), S the squared deviations of the
    items' rank sums."""
    ranks = np.array([scipy.stats.rankdata(c) for c in columns])
    m, n = ranks.shape
    sums = ranks.sum(0)
    return 12 * ((sums - sums.mean()) ** 2).sum() / (m ** 2 * (n ** 3 - n))


def test_families_group_the_tasks_and_find_the_measures_that_move():
    rng = np.random.default_rng(1)
    names = [f"m{k}" for k in range(10)]
    base = np.linspace(-0.4, 0.7, 10)
    taus = {t: base + 0.15 * rng.standard_normal(10) for t in ("mlp1", "mlp2", "cnn1", "bn1", "bn2")}
    for t in ("cnn1", "bn1", "bn2"):  # m9 leads the MLPs and falls to last on every conv task
        taus[t][9] = -0.9
    families = {"mlp1": "MLP", "mlp2": "MLP", "cnn1": "conv", "bn1": "BatchNorm conv", "bn2": "BatchNorm conv"}
    tables = {t: _table(dict(zip(names, v))) for t, v in taus.items()}
    out = suite.by_family(tables, families)
    fam = out["families"].set_index("family")
    assert list(fam.index) == ["MLP", "conv", "BatchNorm conv"] and fam.at["MLP", "tasks"] == "mlp1, mlp2"
    assert fam.at["MLP", "w"] == pytest.approx(_w([taus["mlp1"], taus["mlp2"]]))
    assert fam.at["BatchNorm conv", "mean_pair_tau"] == pytest.approx(
        scipy.stats.kendalltau(taus["bn1"], taus["bn2"]).statistic)
    assert np.isnan(fam.at["conv", "w"]) and np.isnan(fam.at["conv", "mean_pair_tau"])
    worst = np.minimum(taus["bn1"], taus["bn2"])
    assert fam.at["BatchNorm conv", "leader"] == names[int(worst.argmax())]
    assert fam.at["BatchNorm conv", "leader_worst_tau"] == pytest.approx(worst.max())
    assert fam.at["conv", "leader"] == names[int(taus["cnn1"].argmax())]
    between = out["between"]
    kt = {(a, b): scipy.stats.kendalltau(taus[a], taus[b]).statistic
          for i, a in enumerate(taus) for b in list(taus)[i + 1:]}
    same = [v for (a, b), v in kt.items() if families[a] == families[b]]
    assert len(same) == 2 and between["within_tau"] == pytest.approx(np.mean(same))
    assert between["across_tau"] == pytest.approx(np.mean([v for (a, b), v in kt.items()
                                                           if families[a] != families[b]]))
    means = [(taus["mlp1"] + taus["mlp2"]) / 2, taus["cnn1"], (taus["bn1"] + taus["bn2"]) / 2]
    assert between["w_families"] == pytest.approx(_w(means)) and between["n_measures"] == 10
    change = out["change"]
    top = change.iloc[0]
    ref = scipy.stats.rankdata(-means[0], method="min")
    other = scipy.stats.rankdata(-(taus["cnn1"] + taus["bn1"] + taus["bn2"]) / 3, method="min")
    assert top.measure == "m9" and top.rank_other == 10 and top.change == ref[9] - 10 < 0
    assert dict(zip(change.measure, change.change)) == {n: r - o for n, r, o in zip(names, ref, other)}
    assert list(change.change.abs()) == sorted(change.change.abs(), reverse=True)


def test_a_suite_of_one_family_has_no_change_table():
    tables = {t: _table({"a": 0.5 + d, "b": 0.2, "c": -0.1 + d}) for t, d in (("t1", 0.0), ("t2", 0.1))}
    out = suite.by_family(tables, {"t1": "MLP", "t2": "MLP"})
    assert out["change"] is None and np.isnan(out["between"]["across_tau"])
    assert out["between"]["within_tau"] == pytest.approx(1.0)
    assert suite.by_family(tables, {"t1": "conv", "t2": "conv"})["change"] is None  # no MLP task


def test_a_task_s_family_comes_from_its_architectures():
    df = pd.DataFrame({"hp.model.name": ["resnet", "cnn_bn", "resnet"]})
    assert suite.architectures(df) == {"model": "cnn_bn + resnet", "family": "BatchNorm conv"}
    assert suite.architectures(pd.DataFrame({"hp.model.name": ["mlp"]}))["family"] == "MLP"
    assert suite.architectures(pd.DataFrame({"hp.model.name": ["cnn", "mlp"]}))["family"] == "MLP + conv"
