"""Phases of learning dynamics, with and without mislabeled data (Feng & Tu, MLST 2021; docs/measures/phases.md).

Order parameters at the current weights, from M seeded minibatch gradients g_μ = ∇ (1/B) Σ_{i∈μ} l_i of the
data loss (no weight decay; model in eval mode, so dropout is off), flattened over all parameters:

    alignment  A = mean_{μ<ν} cos(g_μ, g_ν)                 (1 when all minibatch gradients point alike)
    amplitude  R = ‖ḡ‖ / mean_μ ‖g_μ‖,  ḡ = mean_μ g_μ      (in [0, 1]; 1 when they are identical)
    grad_norm = ‖ḡ‖, batch_grad_norm = mean_μ ‖g_μ‖

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

Phases (``detect_phases``, rules in its docstring): clean data — fast learning, then exploration; with
mislabeled data — I (fit the correct samples), II (wander near those solutions), III (learn the mislabeled
ones), IV (everything fitted). Registered end-of-training measures read the ``op.*`` columns of the training
history (``measures.history``), which a trainer fills by calling ``order_parameters`` once per epoch.
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
from measures.registry import Value, measure

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
        norms = g.norm(dim=1)
        unit = g / norms.clamp_min(torch.finfo(g.dtype).tiny)[:, None]
        cos = unit @ unit.T
        mean = g.mean(0)
        out = {"alignment": float((cos.sum() - cos.diagonal().sum()) / (n_batches * (n_batches - 1))),
               "amplitude": float(mean.norm() / norms.mean()) if norms.mean() > 0 else 0.0,
               "grad_norm": float(mean.norm()), "batch_grad_norm": float(norms.mean())}
        if mislabeled is not None:
            bad = mislabeled.to(y.device).bool()
            if bad.shape != y.shape:
                raise ValueError(f"the mislabeled mask has shape {tuple(bad.shape)}, the labels {tuple(y.shape)}")
            n = len(y)
            idx = (torch.randperm(n, generator=generator)[:subset_samples] if subset_samples and subset_samples < n
                   else torch.arange(n)).to(y.device)
            subsets = {"correct": idx[~bad[idx]], "mislabeled": idx[bad[idx]]}
            out.update(_subset_terms(model, params, buffers, x, y, subsets, chunk))
    finally:
        model.train(was_training)
    return out


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
                each = F.cross_entropy(logits, ys, reduction="none")
                parts = torch.autograd.grad(each.sum(), list(leaves.values()))
            g += torch.cat([t.reshape(-1) for t in parts]).double()
            per_sample.append(each.detach())
            total += float(each.detach().sum())
            wrong += int((logits.detach().argmax(1) != ys).sum())
        out[f"loss_{name}"], out[f"error_{name}"] = total / len(sel), wrong / len(sel)
        grads.append(g / len(sel))
        losses.append(torch.cat(per_sample).double())
    if len(grads) == 2:
        gc, gm = grads
        out["cos_correct_mislabeled"] = _cos(gc, gm)
        out["norm_ratio_mislabeled"] = float(gm.norm() / gc.norm()) if gc.norm() > 0 else math.inf
        out["loss_auc"] = loss_auc(*losses)
    else:
        out["cos_correct_mislabeled"] = out["norm_ratio_mislabeled"] = out["loss_auc"] = math.nan
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
@dataclass(frozen=True)
class Phases:
    """A split of a training history into phases: ``labels[i]`` is the phase of history row i;
    ``starts`` the epoch at which each phase begins (None for a phase that does not occur)."""
    labels: list[str]
    starts: dict[str, int | None]
    epochs: list[int]
    details: dict = field(default_factory=dict)

    def fraction(self, phase: str) -> float:
        return sum(lab == phase for lab in self.labels) / len(self.labels)


def _column(history: Sequence[Mapping], key: str) -> np.ndarray:
    missing = [i for i, row in enumerate(history) if key not in row]
    if missing:
        raise MissingInputError(
            f"the history has no {key!r} in {len(missing)} of {len(history)} rows; order parameters are written "
            f"by a trainer that calls phases.order_parameters at each epoch end (genbench's zoo does)")
    return np.array([float(row[key]) for row in history])


def running_median(values: np.ndarray, window: int = 5) -> np.ndarray:
    """Centred running median (the window shrinks at the ends); keeps steps, removes isolated spikes."""
    h = window // 2
    return np.array([np.median(values[max(0, i - h):i + h + 1]) for i in range(len(values))])


def fast_learning_end(alignment: np.ndarray, tail: float = 0.25) -> int | None:
    """Row index at which the fast-learning phase ends: the first row after the alignment's maximum where
    it falls to the midpoint between that maximum and its late level (median of the last ``tail`` of
    rows). None if it never does (the whole history is fast learning)."""
    peak = int(np.argmax(alignment))
    late = float(np.median(alignment[-max(1, int(round(tail * len(alignment)))):]))
    threshold = (alignment[peak] + late) / 2
    after = np.nonzero(alignment[peak + 1:] <= threshold)[0]
    return peak + 1 + int(after[0]) if len(after) and alignment[peak] > late else None


def detect_phases(history: Sequence[Mapping], *, start: float = 0.1, end: float = 0.9,
                  test_tolerance: float = 0.1, window: int = 5) -> Phases:
    """Split a per-epoch history into learning phases.

    Clean data (no ``op.loss_mislabeled``): "fast" until the alignment ``op.alignment`` first falls to the
    midpoint between its maximum and its late level (``fast_learning_end``), "exploration" after.

    With mislabeled data (``op.loss_mislabeled``, ``test_error``), both series first smoothed by a centred
    running median over ``window`` epochs (SGD and the 512-sample estimate make single epochs spiky): the
    mislabeled-subset loss L_m(t) rises while the correct samples are fitted, peaks at t_p, then falls
    towards its final value; f(t) = (L_m(t_p) − L_m(t)) / (L_m(t_p) − L_m(T)) is the fraction of that fall done.
      III starts at the first row after t_p with f ≥ ``start`` (the mislabeled samples are being learned);
      IV starts at the first row with f ≥ ``end`` (they are fitted; the test error plateaus);
      I ends at the first row whose test error is within ``test_tolerance`` × (initial − minimum) of the
      minimum test error (the correct samples are fitted), and no later than the start of III;
      II lies between I and III (empty when L_m falls right away).
    Details: the epochs of these events, the test error at the end of each phase, and the mean of
    ``op.cos_correct_mislabeled`` and ``op.norm_ratio_mislabeled`` within each phase.
    A history without the needed keys raises ``MissingInputError``.
    """
    if not history:
        raise MissingInputError("the history is empty")
    epochs = [int(row.get(H.EPOCH, i + 1)) for i, row in enumerate(history)]
    n = len(history)
    if not any(PREFIX + "loss_mislabeled" in row for row in history):
        cut = fast_learning_end(_column(history, PREFIX + "alignment"))
        cut = n if cut is None else cut
        labels = ["fast"] * cut + ["exploration"] * (n - cut)
        return Phases(labels, {"fast": epochs[0], "exploration": epochs[cut] if cut < n else None}, epochs,
                      {"rule": "alignment midpoint"})
    lm = running_median(_column(history, PREFIX + "loss_mislabeled"), window)
    test = running_median(_column(history, H.TEST_ERROR), window)
    peak = int(np.argmax(lm))
    drop = lm[peak] - lm[-1]
    f = (lm[peak] - lm) / drop if drop > 0 else np.zeros(n)
    later = np.arange(n) > peak
    t3 = next((i for i in range(n) if later[i] and f[i] >= start), n)
    t4 = next((i for i in range(t3, n) if f[i] >= end), n)
    best = float(test.min())
    t1 = next(i for i in range(n) if test[i] <= best + test_tolerance * (test[0] - best))
    t2 = min(t1 + 1, t3)  # I ends with row t1 (the row that reaches the minimum region)
    labels = ["I"] * t2 + ["II"] * (t3 - t2) + ["III"] * (t4 - t3) + ["IV"] * (n - t4)
    starts = {ph: (epochs[i] if i < n and i < nxt else None)
              for ph, i, nxt in (("I", 0, t2), ("II", t2, t3), ("III", t3, t4), ("IV", t4, n))}
    details: dict = {"rule": "mislabeled-loss drop (running median)", "peak_mislabeled_loss_epoch": epochs[peak],
                     "min_test_error": best, "min_test_error_epoch": epochs[int(np.argmin(test))]}
    for key in (PREFIX + "cos_correct_mislabeled", PREFIX + "norm_ratio_mislabeled", H.TEST_ERROR):
        if all(key in row for row in history):
            col = _column(history, key)
            for ph in ("I", "II", "III", "IV"):
                sel = [i for i, lab in enumerate(labels) if lab == ph]
                details[f"{ph}.{key.removeprefix(PREFIX)}"] = float(col[sel].mean()) if sel else math.nan
    return Phases(labels, starts, epochs, details)


# ----------------------------------------------------------------------------------------- measures
@measure("phase.final_alignment", needs=("history",), sign=-1, family="physics", reference=REFERENCE)
def final_alignment(ctx: Context) -> float:
    """Minibatch-gradient alignment at the end of training, op.alignment of the last history row.

    A = mean pairwise cosine of M seeded minibatch gradients (phases.order_parameters). Sign −1: coherent
    gradients (samples that help each other) go with better generalization (Chatterjee 2020, Fort et al.
    2019), while memorisation leaves per-batch gradients pulling apart.
    """
    return float(_column(ctx.history[-1:], PREFIX + "alignment")[0])


@measure("phase.exploration_fraction", needs=("history",), sign=1, family="physics", reference=REFERENCE)
def exploration_fraction(ctx: Context) -> Value:
    """Fraction of the training epochs spent after the fast-learning phase (alignment rule).

    1 − (epochs before op.alignment falls to the midpoint of its maximum and late level) / (epochs).
    Sign +1: a solution that took long, slow exploration to reach the common target loss was harder to fit.
    """
    align = _column(ctx.history, PREFIX + "alignment")
    cut = fast_learning_end(align)
    cut = len(align) if cut is None else cut
    return Value(1.0 - cut / len(align), {"fast_epochs": cut, "epochs": len(align)})


@measure("phase.mislabeled_fit_epoch_fraction", needs=("history",), sign=-1, family="physics",
         reference=REFERENCE)
def mislabeled_fit_epoch_fraction(ctx: Context) -> Value:
    """When the mislabeled samples get learned: (epoch at which half of the drop of the mislabeled-subset loss
    from its peak to its final value is done) / (epochs trained). Label-noise models only.

    From op.loss_mislabeled (mislabeled-mask histories) smoothed by a 5-epoch running median; histories
    without it raise MissingInputError. A loss that never falls gives 1 (details: censored).
    Sign −1: a network that resists memorising the wrong labels for longer generalizes better.
    """
    lm = running_median(_column(ctx.history, PREFIX + "loss_mislabeled"))
    peak = int(np.argmax(lm))
    drop = lm[peak] - lm[-1]
    if drop <= 0:
        return Value(1.0, {"peak_epoch": peak + 1, "epochs": len(lm), "censored": True})  # never fitted
    half = next(i for i in range(peak, len(lm)) if lm[peak] - lm[i] >= drop / 2)
    return Value((half + 1) / len(lm), {"half_fit_epoch": half + 1, "peak_epoch": peak + 1, "epochs": len(lm)})
