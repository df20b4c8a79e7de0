"""Spectral and heavy-tailed measures (measures/spectral.py, measures/heavy_tail.py): closed forms on a
diagonal network, norms against torch.linalg, the FFT conv norm against the explicit convolution matrix, the
power-law fit against synthetic Pareto spectra and a plain loop, and properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.zoo.models import MLP, ConvNet, init_parameters
from measures import REGISTRY, Context, heavy_tail
from measures.heavy_tail import fit_power_law
from measures.spectral import conv_operator_norm, layer_input_sizes, layer_spectral_norms
from tests import helpers
from tests.helpers import diagonal_context, permute_hidden_units

MODULES = ("measures.spectral", "measures.heavy_tail")
NAMES = [m.name for m in REGISTRY if m.fn.__module__ in MODULES]


def value(name: str, ctx: Context) -> float:
    """The measure's formula v (the registered value is its sample-size adjustment, checked on the way)."""
    return helpers.measured(name, ctx)


# ----------------------------------------------------------------------------------------- closed forms
A, B, C = (2.0, 1.0, -0.5), (1.0, 3.0, 1.0), (0.5, 1.0, 2.0)  # diagonals of W_1, W_2, W_3
A0, B0, C0 = (1.0, 1.0, 1.0), (0.0, 1.0, -1.0), (0.5, 0.0, 0.0)
LABELS = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
SCALES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


@pytest.fixture(scope="module")
def diag_ctx() -> Context:
    # x = t·e_j (j ∈ {0, 1}, whose diagonal products are positive) is mapped to t·a_j b_j c_j e_j
    return diagonal_context((A, B, C), (A0, B0, C0), LABELS, SCALES)


def test_spectral_measures_closed_form(diag_ctx):
    spec = [max(abs(v) for v in d) ** 2 for d in (A, B, C)]  # ‖diag(d)‖_2² = max d²
    fro = [sum(v * v for v in d) for d in (A, B, C)]
    dist_fro = [sum((v - v0) ** 2 for v, v0 in zip(d, d0)) for d, d0 in zip((A, B, C), (A0, B0, C0))]
    dist_spec = [max((v - v0) ** 2 for v, v0 in zip(d, d0)) for d, d0 in zip((A, B, C), (A0, B0, C0))]
    gamma = float(np.percentile([t * A[j] * B[j] * C[j] for j, t in zip(LABELS, SCALES)], 10))
    log_prod = sum(math.log(s) for s in spec)
    over = log_prod - 2 * math.log(gamma)
    expected = {
        "log_prod_of_spec": log_prod,
        "log_prod_of_spec_over_margin": over,
        "log_sum_of_spec": math.log(3) + log_prod / 3,
        "log_sum_of_spec_over_margin": math.log(3) + over / 3,
        "fro_over_spec": sum(f / s for f, s in zip(fro, spec)),
        "log_spec_orig_main": over + math.log(sum(f / s for f, s in zip(fro, spec))),
        "log_spec_init_main": over + math.log(sum(f / s for f, s in zip(dist_fro, spec))),
        "dist_spec_init": sum(dist_spec),
    }
    for name, want in expected.items():
        assert value(name, diag_ctx) == pytest.approx(want, rel=1e-6), name
        assert value(name + "_fft", diag_ctx) == pytest.approx(want, rel=1e-6), name + "_fft"  # no conv layers


def test_heavy_tail_skips_small_layers_and_says_so(diag_ctx):
    with pytest.raises(ValueError, match="at least 10"):
        value("alpha_mean", diag_ctx)


def test_spectral_norms_match_torch_linalg():
    g = torch.Generator().manual_seed(0)
    for model, shape in ((MLP((7,), 4, depth=2, width=9), (7,)), (ConvNet((2, 8, 8), 4, depth=2, width=5), (2, 8, 8))):
        init_parameters(model, g)
        ctx = Context(model, train=(torch.randn(4, *shape, generator=g), torch.zeros(4, dtype=torch.long)))
        want = [torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()
                for w in (m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))]
        assert ctx.shared(layer_spectral_norms, "reshape") == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------------------- FFT conv norm
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


@pytest.mark.parametrize("shape,n,stride,padding,dilation", [
    ((4, 3, 3, 3), (8, 8), (1, 1), (1, 1), (1, 1)),
    ((4, 3, 3, 3), (8, 8), (2, 2), (1, 1), (1, 1)),
    ((5, 2, 3, 2), (6, 8), (2, 1), (1, 0), (1, 2)),
    ((3, 2, 5), (12,), (3,), (2,), (1,)),
    ((3, 4, 3), (10,), (2,), (0,), (2,)),
])
def test_fft_conv_norm_matches_explicit_circular_matrix(shape, n, stride, padding, dilation):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert conv_operator_norm(w, n, stride, padding, dilation) == pytest.approx(
        explicit_circular_conv_norm(w, n, stride, padding, dilation), rel=1e-10)


def test_fft_norms_of_a_convnet_use_each_layers_input_grid():
    g = torch.Generator().manual_seed(5)
    model = ConvNet((2, 8, 8), 3, depth=2, width=4)
    init_parameters(model, g)
    ctx = Context(model, train=(torch.randn(3, 2, 8, 8, generator=g), torch.zeros(3, dtype=torch.long)))
    assert ctx.shared(layer_input_sizes) == ((8, 8), (4, 4), ())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    want = [explicit_circular_conv_norm(convs[0].weight.detach(), (8, 8), (2, 2), (1, 1), (1, 1)),
            explicit_circular_conv_norm(convs[1].weight.detach(), (4, 4), (1, 1), (1, 1), (1, 1)),
            torch.linalg.matrix_norm(model.net[-1].weight.detach(), ord=2).item()]
    assert ctx.shared(layer_spectral_norms, "fft") == pytest.approx(want, rel=1e-5)
    assert value("log_prod_of_spec_fft", ctx) == pytest.approx(sum(2 * math.log(s) for s in want), rel=1e-5)


def test_every_fft_variant_on_a_convnet_against_explicit_convolution_matrices():
    """Each ``*_fft`` measure from hand formulas, with every conv layer's operator norm taken from its explicit
    circular convolution matrix (an independent computation), for W and for W − W⁰."""
    g = torch.Generator().manual_seed(11)
    model, init = ConvNet((2, 8, 8), 3, depth=2, width=4), ConvNet((2, 8, 8), 3, depth=2, width=4)
    init_parameters(model, g)
    init_parameters(init, g)
    x = torch.randn(40, 2, 8, 8, generator=g)
    y = model(x).argmax(1).detach()  # every sample correctly classified: a positive margin
    ctx = Context(model, init_model=init, train=(x, y))
    grids, strides = [(8, 8), (4, 4)], [(2, 2), (1, 1)]

    def norms(weights):
        out = [explicit_circular_conv_norm(w, n, s, (1, 1), (1, 1)) for w, n, s in zip(weights[:2], grids, strides)]
        return out + [torch.linalg.matrix_norm(weights[2], ord=2).item()]

    ws = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    w0s = [m.weight.detach() for m in init.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    spec, dspec = norms(ws), norms([w - w0 for w, w0 in zip(ws, w0s)])
    fro = [float((w ** 2).sum()) for w in ws]
    dfro = [float(((w - w0) ** 2).sum()) for w, w0 in zip(ws, w0s)]
    z = model(x).detach()
    margins = z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).max(1).values
    gamma = torch.quantile(margins, 0.1).item()
    d = 3
    log_prod = sum(2 * math.log(s) for s in spec)
    want = {
        "log_prod_of_spec_fft": log_prod,
        "log_prod_of_spec_over_margin_fft": log_prod - 2 * math.log(gamma),
        "log_sum_of_spec_fft": math.log(d) + log_prod / d,
        "log_sum_of_spec_over_margin_fft": math.log(d) + (log_prod - 2 * math.log(gamma)) / d,
        "log_spec_init_main_fft": log_prod - 2 * math.log(gamma)
        + math.log(sum(f / s ** 2 for f, s in zip(dfro, spec))),
        "log_spec_orig_main_fft": log_prod - 2 * math.log(gamma) + math.log(sum(f / s ** 2 for f, s in zip(fro, spec))),
        "fro_over_spec_fft": sum(f / s ** 2 for f, s in zip(fro, spec)),
        "dist_spec_init_fft": sum(s ** 2 for s in dspec),
    }
    assert spec[0] != pytest.approx(torch.linalg.matrix_norm(ws[0].reshape(4, -1), ord=2).item(), rel=1e-3)
    for name, expected in want.items():
        assert value(name, ctx) == pytest.approx(expected, rel=1e-5), name
        plain = name.removesuffix("_fft")
        assert value(plain, ctx) != pytest.approx(expected, rel=1e-6), plain  # the variants really differ


# ----------------------------------------------------------------------------------------- power-law fit
def pareto(alpha: float, xmin: float, n: int, seed: int) -> torch.Tensor:
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xmin * (1 - u) ** (-1 / (alpha - 1))  # density ∝ x^{−α} on [xmin, ∞)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_power_law_fit_recovers_pareto_exponent(alpha):
    fit = fit_power_law(pareto(alpha, 0.5, 800, seed=int(alpha * 10)))
    assert fit.alpha == pytest.approx(alpha, abs=0.1 * (alpha - 1))


def test_power_law_fit_finds_xmin_above_a_bulk():
    g = torch.Generator().manual_seed(11)
    bulk = torch.rand(600, generator=g, dtype=torch.float64) * 0.9 + 0.05  # not a power law, below x_min = 1
    fit = fit_power_law(torch.cat([bulk, pareto(3.0, 1.0, 500, seed=12)]))
    assert fit.alpha == pytest.approx(3.0, abs=0.25)  # standard error (α − 1)/√n_tail ≈ 0.1
    assert 0.95 <= fit.xmin <= 1.5


def loop_fit(x: np.ndarray) -> tuple[float, float, float]:
    """WeightWatcher's WWFit loop: every x_min but the largest value, MLE α, KS against arange(n)/n."""
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


def test_power_law_fit_equals_the_plain_loop_in_every_block_size(monkeypatch):
    x = torch.cat([torch.rand(60, generator=torch.Generator().manual_seed(2), dtype=torch.float64),
                   pareto(2.5, 1.0, 80, seed=3)])
    want = loop_fit(x.numpy())
    for block in (1 << 22, 500, 1):
        monkeypatch.setattr(heavy_tail, "_BLOCK", block)
        fit = fit_power_law(x)
        assert (fit.alpha, fit.xmin, fit.ks_distance) == pytest.approx(want, rel=1e-12)


def test_heavy_tail_measures_on_a_layer_with_known_spectrum():
    # one Linear layer 40 → 30 whose singular values are the square roots of Pareto eigenvalues
    g = torch.Generator().manual_seed(7)
    evals = pareto(3.0, 1.0, 30, seed=8)
    u, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 30, generator=g, dtype=torch.float64))
    layer = nn.Linear(40, 30, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(evals.sqrt()) @ v.T)
    ctx = Context(layer)
    fit = fit_power_law(evals)
    lam_max = evals.max().item()
    assert value("alpha_mean", ctx) == pytest.approx(fit.alpha, rel=1e-8)
    assert value("alpha_weighted", ctx) == pytest.approx(fit.alpha * math.log10(lam_max), rel=1e-8)
    assert value("log_spectral_norm", ctx) == pytest.approx(math.log10(lam_max), rel=1e-8)
    assert REGISTRY.get("alpha_mean")(ctx).details["layers"] == 1


# ----------------------------------------------------------------------------------------- properties
def small_models(seed: int = 0):
    """(model, init model, inputs) for a small MLP, a 2-D and a 1-D ConvNet."""
    return helpers.small_models(((MLP, (6,)), (ConvNet, (2, 8, 8)), (ConvNet, (2, 12))), seed)


def make_ctx(model, init, x) -> Context:
    return Context(model, init_model=init, train=(x, model(x).argmax(1)))


@pytest.fixture(scope="module")
def contexts():
    return [(make_ctx(m, i, x), make_ctx(permute_hidden_units(m, 1), permute_hidden_units(i, 1), x))
            for m, i, x in small_models()]


@pytest.mark.parametrize("name", NAMES)
def test_finite_and_invariant_to_permuting_hidden_units(name, contexts):
    for ctx, permuted in contexts:
        base = value(name, ctx)
        assert math.isfinite(base)
        assert value(name, permuted) == pytest.approx(base, rel=1e-5, abs=1e-7)


def _layer_with_spectrum(out_features: int, in_features: int, evals: torch.Tensor, seed: int) -> nn.Linear:
    """A float64 Linear layer whose WᵀW has the eigenvalues ``evals`` (its singular values their roots)."""
    g = torch.Generator().manual_seed(seed)
    k = len(evals)
    u, _ = torch.linalg.qr(torch.randn(out_features, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_features, k, generator=g, dtype=torch.float64))
    layer = nn.Linear(in_features, out_features, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(evals.sqrt()) @ v.T)
    return layer


def test_heavy_tail_means_over_layers_against_the_plain_loop():
    """Three layers with known spectra: 40→30 (Pareto α = 3 tail above a uniform bulk), 30→25 (Pareto α = 2.2)
    and 25→3 (3 eigenvalues: fewer than 10, skipped). alpha_mean and alpha_weighted are the means over the two
    kept layers of the plain-loop (WeightWatcher WWFit) exponent, unweighted and weighted by log10 λ_max."""
    g = torch.Generator().manual_seed(21)
    spectra = [torch.cat([torch.rand(12, generator=g, dtype=torch.float64) * 0.8 + 0.1, pareto(3.0, 1.0, 18, seed=22)]),
               pareto(2.2, 0.5, 25, seed=23)]
    small = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    model = nn.Sequential(_layer_with_spectrum(30, 40, spectra[0], 24), nn.ReLU(),
                          _layer_with_spectrum(25, 30, spectra[1], 25), nn.ReLU(),
                          _layer_with_spectrum(3, 25, small, 26))
    ctx = Context(model)
    alphas = [loop_fit(s.numpy())[0] for s in spectra]
    log_max = [math.log10(float(s.max())) for s in spectra]
    assert alphas[0] != pytest.approx(alphas[1], rel=0.05)  # the mean is not one layer's value
    mean = REGISTRY.get("alpha_mean")(ctx)
    assert mean.value == pytest.approx((alphas[0] + alphas[1]) / 2, rel=1e-9)
    assert (mean.details["layers"], mean.details["skipped"]) == (2, 1)
    assert REGISTRY.get("alpha_weighted")(ctx).value == pytest.approx(
        (alphas[0] * log_max[0] + alphas[1] * log_max[1]) / 2, rel=1e-9)
    assert REGISTRY.get("log_spectral_norm")(ctx).value == pytest.approx(sum(log_max) / 2, rel=1e-9)
