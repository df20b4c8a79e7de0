"""Tests of measures.sgd_regularization (SGD effective regularization, Yang, Tang & Tu PRL 2023): Lanczos
against a dense Hessian, the gradient-noise projections against explicit per-sample loops, the estimator's
algebra, the registered measures, the valley Langevin check of P ∝ F^κ, and the quick reproduction."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from measures import REGISTRY, Context
from measures import sgd_regularization as sr


def _tiny(seed=0, n=40, bias=True):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3, bias=bias))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Context(model, train=(x, y), hparams={"optimizer.lr": 0.2, "train.batch_size": 4}, seed=seed)


def _dense_hessian(ctx: Context) -> torch.Tensor:
    """The full Hessian of the training loss in float64, by torch.autograd.functional.hessian."""
    model64 = copy.deepcopy(ctx.model).double()
    shapes = {k: v.shape for k, v in ctx.params.items()}

    def loss(v):
        parts = torch.split(v, [math.prod(s) for s in shapes.values()])
        params = {k: t.view(s) for (k, s), t in zip(shapes.items(), parts)}
        logits = torch.func.functional_call(model64, params, (ctx.x_train.double(),))
        return F.cross_entropy(logits, ctx.y_train)

    return torch.autograd.functional.hessian(loss, ctx.flatten(ctx.params).double())


def _loop_grads(ctx: Context) -> torch.Tensor:
    """Per-sample gradients by an explicit loop of backward passes: (n, N)."""
    rows = []
    for i in range(len(ctx.y_train)):
        params = {k: v.clone().requires_grad_(True) for k, v in ctx.params.items()}
        loss = F.cross_entropy(ctx.forward(ctx.x_train[i:i + 1], params), ctx.y_train[i:i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))]))
    return torch.stack(rows).double()


# ------------------------------------------------------------------------------------------- Lanczos
def test_lanczos_matches_dense_eigendecomposition():
    ctx = _tiny(1)
    h = _dense_hessian(ctx)
    evals, evecs = torch.linalg.eigh(h)
    names = list(ctx.params)
    lam, v = sr.hessian_eigenpairs(ctx, names, 4, ctx.num_params, torch.Generator().manual_seed(0))
    torch.testing.assert_close(lam, evals.flip(0)[:4], rtol=1e-4, atol=1e-5)
    cos = (v @ evecs.flip(1)[:, :4]).abs().diagonal()
    assert (cos > 0.999).all()
    torch.testing.assert_close(v @ v.T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-8)


def test_lanczos_few_iterations_on_a_known_operator_is_seeded():
    d = torch.cat([torch.tensor([50.0, 20.0, 10.0]), torch.linspace(0, 1, 197)]).double()
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = q @ torch.diag(d) @ q.T
    run = lambda: sr.lanczos(lambda v: a @ v, 200, 3, 25, torch.Generator().manual_seed(5))
    lam, v = run()
    torch.testing.assert_close(lam, torch.tensor([50.0, 20.0, 10.0], dtype=torch.float64), rtol=1e-8, atol=0)
    lam2, v2 = run()
    assert torch.equal(lam, lam2) and torch.equal(v, v2)


# ------------------------------------------------------------------------------------------- gradient noise
def test_per_sample_grads_match_loop():
    ctx = _tiny(2, n=12)
    names = list(ctx.params)
    torch.testing.assert_close(sr.per_sample_grads(ctx, names, ctx.x_train, ctx.y_train).double(),
                               _loop_grads(ctx), rtol=1e-5, atol=1e-6)


def test_noise_projections_match_brute_force_covariance():
    """v_nᵀ C v_n and tr C from the chunked vmap(grad) sweep equal the explicit covariance of looped
    per-sample gradients, C = (1/n) Σ (g_i − ḡ)(g_i − ḡ)ᵀ."""
    ctx = _tiny(3, n=37)
    g = _loop_grads(ctx)
    c = torch.cov(g.T, correction=0)
    v = torch.randn(5, ctx.num_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v /= v.norm(dim=1, keepdim=True)
    noise = sr.gradient_noise(ctx, list(ctx.params), v, chunk=8)  # chunks that do not divide n
    torch.testing.assert_close(noise.projected, torch.einsum("kn,nm,km->k", v, c, v), rtol=1e-4, atol=1e-8)
    assert noise.trace == pytest.approx(float(torch.trace(c)), rel=1e-5)
    assert noise.mean_grad_norm == pytest.approx(float(g.mean(0).norm()), rel=1e-5)


def test_effective_regularization_estimator_algebra():
    """Δ_n = (α/2B) v_nᵀCv_n against the brute force; Δ₀ = (α/2B)(tr C − Σ v_nᵀCv_n)/(N − k);
    L_SGD = Σ_{λ>0} ½(Δ_n − Δ₀) ln λ_n; β from the log–log fit."""
    ctx = _tiny(4, n=60)
    settings = sr.SGDRegSettings(k=4, iters=ctx.num_params, max_samples=None, chunk=16)
    r = sr.sgd_effective_regularization(ctx, settings)
    h = _dense_hessian(ctx)
    evals, evecs = torch.linalg.eigh(h)
    v = evecs.flip(1)[:, :4].T
    c = torch.cov(_loop_grads(ctx).T, correction=0)
    scale = 0.2 / (2 * 4)
    np.testing.assert_allclose(r.eigenvalues, evals.flip(0)[:4].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.noise, scale * torch.einsum("kn,nm,km->k", v, c, v).numpy(), rtol=1e-3, atol=1e-9)
    flat = scale * (float(torch.trace(c)) - r.noise.sum() / scale) / (ctx.num_params - 4)
    assert r.noise_flat == pytest.approx(flat, rel=1e-4)
    assert r.noise_trace == pytest.approx(scale * float(torch.trace(c)), rel=1e-5)
    np.testing.assert_allclose(r.kappa, r.noise / r.noise_flat)
    pos = r.eigenvalues > 0
    assert r.effective_reg == pytest.approx(float((0.5 * (r.noise[pos] - flat) * np.log(r.eigenvalues[pos])).sum()),
                                            rel=1e-4)
    beta = np.polyfit(np.log(r.eigenvalues[pos]), np.log(r.noise[pos]), 1)[0]
    assert r.exponent == pytest.approx(beta, rel=1e-6)


def test_single_sharp_direction_reduces_to_the_paper_formula():
    """One sharp direction: L_SGD = ½(Δ − Δ₀) ln λ = −(κ − 1) Δ₀ ln F with F = 1/√λ, κ = Δ/Δ₀."""
    lam, delta, flat = 7.0, 0.3, 0.02
    kappa = delta / flat
    assert 0.5 * (delta - flat) * math.log(lam) == pytest.approx(-(kappa - 1) * flat * math.log(lam ** -0.5))


def test_subsample_is_seeded_and_sized():
    ctx = _tiny(5, n=50)
    a, b = sr.subsample(ctx, 20, "t"), sr.subsample(ctx, 20, "t")
    assert len(a.y_train) == 20 and torch.equal(a.x_train, b.x_train)
    assert sr.subsample(ctx, None, "t") is ctx and sr.subsample(ctx, 50, "t") is ctx


# ------------------------------------------------------------------------------------------- measures
PRL_MEASURES = ("sgd.effective_reg", "sgd.noise_anisotropy", "sgd.noise_curvature_exponent", "sgd.noise_trace")


def test_measures_registered_with_family_and_sign():
    signs = {"sgd.effective_reg": 1, "sgd.noise_anisotropy": -1, "sgd.noise_curvature_exponent": -1,
             "sgd.noise_trace": -1}
    for name in PRL_MEASURES:
        m = REGISTRY.get(name)
        assert m.family == "physics" and m.sign == signs[name] and not m.oracle
        assert m.needs == {"model", "train_data", "hparams"}


def _mlp_ctx(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    x = torch.randn(300, 1, 10, generator=g)
    y = torch.randint(0, 4, (300,), generator=g)
    return Context(model, train=(x, y), hparams={"optimizer.lr": 0.1, "train.batch_size": 32}, seed=seed)


def test_measures_finite_and_deterministic():
    ctx1, ctx2 = _mlp_ctx(1), _mlp_ctx(1)
    for name in PRL_MEASURES:
        a, b = REGISTRY.get(name)(ctx1), REGISTRY.get(name)(ctx2)
        assert math.isfinite(a.value), name
        assert a.value == b.value, name
    r = ctx1.shared(sr._reg, sr.DEFAULT)
    assert r.noise_trace > r.noise.sum() > 0 and (r.kappa > 0).all()


# ------------------------------------------------------------------------------------------- theory check
def test_valley_langevin_gives_p_proportional_to_f_to_the_kappa():
    """Simulated anisotropic Langevin dynamics in a valley L = ½λ(x)y² has P(x) ∝ λ(x)^(−κ/2) = F^κ, the
    steady state from which the estimator is derived."""
    from benchmark.reproduce.prl import valley_langevin
    for kappa in (1.0, 4.0):
        fit = valley_langevin(kappa, walkers=1000, steps=12000, seed=0)
        assert fit["exponent"] == pytest.approx(kappa, rel=0.1), fit


# ------------------------------------------------------------------------------------------- registered values
def _exact_ctx(seed=11, n=40):
    """A float64 3→3 tanh→2 network with biases: 20 parameters, so the registered measures' 20 Lanczos
    iterations span the whole space and their top-8 eigenpairs are exact (to rounding)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    return Context(model, train=(x, y), hparams={"optimizer.lr": 0.3, "train.batch_size": 5}, seed=seed)


def test_registered_measures_against_dense_hessian_and_looped_gradients():
    """The four sgd.* measures by name against the dense Hessian (torch.autograd) and the covariance of looped
    per-sample gradients, C = (1/n) Σ (g_i − ḡ)(g_i − ḡ)ᵀ: Δ_n = (α/2B) v_nᵀCv_n over the top 8 eigenvectors,
    Δ₀ = (α/2B)(tr C − Σ_n v_nᵀCv_n)/(N − 8), L_SGD = Σ_{λ_n>0} ½(Δ_n − Δ₀) ln λ_n, ⟨κ⟩ = mean Δ_n/Δ₀,
    β = slope of log Δ_n on log λ_n (λ_n > 0), total (α/2B) tr C."""
    ctx = _exact_ctx()
    n_params, k, scale = 20, 8, 0.3 / (2 * 5)
    assert ctx.num_params == n_params
    evals, evecs = torch.linalg.eigh(_dense_hessian(ctx))
    lam, v = evals.flip(0)[:k], evecs.flip(1)[:, :k].T
    # preconditions: a well-separated top-8 subspace and no eigenvalue near 0 among the top 8
    top9 = evals.flip(0)[:k + 1]
    assert ((top9[:-1] - top9[1:]) > 1e-3 * top9[0]).all() and (lam.abs() > 1e-3 * lam[0]).all()
    grads = _loop_grads(ctx)
    c = (grads - grads.mean(0)).T @ (grads - grads.mean(0)) / len(grads)
    delta = scale * torch.einsum("kn,nm,km->k", v, c, v)
    flat = scale * (torch.trace(c) - delta.sum() / scale) / (n_params - k)
    pos = lam > 0
    l_sgd = float((0.5 * (delta[pos] - flat) * torch.log(lam[pos])).sum())
    ok = pos & (delta > 0)
    beta = np.polyfit(np.log(lam[ok].numpy()), np.log(delta[ok].numpy()), 1)[0]

    assert REGISTRY.get("sgd.effective_reg")(ctx).value == pytest.approx(l_sgd, rel=1e-7)
    assert REGISTRY.get("sgd.noise_anisotropy")(ctx).value == pytest.approx(float((delta / flat).mean()), rel=1e-7)
    assert REGISTRY.get("sgd.noise_curvature_exponent")(ctx).value == pytest.approx(beta, rel=1e-7)
    assert REGISTRY.get("sgd.noise_trace")(ctx).value == pytest.approx(scale * float(torch.trace(c)), rel=1e-9)
