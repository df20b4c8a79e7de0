"""Tests of measures.sgd_regularization (SGD effective regularization, Yang, Tang & Tu PRL 2023): the graph
operators against a dense Hessian and looped per-sample gradients, the registered values with Lanczos run to
rounding against the independent recomputation of tests/values/cases_sgd_regularization.py, invariance to the
units of weights and loss (on the spectra and on a network written with scaled weights), the optimizer rule,
the λ ≤ 0 / Δ ≤ 0 rules, the per-sample gradient norms (both paths) against a loop, the curvature-samples
option, and the valley Langevin check of P ∝ F^κ."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from measures import REGISTRY, Context, NotApplicable
from measures import sgd_regularization as sr
from tests.values.cases_sgd_regularization import HP, dense_hessian, loop_grads, reference, tanh_net

PRL_MEASURES = ("sgd.log_penalty_topk", "sgd.noise_anisotropy", "sgd.noise_curvature_exponent", "sgd.noise_to_loss")
EXACT = dataclasses.replace(sr.DEFAULT, tol=1e-12)  # Lanczos to rounding (31 parameters: at most 31 products)


def _dense_hessian(ctx: Context) -> torch.Tensor:
    return dense_hessian(ctx.model, ctx.x_train, ctx.y_train)


def _loop_grads(ctx: Context) -> torch.Tensor:
    return loop_grads(ctx.model, ctx.x_train, ctx.y_train)


def _tanh_net(seed: int, n: int = 60, train_steps: int = 0, hp: dict | None = None) -> Context:
    model, x, y = tanh_net(seed, n, train_steps)
    return Context(model, train=(x, y), hparams=dict(HP, **(hp or {})), seed=seed)


@pytest.fixture(scope="module")
def near_minimum() -> Context:
    return _tanh_net(11, train_steps=300)


# ------------------------------------------------------------------------------------------- operators
def test_curvature_operators_match_dense_hessian_and_looped_gradients(near_minimum):
    ctx = near_minimum
    hvp, project, mean_grad = sr.curvature_operators(ctx, list(ctx.params), ctx.x_train, ctx.y_train, chunk=7)
    h, grads = _dense_hessian(ctx), _loop_grads(ctx)
    v = torch.randn(ctx.num_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(hvp(v), h @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(project(v), grads @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mean_grad, grads.mean(0), rtol=1e-9, atol=1e-12)


def test_spectra_against_dense_eigendecomposition(near_minimum):
    ctx = near_minimum
    spec = sr.measure_spectra(ctx, EXACT)
    evals = torch.linalg.eigvalsh(_dense_hessian(ctx)).flip(0)
    np.testing.assert_allclose(spec.eigenvalues, evals[:sr.TOP_K].numpy(), rtol=1e-8, atol=1e-10)
    assert spec.info["converged"] and spec.info["samples"] == len(ctx.y_train)
    assert spec.n_params == 31


# ------------------------------------------------------------------------------------------- registered values
def _reference(ctx: Context, lr_eff: float, wd: float = 0.0) -> dict:
    return reference(ctx.model, ctx.x_train, ctx.y_train, int(ctx.hp("train.batch_size")), lr_eff, wd)


def test_lanczos_to_rounding_gives_the_dense_values(near_minimum, monkeypatch):
    """With Lanczos run to rounding, the four sgd.* measures equal the independent recomputation of
    tests/values/cases_sgd_regularization.py (which checks them at the solver's own tolerance) to 1e-7."""
    ctx = near_minimum
    evals = torch.linalg.eigvalsh(_dense_hessian(ctx)).flip(0)
    assert (evals[:sr.TOP_K] > 1e-3 * evals[0]).all()  # precondition: the top 10 are positive (a minimum)
    ref = _reference(ctx, lr_eff=0.3)
    monkeypatch.setattr(sr, "DEFAULT", EXACT)
    for name in PRL_MEASURES:
        assert REGISTRY.get(name)(ctx).value == pytest.approx(ref[name], rel=1e-7), name
    assert ref["sgd.log_penalty_topk"] < 0 < ref["sgd.noise_curvature_exponent"]  # a number that could be wrong


def test_weight_decay_enters_curvature_and_objective(near_minimum, monkeypatch):
    monkeypatch.setattr(sr, "DEFAULT", EXACT)
    ctx = Context(near_minimum.model, train=(near_minimum.x_train, near_minimum.y_train),
                  hparams=dict(HP, **{"optimizer.weight_decay": 0.05}), seed=near_minimum.seed)
    ref = _reference(ctx, lr_eff=0.3, wd=0.05)
    for name in PRL_MEASURES:
        assert REGISTRY.get(name)(ctx).value == pytest.approx(ref[name], rel=1e-7), name


# ------------------------------------------------------------------------------------------- units
def _random_spectra(seed: int = 0) -> sr.Spectra:
    rng = np.random.default_rng(seed)
    lam = np.sort(rng.uniform(0.5, 20.0, 10))[::-1]
    noise = 0.05 * lam ** 1.3 * rng.uniform(0.8, 1.2, 10)
    return sr.Spectra(lam, noise, float(noise.sum()) + 0.1, 5000, 0.02, 340.0)


def _values(r: sr.SGDRegResult) -> np.ndarray:
    return np.array([r.log_penalty, r.anisotropy, r.exponent, r.noise_to_loss])


@pytest.mark.parametrize("optimizer", [("sgd", 0.0), ("momentum", 0.9)])
def test_values_invariant_to_units_of_weights_and_loss(optimizer):
    """w = c w′ (H′ = c²H, C′ = c²C, α′ = α/c², ω′ = c²ω, ‖w′‖² = ‖w‖²/c²) and L′ = sL (H′ = sH, C′ = s²C,
    α′ = α/s, ω′ = sω, L′ = sL) leave every value unchanged; the unnormalised Σ½(κ_n − 1) ln λ_n does not."""
    spec = _random_spectra()
    lr = 0.1 / (1 - optimizer[1])
    dyn = sr.Dynamics(lr, 32, 2000, 1e-3, optimizer[0])
    base = sr.analyse(spec, dyn)
    assert np.isfinite(_values(base)).all()
    for c in (0.1, 3.0, 40.0):
        moved = sr.analyse(dataclasses.replace(spec, eigenvalues=c ** 2 * spec.eigenvalues,
                                               noise_proj=c ** 2 * spec.noise_proj, trace_c=c ** 2 * spec.trace_c,
                                               sq_norm=spec.sq_norm / c ** 2),
                           dataclasses.replace(dyn, lr=lr / c ** 2, weight_decay=c ** 2 * dyn.weight_decay))
        np.testing.assert_allclose(_values(moved), _values(base), rtol=1e-10)
        raw = [float((0.5 * (r.kappa - 1) * np.log(r.eigenvalues)).sum()) for r in (base, moved)]
        assert abs(raw[1] - raw[0]) > 1e-3 * abs(raw[0])  # the old, unit-dependent form moves
    for s in (0.01, 7.0):
        moved = sr.analyse(dataclasses.replace(spec, eigenvalues=s * spec.eigenvalues,
                                               noise_proj=s ** 2 * spec.noise_proj, trace_c=s ** 2 * spec.trace_c,
                                               train_loss=s * spec.train_loss),
                           dataclasses.replace(dyn, lr=lr / s, weight_decay=s * dyn.weight_decay))
        np.testing.assert_allclose(_values(moved), _values(base), rtol=1e-10)


class _ScaledMLP(nn.Module):
    """The 3→4 tanh→3 network with its parameters stored divided by c and multiplied by c in forward."""

    def __init__(self, net: nn.Sequential, c: float):
        super().__init__()
        self.c = c
        self.w1, self.b1 = (nn.Parameter(p.detach() / c) for p in (net[0].weight, net[0].bias))
        self.w2, self.b2 = (nn.Parameter(p.detach() / c) for p in (net[2].weight, net[2].bias))

    def forward(self, x):
        c = self.c
        return F.linear(torch.tanh(F.linear(x, c * self.w1, c * self.b1)), c * self.w2, c * self.b2)


@pytest.mark.parametrize("c", [3.0, 0.2])
def test_same_network_in_scaled_weights_gives_the_same_values(near_minimum, c):
    """The trained network written as w = c w′ and trained (by hypothesis) with α′ = α/c², ω′ = c²ω: the same
    function and the same SGD trajectory, so every measure must give the same value."""
    ctx = near_minimum
    hp = dict(HP, **{"optimizer.weight_decay": 0.01})
    scaled = _ScaledMLP(ctx.model, c)
    torch.testing.assert_close(scaled(ctx.x_train), ctx.model(ctx.x_train))
    a = Context(ctx.model, train=(ctx.x_train, ctx.y_train), hparams=hp, seed=3)
    b = Context(scaled, train=(ctx.x_train, ctx.y_train),
                hparams=dict(hp, **{"optimizer.lr": 0.3 / c ** 2, "optimizer.weight_decay": 0.01 * c ** 2}), seed=3)
    for name in PRL_MEASURES:
        assert REGISTRY.get(name)(b).value == pytest.approx(REGISTRY.get(name)(a).value, rel=1e-8), name


# ------------------------------------------------------------------------------------------- optimizer rule
def test_momentum_is_sgd_with_the_effective_step(near_minimum):
    ctx = near_minimum
    mom = Context(ctx.model, train=(ctx.x_train, ctx.y_train), seed=ctx.seed,
                  hparams=dict(HP, **{"optimizer.name": "momentum", "optimizer.momentum": 0.75}))
    sgd = Context(ctx.model, train=(ctx.x_train, ctx.y_train), seed=ctx.seed,
                  hparams=dict(HP, **{"optimizer.lr": 0.3 / (1 - 0.75)}))
    for name in PRL_MEASURES:
        assert REGISTRY.get(name)(mom).value == pytest.approx(REGISTRY.get(name)(sgd).value, rel=1e-12), name
    assert REGISTRY.get("sgd.log_penalty_topk")(mom).details["lr_eff"] == pytest.approx(1.2)


@pytest.mark.parametrize("hp", [{"optimizer.name": "adam"}, {"train.batch_size": 60}])
def test_uncovered_optimizers_and_full_batch_are_not_applicable(near_minimum, hp):
    ctx = near_minimum
    other = Context(ctx.model, train=(ctx.x_train, ctx.y_train), hparams=dict(HP, **hp), seed=ctx.seed)
    for name in PRL_MEASURES:
        with pytest.raises(NotApplicable):
            REGISTRY.get(name)(other)


# ------------------------------------------------------------------------------------------- λ ≤ 0 and Δ ≤ 0
def test_non_positive_curvature_or_noise_is_undefined_not_dropped():
    spec = _random_spectra()
    dyn = sr.Dynamics(0.1, 32, 2000)
    lam = spec.eigenvalues.copy()
    lam[-1] = -0.1
    r = sr.analyse(dataclasses.replace(spec, eigenvalues=lam), dyn)
    assert math.isnan(r.log_penalty) and math.isnan(r.exponent) and math.isfinite(r.anisotropy)
    noise = spec.noise_proj.copy()
    noise[3] = 0.0
    r = sr.analyse(dataclasses.replace(spec, noise_proj=noise), dyn)
    assert math.isnan(r.exponent) and math.isfinite(r.log_penalty)


def test_saddle_point_model_is_not_applicable_for_the_curvature_measures():
    """A random 3→2 tanh→3 network without biases (12 parameters), whose top-10 Hessian eigenvalues include
    clearly negative ones (checked densely): the curvature measures say so instead of dropping them."""
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Tanh(), nn.Linear(2, 3, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x, y = torch.randn(60, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (60,), generator=g)
    ctx = Context(model, train=(x, y), hparams=HP)
    evals = torch.linalg.eigvalsh(_dense_hessian(ctx)).flip(0)
    assert evals[sr.TOP_K - 1] < -0.05  # precondition
    for name in ("sgd.log_penalty_topk", "sgd.noise_curvature_exponent"):
        with pytest.raises(NotApplicable, match="not all positive"):
            REGISTRY.get(name)(ctx)
    assert math.isfinite(REGISTRY.get("sgd.noise_anisotropy")(ctx).value)


# ------------------------------------------------------------------------------------------- flat probes, samples
def _mlp_ctx(seed=0, **extras):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    x = torch.randn(300, 1, 10, generator=g)
    y = torch.randint(0, 4, (300,), generator=g)
    return Context(model, train=(x, y), hparams={**HP, "optimizer.lr": 0.1, "train.batch_size": 32}, seed=seed,
                   extras=extras)


@pytest.mark.parametrize("scaled", [False, True])
def test_per_sample_gradient_norms_match_loop(near_minimum, scaled):
    """‖g_i‖² by the Linear-layer identity ‖δ_i a_iᵀ‖² = ‖δ_i‖²‖a_i‖² (plain network) and by vmap(grad) (the
    same network with raw parameters, which has no Linear layers), against looped backward passes."""
    ctx = near_minimum
    if scaled:
        ctx = Context(_ScaledMLP(ctx.model, 2.0), train=(ctx.x_train, ctx.y_train), hparams=HP)
    sq = sr.per_sample_sq_norms(ctx, list(ctx.params), ctx.x_train, ctx.y_train, chunk=16)
    torch.testing.assert_close(sq, (_loop_grads(ctx) ** 2).sum(1), rtol=1e-9, atol=1e-12)
    mlp = _mlp_ctx(3)  # float32, inputs flattened inside the model; a subset of the parameters
    names = ["3.weight", "5.bias"]
    grads = _loop_grads(mlp)
    index = torch.cumsum(torch.tensor([0] + [p.numel() for p in mlp.params.values()]), 0)
    cols = torch.cat([torch.arange(index[i], index[i + 1]) for i, k in enumerate(mlp.params) if k in names])
    torch.testing.assert_close(sr.per_sample_sq_norms(mlp, names, mlp.x_train, mlp.y_train),
                               (grads[:, cols] ** 2).sum(1), rtol=1e-4, atol=1e-7)


def test_curvature_samples_option_is_honoured():
    from measures.pacbayes import train_subsample
    ctx = _mlp_ctx(2, curvature_samples=120)
    spec = sr.measure_spectra(ctx)
    assert spec.info["samples"] == 120
    x, y = train_subsample(ctx, 120)
    sub = Context(ctx.model, train=(x, y), hparams=ctx._hparams, seed=ctx.seed)
    np.testing.assert_allclose(spec.eigenvalues, sr.measure_spectra(sub).eigenvalues, rtol=1e-5)
    assert sr.measure_spectra(_mlp_ctx(2)).info["samples"] == 300  # default: the full training set


# ------------------------------------------------------------------------------------------- registry
def test_measures_registered_with_family_and_sign():
    signs = {"sgd.log_penalty_topk": 1, "sgd.noise_anisotropy": -1, "sgd.noise_curvature_exponent": -1,
             "sgd.noise_to_loss": -1}
    for name in PRL_MEASURES:
        m = REGISTRY.get(name)
        assert m.family == "physics" and m.sign == signs[name] and not m.oracle
        assert m.needs == {"model", "train_data", "hparams"}
    assert "sgd.effective_reg" not in REGISTRY and "sgd.noise_trace" not in REGISTRY


def test_measures_finite_and_deterministic():
    ctx1, ctx2 = _mlp_ctx(1), _mlp_ctx(1)
    for name in ("sgd.noise_anisotropy", "sgd.noise_to_loss"):
        a, b = REGISTRY.get(name)(ctx1), REGISTRY.get(name)(ctx2)
        assert math.isfinite(a.value) and a.value == b.value, name


# ------------------------------------------------------------------------------------------- theory check
def test_valley_langevin_gives_p_proportional_to_f_to_the_kappa():
    """Simulated anisotropic Langevin dynamics in a valley L = ½λ(x)y² has P(x) ∝ λ(x)^(−κ/2) = F^κ, the
    steady state from which the estimator is derived."""
    from benchmark.reproduce.prl import valley_langevin
    for kappa in (1.0, 4.0):
        fit = valley_langevin(kappa, walkers=1000, steps=12000, seed=0)
        assert fit["exponent"] == pytest.approx(kappa, rel=0.1), fit


def test_noise_to_loss_needs_no_eigenproblem(near_minimum, monkeypatch):
    """sgd.noise_to_loss reads only tr C and the objective (``measure_noise``): alone it solves no eigenproblem
    (the early-prediction table computes it without the other sgd.* measures), and it equals the value of the
    whole analysis."""
    whole = sr.sgd_effective_regularization(_mlp_ctx(1)).noise_to_loss

    def forbidden(*args, **kwargs):
        raise AssertionError("sgd.noise_to_loss ran a Lanczos solve")
    monkeypatch.setattr(sr, "lanczos", forbidden)
    monkeypatch.setattr(sr, "_top_eigs", forbidden)
    alone = REGISTRY.get("sgd.noise_to_loss")(_mlp_ctx(1))
    assert alone.value == pytest.approx(whole, rel=1e-12) and alone.details["samples"] == 300
