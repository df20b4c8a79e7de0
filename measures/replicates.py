"""Measures that compare a model with its seed replicates: the models of the same configuration (data,
architecture, optimizer, hyperparameters) trained from other seeds. A zoo with seed replicates makes them
possible; a single trained network does not have them.

* **Disagreement** (Nakkiran & Bansal 2020; Jiang et al. 2022 on test inputs): the fraction of training inputs
  on which this model's predicted class differs from a replicate's, and its continuous form, the total-variation
  distance ½‖p_a(x) − p_b(x)‖₁ between the predicted distributions. On a fitted training set the argmax
  disagreement is small (both models predict most labels), so the distance carries most of the information.
* **Linear mode connectivity** (Frankle et al. 2020; Entezari et al. 2022): the loss barrier along the straight
  line θ(t) = (1 − t)θ_a + tθ_b between this model and a replicate,
  B = max_t L(θ(t)) − [(1 − t)L(θ_a) + tL(θ_b)], L the mean training cross-entropy, on ``PATH_POINTS``
  equally spaced t in [0, 1]. The error barrier (the same with the training error) is in the details.
  - ``replicate.barrier`` interpolates the weights as they are. Two networks that compute the same function
    with their hidden units in another order are far apart on this line, so this barrier is not invariant to
    relabelling hidden units: it measures the landscape and the arbitrary unit order together.
  - ``replicate.barrier_aligned`` first permutes each replicate's hidden units to match this model's
    (activation matching: Li et al. 2016, Entezari et al. 2022, Ainsworth et al. 2023), layer by layer
    from the input: the Pearson correlation of the two models' post-activation units on the training inputs
    (channels pooled over positions), then the permutation maximising the summed correlation
    (``scipy.optimize.linear_sum_assignment``), applied to the rows of W_l, b_l and the columns of W_{l+1}.
    Aligned to a relabelled copy of itself, a model has barrier 0.

BatchNorm: every forward pass runs in eval mode, and a replicate with its own running statistics. On the line
between two networks with BatchNorm, neither network's statistics describe the interpolated weights (averaging
them collapses the activations' variance and inflates the barrier; Jordan et al. 2023, "REPAIR"), so at every
point of the line, the two ends included, the statistics are recomputed from the training set, as Git Re-Basin
(Ainsworth et al. 2023) does: one pass over the whole training set with the BatchNorm layers collecting exact
averages, on a private copy of the model (details ``bn_statistics``). The alignment permutes each BatchNorm layer
with the units it normalises, and checks that the permuted replicate computes the same function; a network whose
units are not a chain of layers that can be permuted independently (a residual network, whose skip connections
tie the units of several layers together) makes ``replicate.barrier_aligned`` not applicable, with that reason.

Every measure is the mean over the replicates the Context is given (the pipeline passes every other seed of
the configuration in the store; their number is in the details). A model without a replicate raises
``NotApplicable``. All of it runs on the whole training set and draws nothing.

Signs, the hypotheses: replicates that agree, and minima joined by a low path, predict a small gap (+1 for
all four).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from measures.context import Context
from measures.losses import fast_cross_entropy
from measures.registry import NotApplicable, Value, measure

PATH_POINTS = 21  # t = 0, 0.05, …, 1 on the line between two replicates


def _replicates(ctx: Context) -> list[dict[str, torch.Tensor]]:
    """Each replicate's parameters and running statistics, by name."""
    reps = ctx.replicate_states
    if not reps:
        raise NotApplicable("the configuration has no other seed in the store")
    return reps


def _probabilities(ctx: Context, state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.softmax(ctx.logits(ctx.x_train, state).double(), 1)


def _norms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batch_statistics(ctx: Context, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The running statistics of the model's BatchNorm layers recomputed for ``params`` from the whole training
    set (exact averages over the chunks of ``ctx.chunk`` samples, one chunk for the benchmark's training sets),
    on a private copy of the model whose other modules stay in eval mode; empty for a model without BatchNorm."""
    model = copy.deepcopy(ctx.model)
    norms = _norms(model)
    if not norms:
        return {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
        for _, bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average
            bn.train()
        for i in range(0, len(ctx.x_train), ctx.chunk):
            model(ctx.x_train[i:i + ctx.chunk])
    return {k: v.detach() for k, v in model.named_buffers() if v.is_floating_point()}


def _agreement(ctx: Context) -> dict[str, float]:
    """Mean over replicates of the argmax disagreement and the total-variation distance on the training set."""
    p = torch.softmax(ctx.train_logits.double(), 1)
    dis, tv = [], []
    for other in _replicates(ctx):
        q = _probabilities(ctx, other)  # the replicate with its own running statistics
        dis.append((p.argmax(1) != q.argmax(1)).double().mean().item())
        tv.append(0.5 * (p - q).abs().sum(1).mean().item())
    return {"disagreement": float(np.mean(dis)), "tv_distance": float(np.mean(tv)), "replicates": len(dis),
            "per_replicate_disagreement": dis, "per_replicate_tv_distance": tv}


def _unit_inputs(ctx: Context, params: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The input of layer ``layer + 1`` (the post-activation units of hidden layer ``layer``) on the training
    set, as (samples·positions, units)."""
    grabbed = []
    handle = ctx.layers[layer + 1].module.register_forward_hook(lambda _m, args, _o: grabbed.append(args[0]))
    try:
        ctx.logits(ctx.x_train, params)
    finally:
        handle.remove()
    z = torch.cat(grabbed).double()
    return z.movedim(1, -1).reshape(-1, z.shape[1]) if z.dim() > 2 else z


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every column of ``a`` with every column of ``b``; a constant unit correlates 0."""
    a, b = a - a.mean(0), b - b.mean(0)
    na, nb = a.norm(dim=0), b.norm(dim=0)
    c = (a.T @ b) / (na[:, None] * nb[None, :])
    return torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)


def _norm_after(model: nn.Module, layers) -> dict[str, str]:
    """For each layer, the BatchNorm module that normalises its output units, if one comes right after it in
    module order (the order of a Sequential) with as many features as the layer has units."""
    out, last = {}, None
    names = {layer.name: layer for layer in layers}
    for name, m in model.named_modules():
        if name in names:
            last = names[name]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and last is not None:
            if last.name not in out and m.num_features == last.module.weight.shape[0]:
                out[last.name] = name
            last = None
    return out


def align(ctx: Context, other: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``other`` (parameters and running statistics) with its hidden units permuted to match this model's
    (activation matching, module docstring), the BatchNorm layer of each unit with it. ``NotApplicable`` when the
    permuted replicate does not compute the function it computed before (the units are not a chain)."""
    out = dict(other)
    layers = ctx.layers
    norms = _norm_after(ctx.model, layers)
    for i in range(len(layers) - 1):
        first, second = layers[i], layers[i + 1]
        units = out[first.weight].shape[0]
        if out[second.weight].shape[1] != units:
            raise NotApplicable(f"layer {second.name} does not read layer {first.name}'s units one to one: the "
                                f"hidden units are not a chain of layers that can be permuted one layer at a time")
        corr = _correlation(_unit_inputs(ctx, ctx.params, i), _unit_inputs(ctx, out, i))
        from scipy.optimize import linear_sum_assignment  # here: listing the measures needs no scipy
        _, perm = linear_sum_assignment(corr.numpy(), maximize=True)
        perm = torch.as_tensor(perm, device=ctx.device)
        moved = [first.weight, first.bias]
        if first.name in norms:
            moved += [f"{norms[first.name]}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        for key in moved:
            if key is not None and key in out:
                out[key] = out[key][perm]
        out[second.weight] = out[second.weight][:, perm]
    x = ctx.x_train[:256]
    if not torch.allclose(ctx.logits(x, out), ctx.logits(x, other), rtol=1e-4, atol=1e-4):
        raise NotApplicable("permuting each layer's units with the next layer's inputs changes what the replicate "
                            "computes: its units are not a chain of layers (skip connections, or normalisation "
                            "the alignment does not know), so the replicates cannot be aligned this way")
    return out


def path(ctx: Context, other: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Training loss and error at the ``PATH_POINTS`` points of the line from this model to ``other``; with
    BatchNorm, each point with its running statistics recomputed (:func:`batch_statistics`)."""
    losses, errors = [], []
    for t in np.linspace(0.0, 1.0, PATH_POINTS):
        params = {k: (1 - t) * v + t * other[k] for k, v in ctx.params.items()}
        if ctx.buffers:
            z = ctx.logits(ctx.x_train, {**params, **batch_statistics(ctx, params)})
        else:
            z = ctx.train_logits if t == 0 else ctx.logits(ctx.x_train, params)
        losses.append(fast_cross_entropy(z.double(), ctx.y_train).item())
        errors.append((z.argmax(1) != ctx.y_train).double().mean().item())
    return np.array(losses), np.array(errors)


def barrier(values: np.ndarray) -> float:
    """max_t v(t) − [(1 − t)v(0) + t v(1)] over the points of the line (≥ 0: the ends count)."""
    t = np.linspace(0.0, 1.0, len(values))
    return float(np.max(values - ((1 - t) * values[0] + t * values[-1])))


def _barriers(ctx: Context, aligned: bool) -> dict:
    loss_b, error_b = [], []
    for other in _replicates(ctx):
        losses, errors = path(ctx, align(ctx, other) if aligned else other)
        loss_b.append(barrier(losses))
        error_b.append(barrier(errors))
    return {"loss_barrier": float(np.mean(loss_b)), "error_barrier": float(np.mean(error_b)),
            "replicates": len(loss_b), "per_replicate_loss_barrier": loss_b, "points": PATH_POINTS,
            "bn_statistics": "recomputed at every point" if _norms(ctx.model) else "none"}


@measure("replicate.disagreement", needs=("model", "train_data", "replicates"), sign=1, family="replicates",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Nakkiran & Bansal 2020, 'Distributional generalization'; Jiang et al. 2022, 'Assessing "
                   "generalization of SGD via disagreement' (here on training inputs)")
def replicate_disagreement(ctx: Context) -> Value:
    """Fraction of training inputs on which the predicted class differs from a seed replicate's, mean over the
    replicates: (1/R) Σ_r (1/n) Σ_i 1[argmax f(x_i) ≠ argmax f_r(x_i)].
    """
    a = ctx.shared(_agreement)
    return Value(a["disagreement"], a)


@measure("replicate.tv_distance", needs=("model", "train_data", "replicates"), sign=1, family="replicates",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Nakkiran & Bansal 2020; Jiang et al. 2022 (the soft form of replicate disagreement)")
def replicate_tv_distance(ctx: Context) -> Value:
    """Total-variation distance between this model's and a replicate's predicted distributions on the training
    inputs, mean over inputs and replicates: (1/R) Σ_r (1/n) Σ_i ½ ‖softmax f(x_i) − softmax f_r(x_i)‖₁.
    """
    a = ctx.shared(_agreement)
    return Value(a["tv_distance"], a)


@measure("replicate.barrier", needs=("model", "train_data", "replicates"), sign=1, family="replicates",
         reference="Frankle et al. 2020, 'Linear mode connectivity and the lottery ticket hypothesis'; "
                   "Entezari et al. 2022 (loss barrier)")
def replicate_barrier(ctx: Context) -> Value:
    """Training-loss barrier on the straight line to a seed replicate, weights as they are, mean over the
    replicates: max_t L((1 − t)θ + tθ_r) − [(1 − t)L(θ) + tL(θ_r)], 21 points t ∈ [0, 1].
    """
    b = ctx.shared(_barriers, False)
    return Value(b["loss_barrier"], b)


@measure("replicate.barrier_aligned", needs=("model", "train_data", "replicates"), sign=1, family="replicates",
         invariances=("permutation",),
         reference="Entezari et al. 2022, 'The role of permutation invariance in linear mode connectivity'; "
                   "Ainsworth et al. 2023, 'Git Re-Basin' (activation matching)")
def replicate_barrier_aligned(ctx: Context) -> Value:
    """Training-loss barrier to each seed replicate after permuting the replicate's hidden units to match this
    model's (activation matching), mean over the replicates: max_t L((1 − t)θ + tπ(θ_r)) − [(1 − t)L(θ) + tL(θ_r)].
    """
    b = ctx.shared(_barriers, True)
    return Value(b["loss_barrier"], b)
