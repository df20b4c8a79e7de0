"""Sharpness on batches of m training samples, after Andriushchenko et al. 2023: the worst case by their
momentum Auto-PGD (m-sharpness) and the average case over random perturbations. The sharpness over the whole
training set (radius search and fixed radii, one shared ascent routine) is in :mod:`measures.sharpness`.

After Andriushchenko et al. 2023 (their code: tml-epfl/sharpness-vs-generalization, ``sharpness.py``:
``eval_APGD_sharpness``, ``weight_ascent_step_momentum``, ``eval_average_sharpness``, ``random_init_lw``;
``eval_sharpness.py`` and ``sh/eval_sharpness_final.sh`` for the protocol). Five measures, all loss
increases (mean cross-entropy on raw logits, their default; all parameters perturbed, biases and the last
layer included, elementwise scale c = |w| when adaptive):

* ``sharpness.adaptive.m.linf`` / ``.m.l2``, worst-case m-sharpness:
  (1/K) Σ_b max_{‖δ ⊘ |w|‖_p ≤ ρ} [L_b(w + δ) − L_b(w)] over K disjoint batches b of m = ``BATCH_SIZE`` = 128
  samples (their ``--bs_sharpness``) covering at most ``BATCH_SAMPLES`` = 1024 training samples (their
  ``--n_eval_sharpness``): the first K·m of a seeded permutation (:func:`sample_batches`; K = 8 for n ≥ 1024,
  7 for n = 1000; their loader takes the first 1024 samples unshuffled). Each max by their Auto-PGD with
  momentum (:func:`apgd`): 20 iterations (their ``--n_iters`` in every run of their script), one restart from
  δ = 0 (their default; ``--sharpness_rand_init`` unused), initial step 2ρ, momentum 0.75, the step halved on
  Auto-PGD's checkpoints, the largest loss over the iterates kept (at least the unperturbed one). All K batches
  go through the network at once (K parameter copies, a batch each, ``Context.copies_logits``): 20 forward-and-backward
  passes over K·m samples. ℓ∞ is their step exactly (checked against a transcription of their code on the
  reference MLPs: equal to 1e-5 per batch). ℓ2 differs: they step along ∇_δL/‖∇_δL‖ in u = δ ⊘ |w| and project
  in δ onto the ellipsoid by a bisection on the Lagrange multiplier (their code, transcribed, took 1.2–1.6 s per
  reference model for ℓ2, against 0.25 s here); genbench steps along
  the u-gradient |w| ⊙ ∇_δL (normalised) and projects radially in u, which is the steepest step for the ball
  and is invariant to rescaling ReLU units, as the quantity is (their step is not). On the three reference
  MLPs it finds maxima 1.18–1.23× theirs, larger in every batch: a tighter lower bound on the same max.
* ``sharpness.adaptive.avg.l2`` / ``.avg.linf`` / ``sharpness.avg.l2``, average case:
  (1/K) Σ_b E_v[L_b(w + ρ c ⊙ v)] − L_b(w) on the same batches, v standard normal per coordinate (``l2``) or
  uniform on [−1, 1] (``linf``), as their ``random_init_lw`` draws it: ρ is a per-coordinate standard deviation
  (half-width), not the radius of a ball. M fresh seeded draws per batch (:func:`avg_draws`: their 20 for
  networks of ≥ 52,429 parameters, ⌈2²⁰/ω⌉ up to 1024 for smaller ones, whose per-draw spread is wider;
  their global torch RNG is replaced by ``ctx.generator``). On the reference MLP the seed-to-seed spread
  (partition and draws) is 3–5 % for the average case, 3 % (ℓ∞) and 6 % (ℓ2) for the m-sharpness.

The ρ rule. Their script sweeps four radii on a ×2 grid per definition and architecture (e.g. adaptive ℓ∞
worst case 0.001–0.008 on ResNet-18, 0.0005–0.004 on ViTs) and the paper reports the correlation for each; it
fixes no single ρ, and choosing the ρ that correlates best on the zoo being ranked would fit the benchmark to
its own targets. genbench fixes ρ once, for all models, by a rule that uses no test data: on the reference
network (the 40→256→256→10 MLP trained by SGD, lr 0.1, batch 32, to cross-entropy 0.01 on 2,000 clean
MNIST-1D samples, seed 0; training loss L = 0.0099), ρ is the point of their ×2 grid (extended by halving or
doubling where needed) at which the measure's value is closest to L in log ratio, i.e. the perturbation about
doubles the reference's training loss. The loss increase is unitless and the adaptive radii are relative, so
the rule is scale-free; it puts every measure at the same loss level on the reference (past the quadratic
regime, where ρ only rescales the value, and before the error rises). On the reference: m.linf
0.002 → 0.0031, **0.004 → 0.0095**, 0.008 → 0.052; m.l2 **0.25 → 0.0058**, 0.5 → 0.035; avg.l2 (adaptive)
0.05 → 0.0023, **0.1 → 0.011**, 0.2 → 0.091; avg.linf (adaptive) 0.1 → 0.0031, **0.2 → 0.017**, 0.4 → 0.15;
avg.l2 (plain) 0.00625 → 0.0020, **0.0125 → 0.0088**, 0.025 → 0.061. Four of the five are values of their
ResNet-18 grids; the plain one is 1/4 of their smallest (their networks have BatchNorm). ``RHO_M`` and
``RHO_AVG`` hold them. The four older fixed radii (``measures.sharpness.RHO``) were set by hand and are kept as
they were: by the rule (on their own 3-step, whole-set ascent) ``sharpness.l2``'s 0.1 would stay (0.014), while
``sharpness.linf`` (0.083), ``sharpness.adaptive.l2`` (0.051) and ``sharpness.adaptive.linf`` (0.044) would halve
their radii.

Not carried over: their ``--normalize_logits`` (centred, unit-norm logits, used in their best-correlated runs;
the ρ rule would not transfer: the normalised loss is 1.8 nats on the reference, and ≥ 1.4 nats with 10
classes), data augmentation of the sharpness batches (off by default), the test-set option, and their
BatchNorm handling: the perturbed copies of a BatchNorm net here run in eval mode, with the trained running
statistics, which no perturbation re-estimates.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from measures.context import Context
from measures.losses import fast_cross_entropy
from measures.pacbayes import curvature_data
from measures.registry import Value, measure

BATCH_SIZE = 128  # m: samples per batch (their --bs_sharpness)
BATCH_SAMPLES = 1024  # training samples the batches cover at most (their --n_eval_sharpness)
APGD_ITERS = 20  # ascent iterations per batch (their --n_iters)
APGD_MOMENTUM = 0.75  # δ ← 0.75·P(δ + η·d) + 0.25·δ_prev
APGD_STEP = 2.0  # initial step size η = 2ρ (their step_size_mult = 1)
APGD_MIN_UPDATE_RATIO = 0.75  # halve η at a checkpoint unless the worst loss rose in ≥ 75 % of the steps since
AVG_DRAWS = 20  # noise draws per batch of the average case, at least (their --n_iters for avg_l2 / avg_linf) …
AVG_DRAW_BUDGET = 2 ** 20  # … and at least this many draws × parameters (more draws for small networks) …
AVG_MAX_DRAWS = 1024  # … up to this many
RHO_M = {  # worst-case m-sharpness (norm, adaptive) -> ρ, by the ρ rule
    ("l2", True): 0.25,  # ‖δ ⊘ |w|‖₂ ≤ 0.25 per batch
    ("linf", True): 0.004,  # |δ_i| ≤ 0.004·|w_i| per batch
}
RHO_AVG = {  # average-case (distribution, adaptive) -> ρ, by the ρ rule
    ("l2", True): 0.1,  # δ_i = 0.1·|w_i|·z_i, z_i ~ N(0, 1)
    ("linf", True): 0.2,  # δ_i = 0.2·|w_i|·v_i, v_i ~ U(−1, 1)
    ("l2", False): 0.0125,  # δ_i = 0.0125·z_i
}

BatchedEvaluate = Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


# ----------------------------------------------------------------------------------------- m-sharpness batches
def sample_batches(ctx: Context, size: int = BATCH_SIZE, samples: int = BATCH_SAMPLES) -> dict:
    """K = ⌊min(n, samples)/size⌋ disjoint batches of ``size`` training samples: consecutive runs of one seeded
    permutation (tag ``"sharpness.batches"``) of the samples of :func:`pacbayes.curvature_data` (the whole
    training set by default); n mod size (and beyond ``samples``) are left out. Fewer than ``size`` samples: one
    batch of all of them. Returns ``x`` (K, m, ...), ``y`` (K, m) and the indices ``index`` (K, m)."""
    x, y = curvature_data(ctx)
    n = len(y)
    perm = torch.randperm(n, generator=ctx.generator("sharpness.batches")).to(y.device)
    m = min(size, n)
    k = max(1, min(n, samples) // m)
    index = perm[:k * m].view(k, m)
    return {"x": x[index], "y": y[index], "index": index}


def _copies_loss(ctx: Context, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy (C,), number wrong (C,)) of C parameter sets (by name, ``(C, *shape)``) on one batch
    ``(x, y)`` seen by all of them (``shared``) or on a batch each (``x`` (C, m, ...), ``y`` (C, m))."""
    z = ctx.copies_logits(params, x, shared)  # (C, m, classes)
    c, m = z.shape[:2]
    yy = y.expand(c, m) if shared else y
    each = fast_cross_entropy(z.reshape(c * m, -1), yy.reshape(-1), reduction="none").view(c, m)
    return each.sum(1), (z.argmax(-1) != yy).sum(1)


def batched_evaluator(ctx: Context, xb: torch.Tensor, yb: torch.Tensor) -> BatchedEvaluate:
    """``evaluate(flats, need_grad) -> (loss (K,), error (K,), ∇ (K, ω) or None)``: row k of ``flats`` (K, ω) on
    batch k of (xb, yb) (K, m, ...), mean cross-entropy and error rate per batch, all K in one vmapped forward.

    Each parameter tensor is its own leaf (split from the rows), so the backward pass writes each gradient
    once instead of scattering into a full-size zero tensor per parameter, as slicing one flat leaf would."""
    names, shapes = list(ctx.params), [p.shape for p in ctx.params.values()]
    sizes = [p.numel() for p in ctx.params.values()]
    m = yb.shape[1]

    def evaluate(flats: torch.Tensor, need_grad: bool):
        k = flats.shape[0]
        pieces = [t.reshape(k, *s).requires_grad_(need_grad) for t, s in zip(flats.detach().split(sizes, 1), shapes)]
        with torch.set_grad_enabled(need_grad):
            loss, wrong = _copies_loss(ctx, dict(zip(names, pieces)), xb, yb, shared=False)
            grads = torch.autograd.grad(loss.sum(), pieces) if need_grad else None
        grad = torch.cat([g.reshape(k, -1) for g in grads], 1) if need_grad else None
        return loss.detach() / m, wrong.to(loss.dtype) / m, grad
    return evaluate


def _batch_base(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """Unperturbed (loss (K,), error (K,)) on each batch of :func:`sample_batches`."""
    b = ctx.shared(sample_batches)
    w = ctx.flatten(ctx.params)
    loss, err, _ = batched_evaluator(ctx, b["x"], b["y"])(w.expand(len(b["y"]), -1), False)
    return loss, err


# ----------------------------------------------------------------------------------------- APGD ascent
def apgd_checkpoints(iters: int) -> set[int]:
    """The iterations after which the step size may be halved: p₀ = 0, p₁ = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), checkpoint ⌈p_j·iters⌉ (Auto-PGD's schedule, as in their
    ``eval_APGD_sharpness``); for 20 iterations {5, 9, 12, 15, 16, 18, 19, 20} (0-based; 20 is never reached)."""
    p, w = [0, 0.22], [0, math.ceil(iters * 0.22)]
    while w[-1] < iters and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * iters))
    return set(w[1:])


def apgd(evaluate: BatchedEvaluate, w: torch.Tensor, c: torch.Tensor, radius: float, norm: str, k: int, *,
         iters: int = APGD_ITERS) -> dict:
    """Maximise L_b(w + c ⊙ u_b) over ‖u_b‖_p ≤ radius for K batches b at once, by their momentum APGD.

    ``evaluate(flats (K, ω), need_grad)`` as :func:`batched_evaluator`. Per batch, from u = u_prev = 0 and step
    η = 2ρ: z = P(u + η·d), u ← 0.75·z + 0.25·u_prev (u_prev: the iterate before u), with d = sign(∇_δ L)
    and P the clip to [−ρ, ρ] (ℓ∞: their step exactly, in the scaled coordinates u = δ ⊘ c), or
    d = c⊙∇/‖c⊙∇‖₂ and P the radial projection onto ‖u‖₂ ≤ ρ (ℓ2: the steepest step and the projection in
    u; theirs is not, module docstring). At each checkpoint of :func:`apgd_checkpoints`, η halves when the
    worst loss rose in fewer than 75 % of the iterations since the previous one, or did not rise at all with
    η unchanged; then the next gradient is taken at the worst point (their ``load_state_dict``) while u goes
    on from the current iterate, as in their code. Every iteration costs one forward and backward pass of
    all K batches (the last one a forward only): the loss at the new point and the gradient for the next
    step come from the same pass. Returns per batch the ``worst`` loss (the base loss at u = 0 included), the
    ``error`` at that point, the ``base`` loss and error, and the final step sizes.
    """
    dtype = w.dtype
    zeros = torch.zeros(k, w.numel(), dtype=dtype, device=w.device)
    base, base_err, grad = evaluate(w + zeros, True)
    u, prev, g_at = zeros, zeros, grad
    worst, worst_err, worst_grad = base.clone(), base_err.clone(), grad.clone()
    step = torch.full((k,), APGD_STEP * radius, dtype=dtype, device=w.device)
    last_step, last_worst = step.clone(), base.clone()
    updates = torch.zeros(k, dtype=torch.long, device=w.device)
    last_checkpoint, checkpoints = 0, apgd_checkpoints(iters)
    for i in range(iters):
        if norm == "linf":
            z = (u + step[:, None] * torch.sign(g_at)).clamp_(-radius, radius)
        elif norm == "l2":
            cg = c * g_at
            z = u + step[:, None] * cg / (torch.linalg.vector_norm(cg, dim=1, keepdim=True) + 1e-12)
            length = torch.linalg.vector_norm(z, dim=1, keepdim=True)
            z = torch.where(length > radius, z * (radius / length), z)
        else:
            raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
        u, prev = z.mul_(APGD_MOMENTUM).add_(prev, alpha=1 - APGD_MOMENTUM), u
        final = i == iters - 1
        loss, err, grad = evaluate(w + c * u, not final)
        better = loss > worst
        worst, worst_err = torch.where(better, loss, worst), torch.where(better, err, worst_err)
        updates += better
        if not final:
            if bool(better.all()):
                worst_grad.copy_(grad)
            elif bool(better.any()):
                worst_grad[better] = grad[better]
            g_at = grad
        if i in checkpoints:
            reduce = (updates < APGD_MIN_UPDATE_RATIO * (i - last_checkpoint)) | (
                (last_step == step) & (last_worst == worst))
            last_step, last_worst, last_checkpoint = step.clone(), worst.clone(), i
            updates.zero_()
            step = torch.where(reduce, step / 2, step)
            if not final:
                g_at = torch.where(reduce[:, None], worst_grad, g_at)
    return {"worst": worst, "error": worst_err, "base": base, "base_error": base_err, "steps": step}


def _m_sharpness(ctx: Context, norm: str, *, radius: float | None = None, iters: int = APGD_ITERS) -> Value:
    """(1/K) Σ_b max_{‖δ ⊘ |w|‖_p ≤ ρ} [L_b(w + δ) − L_b(w)] over the batches of :func:`sample_batches`."""
    radius = RHO_M[(norm, True)] if radius is None else radius
    b = ctx.shared(sample_batches)
    w = ctx.flatten(ctx.params)
    k, m = b["y"].shape
    out = apgd(batched_evaluator(ctx, b["x"], b["y"]), w, w.abs(), radius, norm, k, iters=iters)
    per_batch = out["worst"] - out["base"]
    return Value(per_batch.mean().item(), {
        "radius": radius, "norm": norm, "adaptive": True, "batch_size": m, "batches": k, "samples": k * m,
        "iterations": iters, "per_batch": per_batch.tolist(), "base_loss": out["base"].mean().item(),
        "error_increase": (out["error"] - out["base_error"]).mean().item(),
        "final_steps": out["steps"].tolist()})


# ----------------------------------------------------------------------------------------- average case
def average_case_noise(gen: torch.Generator, draws: int, omega: int, dist: str, dtype: torch.dtype) -> torch.Tensor:
    """``draws`` × ω unit draws: standard normal (``"l2"``) or uniform on [−1, 1] (``"linf"``, 2·U(0, 1) − 1)."""
    if dist == "l2":
        return torch.randn(draws, omega, generator=gen, dtype=dtype)
    if dist == "linf":
        return 2 * torch.rand(draws, omega, generator=gen, dtype=dtype) - 1
    raise ValueError(f"dist must be 'l2' or 'linf', got {dist!r}")


def avg_draws(omega: int) -> int:
    """Noise draws per batch: ⌈2²⁰/ω⌉ clamped to [20, 1024]; their 20 for networks of ≥ 52,429 parameters
    (the reference MLP has 78,858), more for smaller ones, whose per-draw spread is wider (module docstring)."""
    return min(AVG_MAX_DRAWS, max(AVG_DRAWS, math.ceil(AVG_DRAW_BUDGET / omega)))


def _average_case(ctx: Context, dist: str, adaptive: bool, *, radius: float | None = None,
                  draws: int | None = None) -> Value:
    """(1/K) Σ_b (1/M) Σ_j L_b(w + ρ c ⊙ v_bj) − L_b(w), c = |w| or 1, v_bj of :func:`average_case_noise`.

    M = ``draws`` (default :func:`avg_draws`) fresh draws per batch b of :func:`sample_batches`, drawn batch
    after batch from the generator tagged ``"sharpness.avg.<dist>.<adaptive|plain>"`` (one (M, ω) block per
    batch, on the CPU); the copies of a batch go through the network together (``Context.copies_logits``), at most
    ⌊ctx.chunk/m⌋ at a time."""
    radius = RHO_AVG[(dist, adaptive)] if radius is None else radius
    b = ctx.shared(sample_batches)
    w = ctx.flatten(ctx.params)
    c = w.abs() if adaptive else torch.ones_like(w)
    draws = avg_draws(w.numel()) if draws is None else draws
    gen = ctx.generator(f"sharpness.avg.{dist}.{'adaptive' if adaptive else 'plain'}")
    k, m = b["y"].shape
    group = max(1, ctx.chunk // m)
    losses, errors = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    with torch.no_grad():
        for i in range(k):
            v = average_case_noise(gen, draws, w.numel(), dist, w.dtype)
            for j in range(0, draws, group):
                flats = w + radius * c * v[j:j + group].to(w.device)
                loss, wrong = _copies_loss(ctx, ctx.unflatten_rows(flats), b["x"][i], b["y"][i], shared=True)
                losses[i] += loss.double().sum().item()
                errors[i] += wrong.double().sum().item()
    losses, errors = losses / (draws * m), errors / (draws * m)
    base, base_err = ctx.shared(_batch_base)
    per_batch = losses - base.cpu().double()
    return Value(per_batch.mean().item(), {
        "radius": radius, "distribution": "gaussian" if dist == "l2" else "uniform", "adaptive": adaptive,
        "draws_per_batch": draws, "batch_size": m, "batches": k, "samples": k * m, "per_batch": per_batch.tolist(),
        "base_loss": base.mean().item(), "error_increase": (errors - base_err.cpu().double()).mean().item()})




@measure("sharpness.adaptive.m.linf", needs=("model", "train_data"), sign=1, family="sharpness",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), seeded=True, exact_invariances=True,
         reference="Andriushchenko et al. 2023, adaptive worst-case l-inf m-sharpness (m = 128, 20-step Auto-PGD; "
                   "tml-epfl/sharpness-vs-generalization, eval_APGD_sharpness)")
def sharpness_adaptive_m_linf(ctx: Context) -> Value:
    """Adaptive worst-case ℓ∞ m-sharpness, (1/K) Σ_b max_{|δ_i| ≤ 0.004|w_i|} [L_b(w + δ) − L_b(w)].

    L_b: mean cross-entropy on batch b of m = 128 training samples, K = ⌊min(n, 1024)/128⌋ disjoint batches
    of a seeded permutation (8 for n ≥ 1024). Each max by their 20-iteration momentum Auto-PGD from δ = 0
    (sign steps of initial size 2ρ, step halved on the Auto-PGD schedule), all batches vectorised; ρ = 0.004
    by the module's ρ rule. Same steps as their code (``eval_APGD_sharpness``, norm='linf', adaptive).
    """
    return _m_sharpness(ctx, "linf")


@measure("sharpness.adaptive.m.l2", needs=("model", "train_data"), sign=1, family="sharpness",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), seeded=True, exact_invariances=True,
         reference="Andriushchenko et al. 2023, adaptive worst-case l2 m-sharpness (m = 128, 20-step Auto-PGD; "
                   "tml-epfl/sharpness-vs-generalization, eval_APGD_sharpness)")
def sharpness_adaptive_m_l2(ctx: Context) -> Value:
    """Adaptive worst-case ℓ2 m-sharpness, (1/K) Σ_b max_{‖δ ⊘ |w|‖₂ ≤ 0.25} [L_b(w + δ) − L_b(w)].

    Batches and schedule as ``sharpness.adaptive.m.linf``; ρ = 0.25 by the module's ρ rule. The steps are
    normalised gradients in u = δ ⊘ |w| with a radial projection onto the ball (rescaling-invariant); their
    code steps along ∇/‖∇‖ in u and projects in δ onto the ellipsoid, which finds maxima 15–19 % lower on
    the reference MLPs (module docstring).
    """
    return _m_sharpness(ctx, "l2")


@measure("sharpness.adaptive.avg.l2", needs=("model", "train_data"), sign=1, family="sharpness",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), seeded=True,
         reference="Andriushchenko et al. 2023, adaptive average-case l2 sharpness "
                   "(tml-epfl/sharpness-vs-generalization, eval_average_sharpness, norm='l2')")
def sharpness_adaptive_avg_l2(ctx: Context) -> Value:
    """Adaptive average-case sharpness with Gaussian noise, E_z[L(w + 0.1·|w| ⊙ z)] − L(w), z ~ N(0, I).

    Every parameter moves by 0.1·|w_i|·z_i (their ``random_init_lw``: a per-coordinate standard deviation
    ρ|w_i|, not a ball of radius ρ); M seeded draws per batch of 128 on the batches of
    ``sharpness.adaptive.m.linf``, averaged, M = ⌈2²⁰/ω⌉ clamped to [20, 1024] (their 20 for ω ≥ 52,429
    parameters); ρ = 0.1 by the module's ρ rule.
    """
    return _average_case(ctx, "l2", True)


@measure("sharpness.adaptive.avg.linf", needs=("model", "train_data"), sign=1, family="sharpness",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), seeded=True,
         reference="Andriushchenko et al. 2023, adaptive average-case l-inf sharpness "
                   "(tml-epfl/sharpness-vs-generalization, eval_average_sharpness, norm='linf')")
def sharpness_adaptive_avg_linf(ctx: Context) -> Value:
    """Adaptive average-case sharpness with uniform noise, E_v[L(w + 0.2·|w| ⊙ v)] − L(w), v ~ U([−1, 1]^ω).

    Uniform in the box |δ_i| ≤ 0.2|w_i| (their ``random_init_lw``, norm='linf'); seeded draws per batch of 128
    as ``sharpness.adaptive.avg.l2``; ρ = 0.2 by the module's ρ rule.
    """
    return _average_case(ctx, "linf", True)


@measure("sharpness.avg.l2", needs=("model", "train_data"), sign=1, family="sharpness",
         invariances=("permutation",), seeded=True,
         reference="Andriushchenko et al. 2023, average-case l2 sharpness (non-adaptive; "
                   "tml-epfl/sharpness-vs-generalization, eval_average_sharpness)")
def sharpness_avg_l2(ctx: Context) -> Value:
    """Average-case sharpness with isotropic Gaussian noise, E_z[L(w + 0.0125·z)] − L(w), z ~ N(0, I).

    Standard deviation 0.0125 on every parameter (weights and biases); seeded draws per batch of 128 as
    ``sharpness.adaptive.avg.l2``; ρ = 0.0125 by the module's ρ rule. Not invariant to rescaling.
    """
    return _average_case(ctx, "l2", False)
