"""Heavy-tailed self-regularization measures (Martin & Mahoney 2021, "Predicting trends in the quality of
state-of-the-art neural networks without access to training or testing data", Nat. Commun. 12:4122;
the WeightWatcher tool).

Each layer's empirical spectral density (ESD) is the set of eigenvalues λ of X = WᵀW, i.e. the squared
singular values of the weight as a matrix (out, in·k) — WeightWatcher's default ``normalize=False``; the
1/N normalisation of X = WᵀW/N rescales every λ of a layer alike, which leaves α unchanged and shifts
log λ_max by log N. Conv kernels use the reshaped matrix (singular values shared with
``measures.spectral``), not WeightWatcher's per-kernel-position slices. Biases are excluded.

Power-law fit (Clauset, Shalizi & Newman 2009, as WeightWatcher's ``WW_powerlaw.WWFit``): for each candidate
x_min among the sorted eigenvalues (all but the largest), the continuous MLE over the tail λ ≥ x_min,

    α̂(x_min) = 1 + n / Σ_{λ_i ≥ x_min} ln(λ_i / x_min),   n = #{λ_i ≥ x_min},

and the Kolmogorov–Smirnov distance between the tail's empirical CDF (WeightWatcher's convention: j/n at the
j-th smallest tail value, j = 0 … n−1) and the fitted CDF 1 − (λ/x_min)^{1−α̂}; the x_min with the smallest
distance is kept. All candidates are evaluated at once (vectorised, blockwise in memory).

Layers are skipped when they have fewer than ``MIN_EVALS`` = 10 eigenvalues (WeightWatcher's default
``min_evals``), counting only those above the numerical-rank threshold λ > λ_max·(max(shape)·ε)², which are
kept out of the fit because log 0 is undefined, as WeightWatcher and its reference analyses do (a power law
cannot be told apart from anything else on a handful of values). The measures average over the layers that remain
and name the skipped ones in their details (``skipped_layers``); a model none of whose layers has enough
eigenvalues (small conv nets: a 3×3 conv with 8 filters has at most 8) raises ``NotApplicable``, with the
weight shapes, since the exponent is undefined there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from measures.context import Context
from measures.registry import NotApplicable, Value, measure
from measures.spectral import layer_svdvals

MIN_EVALS = 10
_BLOCK = 1 << 22  # entries of the (candidates × eigenvalues) KS matrix evaluated at once


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int  # eigenvalues ≥ xmin
    n: int  # eigenvalues fitted


def fit_power_law(evals: torch.Tensor) -> PowerLawFit:
    """Clauset–Shalizi–Newman power-law fit of positive values with x_min chosen by the KS distance
    (module docstring). ``evals``: a 1-D tensor of at least two positive values."""
    x = torch.sort(torch.as_tensor(evals, dtype=torch.float64).flatten()).values
    if len(x) < 2 or not bool((x > 0).all()):
        raise ValueError("a power-law fit needs at least two positive values")
    n_all = len(x)
    logx = x.log()
    tail_log_sum = logx.flip(0).cumsum(0).flip(0)  # Σ_{j ≥ i} log x_j
    i = torch.arange(n_all - 1)
    n = (n_all - i).double()  # tail sizes for each candidate x_min = x[i]
    alpha = 1 + n / (tail_log_sum[i] - n * logx[i])  # inf where the whole tail equals x_min
    ks = torch.full((n_all - 1,), math.inf, dtype=torch.float64)
    j = torch.arange(n_all)
    rows = max(1, _BLOCK // n_all)
    for start in range(0, n_all - 1, rows):
        ii = i[start:start + rows]  # (b,)
        log_ratio = logx[None, :] - logx[ii, None]  # (b, N): log(x_j / x_min)
        model_cdf = 1 - torch.exp((1 - alpha[ii, None]) * log_ratio)
        empirical = (j[None, :] - ii[:, None]) / n[ii, None]  # j-th tail value → (j − i)/n
        dist = (model_cdf - empirical).abs().masked_fill(j[None, :] < ii[:, None], 0.0)
        ks[ii] = dist.max(1).values
    ks = torch.where(torch.isfinite(alpha) & (alpha > 1), ks, torch.full_like(ks, math.inf))
    if not bool(torch.isfinite(ks).any()):
        raise ValueError("no x_min gives a finite power-law exponent (all values equal?)")
    best = int(ks.argmin())
    return PowerLawFit(alpha[best].item(), x[best].item(), ks[best].item(), int(n[best].item()), n_all)


def layer_esds(ctx: Context) -> tuple[torch.Tensor | None, ...]:
    """Each layer's eigenvalues λ = σ² of WᵀW above the numerical-rank threshold, or None for a layer with
    fewer than ``MIN_EVALS`` of them."""
    out = []
    for w, sv in zip(ctx.weights, ctx.shared(layer_svdvals)):
        eps = torch.finfo(w.dtype).eps
        kept = sv[sv > sv[0] * max(ctx.matrix(w).shape) * eps] ** 2
        out.append(kept if len(kept) >= MIN_EVALS else None)
    return tuple(out)


def layer_power_law_fits(ctx: Context) -> tuple[PowerLawFit | None, ...]:
    """The power-law fit of each layer's ESD (None for skipped layers)."""
    return tuple(None if e is None else fit_power_law(e) for e in ctx.shared(layer_esds))


def _fitted(ctx: Context) -> list[tuple[PowerLawFit, float]]:
    """(fit, log10 λ_max) of each layer that has at least ``MIN_EVALS`` eigenvalues; ``NotApplicable`` if none
    has."""
    fits = ctx.shared(layer_power_law_fits)
    esds = ctx.shared(layer_esds)
    kept = [(f, math.log10(e.max().item())) for f, e in zip(fits, esds) if f is not None]
    if not kept:
        shapes = [tuple(ctx.matrix(w).shape) for w in ctx.weights]
        raise NotApplicable(f"no layer has at least {MIN_EVALS} nonzero eigenvalues of WᵀW (weight matrices "
                            f"{shapes}), the fewest a power-law fit uses (WeightWatcher's min_evals)")
    return kept


def _details(ctx: Context, kept) -> dict:
    skipped = [layer.name for layer, e in zip(ctx.layers, ctx.shared(layer_esds)) if e is None]
    return {"layers": len(kept), "skipped": len(skipped), "skipped_layers": skipped,
            "max_ks_distance": max(f.ks_distance for f, _ in kept)}


@measure("alpha_mean", needs=("model",), sign=1, family="heavy_tail",
         invariances=("permutation",),
         reference="Martin & Mahoney 2021, Nat. Commun. 12:4122; Clauset, Shalizi & Newman 2009")
def alpha_mean(ctx: Context) -> Value:
    """Mean power-law exponent α of the layers' eigenvalue spectra (WeightWatcher's ``alpha``).

    (1/L) Σ_l α_l, α_l the Clauset–Shalizi–Newman fit of the ESD of W_lᵀW_l with x_min chosen by the KS
    distance; L counts the layers with ≥ 10 eigenvalues (module docstring). Smaller α means heavier tails,
    which Martin & Mahoney associate with better-trained, better-generalising layers: sign +1.
    """
    kept = _fitted(ctx)
    return Value(sum(f.alpha for f, _ in kept) / len(kept), _details(ctx, kept))


@measure("alpha_weighted", needs=("model",), sign=1, family="heavy_tail",
         invariances=("permutation",),
         reference="Martin & Mahoney 2021, Nat. Commun. 12:4122, 'α̂' metric")
def alpha_weighted(ctx: Context) -> Value:
    """Mean over layers of α weighted by the log largest eigenvalue, (1/L) Σ_l α_l log10 λ_max,l.

    WeightWatcher's ``alpha_weighted`` (α̂): λ_max,l = ‖W_l‖_2² the largest eigenvalue of W_lᵀW_l, log base
    10 as in WeightWatcher; L counts the layers with ≥ 10 eigenvalues.
    """
    kept = _fitted(ctx)
    return Value(sum(f.alpha * log_max for f, log_max in kept) / len(kept), _details(ctx, kept))


@measure("log_spectral_norm", needs=("model",), sign=1, family="heavy_tail",
         invariances=("permutation",),
         reference="Martin & Mahoney 2021, Nat. Commun. 12:4122 (WeightWatcher 'log_spectral_norm')")
def log_spectral_norm(ctx: Context) -> Value:
    """Mean over layers of the log largest eigenvalue, (1/L) Σ_l log10 λ_max,l = (1/L) Σ_l log10 ‖W_l‖_2².

    WeightWatcher's summary (a mean, log base 10) over the same layers as ``alpha_weighted`` (those with
    ≥ 10 eigenvalues). The sum over all layers would be ``log_prod_of_spec`` / ln 10.
    """
    kept = _fitted(ctx)
    return Value(sum(log_max for _, log_max in kept) / len(kept), _details(ctx, kept))
