"""Tests of measures.updates, the one source of the SGD, heavy-ball and Adam update rules: k steps of each rule
on a small model against k steps of the matching torch.optim optimizer, for one model and for models stacked as
rows of one buffer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from measures.updates import OPTIMIZERS, Update, adam_, sgd_

STEPS = 12

SETTINGS = [  # (optimizer, hyperparameters): torch.optim's keyword arguments
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.03, "weight_decay": 0.01}),
    ("momentum", {"lr": 0.05, "momentum": 0.9}),
    ("momentum", {"lr": 0.02, "momentum": 0.7, "weight_decay": 1e-3}),
    ("adam", {"lr": 1e-3}),
    ("adam", {"lr": 0.01, "weight_decay": 5e-3, "betas": (0.8, 0.99)}),
    ("adam", {"lr": 3e-3, "betas": (0.95, 0.9999), "eps": 1e-6}),
]


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3))
    x = torch.randn(40, 6, generator=g)
    return model, x, torch.randint(0, 3, (40,), generator=g)


def _grads(model, x, y):
    return torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))


def _torch_optim(name: str, params, hp: dict):
    if name == "adam":
        return torch.optim.Adam(params, foreach=False, **hp)
    return torch.optim.SGD(params, foreach=False, **hp)


def _ours(name: str, hp: dict, **extra) -> Update:
    kw = {"weight_decay": hp.get("weight_decay", 0.0), **extra}
    if name == "momentum":
        kw["momentum"] = hp["momentum"]
    if name == "adam":
        kw["betas"] = hp.get("betas", (0.9, 0.999))
    return Update(name, hp["lr"], **kw)


def _reference(name: str, hp: dict, seed: int, steps: int = STEPS) -> list[list[torch.Tensor]]:
    """The parameters after each of ``steps`` torch.optim steps on problem ``seed``."""
    model, x, y = _problem(seed)
    opt = _torch_optim(name, model.parameters(), hp)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


@pytest.mark.parametrize("name,hp", SETTINGS)
def test_the_fused_rule_is_torch_optim_bit_for_bit(name, hp):
    """One model, its parameters as a list of tensors: every step equals torch.optim's exactly (same arithmetic
    order: the weight decay and the step one fused multiply-add each, Adam's step size rounded once)."""
    if "eps" in hp:
        pytest.skip("Update takes torch.optim's default eps; adam_ is checked with another eps below")
    ref = _reference(name, hp, 0)
    model, x, y = _problem(0)
    params = [p.detach().clone() for p in model.parameters()]
    update = _ours(name, hp)
    for step in range(STEPS):
        with torch.no_grad():
            for p, q in zip(model.parameters(), params):
                p.copy_(q)
        update(params, _grads(model, x, y))
        for got, want in zip(params, ref[step]):
            assert torch.equal(got, want), (name, hp, step)


@pytest.mark.parametrize("name,hp", SETTINGS)
def test_stacked_rows_with_column_hyperparameters_equal_each_model_alone(name, hp):
    """Three models as rows of one (M, P) buffer, each with its own learning rate and weight decay (columns): each
    row equals its own torch.optim run bit for bit."""
    scales = [1.0, 0.5, 2.0]
    hps = [{**hp, "lr": hp["lr"] * s, "weight_decay": hp.get("weight_decay", 0.0) * s} for s in scales]
    refs = [_reference(name, h, seed) for seed, h in enumerate(hps)]
    problems = [_problem(seed) for seed in range(3)]
    flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m, _, _ in problems])
    col = lambda key, dtype=torch.float32: torch.tensor([h.get(key, 0.0) for h in hps], dtype=dtype)[:, None]
    buf, m, v = None, torch.zeros_like(flat), torch.zeros_like(flat)
    wd = col("weight_decay") if hp.get("weight_decay") else None
    for step in range(STEPS):
        grads = []
        for row, (model, x, y) in enumerate(problems):
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(flat[row], model.parameters())
            grads.append(torch.cat([g.reshape(-1) for g in _grads(model, x, y)]))
        grad = torch.stack(grads)
        if name == "adam":
            adam_(flat, grad, col("lr", torch.float64), m, v, step + 1, weight_decay=wd,
                  betas=hp.get("betas", (0.9, 0.999)), eps=hp.get("eps", 1e-8))
        else:
            buf = sgd_(flat, grad, col("lr"), weight_decay=wd, momentum=col("momentum") if name == "momentum" else None,
                       buf=buf)
        for row, ref in enumerate(refs):
            want = torch.cat([p.reshape(-1) for p in ref[step]])
            assert torch.equal(flat[row], want), (name, hp, step, row)


@pytest.mark.parametrize("name,hp", SETTINGS)
def test_the_unfused_rule_differs_from_torch_optim_by_rounding_only(name, hp):
    """Every product rounded before it is added (the flatness measures' stacked continuation): after 12 steps
    within float32 rounding of torch.optim, not a different rule: 1e-6 relative for SGD, 1e-5 for Adam, whose
    step m/√v magnifies a rounding of m or v in an entry where both are tiny."""
    if "eps" in hp:
        pytest.skip("Update takes torch.optim's default eps")
    ref = _reference(name, hp, 1)
    model, x, y = _problem(1)
    params = [p.detach().clone() for p in model.parameters()]
    update = _ours(name, hp, fused=False)
    for _ in range(STEPS):
        with torch.no_grad():
            for p, q in zip(model.parameters(), params):
                p.copy_(q)
        update(params, _grads(model, x, y))
    for got, want in zip(params, ref[-1]):
        tol = 1e-5 if name == "adam" else 1e-6
        torch.testing.assert_close(got, want, rtol=tol, atol=tol / 10)


def test_adams_two_roots_of_the_bias_correction():
    """``root="sqrt"`` takes √(1 − β₂ᵗ) with math.sqrt, torch.optim with ``** 0.5``: equal up to t = 1,269 for
    β₂ = 0.999 (so the flatness continuation's 1,100 steps are torch.optim's), different in the last bit at
    t = 1,270; one step from the same state then differs by at most that rounding."""
    c2 = lambda t: 1 - 0.999 ** t
    assert all(math.sqrt(c2(t)) == c2(t) ** 0.5 for t in range(1, 1270))
    assert math.sqrt(c2(1270)) != c2(1270) ** 0.5
    g = torch.Generator().manual_seed(0)
    theta, grad = torch.randn(500, generator=g), torch.randn(500, generator=g)
    m, v = torch.randn(500, generator=g) * 0.1, torch.rand(500, generator=g) * 0.01
    after = {}
    for root in ("pow", "sqrt"):
        th, mm, vv = theta.clone(), m.clone(), v.clone()
        adam_(th, grad, 1e-3, mm, vv, 1270, root=root)
        after[root] = th
    torch.testing.assert_close(after["pow"], after["sqrt"], rtol=1e-6, atol=1e-9)


def test_unknown_optimizer_is_refused():
    assert OPTIMIZERS == ("sgd", "momentum", "adam")
    with pytest.raises(ValueError, match="no update rule for optimizer 'lbfgs'; valid: sgd, momentum, adam"):
        Update("lbfgs", 0.1)
