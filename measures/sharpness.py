"""Sharpness: how much the training loss or error can rise within a small box or ball around the solution, in
the worst case (Keskar et al. 2017; Jiang et al. 2020, App. C; Andriushchenko et al. 2023) or on average over
random perturbations (Andriushchenko et al. 2023).

Two kinds of measure share one ascent routine (:func:`ascent`):

* **Radius search** (Jiang et al.'s sharpness bounds): the largest α such that the worst-case training-error
  increase within the box |δ_i| ≤ α (magnitude-aware: |δ_i| ≤ α'|w_i| + ε) is at most
  ``TARGET_ERROR_INCREASE`` (Jiang: a 0.1 accuracy deviation). Bisection on log α (``pacbayes.bisect_log``,
  ``SEARCH_STEPS`` probes at most, early stop within ``SEARCH_TOL``) inside ``ALPHA_BOUNDS`` /
  ``MAG_ALPHA_BOUNDS``; each probe runs ``SEARCH_ASCENT_STEPS`` ascent steps on the cross-entropy and takes
  the largest error over the visited points. One search per noise model, shared by three measures
  (``ctx.shared(_alpha_search, magnitude)``).
* **Fixed radius** (Andriushchenko et al. 2023): max_{‖δ ⊘ c‖_p ≤ ρ} L(w + δ) − L(w) for p ∈ {2, ∞}, with
  c = 1 (plain) or c = |w| (adaptive, ASAM-style elementwise scaling), ρ = ``RHO[(p, adaptive)]``,
  ``FIXED_ASCENT_STEPS`` ascent steps.

The ascent. In scaled coordinates u = δ ⊘ c the constraint is ‖u‖_p ≤ ρ; each step moves to the boundary
point that maximises the linearised loss, u ← ρ·g/‖g‖₂ (p = 2) or u ← ρ·sign(g) (p = ∞), g = c ⊙ ∇L(w + c ⊙ u):
projected (normalised / sign) gradient ascent in its infinite-step-size limit, i.e. the SAM step
(p = 2) or FGSM step (p = ∞) iterated. For a convex function it never decreases the objective (for a
quadratic it is the power method); in general the best visited point is kept. The ascent starts at the
solution itself (δ = 0), so its first step is the SAM / FGSM step along the training gradient; a seeded
random start found the same maxima to within a few per cent on the reference MLP, and starting at 0 leaves
the ascent free of randomness (only an optional subset is seeded) and exactly equivariant to relabelling hidden
units. (At an exactly stationary point the gradient would vanish and the ascent could not move; trained
networks are not exactly stationary.) Every visited point costs one forward and, except the last, one
backward pass; the loss and the error come from the same forward. The first point, δ = 0, is the solution
itself whatever the box, so the radius searches' probes and the fixed radii of a model take it from one shared
evaluation (``_at_solution``).

The radius search and the fixed radii run on the whole training set (``pacbayes.curvature_data``; a seeded
subset of N samples when ``ctx.extras["curvature_samples"]`` = N, an option for large datasets, nested with the
PAC-Bayes and Hessian subsets), so the max is an n-sharpness with n the training-set size, not an average of
per-batch m-sharpness values (those are below); all ω parameters (weights and biases) are perturbed. The
number of samples is in the details (``samples``).

The magnitude-aware ε. Jiang et al. use ε = 1e-3 in the magnitude-aware noise N(0, σ'²w_i² + ε²), where it is
small next to the Gaussian noise a trained network tolerates (σ'|w_i| ≈ 2e-2 for the reference
40→256→256→10 MLP). A *worst-case* box of half-width 1e-3 is already about as large as the whole box such a
network tolerates (α ≈ 1.2e-3 for the same MLP; the ε-box alone used half of the 0.1 error budget), so with
ε = 1e-3 the search would mostly measure ε and would hit its lower bound on sharper networks. The box here uses
``MAG_EPS`` = 1e-5 (on that MLP ε = 1e-4 and 1e-5 give the same α'), in the search and in the bound term alike.

Bound terms, with m the training-set size and ε = ``MAG_EPS``:

* ``sharpness.init``: ‖w − w⁰‖² log(2ω)/(4α²) + log(m/α) + 10
* ``sharpness.orig``: ‖w‖² log(2ω)/(4α²) + log(m/α) + 10
* ``sharpness.flatness``: 1/α²
* ``sharpness.mag.init``: ¼ Σ_i log[(ε² + (α'² + 4 log(2ω))‖w − w⁰‖²/ω) / (ε² + α'²(w_i − w⁰_i)²)] + log(m/α') + 10
* ``sharpness.mag.orig``: the same with ‖w‖² in the numerator
* ``sharpness.mag.flatness``: 1/α'²

They are the PAC-Bayes terms with the Gaussian σ traded for the box half-width α (ω Gaussian coordinates of
standard deviation σ stay within |u_i| ≤ σ√(2 log(2ω/δ)) with probability 1 − δ), with Jiang et al.'s
constants. The log term is taken as log(m/α), α being the only scale the sharpness search produces (a reading
with the PAC-Bayes σ would tie the two families together). The equation numbers in the references
((50)–(52), (58)–(60)) are inferred from the order of the appendix given the PAC-Bayes ones ((48), (49),
(53), (56), (57), (61)); they, and the exact constants, were not checked against the printed paper.

Sample size. The six bound terms are reported as √(v/m), v the term above (``sample_size="sqrt"``: the
adjustment the code of Dziugaite et al. 2020 applies before ranking; v and m stay in the details), for the
reasons given in ``measures.pacbayes``; v ≥ 0 by the same arguments (α ≤ 1, α' ≤ 10, and Jensen's inequality
for the magnitude-aware sums, whose numerator coefficient α'² + 4 log(2ω) exceeds the denominator's α'²).
The fixed-radius measures are loss increases, not bounds, and are reported as they are.

The m-sharpness and average-case measures after Andriushchenko et al. 2023 (``sharpness.adaptive.m.*``,
``sharpness.adaptive.avg.*``, ``sharpness.avg.l2``) are in :mod:`measures.batch_sharpness`, with their ρ rule.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from measures.batch_sharpness import (  # noqa: F401  (the m-sharpness names, importable from here too)
    APGD_ITERS,
    AVG_DRAWS,
    BATCH_SAMPLES,
    BATCH_SIZE,
    RHO_AVG,
    RHO_M,
    BatchedEvaluate,
    apgd,
    apgd_checkpoints,
    average_case_noise,
    avg_draws,
    batched_evaluator,
    sample_batches,
)
from measures.context import Context
from measures.losses import fast_cross_entropy
from measures.pacbayes import (
    BOUND_CONSTANT,
    SEARCH_STEPS,
    SEARCH_TOL,
    bisect_log,
    curvature_data,
    dist_init,
    mag_bound,
    train_subsample,
)
from measures.registry import Value, measure

TARGET_ERROR_INCREASE = 0.1  # Jiang et al.'s target deviation of the training accuracy
SEARCH_ASCENT_STEPS = 3  # ascent steps per probe of the radius search
MAG_EPS = 1e-5  # ε of the magnitude-aware box |δ_i| ≤ α'|w_i| + ε (module docstring: not Jiang's 1e-3)
ALPHA_BOUNDS = (1e-6, 1.0)  # box half-width α search range (absolute, parameter units)
MAG_ALPHA_BOUNDS = (1e-5, 10.0)  # magnitude-aware α' search range (relative to |w_i|)
FIXED_ASCENT_STEPS = 3  # ascent steps of the fixed-radius sharpness
RHO = {  # fixed radii (p, adaptive) -> ρ
    ("l2", False): 0.1,  # ‖δ‖₂ ≤ 0.1
    ("linf", False): 1e-3,  # |δ_i| ≤ 0.001
    ("l2", True): 1.0,  # ‖δ ⊘ |w|‖₂ ≤ 1
    ("linf", True): 0.01,  # |δ_i| ≤ 0.01·|w_i|
}

Evaluate = Callable[[torch.Tensor, bool], tuple[float, float, "torch.Tensor | None"]]


# ----------------------------------------------------------------------------------------- ascent
def direction(g: torch.Tensor, norm: str) -> torch.Tensor | None:
    """The unit-ball point maximising ⟨g, u⟩: g/‖g‖₂ (``"l2"``) or sign(g) (``"linf"``); None when g = 0."""
    if norm == "l2":
        n = torch.linalg.vector_norm(g)
        return g / n if n > 0 else None
    if norm == "linf":
        return torch.sign(g) if bool(g.ne(0).any()) else None
    raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")


def ascent(evaluate: Evaluate, w: torch.Tensor, c: torch.Tensor, radius: float, norm: str, steps: int,
           u0: torch.Tensor | None, *, start: tuple[float, float, torch.Tensor] | None = None) -> dict:
    """Maximise f(w + c ⊙ u) over ‖u‖_p ≤ radius from the start point ``u0`` (module docstring).

    ``evaluate(flat, need_grad) -> (f, error, ∇f or None)``. Returns the largest ``loss`` and ``error`` over the
    ``steps + 1`` visited points (not necessarily the same point) and the visited ``losses``. ``start``: the
    evaluation at the start point with its gradient, when the caller has it already (u0 = 0 is the solution w
    itself for every c and radius, so the searches and fixed radii of a model share one: :func:`_at_solution`);
    then ``u0`` is not used.
    """
    u, losses, errors = u0, [], []
    for k in range(steps + 1):
        last = k == steps
        if k == 0 and start is not None and not last:
            loss, err, grad = start
        else:
            loss, err, grad = evaluate(w + c * u, not last)
        losses.append(loss)
        errors.append(err)
        if not last:
            d = direction(c * grad, norm)
            if d is None:
                break
            u = radius * d
    return {"loss": max(losses), "error": max(errors), "losses": losses}


def evaluator(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> Evaluate:
    """``evaluate(flat, need_grad) -> (mean cross-entropy, error rate, gradient)`` on (x, y), one forward."""
    def evaluate(flat: torch.Tensor, need_grad: bool):
        flat = flat.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            params = ctx.unflatten(flat)
            loss, wrong = 0.0, 0
            for i in range(0, len(y), ctx.chunk):
                z = ctx.forward(x[i:i + ctx.chunk], params)
                loss = loss + fast_cross_entropy(z, y[i:i + ctx.chunk], reduction="sum")
                wrong += int((z.argmax(1) != y[i:i + ctx.chunk]).sum())
            loss = loss / len(y)
            grad = torch.autograd.grad(loss, flat)[0] if need_grad else None
        return loss.item(), wrong / len(y), grad
    return evaluate


def _data(ctx: Context, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pacbayes.curvature_data` (the whole training set by default), or a seeded n-sample subset."""
    return curvature_data(ctx) if n is None else train_subsample(ctx, n)


def _at_solution(ctx: Context, n: int | None) -> tuple[float, float, torch.Tensor]:
    """(loss, error, gradient) at the solution w on the samples of :func:`_data`: the first point of every
    ascent from δ = 0 (w + c ⊙ 0 = w), evaluated once per model instead of once per ascent."""
    x, y = _data(ctx, n)
    return evaluator(ctx, x, y)(ctx.flatten(ctx.params), True)


def _base(ctx: Context, n: int | None) -> tuple[float, float]:
    """Unperturbed (loss, error) on the samples of :func:`_data`."""
    x, y = _data(ctx, n)
    loss, err, _ = evaluator(ctx, x, y)(ctx.flatten(ctx.params), False)
    return loss, err


# ----------------------------------------------------------------------------------------- radius search
def _alpha_search(ctx: Context, magnitude: bool, *, target: float = TARGET_ERROR_INCREASE,
                  n: int | None = None, ascent_steps: int = SEARCH_ASCENT_STEPS, steps: int = SEARCH_STEPS,
                  tol: float = SEARCH_TOL, bounds: tuple[float, float] | None = None,
                  eps: float = MAG_EPS) -> dict:
    """Largest box half-width α (or relative α') whose worst-case training-error increase is ≤ ``target`` (+ tol).

    Increase(α) = max over the ascent's visited points of err(w + δ) − err(w), |δ_i| ≤ α (or α'|w_i| + ε), on
    the whole training set (``n``: a seeded n-sample subset instead). Returns ``alpha`` and the details.
    """
    bounds = bounds or (MAG_ALPHA_BOUNDS if magnitude else ALPHA_BOUNDS)
    x, y = _data(ctx, n)
    evaluate = evaluator(ctx, x, y)
    w = ctx.flatten(ctx.params)
    _, base = ctx.shared(_base, n)
    start = ctx.shared(_at_solution, n)

    def increase(alpha: float) -> float:
        c = alpha * w.abs() + eps if magnitude else torch.full_like(w, alpha)
        return ascent(evaluate, w, c, 1.0, "linf", ascent_steps, None, start=start)["error"] - base

    found = bisect_log(increase, bounds, target, tol=tol, steps=steps)
    details = {"alpha": found["s"], "error_increase": found["f"], "base_error": base,
               "bracket": list(found["bracket"]), "probes": found["probes"], "at_bound": found["at_bound"],
               "target": target, "ascent_steps": ascent_steps, "samples": len(y), "magnitude_aware": magnitude}
    if magnitude:
        details["eps"] = eps
    return details


def _sharpness_term(sq_norm: float, alpha: float, omega: int, m: int) -> float:
    """‖v‖² log(2ω)/(4α²) + log(m/α) + 10."""
    return sq_norm * math.log(2 * omega) / (4 * alpha ** 2) + math.log(m / alpha) + BOUND_CONSTANT


# ----------------------------------------------------------------------------------------- fixed radius
def _fixed_radius(ctx: Context, norm: str, adaptive: bool, *, radius: float | None = None,
                  n: int | None = None, steps: int = FIXED_ASCENT_STEPS) -> Value:
    """max_{‖δ ⊘ c‖_p ≤ ρ} L(w + δ) − L(w) on the training set (:func:`_data`), c = |w| (adaptive) or 1."""
    radius = RHO[(norm, adaptive)] if radius is None else radius
    x, y = _data(ctx, n)
    w = ctx.flatten(ctx.params)
    c = w.abs() if adaptive else torch.ones_like(w)
    out = ascent(evaluator(ctx, x, y), w, c, radius, norm, steps, None, start=ctx.shared(_at_solution, n))
    base, _ = ctx.shared(_base, n)
    return Value(out["loss"] - base, {"radius": radius, "norm": norm, "adaptive": adaptive, "base_loss": base,
                                      "losses": out["losses"], "ascent_steps": steps, "samples": len(y)})


# ----------------------------------------------------------------------------------------- measures
def _search_value(ctx: Context, magnitude: bool, value: Callable[[float], float]) -> Value:
    d = ctx.shared(_alpha_search, magnitude)
    return Value(value(d["alpha"]), dict(d))


@measure("sharpness.init", needs=("model", "init_model", "train_data"), sign=1, family="sharpness", version=2,
         sample_size="sqrt",
         invariances=("permutation",),
         reference="Jiang et al. 2020, sharpness-init, eq. (50); Keskar et al. 2017; Neyshabur et al. 2017;"
                   " Dziugaite et al. 2020 (sample-size adjustment)")
def sharpness_init(ctx: Context) -> Value:
    """Worst-case sharpness bound term with the prior at initialization, reported as √(v/m) with
    v = ‖w − w⁰‖² log(2ω)/(4α²) + log(m/α) + 10.

    α: the largest half-width of the box |δ_i| ≤ α within which the worst training-error increase found by
    3 sign-gradient ascent steps on the cross-entropy stays ≤ 0.1 (module docstring). ω: number of
    parameters; m: training-set size; v is kept in the details as ``unadjusted``.
    """
    omega, m = ctx.num_params, len(ctx.y_train)
    sq = (dist_init(ctx).double() ** 2).sum().item()
    return _search_value(ctx, False, lambda a: _sharpness_term(sq, a, omega, m))


@measure("sharpness.orig", needs=("model", "train_data"), sign=1, family="sharpness", version=2, sample_size="sqrt",
         invariances=("permutation",),
         reference="Jiang et al. 2020, sharpness-orig, eq. (51); Keskar et al. 2017; Neyshabur et al. 2017;"
                   " Dziugaite et al. 2020 (sample-size adjustment)")
def sharpness_orig(ctx: Context) -> Value:
    """Worst-case sharpness bound term with the prior at the origin, reported as √(v/m) with
    v = ‖w‖² log(2ω)/(4α²) + log(m/α) + 10.

    α as in ``sharpness.init`` (the same search, shared); m the training-set size.
    """
    omega, m = ctx.num_params, len(ctx.y_train)
    sq = (ctx.flatten(ctx.params).double() ** 2).sum().item()
    return _search_value(ctx, False, lambda a: _sharpness_term(sq, a, omega, m))


@measure("sharpness.flatness", needs=("model", "train_data"), sign=1, family="sharpness", version=2,
         sample_size="sqrt",
         invariances=("permutation",),
         reference="Jiang et al. 2020, sharpness-flatness, eq. (52); Keskar et al. 2017; Dziugaite et al. 2020 "
                   "(sample-size adjustment)")
def sharpness_flatness(ctx: Context) -> Value:
    """Worst-case sharpness flatness √(v/m), v = 1/α², α the largest tolerated box half-width.

    α as in ``sharpness.init`` (the same search, shared); larger = sharper. Reported as √(v/m) = 1/(α√m),
    m the training-set size.
    """
    return _search_value(ctx, False, lambda a: 1.0 / a ** 2)


@measure("sharpness.mag.init", needs=("model", "init_model", "train_data"), sign=1, family="sharpness", version=2,
         sample_size="sqrt",
         invariances=("permutation",),
         reference="Jiang et al. 2020, sharpness-mag-init, eq. (58) (magnitude-aware perturbation bound);"
                   " Dziugaite et al. 2020 (sample-size adjustment)")
def sharpness_mag_init(ctx: Context) -> Value:
    """Magnitude-aware worst-case sharpness term, prior at initialization, reported as √(v/m), m the training-set
    size.

    v = ¼ Σ_i log[(ε² + (α'² + 4 log(2ω))‖w − w⁰‖²/ω) / (ε² + α'²(w_i − w⁰_i)²)] + log(m/α') + 10, where α' is the
    largest relative half-width of the box |δ_i| ≤ α'|w_i| + ε (ε = 1e-5, module docstring) within which the
    worst training-error increase found by 3 sign-gradient ascent steps stays ≤ 0.1.
    """
    omega, m = ctx.num_params, len(ctx.y_train)
    dist = dist_init(ctx)
    sq = (dist.double() ** 2).sum().item()
    return _search_value(ctx, True, lambda a: mag_bound(sq, dist, a, a ** 2 + 4 * math.log(2 * omega), m, MAG_EPS))


@measure("sharpness.mag.orig", needs=("model", "init_model", "train_data"), sign=1, family="sharpness", version=2,
         sample_size="sqrt",
         invariances=("permutation",),
         reference="Jiang et al. 2020, sharpness-mag-orig, eq. (59) (magnitude-aware perturbation bound);"
                   " Dziugaite et al. 2020 (sample-size adjustment)")
def sharpness_mag_orig(ctx: Context) -> Value:
    """Magnitude-aware worst-case sharpness term, prior at the origin, reported as √(v/m), m the training-set
    size.

    v = ¼ Σ_i log[(ε² + (α'² + 4 log(2ω))‖w‖²/ω) / (ε² + α'²(w_i − w⁰_i)²)] + log(m/α') + 10 (denominator as printed
    by Jiang et al.); α' as in ``sharpness.mag.init`` (shared search).
    """
    omega, m = ctx.num_params, len(ctx.y_train)
    sq = (ctx.flatten(ctx.params).double() ** 2).sum().item()
    dist = dist_init(ctx)
    return _search_value(ctx, True, lambda a: mag_bound(sq, dist, a, a ** 2 + 4 * math.log(2 * omega), m, MAG_EPS))


@measure("sharpness.mag.flatness", needs=("model", "train_data"), sign=1, family="sharpness", version=2,
         sample_size="sqrt",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Jiang et al. 2020, sharpness-mag-flatness, eq. (60) (magnitude-aware perturbation bound);"
                   " Dziugaite et al. 2020 (sample-size adjustment)")
def sharpness_mag_flatness(ctx: Context) -> Value:
    """Magnitude-aware worst-case sharpness flatness √(v/m), v = 1/α'², α' the largest tolerated relative box
    half-width.

    Box |δ_i| ≤ α'|w_i| + ε, ε = 1e-5; α' as in ``sharpness.mag.init`` (shared search). Reported as
    √(v/m) = 1/(α'√m), m the training-set size.
    """
    return _search_value(ctx, True, lambda a: 1.0 / a ** 2)


@measure("sharpness.l2", needs=("model", "train_data"), sign=1, family="sharpness", version=2,
         invariances=("permutation",),
         reference="Foret et al. 2021 (SAM); Andriushchenko et al. 2023, worst-case l2 sharpness")
def sharpness_l2(ctx: Context) -> Value:
    """Worst-case ℓ2 sharpness at radius 0.1, max_{‖δ‖₂ ≤ 0.1} L(w + δ) − L(w).

    Training cross-entropy on a whole training set; 3 normalised-gradient (SAM-step) ascent steps from
    δ = 0, best visited point kept.
    """
    return _fixed_radius(ctx, "l2", False)


@measure("sharpness.linf", needs=("model", "train_data"), sign=1, family="sharpness", version=2,
         invariances=("permutation",),
         reference="Keskar et al. 2017 (box sharpness); Andriushchenko et al. 2023, worst-case l-inf sharpness")
def sharpness_linf(ctx: Context) -> Value:
    """Worst-case ℓ∞ sharpness at radius 1e-3, max_{‖δ‖∞ ≤ 0.001} L(w + δ) − L(w).

    Training cross-entropy on a whole training set; 3 sign-gradient (FGSM-step) ascent steps from δ = 0,
    best visited point kept.
    """
    return _fixed_radius(ctx, "linf", False)


@measure("sharpness.adaptive.l2", needs=("model", "train_data"), sign=1, family="sharpness", version=2,
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Andriushchenko et al. 2023, adaptive worst-case l2 sharpness (Kwon et al. 2021, ASAM)")
def sharpness_adaptive_l2(ctx: Context) -> Value:
    """Adaptive worst-case ℓ2 sharpness, max_{‖δ ⊘ |w|‖₂ ≤ 1} L(w + δ) − L(w).

    Elementwise scaling c = |w| (ASAM), radius ρ = 1; 3 normalised-gradient ascent steps in u = δ ⊘ |w| on a
    whole training set, best visited point kept. Invariant to rescaling a ReLU layer by a and the next
    by 1/a, unlike the plain version.
    """
    return _fixed_radius(ctx, "l2", True)


@measure("sharpness.adaptive.linf", needs=("model", "train_data"), sign=1, family="sharpness", version=2,
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Andriushchenko et al. 2023, adaptive worst-case l-inf sharpness")
def sharpness_adaptive_linf(ctx: Context) -> Value:
    """Adaptive worst-case ℓ∞ sharpness, max_{|δ_i| ≤ 0.01|w_i|} L(w + δ) − L(w).

    Every parameter may move by 1 % of its magnitude; 3 sign-gradient ascent steps on the whole training
    set, best visited point kept.
    """
    return _fixed_radius(ctx, "linf", True)
