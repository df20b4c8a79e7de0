"""Identical measures are grouped exactly when their values agree to rtol with NaN in the same places."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from benchmark.evaluation.leaderboard import identical_groups


def test_groups_follow_values_to_rtol_nan_places_and_order():
    base = np.array([1.0, 2.0, 3.0, 4.0])
    df = pd.DataFrame({
        "a": base,
        "b": base * (1 + 5e-10),  # within rtol = 1e-9 everywhere: a copy of a
        "c": np.r_[base[:3], 4.0 * (1 + 1e-8)],  # the first values agree, the last one does not
        "d": np.r_[math.nan, base[1:]],  # a's values where it has any, but NaN where a has a value
        "e": np.r_[math.nan, base[1:] * (1 + 1e-12)],  # a copy of d
        "f": [math.nan] * 4,  # no value: never grouped, not even with another empty column
        "g": [math.nan] * 4,
        "h": [math.inf, 2.0, 3.0, 4.0],  # infinite first values are compared by allclose itself
        "i": [math.inf, 2.0, 3.0, 4.0],
        "j": [-math.inf, 2.0, 3.0, 4.0],
    })
    assert identical_groups(df, list(df)) == {"a": ["b"], "c": [], "d": ["e"], "f": [], "g": [], "h": ["i"], "j": []}
    assert identical_groups(df, ["b", "a"]) == {"b": ["a"]}
    assert identical_groups(df.iloc[:0], ["a", "b"]) == {"a": [], "b": []}
