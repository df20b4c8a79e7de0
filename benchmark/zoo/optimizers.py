"""The zoo's optimizers, registered by name with the ``optimizer.*`` fields each one reads.

A new optimizer is one function ``(params, **hyperparameters) -> torch.optim.Optimizer`` declared in
``benchmark.zoo.registry`` (``OPTIMIZERS.declare(name, "module:function", uses=...)``) plus one YAML file in
``conf/optimizer/``. The stacked trainer
(``benchmark.training.stacked``) implements the update rules of the three below itself; a model with another
optimizer trains with the per-model loop.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from benchmark.zoo.registry import OPTIMIZERS

if TYPE_CHECKING:
    from benchmark.zoo.hparams import OptimizerHP


def sgd(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Plain minibatch SGD: θ ← θ − η (g + λθ)."""
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def momentum(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum μ: b ← μb + g + λθ, θ ← θ − ηb."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def adam(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with PyTorch's default betas (0.9, 0.999) and L2 weight decay λ."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(params, hp: OptimizerHP) -> torch.optim.Optimizer:
    """The optimizer ``hp.name`` over ``params`` with the hyperparameters it uses."""
    component = OPTIMIZERS.get(hp.name)
    return component.build(params, **{k: getattr(hp, k) for k in component.uses})
