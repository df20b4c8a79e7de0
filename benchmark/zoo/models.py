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


def _conv_kind(in_shape: tuple[int, ...], name: str) -> tuple[type, type, type]:
    """(convolution, BatchNorm, adaptive average pool) classes for inputs ``(C, L)`` (1-D) or ``(C, H, W)``."""
    if len(in_shape) not in (2, 3):
        raise HParamsError(f"{name} needs inputs shaped (C, L) or (C, H, W), got {in_shape}")
    if len(in_shape) == 2:
        return nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d
    return nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d


def _check_size(name: str, depth: int, width: int) -> None:
    if depth < 1 or width < 1:
        raise HParamsError(f"{name} needs model.depth >= 1 and model.width >= 1, got depth {depth}, width {width}")


def _conv_stack(name: str, in_shape: tuple[int, ...], num_classes: int, depth: int, width: int, dropout: float,
                bias: bool, batchnorm: bool) -> nn.Sequential:
    """depth × [Conv(3, width, stride 2 on every other layer) (→ BatchNorm, the conv then without bias) → ReLU
    → Dropout] → global average pool → Flatten → Linear(num_classes): the layers of ``cnn`` and ``cnn_bn``."""
    conv, norm, pool = _conv_kind(in_shape, name)
    _check_size(name, depth, width)
    layers: list[nn.Module] = []
    channels = in_shape[0]
    for i in range(depth):
        layers.append(conv(channels, width, 3, stride=2 if i % 2 == 0 else 1, padding=1, bias=bias and not batchnorm))
        layers += [norm(width), nn.ReLU()] if batchnorm else [nn.ReLU()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        channels = width
    return nn.Sequential(*layers, pool(1), nn.Flatten(), nn.Linear(width, num_classes, bias=bias))


class ConvNet(nn.Module):
    """depth × [Conv(3, width, stride 2 on every other layer) → ReLU → Dropout] → global average pool →
    Linear(num_classes). 1-D inputs ``(C, L)`` use Conv1d, images ``(C, H, W)`` Conv2d."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 2, width: int = 32,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.net = _conv_stack("cnn", in_shape, num_classes, depth, width, dropout, bias, batchnorm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBNNet(nn.Module):
    """depth × [Conv(3, width, stride 2 on every other layer, no bias) → BatchNorm → ReLU → Dropout] →
    global average pool → Linear(num_classes). ``ConvNet`` with BatchNorm after each convolution.

    A convolution followed by BatchNorm carries no bias: BatchNorm subtracts the per-channel mean, which removes
    any constant a bias adds, and its own shift β takes the bias's place. ``bias`` therefore applies to the
    linear head only. 1-D inputs ``(C, L)`` use Conv1d/BatchNorm1d, images ``(C, H, W)`` Conv2d/BatchNorm2d.
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 2, width: int = 32,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.net = _conv_stack("cnn_bn", in_shape, num_classes, depth, width, dropout, bias, batchnorm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """The residual block of He et al. (2016): ReLU(BN(conv(ReLU(BN(conv(x))))) + skip(x)), both convolutions
    3-wide without bias; the skip is the identity, or a 1-wide convolution → BatchNorm (a projection) when the
    block changes the shape (stride 2 or another channel count). ``dropout`` sits between the two convolutions,
    where wide residual networks (Zagoruyko & Komodakis 2016) put it."""

    def __init__(self, conv: type, norm: type, channels_in: int, channels: int, stride: int, dropout: float):
        super().__init__()
        self.conv1 = conv(channels_in, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(channels)
        self.relu1 = nn.ReLU()
        self.drop = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(conv(channels_in, channels, 1, stride=stride, bias=False), norm(channels))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.relu1(self.bn1(self.conv1(x))))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """Conv(3, width, no bias) → BatchNorm → ReLU → depth residual ``BasicBlock``s of width channels (stride 2
    in the 1st, 3rd, 5th, … block) → global average pool → Linear(num_classes).

    A small residual network after He et al. (2016): the width stays the same through the network, so only the
    strided blocks have a projection on their skip. ``bias`` applies to the linear head (every convolution
    feeds a BatchNorm), ``dropout`` to the middle of each block. 1-D inputs ``(C, L)`` use Conv1d/BatchNorm1d,
    images ``(C, H, W)`` Conv2d/BatchNorm2d.
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 2, width: int = 16,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        conv, norm, pool = _conv_kind(in_shape, "resnet")
        _check_size("resnet", depth, width)
        self.stem = nn.Sequential(conv(in_shape[0], width, 3, stride=1, padding=1, bias=False), norm(width),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*(BasicBlock(conv, norm, width, width, 2 if i % 2 == 0 else 1, dropout)
                                      for i in range(depth)))
        self.head = nn.Sequential(pool(1), nn.Flatten(), nn.Linear(width, num_classes, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def init_parameters(model: nn.Module, generator: torch.Generator, init_scale: float = 1.0) -> None:
    """PyTorch's default Linear/Conv initialisation (Kaiming-uniform with a = √5, uniform biases), drawn from
    ``generator``, weights then multiplied by ``init_scale``; BatchNorm layers start as the identity map
    (scale 1, shift 0, running mean 0 and variance 1, no batches counted), which ``init_scale`` leaves alone."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                m.weight.mul_(init_scale)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.reset_parameters()


def build_model(hp: ModelHP, in_shape: tuple[int, ...], num_classes: int,
                generator: torch.Generator | None = None) -> nn.Module:
    """The architecture ``hp.name`` with its hyperparameters; initialised from ``generator`` if given."""
    component = MODELS.get(hp.name)
    kwargs = {k: getattr(hp, k) for k in component.uses if k != "init_scale"}
    model = component.build(in_shape, num_classes, **kwargs)
    if generator is not None:
        init_parameters(model, generator, hp.init_scale)
    return model
