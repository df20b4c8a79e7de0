"""Optimization-based measures: speed of training and gradient noise at its end (Jiang et al. 2020,
Appendix C, "optimization-based measures").

The step counts read the training history (one row per epoch with ``epoch``, ``step`` — minibatch steps so
far — and ``train_loss``, the full training cross-entropy at the end of the epoch), so they have the
resolution of one epoch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from measures import history as H
from measures.context import Context
from measures.losses import fast_cross_entropy
from measures.registry import Value, measure

GRAD_NOISE_SAMPLES = 4096  # training samples whose gradients enter (a seeded subset of larger training sets)
_CHUNK_ENTRIES = 1 << 24  # per-sample gradient entries held in memory at once


# ----------------------------------------------------------------------------------------- training speed
def first_step_at_or_below(history: Sequence[Mapping], loss: float) -> int:
    """The ``step`` of the first history row whose end-of-epoch ``train_loss`` is ≤ ``loss``."""
    for row in history:
        if row[H.TRAIN_LOSS] <= loss:
            return int(row[H.STEP])
    last = history[-1] if history else None
    raise ValueError(f"the training history never reaches a training cross-entropy ≤ {loss:g} "
                     f"({len(history)} epochs, last train_loss {last[H.TRAIN_LOSS] if last else 'n/a'})")


@measure("steps_to_0.1", needs=("history",), sign=1, family="optimization",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Jiang et al. 2020, Appendix C (optimization-based measures)")
def steps_to_0p1(ctx: Context) -> float:
    """Number of optimizer steps until the training cross-entropy first reaches 0.1.

    The step count at the end of the first epoch whose full training cross-entropy is ≤ 0.1 (history
    resolution: one epoch). Raises if training never gets there.
    """
    return float(first_step_at_or_below(ctx.history, 0.1))


@measure("steps_0.1_to_0.01", needs=("history",), sign=1, family="optimization",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Jiang et al. 2020, Appendix C (optimization-based measures)")
def steps_0p1_to_0p01(ctx: Context) -> float:
    """Number of optimizer steps to go from training cross-entropy 0.1 to 0.01.

    step(first epoch with loss ≤ 0.01) − step(first epoch with loss ≤ 0.1), both at end-of-epoch resolution
    (0 when one epoch crosses both). Raises if training never reaches 0.01.
    """
    return float(first_step_at_or_below(ctx.history, 0.01) - first_step_at_or_below(ctx.history, 0.1))


@measure("sotl", needs=("history",), sign=1, family="optimization",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Ru, Lyle, Schut, Fil, van der Wilk & Gal 2021, 'Speedy performance estimation for neural "
                   "architecture search', NeurIPS (SoTL, the sum over training losses)")
def sotl(ctx: Context) -> float:
    """Sum over training losses: Σ_{e=1}^{E} L_train(e), the training cross-entropy summed over all E epochs.

    L_train(e) is the full training cross-entropy at the end of epoch e (the history's ``train_loss``); Ru et al.
    sum the minibatch losses seen during each epoch, which is the same curve about half an epoch earlier. They
    also sum only the last few epochs (SoTL-E) for architectures trained for one fixed number of epochs; here
    every model trains to the same final loss, so the whole curve is summed: the area under the training curve,
    in epochs, which is large for a model that fits its training set slowly.
    """
    return float(sum(row[H.TRAIN_LOSS] for row in ctx.history))


# ----------------------------------------------------------------------------------------- gradient noise
def _fast_path_layers(ctx: Context) -> bool:
    """Whether every parameter is the weight or bias of a Linear or a plain (zero-padded, ungrouped) Conv1d/2d,
    the layers whose per-sample gradient norms ``_layer_sums`` computes without vmap."""
    covered = set()
    for layer in ctx.layers:
        mod = layer.module
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and (mod.groups != 1 or mod.padding_mode != "zeros"
                                                         or isinstance(mod.padding, str)):
            return False
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            return False
        covered |= {layer.weight} | ({layer.bias} if layer.bias else set())
    return covered == set(ctx.params)


def _unfold(mod: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Conv input patches (b, in·k, positions), as the convolution reads them."""
    if isinstance(mod, nn.Conv1d):  # as a 2-D convolution over a (1, L) image
        return F.unfold(a[:, :, None, :], (1, mod.kernel_size[0]), dilation=(1, mod.dilation[0]),
                        padding=(0, mod.padding[0]), stride=(1, mod.stride[0]))
    return F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)


def _layer_sums(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """(Σ_i ‖g_i‖², Σ_i g_i) over the samples (x, y), from one forward and one backward pass.

    Per-sample gradients of layer l are outer products of the gradient δ_i of the summed loss with respect to
    the layer's output and the layer's input a_i: for a Linear layer on a vector input,
    ‖g_i^W‖² = ‖δ_i‖²·‖a_i‖² and ‖g_i^b‖² = ‖δ_i‖² without forming g_i (Goodfellow 2015, arXiv:1510.01799); for a
    conv layer, g_i^W = δ_i·patches(a_i)ᵀ is formed per sample (out × in·k) and g_i^b = Σ_positions δ_i.
    """
    params = {k: p.clone().requires_grad_(True) for k, p in ctx.params.items()}
    seen: dict[str, list] = {layer.name: [] for layer in ctx.layers}

    def record(name):
        def hook(module, inputs, output):
            seen[name].append((inputs[0].detach(), output))
            return output.clone()  # downstream in-place ops (ReLU(inplace=True)) must not overwrite the output
        return hook

    handles = [layer.module.register_forward_hook(record(layer.name)) for layer in ctx.layers]
    try:
        logits = ctx.forward(x, params)
    finally:
        for h in handles:
            h.remove()
    calls = {name: len(v) for name, v in seen.items() if len(v) != 1}
    if calls:
        raise RuntimeError(f"per-sample gradient norms need each layer called exactly once per forward pass; "
                           f"calls: {calls}")
    outputs = [seen[layer.name][0][1] for layer in ctx.layers]
    grads = torch.autograd.grad(fast_cross_entropy(logits, y, reduction="sum"), outputs + list(params.values()))
    deltas, total = grads[:len(outputs)], dict(zip(params, grads[len(outputs):]))
    sq = torch.zeros((), dtype=torch.float64)
    b = len(y)
    for layer, delta in zip(ctx.layers, deltas):
        a, mod = seen[layer.name][0][0], layer.module
        if isinstance(mod, nn.Linear):
            a, delta = a.reshape(b, -1, a.shape[-1]), delta.reshape(b, -1, delta.shape[-1])  # (b, T, in), (b, T, out)
            if a.shape[1] == 1:  # one vector per sample: ‖δ aᵀ‖_F² = ‖δ‖²‖a‖²
                sq += (delta.square().sum((1, 2)) * a.square().sum((1, 2))).sum(dtype=torch.float64)
            else:
                sq += torch.bmm(delta.transpose(1, 2), a).square().sum(dtype=torch.float64)
            bias_grad = delta.sum(1)  # (b, out)
        else:
            patches = _unfold(mod, a)  # (b, in·k, P)
            delta = delta.reshape(b, delta.shape[1], -1)  # (b, out, P)
            sq += torch.bmm(delta, patches.transpose(1, 2)).square().sum(dtype=torch.float64)
            bias_grad = delta.sum(2)  # (b, out)
        if layer.bias is not None:
            sq += bias_grad.square().sum(dtype=torch.float64)
    return sq.item(), {k: g.detach() for k, g in total.items()}


def _vmap_sums(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """(Σ_i ‖g_i‖², Σ_i g_i) from per-sample gradients formed by ``torch.func.vmap(grad(...))`` (any model)."""
    def sample_loss(p, xi, yi):
        return F.cross_entropy(ctx.forward(xi[None], p), yi[None])

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(ctx.params, x, y)  # name → (b, *param shape)
    sq = sum(g.square().sum(dtype=torch.float64) for g in grads.values())
    return float(sq), {k: g.sum(0) for k, g in grads.items()}


def gradient_noise(ctx: Context, batch_size: int, num_samples: int) -> Value:
    """E_B ‖g_B − g‖² for minibatches B of ``batch_size`` drawn without replacement from the training set.

    With g_i the per-sample gradients and g their mean over the n training samples,
    S² = (1/(n−1)) Σ_i ‖g_i − g‖² (the trace of their covariance with denominator n − 1) and
    E ‖g_B − g‖² = (1/B − 1/n)·S² — the finite-population variance of a mean of B draws without
    replacement, equal to (1/B)(1 − (B−1)/(n−1))·tr C with C the covariance with denominator n.
    S² = (Σ_i ‖g_i‖² − ‖Σ_i g_i‖²/m) / (m − 1) is computed over all n samples when n ≤ ``num_samples``
    (exact), else over a uniform random subset of m = ``num_samples`` of them drawn by
    ``ctx.generator("grad_noise")``, which estimates S² without bias. Gradients are of the cross-entropy with
    respect to all parameters, model in eval mode (dropout off). Σ_i ‖g_i‖² comes from per-sample gradient
    norms computed layer by layer when every parameter belongs to a Linear or plain Conv1d/2d layer
    (``_layer_sums``), else from ``torch.func.vmap(grad(...))``.
    """
    x, y = ctx.x_train, ctx.y_train
    n = len(y)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch size {batch_size} must be between 1 and the training set size {n}")
    m = min(n, num_samples)
    if m < 2:
        raise ValueError(f"the gradient noise needs at least two samples, got {m}")
    idx = torch.randperm(n, generator=ctx.generator("grad_noise"))[:m].to(x.device) if m < n else None
    sums = _layer_sums if _fast_path_layers(ctx) else _vmap_sums
    if sums is _layer_sums and all(isinstance(layer.module, nn.Linear) for layer in ctx.layers):
        chunk = ctx.chunk  # per-sample gradients are never formed for Linear layers on vector inputs
    else:
        chunk = min(ctx.chunk, max(1, _CHUNK_ENTRIES // ctx.num_params))
    sq_sum, g_sum = 0.0, None
    for start in range(0, m, chunk):
        sel = slice(start, start + chunk) if idx is None else idx[start:start + chunk]
        sq, g = sums(ctx, x[sel], y[sel])
        sq_sum += sq
        g_sum = g if g_sum is None else {k: g_sum[k] + g[k] for k in g}
    s2 = (sq_sum - sum(v.double().square().sum().item() for v in g_sum.values()) / m) / (m - 1)
    return Value((1.0 / batch_size - 1.0 / n) * s2,
                 {"samples": m, "batch_size": batch_size, "trace_cov": s2 * (n - 1) / n})


@measure("grad_noise_final", needs=("model", "train_data", "hparams"), sign=1, family="optimization",
         invariances=("permutation",), seeded=True, exact_invariances=True,
         reference="Jiang et al. 2020, Appendix C (optimization-based measures: variance of the gradients "
                   "after training)")
def grad_noise_final(ctx: Context) -> Value:
    """Minibatch gradient-noise variance at the end of training, E_B ‖g_B − g‖², B of the training batch size.

    (1/B − 1/n)·(1/(n−1)) Σ_i ‖g_i − g‖² with g_i the per-sample gradients of the cross-entropy at the
    trained weights, g their mean over the n training samples and B = ``train.batch_size``: the exact
    expectation over minibatches drawn without replacement (``gradient_noise`` has the derivation), from
    all training samples, or a seeded subset of 4096 on larger training sets. Near a minimum the
    per-sample gradient covariance approximates the Fisher/Gauss–Newton curvature, so larger noise means a
    sharper solution: sign +1.
    """
    return gradient_noise(ctx, int(ctx.hp("train.batch_size")), GRAD_NOISE_SAMPLES)
