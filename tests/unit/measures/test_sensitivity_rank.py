"""Measures added from the literature after Jiang et al.: the Fisher–Rao norm (measures/norms.py), the input
Jacobian norm (measures/sensitivity.py), the effective ranks (measures/rank.py) and the training-set
confidence and calibration (measures/margins.py), each against a closed form or a second implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.zoo.models import MLP, ConvNet
from measures import Context
from tests.helpers import measured, permute_hidden_units, rescale_relu_units


def _data(n=40, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _mlp(bias: bool, seed=0, d=6, k=3, depth=2, width=5) -> nn.Module:
    torch.manual_seed(seed)
    return MLP((d,), k, depth=depth, width=width, bias=bias).eval()


def _ctx(model, x, y, chunk=8192) -> Context:
    return Context(model, train=(x, y), chunk=chunk)


# ----------------------------------------------------------------------------------------- Fisher–Rao
def test_fisher_rao_norm_equals_liangs_closed_form_on_a_bias_free_relu_net():
    """Liang et al.'s Lemma: with no biases, ⟨θ, ∇_θ ℓ⟩ = (L + 1)⟨∂ℓ/∂f, f⟩, ∂ℓ/∂f = softmax(f) − e_y."""
    x, y = _data()
    model = _mlp(bias=False, depth=2)  # 3 layers: L + 1 = 3
    with torch.no_grad():
        f = model(x).double()
    inner = ((torch.softmax(f, 1) - nn.functional.one_hot(y, 3).double()) * f).sum(1)
    expected = (3 * inner).square().mean().item()
    assert measured("fisher_rao_norm", _ctx(model, x, y, chunk=7)) == pytest.approx(expected, rel=1e-5)


def test_fisher_rao_norm_with_biases_against_per_sample_autograd():
    """With biases the lemma does not hold; the definition, one backward pass per sample, still does."""
    x, y = _data(n=12, seed=1)
    model = _mlp(bias=True, seed=1)
    inner = []
    for xi, yi in zip(x, y):
        model.zero_grad()
        nn.functional.cross_entropy(model(xi[None]), yi[None]).backward()
        inner.append(sum((p.detach() * p.grad).sum() for p in model.parameters()).item())
    got = measured("fisher_rao_norm", _ctx(model, x, y))
    assert got == pytest.approx(np.mean(np.square(inner)), rel=1e-5)
    with torch.no_grad():
        f = model(x).double()
    lemma = (3 * ((torch.softmax(f, 1) - nn.functional.one_hot(y, 3).double()) * f).sum(1)).square().mean().item()
    assert abs(got - lemma) > 1e-3 * lemma  # the biases really enter: the bias-free shortcut would be wrong


def test_fisher_rao_norm_is_invariant_to_rescaling_and_the_sample_size_enters():
    x, y = _data(seed=2)
    model = _mlp(bias=True, seed=2)
    a = measured("fisher_rao_norm", _ctx(model, x, y))
    assert measured("fisher_rao_norm", _ctx(rescale_relu_units(model, 0), x, y)) == pytest.approx(a, rel=1e-5)


# ----------------------------------------------------------------------------------------- input Jacobian
def test_input_jacobian_norm_closed_form_for_a_linear_softmax():
    """f(x) = W x + b: ∂σ/∂x = (diag p − p pᵀ) W for every sample."""
    x, y = _data(n=9, d=4, k=3, seed=3)
    model = nn.Linear(4, 3).eval()
    w = model.weight.detach().double()
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1)
    norms = [((torch.diag(pi) - torch.outer(pi, pi)) @ w).norm().item() for pi in p]
    got = measured("input_jacobian_norm", _ctx(model, x, y, chunk=4))
    assert got == pytest.approx(np.mean(norms), rel=1e-5)


def test_input_jacobian_norm_on_a_convnet_against_finite_differences():
    torch.manual_seed(4)
    model = ConvNet((1, 12), 3, depth=2, width=4).double().eval()
    x = torch.randn(5, 1, 12, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    h, norms = 1e-6, []
    for xi in x:
        cols = []
        for j in range(xi.numel()):
            e = torch.zeros_like(xi).flatten()
            e[j] = h
            e = e.view_as(xi)
            with torch.no_grad():
                cols.append((torch.softmax(model((xi + e)[None]), 1) - torch.softmax(model((xi - e)[None]), 1))[0]
                            / (2 * h))
        norms.append(torch.stack(cols, 1).norm().item())
    assert measured("input_jacobian_norm", _ctx(model, x, y)) == pytest.approx(np.mean(norms), rel=1e-5)


# ----------------------------------------------------------------------------------------- effective rank
def _effective_rank_by_hand(s):
    p = np.asarray(s, float) / np.sum(s)
    return math.exp(-np.sum(p * np.log(p)))


def test_weight_effective_rank_closed_form_on_known_singular_values():
    """Weights built as U diag(s) Vᵀ with known s; the measure is the mean of exp H(s/Σs) over the layers."""
    model = _mlp(bias=True, d=4, k=3, depth=1, width=4)
    g = torch.Generator().manual_seed(5)
    spectra = [(4.0, 2.0, 1.0, 0.5), (3.0, 3.0, 1.0)]
    with torch.no_grad():
        for layer, s in zip([model.net[1], model.net[3]], spectra):
            out, inp = layer.weight.shape
            u, _ = torch.linalg.qr(torch.randn(out, out, generator=g))
            v, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g))
            sigma = torch.zeros(out, inp)
            sigma[range(len(s)), range(len(s))] = torch.tensor(s)
            layer.weight.copy_(u @ sigma @ v.T)
    expected = np.mean([_effective_rank_by_hand(s) for s in spectra])
    assert measured("weight_effective_rank", Context(model)) == pytest.approx(expected, rel=1e-6)
    assert _effective_rank_by_hand([1.0, 1.0, 1.0]) == pytest.approx(3.0)  # the scale: r for equal values


def test_feature_effective_rank_reads_the_last_layers_input():
    x, y = _data(n=30, seed=6)
    model = _mlp(bias=True, seed=6)
    with torch.no_grad():
        phi = model.net[:-1](x).double()  # everything before the classifier layer
    s = torch.linalg.svdvals(phi).numpy()
    expected = _effective_rank_by_hand(s[s > 0])
    assert measured("feature_effective_rank", _ctx(model, x, y, chunk=7)) == pytest.approx(expected, rel=1e-6)
    moved = permute_hidden_units(model, 1)
    assert measured("feature_effective_rank", _ctx(moved, x, y)) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------- calibration
def test_train_confidence_and_ece_by_hand():
    """A linear model whose outputs are set so that the top probabilities are known: ECE over 15 equal-width
    bins computed sample by sample."""
    x, y = _data(n=50, d=3, k=3, seed=7)
    model = nn.Linear(3, 3).eval()
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1)
    conf, pred = p.max(1)
    correct = (pred == y).double()
    bins = {}
    for c, ok in zip(conf.tolist(), correct.tolist()):
        k = min(max(math.ceil(c * 15), 1), 15)  # (k−1)/15 < c ≤ k/15
        bins.setdefault(k, []).append((c, ok))
    ece = sum(len(v) / len(x) * abs(np.mean([o for _, o in v]) - np.mean([c for c, _ in v])) for v in bins.values())
    ctx = _ctx(model, x, y)
    assert measured("train_confidence", ctx) == pytest.approx(conf.mean().item(), rel=1e-9)
    assert measured("train_ece", ctx) == pytest.approx(ece, rel=1e-9)
    assert len(bins) >= 3  # the samples spread over several bins, so the binning is exercised


def test_train_ece_is_zero_for_a_perfectly_calibrated_bin():
    """Four samples with top probability 0.75 (one bin), three of them correct: acc = conf, ECE = 0."""
    model = nn.Linear(1, 2, bias=False).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[math.log(3.0)], [0.0]]))  # x = 1: p = (3/4, 1/4)
    x = torch.ones(4, 1)
    ctx = _ctx(model, x, torch.tensor([0, 0, 0, 1]))
    assert measured("train_ece", ctx) == pytest.approx(0.0, abs=1e-7)  # float32 logits
    assert measured("train_confidence", ctx) == pytest.approx(0.75)
