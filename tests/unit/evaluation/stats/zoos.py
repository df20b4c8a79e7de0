"""Synthetic zoos shared by the statistics tests: a full grid of three axes with a planted gap and measures
of known quality, and small grids of two equally good noisy measures for the calibration tests."""

from __future__ import annotations

from itertools import product

import numpy as np
import pandas as pd

GAP = "metric.gap_error"
MU = "measure.mu"


def pairs_df(gap, mu, **hps) -> pd.DataFrame:
    """A hand-worked zoo: the gap, the measure ``MU`` and hyperparameters ``hp.<name>`` from keyword lists."""
    return pd.DataFrame({**{f"hp.{k}": v for k, v in hps.items()}, GAP: gap, MU: mu})


def make_zoo(seed: int = 0, n_seeds: int = 2, unconverged: int = 0) -> pd.DataFrame:
    """Full grid over 3 axes (3 x 2 x 2) x seeds with a synthetic gap and measures."""
    rng = np.random.default_rng(seed)
    grid = list(product([1, 2, 3], [0.01, 0.1], [32, 128], range(n_seeds)))
    df = pd.DataFrame(grid, columns=["hp.model.depth", "hp.optimizer.lr", "hp.train.batch_size", "hp.seed"])
    n = len(df)
    gap = (
        0.05 * df["hp.model.depth"]
        - 0.3 * df["hp.optimizer.lr"]
        + 0.0004 * df["hp.train.batch_size"]
        + 0.01 * rng.standard_normal(n)
    ).to_numpy()
    train_error = 0.01 * rng.random(n)
    df["metric.gap_error"] = gap
    df["metric.test_error"] = gap + train_error
    df["metric.gap_loss"] = 2 * gap
    df["metric.test_size"] = 10_000
    converged = np.ones(n, dtype=bool)
    converged[rng.choice(n, size=unconverged, replace=False)] = False
    df["metric.converged"] = converged
    df["measure.perfect"] = np.exp(10 * gap)  # strictly increasing in the gap
    df["measure.noise"] = rng.standard_normal(n)
    df["measure.depth"] = df["hp.model.depth"].astype(float)
    with_nan = gap + 0.02 * rng.standard_normal(n)
    with_nan[rng.choice(n, size=n // 4, replace=False)] = np.nan
    df["measure.with_nan"] = with_nan
    df["measure.all_nan"] = np.nan
    return df


MEASURES = ["measure.perfect", "measure.noise", "measure.depth", "measure.with_nan", "measure.all_nan"]
AXES = ["hp.model.depth", "hp.optimizer.lr", "hp.train.batch_size"]


def null_zoo(rng, gap_noise=0.01, noise_a=0.01, noise_b=0.01, configs=(4, 3, 3), seeds=3):
    grid = list(product(*[range(c) for c in configs], range(seeds)))
    df = pd.DataFrame(grid, columns=["hp.x", "hp.y", "hp.z", "hp.seed"])
    truth = 0.02 * df["hp.x"] - 0.015 * df["hp.y"] + 0.01 * df["hp.z"] ** 2
    df[GAP] = truth + gap_noise * rng.standard_normal(len(df))
    df["metric.test_error"] = df[GAP]
    df["metric.test_size"] = 10_000
    df["metric.converged"] = True
    df["measure.a"] = truth + noise_a * rng.standard_normal(len(df))
    df["measure.b"] = truth + noise_b * rng.standard_normal(len(df))
    return df
