"""Curvature of the training loss at the solution: top Hessian eigenvalues and the Hessian trace
(Keskar et al. 2017; Yao et al. 2020, PyHessian), with explicit tolerances.

H = ∇²L(w), the Hessian of the mean cross-entropy over the whole training set, with respect to all parameters.
A seeded subset of N samples (``pacbayes.curvature_data``) is an explicit option for datasets too large for
full-set passes (``ctx.extras["curvature_samples"]`` = N); the number of samples used is in the details
(``samples``). The autograd graph of ∇L is built once per solve (:func:`hvp_operator`) and every
Hessian-vector product reuses it (one double-backward pass each, no repeated forward). ``ctx.hvp`` reruns the
forward and first backward for every product, which the ~50 products of a model could not afford.

* Top eigenvalues (:func:`lanczos`, one Krylov basis shared by ``hessian.top_eig`` (k = 1) and
  ``hessian.logdet_topk`` (k = ``TOP_K``) through ``ctx.shared``): Lanczos with full reorthogonalisation from a
  seeded Gaussian start vector, stopped when each of the top k Ritz pairs has residual ‖H u − θ u‖ = β_j |s_ji| ≤
  ``LANCZOS_TOL`` · max(|θ_max|, |θ_min|) (the largest |Ritz value|, an estimate of ‖H‖₂ from below; for a
  trained network it is θ_1, as the negative eigenvalues are small), or after ``LANCZOS_MAX_ITER``
  products, or on an invariant subspace. Each Ritz value is then within its residual of an eigenvalue of H
  (and usually within residual²/gap), and θ_1 ≤ λ_1 (Cauchy interlacing). A single start vector finds one
  copy of an exactly repeated eigenvalue; close but distinct top eigenvalues are each found (the tests pin
  a trained network whose top two are 2.6 % apart).
* Trace, exactly (:func:`exact_trace`) for networks of Linear layers and piecewise-linear maps (the zoo's
  MLPs): their Hessian diagonal equals the Gauss-Newton diagonal, which per-sample activations and output
  gradients give in closed form, at the cost of about two Hessian-vector products. Other networks:
* Trace (:func:`hutchinson`): Hutchinson's estimator E[zᵀHz] = tr H with Rademacher z from
  ``ctx.generator``, deflated by the whole Lanczos basis Q (orthonormal, m vectors):
  tr H = tr(QᵀHQ) + E[z'ᵀHz'], z' = (I − QQᵀ)z, exact for any orthonormal Q independent of z, and
  tr(QᵀHQ) = Σ_j α_j, the diagonal of the Lanczos tridiagonal matrix, needs no further product. The Krylov
  space holds the large outlier eigenvalues and more, which removes them from the estimator's variance (the
  idea of Hutch++, Meyer et al. 2021; on the default zoo the per-sample spread falls from ~8 % of the trace
  with the top-10 Ritz vectors to ~5 % with the ~27 Lanczos vectors). Sampling stops when the standard
  error of the mean is ≤ ``TRACE_REL_STDERR`` of the trace estimate, after ``HUTCHINSON_MIN_ITER`` and at
  most ``TRACE_MAX_ITER`` samples; the standard error is kept in the details.

Hessian-vector products and the Lanczos basis are in the parameters' dtype (float32 products agree with a
float64 dense Hessian to ~1e-6 relative), the small eigenproblems and the deflation projections in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from measures.context import Context, Scratch
from measures.losses import fast_cross_entropy
from measures.pacbayes import curvature_data, train_subsample
from measures.registry import Value, measure

TOP_K = 10  # eigenvalues computed (and used by hessian.logdet_topk)
LANCZOS_TOL = 1e-3  # residual of each top-k Ritz pair relative to the largest |Ritz value|
LANCZOS_MAX_ITER = 100  # Hessian-vector products at most in the eigen-solve
HUTCHINSON_TOL = 1e-2  # hutchinson()'s default stop: relative change of the running trace estimate
HUTCHINSON_MIN_ITER = 8
HUTCHINSON_MAX_ITER = 50  # hutchinson()'s default cap
TRACE_REL_STDERR = 1e-2  # hessian.trace's stop: standard error ≤ this fraction of the trace estimate, …
TRACE_MAX_ITER = 100  # … or this many samples

MatVec = Callable[[torch.Tensor], torch.Tensor]


def hvp_operator(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> MatVec:
    """v ↦ ∇²L(w) v for the mean cross-entropy on (x, y), all parameters flattened (``ctx.flatten`` order).

    The graph of ∇L is built here, once; each call is one double-backward pass through it.
    """
    flat = ctx.flatten(ctx.params).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        params = ctx.unflatten(flat)
        loss = sum(fast_cross_entropy(ctx.forward(x[i:i + ctx.chunk], params), y[i:i + ctx.chunk], reduction="sum")
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
    basis: torch.Tensor | None = None  # (params, iterations) the Lanczos vectors, orthonormal, in v0's dtype
    basis_trace: float = float("nan")  # tr(QᵀHQ) = Σ_j α_j over that basis


def lanczos(matvec: MatVec, v0: torch.Tensor, k: int, *, tol: float = LANCZOS_TOL,
            max_iter: int = LANCZOS_MAX_ITER, state: dict | None = None) -> Eigs:
    """The k algebraically largest eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Converged when every one of the top-k Ritz residuals β_j|s_ji| is ≤ tol·max(|θ_max|, |θ_min|) (the
    largest |Ritz value|, a lower estimate of ‖H‖₂), or the Krylov space is invariant (β_j ≤ 1e-7 of it);
    otherwise stops after ``max_iter`` products and says so. Each returned θ_i lies within its residual of an
    eigenvalue. The basis is kept in ``v0``'s dtype (one classical Gram-Schmidt pass against all previous
    vectors per step) and returned with Σ_j α_j = tr(QᵀHQ) (for deflation), the tridiagonal matrix in float64.

    ``state``: a dict (empty at first) that keeps the Krylov basis between calls with the same operator and
    start vector. A later call replays the stored iterations without products and continues from there, so a
    solve for k = 1 and then one for k = 10 cost the products of the second alone, and each returns what it
    would return alone: the first iteration at which its own criterion holds.
    """
    n = v0.numel()
    m_max = min(max_iter, n)
    state = {} if state is None else state
    if "Q" not in state:
        state.update(Q=torch.zeros(m_max + 1, n, dtype=v0.dtype, device=v0.device), alpha=[], beta=[])
        state["Q"][0] = v0.reshape(-1) / torch.linalg.vector_norm(v0)
    elif state["Q"].shape[0] < m_max + 1:
        grown = torch.zeros(m_max + 1, n, dtype=v0.dtype, device=v0.device)
        grown[:state["Q"].shape[0]] = state["Q"]
        state["Q"] = grown
    Q, alpha, beta = state["Q"], state["alpha"], state["beta"]
    converged = False
    for j in range(m_max):
        if j == len(alpha):  # a new product; earlier iterations are replayed from the state
            if state.get("invariant"):
                break
            w = matvec(Q[j])
            a = float(Q[j] @ w)
            w = w - a * Q[j] - (beta[-1] * Q[j - 1] if j > 0 else 0.0)
            w = w - (Q[:j + 1] @ w) @ Q[:j + 1]  # full reorthogonalisation
            b = float(torch.linalg.vector_norm(w))
            alpha.append(a)
            beta.append(b)
            if b > 0 and j + 1 < Q.shape[0]:
                Q[j + 1] = w / b
        b = beta[j]
        off = torch.tensor(beta[:j], dtype=torch.float64)
        T = torch.diag(torch.tensor(alpha[:j + 1], dtype=torch.float64)) + torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)  # ascending
        top = torch.arange(j, max(j - k, -1), -1)  # indices of the top min(k, j+1) Ritz values, descending
        residuals = b * S[-1, top].abs()
        scale = max(abs(float(theta[-1])), abs(float(theta[0])), 1e-30)
        if b <= 1e-7 * scale:
            state["invariant"] = True
        if b <= 1e-7 * scale or (len(top) >= min(k, n) and bool((residuals <= tol * scale).all())):
            converged = True  # an invariant subspace, or every top-k pair within tolerance
            break
    iterations = j + 1
    vectors = Q[:iterations].double().T @ S[:, top].to(Q.device)  # (params, k)
    return Eigs(theta[top], vectors, residuals, iterations, converged, Q[:iterations].clone().T,
                float(sum(alpha[:iterations])))


def hutchinson(matvec: MatVec, numel: int, generator: torch.Generator, *, basis: torch.Tensor | None = None,
               offset: float = 0.0, tol: float = HUTCHINSON_TOL, min_iter: int = HUTCHINSON_MIN_ITER,
               max_iter: int = HUTCHINSON_MAX_ITER, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", rel_stderr: float | None = None) -> dict:
    """Hutchinson estimate of tr(H), deflated: offset + mean_j z_j'ᵀ H z_j', z' = (I − UUᵀ)z, z Rademacher.

    ``basis`` U (params, k) orthonormal, ``offset`` = tr(UᵀHU) (0 without deflation). Stops (after
    ``min_iter`` samples, or at ``max_iter``) when the running mean moves by ≤ tol·|offset + mean|, or, with
    ``rel_stderr`` given, instead when the standard error of the mean is ≤ rel_stderr·|offset + mean|.
    Returns ``trace``, its standard error ``stderr``, ``iterations`` and ``converged`` (a stopping rule was
    met before ``max_iter``).
    """
    samples: list[float] = []
    mean = prev = float("nan")
    converged = False
    basis = basis.to(device, torch.float64) if basis is not None else None
    for it in range(1, max_iter + 1):
        z = (torch.randint(0, 2, (numel,), generator=generator) * 2 - 1).to(device, torch.float64)
        if basis is not None:
            z = z - basis @ (basis.T @ z)
        samples.append(float(z @ matvec(z.to(dtype)).to(z)))
        prev, mean = mean, sum(samples) / len(samples)
        if it >= min_iter:
            if rel_stderr is None:
                converged = abs(mean - prev) <= tol * abs(offset + mean)
            else:
                converged = _stderr(samples, mean) <= rel_stderr * abs(offset + mean)
            if converged:
                break
    return {"trace": offset + mean, "stderr": _stderr(samples, mean), "iterations": len(samples),
            "converged": converged}


def _stderr(samples: list[float], mean: float) -> float:
    var = sum((s - mean) ** 2 for s in samples) / max(len(samples) - 1, 1)
    return math.sqrt(var / len(samples))


def _operator(ctx: Context, n: int | None) -> tuple[MatVec, int]:
    """The Hessian-vector product on :func:`pacbayes.curvature_data` (``n``: a seeded n-sample subset instead)."""
    x, y = curvature_data(ctx) if n is None else train_subsample(ctx, n)
    return hvp_operator(ctx, x, y), len(y)


def _krylov(ctx: Context, n: int | None) -> tuple[MatVec, torch.Tensor, dict, int]:
    """The Hessian operator, the seeded start vector and the Lanczos state all solves of this model share."""
    matvec, size = _operator(ctx, n)
    w = ctx.flatten(ctx.params)
    return matvec, torch.randn(w.numel(), generator=ctx.generator("hessian.lanczos")).to(w), Scratch(), size


def _top_eigs(ctx: Context, k: int = TOP_K, n: int | None = None) -> tuple[Eigs, int]:
    """The top-k eigenpairs of the training-loss Hessian (seeded start vector), and the number of samples. Solves
    for different k extend one Krylov basis (``lanczos``'s state): the largest k pays for all of them."""
    matvec, v0, state, size = ctx.shared(_krylov, n)
    return lanczos(matvec, v0, k, state=state), size


def _eig_details(eigs: Eigs, size: int) -> dict:
    return {"eigenvalues": eigs.values.tolist(), "residuals": eigs.residuals.tolist(),
            "hvps": eigs.iterations, "converged": eigs.converged, "tol": LANCZOS_TOL, "samples": size}


@measure("hessian.top_eig", needs=("model", "train_data"), sign=1, family="hessian", version=3,
         invariances=("permutation",), seeded=True,
         reference="Keskar et al. 2017; Yao et al. 2020 (PyHessian), top eigenvalue")
def top_eig(ctx: Context) -> Value:
    """Largest eigenvalue λ_max of the training-loss Hessian (whole training set).

    Lanczos with full reorthogonalisation on Hessian-vector products, stopped when the top Ritz pair's residual
    is ≤ 1e-3·max|θ| (module docstring), so |θ_1 − λ_max| ≤ 1e-3·λ_max when no negative eigenvalue is larger in
    magnitude (in practice far closer: the error is about residual²/gap). Its Krylov basis is the start of the
    top-10 solve of ``hessian.logdet_topk``, which extends it rather than starting again.
    """
    eigs, size = ctx.shared(_top_eigs, 1)
    return Value(float(eigs.values[0]), _eig_details(eigs, size))


@measure("hessian.logdet_topk", needs=("model", "train_data"), sign=1, family="hessian", version=2,
         invariances=("permutation",), seeded=True,
         reference="Yao et al. 2020 (PyHessian) top-k eigenvalues; log-volume of the sharp directions")
def logdet_topk(ctx: Context) -> Value:
    """Σ_{i ≤ 10, λ_i > 0} log λ_i over the top 10 Hessian eigenvalues (whole training set).

    The log-volume of the k = 10 sharpest directions. Eigenvalues not above 1e-3·λ_1 (zero within the solve's
    tolerance, or negative) are left out; how many were kept is in the details (``positive``). When none is
    left (no positive curvature), the log-volume is undefined and the measure raises ``ValueError`` (recorded
    as failed). Same shared Lanczos solve as ``hessian.top_eig``.
    """
    eigs, size = ctx.shared(_top_eigs)
    pos = eigs.values[eigs.values > LANCZOS_TOL * eigs.values[0].clamp(min=0)]
    if len(pos) == 0:
        raise ValueError(f"no Hessian eigenvalue above {LANCZOS_TOL:g}·max(λ_1, 0) (λ_1 = "
                         f"{float(eigs.values[0]):.3g}): the log-volume of the top directions is undefined")
    return Value(float(torch.log(pos).sum()), {**_eig_details(eigs, size), "k": TOP_K, "positive": len(pos)})


# Parameter-free modules after which every logit stays, almost everywhere, of degree ≤ 1 in each single parameter.
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.Flatten, nn.Identity, nn.Dropout, nn.AdaptiveAvgPool1d,
                    nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)


def exact_trace_applies(model: nn.Module) -> bool:
    """Whether :func:`exact_trace` is exact for ``model`` (in eval mode): every module without children is an
    ``nn.Linear`` or a parameter-free piecewise-linear map (``PIECEWISE_LINEAR``, or a dropout module, which is
    the identity in eval mode). ``exact_trace`` itself also checks that each Linear layer is used once per
    forward pass (a reused weight would enter a logit twice) and raises ``ValueError`` otherwise."""
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    return bool(leaves) and all(
        isinstance(m, nn.Linear) or (not any(True for _ in m.parameters(recurse=False))
                                     and (isinstance(m, PIECEWISE_LINEAR) or type(m).__name__.endswith("Dropout")))
        for m in leaves)


def exact_trace(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> float:
    """tr ∇²L of the mean cross-entropy on (x, y), exactly, for a network of Linear layers and piecewise-linear
    maps (:func:`exact_trace_applies`).

    ∇²L = (1/n) Σ_i J_iᵀ A_i J_i + (1/n) Σ_i Σ_c r_ic ∇²f_ic, with J_i the Jacobian of the logits f_i, A_i =
    diag(p_i) − p_i p_iᵀ and r_i = p_i − e_{y_i}. Each logit of such a network is, almost everywhere, a
    polynomial of degree at most 1 in any single parameter (the layers multiply, each weight enters once), so
    ∂²f_ic/∂θ_j² = 0: the Hessian's diagonal is that of the Gauss-Newton term. For a Linear layer with input a_i
    and output z_i, ∂f_ic/∂W = δ_ic a_iᵀ and ∂f_ic/∂b = δ_ic with δ_ic = ∂f_ic/∂z_i, hence

        tr ∇²L = (1/n) Σ_i Σ_layers (‖a_i‖² + [bias]) (Σ_c p_ic ‖δ_ic‖² − ‖Σ_c p_ic δ_ic‖²).

    Cost: one forward pass and C backward passes to the layer outputs (no weight gradients), about three
    Hessian-vector products for C = 10 (30 ms for a 40→128→128→10 MLP on 2,000 samples, one thread); no
    sampling, so no standard error. The spread is accumulated in float32 in its centred form, which has no
    cancellation, and reduced in float64.
    """
    model = ctx.model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.setdefault(mod, []).append((inp[0], out)))
             for m in linears]
    total = 0.0
    try:
        for i in range(0, len(y), ctx.chunk):
            xb = x[i:i + ctx.chunk]
            seen.clear()
            with torch.enable_grad():
                logits = ctx.forward(xb, {k: v.clone().requires_grad_(True) for k, v in ctx.params.items()})
                if any(len(seen.get(m, [])) != 1 for m in linears):
                    raise ValueError("exact_trace needs every Linear layer used exactly once per forward pass")
                seen_once = {m: calls[0] for m, calls in seen.items()}
                if any(seen_once[m][0].dim() != 2 for m in linears):
                    raise ValueError("exact_trace needs 2-d inputs to every Linear layer")
                zs = [seen_once[m][1] for m in linears]
                # one backward pass per class (to the layer outputs only: no weight gradients); C passes of
                # the column sums are ~4x faster here than one pass batched over C with is_grads_batched
                per_class = [torch.autograd.grad(logits[:, c].sum(), zs, retain_graph=True)
                             for c in range(logits.shape[1])]
            p = torch.softmax(logits.detach(), 1)  # (b, C)
            for j, m in enumerate(linears):
                # the spread Σ_c p_c ‖δ_c − δ̄‖², δ̄ = Σ_c p_c δ_c (the same as Σ_c p_c ‖δ_c‖² − ‖δ̄‖², without the
                # cancellation of that form), accumulated class by class in float32, reduced in float64
                mean = sum(p[:, c, None] * g[j] for c, g in enumerate(per_class))  # (b, out)
                spread = sum(p[:, c].double() * (g[j] - mean).pow(2).sum(1, dtype=torch.float64)
                             for c, g in enumerate(per_class))
                a2 = seen_once[m][0].detach().pow(2).sum(1, dtype=torch.float64) + (1.0 if m.bias is not None else 0.0)
                total += float((a2 * spread).sum())
    finally:
        for h in hooks:
            h.remove()
    return total / len(y)


def _trace(ctx: Context, n: int | None = None) -> dict:
    if exact_trace_applies(ctx.model):
        x, y = curvature_data(ctx) if n is None else train_subsample(ctx, n)
        try:
            return {"trace": exact_trace(ctx, x, y), "stderr": 0.0, "method": "exact (Gauss-Newton diagonal)",
                    "converged": True, "samples": len(y)}
        except ValueError:  # a Linear layer reused or fed more than 2-d inputs: sample instead
            pass
    eigs, _ = ctx.shared(_top_eigs) if n is None else ctx.shared(_top_eigs, TOP_K, n)
    matvec, size = _operator(ctx, n)
    w = ctx.flatten(ctx.params)
    out = hutchinson(matvec, w.numel(), ctx.generator("hessian.trace"), basis=eigs.basis,
                     offset=eigs.basis_trace, rel_stderr=TRACE_REL_STDERR, max_iter=TRACE_MAX_ITER,
                     dtype=w.dtype, device=w.device)
    return {**out, "method": "hutchinson, deflated", "deflated": eigs.iterations, "deflated_sum": eigs.basis_trace,
            "rel_stderr_target": TRACE_REL_STDERR, "samples": size}


@measure("hessian.trace", needs=("model", "train_data"), sign=1, family="hessian", version=3,
         invariances=("permutation",), seeded=True,
         reference="Yao et al. 2020 (PyHessian), Hutchinson trace; Meyer et al. 2021 (Hutch++ deflation)")
def trace(ctx: Context) -> Value:
    """Trace of the training-loss Hessian tr H (whole training set).

    Exactly (:func:`exact_trace`, ``stderr`` 0) for networks of Linear layers and piecewise-linear maps, such
    as the zoo's ReLU MLPs, whose Hessian diagonal is that of the Gauss-Newton term. Otherwise by deflated
    Hutchinson: tr H = tr(QᵀHQ) + E[z'ᵀHz'], Q the orthonormal Lanczos basis of the shared solve (tr(QᵀHQ) =
    Σ α_j), z' Rademacher projected off it; sampling stops when the standard error is ≤ 1e-2 of the estimate
    (≥ 8, ≤ 100 samples; ``stderr`` and ``converged`` in the details). ``method`` in the details says which.
    """
    out = ctx.shared(_trace)
    return Value(out["trace"], dict(out))
