"""The landscape side of the variance–flatness analysis (``measures.flatness``): the training loss along many
directions through a solution, evaluated in batches (``line_loss``), the search for the distances at which it
reaches e·L₀ on either side (``flatness_scan``, a safeguarded secant root finder run for every direction at
once), and the power-law fit of σ² against F (``power_law_fit``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from measures.context import Context, Layer
from measures.losses import fast_cross_entropy

START_SIGMAS = 30.0  # scans start at δ = 30·σ_i: F_i/σ_i is ~10²–10³ on the MLPs tried, growing with i (ψ > 0)


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
SAFEGUARD_AFTER = 8  # rounds of secant/Illinois narrowing before a stalled bracket is bisected


@dataclass(frozen=True)
class FlatnessScan:
    left: torch.Tensor  # (K,) δ_l > 0, NaN where censored
    right: torch.Tensor  # (K,) δ_r > 0, NaN where censored
    censored_left: torch.Tensor  # (K,) bool: no crossing within [min_delta, max_delta]
    censored_right: torch.Tensor
    n_evals: int  # loss evaluations (probes)
    n_rounds: int  # batched passes
    n_unresolved: int = 0  # sides still bracketing after max_rounds, counted among the censored ones

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
    (|log L − log(threshold·L₀)| ≲ 0.6·qtol) or the bracket is ``rtol`` wide. After ``SAFEGUARD_AFTER`` rounds
    of narrowing (more than a smooth loss takes), a step that leaves the bracket more than half as wide (in log δ)
    as two rounds before is replaced by a geometric bisection, so a bracket then narrows at least twofold every
    two rounds whatever the shape of the loss (a kink, a plateau, float noise).
    A side still below the target at ``max_delta``, or above it at ``min_delta``, or without a finite start, is
    censored (NaN). A side still searching after ``max_rounds`` rounds is censored too, and counted in
    ``n_unresolved``: its crossing was not located, and no value is made up for it. ``loss(idx, delta)`` is called
    once per round with every active probe.
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
    widths = [(math.inf, math.inf)] * n_pairs  # the bracket's log-width one and two rounds before
    narrowing = [0] * n_pairs  # rounds spent narrowing a bracket
    result = [math.nan] * n_pairs
    censored = [False] * n_pairs
    active = [j for j in range(n_pairs) if math.isfinite(probe[j])]  # no start (a NaN variance): censored
    for j in set(range(n_pairs)) - set(active):
        censored[j] = True
    n_evals = rounds = 0
    unresolved = 0
    while active:
        if rounds >= max_rounds:
            for j in active:
                censored[j] = True
            unresolved = len(active)
            break
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
                narrowing[j] += 1
                if narrowing[j] > SAFEGUARD_AFTER and s_hi - s_lo > 0.5 * widths[j][1]:  # too slow: bisect
                    s_new = 0.5 * (s_lo + s_hi)
                widths[j] = (s_hi - s_lo, widths[j][0])
                if s_hi - s_lo < math.log1p(rtol):
                    result[j] = math.exp(s_new)
                    continue
                probe[j] = math.exp(s_new)
            still.append(j)
        active = still
    res = torch.tensor(result, dtype=torch.float64).view(n_dirs, 2)
    cens = torch.tensor(censored).view(n_dirs, 2)
    return FlatnessScan(res[:, 0].clone(), res[:, 1].clone(), cens[:, 0].clone(), cens[:, 1].clone(),
                        n_evals, rounds, unresolved)


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


