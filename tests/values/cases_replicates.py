"""The replicate measures against values computed here by hand: disagreement and total-variation distance from
the softmax outputs of three networks, the barrier from a loop over the line between two trained networks, and
the aligned barrier to a relabelled copy (0). Networks: 5 → 6 → 6 → 3 ReLU MLPs on 200 Gaussian inputs with a
three-class rule."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from measures.testing import ValueCase, permute_hidden_units
from tests.helpers import fit

PATH_POINTS = 21  # t = 0, 0.05, …, 1, as the measures' docstrings say


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def mlp(seed: int, width: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))


def trained_pair(x: torch.Tensor, y: torch.Tensor) -> list[nn.Module]:
    """Two networks fitted from seeds 0 and 1 (150 full-batch steps)."""
    return [fit(mlp(s), x, y, steps=150, lr=0.2) for s in (0, 1)]


def _agreement(model: nn.Module, replicates: list[nn.Module], x: torch.Tensor) -> tuple[float, float]:
    """Mean over the replicates of the argmax disagreement and ½‖p_a − p_r‖₁, from the softmax outputs."""
    with torch.no_grad():
        pa, *ps = (F.softmax(m(x).double(), 1) for m in (model, *replicates))
    dis = [(pa.argmax(1) != q.argmax(1)).double().mean().item() for q in ps]
    tv = [0.5 * (pa - q).abs().sum(1).mean().item() for q in ps]
    return float(np.mean(dis)), float(np.mean(tv))


def _line_barrier(a: nn.Module, b: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """max_t L((1 − t)θ_a + tθ_b) − [(1 − t)L(θ_a) + tL(θ_b)] over 21 points, the loss by a loop over the line."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    t = np.linspace(0, 1, PATH_POINTS)
    with torch.no_grad():
        losses = np.array([F.cross_entropy(torch.func.functional_call(
            a, {k: (1 - s) * pa[k] + s * pb[k] for k in pa}, (x,)).double(), y).item() for s in t])
    return float(np.max(losses - ((1 - t) * losses[0] + t * losses[-1])))


X, Y = data()
A, B, C = mlp(0), mlp(1), mlp(2)
DISAGREEMENT, TV = _agreement(A, [B, C], X)
TRAINED = trained_pair(X, Y)
RELABELLED = permute_hidden_units(TRAINED[0], 3)

CASES = [
    ValueCase("replicate.disagreement", A, DISAGREEMENT, train=(X, Y), replicates=[B, C], rel=0.0, abs=1e-12,
              why="mean over 2 replicates of the fraction of inputs whose softmax argmax differs"),
    ValueCase("replicate.tv_distance", A, TV, train=(X, Y), replicates=[B, C], rel=1e-9,
              why="mean over 2 replicates and the inputs of ½‖softmax f − softmax f_r‖₁"),
    ValueCase("replicate.barrier", TRAINED[0], _line_barrier(*TRAINED, X, Y), train=(X, Y),
              replicates=[TRAINED[1]], why="a loop over 21 points of the line between two trained networks"),
    ValueCase("replicate.barrier_aligned", TRAINED[0], 0.0, train=(X, Y), replicates=[RELABELLED], rel=0.0,
              abs=1e-7, why="a relabelled copy is aligned back onto the model: no barrier (float32 rounding)"),
]
