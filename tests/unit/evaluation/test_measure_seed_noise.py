"""A measure's own seed noise (``leaderboard.measure_seed_noise``) against a one-way ANOVA: with k seeds in
every configuration, MS_between = k · var(configuration means) and MS_within = sd_seed², so
sd_seed / sd_config = sqrt(k / F), F from ``scipy.stats.f_oneway``."""
from __future__ import annotations

import math

import pytest
import scipy.stats

from benchmark.evaluation import leaderboard
from benchmark.evaluation.stats import configurations
from tests.unit.evaluation.stats.zoos import make_zoo


@pytest.mark.parametrize("k", [2, 3])
def test_seed_noise_of_each_measure_against_scipys_anova(k):
    df = make_zoo(seed=4, n_seeds=k)
    out = leaderboard.measure_seed_noise(df, ["noise", "with_nan", "depth", "perfect", "missing"])
    config = configurations(df)
    for name in ("noise", "perfect"):
        groups = [g.to_numpy() for _, g in df.groupby(config)[f"measure.{name}"]]
        f = scipy.stats.f_oneway(*groups).statistic
        assert out[name] == pytest.approx(math.sqrt(k / f), rel=1e-9)
    assert out["noise"] > 0.5 > out["perfect"]  # pure noise is mostly seed noise; the gap's function is not
    assert out["depth"] == 0.0  # a hyperparameter itself has no seed noise
    assert math.isnan(out["missing"])


def test_seed_noise_is_undefined_without_replicates():
    out = leaderboard.measure_seed_noise(make_zoo(n_seeds=1), ["noise"])
    assert math.isnan(out["noise"])
