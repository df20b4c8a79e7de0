"""The registered variance–flatness estimator (``vf.block_*``, ``measures.flatness``): seeded 16×16 blocks
of the middle hidden-to-hidden weight matrix, the model's own optimizer continued (alone, or stacked with the
models of its group), a split-sample PCA of each block and the flatness along the fitted directions.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from measures import stacking
from measures.context import Context, Layer, MissingInputError, many_form
from measures.flatness.landscape import START_SIGMAS, PowerLawFit, flatness_scan, line_loss, power_law_fit
from measures.flatness.sampling import continued_optimizer, optimizer_snapshots, split_sample_pca
from measures.registry import NotApplicable
from measures.updates import Update


@dataclass(frozen=True)
class BlockSettings:
    """The registered estimator (module docstring, "The registered measures"); hashable for ``ctx.shared``."""
    size: int = 16  # size × size sub-matrices of the middle hidden-to-hidden matrix (N_b = 256 weights each)
    blocks: int = 4  # independent seeded blocks from the same trajectory, pooled in one fit
    steps: int = 1000  # recorded steps of the continued optimizer, one snapshot each (T ≈ 4·N_b)
    warmup: int = 100  # unrecorded steps first (optimizer state, start-up transient)
    chunk: int = 25  # consecutive snapshots per chunk; even chunks → half A, odd chunks → half B
    pc_stride: int = 40  # PCs 2, 42, 82, … ≤ N_b of every block are scanned and fitted (PC 1, the drift, left out)
    threshold: float = math.e
    max_shift: float = 10.0  # as VFSettings.max_shift, relative to the norm of the whole analysed matrix


BLOCK = BlockSettings()


def middle_hidden_layer(ctx: Context) -> Layer:
    """The middle one of the hidden-to-hidden layers (every parametrised layer but the first and the last):
    the 50×50 matrix of the paper's 784→50→50→10 net, the w×w matrix of a depth-2 MLP, the middle one for
    deeper MLPs (the earlier of two), the middle conv kernel of a ConvNet (as a matrix out × in·k).
    NotApplicable for a model with fewer than three layers (no hidden-to-hidden matrix)."""
    hidden = ctx.layers[1:-1]
    if not hidden:
        raise NotApplicable(f"no hidden-to-hidden layer: the model has {len(ctx.layers)} parametrised layer(s)")
    return hidden[(len(hidden) - 1) // 2]


def block_index(shape: Sequence[int], size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor]:
    """A seeded size × size sub-matrix of a weight of ``shape`` viewed as (out, in·k): sorted random rows and
    columns, and the (size²,) positions of its entries in the flattened weight (row-major)."""
    n_rows, n_cols = shape[0], math.prod(shape[1:])
    rows = torch.randperm(n_rows, generator=generator)[:size].sort().values
    cols = torch.randperm(n_cols, generator=generator)[:size].sort().values
    return rows, cols, (rows[:, None] * n_cols + cols[None, :]).reshape(-1)



@dataclass(frozen=True)
class BlockVFResult:
    """One block analysis. Arrays are indexed like ``pcs`` (1-based, ranks of Σ_A)."""
    layer: str  # parameter name of the analysed weight
    rows: torch.Tensor  # (blocks, b) rows of its matrix view
    cols: torch.Tensor  # (blocks, b) columns
    index: torch.Tensor  # (blocks, b²) positions in the flattened weight
    snapshots: torch.Tensor  # (T, blocks·b²) float64, the recorded block entries, block after block
    pcs: np.ndarray  # (K,) 1-based PC of its block
    block: np.ndarray  # (K,) which block
    directions: torch.Tensor  # (K, b²) unit directions inside their block
    variance: np.ndarray  # (K,) split-sample σ_i²
    left: np.ndarray
    right: np.ndarray
    censored_left: np.ndarray
    censored_right: np.ndarray
    fit: PowerLawFit
    loss0: float
    optimizer: str
    unresolved: int = 0  # sides whose scan ran out of rounds (counted among the censored)

    @property
    def flatness(self) -> np.ndarray:
        return self.left + self.right

    @property
    def used(self) -> np.ndarray:
        return np.isfinite(self.flatness) & (self.variance > 0)

    @property
    def weight_variance(self) -> float:
        """Mean variance per block weight over all T snapshots, (1/(T·N_b)) Σ_t ‖w_t − ⟨w⟩‖²."""
        x = self.snapshots - self.snapshots.mean(0)
        return float((x ** 2).sum() / x.numel())


def block_fit(ctx: Context, layer: str, index: torch.Tensor, snapshots: torch.Tensor,
              settings: BlockSettings = BLOCK, optimizer: str = "") -> BlockVFResult:
    """σ², F and ψ from given block snapshots (T, blocks·b²) of weight ``layer`` at positions ``index``
    (blocks, b²): split-sample PCA of each block, PCs 2, 2 + stride, … of each pooled; flatness of the full
    training loss along each fitted direction (embedded in the whole weight, through the trained solution w₀);
    censored sides counted and left out; least squares of log σ_i² = c − ψ log F_i. Takes the snapshots as an
    argument so that any trajectory can be analysed (the tests feed it a random walk)."""
    index = index.reshape(-1, index.shape[-1])
    finite = torch.isfinite(snapshots).all(1)
    if not finite.all():
        first = int((~finite).nonzero()[0]) + 1
        raise NotApplicable(f"the continued optimizer diverged: the weights of {layer} are not finite from recorded "
                            f"step {first} of {len(snapshots)} on (after {settings.warmup} unrecorded warm-up steps)")
    nb = index.shape[1]
    w0 = ctx.params[layer].reshape(-1)
    pcs, which, dirs, var, full = [], [], [], [], []
    for k, idx in enumerate(index):
        d, v = split_sample_pca(snapshots[:, k * nb:(k + 1) * nb], settings.chunk)
        sel = np.arange(2, nb + 1, settings.pc_stride)
        pcs.append(sel), which.append(np.full(len(sel), k)), dirs.append(d[sel - 1]), var.append(v[sel - 1])
        f = torch.zeros(len(sel), w0.numel(), dtype=w0.dtype, device=w0.device)
        f[:, idx.to(w0.device)] = d[sel - 1].to(f)
        full.append(f)
    pcs, which = np.concatenate(pcs), np.concatenate(which)
    dirs, var, full = torch.cat(dirs), torch.cat(var), torch.cat(full)
    max_delta = settings.max_shift * float(w0.norm())
    line = line_loss(ctx, (layer,), w0, full)
    start = START_SIGMAS * var.clamp_min(0).sqrt().clamp_min(1e-6 * max_delta)
    scan = flatness_scan(line, len(pcs), ctx.train_loss, start=start, max_delta=max_delta,
                         min_delta=1e-7 * max_delta, threshold=settings.threshold)
    var_np, flat = var.numpy(), scan.flatness.numpy()
    return BlockVFResult(layer=layer, rows=torch.empty(0), cols=torch.empty(0), index=index,
                         snapshots=snapshots.double(), pcs=pcs, block=which, directions=dirs, variance=var_np,
                         left=scan.left.numpy(), right=scan.right.numpy(), censored_left=scan.censored_left.numpy(),
                         censored_right=scan.censored_right.numpy(), fit=power_law_fit(var_np, flat),
                         loss0=ctx.train_loss, optimizer=optimizer, unresolved=scan.n_unresolved)


def block_variance_flatness(ctx: Context, settings: BlockSettings = BLOCK) -> BlockVFResult:
    """The registered analysis: ``blocks`` seeded blocks of the middle hidden-to-hidden matrix, the model's own
    optimizer continued (``warmup`` + ``steps`` steps, one trajectory for all blocks), then :func:`block_fit`.
    The continuation is a shared intermediate with a many-model form (:func:`_block_snapshots_many`)."""
    layer = middle_hidden_layer(ctx)
    blocks = ctx.shared(_block_snapshots, settings)
    r = block_fit(ctx, layer.weight, blocks.index, blocks.snapshots, settings, blocks.optimizer)
    return dataclasses.replace(r, rows=blocks.rows, cols=blocks.cols)


@dataclass(frozen=True)
class BlockSnapshots:
    rows: torch.Tensor  # (blocks, b)
    cols: torch.Tensor  # (blocks, b)
    index: torch.Tensor  # (blocks, b²) positions in the flattened weight
    snapshots: torch.Tensor  # (T, blocks·b²) on the CPU
    optimizer: str


def _block_draws(ctx: Context, settings: BlockSettings) -> tuple[Layer, torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Generator]:
    """The analysed layer, the seeded blocks and the generator, positioned for the continuation's data order."""
    layer = middle_hidden_layer(ctx)
    gen = ctx.generator(f"vf.block/{settings.size}")
    shape = ctx.params[layer.weight].shape
    rows, cols, index = zip(*(block_index(shape, settings.size, gen) for _ in range(settings.blocks)))
    return layer, torch.stack(rows), torch.stack(cols), torch.stack(index), gen


def _block_snapshots(ctx: Context, settings: BlockSettings) -> BlockSnapshots:
    """The blocks' entries after each recorded step of the continued optimizer (:func:`optimizer_snapshots`)."""
    layer, rows, cols, index, gen = _block_draws(ctx, settings)
    name = continued_optimizer(ctx).name
    snaps = torch.stack(list(optimizer_snapshots(ctx, (layer.weight,), settings.steps, gen, warmup=settings.warmup,
                                                 index=index.reshape(-1).to(ctx.device))))
    return BlockSnapshots(rows, cols, index, snaps.cpu(), name)


@many_form(_block_snapshots)
def _block_snapshots_many(ctxs: Sequence[Context], settings: BlockSettings) -> list:
    """:func:`_block_snapshots` of several models at once: models that share an architecture
    (:mod:`measures.stacking`), batch size, training-set size and optimizer take their continued steps
    together, each with its own data, data order, learning rate, weight decay and optimizer state, as one
    stacked forward and backward pass per step (:func:`_stacked_update`). The result of each model equals
    its own continuation up to float rounding (tests/unit/measures/test_flatness.py checks it). A model it
    cannot include (no stacked form, a missing input, an optimizer without a stacked rule) gets
    ``NotImplemented`` and is computed alone."""
    out: list = [NotImplemented] * len(ctxs)
    groups: dict[tuple, list[int]] = {}  # (program, batch size, n, optimizer, analysed weight, device) -> members
    for i, c in enumerate(ctxs):
        prog = stacking.program(c.model)
        if prog is None:
            continue
        try:
            key = (prog, int(c.hp("train.batch_size")), len(c.y_train), continued_optimizer(c).name,
                   middle_hidden_layer(c).weight, c.device)
        except (MissingInputError, NotApplicable):
            continue
        groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        draws = [_block_draws(ctxs[i], settings) for i in members]
        snaps = _stacked_snapshots([ctxs[i] for i in members], key[0], key[4],
                                   torch.stack([d[3].reshape(-1) for d in draws]), [d[4] for d in draws], settings)
        if snaps is None:
            continue
        for j, (i, d) in enumerate(zip(members, draws)):
            out[i] = BlockSnapshots(d[1], d[2], d[3], snaps[:, j].cpu(), key[3])
    return out


def _stacked_update(ctxs: Sequence[Context], device: torch.device) -> Update:
    """The continued optimizer of M stacked models (one optimizer for all: the many form groups the models by
    it), on their ``(M, P)`` parameter buffer, with every hyperparameter an (M, 1) column; the unfused
    arithmetic of ``measures.updates``."""
    opts = [continued_optimizer(c) for c in ctxs]
    col = lambda vals: torch.tensor(vals, dtype=torch.float32, device=device)[:, None]
    return Update(opts[0].name, col([o.lr for o in opts]), weight_decay=col([o.weight_decay for o in opts]),
                  momentum=col([o.momentum for o in opts]),
                  betas=(col([o.betas[0] for o in opts]), col([o.betas[1] for o in opts])), fused=False)


def _stacked_snapshots(ctxs: Sequence[Context], prog: stacking.Program, weight: str, index: torch.Tensor,
                       gens: Sequence[torch.Generator], settings: BlockSettings) -> torch.Tensor | None:
    """The continuation of :func:`optimizer_snapshots` for stacked models: (T, M, K) entries ``index`` (M, K)
    of ``weight`` after each recorded step, or None when the stacked pass does not reproduce the models."""
    device, m = ctxs[0].device, len(ctxs)
    flat = stacking.stack(prog, [c.params for c in ctxs])
    params = [v.detach().requires_grad_(True) for v in stacking.views(prog, flat)]  # leaves aliasing flat's rows
    x = torch.stack([c.x_train for c in ctxs])  # (M, n, ...)
    if not stacking.matches(prog, params, [c.model for c in ctxs], list(x[:, :8])):
        return None
    n, in_shape = x.shape[1], x.shape[2:]
    x, y = x.reshape(m * n, *in_shape), torch.stack([c.y_train for c in ctxs]).reshape(-1)
    offset = torch.arange(m, device=device)[:, None] * n  # row r of model j is row j·n + r of x and y
    update = _stacked_update(ctxs, device)
    where = stacking.flat_index(prog, weight, index.to(device))
    bs = int(ctxs[0].hp("train.batch_size"))
    snaps, perm, pos = [], None, n
    for step in range(settings.warmup + settings.steps):
        if pos >= n:
            perm, pos = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device) + offset, 0
        idx = perm[:, pos:pos + bs].reshape(-1)
        pos += bs
        with torch.enable_grad():
            logits = stacking.forward(prog, params, x.index_select(0, idx).view(m, -1, *in_shape))
            each = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.index_select(0, idx), reduction="none")
            grads = torch.autograd.grad(each.view(m, -1).mean(1).sum(), params)
        update([flat], [torch.cat([g.reshape(m, -1) for g in grads], 1)])
        if step >= settings.warmup:
            snaps.append(flat.detach().gather(1, where))
    return torch.stack(snaps)


