"""The zoo's architectures: plain ``nn.Module``s whose randomness comes from an explicit generator.

An architecture is one class declared in ``benchmark.zoo.registry`` (``MODELS.declare(name, "module:Class",
uses=...)``) plus one YAML file in ``conf/model/``. Its constructor takes ``(in_shape, num_classes,
**hyperparameters)`` for the ``model.*`` fields it declares in ``uses`` (``init_scale`` is applied by
:func:`init_parameters`, not the class).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from benchmark.errors import HParamsError
from benchmark.zoo.registry import MODELS

if TYPE_CHECKING:
    from benchmark.zoo.hparams import ModelHP



class Dropout(nn.Module):
    """Inverted dropout whose masks come from ``self.generator`` (set by the trainer), not global state.

    mask = (U(0,1) >= p), output = x · mask / (1 − p); identity in eval mode or when p = 0.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """Flatten → depth × [Linear(width) → ReLU → Dropout] → Linear(num_classes)."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 2, width: int = 64,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=bias), nn.ReLU()]
            if dropout > 0:
                layers.append(Dropout(dropout))
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """depth × [Conv(3, width, stride 2 on every other layer) → ReLU → Dropout] → global average pool →
    Linear(num_classes). 1-D inputs ``(C, L)`` use Conv1d, images ``(C, H, W)`` Conv2d."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 2, width: int = 32,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if len(in_shape) not in (2, 3):
            raise HParamsError(f"cnn needs inputs shaped (C, L) or (C, H, W), got {in_shape}")
        conv = nn.Conv1d if len(in_shape) == 2 else nn.Conv2d
        layers: list[nn.Module] = []
        channels = in_shape[0]
        for i in range(depth):
            layers += [conv(channels, width, 3, stride=2 if i % 2 == 0 else 1, padding=1, bias=bias), nn.ReLU()]
            if dropout > 0:
                layers.append(Dropout(dropout))
            channels = width
        pool = nn.AdaptiveAvgPool1d(1) if len(in_shape) == 2 else nn.AdaptiveAvgPool2d(1)
        self.net = nn.Sequential(*layers, pool, nn.Flatten(), nn.Linear(width, num_classes, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_parameters(model: nn.Module, generator: torch.Generator, init_scale: float = 1.0) -> None:
    """PyTorch's default Linear/Conv initialisation (Kaiming-uniform with a = √5, uniform biases), drawn from
    ``generator``, weights then multiplied by ``init_scale``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                m.weight.mul_(init_scale)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def build_model(hp: ModelHP, in_shape: tuple[int, ...], num_classes: int,
                generator: torch.Generator | None = None) -> nn.Module:
    """The architecture ``hp.name`` with its hyperparameters; initialised from ``generator`` if given."""
    component = MODELS.get(hp.name)
    kwargs = {k: getattr(hp, k) for k in component.uses if k != "init_scale"}
    model = component.build(in_shape, num_classes, **kwargs)
    if generator is not None:
        init_parameters(model, generator, hp.init_scale)
    return model
