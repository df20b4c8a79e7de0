"""Spectral and heavy-tailed measures: closed forms on a diagonal network, the FFT variants on a ConvNet against
the explicit matrices of its circular convolutions, and the WeightWatcher means over layers of known spectra
against the plain fitting loop.

The diagonal network: x = t·e_j with label j ∈ {0, 1} (whose diagonal products are positive) goes through the
3 → 3 → 3 → 3 bias-free ReLU network of weights diag(a), diag(b), diag(c) to t·a_j b_j c_j e_j, so its margin is
t·a_j b_j c_j and every spectral norm is the largest |entry| of a diagonal. It has no conv layer, so each ``_fft``
variant equals its plain measure there."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.zoo.models import ConvNet, init_parameters
from measures.testing import ValueCase
from tests.helpers import diagonal_mlp

# ----------------------------------------------------------------------------------------- diagonal network
A, B, C = (2.0, 1.0, -0.5), (1.0, 3.0, 1.0), (0.5, 1.0, 2.0)  # diagonals of W_1, W_2, W_3
A0, B0, C0 = (1.0, 1.0, 1.0), (0.0, 1.0, -1.0), (0.5, 0.0, 0.0)  # initial diagonals
LABELS = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
SCALES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
DIAGONAL_X = torch.stack([t * torch.eye(3)[j] for j, t in zip(LABELS, SCALES)])


def _diagonal_references() -> dict[str, float]:
    spec = [max(abs(v) for v in d) ** 2 for d in (A, B, C)]  # ‖diag(d)‖_2² = max d²
    fro = [sum(v * v for v in d) for d in (A, B, C)]
    dist_fro = [sum((v - v0) ** 2 for v, v0 in zip(d, d0)) for d, d0 in zip((A, B, C), (A0, B0, C0))]
    dist_spec = [max((v - v0) ** 2 for v, v0 in zip(d, d0)) for d, d0 in zip((A, B, C), (A0, B0, C0))]
    gamma = float(np.percentile([t * A[j] * B[j] * C[j] for j, t in zip(LABELS, SCALES)], 10))
    log_prod = sum(math.log(s) for s in spec)
    over = log_prod - 2 * math.log(gamma)
    return {
        "log_prod_of_spec": log_prod,
        "log_prod_of_spec_over_margin": over,
        "log_sum_of_spec": math.log(3) + log_prod / 3,
        "log_sum_of_spec_over_margin": math.log(3) + over / 3,
        "fro_over_spec": sum(f / s for f, s in zip(fro, spec)),
        "log_spec_orig_main": over + math.log(sum(f / s for f, s in zip(fro, spec))),
        "log_spec_init_main": over + math.log(sum(f / s for f, s in zip(dist_fro, spec))),
        "dist_spec_init": sum(dist_spec),
    }


DIAGONAL = _diagonal_references()


def _diagonal_case(name: str, reference: float) -> ValueCase:
    return ValueCase(name, diagonal_mlp((A, B, C)), reference, init_model=diagonal_mlp((A0, B0, C0)),
                     train=(DIAGONAL_X, torch.tensor(LABELS)),
                     why="closed form on the diagonal network: ‖diag(d)‖_2² = max d², γ the 10th-percentile "
                         "margin t·a_j b_j c_j")


# ----------------------------------------------------------------------------------------- FFT on a ConvNet
def explicit_circular_conv_norm(w: torch.Tensor, n, stride, padding, dilation) -> float:
    """Spectral norm of the explicit matrix of the circular convolution: output i reads input
    (s·i + t·dil − pad) mod n, built by convolving circularly padded basis images."""
    k = w.dim() - 2
    pads = []
    for a in reversed(range(k)):
        pads += [padding[a], dilation[a] * (w.shape[2 + a] - 1) - padding[a] + stride[a]]
    basis = torch.eye(w.shape[1] * math.prod(n), dtype=torch.float64).reshape(-1, w.shape[1], *n)
    conv = F.conv1d if k == 1 else F.conv2d
    out = conv(F.pad(basis, pads, mode="circular"), w.double(), stride=stride, dilation=dilation)
    out = out[(slice(None), slice(None)) + tuple(slice(0, n[a] // stride[a]) for a in range(k))]
    return torch.linalg.matrix_norm(out.reshape(out.shape[0], -1).T, ord=2).item()


def convnet() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """(model, init model, x, y): a 2 × 8 × 8 ConvNet of depth 2 and width 4, 40 inputs, each labelled with the
    class the model predicts (every margin positive)."""
    g = torch.Generator().manual_seed(11)
    model, init = ConvNet((2, 8, 8), 3, depth=2, width=4), ConvNet((2, 8, 8), 3, depth=2, width=4)
    init_parameters(model, g)
    init_parameters(init, g)
    x = torch.randn(40, 2, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, init, x, y


def _fft_references(model: nn.Module, init: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Each ``*_fft`` measure from the hand formulas, with every conv layer's operator norm taken from its explicit
    circular convolution matrix (8 × 8 input, stride 2; then 4 × 4, stride 1), for W and for W − W⁰."""
    grids, strides = [(8, 8), (4, 4)], [(2, 2), (1, 1)]

    def norms(weights):
        out = [explicit_circular_conv_norm(w, n, s, (1, 1), (1, 1)) for w, n, s in zip(weights[:2], grids, strides)]
        return out + [torch.linalg.matrix_norm(weights[2], ord=2).item()]

    ws = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    w0s = [m.weight.detach() for m in init.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    spec, dspec = norms(ws), norms([w - w0 for w, w0 in zip(ws, w0s)])
    fro = [float((w ** 2).sum()) for w in ws]
    dfro = [float(((w - w0) ** 2).sum()) for w, w0 in zip(ws, w0s)]
    with torch.no_grad():
        z = model(x)
    margins = z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).max(1).values
    gamma = torch.quantile(margins, 0.1).item()
    d = 3
    log_prod = sum(2 * math.log(s) for s in spec)
    over = log_prod - 2 * math.log(gamma)
    return {
        "log_prod_of_spec_fft": log_prod,
        "log_prod_of_spec_over_margin_fft": over,
        "log_sum_of_spec_fft": math.log(d) + log_prod / d,
        "log_sum_of_spec_over_margin_fft": math.log(d) + over / d,
        "log_spec_init_main_fft": over + math.log(sum(f / s ** 2 for f, s in zip(dfro, spec))),
        "log_spec_orig_main_fft": over + math.log(sum(f / s ** 2 for f, s in zip(fro, spec))),
        "fro_over_spec_fft": sum(f / s ** 2 for f, s in zip(fro, spec)),
        "dist_spec_init_fft": sum(s ** 2 for s in dspec),
    }


CONVNET = convnet()
FFT = _fft_references(*CONVNET)


def _fft_case(name: str, reference: float) -> ValueCase:
    model, init, x, y = CONVNET
    return ValueCase(name, model, reference, init_model=init, train=(x, y), rel=1e-5,
                     why="hand formula with each conv layer's norm from its explicit circular convolution matrix")


# ----------------------------------------------------------------------------------------- heavy tails
def pareto(alpha: float, xmin: float, n: int, seed: int) -> torch.Tensor:
    """n float64 draws of density ∝ x^{−α} on [xmin, ∞)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xmin * (1 - u) ** (-1 / (alpha - 1))


def loop_fit(x: np.ndarray) -> tuple[float, float, float]:
    """(α, x_min, KS distance) by WeightWatcher's WWFit loop: every x_min but the largest value, MLE α, KS against
    arange(n)/n."""
    x = np.sort(x)
    best = (math.inf, None, None)
    for i, xmin in enumerate(x[:-1]):
        tail = x[i:]
        n = len(tail)
        alpha = 1 + n / np.sum(np.log(tail / xmin))
        if alpha > 1:
            d = np.max(np.abs(1 - (tail / xmin) ** (1 - alpha) - np.arange(n) / n))
            if d < best[0]:
                best = (d, alpha, xmin)
    return best[1], best[2], best[0]


def layer_with_spectrum(out_features: int, in_features: int, evals: torch.Tensor, seed: int) -> nn.Linear:
    """A float64 Linear layer whose WᵀW has the eigenvalues ``evals`` (its singular values their roots)."""
    g = torch.Generator().manual_seed(seed)
    k = len(evals)
    u, _ = torch.linalg.qr(torch.randn(out_features, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_features, k, generator=g, dtype=torch.float64))
    layer = nn.Linear(in_features, out_features, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(evals.sqrt()) @ v.T)
    return layer


def heavy_tail_network() -> tuple[nn.Module, list[torch.Tensor]]:
    """Three layers with known spectra, and the two spectra that count: 40→30 (a Pareto α = 3 tail above a uniform
    bulk), 30→25 (Pareto α = 2.2) and 25→3 (3 eigenvalues: fewer than 10, skipped by the measures)."""
    g = torch.Generator().manual_seed(21)
    spectra = [torch.cat([torch.rand(12, generator=g, dtype=torch.float64) * 0.8 + 0.1, pareto(3.0, 1.0, 18, seed=22)]),
               pareto(2.2, 0.5, 25, seed=23)]
    small = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    model = nn.Sequential(layer_with_spectrum(30, 40, spectra[0], 24), nn.ReLU(),
                          layer_with_spectrum(25, 30, spectra[1], 25), nn.ReLU(),
                          layer_with_spectrum(3, 25, small, 26))
    return model, spectra


HEAVY_TAIL, SPECTRA = heavy_tail_network()
ALPHAS = [loop_fit(s.numpy())[0] for s in SPECTRA]  # the plain-loop exponent of each kept layer
LOG_MAX = [math.log10(float(s.max())) for s in SPECTRA]


def _heavy_tail_case(name: str, reference: float, why: str) -> ValueCase:
    return ValueCase(name, HEAVY_TAIL, reference, rel=1e-9,
                     why=f"{why} over the two layers of ≥ 10 eigenvalues, α by the plain WeightWatcher loop")


CASES = [
    *(_diagonal_case(name, want) for name, want in DIAGONAL.items()),
    *(_diagonal_case(name + "_fft", want) for name, want in DIAGONAL.items()),
    *(_fft_case(name, want) for name, want in FFT.items()),
    _heavy_tail_case("alpha_mean", (ALPHAS[0] + ALPHAS[1]) / 2, "the mean of α"),
    _heavy_tail_case("alpha_weighted", (ALPHAS[0] * LOG_MAX[0] + ALPHAS[1] * LOG_MAX[1]) / 2,
                     "the mean of α·log10 λ_max"),
    _heavy_tail_case("log_spectral_norm", sum(LOG_MAX) / 2, "the mean of log10 λ_max"),
]
