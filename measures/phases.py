"""Phases of learning dynamics, with and without mislabeled data (Feng & Tu, MLST 2021; docs/measures/phases.md).

Order parameters at the current weights, from M seeded minibatch gradients g_μ = ∇ (1/B) Σ_{i∈μ} l_i of the
data loss (no weight decay; model in eval mode, so dropout is off), flattened over all parameters:

    alignment  A = mean_{μ<ν} cos(g_μ, g_ν)                 (1 when all minibatch gradients point alike)
    amplitude  R = ‖ḡ‖ / mean_μ ‖g_μ‖,  ḡ = mean_μ g_μ      (in [0, 1]; 1 when they are identical)
    amplitude_sq_corrected  κ ≈ ‖E g_μ‖² / E‖g_μ‖²          (R² without its finite-M floor; ``amplitude_sq_corrected``)
    grad_norm = ‖ḡ‖, batch_grad_norm = mean_μ ‖g_μ‖

R has a floor: for pure-noise gradients (E g_μ = 0) R ≈ 1/√M (0.35 for M = 8), because ‖ḡ‖² keeps tr Σ / M of
the noise. κ removes it (derivation in ``amplitude_sq_corrected``): ≈ 0 for pure noise, 1 for identical gradients.

The M minibatches are disjoint slices of B samples of a permutation drawn from ``generator`` (further
permutations when M·B exceeds the data). With a ``mislabeled`` mask, on a seeded sample of ``subset_samples``
= 512 training samples (a fresh one each call, to bound the cost; the standard error of a subset mean is then
≈ its spread / √(ρ·512)), the mean-loss gradients of the correctly labeled and of the mislabeled samples,
g_c and g_m, give

    cos_correct_mislabeled = cos(g_c, g_m),  norm_ratio_mislabeled = ‖g_m‖ / ‖g_c‖,

with loss_correct / loss_mislabeled (mean per-sample cross-entropy of each subset, against the labels trained
on), error_correct / error_mislabeled (fraction of each subset whose prediction differs from its training
label; error_mislabeled → 0 means the wrong labels were memorised) and loss_auc = P(l_mislabeled > l_correct)
for a random pair (how well the per-sample loss separates the subsets, i.e. could clean the data).

Cost of one call with the trainer's M = 8, measured single-threaded on CPU against one training epoch of
4,000 samples (B = 25–32, its evaluation pass included): 6–9% without a mask; with one ≈ 10% for 40→64→64→10
and 784→30→30→10 MLPs, 16% for 40→256→256→10.

Phases (``detect_phases``, rules in its docstring), from training-data signals only (never the test error):
clean data — fast learning, then exploration; with mislabeled data — I (fit the correct samples), II (wander
near those solutions), III (learn the mislabeled ones), IV (everything fitted). Registered end-of-training
measures read the ``op.*`` columns of the training history (``measures.history``), which a trainer fills by
calling ``order_parameters`` once per epoch; fractions of training are read from its epoch column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from measures import history as H
from measures.context import Context, MissingInputError
from measures.losses import fast_cross_entropy
from measures.registry import NotApplicable, Value, measure

PREFIX = H.ORDER_PARAMETER_PREFIX
REFERENCE = "Feng & Tu, Mach. Learn.: Sci. Technol. 2, 043001 (2021), arXiv 2101.06509; docs/measures/phases.md"


def _batches(n: int, batch_size: int, n_batches: int, generator: torch.Generator) -> torch.Tensor:
    """(n_batches, batch_size) sample indices: disjoint slices of seeded permutations."""
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    per_perm = n // batch_size
    rows: list[torch.Tensor] = []
    while len(rows) < n_batches:
        perm = torch.randperm(n, generator=generator)
        rows += [perm[j * batch_size:(j + 1) * batch_size] for j in range(min(per_perm, n_batches - len(rows)))]
    return torch.stack(rows)


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    nu, nv = u.norm(), v.norm()
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else 0.0


def order_parameters(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     generator: torch.Generator, n_batches: int = 8,
                     mislabeled: torch.Tensor | None = None, *, subset_samples: int | None = 512,
                     chunk: int = 8192) -> dict[str, float]:
    """Order parameters of the minibatch-gradient ensemble at the model's current weights (module
    docstring). Functional: the model's parameters, ``.grad`` fields and mode are left as they were.

    ``x``, ``y``: the training data (labels as trained on); ``mislabeled``: bool mask over it, or None.
    A zero minibatch gradient counts as orthogonal to the others (cosine 0). The subset quantities use a
    seeded sample of ``subset_samples`` training samples (all of them if None or fewer); those of a subset the
    sample misses are NaN (also when the mask marks no sample or every sample: tiny data sets with label
    noise can round to zero mislabeled samples, and a trainer must not fail on that).
    """
    if n_batches < 2:
        raise ValueError(f"the alignment needs at least 2 minibatches, got n_batches={n_batches}")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    was_training = model.training
    model.eval()
    try:
        def batch_loss(p, xb, yb):
            return F.cross_entropy(functional_call(model, (p, buffers), (xb,)), yb)

        idx = _batches(len(y), batch_size, n_batches, generator).to(y.device).reshape(-1)
        xb = x.index_select(0, idx).reshape(n_batches, batch_size, *x.shape[1:])  # (M, B, ...)
        yb = y.index_select(0, idx).reshape(n_batches, batch_size)
        grads = vmap(grad(batch_loss), in_dims=(None, 0, 0))(params, xb, yb)
        g = torch.cat([grads[k].reshape(n_batches, -1) for k in params], 1).double()  # (M, P)
        out = _ensemble_terms(g @ g.T, len(y), batch_size)
        if mislabeled is not None:
            subsets = _subset_samples(mislabeled, y, generator, subset_samples)
            out.update(_subset_terms(model, params, buffers, x, y, subsets, chunk))
    finally:
        model.train(was_training)
    return out


def _ensemble_terms(gram: torch.Tensor, n: int, batch_size: int) -> dict[str, float]:
    """Alignment, amplitudes and gradient norms of M minibatch gradients from their Gram matrix
    ``gram[μ, ν] = g_μ·g_ν`` (float64): they depend on the gradients only through dot products, so any fixed
    ordering of the parameters gives the same values. A zero gradient counts as orthogonal to the others."""
    m = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    safe = norms.clamp_min(torch.finfo(gram.dtype).tiny)
    cos = gram / safe[:, None] / safe[None, :]
    mean_norm = float(gram.sum().clamp_min(0).sqrt()) / m  # ‖ḡ‖
    return {"alignment": float((cos.sum() - cos.diagonal().sum()) / (m * (m - 1))),
            "amplitude": mean_norm / float(norms.mean()) if norms.mean() > 0 else 0.0,
            "amplitude_sq_corrected": amplitude_sq_corrected(gram, n, batch_size),
            "grad_norm": mean_norm, "batch_grad_norm": float(norms.mean())}


def _subset_samples(mislabeled: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                    subset_samples: int | None) -> dict[str, torch.Tensor]:
    """The seeded sample of training indices for the subset terms, split into ``correct`` and ``mislabeled``."""
    bad = mislabeled.to(y.device).bool()
    if bad.shape != y.shape:
        raise ValueError(f"the mislabeled mask has shape {tuple(bad.shape)}, the labels {tuple(y.shape)}")
    n = len(y)
    idx = (torch.randperm(n, generator=generator)[:subset_samples] if subset_samples and subset_samples < n
           else torch.arange(n)).to(y.device)
    return {"correct": idx[~bad[idx]], "mislabeled": idx[bad[idx]]}


@dataclass(frozen=True)
class Member:
    """One model's inputs to :func:`order_parameters_many`: its training data (labels as trained on), its
    probe generator and its mislabeled mask (None without label noise)."""
    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator
    mislabeled: torch.Tensor | None = None


def order_parameters_many(forward, params: Sequence[torch.Tensor], members: Sequence[Member], batch_size: int,
                          n_batches: int = 8, *, subset_samples: int | None = 512) -> list[dict[str, float]]:
    """:func:`order_parameters` of K models at once, equal to calling it on each member (up to float rounding):
    the same draws from each member's generator, the same formulas.

    ``forward(params, x)``: the logits (K', B, classes) in eval mode of K' stacked models whose parameters are
    ``params`` (each a (K', ...) tensor, any fixed layout) on inputs ``x`` (K', B, ...). ``params`` hold the K
    members' current weights (they are not changed). The members must share their training-set size.
    The M minibatch gradients of all members come from one stacked backward pass over K·M copies of the weights,
    and both subset gradients of all members from one more.
    """
    k, n = len(members), len(members[0].y)
    if n_batches < 2:
        raise ValueError(f"the alignment needs at least 2 minibatches, got n_batches={n_batches}")
    if any(len(m.y) != n for m in members):
        raise ValueError("the members of order_parameters_many must share their training-set size")
    idx = [_batches(n, batch_size, n_batches, m.generator).to(m.y.device) for m in members]  # (M, B) each
    xb = torch.cat([m.x[i] for m, i in zip(members, idx)])  # (K·M, B, ...)
    yb = torch.cat([m.y[i] for m, i in zip(members, idx)])  # (K·M, B)
    copies = [p.detach().repeat_interleave(n_batches, 0).requires_grad_(True) for p in params]
    with torch.enable_grad():
        logits = forward(copies, xb)
        loss = fast_cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="none")
        grads = torch.autograd.grad(loss.view(k * n_batches, -1).mean(1).sum(), copies)
    gram = sum(torch.bmm(t, t.transpose(1, 2)) for t in (t.reshape(k, n_batches, -1).double() for t in grads))
    out = [_ensemble_terms(gram[r], n, batch_size) for r in range(k)]  # gram: (K, M, M)
    noisy = [r for r, m in enumerate(members) if m.mislabeled is not None]
    if noisy:
        subsets = [_subset_samples(members[r].mislabeled, members[r].y, members[r].generator, subset_samples)
                   for r in noisy]
        for r, terms in zip(noisy, _subset_terms_many(forward, params, [members[r] for r in noisy], noisy, subsets)):
            out[r].update(terms)
    return out


def _subset_terms_many(forward, params, members: Sequence[Member], rows: Sequence[int],
                       subsets: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, float]]:
    """:func:`_subset_terms` of several members (``rows`` of ``params``) at once: each subset of every member
    goes through one stacked forward pass on its own copy of the weights, padded to the longest (the padding
    has weight 0), and one backward pass gives both subsets' mean-loss gradients."""
    rows_t = torch.tensor(list(rows), device=members[0].y.device)
    terms: list[dict] = [{} for _ in members]
    grads, losses = {}, {}
    with torch.enable_grad():
        total, leaves = 0.0, {}
        for name in ("correct", "mislabeled"):
            sel = [s[name] for s in subsets]
            width = max(1, max(len(t) for t in sel))
            index = torch.stack([torch.cat([t, t.new_zeros(width - len(t))]) for t in sel])  # (K, L)
            weight = torch.zeros(index.shape, device=index.device)
            for r, t in enumerate(sel):
                if len(t):
                    weight[r, :len(t)] = 1.0 / len(t)
            xs = torch.stack([m.x[i] for m, i in zip(members, index)])
            ys = torch.stack([m.y[i] for m, i in zip(members, index)])
            leaves[name] = [p.detach()[rows_t].clone().requires_grad_(True) for p in params]
            logits = forward(leaves[name], xs)  # (K, L, classes)
            each = fast_cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1),
                                   reduction="none").view(ys.shape)
            total = total + (each * weight).sum()
            wrong = logits.detach().argmax(2) != ys
            for r, t in enumerate(sel):
                if len(t) == 0:
                    terms[r].update({f"loss_{name}": math.nan, f"error_{name}": math.nan})
                else:
                    terms[r][f"loss_{name}"] = float(each[r, :len(t)].detach().sum()) / len(t)
                    terms[r][f"error_{name}"] = int(wrong[r, :len(t)].sum()) / len(t)
                    losses[(r, name)] = each[r, :len(t)].detach().double()
        parts = torch.autograd.grad(total, leaves["correct"] + leaves["mislabeled"])
    half = len(params)
    for j, name in enumerate(("correct", "mislabeled")):
        grads[name] = torch.cat([t.reshape(len(rows), -1) for t in parts[j * half:(j + 1) * half]], 1).double()
    for r in range(len(members)):
        both = (r, "correct") in losses and (r, "mislabeled") in losses
        terms[r].update(_between_subsets(grads["correct"][r], grads["mislabeled"][r], losses.get((r, "correct")),
                                         losses.get((r, "mislabeled"))) if both else _between_subsets())
    return terms


def _between_subsets(gc: torch.Tensor | None = None, gm: torch.Tensor | None = None,
                     lc: torch.Tensor | None = None, lm: torch.Tensor | None = None) -> dict[str, float]:
    """The terms that compare the correct and mislabeled subsets, from their mean-loss gradients and per-sample
    losses; all NaN when a subset is empty (called without arguments)."""
    if gc is None:
        return {"cos_correct_mislabeled": math.nan, "norm_ratio_mislabeled": math.nan, "loss_auc": math.nan}
    return {"cos_correct_mislabeled": _cos(gc, gm),
            "norm_ratio_mislabeled": float(gm.norm() / gc.norm()) if gc.norm() > 0 else math.inf,
            "loss_auc": loss_auc(lc, lm)}


def amplitude_sq_corrected(gram: torch.Tensor, n: int, batch_size: int) -> float:
    """κ = ‖G‖² / E‖g_μ‖², the squared amplitude of the minibatch gradients with its finite-sample floor removed,
    from the Gram matrix ``gram[μ, ν] = g_μ·g_ν`` of M minibatch gradients laid out as ``_batches`` draws them
    (B = ``batch_size`` samples each, disjoint slices of permutations of the n training samples, ⌊n/B⌋ batches
    per permutation).

    Derivation. Per-sample gradients g_i (i = 1..n) have mean G (the full-batch gradient) and spread
    S² = Σ_i ‖g_i − G‖² / (n − 1). A batch mean of B samples drawn without replacement has E g_μ = G and
    E‖g_μ − G‖² = S² (1/B − 1/n); two disjoint batches of the same permutation have E (g_μ − G)·(g_ν − G) = −S²/n
    (sample pairs i ≠ j covary by −S²/n), batches of different permutations are independent. With
    U = mean_{μ≠ν} g_μ·g_ν, V = mean_μ ‖g_μ‖² and q the fraction of pairs μ ≠ ν from the same permutation:

        E U = ‖G‖² − q S²/n,   E V = ‖G‖² + S² (1/B − 1/n)
        ⇒ Ŝ² = (V − U) / (1/B − (1 − q)/n),   ‖G‖²^ = U + q Ŝ²/n   (both unbiased),   κ = ‖G‖²^ / V.

    The raw R² = ‖ḡ‖²/(mean‖g_μ‖)² ≈ ‖ḡ‖²/V = U/V + (V − U)/(M V) keeps the noise fraction divided by M: for pure
    noise (G = 0, M·B ≤ n) R² ≈ 1/M, and U/V (the norm-weighted mean pairwise cosine) ≈ −B/(n − B), while κ ≈ 0.
    Identical per-sample gradients (S = 0, U = V) give κ = 1. κ is a ratio of unbiased estimates, so it falls
    slightly below 0 when the noise dominates; √κ, where κ ≥ 0, estimates ‖G‖ / √(E‖g_μ‖²).
    """
    m = gram.shape[0]
    v = float(gram.diagonal().mean())
    if v <= 0:
        return 0.0
    u = float((gram.sum() - gram.diagonal().sum()) / (m * (m - 1)))
    group = torch.arange(m) // max(1, n // batch_size)  # the permutation each batch comes from
    q = float(((group[:, None] == group[None, :]).sum() - m) / (m * (m - 1)))
    s2 = (v - u) / (1 / batch_size - (1 - q) / n)
    return (u + q * s2 / n) / v


def _subset_terms(model, params, buffers, x, y, subsets: dict[str, torch.Tensor], chunk) -> dict[str, float]:
    """Mean loss, error and mean-loss gradient of each subset of (x, y) given by sample indices (``correct``,
    ``mislabeled``); each subset gets its own forward and backward pass."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out, grads, losses = {}, [], []
    for name, sel in subsets.items():
        if len(sel) == 0:
            out.update({f"loss_{name}": math.nan, f"error_{name}": math.nan})
            continue
        total, wrong, per_sample = 0.0, 0, []
        g = torch.zeros(sum(p.numel() for p in leaves.values()), dtype=torch.float64)
        for i in range(0, len(sel), chunk):
            rows = sel[i:i + chunk]
            ys = y.index_select(0, rows)
            with torch.enable_grad():
                logits = functional_call(model, (leaves, buffers), (x.index_select(0, rows),))
                each = fast_cross_entropy(logits, ys, reduction="none")
                parts = torch.autograd.grad(each.sum(), list(leaves.values()))
            g += torch.cat([t.reshape(-1) for t in parts]).double()
            per_sample.append(each.detach())
            total += float(each.detach().sum())
            wrong += int((logits.detach().argmax(1) != ys).sum())
        out[f"loss_{name}"], out[f"error_{name}"] = total / len(sel), wrong / len(sel)
        grads.append(g / len(sel))
        losses.append(torch.cat(per_sample).double())
    out.update(_between_subsets(*grads, *losses) if len(grads) == 2 else _between_subsets())
    return out


def loss_auc(correct: torch.Tensor, mislabeled: torch.Tensor) -> float:
    """P(a mislabeled sample's loss > a correct sample's loss), ties counting ½ (Mann–Whitney AUC): how well
    thresholding the per-sample loss would find the mislabeled samples (1: perfectly; 0.5: not at all)."""
    both = torch.cat([correct, mislabeled])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=both.dtype)
    for v in both[order][1:][both[order][1:] == both[order][:-1]].unique():  # average ranks of ties
        tie = both == v
        ranks[tie] = ranks[tie].mean()
    n_c, n_m = len(correct), len(mislabeled)
    return float((ranks[n_c:].sum() - n_m * (n_m + 1) / 2) / (n_c * n_m))


# ----------------------------------------------------------------------------------------- phases
def epoch_spans(epochs: Sequence[int]) -> np.ndarray:
    """How many epochs each history row stands for: e_i − e_{i−1}, with e_{−1} = 0 (training starts at epoch 0).
    A history that records every epoch gives all ones; one that records every k-th epoch gives k."""
    e = np.asarray(epochs, dtype=float)
    return np.diff(np.concatenate([[0.0], e]))


@dataclass(frozen=True)
class Phases:
    """A split of a training history into phases: ``labels[i]`` is the phase of history row i;
    ``starts`` the epoch at which each phase begins (None for a phase that does not occur)."""
    labels: list[str]
    starts: dict[str, int | None]
    epochs: list[int]
    details: dict = field(default_factory=dict)

    def fraction(self, phase: str) -> float:
        """Fraction of the epochs trained that fall in ``phase``, from the epoch column (``epoch_spans``)."""
        spans = epoch_spans(self.epochs)
        return float(sum(s for s, lab in zip(spans, self.labels) if lab == phase) / self.epochs[-1])


def _column(history: Sequence[Mapping], key: str) -> np.ndarray:
    missing = [i for i, row in enumerate(history) if key not in row]
    if missing:
        raise MissingInputError(
            f"the history has no {key!r} in {len(missing)} of {len(history)} rows; order parameters are written "
            f"by a trainer that calls phases.order_parameters at each epoch end (genbench's zoo does; a history "
            f"recorded before a column was added lacks it: retrain)")
    return np.array([float(row[key]) for row in history])


def _epochs(history: Sequence[Mapping]) -> list[int]:
    if not history:
        raise MissingInputError("the history is empty")
    return [int(row.get(H.EPOCH, i + 1)) for i, row in enumerate(history)]


def running_median(values: np.ndarray, window: int = 5) -> np.ndarray:
    """Centred running median over ``window`` rows (the window shrinks at the ends); keeps steps, removes
    isolated spikes."""
    h = window // 2
    return np.array([np.median(values[max(0, i - h):i + h + 1]) for i in range(len(values))])


def fast_learning_end(signal: np.ndarray, tail: float = 0.25, window: int = 5) -> int | None:
    """Row index at which the fast-learning phase ends, from an order parameter that is high while the minibatch
    gradients agree: smoothed by a ``window``-row running median, s(t); threshold θ = ½(max s + late level),
    the late level being the median of s over the last ``tail`` of the rows; the fast phase ends after the last
    row with s > θ (from there on s stays at or below θ). None if the maximum is not above the late level (no
    fast phase is resolved: the whole history counts as fast learning)."""
    s = running_median(signal, window)
    late = float(np.median(s[-max(1, int(round(tail * len(s)))):]))
    if not s.max() > late:
        return None
    above = np.nonzero(s > (s.max() + late) / 2)[0]
    return int(above[-1]) + 1


def detect_phases(history: Sequence[Mapping], *, start: float = 0.1, end: float = 0.9, rise: float = 0.9,
                  window: int = 5) -> Phases:
    """Split a per-epoch history into learning phases from training-data signals only: the order parameters
    (``op.*``) and the losses of the correct and mislabeled training subsets. The test error is never read (a
    generalization measure must not see it); it serves to evaluate the detection (tests, ``genbench reproduce
    mlst``).

    Clean data (no ``op.loss_mislabeled``): "fast" until the smoothed corrected squared amplitude
    ``op.amplitude_sq_corrected`` stays at or below the midpoint between its maximum and its late level
    (``fast_learning_end``), "exploration" after.

    With mislabeled data (``op.loss_mislabeled``), smoothed by a centred running median over ``window`` rows
    (SGD and the 512-sample estimate make single epochs spiky): the mislabeled-subset loss L_m(t) — the loss on
    samples whose training label is wrong — rises while the correct samples are fitted (the network predicts
    their true class), peaks at t_p, then falls as the wrong labels are memorised:
      I ends at the first row where the rise from the first row's L_m to the peak is ``rise`` done;
      III starts at the first row after t_p where the fall f(t) = (L_m(t_p) − L_m(t)) / (L_m(t_p) − L_m(T)) is
      ``start`` done (the mislabeled samples are being learned);
      IV starts at the first row with f ≥ ``end`` (they are fitted);
      II lies between I and III (empty when L_m falls right away).
    Details: the epochs of these events and the mean of ``op.cos_correct_mislabeled`` and
    ``op.norm_ratio_mislabeled`` within each phase. A history without the needed keys raises
    ``MissingInputError``.
    """
    epochs = _epochs(history)
    n = len(history)
    if not any(PREFIX + "loss_mislabeled" in row for row in history):
        cut = fast_learning_end(_column(history, PREFIX + "amplitude_sq_corrected"), window=window)
        cut = n if cut is None else cut
        labels = ["fast"] * cut + ["exploration"] * (n - cut)
        return Phases(labels, {"fast": epochs[0], "exploration": epochs[cut] if cut < n else None}, epochs,
                      {"rule": "corrected amplitude stays below its midpoint (running median)"})
    lm = running_median(_column(history, PREFIX + "loss_mislabeled"), window)
    peak = int(np.argmax(lm))
    drop, gain = lm[peak] - lm[-1], lm[peak] - lm[0]
    f = (lm[peak] - lm) / drop if drop > 0 else np.zeros(n)
    t3 = next((i for i in range(peak + 1, n) if f[i] >= start), n)
    t4 = next((i for i in range(t3, n) if f[i] >= end), n)
    t1 = next(i for i in range(peak + 1) if gain <= 0 or lm[i] - lm[0] >= rise * gain)
    t2 = min(t1 + 1, t3)  # I ends with row t1 (the row where the rise is done)
    labels = ["I"] * t2 + ["II"] * (t3 - t2) + ["III"] * (t4 - t3) + ["IV"] * (n - t4)
    starts = {ph: (epochs[i] if i < n and i < nxt else None)
              for ph, i, nxt in (("I", 0, t2), ("II", t2, t3), ("III", t3, t4), ("IV", t4, n))}
    details: dict = {"rule": "mislabeled-loss rise and fall (running median)", "peak_mislabeled_loss_epoch":
                     epochs[peak], "rise_done_epoch": epochs[t1]}
    for key in (PREFIX + "cos_correct_mislabeled", PREFIX + "norm_ratio_mislabeled"):
        if all(key in row for row in history):
            col = _column(history, key)
            for ph in ("I", "II", "III", "IV"):
                sel = [i for i, lab in enumerate(labels) if lab == ph]
                details[f"{ph}.{key.removeprefix(PREFIX)}"] = float(col[sel].mean()) if sel else math.nan
    return Phases(labels, starts, epochs, details)


# ----------------------------------------------------------------------------------------- measures
LATE = 0.1  # phase.late_amplitude_sq averages over the last 10% of the epochs trained


@measure("phase.final_alignment", needs=("history",), sign=-1, family="physics",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), reference=REFERENCE)
def final_alignment(ctx: Context) -> float:
    """Minibatch-gradient alignment at the end of training, op.alignment of the last history row.

    A = mean pairwise cosine of M seeded minibatch gradients (phases.order_parameters). Sign −1: coherent
    gradients (samples that help each other) go with better generalization (Chatterjee 2020, Fort et al.
    2019), while memorisation leaves per-batch gradients pulling apart.
    """
    return float(_column(ctx.history[-1:], PREFIX + "alignment")[0])


@measure("phase.late_amplitude_sq", needs=("history",), sign=-1, family="physics",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), reference=REFERENCE)
def late_amplitude_sq(ctx: Context) -> Value:
    """Mean corrected squared amplitude over the last 10% of the epochs: mean of op.amplitude_sq_corrected over the
    rows with epoch > 0.9·T (T the last epoch; at least the last row).

    κ = ‖G‖²/E‖g_μ‖² (phases.amplitude_sq_corrected): the share of a minibatch gradient's second moment that is
    the full-batch gradient, with the finite-M floor of ‖ḡ‖/mean‖g_μ‖ removed (0 for pure noise, 1 for identical
    gradients). Averaging a tenth of the epochs beats the noise of one epoch's 8-batch estimate. Sign −1: at the
    common target loss, gradients that still share a direction (samples that help each other) go with better
    generalization than pure noise around a memorised solution.
    """
    epochs = np.array(_epochs(ctx.history))
    kappa = _column(ctx.history, PREFIX + "amplitude_sq_corrected")
    sel = epochs > (1 - LATE) * epochs[-1]
    sel[-1] = True
    return Value(float(kappa[sel].mean()), {"rows": int(sel.sum()), "from_epoch": int(epochs[sel][0])})


@measure("phase.exploration_fraction", needs=("history",), sign=1, family="physics",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), reference=REFERENCE,
         version=2)
def exploration_fraction(ctx: Context) -> Value:
    """Fraction of the training epochs spent after the fast-learning phase: (T − e_fast) / T, with T the last
    epoch and e_fast the epoch of the last fast-learning row (epoch column; clean-data rule of detect_phases).

    The fast phase ends once the 5-row running median of op.amplitude_sq_corrected stays at or below the midpoint
    between its maximum and its late level (median of the last quarter of the rows), phases.fast_learning_end.
    Sign +1: a solution that took long, slow exploration to reach the common target loss was harder to fit.
    """
    epochs = _epochs(ctx.history)
    cut = fast_learning_end(_column(ctx.history, PREFIX + "amplitude_sq_corrected"))
    fast = epochs[-1] if cut is None else epochs[cut - 1]
    return Value(1.0 - fast / epochs[-1], {"fast_epochs": fast, "epochs": epochs[-1]})


@measure("phase.mislabeled_fit_epoch_fraction", needs=("history",), sign=-1, family="physics",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), needs_label_noise=True,
         reference=REFERENCE, version=2)
def mislabeled_fit_epoch_fraction(ctx: Context) -> Value:
    """When the mislabeled samples get learned: (epoch at which half of the drop of the mislabeled-subset loss
    from its peak to its final value is done) / (last epoch), from the epoch column. Label-noise models only.

    From op.loss_mislabeled smoothed by a 5-row running median. A history with order parameters but without
    op.loss_mislabeled (a clean-label model) raises NotApplicable; one without order parameters,
    MissingInputError. A loss that never falls gives 1 (details: censored).
    Sign −1: a network that resists memorising the wrong labels for longer generalizes better.
    """
    epochs = _epochs(ctx.history)
    if not any(PREFIX + "loss_mislabeled" in row for row in ctx.history):
        _column(ctx.history, PREFIX + "alignment")  # no order parameters at all: a missing input
        raise NotApplicable("no mislabeled training samples (clean labels): op.loss_mislabeled is not recorded")
    lm = running_median(_column(ctx.history, PREFIX + "loss_mislabeled"))
    peak = int(np.argmax(lm))
    drop = lm[peak] - lm[-1]
    if drop <= 0:
        return Value(1.0, {"peak_epoch": epochs[peak], "epochs": epochs[-1], "censored": True})  # never fitted
    half = next(i for i in range(peak, len(lm)) if lm[peak] - lm[i] >= drop / 2)
    return Value(epochs[half] / epochs[-1], {"half_fit_epoch": epochs[half], "peak_epoch": epochs[peak],
                                             "epochs": epochs[-1]})
