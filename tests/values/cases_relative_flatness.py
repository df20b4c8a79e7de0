"""Relative flatness against a dense autograd Hessian of the last layer after the authors' standardisation of the
features, and the normalised margin distribution of a linear softmax model in closed form.

The reference helpers are public: ``tests/unit/measures/test_relative_flatness_margin_distribution.py`` checks
the details (the unstandardised κ, chunking, the per-layer statistics) against the same references."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from benchmark.zoo.models import MLP
from measures.margin_distribution import EPSILON
from measures.testing import ValueCase


def data(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n standard-normal float64 inputs of dimension d with uniformly random labels among k classes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)


def mlp(d: int, k: int, depth: int, width: int, seed: int) -> MLP:
    """The zoo's ReLU MLP, torch-seeded initialisation, float64, in eval mode."""
    torch.manual_seed(seed)
    return MLP((d,), k, depth=depth, width=width).double().eval()


# ----------------------------------------------------------------------------------------- relative flatness
def kappa_by_dense_hessian(model: MLP, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ_{s,s'} ⟨w_s, w_s'⟩ Tr(H_{s,s'}), H the dense Hessian of the mean cross-entropy in the last weight of a
    depth-2 MLP (``net.5``)."""
    name = "net.5.weight"
    w = model.net[5].weight.detach()
    h = torch.autograd.functional.hessian(
        lambda v: F.cross_entropy(functional_call(model, {name: v}, (x,)), y), w)  # (C, d, C, d)
    total = 0.0
    for s in range(w.shape[0]):
        for t in range(w.shape[0]):
            trace = sum(h[s, k, t, k].item() for k in range(w.shape[1]))
            total += (w[s] @ w[t]).item() * trace
    return total


def standardise_features(model: MLP, x: torch.Tensor) -> MLP:
    """The authors' reparametrisation: each penultimate unit's incoming weights and bias divided by the standard
    deviation σ_k of its output over the data (np.std), its outgoing weights multiplied by σ_k."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        sigma = np.std(model.net[:-1](x).numpy(), axis=0)
        for k, s in enumerate(sigma):
            if s != 0.0:
                model.net[3].weight[k] /= s
                model.net[3].bias[k] /= s
                model.net[5].weight[:, k] *= s
    return model


def relative_flatness_network() -> tuple[MLP, torch.Tensor, torch.Tensor]:
    """A 5 → 4 → 4 → 3 MLP at its initial weights on 23 random samples."""
    x, y = data(23, 5, 3, seed=0)
    return mlp(5, 3, depth=2, width=4, seed=0), x, y


# ----------------------------------------------------------------------------------------- margin distribution
def signature(distances: np.ndarray) -> dict:
    """The quartiles q1, q2, q3 of ``distances`` (numpy's interpolated percentiles) and Tukey's fences."""
    q1, q2, q3 = np.percentile(distances, [25, 50, 75])
    return {"q1": q1, "q2": q2, "q3": q3, "lower_fence": q1 - 1.5 * (q3 - q1), "upper_fence": q3 + 1.5 * (q3 - q1)}


def strongest_other(z: torch.Tensor, label: int) -> int:
    """The class other than ``label`` with the largest logit."""
    others = z.clone()
    others[label] = -math.inf
    return int(others.argmax())


def linear_margins() -> tuple[nn.Linear, torch.Tensor, torch.Tensor, float, np.ndarray, np.ndarray]:
    """(model, x, y, ν, distances, positive) for f(x) = W x + b on 60 random samples, 4 features, 3 classes. The
    one layer input is x: d = ((w_i − w_j)·x + b_i − b_j) / √(‖w_i − w_j‖² + ε), i the label, j the strongest
    other class, divided by ν = √(Σ_k Var x_k); ``positive``: the correctly classified points, the only ones
    the statistics are taken over (some points are misclassified here)."""
    x, y = data(60, 4, 3, seed=3)
    model = nn.Linear(4, 3).double().eval()
    w, b = model.weight.detach(), model.bias.detach()
    nu = math.sqrt(np.var(x.numpy(), axis=0).sum())
    dist, positive = [], []
    for xi, yi in zip(x, y):
        z = w @ xi + b
        i, j = int(yi), strongest_other(z, int(yi))
        dist.append((z[i] - z[j]).item() / math.sqrt((w[i] - w[j]).square().sum().item() + EPSILON) / nu)
        positive.append(bool(z[i] > z[j]))
    return model, x, y, nu, np.array(dist), np.array(positive)


def _relative_flatness_case() -> ValueCase:
    model, x, y = relative_flatness_network()
    return ValueCase("relative_flatness", model, kappa_by_dense_hessian(standardise_features(model, x), x, y),
                     train=(x, y), rel=1e-9,
                     why="Σ ⟨w_s, w_s'⟩ Tr(H_ss') of the dense last-layer Hessian after standardising the features")


def _margin_cases() -> list[ValueCase]:
    model, x, y, _, dist, positive = linear_margins()
    expected = signature(dist[positive])
    return [ValueCase(name, model, math.log(expected[stat]), train=(x, y), rel=1e-10,
                      why=f"log of the {stat} of the closed-form normalised margins of the correct points")
            for name, stat in (("margin_dist.median", "q2"), ("margin_dist.q1", "q1"), ("margin_dist.q3", "q3"))]


CASES = [_relative_flatness_case()] + _margin_cases()
