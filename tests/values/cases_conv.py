"""Conv nets where the formula treats conv layers (and BatchNorm) in its own way, against independent computations
that unroll the network into explicit matrices: the path norm of a conv net with BatchNorm as the product of its
layers' dense matrices, squared entrywise."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from measures.testing import ValueCase
from tests.unit.measures.families import ConvBNNet

SHAPE = (2, 6, 6)


def conv_matrix(conv: nn.Conv2d, shape: tuple[int, int, int]) -> torch.Tensor:
    """The dense (out·oh·ow, in·h·w) matrix of a bias-free conv on inputs of ``shape``: its columns are the conv
    applied to the unit basis images."""
    n = shape[0] * shape[1] * shape[2]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    out = F.conv2d(basis, conv.weight.detach().double(), stride=conv.stride, padding=conv.padding)
    return out.reshape(n, -1).T


def conv_bn_net(seed: int = 0) -> ConvBNNet:
    """A 2×6×6 → 3 conv net with BatchNorm (two convs of 3 channels) whose weights, BatchNorm scales and shifts and
    running statistics are all drawn from one seeded generator (none is 1 or 0, so each term of the formula
    shows)."""
    g = torch.Generator().manual_seed(seed)
    model = ConvBNNet(SHAPE, 3, depth=2, width=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.2)
    return model


def dense_path_norm(model: ConvBNNet) -> float:
    """1ᵀ |W|² P D₂² |M₂|² D₁² |M₁|² 1: M_i the dense conv matrices, D_i the BatchNorm coefficients γ/√(σ² + ε)
    repeated over positions, P the average pool (unsquared: a fixed map), W the head; |·|² entrywise."""
    convs = [m for m in model.net if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.net if isinstance(m, nn.BatchNorm2d)]
    shape, vec = SHAPE, torch.ones(SHAPE[0] * SHAPE[1] * SHAPE[2], dtype=torch.float64)
    for conv, bn in zip(convs, norms):
        m = conv_matrix(conv, shape)
        out = F.conv2d(torch.zeros(1, *shape), conv.weight.detach(), stride=conv.stride, padding=conv.padding)
        shape = tuple(out.shape[1:])
        a = (bn.weight.detach().double() / (bn.running_var.double() + bn.eps).sqrt()).repeat_interleave(
            shape[1] * shape[2])
        vec = a ** 2 * (m ** 2 @ vec)
    pooled = vec.reshape(shape[0], -1).mean(1)  # the average pool's coefficients 1/(h·w), unsquared
    head = model.net[-1].weight.detach().double()
    return float((head ** 2 @ pooled).sum())


def _path_norm_case() -> ValueCase:
    model = conv_bn_net()
    x = torch.randn(10, *SHAPE, generator=torch.Generator().manual_seed(1))
    return ValueCase("path_norm", model, dense_path_norm(model), train=(x, torch.arange(10) % 3), rel=1e-5,
                     why="conv net with BatchNorm: the layers' dense matrices squared entrywise, BatchNorm as "
                         "its squared coefficients, pooling unsquared, shifts and biases dropped")


CASES = [_path_norm_case()]
