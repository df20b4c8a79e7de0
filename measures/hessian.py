"""Curvature of the training loss at the solution: top Hessian eigenvalues and the Hessian trace
(Keskar et al. 2017; Yao et al. 2020, PyHessian), with explicit tolerances.

H = ∇²L_S(w), the Hessian of the mean cross-entropy over a seeded subset S of ``HESSIAN_SAMPLES`` training
samples (``pacbayes.train_subsample``; the whole set when smaller), with respect to all parameters —
PyHessian's single-batch mode. The autograd graph of ∇L_S is built once per solve and every Hessian-vector
product reuses it (one double-backward pass each, no repeated forward). ``ctx.hvp`` reruns the forward and
first backward on the full training set for every product: 138 ms against 13 ms here for the 40→256→256→10
MLP (79k parameters, 4000 samples, one CPU thread), which the ~35 products of a model could not afford.

* Top eigenvalues (:func:`lanczos`, shared by ``hessian.top_eig`` and ``hessian.logdet_topk`` through
  ``ctx.shared(_top_eigs)``): Lanczos with full reorthogonalisation from a seeded Gaussian start vector,
  stopped when each of the top ``TOP_K`` Ritz pairs has residual ‖H u − θ u‖ = β_j |s_ji| ≤
  ``LANCZOS_TOL`` · |θ_1| (θ_1 the largest Ritz value; the eigenvalue error is at most that residual and
  usually its square over the gap), or after ``LANCZOS_MAX_ITER`` products, or on an invariant subspace.
  A single start vector finds one copy of a repeated eigenvalue; generic trained networks do not have
  repeated top eigenvalues.
* Trace (:func:`hutchinson`): Hutchinson's estimator E[zᵀHz] = tr H with Rademacher z from
  ``ctx.generator``, deflated by the top-k Ritz vectors U: tr H = Σ_i u_iᵀHu_i + E[z'ᵀHz'],
  z' = (I − UUᵀ)z (exact for any orthonormal U independent of z; the Ritz values are u_iᵀHu_i), which removes
  the large outlier eigenvalues from the estimator's variance (the idea of Hutch++, Meyer et al. 2021).
  Stops PyHessian-style when the running mean changes by less than ``HUTCHINSON_TOL`` relative to the trace
  estimate, after ``HUTCHINSON_MIN_ITER`` and at most ``HUTCHINSON_MAX_ITER`` samples; the standard error is
  kept in the details.

Hessian-vector products and the Lanczos basis are in the parameters' dtype, the small eigenproblems in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from measures.context import Context
from measures.pacbayes import train_subsample
from measures.registry import Value, measure

HESSIAN_SAMPLES = 512  # training samples the Hessian is taken over (seeded subset)
TOP_K = 10  # eigenvalues computed (and used by hessian.logdet_topk and the trace deflation)
LANCZOS_TOL = 1e-3  # residual of each top-k Ritz pair relative to the top Ritz value
LANCZOS_MAX_ITER = 40  # Hessian-vector products at most in the eigen-solve
HUTCHINSON_TOL = 1e-2  # relative change of the running trace estimate that stops the sampling
HUTCHINSON_MIN_ITER = 8
HUTCHINSON_MAX_ITER = 50

MatVec = Callable[[torch.Tensor], torch.Tensor]


def hvp_operator(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> MatVec:
    """v ↦ ∇²L(w) v for the mean cross-entropy on (x, y), all parameters flattened (``ctx.flatten`` order).

    The graph of ∇L is built here, once; each call is one double-backward pass through it.
    """
    flat = ctx.flatten(ctx.params).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        params = ctx.unflatten(flat)
        loss = sum(F.cross_entropy(ctx.forward(x[i:i + ctx.chunk], params), y[i:i + ctx.chunk], reduction="sum")
                   for i in range(0, len(y), ctx.chunk)) / len(y)
        grad = torch.autograd.grad(loss, flat, create_graph=True)[0]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(grad, flat, v.to(flat), retain_graph=True)[0].detach()
    return matvec


@dataclass(frozen=True)
class Eigs:
    values: torch.Tensor  # (k,) Ritz values, descending, float64
    vectors: torch.Tensor  # (params, k) Ritz vectors, orthonormal, float64
    residuals: torch.Tensor  # (k,) ‖H u_i − θ_i u_i‖
    iterations: int  # Hessian-vector products used
    converged: bool


def lanczos(matvec: MatVec, v0: torch.Tensor, k: int, *, tol: float = LANCZOS_TOL,
            max_iter: int = LANCZOS_MAX_ITER) -> Eigs:
    """The k algebraically largest eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Converged when every one of the top-k Ritz residuals β_j|s_ji| is ≤ tol·|θ_1| (or the Krylov space is
    invariant); otherwise stops after ``max_iter`` products and says so. The basis is kept in ``v0``'s dtype
    (one classical Gram-Schmidt pass against all previous vectors per step), the tridiagonal matrix in float64.
    """
    n = v0.numel()
    m_max = min(max_iter, n)
    Q = torch.zeros(m_max + 1, n, dtype=v0.dtype, device=v0.device)  # (lanczos vectors, params)
    Q[0] = v0.reshape(-1) / torch.linalg.vector_norm(v0)
    alpha: list[float] = []
    beta: list[float] = []
    converged = False
    for j in range(m_max):
        w = matvec(Q[j])
        a = float(Q[j] @ w)
        w = w - a * Q[j] - (beta[-1] * Q[j - 1] if j > 0 else 0.0)
        w = w - (Q[:j + 1] @ w) @ Q[:j + 1]  # full reorthogonalisation
        b = float(torch.linalg.vector_norm(w))
        alpha.append(a)
        beta.append(b)
        off = torch.tensor(beta[:-1], dtype=torch.float64)
        T = torch.diag(torch.tensor(alpha, dtype=torch.float64)) + torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)  # ascending
        top = torch.arange(j, max(j - k, -1), -1)  # indices of the top min(k, j+1) Ritz values, descending
        residuals = b * S[-1, top].abs()
        scale = max(abs(float(theta[-1])), abs(float(theta[0])), 1e-30)
        if b <= 1e-7 * scale or (len(top) >= min(k, n) and bool((residuals <= tol * scale).all())):
            converged = True  # an invariant subspace, or every top-k pair within tolerance
            break
        if j + 1 < m_max:
            Q[j + 1] = w / b
    iterations = len(alpha)
    vectors = Q[:iterations].double().T @ S[:, top].to(Q.device)  # (params, k)
    return Eigs(theta[top], vectors, residuals, iterations, converged)


def hutchinson(matvec: MatVec, numel: int, generator: torch.Generator, *, basis: torch.Tensor | None = None,
               offset: float = 0.0, tol: float = HUTCHINSON_TOL, min_iter: int = HUTCHINSON_MIN_ITER,
               max_iter: int = HUTCHINSON_MAX_ITER, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> dict:
    """Hutchinson estimate of tr(H), deflated: offset + mean_j z_j'ᵀ H z_j', z' = (I − UUᵀ)z, z Rademacher.

    ``basis`` U (params, k) orthonormal, ``offset`` = tr(UᵀHU) (0 without deflation). Stops when the running
    mean moves by ≤ tol·|offset + mean| (after ``min_iter`` samples) or after ``max_iter``. Returns
    ``trace``, its standard error ``stderr`` and ``iterations``.
    """
    samples: list[float] = []
    mean = prev = float("nan")
    for it in range(1, max_iter + 1):
        z = (torch.randint(0, 2, (numel,), generator=generator) * 2 - 1).to(device, torch.float64)
        if basis is not None:
            z = z - basis @ (basis.T @ z)
        samples.append(float(z @ matvec(z.to(dtype)).to(z)))
        prev, mean = mean, sum(samples) / len(samples)
        if it >= min_iter and abs(mean - prev) <= tol * abs(offset + mean):
            break
    var = sum((s - mean) ** 2 for s in samples) / max(len(samples) - 1, 1)
    return {"trace": offset + mean, "stderr": math.sqrt(var / len(samples)), "iterations": len(samples)}


def _operator(ctx: Context, n: int) -> tuple[MatVec, int]:
    x, y = train_subsample(ctx, n)
    return hvp_operator(ctx, x, y), len(y)


def _top_eigs(ctx: Context, k: int = TOP_K, n: int = HESSIAN_SAMPLES) -> tuple[Eigs, int]:
    """The top-k eigenpairs of the subset Hessian (seeded start vector), and the subset size."""
    matvec, size = _operator(ctx, n)
    w = ctx.flatten(ctx.params)
    v0 = torch.randn(w.numel(), generator=ctx.generator("hessian.lanczos")).to(w)
    return lanczos(matvec, v0, k), size


def _eig_details(eigs: Eigs, size: int) -> dict:
    return {"eigenvalues": eigs.values.tolist(), "residuals": eigs.residuals.tolist(),
            "hvps": eigs.iterations, "converged": eigs.converged, "tol": LANCZOS_TOL, "subsample": size}


@measure("hessian.top_eig", needs=("model", "train_data"), sign=1, family="hessian",
         reference="Keskar et al. 2017; Yao et al. 2020 (PyHessian), top eigenvalue")
def top_eig(ctx: Context) -> Value:
    """Largest eigenvalue λ_max of the training-loss Hessian (seeded 512-sample subset).

    Lanczos with full reorthogonalisation on Hessian-vector products, top-10 residuals ≤ 1e-3·λ_max (module
    docstring); the solve is shared with ``hessian.logdet_topk`` and ``hessian.trace``.
    """
    eigs, size = ctx.shared(_top_eigs)
    return Value(float(eigs.values[0]), _eig_details(eigs, size))


@measure("hessian.logdet_topk", needs=("model", "train_data"), sign=1, family="hessian",
         reference="Yao et al. 2020 (PyHessian) top-k eigenvalues; log-volume of the sharp directions")
def logdet_topk(ctx: Context) -> Value:
    """Σ_{i ≤ 10, λ_i > 0} log λ_i over the top 10 Hessian eigenvalues (seeded 512-sample subset).

    The log-volume of the k = 10 sharpest directions. Eigenvalues not above 1e-3·λ_1 (zero within the solve's
    tolerance, or negative) are left out; how many were kept is in the details (``positive``). Same shared
    Lanczos solve as ``hessian.top_eig``.
    """
    eigs, size = ctx.shared(_top_eigs)
    pos = eigs.values[eigs.values > LANCZOS_TOL * eigs.values[0].clamp(min=0)]
    return Value(float(torch.log(pos).sum()), {**_eig_details(eigs, size), "k": TOP_K, "positive": len(pos)})


def _trace(ctx: Context, n: int = HESSIAN_SAMPLES) -> dict:
    eigs, _ = ctx.shared(_top_eigs)
    matvec, size = _operator(ctx, n)
    w = ctx.flatten(ctx.params)
    out = hutchinson(matvec, w.numel(), ctx.generator("hessian.trace"), basis=eigs.vectors,
                     offset=float(eigs.values.sum()), dtype=w.dtype, device=w.device)
    return {**out, "deflated": len(eigs.values), "deflated_sum": float(eigs.values.sum()), "tol": HUTCHINSON_TOL,
            "subsample": size}


@measure("hessian.trace", needs=("model", "train_data"), sign=1, family="hessian",
         reference="Yao et al. 2020 (PyHessian), Hutchinson trace; Meyer et al. 2021 (Hutch++ deflation)")
def trace(ctx: Context) -> Value:
    """Trace of the training-loss Hessian tr H (seeded 512-sample subset), by deflated Hutchinson.

    tr H = Σ_{i≤10} θ_i + E[z'ᵀHz'], θ_i the shared top-10 Ritz values, z' Rademacher projected off their Ritz
    vectors; sampling stops when the running mean changes by < 1e-2 relative (≥ 8, ≤ 50 samples).
    """
    out = ctx.shared(_trace)
    return Value(out["trace"], dict(out))
