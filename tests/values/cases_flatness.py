"""The variance–flatness block measures (Feng & Tu, PNAS 2021) against the analysis redone by hand: the model's
SGD continued by a plain loop (seeded epochs of minibatches, as in training), a numpy split-sample PCA of the
recorded weights (chunks of 25 steps, even chunks → directions, odd chunks → variances), the first distances on
each side where the full training loss (float64, by hand) reaches e·L₀ along each direction, the least-squares
fit log σ² = c − ψ log F, the mean log F and the mean per-weight variance.

The network: a 4 → 12 → 12 → 3 tanh MLP fitted by full-batch descent. Its middle hidden-to-hidden weight is a
12×12 matrix, so each of the measure's four seeded 16×16 blocks is all of it (every row and column, sorted):
the four blocks hold the same 144 weights in the same order, and the four fits of PCs 2, 42, 82, 122 coincide."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from measures.seeding import generator
from measures.testing import ValueCase
from tests.helpers import fit

SEED = 3
HP = {"optimizer.name": "sgd", "optimizer.lr": 0.05, "train.batch_size": 20}
BLOCKS, WARMUP, STEPS, CHUNK, PCS = 4, 100, 1000, 25, (2, 42, 82, 122)  # the registered estimator's settings


def trained_tanh_net(seed: int = SEED, n: int = 200, width: int = 12) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model, x, y): the tanh MLP fitted to a linear three-class rule by 300 full-batch steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.randn(4, 3, generator=g)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3))
    fit(model, x, y, steps=300, lr=0.2)
    return model, x, y


def continued_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(STEPS, 144): the middle weight after each of the STEPS steps of plain SGD (lr 0.05, batches of 20 from a
    fresh permutation each epoch) that follow WARMUP unrecorded ones, on a copy of the model. The batches come
    from the measure's seeded stream ("vf.block/16"), after the eight permutations of 12 that draw the four
    blocks' rows and columns."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    g = generator(SEED, "vf.block/16")
    for _ in range(8):
        torch.randperm(12, generator=g)
    lr, bs, n = HP["optimizer.lr"], HP["train.batch_size"], len(y)
    perm, pos, out = None, n, []
    for step in range(WARMUP + STEPS):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
        with torch.no_grad():
            for p, d in zip(params, grads):
                p.add_(d, alpha=-lr)
        if step >= WARMUP:
            out.append(model[2].weight.detach().reshape(-1).double().clone())
    return torch.stack(out).numpy()


def _first_crossing(loss_of, level: float, top: float) -> float:
    """The first δ in (0, top] with loss_of(δ) ≥ level, by a 5 %-step geometric grid and bisection."""
    grid = torch.logspace(math.log10(top) - 8, math.log10(top), 379, dtype=torch.float64)  # ×1.05 per step
    above = (loss_of(grid) >= level).nonzero()
    assert len(above) and int(above[0]) > 0, "no crossing, or one below the grid"
    lo, hi = float(grid[int(above[0]) - 1]), float(grid[int(above[0])])
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(loss_of(torch.tensor([mid], dtype=torch.float64))[0]) < level else (lo, mid)
    return 0.5 * (lo + hi)


def analysis(model: nn.Module, x: torch.Tensor, y: torch.Tensor, snaps: np.ndarray) -> dict[str, float]:
    """ψ (and its standard error), mean log F and the mean per-weight variance from the snapshots of the
    middle weight."""
    cov = lambda h: (h - h.mean(0)).T @ (h - h.mean(0)) / len(h)  # noqa: E731
    ch = snaps.reshape(-1, CHUNK, snaps.shape[1])
    half_a, half_b = ch[0::2].reshape(-1, snaps.shape[1]), ch[1::2].reshape(-1, snaps.shape[1])
    vecs = np.linalg.eigh(cov(half_a))[1][:, ::-1]
    dirs = [vecs[:, p - 1] for p in PCS]
    sigma2 = np.array([d @ cov(half_b) @ d for d in dirs])

    w1, b1, w0, b2, w3, b3 = (t.detach().double() for t in model.parameters())
    h1 = torch.tanh(x.double() @ w1.T + b1)  # the analysed layer's input, fixed along every line
    loss0 = float(F.cross_entropy(torch.tanh(h1 @ w0.T + b2) @ w3.T + b3, y))

    def line(direction):
        full = torch.from_numpy(direction.copy())

        def loss_of(deltas):  # full-training-set loss at w0 + δ·p for every δ
            w = w0[None] + deltas[:, None, None] * full.reshape(1, *w0.shape)
            logits = torch.tanh(torch.einsum("ni,doi->dno", h1, w) + b2) @ w3.T + b3
            return F.cross_entropy(logits.permute(0, 2, 1), y.expand(len(deltas), -1), reduction="none").mean(1)
        return loss_of

    top = 10 * float(w0.norm())
    level = math.e * loss0
    flat = np.array([_first_crossing(line(d), level, top) + _first_crossing(line(-d), level, top) for d in dirs])
    flat, sigma2 = np.tile(flat, BLOCKS), np.tile(sigma2, BLOCKS)  # one fit pools the points of the four blocks
    slope, icpt = np.polyfit(np.log(flat), np.log(sigma2), 1)
    resid = np.log(sigma2) - icpt - slope * np.log(flat)
    se = np.sqrt((resid ** 2).sum() / (len(flat) - 2) / ((np.log(flat) - np.log(flat).mean()) ** 2).sum())
    return {"vf.block_exponent": float(-slope), "vf.block_flatness_mean_log": float(np.log(flat).mean()),
            "vf.block_weight_variance": float(((snaps - snaps.mean(0)) ** 2).mean()), "se": float(se)}


MODEL, X, Y = trained_tanh_net()
SNAPSHOTS = continued_sgd(MODEL, X, Y)
REFERENCE = analysis(MODEL, X, Y, SNAPSHOTS)


def _case(name: str, why: str, **tol) -> ValueCase:
    return ValueCase(name, MODEL, REFERENCE[name], train=(X, Y), hparams=HP, seed=SEED, why=why, **tol)


# the measure's scans stop within |log L − log(e·L₀)| ≲ 6e-4 (or a 0.1 %-wide bracket): F to ~5e-4
CASES = [
    _case("vf.block_exponent", "−slope of log σ² on log F over PCs 2, 42, 82, 122", rel=5e-3),
    _case("vf.block_flatness_mean_log", "mean log F over PCs 2, 42, 82, 122", rel=0.0, abs=1e-3),
    _case("vf.block_weight_variance", "(1/(T·N)) Σ_t ‖w_t − ⟨w⟩‖² of the continued SGD", rel=1e-9),
]
