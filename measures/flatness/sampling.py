"""The trajectory side of the variance–flatness analysis (``measures.flatness``): the model's own optimizer
continued from its trained solution, recording the analysed weights after every step, and the principal
components of such a trajectory (the exact snapshot PCA and the split-sample PCA of the block estimator).

The continuation applies the optimizer that trained the model (plain SGD, heavy-ball momentum or Adam, with
the training learning rate, batch size and weight decay; ``measures.updates``) to a private copy of the model
in eval mode (no dropout noise), with a seeded data order; the Context's parameters are never changed.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from measures.context import Context, MissingInputError
from measures.registry import NotApplicable
from measures.updates import ADAM_BETAS, OPTIMIZERS, Update


def analysed_names(ctx: Context, params: str | Sequence[str]) -> tuple[str, ...]:
    """Parameter names the analysis records: ``"penultimate"`` the weight of the last layer before the
    output layer (the hidden-to-hidden 50×50 matrix of the paper's 784→50→50→10 net), ``"weights"`` every
    layer's weight, ``"all"`` every parameter, or explicit names."""
    if params == "penultimate":
        layers = ctx.layers
        return (layers[-2].weight if len(layers) >= 2 else layers[-1].weight,)
    if params == "weights":
        return tuple(layer.weight for layer in ctx.layers)
    if params == "all":
        return tuple(ctx.params)
    names = tuple(params)
    unknown = [n for n in names if n not in ctx.params]
    if unknown or not names:
        raise ValueError(f"unknown parameter names {unknown or names}; valid: {', '.join(ctx.params)}")
    return names


def _optional_hp(ctx: Context, key: str, default: float) -> float:
    try:
        return float(ctx.hp(key))
    except MissingInputError:
        return default


# --------------------------------------------------------------------------------------------- continuation
@dataclass(frozen=True)
class Continued:
    """The optimizer that trained a model, as the continuation runs it: its name (``measures.updates``'
    ``OPTIMIZERS``), learning rate, L2 weight decay, momentum (heavy ball) and betas (Adam)."""
    name: str
    lr: float
    weight_decay: float
    momentum: float = 0.0
    betas: tuple[float, float] = ADAM_BETAS


def continued_optimizer(ctx: Context) -> Continued:
    """The optimizer of the Context's hyperparameters (``optimizer.name``, default sgd; ``optimizer.lr``,
    ``optimizer.weight_decay``, ``optimizer.momentum``, ``optimizer.beta1``/``beta2``). NotApplicable for
    an optimizer the continuation does not cover."""
    lr, wd = float(ctx.hp("optimizer.lr")), _optional_hp(ctx, "optimizer.weight_decay", 0.0)
    try:
        name = str(ctx.hp("optimizer.name"))
    except MissingInputError:
        name = "sgd"
    if name not in OPTIMIZERS:
        raise NotApplicable(f"the continuation covers the optimizers sgd, momentum and adam, not {name!r}")
    if name == "momentum":
        return Continued(name, lr, wd, momentum=float(ctx.hp("optimizer.momentum")))
    if name == "adam":
        return Continued(name, lr, wd, betas=(_optional_hp(ctx, "optimizer.beta1", ADAM_BETAS[0]),
                                              _optional_hp(ctx, "optimizer.beta2", ADAM_BETAS[1])))
    return Continued(name, lr, wd)


def optimizer_snapshots(ctx: Context, names: Sequence[str], steps: int, generator: torch.Generator, *,
                        warmup: int = 0, index: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Continue the model's own optimizer (:func:`continued_optimizer`, torch.optim's arithmetic) from the
    trained parameters and yield the flattened ``names`` (only the entries ``index`` of that vector, if given)
    after each of the ``steps`` steps that follow ``warmup`` unrecorded ones.

    Minibatches of ``train.batch_size`` come from a fresh random permutation of the training set each epoch
    (the last, smaller batch of an epoch kept, as in training). The optimizer's state starts empty; the
    warm-up steps bring the momentum buffer (heavy ball) or Adam's moments to their running values before
    anything is recorded, so the recorded steps follow the optimizer's steady-state dynamics rather than
    its start-up. The model runs in eval mode (no dropout noise); the Context's parameters are not modified.
    """
    bs = int(ctx.hp("train.batch_size"))
    model = copy.deepcopy(ctx.model)  # a private copy (eval mode), trained in place
    params = dict(model.named_parameters())
    plist = list(params.values())
    opt = continued_optimizer(ctx)
    update = Update(opt.name, opt.lr, weight_decay=opt.weight_decay, momentum=opt.momentum, betas=opt.betas,
                    root="sqrt")
    x, y = ctx.x_train, ctx.y_train
    n = len(y)
    perm, pos = None, n
    for step in range(warmup + steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=generator).to(x.device), 0
        idx = perm[pos:pos + bs]
        pos += bs
        update(plist, torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), plist))
        if step >= warmup:
            with torch.no_grad():
                snapshot = torch.cat([params[k].detach().reshape(-1) for k in names])
                yield snapshot if index is None else snapshot[index]


# --------------------------------------------------------------------------------------------- PCA
@dataclass(frozen=True)
class PCAResult:
    index: torch.Tensor  # (k,) 0-based ranks of the returned components (PC i+1 for rank i)
    variances: torch.Tensor  # (k,) σ² of those components, float64
    components: torch.Tensor  # (k, N) their unit-norm principal directions p_i
    mean: torch.Tensor  # (N,) time average ⟨w⟩
    spectrum: torch.Tensor  # (r,) every variance the method resolves, descending (all min(N, T) if exact)
    total_variance: float  # Σ_i σ_i² over all N directions = (1/T) Σ_t ‖w_t − ⟨w⟩‖²
    n_snapshots: int
    method: str

    def row(self, pc: int) -> int:
        """Row of ``components`` holding the 1-based PC ``pc``."""
        hits = (self.index == pc - 1).nonzero()
        if len(hits) == 0:
            raise KeyError(f"PC {pc} was not computed; computed: {(self.index + 1).tolist()}")
        return int(hits[0, 0])


def _pca_method(n: int, t: int, method: str) -> str:
    if method != "auto":
        if method not in ("covariance", "gram", "lowrank"):
            raise ValueError(f"unknown PCA method {method!r}; valid: auto, covariance, gram, lowrank")
        return method
    if min(n, t) > 6000:
        return "lowrank"
    return "covariance" if n <= t else "gram"


def snapshot_pca(snapshots: Iterable[torch.Tensor], n_snapshots: int, components: int | Sequence[int], *,
                 method: str = "auto", generator: torch.Generator | None = None,
                 block: int = 256) -> PCAResult:
    """PCA of T = ``n_snapshots`` vectors w_t ∈ R^N streamed from ``snapshots``, with the 1/T normalisation
    σ_i² = (1/T) Σ_t θ_i(t)². ``components``: how many leading PCs to return, or their 0-based ranks (only
    those directions are formed). Ranks beyond what the data resolve (variance ≤ 1e-12·σ_1²) are dropped.
    Methods: see the module docstring; memory N²·8 bytes (covariance) or T·N·4 bytes (gram, lowrank)."""
    it = iter(snapshots)
    first = next(it).detach().double()  # reference point: snapshots are handled as w_t − w_1
    n = first.numel()
    method = _pca_method(n, n_snapshots, method)
    want = torch.arange(components) if isinstance(components, int) else torch.as_tensor(list(components))
    want = want[(want >= 0) & (want < min(n, n_snapshots))].long()
    if method == "covariance":
        s1 = torch.zeros(n, dtype=torch.float64)
        s2 = torch.zeros(n, n, dtype=torch.float64)
        buf, t = [torch.zeros(n, dtype=torch.float64)], 1

        def flush():
            nonlocal s1, s2
            xb = torch.stack(buf)  # (block, N)
            s1 += xb.sum(0)
            s2 += xb.T @ xb
            buf.clear()

        for w in it:
            buf.append(w.detach().double() - first)
            t += 1
            if len(buf) == block:
                flush()
        if buf:
            flush()
        mu = s1 / t
        cov = s2 / t - torch.outer(mu, mu)  # (N, N)
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
        want = want[evals[want] > evals[0] * 1e-12]
        return PCAResult(want, evals[want], evecs[:, want].T.contiguous(), first + mu, evals,
                         float(torch.diagonal(cov).sum()), t, method)
    first32 = first.float()
    x = torch.empty(n_snapshots, n, dtype=torch.float32)
    x[0] = 0.0
    t = 1
    for w in it:
        if t >= n_snapshots:
            raise ValueError(f"snapshot_pca was told {n_snapshots} snapshots but got more")
        torch.sub(w.detach().float(), first32, out=x[t])
        t += 1
    x = x[:t]
    mu = x.mean(0)
    xc = x.sub_(mu)  # (T, N), centred in place
    mu = mu.double()
    want = want[want < t]
    if method == "gram":
        gram = (xc @ xc.T).double() / t  # (T, T); float32 products: leading variances to ~1e-6 relative
        total = float(torch.trace(gram))
        evals, u = torch.linalg.eigh(gram)
        evals, u = evals.flip(0).clamp_min(0.0), u.flip(1)
        want = want[evals[want] > evals[0] * 1e-12]
        comps = (u[:, want].T.float() @ xc).double() / torch.sqrt(t * evals[want])[:, None]  # (k, N)
        return PCAResult(want, evals[want], comps, first + mu, evals, total, t, method)
    total = float(torch.linalg.vector_norm(xc, dtype=torch.float64) ** 2 / t)
    q = min(int(want.max()) + 11 if len(want) else 10, t, n)
    s, v = randomized_svd(xc, q, generator=generator)
    evals = (s.double() ** 2) / t
    want = want[(want < q) & (evals[want.clamp(max=q - 1)] > evals[0] * 1e-12)]
    return PCAResult(want, evals[want], v[want].double(), first + mu, evals, total, t, method)


def randomized_svd(x: torch.Tensor, q: int, *, n_iter: int = 4,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading q singular values and right singular vectors (q, N) of x (T, N) by the randomised range
    finder with ``n_iter`` power iterations (Halko, Martinsson & Tropp 2011, alg. 4.4), seeded."""
    omega = torch.randn(x.shape[1], q, generator=generator, dtype=x.dtype)
    basis, _ = torch.linalg.qr(x @ omega)  # (T, q)
    for _ in range(n_iter):
        basis, _ = torch.linalg.qr(x.T @ basis)  # (N, q)
        basis, _ = torch.linalg.qr(x @ basis)  # (T, q)
    _, s, vt = torch.linalg.svd(basis.T @ x, full_matrices=False)  # (q, N)
    return s, vt



def split_sample_pca(snapshots: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal directions from one half of the snapshots, their variances from the other half.

    ``snapshots`` (T, N) are cut into chunks of ``chunk`` consecutive steps; even chunks form half A, odd ones
    half B (interleaved, so a slow drift affects both alike). With Σ_A, Σ_B the covariances of the halves
    (each centred on its own mean, 1/T_half), the directions p_i are the eigenvectors of Σ_A by decreasing
    eigenvalue and σ_i² = p_iᵀ Σ_B p_i. Returns (N, N) directions as rows and (N,) variances, float64.

    Why: the eigenvalues of a sample covariance are spread out, the top ones biased up and the bottom ones
    down, when T is not much larger than N (the Marchenko–Pastur spreading). That spreading steepens the
    σ²-against-F relation by itself. The variance along a *fixed* direction measured on independent data
    carries no such bias, so the split-sample variances converge much faster in T to the long-run values.
    """
    t, n = snapshots.shape
    t = t // (2 * chunk) * 2 * chunk
    if t < 4 * chunk:
        raise ValueError(f"split_sample_pca needs at least {4 * chunk} snapshots, got {snapshots.shape[0]}")
    x = snapshots[:t].double().reshape(-1, chunk, n)  # (chunks, chunk, N)
    halves = []
    for h in (x[0::2].reshape(-1, n), x[1::2].reshape(-1, n)):
        h = h - h.mean(0)
        halves.append(h.T @ h / len(h))  # (N, N)
    evals, evecs = torch.linalg.eigh(halves[0])
    dirs = evecs.flip(1).T.contiguous()  # (N, N), rows by decreasing Σ_A eigenvalue
    return dirs, ((dirs @ halves[1]) * dirs).sum(1)

