"""SGD as an effective landscape-dependent regularization (Yang, Tang & Tu, PRL 130, 237101, 2023;
arXiv 2206.01246; docs/measures/sgd-regularization.md): the anisotropic SGD noise around a solution and the
effective-loss term it induces.

Quantities, at the trained solution w* (all on the training loss L, cross-entropy):

* the top-k Hessian eigenpairs (λ_n, v_n) of L, by Lanczos with full reorthogonalisation on ``ctx.hvp``
  from a seeded start vector (:func:`lanczos`);
* the per-sample gradient covariance C = (1/n) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ, never formed: per-sample gradients
  come from ``torch.func.vmap(grad)`` in chunks and only their projections and norms are kept,
  v_nᵀ C v_n = mean_i (g_i·v_n)² − (ḡ·v_n)² and tr C = mean_i ‖g_i‖² − ‖ḡ‖² (:func:`gradient_noise`);
* the SGD noise variance ("temperature") along v_n, Δ_n = (α/2B) v_nᵀ C v_n, and the total
  Σ_all directions Δ = (α/2B) tr C. (The finite-population factor (n − B)/(n − 1) of sampling without
  replacement is left out, as in the paper's formula; it is ≈ 1 for B ≪ n.)

**Derivation of the effective-loss estimator.** In continuous time (dt = α) SGD is
dw = −∇L dt + √(2D) dW with diffusion matrix D = (α/2B) C, so Δ_n = v_nᵀ D v_n is the temperature along
v_n. Take the paper's valley picture: coordinates x along the (degenerate) manifold of solutions, with
temperature Δ₀ there, and coordinates y_n across it along the sharp directions v_n, with curvature λ_n(x)
and temperature Δ_n: L ≈ Σ_n ½ λ_n(x) y_n². The y_n relax fast to Gaussians of variance Δ_n/λ_n(x); averaging
the drift along x over them gives −∂_x L = −Σ_n ½ λ_n'(x) ⟨y_n²⟩ = −∂_x Σ_n (Δ_n/2) ln λ_n(x) (Δ_n locally
constant). The slow motion along x is thus Langevin motion in the potential U(x) = Σ_n (Δ_n/2) ln λ_n at
temperature Δ₀, so P(x) ∝ exp(−U/Δ₀) = Π_n λ_n^(−κ_n/2) = Π_n F_n^(κ_n) with F_n = λ_n^(−1/2) and
κ_n = Δ_n/Δ₀. Isotropic noise (κ_n = 1) leaves only the entropic factor Π_n F_n; the excess is the
SGD-induced term, in loss units (P ∝ exp(−(L + L_SGD)/Δ₀) on the manifold):

    L_SGD = Σ_n ½ (κ_n − 1) Δ₀ ln λ_n = Σ_n ½ (Δ_n − Δ₀) ln λ_n,

which for one sharp direction is the paper's L_SGD = −(κ − 1) Δ ln F with F = 1/√λ. The flat-manifold
temperature Δ₀ is estimated as the mean noise variance over the directions orthogonal to the k computed
eigenvectors, Δ₀ = (α/2B)(tr C − Σ_n v_nᵀCv_n)/(N − k), i.e. the temperature of a typical flat direction.
genbench's reproduction (``benchmark.reproduce.prl.valley_langevin``) checks the steady state by simulation
(fitted exponents of P against F: 1.00, 1.98, 3.97 for κ = 1, 2, 4). Caveats, documented rather than hidden:
the sum runs over the top-k directions only — by the definition of Δ₀ the excess noise Δ_n − Δ₀ averages to
zero over the other directions, whose curvatures are not resolved (many λ ≈ 0, where ln λ diverges), so truncating
there is a choice; ln λ_n depends on the unit of λ (only differences between solutions of one architecture
and dataset are meaningful, and L_SGD changes sign where the λ_n cross 1); Δ₀ falls like 1/N, so κ_n grows
with the parameter count.

Other summaries: the anisotropy ⟨κ_n⟩ (mean over the top-k directions), and the exponent β of the
noise–curvature relation, log Δ_n = a + β log λ_n by least squares over the top-k (β > 0: more noise along
sharper directions, the landscape-dependent annealing of Feng & Tu).

Cost: Lanczos with m iterations is m Hessian-vector products (each a double backward over the samples);
per-sample gradients are one ``vmap(grad)`` sweep. To stay near 1 s per model on one CPU thread for a
40→256→256→10 MLP, both use a fixed seeded subsample of at most ``max_samples`` = 1024 training samples
(the whole training set when it is smaller; ``max_samples=None`` for the full set), k = 8, m = 20: measured
1.0–1.4 s CPU on a shared 2-core machine (plus ~3 s once per process for ``torch.func``'s first use). On
that MLP λ_1 from 1,024 samples is within ~3 % of the full-set value and λ_2..λ_8 within ~15 %, and 20
Lanczos iterations give the top 8 to 4 digits (the same as 40).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from measures.context import Context
from measures.flatness import analysed_names, power_law_fit
from measures.registry import Value, measure

REFERENCE = ("Yang, Tang & Tu, PRL 130, 237101 (2023), arXiv 2206.01246: L_SGD = −(κ−1)Δ ln F, "
             "estimator Σ_n ½(Δ_n − Δ₀) ln λ_n (module docstring)")


@dataclass(frozen=True)
class SGDRegSettings:
    k: int = 8  # Hessian eigenpairs
    iters: int = 20  # Lanczos iterations (Hessian-vector products)
    params: str | tuple[str, ...] = "all"  # "all" | "weights" | "penultimate" | parameter names
    max_samples: int | None = 1024  # seeded training subsample for the Hessian and C (None: all)
    chunk: int = 256  # samples per vmap(grad) pass


DEFAULT = SGDRegSettings()


# --------------------------------------------------------------------------------------------- Lanczos
def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int, iters: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (largest algebraic) eigenpairs of a symmetric operator by ``iters`` Lanczos steps with full
    reorthogonalisation, from a seeded Gaussian start. Returns (eigenvalues (k,), eigenvectors (k, dim)),
    float64, descending; the vectors are the Ritz vectors (orthonormal)."""
    m = min(iters, dim)
    basis = torch.zeros(m, dim, dtype=torch.float64)
    alpha, beta = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    q = torch.randn(dim, generator=generator, dtype=torch.float64)
    q /= q.norm()
    for j in range(m):
        basis[j] = q
        w = matvec(q).double()
        alpha[j] = w @ q
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        if j == m - 1:
            break
        b = w.norm()
        if b <= 1e-10 * alpha[:j + 1].abs().max().clamp_min(1e-30):  # invariant subspace found: stop
            m = j + 1
            break
        beta[j] = b
        q = w / b
    tri = torch.diag(alpha[:m]) + torch.diag(beta[:m - 1], 1) + torch.diag(beta[:m - 1], -1)
    evals, s = torch.linalg.eigh(tri)  # ascending
    top = torch.argsort(evals, descending=True)[:k]
    return evals[top], s[:, top].T @ basis[:m]


def hessian_eigenpairs(ctx: Context, names: Sequence[str], k: int, iters: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of the training-loss Hessian with respect to ``names`` (Lanczos on ``ctx.hvp``)."""
    dim = sum(ctx.params[n].numel() for n in names)
    dtype = ctx.params[names[0]].dtype
    return lanczos(lambda v: ctx.hvp(v.to(dtype), names), dim, k, iters, generator)


# --------------------------------------------------------------------------------------------- gradient noise
@dataclass(frozen=True)
class GradientNoise:
    projected: torch.Tensor  # (k,) v_nᵀ C v_n
    trace: float  # tr C
    mean_grad_norm: float  # ‖ḡ‖
    n_samples: int


def _per_sample_grad_blocks(ctx: Context, names: Sequence[str], x: torch.Tensor,
                            y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients by ``torch.func.vmap(grad)`` of the single-sample cross-entropy, per parameter:
    {name: (len(x), *shape)}."""
    base = ctx.params

    def loss_one(sub: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(ctx.forward(xi[None], {**base, **sub}), yi[None])

    return vmap(grad(loss_one), in_dims=(None, 0, 0))({n: base[n] for n in names}, x, y)


def per_sample_grads(ctx: Context, names: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients ∇_w ℓ(x_i, y_i) with respect to ``names``, flattened: (len(x), N)."""
    g = _per_sample_grad_blocks(ctx, names, x, y)
    return torch.cat([g[n].reshape(len(x), -1) for n in names], 1)


def gradient_noise(ctx: Context, names: Sequence[str], directions: torch.Tensor, *,
                   chunk: int = 256) -> GradientNoise:
    """v_nᵀ C v_n for each row of ``directions`` (k, N) and tr C, C the per-sample gradient covariance over
    the Context's training set (population normalisation 1/n). C is never formed: per-sample gradients are
    computed ``chunk`` samples at a time, projected parameter block by parameter block and dropped."""
    x, y = ctx.x_train, ctx.y_train
    n = len(y)
    sizes = [ctx.params[k].numel() for k in names]
    v_blocks = torch.split(directions.to(ctx.params[names[0]].dtype), sizes, dim=1)  # per parameter (k, numel)
    s1 = torch.zeros(len(directions), dtype=torch.float64)  # Σ_i g_i·v
    s2 = torch.zeros(len(directions), dtype=torch.float64)  # Σ_i (g_i·v)²
    sq = 0.0  # Σ_i ‖g_i‖²
    gsum = [torch.zeros(m, dtype=torch.float64) for m in sizes]  # Σ_i g_i, per block
    for i in range(0, n, chunk):
        blocks = _per_sample_grad_blocks(ctx, names, x[i:i + chunk], y[i:i + chunk])
        proj = 0.0
        for name, vb, gs in zip(names, v_blocks, gsum):
            g = blocks[name].reshape(len(blocks[name]), -1)  # (c, numel)
            proj = proj + g @ vb.T  # (c, k)
            sq += float(torch.linalg.vector_norm(g)) ** 2  # float32 within a chunk, float64 across chunks
            gs += g.sum(0).double()
        p = proj.double()
        s1 += p.sum(0)
        s2 += (p ** 2).sum(0)
    mean_sq = sum(float(gs @ gs) for gs in gsum) / n ** 2  # ‖ḡ‖²
    projected = (s2 / n - (s1 / n) ** 2).clamp_min(0.0)
    trace = max(sq / n - mean_sq, 0.0)
    return GradientNoise(projected, trace, math.sqrt(mean_sq), n)


# --------------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class SGDRegResult:
    eigenvalues: np.ndarray  # (k,) λ_n, descending
    noise: np.ndarray  # (k,) Δ_n = (α/2B) v_nᵀ C v_n
    noise_flat: float  # Δ₀: mean Δ over the directions orthogonal to v_1..v_k
    noise_trace: float  # (α/2B) tr C: Σ of Δ over all N directions
    kappa: np.ndarray  # (k,) Δ_n / Δ₀
    effective_reg: float  # L_SGD = Σ_{λ_n>0} ½ (Δ_n − Δ₀) ln λ_n
    exponent: float  # β in log Δ_n = a + β log λ_n
    exponent_r2: float
    n_used: int  # directions with λ_n > 0 and Δ_n > 0
    n_params: int
    n_samples: int
    names: tuple[str, ...]

    @property
    def anisotropy(self) -> float:
        """⟨κ_n⟩ over the top-k directions."""
        return float(self.kappa.mean())

    @property
    def effective_reg_scaled(self) -> float:
        """L_SGD / Δ₀ = Σ ½(κ_n − 1) ln λ_n: the log-probability penalty relative to isotropic noise."""
        return self.effective_reg / self.noise_flat if self.noise_flat > 0 else math.nan


def subsample(ctx: Context, max_samples: int | None, tag: str) -> Context:
    """The Context itself, or a Context on a seeded random subset of ``max_samples`` training samples."""
    n = len(ctx.y_train)
    if max_samples is None or max_samples >= n:
        return ctx
    idx = torch.randperm(n, generator=ctx.generator(tag))[:max_samples].sort().values.to(ctx.device)
    return Context(ctx.model, train=(ctx.x_train[idx], ctx.y_train[idx]), seed=ctx.seed, chunk=ctx.chunk)


def sgd_effective_regularization(ctx: Context, settings: SGDRegSettings = DEFAULT) -> SGDRegResult:
    """Hessian eigenpairs, SGD noise along them and the effective-loss term (module docstring)."""
    lr, bs = float(ctx.hp("optimizer.lr")), int(ctx.hp("train.batch_size"))
    names = analysed_names(ctx, settings.params)
    sub = subsample(ctx, settings.max_samples, "sgd_reg/subsample")
    dim = sum(ctx.params[n].numel() for n in names)
    k = min(settings.k, dim - 1)
    if k < 1:
        raise ValueError(f"the analysed parameters have {dim} entries; need at least 2")
    evals, evecs = hessian_eigenpairs(sub, names, k, max(settings.iters, k + 1), ctx.generator("sgd_reg/lanczos"))
    noise = gradient_noise(sub, names, evecs, chunk=settings.chunk)
    scale = lr / (2 * bs)
    delta = scale * noise.projected.numpy()
    total = scale * noise.trace
    flat = max(total - float(delta.sum()), 0.0) / (dim - k)
    lam = evals.numpy()
    kappa = delta / flat if flat > 0 else np.full_like(delta, math.nan)
    pos = lam > 0
    l_sgd = float((0.5 * (delta[pos] - flat) * np.log(lam[pos])).sum())
    fit = power_law_fit(delta, lam)  # log Δ = c − ψ log λ, so β = −ψ
    return SGDRegResult(lam, delta, flat, total, kappa, l_sgd, -fit.psi, fit.r2, fit.n, dim, noise.n_samples,
                        names)


# --------------------------------------------------------------------------------------------- measures
NEEDS = ("model", "train_data", "hparams")


def _reg(ctx: Context, settings: SGDRegSettings) -> SGDRegResult:
    return sgd_effective_regularization(ctx, settings)


def _details(r: SGDRegResult) -> dict:
    return {"k": len(r.eigenvalues), "n_used": r.n_used, "lambda_max": float(r.eigenvalues[0]),
            "n_samples": r.n_samples}


@measure("sgd.effective_reg", needs=NEEDS, sign=1, family="physics", reference=REFERENCE)
def sgd_effective_reg(ctx: Context) -> Value:
    """SGD-induced effective-loss term of the solution, L_SGD = Σ_n ½(Δ_n − Δ₀) ln λ_n.

    λ_n, v_n: top-8 Hessian eigenpairs; Δ_n = (α/2B) v_nᵀ C v_n, the SGD noise along v_n; Δ₀ the mean
    noise along the orthogonal (flat) directions (derivation in the module docstring). Sign +1: a solution
    that is sharp along the directions where SGD's noise is strong pays a large effective penalty, i.e. is
    disfavoured by SGD and expected to generalize worse. Details: L_SGD/Δ₀ (dimensionless).
    """
    r = ctx.shared(_reg, DEFAULT)
    return Value(r.effective_reg, {**_details(r), "scaled": r.effective_reg_scaled})


@measure("sgd.noise_anisotropy", needs=NEEDS, sign=-1, family="physics", reference=REFERENCE)
def sgd_noise_anisotropy(ctx: Context) -> Value:
    """Anisotropy of the SGD noise, ⟨κ_n⟩ = mean over the top-8 Hessian directions of Δ_n / Δ₀.

    Δ_n = (α/2B) v_nᵀ C v_n along the Hessian eigenvectors, Δ₀ the mean along the orthogonal directions.
    Sign −1 (a hypothesis): anisotropy is what turns the entropic preference P ∝ F into P ∝ F^κ, a
    stronger push towards flat solutions (PRL 2023). Grows with the parameter count N (Δ₀ ∝ 1/N).
    """
    r = ctx.shared(_reg, DEFAULT)
    return Value(r.anisotropy, {**_details(r), "kappa_1": float(r.kappa[0]),
                                "top_k_fraction": float(r.noise.sum() / r.noise_trace) if r.noise_trace > 0
                                else math.nan})


@measure("sgd.noise_curvature_exponent", needs=NEEDS, sign=-1, family="physics", reference=REFERENCE)
def sgd_noise_curvature_exponent(ctx: Context) -> Value:
    """Exponent β of the SGD noise–curvature relation, Δ_n ∝ λ_n^β over the top-8 Hessian directions.

    Least squares of log Δ_n on log λ_n (directions with λ_n > 0). Sign −1 (a hypothesis): a steeper rise of
    noise with curvature is a stronger landscape-dependent annealing (Feng & Tu 2021), which drives SGD to
    flatter solutions. Details: fit R².
    """
    r = ctx.shared(_reg, DEFAULT)
    return Value(r.exponent, {**_details(r), "r2": r.exponent_r2})


@measure("sgd.noise_trace", needs=NEEDS, sign=-1, family="physics", reference=REFERENCE)
def sgd_noise_trace(ctx: Context) -> Value:
    """Total SGD noise temperature at the solution, (α/2B) tr C (C: per-sample gradient covariance).

    tr C = mean_i ‖g_i‖² − ‖ḡ‖² from per-sample gradients. Sign −1 (a hypothesis): the noise strength is
    the strength of SGD's effective regularization (larger α/B, better generalization), though tr C also
    grows with sharpness.
    """
    r = ctx.shared(_reg, DEFAULT)
    return Value(r.noise_trace, _details(r))
