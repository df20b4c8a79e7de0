"""Hessian measures against dense Hessians of the whole training set (torch.autograd.functional.hessian, float64):
λ_max and the trace on three small fitted ReLU MLPs (one with close top eigenvalues, one with more samples than
any old subset), and Σ log λ_i over the top-10 eigenvalues above 1e-3·λ_1 on a softmax regression whose
Hessian is in closed form and on an indefinite tanh network."""
from __future__ import annotations

import torch
from torch import nn

from measures import Context
from measures.testing import ValueCase
from tests.helpers import dense_hessian, trained_mlp

NETWORKS = {  # name → (in_dim, classes, width, samples, seed, label noise)
    "6→10→10→4 MLP (224 parameters), 64 samples": (6, 4, 10, 64, 1, 0.0),
    "8→8→8→6 MLP (198 parameters), 120 samples, top eigenvalues 2.6 % apart": (8, 6, 8, 120, 55, 0.0),
    "4→6→6→3 MLP (81 parameters), 900 noisy-label samples (more than the old 512-sample subset)":
        (4, 3, 6, 900, 11, 0.3),
}


def _mlp_cases() -> list[ValueCase]:
    """hessian.top_eig within 1e-3 of the dense λ_max; hessian.trace within 1e-5 of the dense trace (the exact
    Gauss-Newton diagonal of a ReLU MLP)."""
    out = []
    for what, args in NETWORKS.items():
        ctx = trained_mlp(*args)
        hess = dense_hessian(ctx)
        train = (ctx.x_train, ctx.y_train)
        out.append(ValueCase("hessian.top_eig", ctx.model, torch.linalg.eigvalsh(hess)[-1].item(), train=train,
                             rel=1e-3, why=f"dense λ_max, {what}"))
        out.append(ValueCase("hessian.trace", ctx.model, torch.trace(hess).item(), train=train, rel=1e-5,
                             why=f"dense trace, {what}"))
    return out


def softmax_regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, x, y, eigenvalues in descending order): softmax regression, 4 features, 3 classes, no bias (12
    parameters, float64), and the eigenvalues of its closed-form Hessian H = (1/n) Σ_n (diag p_n − p_n p_nᵀ) ⊗ x_n x_nᵀ
    (weights row-major), of rank (3 − 1)·4 = 8 < 10."""
    d, classes, n = 4, 3, 60
    g = torch.Generator().manual_seed(31)
    x, y = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)
    model = nn.Sequential(nn.Linear(d, classes, bias=False, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(classes, d, generator=g, dtype=torch.float64))
    p = torch.softmax(x @ model[0].weight.detach().T, 1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    hess = torch.einsum("nab,nij->aibj", a, x[:, :, None] * x[:, None, :]).reshape(classes * d, classes * d) / n
    return model, x, y, torch.linalg.eigvalsh(hess).flip(0)


def _softmax_regression_case() -> ValueCase:
    """The null directions of the softmax regression's Hessian must be left out of the sum."""
    model, x, y, evals = softmax_regression()
    return ValueCase("hessian.logdet_topk", model, torch.log(evals[:8]).sum().item(), train=(x, y), rel=1e-8,
                     abs=1e-8, why="Σ log λ_i over the 8 nonzero eigenvalues of the closed-form softmax Hessian")


def tanh_network() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, x, y, dense eigenvalues in descending order): a 2 → 2 → 2 tanh network without biases at random
    weights (8 parameters, float64), with an indefinite Hessian and a 2-dimensional null space (one vector added to
    both output rows leaves the loss unchanged)."""
    g = torch.Generator().manual_seed(32)
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh(), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(1.5 * torch.randn(prm.shape, generator=g, dtype=torch.float64))
    x, y = torch.randn(30, 2, generator=g, dtype=torch.float64), torch.randint(0, 2, (30,), generator=g)
    return model, x, y, torch.linalg.eigvalsh(dense_hessian(Context(model, train=(x, y)))).flip(0)


def _tanh_case() -> ValueCase:
    """The tanh network's 3 eigenvalues above 1e-3·λ_1 (none near that cut)."""
    model, x, y, evals = tanh_network()
    keep = evals[evals > 1e-3 * evals[0]]
    return ValueCase("hessian.logdet_topk", model, torch.log(keep).sum().item(), train=(x, y), rel=1e-8, abs=1e-8,
                     why=f"Σ log λ_i over the {len(keep)} dense eigenvalues above 1e-3·λ_1 of a tanh network")


CASES = _mlp_cases() + [_softmax_regression_case(), _tanh_case()]
