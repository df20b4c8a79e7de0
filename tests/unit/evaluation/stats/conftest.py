"""Fixtures of the statistics tests: one zoo with a noisy measure for the invariances and the bootstrap, and
one evaluated zoo (``stats.evaluate``) that several test modules read, built once for the package."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark import stats
from tests.unit.evaluation.stats.zoos import GAP, MEASURES, make_zoo


@pytest.fixture(scope="package")
def zoo() -> pd.DataFrame:
    df = make_zoo(seed=5, n_seeds=3)
    df["measure.mu"] = df[GAP] + 0.03 * np.random.default_rng(9).standard_normal(len(df))
    return df


@pytest.fixture(scope="package")
def evaluated():
    df = make_zoo(seed=2, n_seeds=3, unconverged=4)
    return df, stats.evaluate(df, MEASURES, n_boot=30, seed=7)
