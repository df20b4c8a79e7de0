"""Fixtures of the measures' tests: two small fitted networks, an MLP and a 1-D ConvNet, with their initial
weights (the sharpness, PAC-Bayes and batch-sharpness tests measure them)."""
from __future__ import annotations

import pytest
import torch

from benchmark.zoo.models import MLP, ConvNet
from measures import Context
from tests.helpers import fit


def _separable(n: int, shape: tuple[int, ...], classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = (x.flatten(1) @ torch.randn(x[0].numel(), classes, generator=g)).argmax(1)
    return x, y


@pytest.fixture(scope="module")
def trained() -> Context:
    x, y = _separable(300, (10,), 3, seed=0)
    torch.manual_seed(0)
    model = MLP((10,), 3, depth=2, width=16)
    init = MLP((10,), 3, depth=2, width=16)
    init.load_state_dict(model.state_dict())
    return Context(fit(model, x, y, lr=0.1), init_model=init, train=(x, y))


@pytest.fixture(scope="module")
def trained_cnn() -> Context:
    """A 1-D ConvNet on 2-channel signals whose class shifts the channel means."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (150,), generator=g)
    means = 0.5 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    x = torch.randn(150, 2, 12, generator=g) + means[y][:, :, None]
    torch.manual_seed(1)
    model = ConvNet((2, 12), 3, depth=2, width=6)
    init = ConvNet((2, 12), 3, depth=2, width=6)
    init.load_state_dict(model.state_dict())
    return Context(fit(model, x, y, steps=200, lr=0.2), init_model=init, train=(x, y))
