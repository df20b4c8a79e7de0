"""The variance–flatness analysis of a whole weight matrix (Feng & Tu, PNAS 118, e2015617118, 2021;
docs/measures/variance-flatness.md), which only the reproduction (``genbench reproduce pnas``) runs: exact PCA
of a long trajectory of the analysed weights (``measures.flatness.snapshot_pca``; T several times N, e.g.
T = 3,200 for N = 2,500), the flatness F_i from the solution w₀ along the chosen PCs
(``measures.flatness.flatness_scan`` over ``line_loss``, PCs scanned in groups under a memory cap), and the fit
log σ_i² = c − ψ log F_i over the uncensored PCs (PC 1, the drift, left out). The registered estimator on
short trajectories is ``measures.flatness`` (``vf.block_*``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from measures.context import Context
from measures.flatness import (
    START_SIGMAS,
    PCAResult,
    PowerLawFit,
    analysed_names,
    flatness_scan,
    line_loss,
    optimizer_snapshots,
    power_law_fit,
    snapshot_pca,
)

SPREAD_PCS = tuple(range(2, 12)) + tuple(range(20, 151, 10))  # PCs 2–11 and every 10th from 20 to 150


@dataclass(frozen=True)
class VFSettings:
    """What one variance–flatness analysis does (hashable, so ``ctx.shared`` computes it once per model)."""
    steps: int = 200  # SGD steps after the solution; one snapshot after every step
    params: str | tuple[str, ...] = "penultimate"  # "penultimate" | "weights" | "all" | parameter names
    pcs: tuple[int, ...] = SPREAD_PCS  # 1-based PCs scanned and fitted (PC 1, the drift, left out)
    threshold: float = math.e  # the loss level e·L₀ that defines F
    max_shift: float = 10.0  # each side searched up to max_shift · ‖w₀‖ (analysed weights); beyond: censored
    pca: str = "auto"  # "auto" | "covariance" | "gram" | "lowrank"
    memory_mb: float = 128.0  # cap on the cached per-PC layer outputs; PCs are scanned in groups under it


DEFAULT = VFSettings()


@dataclass(frozen=True)
class VFResult:
    """One variance–flatness analysis. Arrays are indexed like ``pcs`` (1-based PC numbers)."""
    names: tuple[str, ...]
    pcs: np.ndarray  # (K,) 1-based PC indices scanned
    variance: np.ndarray  # (K,) σ_i²
    flatness: np.ndarray  # (K,) F_i, NaN where a side is censored
    left: np.ndarray
    right: np.ndarray
    censored_left: np.ndarray
    censored_right: np.ndarray
    fit: PowerLawFit
    pca: PCAResult
    w0: torch.Tensor  # (N,) the solution (origin of the scans)
    loss0: float
    max_delta: float
    line_kind: str
    n_evals: int
    n_rounds: int
    extra: dict = field(default_factory=dict)

    @property
    def n_censored(self) -> int:
        """Censored sides (each PC has two)."""
        return int(self.censored_left.sum() + self.censored_right.sum())

    @property
    def used(self) -> np.ndarray:
        """PCs in the fit: both sides crossed."""
        return np.isfinite(self.flatness)


def _groups(n_dirs: int, per_dir_bytes: float, budget_bytes: float) -> list[range]:
    size = max(1, int(budget_bytes // max(per_dir_bytes, 1.0)))
    return [range(i, min(i + size, n_dirs)) for i in range(0, n_dirs, size)]


def variance_flatness(ctx: Context, settings: VFSettings = DEFAULT) -> VFResult:
    """Run the whole analysis (module docstring) on the Context's trained model: ``settings.steps`` steps of
    its own optimizer from the solution, then :func:`snapshot_flatness`."""
    names = analysed_names(ctx, settings.params)
    gen = ctx.generator(f"vf/{settings.steps}/{','.join(names)}")
    snaps = optimizer_snapshots(ctx, names, settings.steps, gen)
    return snapshot_flatness(ctx, names, snaps, settings.steps, settings, generator=gen)


def snapshot_flatness(ctx: Context, names: Sequence[str], snapshots: Iterable[torch.Tensor], n_snapshots: int,
                      settings: VFSettings = DEFAULT, *, generator: torch.Generator | None = None) -> VFResult:
    """The analysis of any trajectory of the parameters ``names``: PCA of the ``n_snapshots`` vectors
    ``snapshots``, the flatness F_i from the Context's current weights w₀ along ``settings.pcs``, and the
    fit of σ_i² against F_i. ``settings.steps`` is not used (the snapshots are given)."""
    w0 = torch.cat([ctx.params[k].reshape(-1) for k in names]).detach()
    pca = snapshot_pca(snapshots, n_snapshots, [p - 1 for p in sorted(set(settings.pcs)) if p >= 1],
                       method=settings.pca, generator=generator)
    if len(pca.index) == 0:
        raise ValueError(f"none of PCs {settings.pcs} is resolved by {n_snapshots} snapshots")
    pcs = pca.index.numpy() + 1
    var = pca.variances
    dirs = pca.components.to(w0.dtype)  # (K, N)
    loss0 = ctx.train_loss
    max_delta = settings.max_shift * float(w0.norm())
    left, right, cl, cr = [], [], [], []
    n_evals = n_rounds = 0
    layer_out = _layer_output_numel(ctx, names)
    per_dir = 4.0 * len(ctx.y_train) * (layer_out or 0)
    kind = "vmap"
    for grp in _groups(len(pcs), per_dir, settings.memory_mb * 2**20):
        idx = list(grp)
        line = line_loss(ctx, names, w0, dirs[idx])
        kind = line.kind
        start = START_SIGMAS * var[idx].sqrt().clamp_min(1e-6 * max_delta)
        scan = flatness_scan(line, len(idx), loss0, start=start, max_delta=max_delta,
                             min_delta=1e-7 * max_delta, threshold=settings.threshold)
        left.append(scan.left), right.append(scan.right)
        cl.append(scan.censored_left), cr.append(scan.censored_right)
        n_evals += scan.n_evals
        n_rounds += scan.n_rounds
    left, right = torch.cat(left).numpy(), torch.cat(right).numpy()
    flat = left + right
    fit = power_law_fit(var.numpy(), flat)
    return VFResult(names, pcs, var.numpy(), flat, left, right, torch.cat(cl).numpy(), torch.cat(cr).numpy(),
                    fit, pca, w0, loss0, max_delta, kind, n_evals, n_rounds)


def _layer_output_numel(ctx: Context, names: Sequence[str]) -> int | None:
    """Per-sample output size of the single layer holding ``names`` (None if they span several layers)."""
    layer = next((l for l in ctx.layers if set(names) <= {l.weight, l.bias} - {None}), None)
    if layer is None:
        return None
    got = []
    h = layer.module.register_forward_hook(lambda m, i, o: got.append(o[0].numel()))
    try:
        with torch.no_grad():
            ctx.forward(ctx.x_train[:1])
    finally:
        h.remove()
    return got[0] if got else None


def loss_profiles(ctx: Context, result: VFResult, pcs: Sequence[int], deltas: torch.Tensor) -> np.ndarray:
    """L(w₀ + δ p_i) on the full training set for the 1-based PCs ``pcs`` (among those analysed) and the
    offsets ``deltas``: (len(pcs), len(deltas))."""
    pcs = list(pcs)
    dirs = result.pca.components[[result.pca.row(p) for p in pcs]].to(result.w0.dtype)
    line = line_loss(ctx, result.names, result.w0, dirs)
    idx = torch.arange(len(pcs)).repeat_interleave(len(deltas))
    d = deltas.repeat(len(pcs))
    return line(idx, d).view(len(pcs), len(deltas)).numpy()


