"""The inverse variance–flatness relation of SGD solutions (Feng & Tu, PNAS 118, e2015617118, 2021;
arXiv 2001.01678; docs/measures/variance-flatness.md).

From a trained solution w₀ keep running the optimizer that trained it (:class:`_Update`: plain SGD, heavy-ball
momentum or Adam, with the training learning rate, batch size and weight decay, a seeded data order) and record
the analysed weights after every step. Then

1. PCA of the snapshots, w(t) = ⟨w⟩ + Σ_i θ_i(t) p_i with unit p_i ordered by variance, σ_i² the variance
   along p_i;
2. the loss profile along each PC through the solution, L_i(δ) = L(w₀ + δ p_i) (full training set,
   cross-entropy; the origin is the trained solution w₀, not ⟨w⟩);
3. the flatness F_i = δ_r + δ_l, where δ_r, δ_l > 0 are the first distances on either side at which the
   loss reaches e·L₀ (L₀ = L(w₀)): log L − log L₀ = 1. A side that does not cross within
   ``max_shift``·‖w₀‖ (the norm of the analysed weight) is *censored*: it is counted and its PC is kept out
   of the fit, never given a made-up value;
4. the least-squares fit log σ_i² = c − ψ log F_i over the uncensored PCs; ψ > 0 is the inverse relation
   (equilibrium statistical physics would give σ² ∝ F², ψ = −2). PC 1 (the slow drift) is skipped.

Two analyses use these steps.

* :func:`variance_flatness` (:class:`VFSettings`) is the paper's analysis of a whole weight matrix, for
  long trajectories (T several times N, e.g. the reproduction: T = 3,200 for N = 2,500): exact PCA of all
  snapshots (:func:`snapshot_pca`).
* :func:`block_variance_flatness` (:class:`BlockSettings`) is the registered estimator ``vf.block_*``,
  affordable on every model. A short trajectory cannot resolve the PCA of a large matrix: with T < N the
  sample PCs are the slow, still-diffusing directions, whose variance grows with T (the power-law spectrum of a
  random walk), and the fitted ψ drifts with T instead of converging. The estimator therefore analyses
  **four seeded 16×16 sub-matrices (blocks) of the middle hidden-to-hidden matrix** (:func:`middle_hidden_layer`;
  N_b = 256 weights each, from one trajectory of T = 1,000 recorded steps after 100 warm-up steps, T ≈ 4·N_b)
  and measures each block's variances by a **split-sample PCA** (:func:`split_sample_pca`: directions from one
  half of the snapshots, variances along them from the other half), which removes the eigenvalue spreading of a
  sample covariance at T/N ≈ 4 that would steepen the fit by itself. PCs 2, 42, …, 242 of every block enter
  one pooled fit. What it estimates is the ψ of the blocks' long-run fluctuations — the long-trajectory
  PCA of the same blocks — which is *not* the ψ of the whole matrix (a block sees a 256-dimensional marginal
  of the fluctuations); the docs page gives both on the paper's setting and the slow test
  tests/slow/test_vf_validation.py checks the first.

Numerics:

* **Snapshot PCA** (:func:`snapshot_pca`): with N analysed weights and T snapshots the exact PCA is an
  eigenproblem of size min(N, T): ``covariance`` (N ≤ T) accumulates the N×N second moment in float64 from
  blocks of 256 snapshots; ``gram`` (T < N) keeps the T×N snapshots (float32, as differences from the first)
  and diagonalises the T×T Gram matrix; ``lowrank`` (min(N, T) > 6000, or on request) a seeded randomised SVD.
* **Line scans are vectorised** (:func:`flatness_scan`): every (PC, side) pair still searching gets one probe
  per round and all probes of a round are one batched loss evaluation. A search steps outward from δ = 30·σ_i,
  extrapolating q = log[(L − L₀)/((e − 1)L₀)] linearly in log δ, until the loss crosses e·L₀, then narrows
  the bracket by secant steps safeguarded by Illinois regula falsi, until |q| < 1e-3 or the bracket is
  0.1 % wide: about 5 loss evaluations per side on the MLPs tried.
* **Batched loss evaluation** (:func:`line_loss`): when the analysed parameters belong to one Linear or Conv
  layer, its output is linear in its weights, z(δ) = z₀ + δ·(layer applied with weight p_i, no bias), so the
  per-direction outputs are computed once and hooks substitute z₀ + δ_m u_{i_m} for all probes m, folded into
  the sample axis (checked against two direct loss evaluations; otherwise ``torch.func.vmap`` over probes).
  When the directions move few output units of a Linear layer that feeds, through per-unit activations, the
  next Linear layer (the 16×16 blocks of ``vf.block_*``: 16 of its rows), only those units are computed
  (:class:`_SparseLine`): the next layer's output is y₀ + W₂[:, S](φ(z_S(δ)) − φ(z₀,S)). On a width-128 model
  and 2,500 samples this took the block analysis from 1.03 to 0.43 s per model (one thread; ψ equal to
  2·10⁻⁵, the scan's own tolerance, since rounding moves where the secant steps land).
* **The continuation** trains a private copy of the model in eval mode (no dropout noise); the Context's
  parameters are never changed.

Cost of the registered estimator (one CPU thread of a shared 2-core machine, process time): median 1.0 s per
model for a 40→64→64→10 MLP, 1.8 s for 40→256→256→10 when it runs alone (1,100 optimizer steps are most of it;
PCA and the 28 directions' line scans the rest). When several models are measured together (``Context.group``)
the continuation is one stacked run for all of them (:func:`_block_snapshots_many`): 0.26 s per model for 18
40→128→128→10 MLPs against 0.47 s alone. The three ``vf.block_*`` measures share one analysis
(``ctx.shared``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from measures import stacking
from measures.context import Context, Layer, MissingInputError, many_form
from measures.losses import fast_cross_entropy
from measures.registry import NotApplicable, Value, measure

REFERENCE = "Feng & Tu, PNAS 118(9) e2015617118 (2021), arXiv 2001.01678: σ_i² ∝ F_i^(−ψ)"


# --------------------------------------------------------------------------------------------- settings
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
START_SIGMAS = 30.0  # scans start at δ = 30·σ_i: F_i/σ_i is ~10²–10³ on the MLPs tried, growing with i (ψ > 0)


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
class _Update:
    """One step of the optimizer that trained the model, on a list of parameters, with PyTorch's update rules
    (written out here: no torch.optim, whose first step imports a compiler stack):
    sgd θ ← θ − α g; momentum b ← μb + g (b = g at the first step), θ ← θ − αb; adam m ← β₁m + (1−β₁)g,
    v ← β₂v + (1−β₂)g², θ ← θ − α m̂/(√v̂ + 10⁻⁸) with the bias corrections m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ);
    g = ∇L_batch + λθ (L2 weight decay λ) in all three."""

    def __init__(self, ctx: Context):
        self.lr, self.wd = float(ctx.hp("optimizer.lr")), _optional_hp(ctx, "optimizer.weight_decay", 0.0)
        try:
            self.name = str(ctx.hp("optimizer.name"))
        except MissingInputError:
            self.name = "sgd"
        if self.name == "momentum":
            self.mu = float(ctx.hp("optimizer.momentum"))
        elif self.name == "adam":
            self.betas = (_optional_hp(ctx, "optimizer.beta1", 0.9), _optional_hp(ctx, "optimizer.beta2", 0.999))
        elif self.name != "sgd":
            raise NotApplicable(f"the continuation covers the optimizers sgd, momentum and adam, not {self.name!r}")
        self.state: list[list[torch.Tensor]] = []
        self.t = 0

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        self.t += 1
        grads = list(grads)
        if self.wd:
            grads = torch._foreach_add(grads, params, alpha=self.wd)
        if self.name == "sgd":
            torch._foreach_add_(params, grads, alpha=-self.lr)
        elif self.name == "momentum":
            if not self.state:
                self.state = [[g.clone() for g in grads]]
            else:
                torch._foreach_mul_(self.state[0], self.mu)
                torch._foreach_add_(self.state[0], grads)
            torch._foreach_add_(params, self.state[0], alpha=-self.lr)
        else:
            b1, b2 = self.betas
            if not self.state:
                self.state = [[torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]]
            m, v = self.state
            torch._foreach_lerp_(m, grads, 1 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
            c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(c2))
            torch._foreach_add_(denom, 1e-8)
            torch._foreach_addcdiv_(params, m, denom, value=-self.lr / c1)


def optimizer_snapshots(ctx: Context, names: Sequence[str], steps: int, generator: torch.Generator, *,
                        warmup: int = 0, index: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Continue the model's own optimizer (:class:`_Update`) from the trained parameters and
    yield the flattened ``names`` (only the entries ``index`` of that vector, if given) after each of the
    ``steps`` steps that follow ``warmup`` unrecorded ones.

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
    update = _Update(ctx)
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


# --------------------------------------------------------------------------------------------- line losses
LineLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(idx, delta)``: full-training-set losses at w₀ + delta[m]·p[idx[m]], for (M,) tensors -> (M,)."""


class _LayerLine:
    """Loss along directions inside one Linear/Conv layer's parameters, via the layer's linearity.

    z(δ) = layer(a; W₀ + δP_W, b₀ + δP_b) = z₀ + δ·u with u = layer(a; P_W, P_b); u (per PC, per training
    sample) and z₀ are cached; in each pass the layer itself runs on an empty batch (pre-hook) and a forward
    hook substitutes the stacked z₀ + δ_m u_{i_m}, (M·n_chunk, …), folded into the sample axis.
    """
    kind = "layer"

    def __init__(self, ctx: Context, layer: Layer, names: Sequence[str], w0: torch.Tensor, dirs: torch.Tensor,
                 probe_elems: int = 1 << 20):
        self.ctx, self.layer, self.probe_elems = ctx, layer, probe_elems
        self.base = {**ctx.params, **_split(ctx, names, w0)}
        w, b = layer.weight, layer.bias
        pieces = {"weight": torch.stack([_split(ctx, names, d).get(w, torch.zeros_like(self.base[w]))
                                         for d in dirs.to(w0.dtype)])}  # (K, *weight shape)
        if b is not None:
            pieces["bias"] = torch.stack([_split(ctx, names, d).get(b, torch.zeros_like(self.base[b]))
                                          for d in dirs.to(w0.dtype)])
        x = ctx.x_train
        self.chunks = [(i, min(i + ctx.chunk, len(x))) for i in range(0, len(x), ctx.chunk)]
        apply = vmap(lambda p, a: functional_call(layer.module, p, (a,)), in_dims=(0, None))
        base = {"weight": self.base[w], **({"bias": self.base[b]} if b is not None else {})}
        self.u, self.z0 = [], []
        with torch.no_grad():  # u_i = layer(a; p_i) (K, c, *out) and z₀ = layer(a; w₀) (c, *out), per chunk
            for lo, hi in self.chunks:
                a = self._layer_input(x[lo:hi])
                self.u.append(apply(pieces, a))
                self.z0.append(functional_call(layer.module, base, (a,)))
        self.out_numel = self.u[0][0, 0].numel()

    def _layer_input(self, x: torch.Tensor) -> torch.Tensor:
        got = []
        handle = self.layer.module.register_forward_pre_hook(lambda m, inp: got.append(inp[0].detach()))
        try:
            with torch.no_grad():
                self.ctx.forward(x, self.base)
        finally:
            handle.remove()
        if len(got) != 1:
            raise ValueError(f"layer {self.layer.name} ran {len(got)} times in one forward pass")
        return got[0]

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        x, y = self.ctx.x_train, self.ctx.y_train
        m = len(idx)
        total = torch.zeros(m, dtype=torch.float64)
        step = max(1, self.probe_elems // max(1, m * self.out_numel))  # samples per pass
        for (lo, hi), u, z0 in zip(self.chunks, self.u, self.z0):
            d = delta.to(u.dtype).view(-1, *([1] * (u.dim() - 1)))  # (M, 1, …)
            for s in range(lo, hi, step):
                e = min(s + step, hi)
                z = u.narrow(1, s - lo, e - s).index_select(0, idx)  # (M, c, *out), a gathered copy
                z = z.mul_(d).add_(z0.narrow(0, s - lo, e - s)).flatten(0, 1)  # z₀ + δ_m u_{i_m}, every probe m
                total += _substituted_losses(self.ctx, self.base, x[s:e], y[s:e], m, self.layer.module,
                                             self.layer.module, z)
        return total / len(y)


def _substituted_losses(ctx: Context, base: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: int,
                        first: nn.Module, last: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy on (x, y) of each of ``m`` probes whose outputs of module ``last`` are ``output``
    (m·c, …), probe after probe: ``first`` runs on an empty batch (its output at w₀ is known), so do the modules
    up to ``last``, whose output ``output`` replaces; the layers below ``first`` and above ``last`` are the
    model's own code. Returns (m,) float64."""
    def skip(mod, inp):
        return (inp[0][:0],) + tuple(inp[1:])

    handles = [first.register_forward_pre_hook(skip),
               last.register_forward_hook(lambda mod, inp, out: output)]
    try:
        logits = ctx.forward(x, base)  # (m·c, classes)
    finally:
        for h in handles:
            h.remove()
    return fast_cross_entropy(logits, y.repeat(m), reduction="none").view(m, len(y)).double().sum(1)


ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity)


def _acts_per_unit(module: nn.Module) -> bool:
    """Whether ``module`` maps each unit of its input alone, the same way (an elementwise activation, or a
    parameter-free module that returns its input unchanged in eval mode, as dropout does)."""
    if isinstance(module, ELEMENTWISE):
        return True
    if module.training or any(True for _ in module.parameters()):
        return False
    probe = torch.zeros(0)
    try:
        return module(probe) is probe
    except Exception:  # noqa: BLE001 - a module that rejects the probe is not the identity
        return False


def _next_linear(ctx: Context, layer: Layer) -> tuple[Layer, list[nn.Module]] | None:
    """The Linear layer that reads ``layer``'s output through per-unit modules only, and those modules, when
    both are children of one ``nn.Sequential``; else None."""
    parent_name, _, child = layer.name.rpartition(".")
    try:
        parent = ctx.model.get_submodule(parent_name)
    except AttributeError:
        return None
    if not isinstance(parent, nn.Sequential) or child not in parent._modules:
        return None
    names = list(parent._modules)
    between = []
    for name in names[names.index(child) + 1:]:
        module = parent._modules[name]
        if isinstance(module, nn.Linear):
            nxt = next((l for l in ctx.layers if l.module is module), None)
            return None if nxt is None else (nxt, between)
        if not _acts_per_unit(module):
            return None
        between.append(module)
    return None


class _SparseLine:
    """Loss along directions that move few output units of one Linear layer, followed (through per-unit
    activations) by another Linear layer: the block directions of ``vf.block_*`` move 16 of its rows.

    With S_i the units direction i moves (rows of P_i or entries of its bias that are non-zero), only z_S
    changes: z_S(δ) = z₀,S + δ·u_i,S, and the next layer's output is
    y(δ) = y₀ + W₂[:, S] (φ(z_S(δ)) − φ(z₀,S)), φ the activations between the two. The probes of a round are
    computed in that compact form, (probes, |S|, samples), and a forward hook substitutes y(δ) for the next
    layer's output (the layers below run on the samples once per pass, the two layers on an empty batch), so
    everything above the next layer is the model's own code. Exact up to float rounding.
    """
    kind = "sparse"

    def __init__(self, ctx: Context, layer: Layer, after: tuple[Layer, list[nn.Module]], names: Sequence[str],
                 w0: torch.Tensor, dirs: torch.Tensor, probe_elems: int = 1 << 20):
        self.ctx, self.layer, self.probe_elems = ctx, layer, probe_elems
        self.next, self.acts = after
        self.base = {**ctx.params, **_split(ctx, names, w0)}
        w, b = layer.weight, layer.bias
        parts = [_split(ctx, names, d) for d in dirs.to(w0.dtype)]
        pw = torch.stack([q.get(w, torch.zeros_like(self.base[w])) for q in parts])  # (K, out, in)
        no_bias = pw.new_zeros(pw.shape[1])
        pb = torch.stack([q.get(b, no_bias) for q in parts])  # (K, out)
        moved = (pw != 0).any(2) | (pb != 0)  # (K, out)
        width = max(1, int(moved.sum(1).max()))
        if 4 * width > pw.shape[1]:
            raise ValueError(f"the directions move {width} of {pw.shape[1]} units: the compact form gains little")
        # S_i padded to a common width with unit 0 at u = 0, which contributes φ(z₀) − φ(z₀) = 0
        order = torch.argsort((~moved).to(torch.int8), dim=1, stable=True)[:, :width]  # moved units first
        keep = moved.gather(1, order)
        self.units = torch.where(keep, order, torch.zeros_like(order))  # (K, s)
        pw_s = torch.take_along_dim(pw, self.units[:, :, None], dim=1) * keep[:, :, None]  # (K, s, in)
        pb_s = pb.gather(1, self.units) * keep  # (K, s)
        w2 = self.base[self.next.weight]  # (out2, out)
        self.w2t = w2.t().contiguous()  # (out, out2)
        x = ctx.x_train
        self.chunks = [(i, min(i + ctx.chunk, len(x))) for i in range(0, len(x), ctx.chunk)]
        self.u, self.z0t, self.y0 = [], [], []
        with torch.no_grad():  # per chunk: u_S (K, s, c), z₀ᵀ (out, c), y₀ (c, out2)
            for lo, hi in self.chunks:
                a = self._layer_input(x[lo:hi])  # (c, in)
                self.u.append(torch.matmul(pw_s, a.t()) + pb_s[:, :, None])
                z0 = F.linear(a, self.base[w], self.base[b] if b else None)
                self.z0t.append(z0.t().contiguous())
                self.y0.append(F.linear(self._act(z0), w2, self.base[self.next.bias] if self.next.bias else None))

    _layer_input = _LayerLine._layer_input

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        for module in self.acts:
            z = module(z)
        return z

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        x, y = self.ctx.x_train, self.ctx.y_train
        m = len(idx)
        units = self.units.index_select(0, idx)  # (M, s)
        w2 = self.w2t[units]  # (M, s, out2)
        total = torch.zeros(m, dtype=torch.float64)
        step = max(1, self.probe_elems // max(1, m * max(units.shape[1], w2.shape[2])))  # samples per pass
        for (lo, hi), u, z0t, y0 in zip(self.chunks, self.u, self.z0t, self.y0):
            d = delta.to(u.dtype)[:, None, None]
            for s in range(lo, hi, step):
                e = min(s + step, hi)
                zs = z0t[:, s - lo:e - lo][units]  # (M, s, c): z₀ of each probe's units
                z = torch.addcmul(zs, u[idx, :, s - lo:e - lo], d)
                change = torch.bmm(w2.transpose(1, 2), self._act(z).sub_(self._act(zs)))  # (M, out2, c)
                out = change.transpose(1, 2).add_(y0[s - lo:e - lo]).flatten(0, 1)  # (M·c, out2)
                total += _substituted_losses(self.ctx, self.base, x[s:e], y[s:e], m, self.layer.module,
                                             self.next.module, out)  # y(δ) replaces the next layer's output
        return total / len(y)


class _ParamLine:
    """Loss along arbitrary parameter directions: ``vmap`` of the functional loss over perturbed vectors."""
    kind = "vmap"

    def __init__(self, ctx: Context, names: Sequence[str], w0: torch.Tensor, dirs: torch.Tensor,
                 probes_per_pass: int = 8):
        self.ctx, self.names, self.w0, self.dirs = ctx, list(names), w0, dirs.to(w0.dtype)
        self.probes_per_pass = probes_per_pass

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        w = self.w0[None] + delta.to(self.w0.dtype)[:, None] * self.dirs[idx]  # (M, N)
        f = lambda v: self.ctx.loss({**self.ctx.params, **_split(self.ctx, self.names, v)})
        return torch.cat([vmap(f)(w[i:i + self.probes_per_pass])
                          for i in range(0, len(w), self.probes_per_pass)]).double()


def _split(ctx: Context, names: Sequence[str], vec: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k in names:
        p = ctx.params[k]
        out[k] = vec[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


def line_loss(ctx: Context, names: Sequence[str], w0: torch.Tensor, dirs: torch.Tensor, *,
              fast: bool = True) -> LineLoss:
    """The batched loss along ``dirs`` (K, N) through ``w0`` (N,) in the space of parameters ``names``:
    when ``names`` lie in one Linear/Conv layer (and ``fast``), the compact path for directions that move few
    units of a Linear layer (``_SparseLine``) or the layer-linearity path (``_LayerLine``), else ``vmap``."""
    w0 = w0.to(ctx.params[names[0]].dtype)
    layer = next((l for l in ctx.layers if set(names) <= {l.weight, l.bias} - {None}), None)
    if fast and layer is not None:
        # The hook folds probes into the sample axis, which a model that mixes samples, or calls the layer
        # twice, does not allow: check that capability once against two direct evaluations at δ ≠ 0 and use
        # vmap otherwise. Only a shape error or a wrong value selects the fallback; nothing is hidden.
        idx = torch.tensor([0, len(dirs) - 1])
        delta = torch.tensor([0.05, -0.1]) * max(float(w0.norm()), 1e-3)
        direct = torch.stack([ctx.loss({**ctx.params, **_split(ctx, names, w0 + d * dirs[i].to(w0.dtype))})
                              for i, d in zip(idx, delta)]).double()
        after = _next_linear(ctx, layer) if isinstance(layer.module, nn.Linear) else None
        makers = [lambda: _LayerLine(ctx, layer, names, w0, dirs)]
        if after is not None:  # directions that move few units of a Linear layer: the compact form first
            makers.insert(0, lambda: _SparseLine(ctx, layer, after, names, w0, dirs))
        for make in makers:
            try:
                line = make()
                probe = line(idx, delta)
            except (RuntimeError, ValueError):
                continue
            if torch.allclose(probe, direct, rtol=1e-4, atol=1e-7):
                return line
    return _ParamLine(ctx, names, w0, dirs)


# --------------------------------------------------------------------------------------------- flatness
@dataclass(frozen=True)
class FlatnessScan:
    left: torch.Tensor  # (K,) δ_l > 0, NaN where censored
    right: torch.Tensor  # (K,) δ_r > 0, NaN where censored
    censored_left: torch.Tensor  # (K,) bool: no crossing within [min_delta, max_delta]
    censored_right: torch.Tensor
    n_evals: int  # loss evaluations (probes)
    n_rounds: int  # batched passes

    @property
    def flatness(self) -> torch.Tensor:
        """F = δ_l + δ_r; NaN where either side is censored."""
        return self.left + self.right

    @property
    def n_censored(self) -> int:
        return int(self.censored_left.sum() + self.censored_right.sum())


def flatness_scan(loss: LineLoss, n_dirs: int, loss0: float, start: torch.Tensor | float,
                  max_delta: torch.Tensor | float, *, min_delta: torch.Tensor | float = 0.0,
                  threshold: float = math.e, qtol: float = 1e-3, rtol: float = 1e-3,
                  max_rounds: int = 100) -> FlatnessScan:
    """Distances δ_l, δ_r > 0 at which L(∓δ) first reaches ``threshold``·L₀, for every direction at once.

    The search works on q(δ) = log[(L(δ) − L₀) / ((threshold − 1) L₀)], zero at the crossing and close to
    linear in log δ (slope 2 for a quadratic rise). Each (direction, side) pair starts at δ = ``start`` and
    steps outward, extrapolating q linearly in log δ (slope 2 at first, then the measured one, aiming 10 %
    past the crossing; factor clamped to 1.25…64, ×4 while the loss has not risen), or inward by 1/4 while
    already above the target, until the crossing is bracketed; then the bracket is narrowed by secant steps
    through the last two probes when they land inside it, else the Illinois variant of regula falsi on
    (log δ, q) (a geometric bisection where q is undefined), until |q| < ``qtol``
    (|log L − log(threshold·L₀)| ≲ 0.6·qtol) or the bracket is ``rtol`` wide. A side still below the target
    at ``max_delta``, or above it at ``min_delta``, is censored (NaN). ``loss(idx, delta)`` is called once
    per round with every active probe.
    """
    if not loss0 > 0:
        raise ValueError(f"the flatness threshold needs L0 > 0, got {loss0}")
    need = (threshold - 1.0) * loss0
    n_pairs = 2 * n_dirs  # pair j: direction j // 2, side −1 (j even) or +1 (j odd)
    as_list = lambda v: [float(t) for t in torch.as_tensor(v, dtype=torch.float64).expand(n_dirs)
                         .repeat_interleave(2)]
    dmax, dmin = as_list(max_delta), as_list(min_delta)
    probe = [min(p, m) for p, m in zip(as_list(start), dmax)]
    lo, q_lo = [0.0] * n_pairs, [-math.inf] * n_pairs  # largest δ known below the target (0: the minimum)
    hi, q_hi = [math.inf] * n_pairs, [math.inf] * n_pairs  # smallest δ known above it
    qe_lo, qe_hi, last = [-math.inf] * n_pairs, [math.inf] * n_pairs, [""] * n_pairs  # Illinois state
    recent = [(math.nan, math.nan)] * n_pairs  # the previous probe (δ, q), for secant steps
    result = [math.nan] * n_pairs
    censored = [False] * n_pairs
    active = list(range(n_pairs))
    n_evals = rounds = 0
    while active:
        if rounds >= max_rounds:
            raise RuntimeError(f"flatness_scan did not converge in {max_rounds} rounds")
        rounds += 1
        idx = torch.tensor([j // 2 for j in active])
        delta = torch.tensor([probe[j] * (1.0 if j % 2 else -1.0) for j in active], dtype=torch.float64)
        values = loss(idx, delta).double().tolist()
        n_evals += len(active)
        still = []
        for j, value in zip(active, values):
            d = probe[j]
            rise = value - loss0 if math.isfinite(value) else math.inf
            q = math.log(rise / need) if rise > 0 else -math.inf
            if abs(q) < qtol:
                result[j] = d
                continue
            before, recent[j] = recent[j], (d, q)
            if q < 0:
                prev_d, prev_q = lo[j], q_lo[j]
                lo[j], q_lo[j], qe_lo[j] = d, q, q
                if last[j] == "lo":
                    qe_hi[j] *= 0.5
                last[j] = "lo"
            else:
                hi[j], q_hi[j], qe_hi[j] = d, q, q
                if last[j] == "hi":
                    qe_lo[j] *= 0.5
                last[j] = "hi"
            if math.isinf(hi[j]):  # below the target so far: step outward
                if d >= dmax[j]:
                    censored[j] = True
                    continue
                if math.isinf(q):
                    factor = 4.0
                else:
                    slope = 2.0
                    if prev_d > 0 and math.isfinite(prev_q):
                        slope = min(max((q - prev_q) / math.log(d / prev_d), 1.0), 8.0)
                    factor = 1.1 * math.exp(-q / slope)
                probe[j] = min(d * min(max(factor, 1.25), 64.0), dmax[j])
            elif lo[j] == 0.0:  # above the target at the first probe already: step inward
                if d <= dmin[j]:
                    censored[j] = True
                    continue
                probe[j] = max(d / 4.0, dmin[j])
            else:  # bracketed: a secant step through the last two probes if it stays inside the bracket,
                # else Illinois regula falsi on the bracket, else (q undefined at an end) geometric bisection
                s_lo, s_hi = math.log(lo[j]), math.log(hi[j])
                s_new = math.nan
                if math.isfinite(q) and math.isfinite(before[1]) and before[1] != q and before[0] > 0:
                    s_new = math.log(d) - q * (math.log(d) - math.log(before[0])) / (q - before[1])
                if not s_lo < s_new < s_hi:
                    if math.isfinite(qe_lo[j]) and math.isfinite(qe_hi[j]):
                        s_new = s_lo - qe_lo[j] * (s_hi - s_lo) / (qe_hi[j] - qe_lo[j])
                    else:
                        s_new = 0.5 * (s_lo + s_hi)
                if s_hi - s_lo < math.log1p(rtol):
                    result[j] = math.exp(s_new)
                    continue
                probe[j] = math.exp(s_new)
            still.append(j)
        active = still
    res = torch.tensor(result, dtype=torch.float64).view(n_dirs, 2)
    cens = torch.tensor(censored).view(n_dirs, 2)
    return FlatnessScan(res[:, 0].clone(), res[:, 1].clone(), cens[:, 0].clone(), cens[:, 1].clone(),
                        n_evals, rounds)


# --------------------------------------------------------------------------------------------- fit
@dataclass(frozen=True)
class PowerLawFit:
    """log y = c − ψ log x by least squares."""
    psi: float
    intercept: float
    r2: float
    n: int
    se: float = math.nan  # standard error of ψ (ordinary least squares, n − 2 degrees of freedom)


def power_law_fit(y: np.ndarray | torch.Tensor, x: np.ndarray | torch.Tensor) -> PowerLawFit:
    """Fit log y = c − ψ log x over the pairs where both are finite and positive (ψ = minus the slope).
    Fewer than 3 usable pairs give NaN."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    if ok.sum() < 3 or np.ptp(lx) == 0:
        return PowerLawFit(math.nan, math.nan, math.nan, int(ok.sum()))
    slope, icpt = np.polyfit(lx, ly, 1)
    resid = ly - (icpt + slope * lx)
    ss = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - (resid ** 2).sum() / ss if ss > 0 else math.nan
    se = math.sqrt((resid ** 2).sum() / (ok.sum() - 2) / ((lx - lx.mean()) ** 2).sum()) if ok.sum() > 2 else math.nan
    return PowerLawFit(float(-slope), float(icpt), float(r2), int(ok.sum()), float(se))


# --------------------------------------------------------------------------------------------- analysis
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


# --------------------------------------------------------------------------------------------- block estimator
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
                         loss0=ctx.train_loss, optimizer=optimizer)


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
    name = _Update(ctx).name
    snaps = torch.stack(list(optimizer_snapshots(ctx, (layer.weight,), settings.steps, gen, warmup=settings.warmup,
                                                 index=index.reshape(-1).to(ctx.device))))
    return BlockSnapshots(rows, cols, index, snaps.cpu(), name)


@many_form(_block_snapshots)
def _block_snapshots_many(ctxs: Sequence[Context], settings: BlockSettings) -> list:
    """:func:`_block_snapshots` of several models at once: models that share an architecture
    (:mod:`measures.stacking`), batch size, training-set size and optimizer take their continued steps
    together, each with its own data, data order, learning rate, weight decay and optimizer state, as one
    stacked forward and backward pass per step (:class:`_StackedUpdate`). The result of each model equals
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
            key = (prog, int(c.hp("train.batch_size")), len(c.y_train), _Update(c).name,
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


class _StackedUpdate:
    """:class:`_Update` for M stacked models, on their ``(M, P)`` parameter buffer: the same rules, with every
    hyperparameter an (M, 1) column."""

    def __init__(self, ctxs: Sequence[Context], device: torch.device):
        ups = [_Update(c) for c in ctxs]  # one optimizer for all: the many form groups the models by it
        col = lambda vals: torch.tensor(vals, dtype=torch.float32, device=device)[:, None]
        self.name, self.lr, self.wd, self.t = ups[0].name, col([u.lr for u in ups]), col([u.wd for u in ups]), 0
        if self.name == "momentum":
            self.mu = col([u.mu for u in ups])
        elif self.name == "adam":
            self.b1, self.b2 = col([u.betas[0] for u in ups]), col([u.betas[1] for u in ups])
        self.state: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        self.t += 1
        if self.wd.any():
            grad = grad + self.wd * flat
        if self.name == "sgd":
            flat.sub_(self.lr * grad)
        elif self.name == "momentum":
            if not self.state:
                self.state = [grad.clone()]
            else:
                self.state[0].mul_(self.mu).add_(grad)
            flat.sub_(self.lr * self.state[0])
        else:
            if not self.state:
                self.state = [torch.zeros_like(flat), torch.zeros_like(flat)]
            m, v = self.state
            c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
            m.lerp_(grad, 1 - self.b1)
            v.mul_(self.b2).add_((1 - self.b2) * grad * grad)
            flat.sub_(self.lr / c1 * (m / v.sqrt().div_(c2.sqrt()).add_(1e-8)))


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
    update = _StackedUpdate(ctxs, device)
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
        update(flat, torch.cat([g.reshape(m, -1) for g in grads], 1))
        if step >= settings.warmup:
            snaps.append(flat.detach().gather(1, where))
    return torch.stack(snaps)


# --------------------------------------------------------------------------------------------- measures
NEEDS = ("model", "train_data", "hparams")


def _block(ctx: Context, settings: BlockSettings) -> BlockVFResult:
    return block_variance_flatness(ctx, settings)


def _block_name(r: BlockVFResult) -> str:
    return f"{r.rows.shape[0]}x{r.rows.shape[1]}x{r.cols.shape[1]}"


def _details(r: BlockVFResult) -> dict:
    return {"r2": r.fit.r2, "se": r.fit.se, "n_pcs": r.fit.n, "n_censored_left": int(r.censored_left.sum()),
            "n_censored_right": int(r.censored_right.sum()), "pcs": f"{int(r.pcs.min())}-{int(r.pcs.max())}",
            "layer": r.layer, "block": _block_name(r), "steps": len(r.snapshots), "optimizer": r.optimizer}


@measure("vf.block_exponent", needs=NEEDS, sign=-1, family="physics",
         invariances=("permutation",), seeded=True, reference=REFERENCE, version=1)
def vf_block_exponent(ctx: Context) -> Value:
    """Variance–flatness exponent ψ, σ_i² ∝ F_i^(−ψ), of the steady-state fluctuations of four 16×16 blocks of the
    middle hidden-to-hidden weight matrix under the model's own optimizer continued.

    1,000 recorded steps (after 100 warm-up steps) of the blocks' weights; per block a split-sample PCA
    (directions p_i from one half of the snapshots, σ_i² = p_iᵀ Σ_B p_i from the other); F_i = δ_l + δ_r, the
    width of the full-training-loss profile L(w₀ + δ p_i) at e·L₀; one least-squares fit of
    log σ_i² = c − ψ log F_i over PCs 2, 42, 82, …, 242 of every block, censored PCs left out and counted.
    Sign −1 (a hypothesis, not from the paper): a larger ψ is a stronger landscape-dependent annealing, which
    should drive SGD towards flat solutions. Details: R², PCs used, censored sides per side, layer, blocks,
    steps, optimizer.
    """
    r = ctx.shared(_block, BLOCK)
    return Value(r.fit.psi, _details(r))


@measure("vf.block_flatness_mean_log", needs=NEEDS, sign=-1, family="physics",
         invariances=("permutation",), seeded=True, reference=REFERENCE, version=1)
def vf_block_flatness_mean_log(ctx: Context) -> Value:
    """Mean log flatness, mean_i log F_i, along the fitted fluctuation directions of the block analysis
    (``vf.block_exponent``): PCs 2, 42, …, 242 of four 16×16 blocks of the middle hidden-to-hidden matrix.

    F_i = δ_l + δ_r at e·L₀ of the full training loss. Censored PCs (a side beyond the search range
    10·‖W‖) are left out and counted, which biases the mean low. Sign −1: flatter solutions are expected to
    generalize better.
    """
    r = ctx.shared(_block, BLOCK)
    ok = r.used
    return Value(float(np.log(r.flatness[ok]).mean()) if ok.any() else math.nan, _details(r))


@measure("vf.block_weight_variance", needs=NEEDS, sign=-1, family="physics",
         invariances=("permutation",), seeded=True, reference=REFERENCE, version=1)
def vf_block_weight_variance(ctx: Context) -> Value:
    """Mean steady-state variance per weight of four 16×16 blocks of the middle hidden-to-hidden matrix under
    the model's own optimizer continued, (1/(T·N)) Σ_t ‖w_t − ⟨w⟩‖², T = 1,000, N = 4·256 block entries.

    Sign −1 (a hypothesis): a solution around which the optimizer wanders widely at (near) constant loss
    sits in a broad basin, the PAC-Bayes picture of a flat minimum.
    """
    r = ctx.shared(_block, BLOCK)
    return Value(r.weight_variance, {"layer": r.layer, "block": _block_name(r), "steps": len(r.snapshots),
                                     "optimizer": r.optimizer})
