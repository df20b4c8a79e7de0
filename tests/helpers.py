"""Test helpers shared by the measure tests: networks whose values can be worked out by hand."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.zoo.models import MLP
from measures.testing import permute_hidden_units, rescale_relu_units  # noqa: F401 — the names the tests use
from measures.updates import sgd_


@functools.lru_cache(maxsize=1)
def default_hparams():
    """The default config's base hyperparameters (``conf/``, before the zoo's axes)."""
    from benchmark.config import compose
    from benchmark.zoo import base_hparams
    return base_hparams(compose())


def diagonal_mlp(diagonals) -> MLP:
    """3 → 3 → 3 → 3 ReLU MLP without biases whose weights are the given diagonal matrices."""
    model = MLP((3,), 3, depth=2, width=3, bias=False)
    with torch.no_grad():
        for layer, d in zip([m for m in model.modules() if isinstance(m, nn.Linear)], diagonals):
            layer.weight.copy_(torch.diag(torch.tensor(d)))
    return model


def diagonal_context(diagonals, init_diagonals, labels, scales):
    """A Context on ``diagonal_mlp(diagonals)`` (initial weights ``diagonal_mlp(init_diagonals)``) whose
    training inputs are x = t·e_j with label j: the network maps x to t·a_j b_j c_j e_j, so the margins,
    norms and losses can be worked out by hand."""
    from measures import Context
    x = torch.stack([t * torch.eye(3)[j] for j, t in zip(labels, scales)])
    return Context(diagonal_mlp(diagonals), init_model=diagonal_mlp(init_diagonals), train=(x, torch.tensor(labels)))


def small_models(archs, seed: int = 0):
    """(model, init model, inputs) for each (architecture class, input shape) in ``archs``: depth 2, width 12,
    3 classes, weights and 48 inputs drawn from one seeded generator."""
    from benchmark.zoo.models import init_parameters
    g = torch.Generator().manual_seed(seed)
    out = []
    for cls, shape in archs:
        model, init = cls(shape, 3, depth=2, width=12), cls(shape, 3, depth=2, width=12)
        init_parameters(model, g)
        init_parameters(init, g)
        out.append((model, init, torch.randn(48, *shape, generator=g)))
    return out


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 0.5) -> nn.Module:
    """Full-batch gradient descent with heavy-ball momentum 0.9 (``measures.updates``, each product rounded on
    its own; no torch.optim: its first step imports dynamo)."""
    params = list(model.parameters())
    vel = [torch.zeros_like(p) for p in params]
    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        for p, v, g in zip(params, vel, grads):
            sgd_(p, g, lr, momentum=0.9, buf=v, fused=False)
    return model


def measured(name: str, ctx) -> float:
    """The term v a registered measure computes, through the registry. For a measure reported adjusted for the
    training-set size m, this first checks that the reported value is ½(v − log m) (a log measure) or √(v/m)."""
    from measures import REGISTRY
    m = REGISTRY.get(name)
    out = m(ctx)
    if m.sample_size is None:
        return out.value
    v, size = out.details["unadjusted"], len(ctx.y_train)
    assert out.details["m"] == size
    assert out.value == pytest.approx(0.5 * (v - math.log(size)) if m.sample_size == "log" else math.sqrt(v / size),
                                      rel=1e-12, abs=1e-15)
    return v


def dense_hessian(ctx, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """The training-loss Hessian of ``ctx``'s model in float64 (default: over the whole training set), by
    torch.autograd.functional.hessian over all parameters, flattened in ``ctx.flatten``'s order."""
    import copy

    from torch.func import functional_call
    model = copy.deepcopy(ctx.model).double()
    x = (ctx.x_train if x is None else x).double()
    y = ctx.y_train if y is None else y
    return torch.autograd.functional.hessian(
        lambda flat: F.cross_entropy(functional_call(model, ctx.unflatten(flat), (x,)), y),
        ctx.flatten(ctx.params).double())


def trained_mlp(in_dim: int, classes: int, width: int, n: int, seed: int, label_noise: float = 0.0):
    """A Context on a depth-2 ReLU MLP fitted by full-batch descent (300 steps, lr 0.1) to n Gaussian inputs
    labelled by a random linear map; with ``label_noise`` > 0, that fraction of the labels (in expectation) is
    redrawn uniformly first."""
    from measures import Context
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    y = (x @ torch.randn(in_dim, classes, generator=g)).argmax(1)
    if label_noise > 0:
        flip = torch.rand(n, generator=g) < label_noise
        y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=g)
    torch.manual_seed(seed)
    return Context(fit(MLP((in_dim,), classes, depth=2, width=width), x, y, lr=0.1), train=(x, y))
