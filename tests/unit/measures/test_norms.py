"""Size, Frobenius, distance and path-norm measures (measures/size.py, measures/norms.py): closed forms on a
diagonal network, path norm against path enumeration, and properties (finite, permutation-invariant)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.zoo.models import MLP, ConvNet, init_parameters
from measures import REGISTRY, Context
from tests import helpers
from tests.helpers import diagonal_context, diagonal_mlp, permute_hidden_units

MODULES = ("measures.size", "measures.norms")
NAMES = [m.name for m in REGISTRY if m.fn.__module__ in MODULES]


def value(name: str, ctx: Context) -> float:
    """The measure's formula v (the registered value is its sample-size adjustment, checked on the way)."""
    return helpers.measured(name, ctx)


# ----------------------------------------------------------------------------------------- closed forms
A, B, C = (2.0, 1.0, 0.5), (1.0, 3.0, 1.0), (0.5, 1.0, 2.0)  # diagonals of W_1, W_2, W_3
A0, B0, C0 = (1.0, 1.0, 1.0), (0.0, 1.0, -1.0), (0.5, 0.0, 0.0)  # initial diagonals
LABELS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
SCALES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


@pytest.fixture(scope="module")
def diag_ctx() -> Context:
    # x = t·e_j with label j: the network maps it to t·a_j b_j c_j e_j, so its margin is t·a_j b_j c_j
    return diagonal_context((A, B, C), (A0, B0, C0), LABELS, SCALES)


def hand_gamma() -> float:
    margins = [t * A[j] * B[j] * C[j] for j, t in zip(LABELS, SCALES)]
    return float(np.percentile(margins, 10))


def test_params_counts_every_entry(diag_ctx):
    assert value("params", diag_ctx) == pytest.approx(math.log(27))


def test_frobenius_measures_closed_form(diag_ctx):
    fro = [sum(v * v for v in d) for d in (A, B, C)]  # ‖diag(d)‖_F² = Σ d²
    log_prod = sum(math.log(f) for f in fro)
    log_gamma_sq = 2 * math.log(hand_gamma())
    assert value("log_prod_of_fro", diag_ctx) == pytest.approx(log_prod, rel=1e-6)
    assert value("log_prod_of_fro_over_margin", diag_ctx) == pytest.approx(log_prod - log_gamma_sq, rel=1e-6)
    assert value("log_sum_of_fro", diag_ctx) == pytest.approx(math.log(3) + log_prod / 3, rel=1e-6)
    assert value("log_sum_of_fro_over_margin", diag_ctx) == pytest.approx(
        math.log(3) + (log_prod - log_gamma_sq) / 3, rel=1e-6)
    assert value("param_norm", diag_ctx) == pytest.approx(sum(fro), rel=1e-6)


def test_log_sum_is_the_smallest_sum_over_rescalings(diag_ctx):
    # rescale the layers by (c1, c2, 1/(c1 c2)): the function is unchanged and Σ‖W_i‖_F² ≥ exp(log_sum_of_fro)
    fro = np.array([sum(v * v for v in d) for d in (A, B, C)])
    grid = np.exp(np.linspace(-3, 3, 241))
    c1, c2 = np.meshgrid(grid, grid)
    sums = c1 ** 2 * fro[0] + c2 ** 2 * fro[1] + fro[2] / (c1 * c2) ** 2
    assert math.exp(value("log_sum_of_fro", diag_ctx)) == pytest.approx(sums.min(), rel=1e-3)
    assert math.exp(value("log_sum_of_fro", diag_ctx)) <= sums.min() * (1 + 1e-9)


def test_distances_closed_form(diag_ctx):
    dist = sum((v - v0) ** 2 for d, d0 in zip((A, B, C), (A0, B0, C0)) for v, v0 in zip(d, d0))
    assert value("dist_init_fro", diag_ctx) == pytest.approx(dist, rel=1e-6)


def test_path_norm_closed_form(diag_ctx):
    # only the paths j → j → j → j exist: Σ_j a_j² b_j² c_j²
    paths = sum((a * b * c) ** 2 for a, b, c in zip(A, B, C))
    assert value("path_norm", diag_ctx) == pytest.approx(paths, rel=1e-6)
    assert value("path_norm_over_margin", diag_ctx) == pytest.approx(paths / hand_gamma() ** 2, rel=1e-6)


def test_path_norm_matches_path_enumeration_and_ignores_biases():
    g = torch.Generator().manual_seed(3)
    model = MLP((3,), 2, depth=2, width=4, bias=True)
    init_parameters(model, g)
    w1, w2, w3 = [m.weight.detach().double() for m in model.modules() if isinstance(m, nn.Linear)]
    brute = sum((w1[j, i] * w2[k, j] * w3[l, k]) ** 2
                for i, j, k, l in itertools.product(range(3), range(4), range(4), range(2))).item()
    ctx = Context(model, train=(torch.randn(5, 3, generator=g), torch.zeros(5, dtype=torch.long)))
    assert value("path_norm", ctx) == pytest.approx(brute, rel=1e-5)


def test_param_norm_includes_biases_and_frobenius_excludes_them():
    g = torch.Generator().manual_seed(4)
    model = MLP((3,), 2, depth=1, width=4, bias=True)
    init_parameters(model, g)
    ctx = Context(model, train=(torch.randn(7, 3, generator=g), torch.zeros(7, dtype=torch.long)))
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(p.detach().double().square().sum().item() for p in model.parameters())
    assert value("param_norm", ctx) == pytest.approx(total, rel=1e-6)
    assert value("log_prod_of_fro", ctx) == pytest.approx(
        sum(math.log(w.detach().double().square().sum().item()) for w in weights), rel=1e-6)


def test_margin_measures_refuse_a_nonpositive_margin():
    model = diagonal_mlp((A, B, C))
    x = torch.eye(3)
    ctx = Context(model, train=(x, torch.tensor([1, 2, 0])))  # every sample misclassified
    with pytest.raises(ValueError, match="margin"):
        value("path_norm_over_margin", ctx)


# ----------------------------------------------------------------------------------------- properties
def small_models(seed: int = 0):
    """(model, init model, inputs) for a small MLP and a small 2-D ConvNet."""
    return helpers.small_models(((MLP, (6,)), (ConvNet, (2, 8, 8))), seed)


def make_ctx(model, init, x) -> Context:
    y = model(x).argmax(1)  # labels the model fits: positive margins
    history = [{"epoch": 1, "step": 6, "train_loss": 0.3}, {"epoch": 2, "step": 12, "train_loss": 0.005}]
    return Context(model, init_model=init, train=(x, y), hparams={"train.batch_size": 8}, history=history)


@pytest.mark.parametrize("name", NAMES)
def test_finite_on_small_networks(name):
    for model, init, x in small_models():
        assert math.isfinite(value(name, make_ctx(model, init, x)))


@pytest.mark.parametrize("name", NAMES)
def test_invariant_to_permuting_hidden_units(name):
    for model, init, x in small_models():
        assert torch.allclose(permute_hidden_units(model, 1)(x), model(x), atol=1e-5)
        base = value(name, make_ctx(model, init, x))
        permuted = value(name, make_ctx(permute_hidden_units(model, 1), permute_hidden_units(init, 1), x))
        assert permuted == pytest.approx(base, rel=1e-5, abs=1e-7)


def test_diagonal_network_is_what_the_fixture_says(diag_ctx):
    margins = diag_ctx.margins
    expected = torch.tensor([t * A[j] * B[j] * C[j] for j, t in zip(LABELS, SCALES)])
    assert torch.allclose(margins, expected)
