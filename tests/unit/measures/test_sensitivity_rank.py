"""Measures added from the literature after Jiang et al., beyond the values of tests/values/cases_sensitivity.py:
the Fisher–Rao norm (measures/norms.py) with biases against per-sample autograd, the input Jacobian norm
(measures/sensitivity.py) of a ConvNet against finite differences, chunked evaluation, and the calibration error
(measures/margins.py) of a perfectly calibrated bin."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.zoo.models import ConvNet
from measures import Context
from tests.helpers import measured, rescale_relu_units
from tests.values import cases_sensitivity as cases
from tests.values.cases_sensitivity import data, mlp


def _ctx(model, x, y, chunk=8192) -> Context:
    return Context(model, train=(x, y), chunk=chunk)


# ----------------------------------------------------------------------------------------- chunks
@pytest.mark.parametrize("name,chunk", [("fisher_rao_norm", 7), ("input_jacobian_norm", 4),
                                        ("feature_effective_rank", 7)])
def test_chunked_measures_give_their_case_reference(name, chunk):
    """The value cases run in one chunk; in chunks smaller than the training set the measure still gives the
    case's independently worked-out reference."""
    case = next(c for c in cases.CASES if c.measure == name)
    assert len(case.train[1]) > chunk
    assert measured(name, _ctx(case.model, *case.train, chunk=chunk)) == pytest.approx(case.reference, rel=case.rel)


# ----------------------------------------------------------------------------------------- Fisher–Rao
def test_fisher_rao_norm_with_biases_against_per_sample_autograd():
    """With biases the lemma does not hold; the definition, one backward pass per sample, still does."""
    x, y = data(n=12, seed=1)
    model = mlp(bias=True, seed=1)
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
    x, y = data(seed=2)
    model = mlp(bias=True, seed=2)
    a = measured("fisher_rao_norm", _ctx(model, x, y))
    assert measured("fisher_rao_norm", _ctx(rescale_relu_units(model, 0), x, y)) == pytest.approx(a, rel=1e-5)


# ----------------------------------------------------------------------------------------- input Jacobian
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
def test_the_hand_effective_rank_of_r_equal_values_is_r():
    assert cases.effective_rank_by_hand([1.0, 1.0, 1.0]) == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------- calibration
def test_the_calibration_case_spreads_over_several_bins():
    """The ECE case of tests/values/cases_sensitivity.py exercises the binning: its samples fall in at least
    three of the 15 bins."""
    assert cases.calibration_by_hand(cases.calibration_model(), cases.CALIBRATION_X, cases.CALIBRATION_Y)[2] >= 3


def test_train_ece_is_zero_for_a_perfectly_calibrated_bin():
    """Four samples with top probability 0.75 (one bin), three of them correct: acc = conf, ECE = 0."""
    model = nn.Linear(1, 2, bias=False).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[math.log(3.0)], [0.0]]))  # x = 1: p = (3/4, 1/4)
    x = torch.ones(4, 1)
    ctx = _ctx(model, x, torch.tensor([0, 0, 0, 1]))
    assert measured("train_ece", ctx) == pytest.approx(0.0, abs=1e-7)  # float32 logits
    assert measured("train_confidence", ctx) == pytest.approx(0.75)
