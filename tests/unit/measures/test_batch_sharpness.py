"""Sharpness on batches after Andriushchenko et al. 2023 (measures.batch_sharpness): the m-sharpness per batch in
closed form on a linear model, against single-batch ascents and against brute force on a four-parameter model;
the average case's draws and batches, and its second-order closed form. The values against closed forms and a
Monte Carlo redone draw by draw are value cases (tests/values/cases_sharpness.py)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from measures import REGISTRY, Context
from measures import batch_sharpness as B
from measures import sharpness as S


def _batches_by_hand(ctx: Context, n: int) -> list[torch.Tensor]:
    """The documented partition, redone: consecutive runs of 128 in one permutation drawn from the generator
    tagged "sharpness.batches", ⌊min(n, 1024)/128⌋ of them (one batch of all n below 128)."""
    perm = torch.randperm(n, generator=ctx.generator("sharpness.batches"))
    m = min(128, n)
    return [perm[i * m:(i + 1) * m] for i in range(max(1, min(n, 1024) // m))]


@pytest.mark.parametrize("name,norm,rho", [
    ("sharpness.adaptive.m.linf", 1, 0.004),  # the ℓ∞ ball's support function is the ℓ1 norm
    ("sharpness.adaptive.m.l2", 2, 0.25),
])
def test_m_sharpness_per_batch_on_a_linear_model(name, norm, rho):
    """The collinear two-class linear model of the fixed-radius value cases (tests/values/cases_sharpness.py),
    with 1100 samples: batch b's loss L_b(W + Δ) = mean_{k∈b} softplus(−t_k (m + s)), s = ⟨g, Δ⟩, falls with s,
    so its worst case within ‖Δ ⊘ |W|‖_p ≤ ρ is at s = −ρ‖|W| ⊙ g‖_q, whatever the batch. Each of the 8 batches
    of 128 (1024 of the 1100 samples) the details report must be L_b there minus L_b(W), by hand (the ascent
    reaches the boundary to ~1e-6 in 20 iterations); their mean, the value, is a value case."""
    xbar = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    weight = torch.tensor([[0.8, -0.3, 0.5], [0.1, 0.4, -0.2]], dtype=torch.float64)
    n = 1100
    t = torch.linspace(0.2, 1.5, n, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 2, bias=False, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    ctx = Context(model, train=(t[:, None] * xbar, torch.zeros(n, dtype=torch.long)), seed=3)
    margin = float((weight[0] - weight[1]) @ xbar)
    g = [float(v) for v in xbar] + [-float(v) for v in xbar]
    c = [abs(float(v)) for v in weight.reshape(-1)]
    dual = (sum((ci * gi) ** 2 for ci, gi in zip(c, g)) ** 0.5 if norm == 2
            else sum(abs(ci * gi) for ci, gi in zip(c, g)))

    def loss(batch: list[float], s: float) -> float:
        return sum(math.log1p(math.exp(-tk * (margin + s))) for tk in batch) / len(batch)

    batches = [[float(t[i]) for i in b] for b in _batches_by_hand(ctx, n)]
    out = REGISTRY.get(name)(ctx)
    assert len(batches) == 8 and out.details["batches"] == 8 and out.details["samples"] == 1024
    assert out.details["radius"] == rho and out.details["iterations"] == 20
    for b, v in zip(batches, out.details["per_batch"]):
        assert v == pytest.approx(loss(b, -rho * dual) - loss(b, 0.0), rel=1e-5)


def _single_batch(ctx: Context, x: torch.Tensor, y: torch.Tensor):
    """The existing one-batch ``evaluator`` (Python floats, a loop over chunks), in the (K = 1) form ``apgd`` takes."""
    ev = S.evaluator(ctx, x, y)

    def evaluate(flats, need_grad):
        loss, err, grad = ev(flats[0], need_grad)
        return (torch.tensor([loss], dtype=flats.dtype), torch.tensor([err], dtype=flats.dtype),
                None if grad is None else grad[None])
    return evaluate


@pytest.mark.parametrize("net", ["trained", "trained_cnn"])
@pytest.mark.parametrize("name,norm", [("sharpness.adaptive.m.linf", "linf"), ("sharpness.adaptive.m.l2", "l2")])
def test_m_sharpness_is_the_mean_of_single_batch_ascents(net, name, norm, request):
    """The vectorised measure (all batches in one vmapped pass) equals the mean over batches of the ascent run
    on each batch alone, through the existing single-batch evaluator, on the hand-derived partition."""
    base = request.getfixturevalue(net)
    ctx = Context(base.model, train=(base.x_train, base.y_train))
    out = REGISTRY.get(name)(ctx)
    w = ctx.flatten(ctx.params)
    per = []
    for b in _batches_by_hand(ctx, len(ctx.y_train)):
        r = B.apgd(_single_batch(ctx, ctx.x_train[b], ctx.y_train[b]), w, w.abs(), B.RHO_M[(norm, True)], norm, 1)
        per.append(float(r["worst"][0] - r["base"][0]))
    assert len(per) == out.details["batches"] == len(ctx.y_train) // 128
    assert out.value == pytest.approx(sum(per) / len(per), rel=1e-3)
    assert out.details["per_batch"] == pytest.approx(per, rel=1e-3)
    assert out.value > 0


def _softmax_regression(n: int, d: int, classes: int, seed: int, optimum: bool) -> Context:
    """A float64 linear classifier (with bias) on random, non-separable data (random labels); with ``optimum``,
    fitted by Newton-like L-BFGS to its finite minimiser (gradient ≈ 1e-12), else left at a random point."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    model = nn.Sequential(nn.Linear(d, classes, dtype=torch.float64))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    if optimum:
        opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=0,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    return Context(model, train=(x, y))


def test_m_sharpness_against_brute_force_on_a_four_parameter_model():
    """A bias-free two-class linear model on 1-D inputs (ω = 4, n = 100 < 128: one batch of all samples). Its
    cross-entropy is convex in the weights, so the worst case over the box |δ_i| ≤ ρ|w_i| is at one of its 16
    vertices (enumerated), and over the ellipsoid ‖δ ⊘ |w|‖₂ ≤ ρ it is on the boundary (200,000 seeded
    boundary points, a lower bound within ~1e-4 of the maximum)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(100, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.7 * torch.randn(100, generator=g, dtype=torch.float64) > 0).long()
    model = nn.Sequential(nn.Linear(2, 2, bias=False, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.9, -0.4], [-0.6, 0.3]], dtype=torch.float64))
    ctx = Context(model, train=(x, y))
    w = ctx.flatten(ctx.params)

    def losses(deltas: torch.Tensor) -> torch.Tensor:  # (P, 4) → (P,), by hand
        W = (w + deltas).view(-1, 2, 2)
        z = torch.einsum("pkd,nd->pnk", W, x)
        return (torch.logsumexp(z, -1) - z.gather(-1, y.expand(len(W), -1)[..., None])[..., 0]).mean(-1)

    base = float(losses(torch.zeros(1, 4))[0])
    rho = B.RHO_M[("linf", True)] * 25  # 0.1: a box wide enough for the curvature to matter
    vertices = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=4)), dtype=torch.float64)
    brute_linf = float(losses(rho * w.abs() * vertices).max()) - base
    out = B._m_sharpness(ctx, "linf", radius=rho)
    assert out.details["batches"] == 1 and out.details["samples"] == 100
    assert out.value == pytest.approx(brute_linf, rel=1e-5)  # the momentum reaches the vertex to ~1e-6

    rho = 1.0
    u = torch.randn(200000, 4, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    brute_l2 = float(losses(rho * w.abs() * u).max()) - base
    out = B._m_sharpness(ctx, "l2", radius=rho)
    assert brute_l2 * (1 - 1e-3) <= out.value <= brute_l2 * (1 + 1e-3)
    # the registered ρ on the same model, against the same brute force
    rho = B.RHO_M[("l2", True)]
    assert REGISTRY.get("sharpness.adaptive.m.l2")(ctx).value == pytest.approx(
        float(losses(rho * w.abs() * u).max()) - base, rel=1e-3)
    rho = B.RHO_M[("linf", True)]
    assert REGISTRY.get("sharpness.adaptive.m.linf")(ctx).value == pytest.approx(
        float(losses(rho * w.abs() * vertices).max()) - base, rel=1e-5)


@pytest.mark.parametrize("name,rho", [
    ("sharpness.adaptive.avg.l2", 0.1), ("sharpness.adaptive.avg.linf", 0.2), ("sharpness.avg.l2", 0.0125),
])
def test_average_case_draws_and_batches(trained, name, rho):
    """The average case (its value against a Monte Carlo redone draw by draw is a value case) at its documented
    ρ: M = ⌈2²⁰/ω⌉ clamped to [20, 1024] draws per batch (1024 for this ω = 499 network), on the hand-made
    partition's 2 batches of 128."""
    ctx = Context(trained.model, train=(trained.x_train, trained.y_train), seed=2)
    assert [B.avg_draws(o) for o in (499, 7434, 78858)] == [1024, 142, 20]
    out = REGISTRY.get(name)(ctx)
    assert out.details["radius"] == rho and out.details["draws_per_batch"] == 1024
    assert out.details["batches"] == len(_batches_by_hand(ctx, len(ctx.y_train))) == 2
    assert out.value > 0


@pytest.mark.parametrize("name,dist,adaptive,second_moment", [
    ("sharpness.adaptive.avg.l2", "l2", True, 1.0),
    ("sharpness.adaptive.avg.linf", "linf", True, 1 / 3),  # E[v²] = 1/3 for v ~ U(−1, 1)
    ("sharpness.avg.l2", "l2", False, 1.0),
])
def test_average_case_second_order_closed_form(name, dist, adaptive, second_moment):
    """At the exact minimiser of a float64 softmax regression (ω = 12, n = 100: one batch, zero gradient) the noise
    distributions are symmetric, so E[L(w + ρ c ⊙ v)] − L(w) = ½ ρ² E[v²] Σ_i c_i² H_ii + O(ρ⁴), H the dense
    Hessian. With many draws and a small ρ the measure's routine must match it within four Monte-Carlo
    standard errors (the registered measure, 1024 draws at its own ρ: within 5 %)."""
    ctx = _softmax_regression(100, 3, 3, seed=7, optimum=True)
    w = ctx.flatten(ctx.params)
    flat = w.clone().requires_grad_()
    grad = torch.autograd.grad(ctx.loss(ctx.unflatten(flat)), flat)[0]
    assert grad.abs().max() < 1e-9
    hess = torch.autograd.functional.hessian(lambda f: ctx.loss(ctx.unflatten(f)), w)
    c2 = w ** 2 if adaptive else torch.ones_like(w)
    rho = 0.02
    draws = 40000
    closed = 0.5 * rho ** 2 * second_moment * float((c2 * torch.diagonal(hess)).sum())
    out = B._average_case(ctx, dist, adaptive, radius=rho, draws=draws)
    assert out.details["batches"] == 1 and out.details["samples"] == 100
    # per-draw standard deviation of the quadratic form vᵀAv, A = ½ρ² CHC: √(2 Σ_ij A_ij²) for Gaussian v, an
    # upper bound for uniform v (Var = (1/5 − 1/9) Σ_i A_ii² + (2/9) Σ_{i≠j} A_ij²)
    a = (c2.sqrt()[:, None] * hess * c2.sqrt()[None, :]) * 0.5 * rho ** 2
    sd = float(torch.sqrt(2 * (a ** 2).sum()))
    assert out.value == pytest.approx(closed, abs=4 * sd / math.sqrt(draws) + 1e-3 * closed)
    rho_reg = B.RHO_AVG[(dist, adaptive)]
    registered = REGISTRY.get(name)(ctx).value
    assert registered == pytest.approx(0.5 * rho_reg ** 2 * second_moment * float((c2 * torch.diagonal(hess)).sum()),
                                       rel=0.05)
