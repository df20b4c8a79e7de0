"""What the store's frames mean, in one place: which models count as converged."""
from __future__ import annotations

import pandas as pd

CONVERGED = "metric.converged"


def converged(df: pd.DataFrame) -> pd.Series:
    """The boolean mask of the models whose ``metric.converged`` is true; a missing value counts as not converged
    (``astype(bool)`` would count NaN as converged)."""
    return df[CONVERGED].eq(True)
