"""Relative flatness (measures/relative_flatness.py) against a dense autograd Hessian and a closed form, and the
normalised margin distribution (measures/margin_distribution.py) against a linear model's closed form and
per-sample autograd loops. The references are shared with the value cases of tests/values/cases_relative_flatness.py,
which check the registered values on the default settings; here: chunking, the details, other networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from measures import REGISTRY, Context, NotApplicable
from measures.margin_distribution import EPSILON, margin_distances, margin_layers
from tests.helpers import fit, measured, rescale_relu_units
from tests.values.cases_relative_flatness import (
    data,
    kappa_by_dense_hessian,
    linear_margins,
    mlp,
    relative_flatness_network,
    signature,
    standardise_features,
    strongest_other,
)


def test_relative_flatness_in_chunks_and_unstandardised_against_a_dense_autograd_hessian():
    """The value on the whole set at once is a value case; here in chunks of 7 samples, and the unstandardised κ
    of the details, both against the dense Hessian of the last layer."""
    model, x, y = relative_flatness_network()
    standardised = standardise_features(model, x)
    with torch.no_grad():
        assert torch.allclose(standardised(x), model(x), atol=1e-12)  # the same function
    expected, unstandardised = kappa_by_dense_hessian(standardised, x, y), kappa_by_dense_hessian(model, x, y)
    out = REGISTRY.get("relative_flatness")(Context(model, train=(x, y), chunk=7))
    assert out.value == pytest.approx(expected, rel=1e-9)
    assert out.details["unstandardised"] == pytest.approx(unstandardised, rel=1e-9)
    assert abs(expected - unstandardised) > 0.05 * expected  # the standardisation really enters
    assert out.details["samples"] == 23 and out.details["features"] == out.details["standardised_features"] == 4


def test_relative_flatness_closed_form_with_a_constant_feature():
    """Two features, φ₁(x) = relu(x₁) and φ₂ ≡ c (zero weights, bias c), two classes: p₁ = sigmoid(Δ·φ + β),
    Δ = w₁ − w₂, β = b₁ − b₂, and tr(A W Wᵀ) = p₁p₂‖Δ‖². So κ = (1/n) Σ_i (a_i² + c²) p₁p₂ (Δ₁² + Δ₂²) as given
    (a_i = φ₁(x_i)); standardised, φ₁/σ₁ and σ₁Δ₁ cancel and the constant feature is dropped:
    κ̃ = (1/n) Σ_i a_i² p₁p₂ Δ₁²."""
    x, y = data(12, 4, 2, seed=1)
    model = mlp(4, 2, depth=1, width=2, seed=1)
    c = 1.5
    w = torch.tensor([[1.0, -2.0], [0.3, 0.4]], dtype=torch.float64)
    b = torch.tensor([0.2, -0.1], dtype=torch.float64)
    with torch.no_grad():
        model.net[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
        model.net[1].bias.copy_(torch.tensor([0.0, c]))
        model.net[3].weight.copy_(w)
        model.net[3].bias.copy_(b)
    delta, beta = (w[0] - w[1]).tolist(), (b[0] - b[1]).item()
    raw = std = 0.0
    for a in x[:, 0].clamp_min(0).tolist():
        p1 = 1 / (1 + math.exp(-(delta[0] * a + delta[1] * c + beta)))
        raw += (a * a + c * c) * p1 * (1 - p1) * (delta[0] ** 2 + delta[1] ** 2) / len(x)
        std += a * a * p1 * (1 - p1) * delta[0] ** 2 / len(x)
    out = REGISTRY.get("relative_flatness")(Context(model, train=(x, y), chunk=5))
    assert out.value == pytest.approx(std, rel=1e-12)
    assert out.details["unstandardised"] == pytest.approx(raw, rel=1e-12)
    assert out.details["standardised_features"] == 1


def test_relative_flatness_is_invariant_to_rescaling_and_its_unstandardised_form_is_not():
    """Also with a dead feature unit (σ = 0), whose outgoing weights the rescaling moves."""
    x, y = data(40, 6, 3, seed=2)
    model = fit(mlp(6, 3, depth=2, width=8, seed=2), x, y, steps=100, lr=0.1)
    moved = rescale_relu_units(model, 0)
    assert (model.net[:-1](x) == 0).all(0).any()  # a dead unit
    a = REGISTRY.get("relative_flatness")(Context(model, train=(x, y)))
    b = REGISTRY.get("relative_flatness")(Context(moved, train=(x, y)))
    assert b.value == pytest.approx(a.value, rel=1e-9)
    assert abs(b.details["unstandardised"] - a.details["unstandardised"]) > 0.1 * a.details["unstandardised"]


# ----------------------------------------------------------------------------------------- margin distribution
def test_margin_distribution_details_closed_form_for_a_linear_softmax():
    """The per-layer statistics in the details of the linear softmax model whose three registered values are
    value cases (tests/values/cases_relative_flatness.py), in chunks of 16 samples: ν = √(Σ_k Var x_k), the
    quartiles and fences of the correct points' normalised margins and their logs."""
    model, x, y, nu, dist, positive = linear_margins()
    assert 0 < positive.sum() < len(x)  # some points are misclassified, so the filter is exercised
    expected = signature(dist[positive])
    ctx = Context(model, train=(x, y), chunk=16)
    details = REGISTRY.get("margin_dist.median")(ctx).details
    (layer,) = details["layers"]
    assert layer["total_variation"] == pytest.approx(nu, rel=1e-12)
    for stat, value in expected.items():
        assert layer[stat] == pytest.approx(value, rel=1e-10)
        assert layer[f"log_{stat}"] == (pytest.approx(math.log(value), rel=1e-10) if value > 0 else None)
    assert details["samples"] == positive.sum() and details["train_size"] == len(x)


def test_margin_distribution_on_a_two_hidden_layer_mlp_against_per_sample_autograd():
    """Every sample alone: its representation h_l made a leaf, the rest of the network run from it, and the
    gradient of f_i − f_j taken by torch.autograd.grad; the three layers are the input, h_1 and h_2."""
    x, y = data(40, 5, 3, seed=4)
    model = fit(mlp(5, 3, depth=2, width=6, seed=4), x, y, steps=60, lr=0.1)
    net = model.net
    tails = [lambda h: net[1:](h), lambda h: net[3:](h), lambda h: net[5:](h)]
    with torch.no_grad():
        reps = [x, net[1:3](x), net[1:5](x)]
    per_sample = np.zeros((3, len(x)))
    positive = np.zeros(len(x), bool)
    for s in range(len(x)):
        for layer, (tail, rep) in enumerate(zip(tails, reps)):
            h = rep[s].clone().requires_grad_(True)
            z = tail(h)
            i, j = int(y[s]), strongest_other(z.detach(), int(y[s]))
            (g,) = torch.autograd.grad(z[i] - z[j], h)
            per_sample[layer, s] = (z[i] - z[j]).item() / math.sqrt(g.square().sum().item() + EPSILON)
            positive[s] = (z[i] > z[j]).item()
    nus = [math.sqrt(np.var(r.numpy(), axis=0).sum()) for r in reps]
    normalised = per_sample / np.array(nus)[:, None]
    assert 0 < positive.sum() < len(x)
    ctx = Context(model, train=(x, y), chunk=9)
    helper = ctx.shared(margin_distances)  # every sample's distance, not only the statistics
    for layer in range(3):
        np.testing.assert_allclose(helper["distances"][layer].numpy(), normalised[layer], rtol=1e-10)
    expected = [signature(normalised[layer][positive]) for layer in range(3)]
    for name, stat in (("margin_dist.median", "q2"), ("margin_dist.q1", "q1"), ("margin_dist.q3", "q3")):
        want = np.mean([math.log(e[stat]) for e in expected])
        assert measured(name, ctx) == pytest.approx(want, rel=1e-10)
    details = REGISTRY.get("margin_dist.q3")(ctx).details
    assert [layer["input_of"] for layer in details["layers"]] == ["net.1", "net.3", "net.5"]
    for layer, e in zip(details["layers"], expected):
        for stat, value in e.items():
            assert layer[stat] == pytest.approx(value, rel=1e-10)


def test_margin_distribution_layer_choice_and_no_positive_margin():
    assert margin_layers(3) == [0, 1, 2] and margin_layers(4) == [0, 1, 2, 3]
    assert margin_layers(5) == [0, 1, 3, 4] and margin_layers(9) == [0, 3, 5, 8]
    x, y = data(30, 5, 3, seed=5)
    deep = mlp(5, 3, depth=4, width=6, seed=5)  # five layer inputs: four equally spaced ones
    details = REGISTRY.get("margin_dist.median")(Context(deep, train=(x, y))).details
    assert [layer["input_of"] for layer in details["layers"]] == ["net.1", "net.3", "net.7", "net.9"]
    model = nn.Linear(5, 3).double().eval()
    with torch.no_grad():
        worst = model(x).argmin(1)  # every point labelled with its lowest-scoring class: no positive margin
    with pytest.raises(NotApplicable):
        REGISTRY.get("margin_dist.median")(Context(model, train=(x, worst)))
