"""The pieces of ``genbench reproduce prl``: the protocol file and verdicts that can come out either way."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import UserError
from benchmark.reproduce import prl

VALLEY = [{"kappa": 1.0, "exponent": 1.02, "r2": 0.99}, {"kappa": 4.0, "exponent": 3.9, "r2": 0.99}]


def test_the_protocol():
    p = prl.protocol()
    assert len(p.seeds) >= 5 and (0.1, 50) in p.settings and p.ceiling_batch_sizes[0] > p.ceiling_batch_sizes[-1]
    assert p.hparams(0.2, 25, 3).optimizer.lr == 0.2 and p.hparams(0.2, 25, 3).model.bias is False
    with pytest.raises(UserError, match="settings is a list of"):
        prl.protocol("default", ["settings=[[0.1, 50, 1]]"])


def _sweep(slope: float, seeds: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for lr, bs in ((0.05, 50), (0.1, 50), (0.2, 50), (0.1, 25)):
        for s in range(seeds):
            x = np.log(lr / bs)
            rows.append({"lr": lr, "batch_size": bs, "noise": lr / bs, "seed": s,
                         "lambda_max": np.exp(slope * x + rng.normal(0, 0.01)),
                         "sum_log_lambda": slope * x + rng.normal(0, 0.01), "test_error": 0.1})
    return pd.DataFrame(rows)


def _ceiling(converged: dict) -> pd.DataFrame:
    return pd.DataFrame([{"batch_size": b, "noise": 0.4 / b, "seed": s, "converged": c,
                          "train_loss": 0.01 if c else 2.1} for b, cs in converged.items() for s, c in enumerate(cs)])


def test_verdicts_can_come_out_either_way():
    p = prl.protocol("default", ["bootstrap=300"])
    good = prl.verdicts(_sweep(-0.5), _ceiling({50: [1, 1, 1], 10: [1, 0, 0], 5: [0, 0, 0]}), VALLEY, p)
    assert [r[-1] for r in good] == ["yes"] * 4
    bad = prl.verdicts(_sweep(+0.5), _ceiling({50: [1, 1, 1], 5: [1, 1, 0]}),
                       [{"kappa": 4.0, "exponent": 2.0, "r2": 0.9}], p)
    assert [r[-1] for r in bad] == ["**no**"] * 4
