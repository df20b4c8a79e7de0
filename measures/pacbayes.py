"""PAC-Bayesian flatness measures (Jiang et al. 2020, App. C: PAC-Bayes and magnitude-aware perturbation
bounds; after Dziugaite & Roy 2017 and Neyshabur et al. 2017).

Each measure needs the *largest noise scale σ the trained network tolerates*: the largest σ such that the
expected drop of the training accuracy under random weight noise is at most ``TARGET_ACCURACY_DROP``
(Jiang: 0.1). Two noise models, each searched once per model and shared by three measures
(``ctx.shared(_sigma_search, magnitude)``):

* isotropic: u ~ N(0, σ² I), all parameters (weights and biases);
* magnitude-aware: u_i ~ N(0, σ'²·w_i² + ε²) independently, ε = ``MAGNITUDE_EPS`` (Jiang: 1e-3).

**σ is a standard deviation.** ``torch.normal(mean, std)`` takes a standard deviation; a widely copied
implementation (``_perturbed_model`` in nitarshan/robust-generalization-measures, the code of Dziugaite et
al. 2020, and its copies) passes σ² there, and σ'²w_i² + ε² (a variance) in the magnitude-aware case, so the
noise it applies has standard deviation σ² (resp. σ'²w_i² + ε²) while the bound formulas read it as σ (resp.
the square root).
Here the noise is σ·z (resp. √(σ'²w_i² + ε²)·z) with z standard normal; ``tests/unit/measures/test_sharpness.py``
pins this with a closed-form case.

The σ search (:func:`_sigma_search`): bisection on log σ inside ``SIGMA_BOUNDS`` (``MAG_SIGMA_BOUNDS`` for
σ'), at most ``SEARCH_STEPS`` probes, stopping early when the estimated drop is within ``SEARCH_TOL`` of the
target; the answer is the largest probe whose drop is at most target + tol (:func:`bisect_log`). Each probe
estimates the expected drop with M noise draws (:func:`mc_samples`: 4 for networks of ≥ 65,536 parameters,
more for smaller ones, up to 64) on the whole training set, or on a seeded subset of N samples when
``ctx.extras["curvature_samples"]`` = N (:func:`curvature_data`, an option for large datasets; shared with
the sharpness and Hessian families). The standard-normal draws z (one (M, #params) matrix from
``ctx.generator``) are drawn once and reused for every probe (common random numbers), so the estimated drop
is a deterministic, nearly monotone function of σ and the bisection is well posed. The perturbed copies go
through the network together (``Context.copies_logits``: one batched matmul per layer for the zoo's MLPs,
copy by copy for conv nets, ``torch.func.vmap`` over ``functional_call`` for any other model). A search whose
crossing lies outside its range is reported censored in the details (``at_bound = "lower"/"upper"``), never
silently clipped.

Bound terms, with w all ω parameters flattened, w⁰ the initial ones and m the number of training samples
(the log(m/σ) + 10 terms are Jiang's constants, kept for comparability):

* ``pacbayes.init``  (Jiang eq. (48)): ‖w − w⁰‖²/(4σ²) + log(m/σ) + 10
* ``pacbayes.orig``  (eq. (49)):       ‖w‖²/(4σ²) + log(m/σ) + 10
* ``pacbayes.flatness`` (eq. (53)):    1/σ²
* ``pacbayes.mag.init`` (eq. (56)):
  ¼ Σ_i log[(ε² + (σ'² + 1)‖w − w⁰‖²/ω) / (ε² + σ'²(w_i − w⁰_i)²)] + log(m/σ') + 10
* ``pacbayes.mag.orig`` (eq. (57)): the same with ‖w‖² in the numerator
* ``pacbayes.mag.flatness`` (eq. (61)): 1/σ'²

Equation numbers are those the implementation of Dziugaite et al. 2020 cites for these measures (not
re-checked against the printed paper). The magnitude-aware forms are kept as printed: the denominator uses (w_i − w⁰_i)²
in both the init and orig variants, although the noise the search applies is scaled by |w_i| (the
self-consistent KL would use σ'²w_i² + ε² there); this is Jiang's definition, not a derivation.

Sample size. Each of the six is reported as √(v/m), v the term above (``sample_size="sqrt"`` in the registry:
the adjustment the code of Dziugaite et al. 2020 applies to every measure before ranking; v and m are kept in
the details as ``unadjusted`` and ``m``). The complexity terms are meant to be divided by m, so a zoo that
varies the training-set size would otherwise rank them backwards along m. The adjustment needs v ≥ 0:
‖·‖²/(4σ²) ≥ 0 and log(m/σ) + 10 > 0 for σ ≤ 1; the magnitude-aware sum is ≥ 0 for the init prior by
Jensen's inequality (mean_i log(ε² + σ'²d_i²) ≤ log(ε² + σ'² mean_i d_i²), d = w − w⁰), and log(m/σ') + 10 > 0
for σ' ≤ 10. The orig prior's sum could be negative only if ‖w‖² were well below ‖w − w⁰‖²; the registry then
records the measure as failed rather than ranking it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from measures.context import Context
from measures.registry import Value, measure

TARGET_ACCURACY_DROP = 0.1  # Jiang et al.'s target deviation of the training accuracy
SEARCH_TOL = 0.01  # stop once |estimated drop − target| ≤ this
SEARCH_STEPS = 9  # bisection probes at most: the final bracket is ln(1e5)/2⁹ = 0.022 wide in log σ (2.3 % in σ)
SIGMA_BOUNDS = (1e-5, 1.0)  # isotropic σ search range (absolute, parameter units)
MAG_SIGMA_BOUNDS = (1e-4, 10.0)  # magnitude-aware σ' search range (relative to |w_i|)
MAGNITUDE_EPS = 1e-3  # ε of the magnitude-aware noise (Jiang: 1e-3)
MC_SAMPLES = 4  # noise draws per probe, at least …
MC_DRAW_BUDGET = 2 ** 18  # … and at least this many (draws × parameters), i.e. more draws for small networks …
MC_MAX_SAMPLES = 64  # … up to this many
BOUND_CONSTANT = 10.0  # the "+ 10" of Jiang's bound terms


# ----------------------------------------------------------------------------------------- shared helpers
def train_subsample(ctx: Context, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of a seeded permutation of the training set (the whole set when n is None or
    ≥ its size).

    One permutation per model (generator tag ``"perturbation.subsample"``), so subsets of different sizes
    are nested; used by the PAC-Bayes, sharpness and Hessian families.
    """
    x, y = ctx.x_train, ctx.y_train
    if n is None or n >= len(y):
        return x, y
    perm = ctx.shared(_permutation)
    idx = perm[:n].to(y.device)
    return x[idx], y[idx]


def curvature_data(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples the curvature measures (Hessian, PAC-Bayes, sharpness) are computed on: the whole training
    set, or a seeded subset of N samples (:func:`train_subsample`) when ``ctx.extras["curvature_samples"]`` = N,
    an explicit option for datasets too large for full-set passes (``measures.curvature_samples`` in the
    benchmark's config). The size used is recorded in each measure's details (``samples``)."""
    n = ctx.extras.get("curvature_samples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"curvature_samples must be a positive integer or None, got {n!r}")
    return train_subsample(ctx, n)


def _permutation(ctx: Context) -> torch.Tensor:
    return torch.randperm(len(ctx.y_train), generator=ctx.generator("perturbation.subsample"))


def bisect_log(f: Callable[[float], float], bounds: tuple[float, float], target: float, *, tol: float,
               steps: int) -> dict:
    """Largest probed s in ``bounds`` with f(s) ≤ target + tol, for a nondecreasing f, by bisection on log s.

    Probes the geometric midpoint of the bracket [lo, hi]: f(s) > target + tol moves hi down to s, anything
    else moves lo up to s, and a probe with |f(s) − target| ≤ tol ends the search (it is at the target).
    Stops after ``steps`` probes. Every probe lies above all earlier accepted ones, so the answer is the
    early-stopping probe, else the final lo; when no probe was accepted, ``bounds[0]`` is evaluated once
    more (one extra probe) and returned. Returns ``s``, ``f`` = f(s), the final ``bracket`` (the crossing
    lies inside it for a monotone f), ``probes`` and ``at_bound``: "upper" when no probe came within tol and
    all were below the target (the crossing may lie above ``bounds[1]``), "lower" when even f(bounds[0]) is
    above target + tol (it lies below ``bounds[0]``); else None. After k halvings without early stop, s is
    within a factor exp((ln hi₀ − ln lo₀)/2ᵏ) below the crossing.
    """
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    best: tuple[float, float] | None = None  # (s, f(s)) of the largest accepted probe
    went_down, probes = False, 0
    for probes in range(1, steps + 1):
        mid = 0.5 * (lo + hi)
        s = math.exp(mid)
        fs = f(s)
        if fs > target + tol:
            hi, went_down = mid, True
            continue
        best = (s, fs)
        if abs(fs - target) <= tol:
            break
        lo = mid
    at_bound = None
    if best is None:  # every probe was above the target: try the lower end of the range itself
        s = bounds[0]
        best = (s, f(s))
        probes += 1
        if best[1] > target + tol:
            at_bound = "lower"
    elif not went_down and abs(best[1] - target) > tol:
        at_bound = "upper"
    return {"s": best[0], "f": best[1], "bracket": (math.exp(lo), math.exp(hi)), "probes": probes,
            "at_bound": at_bound}


def batched_error(ctx: Context, flats: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Training error of each of several flat parameter vectors ``flats`` (copies, params) on (x, y).

    All copies run through the network together (:meth:`Context.copies_logits`), on chunks of samples that keep
    the activations within those of one ``ctx.chunk``-sample pass (:meth:`Context.copies_step`).
    """
    copies = flats.shape[0]
    step = ctx.copies_step(copies)
    wrong = torch.zeros(copies, device=flats.device)
    params = ctx.unflatten_rows(flats)
    with torch.no_grad():
        for i in range(0, len(y), step):
            z = ctx.copies_logits(params, x[i:i + step])  # (copies, batch, classes)
            wrong += (z.argmax(-1) != y[i:i + step]).sum(-1)
    return wrong / len(y)


def noise_std(w: torch.Tensor, sigma: float, magnitude: bool, eps: float = MAGNITUDE_EPS) -> torch.Tensor:
    """Per-parameter standard deviation of the perturbation: σ (isotropic) or √(σ²w_i² + ε²) (magnitude-aware).

    A standard deviation, not a variance: the noise is ``noise_std(...) * z`` with z ~ N(0, 1).
    """
    if magnitude:
        return torch.sqrt(sigma ** 2 * w ** 2 + eps ** 2)
    return torch.full_like(w, sigma)


# ----------------------------------------------------------------------------------------- σ search
@dataclass(frozen=True)
class SigmaSearch:
    sigma: float  # the noise scale found (a standard deviation; relative to |w_i| when magnitude-aware)
    drop: float  # estimated expected accuracy drop at sigma
    details: dict


def mc_samples(num_params: int) -> int:
    """Noise draws per probe: ⌈MC_DRAW_BUDGET/ω⌉ clamped to [MC_SAMPLES, MC_MAX_SAMPLES].

    The variance of the accuracy drop between random directions shrinks roughly as 1/ω (concentration of
    measure), so a fixed budget of draws × parameters keeps the Monte-Carlo error of the search about the same
    across network sizes, at a roughly constant cost: 4 draws for ω ≥ 65,536, 64 for ω ≤ 4,096.
    """
    return min(MC_MAX_SAMPLES, max(MC_SAMPLES, math.ceil(MC_DRAW_BUDGET / num_params)))


def _sigma_search(ctx: Context, magnitude: bool, *, target: float = TARGET_ACCURACY_DROP,
                  samples: int | None = None, n: int | None = None, steps: int = SEARCH_STEPS,
                  tol: float = SEARCH_TOL, bounds: tuple[float, float] | None = None,
                  eps: float = MAGNITUDE_EPS) -> SigmaSearch:
    """Largest σ whose expected training-accuracy drop under Gaussian weight noise is ≤ ``target`` (+ tol).

    Drop(σ) = (1/M) Σ_j err(w + std(σ) ⊙ z_j) − err(w) on :func:`curvature_data` (the whole training set by
    default; ``n``: a seeded n-sample subset instead), with z_j ~ N(0, I) drawn once (M = ``samples``,
    default :func:`mc_samples`) and std(σ) from :func:`noise_std`.
    """
    bounds = bounds or (MAG_SIGMA_BOUNDS if magnitude else SIGMA_BOUNDS)
    x, y = curvature_data(ctx) if n is None else train_subsample(ctx, n)
    w = ctx.flatten(ctx.params)
    samples = mc_samples(w.numel()) if samples is None else samples
    tag = "pacbayes.noise.mag" if magnitude else "pacbayes.noise"
    z = torch.randn(samples, w.numel(), generator=ctx.generator(tag)).to(w.device)  # (samples, params)
    base = batched_error(ctx, w[None], x, y)[0].item()

    def drop(sigma: float) -> float:
        flats = w + noise_std(w, sigma, magnitude, eps) * z
        return batched_error(ctx, flats, x, y).mean().item() - base

    found = bisect_log(drop, bounds, target, tol=tol, steps=steps)
    details = {"sigma": found["s"], "drop": found["f"], "base_error": base, "bracket": list(found["bracket"]),
               "probes": found["probes"], "at_bound": found["at_bound"], "target": target, "mc_samples": samples,
               "samples": len(y), "magnitude_aware": magnitude}
    if magnitude:
        details["eps"] = eps
    return SigmaSearch(found["s"], found["f"], details)


# ----------------------------------------------------------------------------------------- bound terms
def pacbayes_bound(sq_norm: float, sigma: float, m: int) -> float:
    """Jiang et al.'s PAC-Bayes term ‖v‖²/(4σ²) + log(m/σ) + 10, σ a standard deviation."""
    return sq_norm / (4 * sigma ** 2) + math.log(m / sigma) + BOUND_CONSTANT


def mag_bound(ref_sq_norm: float, dist: torch.Tensor, scale: float, coef: float, m: int,
              eps: float = MAGNITUDE_EPS) -> float:
    """Jiang et al.'s magnitude-aware term ¼ Σ_i log[(ε² + coef·‖v‖²/ω)/(ε² + scale²(w_i − w⁰_i)²)] + log(m/scale) + 10.

    ``ref_sq_norm`` = ‖v‖² (v = w − w⁰ or w), ``dist`` = w − w⁰ (flat, ω entries), ``scale`` = σ' (PAC-Bayes,
    with coef = σ'² + 1) or α' (sharpness, with coef = α'² + 4 log(2ω)).
    """
    omega = dist.numel()
    num = eps ** 2 + coef * ref_sq_norm / omega
    den = eps ** 2 + scale ** 2 * dist.double() ** 2
    return 0.25 * torch.log(num / den).sum().item() + math.log(m / scale) + BOUND_CONSTANT


def dist_init(ctx: Context) -> torch.Tensor:
    return ctx.flatten(ctx.params) - ctx.flatten(ctx.init_params)


def _value(search: SigmaSearch, value: float) -> Value:
    return Value(value, dict(search.details))


# ----------------------------------------------------------------------------------------- measures
@measure("pacbayes.init", needs=("model", "init_model", "train_data"), sign=1, family="pacbayes", version=2,
         sample_size="sqrt",
         invariances=("permutation",), seeded=True,
         reference="Jiang et al. 2020, eq. (48); Dziugaite & Roy 2017; Neyshabur et al. 2017; Dziugaite et al. "
                   "2020 (sample-size adjustment)")
def pacbayes_init(ctx: Context) -> Value:
    """PAC-Bayes bound term with the prior at initialization, √(v/m), v = ‖w − w⁰‖²/(4σ²) + log(m/σ) + 10.

    σ: the largest standard deviation of isotropic Gaussian weight noise N(0, σ²I) whose expected training
    accuracy drop is ≤ 0.1 (module docstring: bisection on log σ, ≥ 4 common-random-number draws per probe,
    the whole training set). w, w⁰: all parameters; m: training-set size. Reported as √(v/m) (module
    docstring, "Sample size"); v is kept in the details as ``unadjusted``.
    """
    s = ctx.shared(_sigma_search, False)
    dist = dist_init(ctx)
    return _value(s, pacbayes_bound((dist.double() ** 2).sum().item(), s.sigma, len(ctx.y_train)))


@measure("pacbayes.orig", needs=("model", "train_data"), sign=1, family="pacbayes", version=2, sample_size="sqrt",
         invariances=("permutation",), seeded=True,
         reference="Jiang et al. 2020, eq. (49); Dziugaite & Roy 2017; Neyshabur et al. 2017; Dziugaite et al. "
                   "2020 (sample-size adjustment)")
def pacbayes_orig(ctx: Context) -> Value:
    """PAC-Bayes bound term with the prior at the origin, √(v/m), v = ‖w‖²/(4σ²) + log(m/σ) + 10.

    σ as in ``pacbayes.init`` (the same search, shared); reported as √(v/m), m the training-set size.
    """
    s = ctx.shared(_sigma_search, False)
    w = ctx.flatten(ctx.params)
    return _value(s, pacbayes_bound((w.double() ** 2).sum().item(), s.sigma, len(ctx.y_train)))


@measure("pacbayes.flatness", needs=("model", "train_data"), sign=1, family="pacbayes", version=2,
         sample_size="sqrt", invariances=("permutation",), seeded=True,
         reference="Jiang et al. 2020, eq. (53); Dziugaite et al. 2020 (sample-size adjustment)")
def pacbayes_flatness(ctx: Context) -> Value:
    """PAC-Bayes flatness √(v/m), v = 1/σ², σ the largest tolerated isotropic Gaussian noise standard deviation.

    σ as in ``pacbayes.init`` (the same search, shared); larger = sharper. Reported as √(v/m) = 1/(σ√m),
    m the training-set size.
    """
    s = ctx.shared(_sigma_search, False)
    return _value(s, 1.0 / s.sigma ** 2)


@measure("pacbayes.mag.init", needs=("model", "init_model", "train_data"), sign=1, family="pacbayes", version=2,
         sample_size="sqrt",
         invariances=("permutation",), seeded=True,
         reference="Jiang et al. 2020, eq. (56) (magnitude-aware perturbation bound); Dziugaite et al. 2020 "
                   "(sample-size adjustment)")
def pacbayes_mag_init(ctx: Context) -> Value:
    """Magnitude-aware PAC-Bayes term, prior at initialization, reported as √(v/m), m the training-set size.

    v = ¼ Σ_i log[(ε² + (σ'² + 1)‖w − w⁰‖²/ω) / (ε² + σ'²(w_i − w⁰_i)²)] + log(m/σ') + 10, where σ' is the
    largest relative noise scale with noise u_i ~ N(0, σ'²w_i² + ε²) (standard deviation √(σ'²w_i² + ε²))
    whose expected training accuracy drop is ≤ 0.1; ε = 1e-3, ω = number of parameters, m = training-set
    size.
    """
    s = ctx.shared(_sigma_search, True)
    dist = dist_init(ctx)
    return _value(s, mag_bound((dist.double() ** 2).sum().item(), dist, s.sigma, s.sigma ** 2 + 1,
                               len(ctx.y_train)))


@measure("pacbayes.mag.orig", needs=("model", "init_model", "train_data"), sign=1, family="pacbayes", version=2,
         sample_size="sqrt",
         invariances=("permutation",), seeded=True,
         reference="Jiang et al. 2020, eq. (57) (magnitude-aware perturbation bound); Dziugaite et al. 2020 "
                   "(sample-size adjustment)")
def pacbayes_mag_orig(ctx: Context) -> Value:
    """Magnitude-aware PAC-Bayes term, prior at the origin, reported as √(v/m), m the training-set size.

    v = ¼ Σ_i log[(ε² + (σ'² + 1)‖w‖²/ω) / (ε² + σ'²(w_i − w⁰_i)²)] + log(m/σ') + 10 (the denominator as
    printed by Jiang et al., hence the need for initial weights); σ' as in ``pacbayes.mag.init`` (shared
    search).
    """
    s = ctx.shared(_sigma_search, True)
    w = ctx.flatten(ctx.params)
    return _value(s, mag_bound((w.double() ** 2).sum().item(), dist_init(ctx), s.sigma, s.sigma ** 2 + 1,
                               len(ctx.y_train)))


@measure("pacbayes.mag.flatness", needs=("model", "train_data"), sign=1, family="pacbayes", version=2,
         sample_size="sqrt",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), seeded=True,
         reference="Jiang et al. 2020, eq. (61) (magnitude-aware perturbation bound); Dziugaite et al. 2020 "
                   "(sample-size adjustment)")
def pacbayes_mag_flatness(ctx: Context) -> Value:
    """Magnitude-aware PAC-Bayes flatness √(v/m), v = 1/σ'², σ' the largest tolerated relative noise scale.

    Noise u_i ~ N(0, σ'²w_i² + ε²), ε = 1e-3; σ' as in ``pacbayes.mag.init`` (shared search). Reported as
    √(v/m) = 1/(σ'√m), m the training-set size.
    """
    s = ctx.shared(_sigma_search, True)
    return _value(s, 1.0 / s.sigma ** 2)
