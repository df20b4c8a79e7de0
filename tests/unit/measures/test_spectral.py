"""Spectral and heavy-tailed measures (measures/spectral.py, measures/heavy_tail.py) beyond their values (those are
tests/values/cases_spectral.py): norms against torch.linalg, the FFT conv norm against the explicit convolution
matrix, the power-law fit against synthetic Pareto spectra and a plain loop, and properties."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.zoo.models import MLP, ConvNet, init_parameters
from measures import REGISTRY, Context, NotApplicable, heavy_tail
from measures.heavy_tail import fit_power_law
from measures.spectral import conv_operator_norm, layer_input_sizes, layer_spectral_norms
from tests import helpers
from tests.helpers import diagonal_context, permute_hidden_units
from tests.values import cases_spectral as cases
from tests.values.cases_spectral import convnet, explicit_circular_conv_norm, heavy_tail_network, loop_fit, pareto

MODULES = ("measures.spectral", "measures.heavy_tail")
NAMES = [m.name for m in REGISTRY if m.fn.__module__ in MODULES]


def value(name: str, ctx: Context) -> float:
    """The measure's formula v (the registered value is its sample-size adjustment, checked on the way)."""
    return helpers.measured(name, ctx)


# ----------------------------------------------------------------------------------------- norms
def test_heavy_tail_is_not_applicable_when_no_layer_has_enough_eigenvalues():
    ctx = diagonal_context((cases.A, cases.B, cases.C), (cases.A0, cases.B0, cases.C0), cases.LABELS, cases.SCALES)
    for name in ("alpha_mean", "alpha_weighted", "log_spectral_norm"):
        with pytest.raises(NotApplicable, match="at least 10 nonzero eigenvalues"):
            value(name, ctx)


def test_heavy_tail_names_the_layers_it_skips():
    """A 3 → 40 → 5 MLP: the first layer (3 eigenvalues) and the head (5) are skipped, the middle one is fitted."""
    g = torch.Generator().manual_seed(0)
    model = MLP((3,), 5, depth=2, width=40)
    init_parameters(model, g)
    out = REGISTRY.get("alpha_mean")(Context(model))
    assert out.details["layers"] == 1 and out.details["skipped_layers"] == ["net.1", "net.5"]
    assert out.value == pytest.approx(fit_power_law(torch.linalg.svdvals(model.net[3].weight.double()) ** 2).alpha,
                                      rel=1e-6)


def test_spectral_norms_match_torch_linalg():
    g = torch.Generator().manual_seed(0)
    for model, shape in ((MLP((7,), 4, depth=2, width=9), (7,)), (ConvNet((2, 8, 8), 4, depth=2, width=5), (2, 8, 8))):
        init_parameters(model, g)
        ctx = Context(model, train=(torch.randn(4, *shape, generator=g), torch.zeros(4, dtype=torch.long)))
        want = [torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()
                for w in (m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))]
        assert ctx.shared(layer_spectral_norms, "reshape") == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------------------- FFT conv norm
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


def test_the_fft_variants_on_a_convnet_differ_from_the_plain_measures():
    """On conv layers the operator norm of the circular convolution is not the norm of the reshaped kernel, so
    every ``*_fft`` measure moves away from its plain counterpart (their values: tests/values/cases_spectral.py)."""
    model, init, x, y = convnet()
    ctx = Context(model, init_model=init, train=(x, y))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight.detach()
    assert explicit_circular_conv_norm(conv, (8, 8), (2, 2), (1, 1), (1, 1)) != pytest.approx(
        torch.linalg.matrix_norm(conv.reshape(4, -1), ord=2).item(), rel=1e-3)
    for name in NAMES:
        if name.endswith("_fft"):
            plain = name.removesuffix("_fft")
            assert value(plain, ctx) != pytest.approx(value(name, ctx), rel=1e-6), plain


# ----------------------------------------------------------------------------------------- power-law fit
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


def test_heavy_tail_means_count_the_kept_and_the_skipped_layers():
    """Of the three layers of known spectra, the two with at least 10 eigenvalues enter the means (their values:
    tests/values/cases_spectral.py), and their exponents differ, so a mean is not one layer's value."""
    model, spectra = heavy_tail_network()
    alphas = [loop_fit(s.numpy())[0] for s in spectra]
    assert alphas[0] != pytest.approx(alphas[1], rel=0.05)
    details = REGISTRY.get("alpha_mean")(Context(model)).details
    assert (details["layers"], details["skipped"]) == (2, 1)
