"""Conv nets where the formula treats conv layers (and BatchNorm) in its own way, against independent computations:
the path norm of a conv net with BatchNorm as the product of its layers' dense matrices, squared entrywise; the
Hessian's top eigenvalue and trace of a conv net and a conv net with BatchNorm against their dense Hessians; Jiang
et al.'s normalised margin distribution of a conv net with BatchNorm, one sample at a time."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.zoo.models import ConvBNNet, ConvNet
from measures.testing import ValueCase

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


# ------------------------------------------------------------------------------------- fitted tiny conv nets
def tiny_digits(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` 8×8 digits of classes 0, 1 and 2 of scikit-learn's digits pool."""
    from benchmark.zoo.datasets import digits_pool
    pool = digits_pool("", False)
    keep = torch.from_numpy(pool.y_train) < 3
    return torch.from_numpy(pool.x_train)[keep][:n], torch.from_numpy(pool.y_train)[keep][:n]


def fitted_tiny(kind: str) -> nn.Module:
    """A conv net (``cnn``: the zoo's, with biases) or a conv net with BatchNorm (``cnn_bn``), two convs of 3
    channels, 3 classes (about 130 parameters), trained by full-batch descent on ``tiny_digits`` (train mode,
    so that BatchNorm collects its running statistics), then in eval mode."""
    from benchmark.zoo.models import init_parameters
    from tests.helpers import fit
    x, y = tiny_digits()
    model = (ConvNet((1, 8, 8), 3, depth=2, width=3) if kind == "cnn" else ConvBNNet((1, 8, 8), 3, depth=2, width=3))
    init_parameters(model, torch.Generator().manual_seed(5))
    return fit(model.train(), x, y, steps=150, lr=0.1).eval()


def _hessian_cases() -> list[ValueCase]:
    """hessian.top_eig within 1e-3 of the dense λ_max and hessian.trace (deflated Hutchinson on a conv net) within
    its 1 % standard-error target, three times over, of the dense trace."""
    from measures import Context
    from tests.helpers import dense_hessian
    out = []
    x, y = tiny_digits()
    for kind in ("cnn", "cnn_bn"):
        model = fitted_tiny(kind)
        hess = dense_hessian(Context(model, train=(x, y)))
        mode = " in eval mode (BatchNorm's running statistics)" if kind == "cnn_bn" else ""
        out.append(ValueCase("hessian.top_eig", model, torch.linalg.eigvalsh(hess)[-1].item(), train=(x, y),
                             rel=1e-3, why=f"dense λ_max of the {kind}{mode}"))
        out.append(ValueCase("hessian.trace", model, torch.trace(hess).item(), train=(x, y), rel=0.03,
                             why=f"dense trace of the {kind}"))
    return out


def brute_force_margin_quartiles(model: ConvBNNet, x: torch.Tensor, y: torch.Tensor) -> list[list[float]]:
    """Q1, Q2, Q3 of Jiang et al.'s normalised margins at the inputs of the three parametrised layers, one sample at
    a time: h_l = net[:k](x) by slicing the Sequential, the gradient of f_y − f_j (j the strongest other class)
    with respect to h_l through net[k:], ν_l from torch.var over the training set; correctly classified points."""
    import numpy as np
    net = model.net.double()
    cuts = [0, 3, 8]  # conv 1 reads the input, conv 2 the first ReLU's output, the head the pooled features
    x = x.double()
    out = []
    with torch.no_grad():
        z = net(x)
    other = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    right = (z.gather(1, y[:, None]).squeeze(1) > z.gather(1, other[:, None]).squeeze(1))
    for k in cuts:
        with torch.no_grad():
            h = net[:k](x)
        nu = h.flatten(1).var(0, unbiased=False).sum().sqrt().item()
        dist = []
        for i in range(len(x)):
            hi = h[i:i + 1].clone().requires_grad_(True)
            zi = net[k:](hi)[0]
            diff = zi[y[i]] - zi[other[i]]
            (g,) = torch.autograd.grad(diff, hi)
            dist.append(diff.item() / math.sqrt(1e-6 + g.square().sum().item()) / nu)
        d = np.array(dist)[right.numpy()]
        out.append([float(np.percentile(d, q)) for q in (25, 50, 75)])
    model.net.float()
    return out


def _margin_cases() -> list[ValueCase]:
    model = fitted_tiny("cnn_bn")
    x, y = tiny_digits()
    quartiles = brute_force_margin_quartiles(copy.deepcopy(model), x, y)
    return [ValueCase(f"margin_dist.{name}", model, sum(math.log(q[i]) for q in quartiles) / len(quartiles),
                      train=(x, y), rel=1e-6,
                      why=f"mean over the three layer inputs of log {name} of the normalised margins, one sample "
                          f"at a time, on a conv net with BatchNorm")
            for i, name in enumerate(("q1", "median", "q3"))]


CASES = [_path_norm_case(), *_hessian_cases(), *_margin_cases()]
