"""Cost against predictive power: the Pareto front against a brute-force dominance check, the cheapest measure
tied with #1, and the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import PIL.Image

from benchmark.evaluation.leaderboard import cheapest_tied, pareto_front
from benchmark.report import plots, tables


def _table(n=30, seed=0):
    rng = np.random.default_rng(seed)
    tau = rng.uniform(-0.3, 0.8, n)
    order = np.argsort(-tau)
    tied = np.zeros(n, dtype=bool)
    tied[order[:5]] = True  # #1 and the four after it cannot be told apart from it
    return pd.DataFrame({"measure": [f"m{i}" for i in range(n)], "target": "gap_error", "family": "norm",
                         "tau": tau, "tau_lo": tau - 0.05, "tau_hi": tau + 0.05,
                         "seconds": 10 ** rng.uniform(-5, 0, n), "tied_with_best": tied})


def test_pareto_front_is_exactly_the_undominated_measures():
    for seed in range(5):
        t = _table(seed=seed)
        dominated = {a.measure for a in t.itertuples() for b in t.itertuples()
                     if b.seconds <= a.seconds and b.tau >= a.tau and (b.seconds < a.seconds or b.tau > a.tau)}
        front = pareto_front(t)
        assert set(front) == set(t.measure) - dominated
        costs = t.set_index("measure").loc[front]
        assert costs.seconds.is_monotonic_increasing and costs.tau.is_monotonic_increasing
        assert front[-1] == t.loc[t.tau.idxmax(), "measure"]  # #1 always closes the front


def test_cheapest_tied_with_the_best():
    t = _table(seed=1)
    group = t[t.tied_with_best]
    got = cheapest_tied(t)
    assert got.measure == group.loc[group.seconds.idxmin(), "measure"]
    assert cheapest_tied(t.drop(columns="tied_with_best")) is None  # no replicates, no paired test
    text = tables.lead_text(t, None)
    assert f"**Cheapest tied with #1:** `{got.measure}`" in text


def test_cost_figure(tmp_path):
    path = plots.write_cost(_table(), tmp_path / "cost.png")
    with PIL.Image.open(path) as image:
        assert image.format == "PNG" and image.width > 500
    assert plots.write_cost(_table().assign(seconds=np.nan), tmp_path / "none.png") is None
