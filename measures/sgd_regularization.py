"""SGD as an effective landscape-dependent regularization (Yang, Tang & Tu, PRL 130, 237101, 2023;
arXiv 2206.01246; docs/measures/sgd-regularization.md): the anisotropic SGD noise around a solution and the
log-probability penalty it puts on the solution's sharp directions, all as quantities free of units.

**Inputs, at the trained solution w*** (:func:`measure_spectra`; all on the cross-entropy L over the whole
training set, or over the seeded subset of ``ctx.extras["curvature_samples"]`` samples when that is set, the
option the Hessian family honours, ``pacbayes.curvature_data``):

* the top-k Hessian eigenpairs (λ_n, v_n) of L, k = ``TOP_K``, by ``hessian.lanczos`` (full
  reorthogonalisation, seeded Gaussian start, stopped when every top-k residual is ≤ ``LANCZOS_TOL`` times the
  largest |Ritz value|; the residuals are in the details). With the default settings this is the eigenproblem
  ``hessian.top_eig`` solves, so the solve is shared with the Hessian family (``ctx.shared``), done once;
* the per-sample gradient covariance C = (1/n) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ seen along directions u only, uᵀCu =
  var_i(g_i·u). One autograd graph of G(a) = ∇_w Σ_i a_i ℓ_i(w) at a = 1 gives both products
  (:func:`curvature_operators`): ∂(G·u)/∂w = n·H u (the Hessian-vector product) and ∂(G·u)/∂a_i = g_i·u (all
  n projections at the cost of one backward pass). C is never formed;
* the flat-direction noise, the noise along a random unit direction ẑ of the orthogonal complement of the
  top-k eigenvectors (the flat directions: such a direction has curvature tr(H_⊥)/(N − k) on average,
  under 0.1 % of λ_k on the default zoo, docs). Its expectation is computed exactly, without sampling:
  E ẑᵀCẑ = tr(C_⊥)/(N − k) = (tr C − Σ_{n≤k} v_nᵀCv_n)/(N − k), with tr C = mean_i ‖g_i‖² − ‖ḡ‖² from the
  per-sample gradient norms (:func:`per_sample_sq_norms`: for Linear layers ‖δ_i a_iᵀ‖² = ‖δ_i‖²‖a_i‖² from
  one forward and one backward pass, a_i the layer's input and δ_i the loss gradient at its output;
  other parameters by ``torch.func.vmap(grad)``). Its only error is that of the Lanczos subspace. (Random
  probes estimate the same mean with a relative error √(2/(m·r)), r the effective rank of C_⊥: ~2 % with
  m = 16 on the default zoo, but 20 % on a width-16 network, where exchanging hidden units then moved the
  value by as much.)

**The SGD dynamics these define** (:func:`sgd_dynamics`). Minibatch SGD w ← w − α ĝ_B, B samples drawn
without replacement from n, has minibatch-gradient covariance f·C/B with f = (n − B)/(n − 1); as a Langevin
process with time step α it is dw = −∇L dt + √(2D) dW, D = (α/2B) f C. The temperature (noise variance, in
loss units) along a unit direction u is Δ(u) = (α/2B) f uᵀCu: Δ_n = Δ(v_n) and the flat temperature
Δ_⊥ = E Δ(ẑ) = (α/2B) f tr(C_⊥)/(N − k); κ_n = Δ_n/Δ_⊥ is the anisotropy. Optimizers, as a stated rule:

* ``sgd``: α_eff = α.
* ``momentum`` (heavy ball b ← μb + g, w ← w − αb): when the velocity relaxes fast (1/(1 − μ) steps, short
  against the relaxation time 1/(α_eff λ) of the directions analysed), b is the geometric sum of gradients,
  so the drift is −α/(1 − μ) ∇L per step and the accumulated noise has the covariance of SGD with that step:
  α_eff = α/(1 − μ) (μ = ``optimizer.momentum``).
* anything else (Adam, …): ``NotApplicable`` — a per-coordinate preconditioner changes the metric of both
  the drift and the noise, which the isotropic-step theory does not cover.
* weight decay ω (``optimizer.weight_decay``, 0 when absent) is part of the loss SGD descends, L + ω‖w‖²/2:
  its Hessian is H + ωI, same eigenvectors, eigenvalues λ_n + ω; the noise is unchanged.

**The effective-loss term and its normalisation.** Take the paper's valley: slow coordinates x along the
manifold of solutions at temperature Δ_⊥, fast ones y_n across it along v_n with curvature λ_n(x) and
temperature Δ_n, L ≈ Σ_n ½ λ_n(x) y_n². The y_n relax to Gaussians of variance Δ_n/λ_n; averaging the force
along x over them gives −∂_x Σ_n ½ λ_n ⟨y_n²⟩ = −∂_x Σ_n (Δ_n/2) ln λ_n, so the steady density on the
manifold is P(x) ∝ exp(−Σ_n (Δ_n/2Δ_⊥) ln λ_n) = Π_n F_n^(κ_n), F_n = λ_n^(−1/2). Isotropic noise (κ_n = 1)
gives the entropic Π_n F_n; the SGD excess is the log-probability penalty

    Φ = −ln(P_SGD/P_iso) = Σ_n ½ (κ_n − 1) ln λ_n,

which for one sharp direction is the paper's L_SGD/Δ with L_SGD = −(κ − 1) Δ ln F (the term in the exponent
of P ∝ exp(−L_eff/Δ), with Δ the sharp-direction noise): the prefactor Δ is absorbed by the normalisation,
and Φ needs no choice between Δ and Δ_⊥. ln λ has a unit: Φ is a potential, defined up to a constant
Σ_n ½(κ_n − 1) ln λ_ref, which cancels between two points of one landscape but not between models. The
reference here is the edge of stability of the dynamics, λ_ref = 2/α_eff (a direction with α_eff λ > 2 is
unstable under the step), the one curvature scale the training itself sets:

    Φ_k = Σ_{n≤k} ½ (κ_n − 1) ln(α_eff (λ_n + ω) / 2),

minus the log-probability advantage that SGD's anisotropic noise gives this solution, in its k sharpest
directions, over one sitting at the edge of stability in each of them (≤ 0 when every κ_n > 1 and
α_eff λ_n < 2; more negative: flatter, or more anisotropic noise, both a stronger pull of SGD's implicit
regularisation).

**Units.** Weights in other units, w = c w′: L′(w′) = L(c w′), so g′ = c g, H′ = c² H (same eigenvectors),
C′ = c² C; SGD in w′, w′ ← w′ − α′ c ĝ_B, multiplied by c is w ← w − α′c² ĝ_B, the same trajectory iff
α′ = α/c² (momentum: b′ = c b, the same condition, μ unchanged; weight decay: c g + ω′w/c = c(g + ωw) iff
ω′ = c² ω). Then α′λ′ = αλ, α′ω′ = αω and Δ′ = (α′/2B) f c² uᵀCu = Δ. Loss in other units, L′ = sL: g′ = s g,
H′ = sH, C′ = s²C, the same trajectory iff α′ = α/s, ω′ = sω; then α′λ′ = αλ and Δ′ = sΔ. So κ_n (a ratio of
temperatures), α_eff(λ_n + ω), Φ_k, and the slope of log Δ_n on log λ_n are unchanged by both, and so is
Σ Δ / L (both in loss units). Every registered value is a function of these only (:func:`analyse`), and the
tests check it: on the spectra, and on a network written with its weights scaled by c.

**Truncation.** Φ over the whole spectrum does not exist: near-zero and negative eigenvalues (exact
symmetries of the network among them) make ln λ diverge, and these directions are the valley floor of the
theory, not its sharp walls. The measure is therefore *defined* on the top k = ``TOP_K`` directions (like
``hessian.logdet_topk``), the estimate converges to that definition (Lanczos residual test), and it is
named for it. On the default zoo the Hessian spectrum decays smoothly (no gap after k), so Φ_k grows with k
roughly in proportion: it is a top-10 quantity, not an approximation of a full sum.

Cost on a 40→256→256→10 MLP with 2,000 training samples (79k parameters, one CPU thread): the Lanczos solve
(~27 products of ~25 ms), k = 10 projections (~8 ms each) and one pass for the gradient norms: 0.8–1 s per
model on a shared 2-core machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from measures.context import Context, MissingInputError
from measures.flatness import analysed_names
from measures.hessian import LANCZOS_MAX_ITER as HESSIAN_MAX_ITER
from measures.hessian import LANCZOS_TOL as HESSIAN_TOL
from measures.hessian import TOP_K as HESSIAN_TOP_K
from measures.hessian import _top_eigs, lanczos
from measures.losses import fast_cross_entropy
from measures.pacbayes import curvature_data, train_subsample
from measures.registry import NotApplicable, Value, measure

REFERENCE = ("Yang, Tang & Tu, PRL 130, 237101 (2023), arXiv 2206.01246: L_SGD = −(κ−1)Δ ln F; "
             "unit-free estimator Σ_{n≤k} ½(κ_n − 1) ln(α_eff λ_n/2) (module docstring)")

TOP_K = 10  # sharp directions analysed (Hessian eigenpairs)
LANCZOS_TOL = 1e-3  # top-k Ritz residuals relative to the largest |Ritz value|
LANCZOS_MAX_ITER = 60  # Hessian-vector products at most


@dataclass(frozen=True)
class SGDRegSettings:
    k: int = TOP_K
    iters: int = LANCZOS_MAX_ITER  # Lanczos products at most
    params: str | tuple[str, ...] = "all"  # "all" | "weights" | "penultimate" | parameter names
    max_samples: int | None = None  # None: the Context's curvature samples (the full set unless extras say)
    chunk: int = 8192  # samples per forward pass when building the graph
    tol: float = LANCZOS_TOL


DEFAULT = SGDRegSettings()


# --------------------------------------------------------------------------------------------- operators
def curvature_operators(ctx: Context, names: Sequence[str], x: torch.Tensor, y: torch.Tensor, chunk: int = 8192
                        ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(hvp, project) for the cross-entropy on (x, y) with respect to the parameters ``names`` (flattened in
    that order): hvp(u) = ∇²L u (L the mean loss), project(u) = (g_i·u)_i, the n per-sample directional
    derivatives. Both are backward passes through one graph of G(a) = ∇_w Σ_i a_i ℓ_i(w) at a = 1."""
    base = dict(ctx.params)
    flat = torch.cat([base[k].reshape(-1) for k in names]).detach().clone().requires_grad_(True)
    weights = torch.ones(len(y), dtype=flat.dtype, device=flat.device, requires_grad=True)
    n = len(y)
    with torch.enable_grad():
        parts = torch.split(flat, [base[k].numel() for k in names])
        params = {**base, **{k: p.view_as(base[k]) for k, p in zip(names, parts)}}
        losses = torch.cat([fast_cross_entropy(ctx.forward(x[i:i + chunk], params), y[i:i + chunk], reduction="none")
                            for i in range(0, n, chunk)])  # (n,)
        g = torch.autograd.grad((weights * losses).sum(), flat, create_graph=True)[0]  # Σ_i ∇ℓ_i = n ∇L

    def hvp(u: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(g, flat, u.to(flat), retain_graph=True)[0].detach() / n

    def project(u: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(g, weights, u.to(flat), retain_graph=True)[0].detach()

    return hvp, project, g.detach() / n


def per_sample_sq_norms(ctx: Context, names: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                        chunk: int = 8192) -> torch.Tensor:
    """‖∇_w ℓ_i‖² over the parameters ``names`` for every sample, float64 (n,). Parameters of ``nn.Linear``
    layers with 2-d inputs by ‖δ_i a_iᵀ‖² = ‖δ_i‖²‖a_i‖² (weight) and ‖δ_i‖² (bias), from forward hooks and
    one backward pass of Σ_i ℓ_i per chunk (sample i's loss depends on its own outputs only: eval mode);
    any other parameter by ``vmap(grad)`` of the single-sample loss."""
    linear = {}
    try:
        layers = ctx.layers
    except ValueError:  # no Linear or Conv layer at all
        layers = []
    for layer in layers:
        if isinstance(layer.module, nn.Linear):
            linear[layer.weight] = (layer.module, "weight")
            if layer.bias is not None:
                linear[layer.bias] = (layer.module, "bias")
    fast = [k for k in names if k in linear]
    rest = [k for k in names if k not in linear]
    out = torch.zeros(len(y), dtype=torch.float64, device=y.device)
    modules = list(dict.fromkeys(linear[k][0] for k in fast))
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, outp: seen.__setitem__(mod, (inp[0], outp)))
             for m in modules]
    try:
        for i in range(0, len(y) if fast else 0, chunk):
            with torch.enable_grad():
                loss = fast_cross_entropy(ctx.model(x[i:i + chunk]), y[i:i + chunk], reduction="sum")
                if any(seen[m][0].dim() != 2 for m in modules):  # inputs with extra axes: the generic path
                    fast, rest = [], list(names)
                    out.zero_()
                    break
                deltas = dict(zip(modules, torch.autograd.grad(loss, [seen[m][1] for m in modules])))
            for k in fast:
                m, kind = linear[k]
                d2 = (deltas[m].double() ** 2).sum(1)  # (chunk,) ‖δ_i‖²
                out[i:i + chunk] += d2 * (seen[m][0].detach().double() ** 2).sum(1) if kind == "weight" else d2
    finally:
        for h in hooks:
            h.remove()
    if rest:
        base = ctx.params

        def loss_one(sub, xi, yi):
            return F.cross_entropy(ctx.forward(xi[None], {**base, **sub}), yi[None])

        for i in range(0, len(y), 256):
            blocks = vmap(grad(loss_one), in_dims=(None, 0, 0))({k: base[k] for k in rest}, x[i:i + 256],
                                                                  y[i:i + 256])
            out[i:i + 256] += sum((b.reshape(len(b), -1).double() ** 2).sum(1) for b in blocks.values())
    return out


def _variance(s: torch.Tensor) -> float:
    """Population variance of the per-sample projections: uᵀCu = mean_i (g_i·u − ḡ·u)²."""
    s = s.double()
    return float(((s - s.mean()) ** 2).mean())


# --------------------------------------------------------------------------------------------- spectra
@dataclass(frozen=True)
class Spectra:
    """What the measures are a pure function of (besides the hyperparameters): :func:`analyse`."""
    eigenvalues: np.ndarray  # (k,) λ_n of the data loss, descending
    noise_proj: np.ndarray  # (k,) v_nᵀ C v_n
    trace_c: float  # tr C over the analysed parameters
    n_params: int  # N, analysed parameters
    train_loss: float  # L(w*) on the curvature samples
    sq_norm: float = 0.0  # ‖w*‖² over all parameters (for the weight-decay term of the objective)
    info: dict = field(default_factory=dict)  # solver details


def _samples(ctx: Context, settings: SGDRegSettings) -> tuple[torch.Tensor, torch.Tensor]:
    return curvature_data(ctx) if settings.max_samples is None else train_subsample(ctx, settings.max_samples)


def _same_solve(ctx: Context, settings: SGDRegSettings, names: Sequence[str], k: int) -> bool:
    """Whether ``hessian._top_eigs`` solves this eigenproblem: all parameters in ``ctx.flatten`` order, the
    curvature samples, the same k and a tolerance at least as tight (it allows more products)."""
    return (tuple(names) == tuple(ctx.params) and settings.max_samples is None and k == HESSIAN_TOP_K
            and HESSIAN_TOL <= settings.tol and HESSIAN_MAX_ITER >= settings.iters)


@dataclass(frozen=True)
class Noise:
    """The total SGD noise and the objective at the solution, which need no eigenproblem."""
    trace_c: float  # tr C = mean_i ‖g_i‖² − ‖ḡ‖² over the analysed parameters
    train_loss: float  # L(w*) on the curvature samples
    sq_norm: float  # ‖w*‖² over all parameters
    samples: int


def measure_noise(ctx: Context, settings: SGDRegSettings = DEFAULT) -> Noise:
    """tr C from the per-sample gradient norms (:func:`per_sample_sq_norms`) and the mean gradient, the training
    loss and ‖w*‖²: one forward and two backward passes, no Hessian-vector product. Shared (``ctx.shared``)
    between :func:`measure_spectra` and ``sgd.noise_to_loss``, which reads nothing else."""
    names = analysed_names(ctx, settings.params)
    x, y = _samples(ctx, settings)
    base = dict(ctx.params)
    leaves = {k: base[k].detach().clone().requires_grad_(True) for k in names}
    with torch.enable_grad():
        params = {**base, **leaves}
        total = sum(fast_cross_entropy(ctx.forward(x[i:i + settings.chunk], params), y[i:i + settings.chunk],
                                       reduction="sum") for i in range(0, len(y), settings.chunk))
        grads = torch.autograd.grad(total, list(leaves.values()))
    mean_sq = float(sum(((g.double() / len(y)) ** 2).sum() for g in grads))  # ‖ḡ‖²
    sq = per_sample_sq_norms(ctx, names, x, y, settings.chunk)
    with torch.no_grad():
        loss = float(ctx.loss(x=x, y=y))
    w2 = float(sum((p.double() ** 2).sum() for p in base.values()))
    return Noise(max(float(sq.mean()) - mean_sq, 0.0), loss, w2, len(y))


def measure_spectra(ctx: Context, settings: SGDRegSettings = DEFAULT) -> Spectra:
    """Top-k Hessian eigenpairs, the noise along them and along random flat directions (module docstring)."""
    names = analysed_names(ctx, settings.params)
    x, y = _samples(ctx, settings)
    dim = sum(ctx.params[k].numel() for k in names)
    k = min(settings.k, dim - 1)
    if k < 1:
        raise ValueError(f"the analysed parameters have {dim} entries; need at least 2")
    hvp, project, _ = curvature_operators(ctx, names, x, y, settings.chunk)
    if _same_solve(ctx, settings, names, k):  # the Hessian family's solve of the same operator, done once
        eigs = ctx.shared(_top_eigs)[0]
    else:
        ref = ctx.params[names[0]]
        v0 = torch.randn(dim, generator=ctx.generator("sgd_reg/lanczos"), dtype=torch.float64).to(ref)
        eigs = lanczos(hvp, v0, k, tol=settings.tol, max_iter=max(settings.iters, k + 1))
    noise = np.array([_variance(project(v)) for v in eigs.vectors.T])  # v_nᵀCv_n
    totals = ctx.shared(measure_noise, settings)
    info = {"residuals": eigs.residuals.tolist(), "hvps": eigs.iterations, "converged": eigs.converged,
            "tol": settings.tol, "samples": len(y)}
    return Spectra(eigs.values.cpu().numpy()[:k], noise, totals.trace_c, dim, totals.train_loss, totals.sq_norm,
                   info)


# --------------------------------------------------------------------------------------------- dynamics
@dataclass(frozen=True)
class Dynamics:
    lr: float  # α_eff
    batch_size: int
    n_train: int  # n, for the without-replacement factor
    weight_decay: float = 0.0
    optimizer: str = "sgd"

    @property
    def scale(self) -> float:
        """(α_eff/2B)·(n − B)/(n − 1): Δ(u) = scale · uᵀCu."""
        return self.lr / (2 * self.batch_size) * (self.n_train - self.batch_size) / (self.n_train - 1)

    def totals(self, trace_c: float, train_loss: float, sq_norm: float) -> tuple[float, float]:
        """(ΣΔ = scale·tr C, the objective L + ω‖w‖²/2 SGD descends): both in loss units."""
        return self.scale * trace_c, train_loss + 0.5 * self.weight_decay * sq_norm


def _hp(ctx: Context, key: str, default):
    try:
        return ctx.hp(key)
    except MissingInputError:
        return default


def sgd_dynamics(ctx: Context) -> Dynamics:
    """α_eff, B, n and ω of the training run, by the optimizer rule of the module docstring."""
    name = str(ctx.hp("optimizer.name"))
    lr, bs, n = float(ctx.hp("optimizer.lr")), int(ctx.hp("train.batch_size")), len(ctx.y_train)
    if name == "sgd":
        eff = lr
    elif name == "momentum":
        mu = float(ctx.hp("optimizer.momentum"))
        if not 0.0 <= mu < 1.0:
            raise NotApplicable(f"heavy-ball momentum {mu} outside [0, 1)")
        eff = lr / (1.0 - mu)
    else:
        raise NotApplicable(f"optimizer {name!r}: the SGD-noise theory covers plain SGD and heavy-ball momentum "
                            "(effective step α/(1 − μ)), not adaptive preconditioning")
    if bs >= n:
        raise NotApplicable(f"batch size {bs} ≥ training-set size {n}: full-batch training has no SGD noise")
    return Dynamics(eff, bs, n, float(_hp(ctx, "optimizer.weight_decay", 0.0)), name)


# --------------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class SGDRegResult:
    eigenvalues: np.ndarray  # (k,) λ_n + ω, the curvature of the objective SGD descends
    noise: np.ndarray  # (k,) Δ_n
    noise_flat: float  # Δ_⊥, mean over the orthogonal complement of v_1..v_k
    kappa: np.ndarray  # (k,) Δ_n / Δ_⊥
    stability: np.ndarray  # (k,) α_eff(λ_n + ω)/2, curvature relative to the edge of stability
    log_penalty: float  # Φ_k (NaN where undefined: see penalty_defined)
    exponent: float  # β, slope of log Δ_n on log λ_n (NaN where undefined)
    exponent_r2: float
    noise_total: float  # (α_eff/2B) f tr C = Σ_n Δ_n + (N − k) Δ_⊥
    objective: float  # L + ω‖w‖²/2
    n_params: int
    dynamics: Dynamics
    info: dict

    @property
    def anisotropy(self) -> float:
        """⟨κ_n⟩ over the top-k directions."""
        return float(self.kappa.mean())

    @property
    def noise_to_loss(self) -> float:
        return self.noise_total / self.objective

    # names the PRL reproduction reads
    @property
    def noise_trace(self) -> float:
        return self.noise_total

    @property
    def effective_reg_scaled(self) -> float:
        """Φ_k, the paper's L_SGD/Δ summed over the top-k directions."""
        return self.log_penalty

    @property
    def effective_reg(self) -> float:
        """Σ_{n≤k} ½(κ_n − 1) Δ_n ln(α_eff λ_n/2): the paper's L_SGD with its prefactor Δ_n, in loss units."""
        return float((0.5 * (self.kappa - 1) * self.noise * np.log(self.stability)).sum())


def analyse(spec: Spectra, dyn: Dynamics) -> SGDRegResult:
    """The registered quantities as a pure function of the spectra and the hyperparameters (module docstring):
    Δ_n = s·v_nᵀCv_n, Δ_⊥ = s·(tr C − Σ_n v_nᵀCv_n)/(N − k) (s = (α_eff/2B)(n − B)/(n − 1)), κ_n = Δ_n/Δ_⊥,
    Φ_k = Σ ½(κ_n − 1) ln(α_eff(λ_n + ω)/2), β = slope of log Δ_n on log(λ_n + ω), ΣΔ = Σ Δ_n + (N − k)Δ_⊥.
    Φ_k and β are NaN when some λ_n + ω ≤ 0 (not a minimum), β also when some Δ_n ≤ 0; κ when Δ_⊥ = 0."""
    lam = np.asarray(spec.eigenvalues, dtype=float) + dyn.weight_decay
    delta = dyn.scale * np.asarray(spec.noise_proj, dtype=float)
    flat = dyn.scale * max(spec.trace_c - float(np.sum(spec.noise_proj)), 0.0) / (spec.n_params - len(delta))
    kappa = delta / flat if flat > 0 else np.full_like(delta, math.nan)
    stability = dyn.lr * lam / 2
    minimum = bool((lam > 0).all())
    penalty = float((0.5 * (kappa - 1) * np.log(stability)).sum()) if minimum else math.nan
    beta = r2 = math.nan
    if minimum and (delta > 0).all() and len(lam) >= 3:
        lx, ly = np.log(lam), np.log(delta)
        beta, c = np.polyfit(lx, ly, 1)
        resid = ly - (beta * lx + c)
        ss = float(((ly - ly.mean()) ** 2).sum())
        r2 = 1.0 - float((resid ** 2).sum()) / ss if ss > 0 else math.nan
    total, objective = dyn.totals(spec.trace_c, spec.train_loss, spec.sq_norm)
    return SGDRegResult(lam, delta, flat, kappa, stability, penalty, float(beta), float(r2), total,
                        objective, spec.n_params, dyn, dict(spec.info))


def sgd_effective_regularization(ctx: Context, settings: SGDRegSettings = DEFAULT) -> SGDRegResult:
    """The whole analysis of one solution: :func:`measure_spectra`, :func:`sgd_dynamics`, :func:`analyse`."""
    dyn = sgd_dynamics(ctx)  # first: an optimizer the theory does not cover costs nothing
    return analyse(measure_spectra(ctx, settings), dyn)


# --------------------------------------------------------------------------------------------- measures
NEEDS = ("model", "train_data", "hparams")


def _reg(ctx: Context) -> SGDRegResult:
    return sgd_effective_regularization(ctx, DEFAULT)


def _details(r: SGDRegResult) -> dict:
    return {**r.info, "k": len(r.eigenvalues), "eigenvalues": r.eigenvalues.tolist(), "kappa": r.kappa.tolist(),
            "lr_eff": r.dynamics.lr, "optimizer": r.dynamics.optimizer, "noise_flat": r.noise_flat}


def _require_minimum(r: SGDRegResult) -> None:
    if not (r.eigenvalues > 0).all():
        raise NotApplicable(f"top-{len(r.eigenvalues)} Hessian eigenvalues not all positive (smallest "
                            f"{float(r.eigenvalues.min()):.3g}): not a minimum, no valley to analyse")


def _require_flat_noise(r: SGDRegResult) -> None:
    if not r.noise_flat > 0:
        raise NotApplicable("no SGD noise along the flat directions (Δ_⊥ = 0): the anisotropy is undefined")


@measure("sgd.log_penalty_topk", needs=NEEDS, sign=1, family="physics",
         invariances=("permutation", "units"), seeded=True, reference=REFERENCE, version=2)
def sgd_log_penalty_topk(ctx: Context) -> Value:
    """SGD's effective-regularisation penalty over the top-10 Hessian directions, in units of the noise:
    Φ = Σ_{n≤10} ½(κ_n − 1) ln(α_eff λ_n / 2).

    The paper's L_SGD/Δ = −(κ − 1) ln F = ½(κ − 1) ln λ per sharp direction, with λ measured from the edge of
    stability 2/α_eff so that it is free of units; κ_n = Δ_n/Δ_⊥, the SGD noise along the eigenvector v_n over
    the mean noise along the directions orthogonal to the top 10 (module docstring: derivation, optimizer rule,
    units). −Φ is the log-probability advantage SGD's anisotropic noise gives the solution over one at the
    edge of stability; sign +1: a larger Φ (sharper, or less anisotropic noise) is a weaker implicit
    regularisation, expected to generalize worse. Not applicable where a top-10 eigenvalue is ≤ 0.
    """
    r = ctx.shared(_reg)
    _require_minimum(r)
    _require_flat_noise(r)
    return Value(r.log_penalty, {**_details(r), "effective_reg": r.effective_reg})


@measure("sgd.noise_anisotropy", needs=NEEDS, sign=-1, family="physics",
         invariances=("permutation", "units"), seeded=True, reference=REFERENCE, version=3)
def sgd_noise_anisotropy(ctx: Context) -> Value:
    """Anisotropy of the SGD noise, ⟨κ_n⟩ = mean over the top-10 Hessian directions of Δ_n / Δ_⊥.

    Δ_n = (α/2B) v_nᵀ C v_n along the Hessian eigenvectors, Δ_⊥ its mean over the directions orthogonal to
    them (module docstring). A ratio of two temperatures: free of the units of weights and loss, and of the
    step size. Sign −1 (a hypothesis): anisotropy turns the entropic preference P ∝ F into P ∝ F^κ, a stronger
    push towards flat solutions. Grows with the parameter count N (Δ_⊥ is a per-direction average).
    """
    r = ctx.shared(_reg)
    _require_flat_noise(r)
    return Value(r.anisotropy, {**_details(r), "kappa_1": float(r.kappa[0]),
                                "top_k_fraction": float(r.noise.sum() / r.noise_total)})


@measure("sgd.noise_curvature_exponent", needs=NEEDS, sign=-1, family="physics",
         invariances=("permutation", "units"), seeded=True, reference=REFERENCE, version=3)
def sgd_noise_curvature_exponent(ctx: Context) -> Value:
    """Exponent β of the SGD noise–curvature relation, Δ_n ∝ λ_n^β over the top-10 Hessian directions.

    Least squares of log Δ_n on log λ_n over all ten (a change of units shifts both logs, not the slope).
    Not applicable where some λ_n ≤ 0 (not a minimum) or some Δ_n = 0 (no noise along v_n): no direction is
    dropped. Sign −1 (a hypothesis): a steeper rise of noise with curvature is a stronger landscape-dependent
    annealing (Feng & Tu 2021), which drives SGD to flatter solutions. Details: fit R².
    """
    r = ctx.shared(_reg)
    _require_minimum(r)
    if not (r.noise > 0).all():
        raise NotApplicable("no SGD noise along some top-10 Hessian direction (Δ_n = 0): log Δ_n undefined")
    return Value(r.exponent, {**_details(r), "r2": r.exponent_r2})


@measure("sgd.noise_to_loss", needs=NEEDS, sign=-1, family="physics",
         invariances=("permutation", "units"), reference=REFERENCE, version=2)
def sgd_noise_to_loss(ctx: Context) -> Value:
    """Total SGD noise temperature relative to the training loss, (α_eff/2B)·(n − B)/(n − 1)·tr C / L.

    tr C = mean_i ‖g_i‖² − ‖ḡ‖² from the per-sample gradient norms; L the training objective (cross-entropy,
    plus ω‖w‖²/2 with weight decay). Both are in loss units, so the ratio is free of units (module docstring).
    Sign −1 (a hypothesis): the noise is the strength of SGD's effective regularisation (larger α/B, better
    generalization), though tr C also grows with sharpness.
    Needs no eigenproblem: one forward and two backward passes on the full training set (:func:`measure_noise`),
    no randomness.
    """
    dyn = sgd_dynamics(ctx)
    noise = ctx.shared(measure_noise, DEFAULT)
    total, objective = dyn.totals(noise.trace_c, noise.train_loss, noise.sq_norm)
    return Value(total / objective, {"noise_total": total, "objective": objective, "trace_c": noise.trace_c,
                                     "samples": noise.samples, "lr_eff": dyn.lr, "optimizer": dyn.optimizer})
