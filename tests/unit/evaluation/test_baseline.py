"""The hyperparameter baseline and what a measure adds beyond the hyperparameters, on synthetic zoos: the baseline's
folds never let a configuration predict itself, the within-configuration τ against scipy's per-configuration τ in a
plain loop, its bootstrap against the statistic recomputed on resampled zoos, and both on the board and its text."""
from __future__ import annotations

from itertools import product

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark.evaluation import board, stats
from benchmark.evaluation import leaderboard as lb
from benchmark.evaluation.stats.resampling import _canonical
from benchmark.report import summary, tables

GAP, TEST = "metric.gap_error", "metric.test_error"


def smooth_zoo(seed: int = 0, seeds: int = 3, seed_noise: float = 0.01) -> pd.DataFrame:
    """A 6 x 4 x 2 grid (a numeric width, a numeric learning rate, a categorical optimizer) times ``seeds``: the gap
    is a smooth function of width and learning rate plus seed noise, the optimizer does nothing. Measures: one of
    the hyperparameters alone, the gap plus a tenth of the seed noise, and pure noise."""
    rng = np.random.default_rng(seed)
    grid = list(product([16, 32, 64, 128, 256, 512], [1e-3, 3e-3, 1e-2, 3e-2], ["sgd", "adam"], range(seeds)))
    df = pd.DataFrame(grid, columns=["hp.model.width", "hp.optimizer.lr", "hp.optimizer.name", "hp.seed"])
    smooth = 0.05 * np.log2(df["hp.model.width"]) - 0.02 * np.log10(df["hp.optimizer.lr"]) ** 2
    gap = smooth + seed_noise * rng.standard_normal(len(df))
    df[GAP] = gap
    df[TEST] = gap + 0.01
    df["metric.gap_loss"] = 2 * gap
    df["metric.test_size"] = 10_000
    df["metric.converged"] = True
    df["measure.hparams_only"] = np.log2(df["hp.model.width"]) + 10 * df["hp.optimizer.lr"]
    df["measure.close"] = gap + 0.1 * seed_noise * rng.standard_normal(len(df))
    df["measure.noise"] = rng.standard_normal(len(df))
    return df


MEASURES = ["measure.hparams_only", "measure.close", "measure.noise"]
HP = ["hp.model.width", "hp.optimizer.lr", "hp.optimizer.name"]


@pytest.fixture(scope="module")
def zoo() -> pd.DataFrame:
    return smooth_zoo()


# ------------------------------------------------------------------------------------------ the baseline
def test_the_baseline_predicts_a_smooth_target_well(zoo):
    pred = stats.hparam_baseline(zoo, GAP, HP, seed=0)
    assert pred.shape == (len(zoo),) and np.isfinite(pred).all()
    assert stats.kendall_tau(zoo.assign(p=pred), "p", GAP) > 0.8


def test_folds_hold_out_whole_configurations_and_a_configuration_never_predicts_itself(zoo):
    configs = stats.configurations(zoo)
    folds = stats.configuration_folds(configs, 5, seed=0)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    assert all(len(set(folds[configs == c])) == 1 for c in np.unique(configs))  # every fold holds whole configs
    sizes = np.bincount([folds[configs == c][0] for c in np.unique(configs)])
    assert sizes.max() - sizes.min() <= 1
    assert (stats.configuration_folds(configs, 5, seed=0) == folds).all()
    assert (stats.configuration_folds(configs, 5, seed=1) != folds).any()
    pred = stats.hparam_baseline(zoo, GAP, HP, seed=0)
    for config in np.unique(configs)[:6]:
        # a configuration's own targets, moved far, leave its predictions unchanged: no fit that predicts it saw it
        mine = configs == config
        moved = zoo.assign(**{GAP: np.where(mine, zoo[GAP] + 10.0, zoo[GAP])})
        again = stats.hparam_baseline(moved, GAP, HP, seed=0)
        np.testing.assert_array_equal(again[mine], pred[mine])
        assert not np.array_equal(again[~mine], pred[~mine])  # the other folds did see it


def test_the_baseline_is_deterministic_for_a_seed_and_ignores_the_row_order(zoo):
    a = stats.hparam_baseline(zoo, GAP, HP, seed=3)
    np.testing.assert_array_equal(a, stats.hparam_baseline(zoo, GAP, HP, seed=3))
    order = np.random.default_rng(0).permutation(len(zoo))
    shuffled = stats.hparam_baseline(zoo.iloc[order].reset_index(drop=True), GAP, HP, seed=3)
    np.testing.assert_allclose(shuffled, a[order], rtol=0, atol=1e-12)


def test_the_baseline_leaves_out_unconverged_models_and_missing_targets(zoo):
    df = zoo.copy()
    df.loc[[0, 5], "metric.converged"] = False
    df.loc[[7], GAP] = np.nan
    pred = stats.hparam_baseline(df, GAP, HP, seed=0)
    assert np.isnan(pred[[0, 5, 7]]).all() and np.isfinite(np.delete(pred, [0, 5, 7])).all()
    one_config = zoo[(zoo["hp.model.width"] == 16) & (zoo["hp.optimizer.lr"] == 1e-3)
                     & (zoo["hp.optimizer.name"] == "sgd")]
    assert np.isnan(stats.hparam_baseline(one_config, GAP, HP)).all()  # nothing to hold out
    assert np.isnan(stats.hparam_baseline(zoo, GAP, [])).all()


def test_features_one_hot_categories_and_place_a_missing_number_below_the_others():
    df = pd.DataFrame({"hp.a": [1.0, np.nan, 3.0], "hp.b": ["x", "y", None], "hp.c": [True, False, True]})
    x = stats.hparam_features(df, ["hp.a", "hp.b", "hp.c"])
    np.testing.assert_array_equal(x[:, 0], [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(x[:, 1:4], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # x, y, missing
    np.testing.assert_array_equal(x[:, 4], [1.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------ within configurations
def _reference_within_tau(df: pd.DataFrame, measure: str, target: str) -> tuple[float, int]:
    """The pair-weighted mean of per-configuration τ-b by scipy in a plain loop: a configuration whose target varies
    but whose measure is constant scores 0; one whose target does not vary is skipped."""
    num = den = 0.0
    used = 0
    for _, g in df.groupby(stats.configurations(df)):
        g = g[[measure, target]].dropna()
        if len(g) < 2 or g[target].nunique() < 2:
            continue
        tau = 0.0 if g[measure].nunique() < 2 else scipy.stats.kendalltau(g[measure], g[target]).statistic
        pairs = len(g) * (len(g) - 1) / 2
        num, den, used = num + pairs * tau, den + pairs, used + 1
    return (num / den if den else float("nan")), used


def _messy_zoo(seed: int) -> pd.DataFrame:
    """Configurations with 1 to 4 seeds, targets with ties, measures with ties and missing values."""
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in product(range(5), range(4)):
        for s in range(int(rng.integers(1, 5))):
            rows.append({"hp.a": a, "hp.b": b, "hp.seed": s})
    df = pd.DataFrame(rows)
    n = len(df)
    df[GAP] = np.round(0.1 * df["hp.a"] + 0.05 * rng.standard_normal(n), 2)  # rounded: ties within configurations
    df["metric.converged"] = rng.random(n) > 0.1
    df["measure.x"] = np.where(rng.random(n) < 0.15, np.nan, df[GAP] + 0.05 * rng.standard_normal(n))
    df["measure.tied"] = np.round(df[GAP] + 0.05 * rng.standard_normal(n), 1)
    df["measure.const"] = df["hp.a"] * 1.0
    return df


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_configuration_tau_matches_scipy_per_configuration(seed):
    df = _messy_zoo(seed)
    names = ["measure.x", "measure.tied", "measure.const"]
    got = stats.within_configuration_tau(df, names, GAP, n_boot=0).set_index("measure")
    conv = df[df["metric.converged"]]
    for name in names:
        tau, used = _reference_within_tau(conv, name, GAP)
        assert got.at[name, "added_tau"] == pytest.approx(tau, abs=1e-12)
        assert got.at[name, "added_configs"] == used
    assert got.at["measure.const", "added_tau"] == 0.0


def test_the_interval_is_the_statistic_recomputed_on_zoos_of_resampled_configurations():
    df = _messy_zoo(4)
    n_boot, level = 25, 0.9
    got = stats.within_configuration_tau(df, ["measure.x"], GAP, n_boot=n_boot, seed=11, level=level)
    base = _canonical(df[df["metric.converged"]])
    counts = stats.bootstrap_counts(stats.configurations(base), n_boot, 11, "configurations").astype(int)
    configs = stats.configurations(base)
    reps = []
    for c in counts:
        # each drawn copy of a configuration becomes a configuration of its own (hp.copy tells the copies apart)
        parts = [base[configs == g].assign(**{"hp.copy": k}) for g in np.unique(configs)
                 for k in range(c[configs == g][0])]
        resampled = pd.concat(parts, ignore_index=True)
        reps.append(_reference_within_tau(resampled, "measure.x", GAP)[0])
    lo, hi = np.quantile([r for r in reps if np.isfinite(r)], [(1 - level) / 2, (1 + level) / 2])
    assert got.added_lo.iloc[0] == pytest.approx(lo, abs=1e-12)
    assert got.added_hi.iloc[0] == pytest.approx(hi, abs=1e-12)


def test_what_a_measure_adds_beyond_the_hyperparameters(zoo):
    added = stats.within_configuration_tau(zoo, MEASURES, GAP, n_boot=200, seed=0).set_index("measure")
    only = added.loc["measure.hparams_only"]
    assert (only.added_tau, only.added_lo, only.added_hi) == (0.0, 0.0, 0.0)  # ties within every configuration
    close = added.loc["measure.close"]
    assert close.added_tau > 0.8 and close.added_lo > 0
    noise = added.loc["measure.noise"]
    assert noise.added_lo < 0 < noise.added_hi
    assert (added.added_configs == 48).all()
    pred = zoo.assign(**{"measure.pred": stats.hparam_baseline(zoo, GAP, HP)})
    assert stats.within_configuration_tau(pred, ["measure.pred"], GAP, n_boot=20).added_tau.iloc[0] == 0.0


def test_without_replicates_nothing_is_added_and_every_column_is_empty(zoo):
    single = zoo[zoo["hp.seed"] == 0].drop(columns="hp.seed")
    added = stats.within_configuration_tau(single, MEASURES, GAP, n_boot=50)
    assert added.added_tau.isna().all() and added.added_lo.isna().all() and (added.added_configs == 0).all()


def test_the_added_tau_is_the_same_for_every_row_order(zoo):
    order = np.random.default_rng(1).permutation(len(zoo))
    a = stats.within_configuration_tau(zoo, MEASURES, GAP, n_boot=50, seed=2)
    b = stats.within_configuration_tau(zoo.iloc[order], MEASURES, GAP, n_boot=50, seed=2)
    pd.testing.assert_frame_equal(a, b)


# ------------------------------------------------------------------------------------------ on the board
class _Measure:
    def __init__(self, name):
        self.name, self.family, self.sign, self.oracle, self.version = name, "f", 1, False, 1
        self.sample_size, self.invariances, self.description, self.reference = None, (), f"{name}.", "a test"


def _board(df: pd.DataFrame) -> board.Board:
    df = df.assign(model_id=[f"m{i:03d}" for i in range(len(df))])
    info = lb.measure_info([_Measure(c.removeprefix("measure.")) for c in MEASURES])
    costs = pd.DataFrame({"measure": info.measure, "seconds": 0.01, "failures": 0, "failure_message": None,
                          "not_applicable": 0, "not_applicable_reason": None})
    axes = HP[:2]
    return board.build("smooth", df, info, costs, axes, [GAP, TEST], n_boot=30, seed=0)


@pytest.fixture(scope="module")
def built(zoo) -> board.Board:
    return _board(zoo)


def test_the_board_scores_the_hparams_baseline_against_its_own_target(built, zoo):
    base = built.baselines
    rows = base[base.measure == lb.HPARAMS].set_index("target")
    assert set(rows.index) == {"gap_error", "test_error"} and (rows.family == lb.BASELINE).all()
    for target in (GAP, TEST):
        pred = stats.hparam_baseline(zoo, target, stats.default_axes(zoo), seed=0)
        expected = stats.kendall_tau(zoo.assign(p=pred), "p", target)
        row = rows.loc[target.removeprefix("metric.")]
        assert row.tau == pytest.approx(expected, abs=1e-12) and row.tau_lo <= row.tau <= row.tau_hi
        assert row.added_tau == 0.0
    assert lb.HPARAMS not in set(built.table.measure)  # never ranked


def test_the_results_carry_what_each_measure_adds(built, zoo):
    t = built.table.set_index(["measure", "target"])
    assert {"added_tau", "added_lo", "added_hi", "added_configs"} <= set(t.columns)
    expected = stats.within_configuration_tau(zoo, MEASURES, GAP, n_boot=30, seed=0).set_index("measure")
    for name in MEASURES:
        got = t.loc[(name.removeprefix("measure."), "gap_error")]
        assert got.added_tau == expected.at[name, "added_tau"] and got.added_lo == expected.at[name, "added_lo"]
    assert list(lb.adds_information(built.table, "gap_error").measure) == ["close"]


def test_the_text_says_what_the_hyperparameters_predict_and_how_many_measures_add(built):
    lead = summary.lead_text(built.table, built.baselines)
    hp_tau = built.baselines.query("measure == @lb.HPARAMS and target == 'gap_error'").tau.iloc[0]
    assert f"predict `gap_error` with τ = {hp_tau:.2f}" in lead
    assert "1 of the 3 measures order the seeds of one configuration" in lead and "led by `close`" in lead
    assert "**Beyond the hyperparameters:**" in summary.summary(built)
    md = tables.markdown(built)
    head = next(line for line in md.splitlines() if line.startswith("| # |"))
    rule = md.splitlines()[md.splitlines().index(head) + 1]
    assert "added τ [95% CI]" in head and rule.count("---") == head.count("|") - 1
    close = next(line for line in md.splitlines() if "`close`" in line and line.startswith("| 1 |"))
    row = built.table.query("measure == 'close' and target == 'gap_error'").iloc[0]
    assert f"{row.added_tau:.3f} [{row.added_lo:.2f}, {row.added_hi:.2f}]" in close
    assert f"`{lb.HPARAMS}`" in md and "The added column is empty" not in md
    assert "added" in tables.terminal(built.table).splitlines()[0]


def test_a_board_without_replicates_says_why_its_added_column_is_empty(zoo):
    single = _board(zoo[zoo["hp.seed"] == 0].drop(columns="hp.seed").reset_index(drop=True))
    assert single.table.added_tau.isna().all()
    md = tables.markdown(single)
    assert md.count("no configuration has two converged seeds") >= 2  # the lead and under each ranked table
    assert single.baselines.query("measure == @lb.HPARAMS").tau.notna().all()  # the baseline still scores
