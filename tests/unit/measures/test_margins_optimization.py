"""Output and optimization measures (measures/margins.py, measures/optimization.py) beyond the values of
tests/values/cases_margins.py: the margins of a linear model with known outputs, refusals, step counts on edge
histories, the gradient-noise variance against enumeration of every minibatch on every code path, and properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.zoo.models import MLP, ConvNet, init_parameters
from measures import REGISTRY, Context, optimization
from measures.optimization import gradient_noise
from tests.helpers import measured, permute_hidden_units
from tests.values.cases_margins import GAMMA, HISTORY, SAMPLES, brute_force_noise, linear_data, linear_model

MODULES = ("measures.margins", "measures.optimization")
NAMES = [m.name for m in REGISTRY if m.fn.__module__ in MODULES]


def value(name: str, ctx: Context) -> float:
    """The measure's formula v (for inverse_margin the registered value is √(v/m), checked on the way)."""
    return measured(name, ctx)


# ----------------------------------------------------------------------------------------- output measures
def linear_ctx(samples=SAMPLES) -> Context:
    return Context(linear_model(), train=linear_data(samples))


def test_margins_of_the_linear_model_are_the_hand_computed_ones():
    assert linear_ctx().margins.tolist() == pytest.approx([s[3] for s in SAMPLES])


def test_the_hand_tenth_percentile_is_numpys_interpolation():
    assert GAMMA == pytest.approx(np.percentile([s[3] for s in SAMPLES], 10))


def test_inverse_margin_refuses_a_nonpositive_tenth_percentile():
    flipped = [(x, (label + 1) % 3, logits, -1.0) for x, label, logits, _ in SAMPLES[:3]] + SAMPLES[3:]
    with pytest.raises(ValueError, match="percentile"):
        value("inverse_margin", linear_ctx(flipped))


# ----------------------------------------------------------------------------------------- steps
def test_step_counts_when_one_epoch_crosses_both_thresholds():
    ctx = Context(nn.Linear(2, 2), history=[{"epoch": 1, "step": 7, "train_loss": 0.5},
                                            {"epoch": 2, "step": 14, "train_loss": 0.005}])
    assert value("steps_to_0.1", ctx) == 14
    assert value("steps_0.1_to_0.01", ctx) == 0


def test_step_counts_refuse_a_history_that_never_gets_there():
    ctx = Context(nn.Linear(2, 2), history=HISTORY[:4])
    assert value("steps_to_0.1", ctx) == 20
    with pytest.raises(ValueError, match="0.01"):
        value("steps_0.1_to_0.01", ctx)


# ----------------------------------------------------------------------------------------- gradient noise
class ScaledMLP(nn.Module):
    """A parameter outside any Linear/Conv layer (the scale), which sends the measure down the vmap path."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 5), nn.Linear(5, 2)
        self.scale = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        return self.second(torch.relu(self.first(x)) * self.scale)


def tiny_models():
    g = torch.Generator().manual_seed(0)
    mlp, conv2d, conv1d, scaled = MLP((3,), 2, depth=2, width=4), ConvNet((2, 4, 4), 3, depth=2, width=3), \
        ConvNet((2, 6), 3, depth=2, width=3), ScaledMLP()
    for m in (mlp, conv2d, conv1d, scaled):
        init_parameters(m, g)
    return [(mlp, (3,), 2, True), (conv2d, (2, 4, 4), 3, True), (conv1d, (2, 6), 3, True),
            (scaled, (3,), 2, False)]


@pytest.mark.parametrize("index", range(4))
def test_gradient_noise_equals_the_average_over_every_minibatch(index):
    model, shape, classes, fast = tiny_models()[index]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, *shape, generator=g), torch.randint(0, classes, (8,), generator=g)
    ctx = Context(model, train=(x, y))
    assert optimization._fast_path_layers(ctx) is fast
    got = gradient_noise(ctx, batch_size=3, num_samples=100).value
    assert got == pytest.approx(brute_force_noise(model, x, y, 3), rel=1e-5)


def test_gradient_noise_vanishes_for_the_full_batch():
    model, shape, classes, _ = tiny_models()[0]
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    assert gradient_noise(Context(model, train=(x, y)), batch_size=6, num_samples=100).value == pytest.approx(0.0)


def test_gradient_noise_subsampling_is_unbiased():
    model, _, _, _ = tiny_models()[0]
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 3, generator=g), torch.randint(0, 2, (300,), generator=g)
    exact = gradient_noise(Context(model, train=(x, y)), batch_size=10, num_samples=300).value
    estimates = [gradient_noise(Context(model, train=(x, y), seed=s), batch_size=10, num_samples=60).value
                 for s in range(30)]
    assert np.mean(estimates) == pytest.approx(exact, rel=0.06)
    assert np.std(estimates) > 0  # the subsets differ between seeds


def test_gradient_noise_is_deterministic_under_a_seed():
    model, _, _, _ = tiny_models()[0]
    x, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
    a, b = (gradient_noise(Context(model, train=(x, y), seed=4), batch_size=5, num_samples=20).value
            for _ in range(2))
    assert a == b


# ----------------------------------------------------------------------------------------- properties
def small_contexts():
    g = torch.Generator().manual_seed(0)
    out = []
    for cls, shape in ((MLP, (6,)), (ConvNet, (2, 8, 8))):
        model = cls(shape, 3, depth=2, width=12)
        init_parameters(model, g)
        x = torch.randn(48, *shape, generator=g)
        out.append(Context(model, train=(x, model(x).argmax(1)), hparams={"train.batch_size": 8},
                           history=HISTORY))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_finite_on_small_networks(name):
    for ctx in small_contexts():
        assert math.isfinite(value(name, ctx))


@pytest.mark.parametrize("name", NAMES)
def test_invariant_to_permuting_hidden_units(name):
    for ctx in small_contexts():
        permuted = Context(permute_hidden_units(ctx.model, 1), train=(ctx.x_train, ctx.y_train),
                           hparams={"train.batch_size": 8}, history=HISTORY)
        assert value(name, permuted) == pytest.approx(value(name, ctx), rel=1e-4, abs=1e-7)
