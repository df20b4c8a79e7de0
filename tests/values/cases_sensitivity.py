"""Measures added from the literature after Jiang et al.: the Fisher–Rao norm against Liang et al.'s closed form,
the input Jacobian norm of a linear softmax by hand, the effective ranks from known singular values, and the
training-set confidence and calibration error bin by bin."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from benchmark.zoo.models import MLP, init_parameters
from measures.testing import ValueCase


def data(n=40, d=6, k=3, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """n standard normal inputs of dimension d and uniform labels among k classes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def mlp(bias: bool, seed=0, d=6, k=3, depth=2, width=5) -> nn.Module:
    """A d → width ×depth → k MLP in eval mode, PyTorch's default initialisation under ``torch.manual_seed(seed)``
    (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP((d,), k, depth=depth, width=width, bias=bias).eval()


def linear(d: int, k: int, seed: int) -> nn.Linear:
    """A d → k Linear layer in eval mode, initialised from a generator seeded ``seed``."""
    model = nn.Linear(d, k)
    init_parameters(model, torch.Generator().manual_seed(seed))
    return model.eval()


def effective_rank_by_hand(s) -> float:
    """exp of the entropy of s/Σs (Roy & Vetterli 2007): r for r equal values."""
    p = np.asarray(s, float) / np.sum(s)
    return math.exp(-np.sum(p * np.log(p)))


# ----------------------------------------------------------------------------------------- Fisher–Rao
def _fisher_rao_case() -> ValueCase:
    """Liang et al.'s Lemma: with no biases, ⟨θ, ∇_θ ℓ⟩ = (L + 1)⟨∂ℓ/∂f, f⟩, ∂ℓ/∂f = softmax(f) − e_y."""
    x, y = data()
    model = mlp(bias=False, depth=2)  # 3 layers: L + 1 = 3
    with torch.no_grad():
        f = model(x).double()
    inner = ((torch.softmax(f, 1) - nn.functional.one_hot(y, 3).double()) * f).sum(1)
    return ValueCase("fisher_rao_norm", model, (3 * inner).square().mean().item(), train=(x, y), rel=1e-5,
                     why="mean of (3⟨softmax(f) − e_y, f⟩)², Liang et al.'s lemma on a bias-free 3-layer ReLU net")


# ----------------------------------------------------------------------------------------- input Jacobian
def _input_jacobian_case() -> ValueCase:
    """f(x) = W x + b: ∂σ/∂x = (diag p − p pᵀ) W for every sample."""
    x, y = data(n=9, d=4, k=3, seed=3)
    model = linear(4, 3, seed=3)
    w = model.weight.detach().double()
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1)
    norms = [((torch.diag(pi) - torch.outer(pi, pi)) @ w).norm().item() for pi in p]
    return ValueCase("input_jacobian_norm", model, float(np.mean(norms)), train=(x, y), rel=1e-5,
                     why="mean over the samples of ‖(diag p − p pᵀ) W‖_F for a linear softmax")


# ----------------------------------------------------------------------------------------- effective rank
WEIGHT_SPECTRA = [(4.0, 2.0, 1.0, 0.5), (3.0, 3.0, 1.0)]


def _weight_rank_case() -> ValueCase:
    """Weights built as U diag(s) Vᵀ with known s; the measure is the mean of exp H(s/Σs) over the layers."""
    model = mlp(bias=True, d=4, k=3, depth=1, width=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer, s in zip([model.net[1], model.net[3]], WEIGHT_SPECTRA):
            out, inp = layer.weight.shape
            u, _ = torch.linalg.qr(torch.randn(out, out, generator=g))
            v, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g))
            sigma = torch.zeros(out, inp)
            sigma[range(len(s)), range(len(s))] = torch.tensor(s)
            layer.weight.copy_(u @ sigma @ v.T)
    reference = float(np.mean([effective_rank_by_hand(s) for s in WEIGHT_SPECTRA]))
    return ValueCase("weight_effective_rank", model, reference,
                     why="mean over the two layers of exp H(s/Σs), s the singular values they were built with")


def _feature_rank_case() -> ValueCase:
    x, y = data(n=30, seed=6)
    model = mlp(bias=True, seed=6)
    with torch.no_grad():
        phi = model.net[:-1](x).double()  # everything before the classifier layer
    s = torch.linalg.svdvals(phi).numpy()
    return ValueCase("feature_effective_rank", model, effective_rank_by_hand(s[s > 0]), train=(x, y),
                     why="exp H(s/Σs), s the nonzero singular values of the classifier layer's inputs")


# ----------------------------------------------------------------------------------------- calibration
def calibration_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """(mean top probability, ECE over 15 equal-width bins, the number of bins used), sample by sample."""
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1)
    conf, pred = p.max(1)
    correct = (pred == y).double()
    bins = {}
    for c, ok in zip(conf.tolist(), correct.tolist()):
        k = min(max(math.ceil(c * 15), 1), 15)  # (k−1)/15 < c ≤ k/15
        bins.setdefault(k, []).append((c, ok))
    ece = sum(len(v) / len(x) * abs(np.mean([o for _, o in v]) - np.mean([c for c, _ in v])) for v in bins.values())
    return conf.mean().item(), float(ece), len(bins)


CALIBRATION_X, CALIBRATION_Y = data(n=50, d=3, k=3, seed=7)


def calibration_model() -> nn.Linear:
    """A 3 → 3 linear model whose top probabilities on the calibration data spread over several bins."""
    return linear(3, 3, seed=7)


CONFIDENCE, ECE, _ = calibration_by_hand(calibration_model(), CALIBRATION_X, CALIBRATION_Y)


CASES = [
    _fisher_rao_case(),
    _input_jacobian_case(),
    _weight_rank_case(),
    _feature_rank_case(),
    ValueCase("train_confidence", calibration_model(), CONFIDENCE, train=(CALIBRATION_X, CALIBRATION_Y), rel=1e-9,
              why="the mean top softmax probability"),
    ValueCase("train_ece", calibration_model(), ECE, train=(CALIBRATION_X, CALIBRATION_Y), rel=1e-9,
              why="Σ_bins |bin| / n · |accuracy − confidence| over 15 equal-width bins, sample by sample"),
]
