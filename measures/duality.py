"""Activity–weight duality (Feng, Zhang & Tu, Nat. Mach. Intell. 5, 908–918, 2023; docs/measures/duality.md).

For a dense layer z = W a (+ b), a change Δa of the layer's input activity is the same, for everything
downstream, as the weight change ΔW with (W + ΔW) a = W (a + Δa). The minimal-Frobenius-norm solution is

    ΔW* = (W Δa) aᵀ / ‖a‖²                                                    (rank one; ‖ΔW*‖ = ‖WΔa‖/‖a‖)

Pair a partner input x' with an anchor training sample x of the same class. With a = activity of x at the layer
input and Δa = activity(x') − a, the loss difference Δl = l(x') − l(x) equals l(x; W + ΔW*) − l(x; W) exactly.
With the gradient-like vector g = Δl ΔW*/‖ΔW*‖² (so that ⟨g, ΔW*⟩ = Δl) projected, like ΔW*, on an orthonormal
basis v_n of weight space (the eigenvectors of the layer's training-loss Hessian), per direction n over the K
pairs: μ_w,n, μ_g,n (means), σ_w,n, σ_g,n (population standard deviations, 1/K) and c_n (their correlation), and

    mean_k Δl_k = Σ_n (μ_g,n μ_w,n + c_n σ_g,n σ_w,n)          (exact over a COMPLETE basis, any basis)

because c_n σ_g,n σ_w,n is the covariance of the two projections. Over a complete basis each sum is
basis-free: Σ_n μ_g,n μ_w,n = ⟨ḡ, ΔW̄⟩, Σ_n c_n σ_g,n σ_w,n = mean Δl − ⟨ḡ, ΔW̄⟩, Σ_n σ_w,n² = mean ‖ΔW_k‖² −
‖ΔW̄‖², Σ_n σ_g,n² likewise — they are computed that way, exactly, without any eigenbasis. The Hessian
eigenbasis is needed only to split the sums by direction (the per-direction table); the quadratic estimate
½ Σ_n λ_n σ_w,n² (near a minimum g ≈ ½ H ΔW, so direction n contributes ≈ ½ λ_n σ_w,n²) is ½ tr(H Σ_w)
over the complete basis, again basis-free.

Choices (documented, configurable through ``ctx.extras``):
- Layer (``extras["duality.layer"]``: an index into ``ctx.layers``). Default: the last Linear layer that is
  neither the first parametrised layer nor the output layer (the last hidden-to-hidden matrix of an MLP, as
  the authors); a model without one (depth-1 MLP, the zoo's CNN) uses its output layer, whose input is the
  last hidden activity. Conv layers are rejected: they share W across positions, so the rank-one ΔW* above
  does not apply. The layer must be used once per forward pass, on one activity vector per sample.
- Clean samples (``extras["mislabeled"]``: a bool mask over the training samples, or None): as the authors,
  only the correctly labelled training samples enter the pairs, the Hessian and the gap. Without a mask
  every training sample counts as clean.
- Training-data-only measures (``duality.mid.*``): each clean training sample x_k is an anchor; its partner is
  the MIDPOINT m_k = (x_k + x_j)/2 between it and its nearest clean training sample x_j of the same label
  (Euclidean, flattened raw inputs, excluding itself), with label y_k. The model fitted both endpoints but
  never saw m_k, so Δl_k = l(m_k) − l(x_k) is a loss change on an unfitted input a typical same-class
  distance away (half the nearest-neighbour distance), the role a test sample plays in the paper. Pairing a
  training sample with the training neighbour itself gives Δl ≈ 0 (both fitted), which is degenerate.
- Oracle analysis: each test sample is paired with its nearest same-class clean training sample (the paper).
- Pairs whose anchor activity is exactly zero (a = 0: every unit feeding the layer dead) have no dual
  weights; they are dropped and counted in ``details["dropped"]``. A pair with W Δa = 0 has ΔW* = 0 and
  Δl = 0; its g is set to 0.
- Hessian (of the mean cross-entropy over the clean training samples — all of them, or a seeded subset of
  ``extras["curvature_samples"]`` of them when that is set — with respect to the layer's weight): exact and
  structured, H = (1/N) Σ_k H_z,k ⊗ a_k a_kᵀ, where H_z,k is sample k's loss Hessian with respect to the
  layer's output (exact for any downstream network, since z is linear in W; obtained with a forward hook and
  a double backward through the downstream layers only). Dense for layers with at most ``dense_max`` = 1024
  weights (the 30×30 layer of the paper; the cost grows as N·(out·in)²); otherwise the top
  ``extras["duality.top_k"]`` (default 20) eigenpairs by Lanczos with full reorthogonalisation (2k steps,
  start vector from ``ctx.generator``) on the same structured Hessian-vector product (equal to
  ``ctx.hvp(v, names=[weight])`` on the same samples, which is about 2× slower). The top-k directions carry
  only part of the decomposition (``details["topk_fraction"]`` of the oracle measure); the complete-basis
  sums stay exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

from measures.context import Context, Layer
from measures.losses import fast_cross_entropy
from measures.registry import Value, measure

REFERENCE = "Feng, Zhang & Tu, Nat. Mach. Intell. 5, 908 (2023), eqs. (2)–(6); docs/measures/duality.md"
DENSE_MAX = 1024
TOP_K = 20
PROBES = 64  # Hutchinson probes of duality.mid.gap_hessian on layers above DENSE_MAX
PROBE_BATCH = 4  # probes whose matrices are formed together (one matmul), then multiplied by H one by one
PAIR_BLOCK = 512  # pairs per gathered block of the projections (a block in cache: ~3x faster than all at once)


# ----------------------------------------------------------------------------------------- the duality
def dual_weights(w: torch.Tensor, a: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """Minimal-Frobenius-norm dual weights ΔW*_k = (W Δa_k) a_kᵀ / ‖a_k‖² for every sample k.

    ``w`` (out, in), ``a`` and ``da`` (K, in) → (K, out, in). Solves (W + ΔW_k) a_k = W (a_k + Δa_k).
    """
    u = da @ w.T  # (K, out)
    return u[:, :, None] * a[:, None, :] / (a * a).sum(1)[:, None, None]


def select_layer(ctx: Context, index: int | None = None) -> Layer:
    """The analysed layer: ``ctx.layers[index]``, or by default the last Linear layer that is neither the
    first nor the output layer (else the output layer). Conv layers are an error."""
    layers = ctx.layers
    if index is None:
        index = ctx.extras.get("duality.layer")
    if index is None:
        hidden = [i for i, l in enumerate(layers[:-1]) if i > 0 and isinstance(l.module, nn.Linear)]
        index = hidden[-1] if hidden else len(layers) - 1
    layer = layers[index]
    if not isinstance(layer.module, nn.Linear):
        raise ValueError(
            f"activity–weight duality needs a dense layer; ctx.layers[{index}] ({layer.name}) is a "
            f"{type(layer.module).__name__}, whose weights are shared across positions, so the rank-one dual "
            f"weights do not apply. Choose a Linear layer with extras['duality.layer'] = index.")
    return layer


def layer_inputs(ctx: Context, layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """Activities entering ``layer`` (trained weights, eval mode), captured by a forward pre-hook: (K, in)."""
    seen: list[torch.Tensor] = []
    handle = layer.module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            for i in range(0, len(x), ctx.chunk):
                ctx.forward(x[i:i + ctx.chunk])
    finally:
        handle.remove()
    a = torch.cat(seen)
    if a.shape != (len(x), layer.module.in_features):
        raise ValueError(f"layer {layer.name} saw inputs of shape {tuple(a.shape)} for {len(x)} samples; the "
                         f"duality needs one activity vector per sample, used once per forward pass")
    return a


def per_sample_loss(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample at the trained weights: (K,)."""
    return fast_cross_entropy(ctx.logits(x), y, reduction="none")


def nearest_same_class(x_query: torch.Tensor, y_query: torch.Tensor, x_ref: torch.Tensor, y_ref: torch.Tensor,
                       *, exclude_self: bool = False) -> torch.Tensor:
    """Index into ``x_ref`` of each query's nearest reference sample with the same label (Euclidean distance
    of the flattened inputs). ``exclude_self``: queries ARE the references; a sample never pairs with itself.
    Ties go to the lowest index. A query whose class has no (other) reference sample is an error."""
    q, r = x_query.reshape(len(x_query), -1).double(), x_ref.reshape(len(x_ref), -1).double()
    out = torch.full((len(q),), -1, dtype=torch.long, device=x_query.device)
    for c in torch.unique(y_query):
        qi = torch.nonzero(y_query == c).squeeze(1)
        ri = torch.nonzero(y_ref == c).squeeze(1)
        if len(ri) <= int(exclude_self):
            raise ValueError(f"class {int(c)} has no reference sample to pair with")
        for s in range(0, len(qi), 1024):
            rows = qi[s:s + 1024]
            d = torch.cdist(q[rows], r[ri])  # (rows, refs of class c)
            if exclude_self:
                d[rows[:, None] == ri[None, :]] = float("inf")
            out[rows] = ri[d.argmin(1)]
    return out


@dataclass(frozen=True)
class DualPairs:
    """K pairs (anchor x_k, partner x'_k) at one layer, in the factored form ΔW_k = u_k a_kᵀ/‖a_k‖².

    ``a`` (K, in) anchor activities; ``u`` (K, out) = W Δa_k; ``dl`` (K,) = l(x'_k) − l(x_k). float64.
    """
    a: torch.Tensor
    u: torch.Tensor
    dl: torch.Tensor
    dropped: int = 0

    @property
    def sq_norm_a(self) -> torch.Tensor:
        return (self.a * self.a).sum(1)

    @property
    def sq_norm_w(self) -> torch.Tensor:
        """‖ΔW*_k‖² = ‖u_k‖² / ‖a_k‖²."""
        return (self.u * self.u).sum(1) / self.sq_norm_a

    @property
    def beta(self) -> torch.Tensor:
        """g_k = β_k ΔW*_k with β_k = Δl_k / ‖ΔW*_k‖² (0 where ΔW*_k = 0)."""
        n2 = self.sq_norm_w
        return torch.where(n2 > 0, self.dl / n2.clamp_min(torch.finfo(n2.dtype).tiny), torch.zeros_like(n2))

    def dual_weights(self) -> torch.Tensor:
        """Explicit ΔW*_k: (K, out, in) (memory K·out·in; for tests and small layers)."""
        return self.u[:, :, None] * self.a[:, None, :] / self.sq_norm_a[:, None, None]


def make_pairs(ctx: Context, layer: Layer, x_anchor: torch.Tensor, y_anchor: torch.Tensor,
               x_partner: torch.Tensor, y_partner: torch.Tensor) -> DualPairs:
    """Activities, W Δa and loss differences of the pairs (anchor_k, partner_k) at ``layer``."""
    w = ctx.params[layer.weight].double()
    a = layer_inputs(ctx, layer, x_anchor).double()
    da = layer_inputs(ctx, layer, x_partner).double() - a
    dl = (per_sample_loss(ctx, x_partner, y_partner) - per_sample_loss(ctx, x_anchor, y_anchor)).double()
    keep = (a * a).sum(1) > 0
    return DualPairs(a[keep], da[keep] @ w.T, dl[keep], dropped=int((~keep).sum()))


def totals(p: DualPairs) -> dict[str, float]:
    """Complete-basis sums, computed basis-free (exact).

    mean_dl = mean Δl = mu_term + cov_term; mu_term = Σ μ_g,n μ_w,n = ⟨ḡ, ΔW̄⟩;
    cov_term = Σ c_n σ_g,n σ_w,n; size = Σ σ_w,n²; sharpness = (Σ σ_g,n²)^½.
    """
    k = len(p.dl)
    sa = p.a / p.sq_norm_a[:, None]  # (K, in): ΔW_k = u_k ⊗ sa_k
    mean_w = p.u.T @ sa / k  # (out, in)
    beta = p.beta
    mean_g = (beta[:, None] * p.u).T @ sa / k
    mean_dl = p.dl.mean()
    mu_term = (mean_w * mean_g).sum()
    var_w = p.sq_norm_w.mean() - (mean_w * mean_w).sum()
    var_g = (beta * beta * p.sq_norm_w).mean() - (mean_g * mean_g).sum()
    return {"mean_dl": mean_dl.item(), "mu_term": mu_term.item(), "cov_term": (mean_dl - mu_term).item(),
            "size": var_w.clamp_min(0).item(), "sharpness": var_g.clamp_min(0).sqrt().item(),
            "n_pairs": k, "dropped": p.dropped}


def project(p: DualPairs, basis: torch.Tensor, chunk: int = 2 ** 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections of ΔW*_k and g_k on orthonormal basis vectors ``basis`` (m, out, in): two (K, m) arrays.

    w_k,n = ⟨v_n, ΔW*_k⟩ = u_kᵀ V_n a_k / ‖a_k‖²; g_k,n = β_k w_k,n.

    V_n a_k, the costly part, depends on the anchor alone, so it is computed once per distinct anchor activity
    (the test pairs of ``oracle.duality_gap`` share anchors: a training sample is the nearest neighbour of
    several test samples, and ~1,500 of 4,000 anchors are distinct on the default zoo) and gathered per pair.
    """
    m, out, inp = basis.shape
    vb = basis.to(p.a.dtype)
    anchors, which = torch.unique(p.a, dim=0, return_inverse=True)
    step = max(1, chunk // (len(p.a) * out))
    cols = []
    for s in range(0, m, step):
        t = torch.einsum("ki,noi->kno", anchors, vb[s:s + step])  # (distinct anchors, step, out)
        cols.append(torch.cat([torch.einsum("kno,ko->kn", t.index_select(0, which[i:i + PAIR_BLOCK]),
                                            p.u[i:i + PAIR_BLOCK]) for i in range(0, len(p.a), PAIR_BLOCK)]))
    w = torch.cat(cols, 1) / p.sq_norm_a[:, None]
    return w, p.beta[:, None] * w


def direction_terms(p: DualPairs, basis: torch.Tensor, eigenvalues: torch.Tensor) -> pd.DataFrame:
    """Per-direction table: n, eigenvalue, mu_w, mu_g, sigma_w, sigma_g, c, mu_term (μ_g μ_w), cov_term
    (c σ_g σ_w). Population statistics (1/K), so Σ over a complete basis of mu_term + cov_term is mean Δl."""
    w, g = project(p, basis)
    mu_w, mu_g = w.mean(0), g.mean(0)
    cov = ((w - mu_w) * (g - mu_g)).mean(0)
    sd_w, sd_g = w.std(0, correction=0), g.std(0, correction=0)
    denom = sd_w * sd_g
    c = torch.where(denom > 0, cov / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.zeros_like(cov))
    cols = {"n": torch.arange(len(mu_w)), "eigenvalue": eigenvalues.double(), "mu_w": mu_w, "mu_g": mu_g,
            "sigma_w": sd_w, "sigma_g": sd_g, "c": c, "mu_term": mu_w * mu_g, "cov_term": cov}
    import pandas as pd  # here: listing the measures needs no pandas
    return pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})


# ----------------------------------------------------------------------------------------- curvature
class LayerHessian:
    """Hessian of the mean training cross-entropy with respect to one Linear layer's weight (row-major
    flattening of (out, in)), as H = (1/N) Σ_k H_z,k ⊗ a_k a_kᵀ. Exact: z = W a + b is linear in W.

    One forward pass records, per chunk of samples, the graph of the per-sample output gradients
    ∂l_k/∂z_k as functions of a shift δ of the layer's output (a forward hook adds δ); a Hessian-vector
    product is then a double backward through the layers downstream of z only, plus two products with the
    activities: H v = (1/N) Σ_k (H_z,k V a_k) a_kᵀ.
    """

    def __init__(self, ctx: Context, layer: Layer, x: torch.Tensor | None = None, y: torch.Tensor | None = None):
        self.ctx, self.layer = ctx, layer
        self.x = ctx.x_train if x is None else x
        self.y = ctx.y_train if y is None else y
        self.a = layer_inputs(ctx, layer, self.x)  # (N, in) float32
        self.shape = tuple(ctx.params[layer.weight].shape)  # (out, in)
        self.matvecs = 0
        self._graphs = [self._output_grad(i) for i in range(0, len(self.x), ctx.chunk)]

    def _output_grad(self, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(δ, ∂Σl/∂δ with its graph, activities) for the chunk of samples starting at ``start``."""
        x, y = self.x[start:start + self.ctx.chunk], self.y[start:start + self.ctx.chunk]
        delta = torch.zeros(len(x), self.shape[0], dtype=self.a.dtype, device=self.a.device,
                            requires_grad=True)  # (chunk, out)
        handle = self.layer.module.register_forward_hook(lambda mod, args, out: out + delta)
        try:
            with torch.enable_grad():
                loss = fast_cross_entropy(self.ctx.forward(x, self.ctx.params), y, reduction="sum")
                grad = torch.autograd.grad(loss, delta, create_graph=True)[0]  # (chunk, out)
        finally:
            handle.remove()
        return delta, grad, self.a[start:start + self.ctx.chunk]

    @property
    def dim(self) -> int:
        return self.shape[0] * self.shape[1]

    def _hz(self, delta, grad, u, batched=False) -> torch.Tensor:
        """H_z,k u_k for every sample of the chunk (u: (chunk, out), or (b, chunk, out) if batched)."""
        if not grad.requires_grad:  # the loss is linear in z downstream: H_z = 0
            return torch.zeros_like(u)
        return torch.autograd.grad(grad, delta, grad_outputs=u, retain_graph=True, is_grads_batched=batched)[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat v (out·in,)."""
        return self.matmat(v[None])[0]

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        """H v_b for a batch of flat vectors v (b, out·in), one vector at a time: one double backward per vector
        and chunk. On a CPU that is faster than one pass batched over the vectors (wider products, and
        ``is_grads_batched``), for the same numbers."""
        self.matvecs += len(v)
        vm = v.to(self.a.device, self.a.dtype).reshape(len(v), *self.shape)  # (b, out, in)
        out = torch.zeros(vm.shape, dtype=self.a.dtype, device=self.a.device)
        for j in range(len(v)):
            for delta, grad, a in self._graphs:
                u = torch.einsum("ki,boi->bko", a, vm[j:j + 1]).contiguous()  # (1, chunk, out)
                out[j:j + 1] += torch.einsum("bko,ki->boi", self._hz(delta, grad, u[0])[None], a)
        return (out / len(self.x)).reshape(len(v), -1).to(v.dtype)

    def dense(self) -> torch.Tensor:
        """The full (out·in, out·in) matrix, float64. Cost ~ N·(out·in)² multiply-adds."""
        o, i = self.shape
        acc = torch.zeros(o * o, i * i, dtype=torch.float64, device=self.a.device)
        eye = torch.eye(o, dtype=self.a.dtype, device=self.a.device)
        for delta, grad, a in self._graphs:
            n = len(a)
            block = max(1, 2 ** 24 // (n * o))
            cols = [self._hz(delta, grad, eye[s:s + block, None, :].expand(-1, n, o).contiguous(), batched=True)
                    for s in range(0, o, block)]  # each (block, chunk, out): column j of every H_z,k
            hz = torch.cat(cols).permute(1, 2, 0).reshape(n, o * o)  # (chunk, out·out): H_z,k[p, j]
            aa = (a[:, :, None] * a[:, None, :]).reshape(n, i * i)
            acc += (hz.T @ aa).double()
        h = acc.reshape(o, o, i, i).permute(0, 2, 1, 3).reshape(o * i, o * i) / len(self.x)
        return (h + h.T) / 2


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int, steps: int,
            generator: torch.Generator, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """Top-k (largest algebraic) eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    The start vector is drawn from ``generator`` (on the CPU) and moved to ``device``, where the basis lives.
    Returns (eigenvalues (k,) descending, eigenvectors (k, dim) float64, residual norms ‖Hv − θv‖ (k,)).
    """
    steps = min(steps, dim)
    q = torch.randn(dim, generator=generator, dtype=torch.float64).to(device)
    basis = torch.empty(steps, dim, dtype=torch.float64, device=device)  # row j: the j-th Lanczos vector
    basis[0] = q / q.norm()
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[j].float()).double()
        alphas.append(torch.dot(w, basis[j]))
        qs = basis[:j + 1]
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - qs.T @ (qs @ w)
        beta = w.norm()
        if j == steps - 1 or beta < 1e-10 * max(abs(a.item()) for a in alphas):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    m = len(alphas)
    t = torch.diag(torch.stack(alphas))
    if m > 1:
        off = torch.stack(betas[:m - 1])
        t += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t)
    order = torch.argsort(theta, descending=True)[:k]
    vecs = s[:, order].T @ basis[:m]  # (k, dim)
    resid = (beta * s[-1, order]).abs()
    return theta[order], vecs, resid


@dataclass(frozen=True)
class Eigenbasis:
    eigenvalues: torch.Tensor  # (m,) descending
    vectors: torch.Tensor  # (m, out, in) orthonormal, float64
    complete: bool  # m = out·in
    residual: float  # max ‖Hv − λv‖ / max|λ| over the returned pairs (0 for dense)
    method: str


def hessian_eigenbasis(ctx: Context, layer: Layer, k: int | None = None, *, dense_max: int = DENSE_MAX,
                       steps: int | None = None, hess: LayerHessian | None = None) -> Eigenbasis:
    """Eigenpairs of the layer's training-loss Hessian: all of them (dense) when the layer has at most
    ``dense_max`` weights, else the top ``k`` (default ``extras["duality.top_k"]`` or 20) by Lanczos."""
    hess = hess or LayerHessian(ctx, layer)
    shape = hess.shape
    if hess.dim <= dense_max:
        lam, vec = torch.linalg.eigh(hess.dense())
        order = torch.argsort(lam, descending=True)
        return Eigenbasis(lam[order], vec[:, order].T.reshape(-1, *shape), True, 0.0, "dense")
    k = int(k or ctx.extras.get("duality.top_k", TOP_K))
    steps = steps or 2 * k
    lam, vec, resid = lanczos(hess.matvec, hess.dim, k, steps, ctx.generator(f"duality/lanczos/{layer.name}"),
                              hess.a.device)
    scale = lam.abs().max().clamp_min(1e-30)
    return Eigenbasis(lam, vec.reshape(-1, *shape), len(lam) == hess.dim, (resid.max() / scale).item(),
                      f"lanczos({steps} steps)")


def curvature_size(p: DualPairs, hess: LayerHessian, *, dense_max: int = DENSE_MAX, probes: int = PROBES,
                   generator: torch.Generator | None = None) -> dict[str, float]:
    """½ Σ_n λ_n σ_w,n² over the complete Hessian eigenbasis = ½ tr(H Σ_w), Σ_w the covariance of ΔW*_k.

    With D (P, K) the centred dual weights d_k = vec(ΔW*_k − ΔW̄), Σ_w = D Dᵀ/K, so tr(H Σ_w) = tr(Dᵀ H D)/K.
    Exact (dense H) for at most ``dense_max`` weights; otherwise Hutchinson's estimator over the pairs: for
    Rademacher z ∈ {±1}^K, E_z[(Dz)ᵀ H (Dz)] = tr(Dᵀ H D), and Dz = Σ_k z_k (ΔW*_k − ΔW̄) is one (out, in)
    matrix, so each probe costs one Hessian-vector product (``probes`` of them, in batches of 4; z drawn from
    ``generator`` on the CPU; the probe matrices in float32, like the Hessian-vector products). Returns
    value, its standard error (0 when exact), method.
    """
    k = len(p.dl)
    sa = p.a / p.sq_norm_a[:, None]  # (K, in)
    mean_w = p.u.T @ sa / k  # (out, in)
    if hess.dim <= dense_max:
        h = hess.dense().to(p.a.device)  # (P, P) float64
        d = (p.u[:, :, None] * sa[:, None, :]).reshape(k, -1) - mean_w.reshape(1, -1)  # (K, P)
        return {"value": 0.5 * float(((d @ h) * d).sum() / k), "stderr": 0.0, "method": "dense"}
    z = (torch.randint(0, 2, (probes, k), generator=generator, dtype=torch.float32) * 2 - 1).to(p.a.device)
    u32, sa32, mean32 = p.u.float(), sa.float(), mean_w.float()
    vals = []
    for s in range(0, probes, PROBE_BATCH):
        zb = z[s:s + PROBE_BATCH]  # (b, K)
        dz = (zb[:, None, :] * u32.T[None]) @ sa32 - zb.sum(1)[:, None, None] * mean32  # (b, out, in), float32
        flat = dz.reshape(len(zb), -1)
        vals.append((flat.double() * hess.matmat(flat).double()).sum(1) / k)
    vals_t = torch.cat(vals)
    return {"value": 0.5 * float(vals_t.mean()), "stderr": 0.5 * float(vals_t.std() / len(vals_t) ** 0.5),
            "method": f"hutchinson({probes} probes)"}


# ----------------------------------------------------------------------------------------- training data
def clean_indices(ctx: Context) -> torch.Tensor:
    """Indices (on ctx.device) of the correctly labelled training samples: those not flagged in
    ``ctx.extras["mislabeled"]`` (a bool mask over the training set, or None: every sample is clean)."""
    n = len(ctx.y_train)
    mask = ctx.extras.get("mislabeled")
    if mask is None:
        return torch.arange(n, device=ctx.device)
    mask = torch.as_tensor(mask).to(ctx.device).bool().reshape(-1)
    if mask.shape != (n,):
        raise ValueError(f"extras['mislabeled'] has {mask.numel()} entries for {n} training samples")
    if bool(mask.all()):
        raise ValueError("every training sample is flagged mislabeled; the duality needs clean samples")
    return torch.nonzero(~mask).squeeze(1)


def curvature_indices(ctx: Context) -> torch.Tensor:
    """The clean training samples the layer Hessian is taken over: all of them, or a seeded subset (stream
    ``duality/curvature``) of ``ctx.extras["curvature_samples"]`` of them when that is set and smaller."""
    clean = clean_indices(ctx)
    n = ctx.extras.get("curvature_samples")
    if n is None or int(n) >= len(clean):
        return clean
    if int(n) < 1:
        raise ValueError(f"extras['curvature_samples'] must be a positive count or None, got {n}")
    pick = torch.randperm(len(clean), generator=ctx.generator("duality/curvature"))[:int(n)].to(clean.device)
    return clean[pick.sort().values]


def midpoint_partners(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Partner of each sample: the midpoint (x_k + x_j)/2 with its nearest same-label sample x_j (excluding
    itself), and j. Deterministic (ties to the lowest index)."""
    j = nearest_same_class(x, y, x, y, exclude_self=True)
    return (x + x[j]) / 2, j


# ----------------------------------------------------------------------------------------- shared helpers
def _layer(ctx: Context) -> Layer:
    return select_layer(ctx)


def _clean(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    idx = clean_indices(ctx)
    return ctx.x_train[idx], ctx.y_train[idx]


def _train_pairs(ctx: Context) -> DualPairs:
    """Each clean training sample (anchor) and the midpoint with its nearest clean same-label neighbour."""
    x, y = ctx.shared(_clean)
    mid, _ = midpoint_partners(x, y)
    return make_pairs(ctx, ctx.shared(_layer), x, y, mid, y)


def _test_pairs(ctx: Context) -> DualPairs:
    """Each test sample (partner) and its nearest same-class clean training sample (anchor); oracle only."""
    x, y = ctx.shared(_clean)
    nn_idx = nearest_same_class(ctx.x_test, ctx.y_test, x, y)
    return make_pairs(ctx, ctx.shared(_layer), x[nn_idx], y[nn_idx], ctx.x_test, ctx.y_test)


def _hessian(ctx: Context) -> LayerHessian:
    idx = curvature_indices(ctx)
    return LayerHessian(ctx, ctx.shared(_layer), ctx.x_train[idx], ctx.y_train[idx])


def _eigenbasis(ctx: Context) -> Eigenbasis:
    return hessian_eigenbasis(ctx, ctx.shared(_layer), hess=ctx.shared(_hessian))


def _train_totals(ctx: Context) -> dict[str, float]:
    return totals(ctx.shared(_train_pairs))


def duality_table(ctx: Context, pairs: str = "test") -> pd.DataFrame:
    """Per-direction table of the decomposition in the layer's Hessian eigenbasis (see ``direction_terms``),
    with ``pairs="test"`` (oracle analysis: uses test data) or ``"train"`` (clean training samples and their
    midpoint partners). Its ``attrs`` hold the complete-basis totals and the basis (method, complete,
    residual)."""
    if pairs not in ("test", "train"):
        raise ValueError(f"pairs must be 'test' (oracle) or 'train', got {pairs!r}")
    p = ctx.shared(_test_pairs if pairs == "test" else _train_pairs)
    basis = ctx.shared(_eigenbasis)
    table = direction_terms(p, basis.vectors, basis.eigenvalues)
    table.attrs.update(totals(p), method=basis.method, complete=basis.complete, residual=basis.residual,
                       layer=ctx.shared(_layer).name, pairs=pairs)
    return table


# ----------------------------------------------------------------------------------------- measures
def _details(t: dict) -> dict:
    return {k: t[k] for k in ("mean_dl", "mu_term", "cov_term", "size", "sharpness", "n_pairs", "dropped")}


@measure("duality.mid.gap", needs=("model", "train_data"), sign=1, family="duality",
         invariances=("permutation", "batchnorm_scaling"), reference=REFERENCE)
def duality_mid_gap(ctx: Context) -> Value:
    """Duality gap term Σ_n c_n σ_g,n σ_w,n (complete basis) for training midpoint pairs.

    = mean_k Δl_k − ⟨ḡ, ΔW̄⟩ (basis-free), Δl_k = l(m_k) − l(x_k), x_k a clean training sample and
    m_k = (x_k + x_j)/2 the midpoint with its nearest clean same-label training sample x_j. Sign +1: the
    paper's gap is this sum for test pairs. Details carry mean Δl = Σ(μ_g μ_w + c σ_g σ_w) and both factors.
    """
    t = ctx.shared(_train_totals)
    return Value(t["cov_term"], _details(t))


@measure("duality.mid.sharpness", needs=("model", "train_data"), sign=1, family="duality",
         invariances=("permutation", "batchnorm_scaling"),
         reference=REFERENCE)
def duality_mid_sharpness(ctx: Context) -> Value:
    """Sharpness factor ‖σ_g‖ = (Σ_n σ_g,n²)^½ (complete basis) for training midpoint pairs.

    σ_g,n: standard deviation over pairs of ⟨v_n, g_k⟩, g_k = Δl_k ΔW*_k/‖ΔW*_k‖², Σ_n σ_g,n² =
    mean ‖g_k‖² − ‖ḡ‖². Sign +1: sharper solutions turn the same dual-weight spread into larger loss changes.
    """
    t = ctx.shared(_train_totals)
    return Value(t["sharpness"], _details(t))


@measure("duality.mid.size", needs=("model", "train_data"), sign=1, family="duality",
         invariances=("permutation", "batchnorm_scaling"), reference=REFERENCE)
def duality_mid_size(ctx: Context) -> Value:
    """Size factor Σ_n σ_w,n² = mean_k ‖ΔW*_k − ΔW̄‖² (dual-weight spread) for training midpoint pairs.

    ΔW*_k = (W Δa_k) a_kᵀ/‖a_k‖², Δa_k = a(m_k) − a(x_k) for each clean training sample and its midpoint
    partner. Sign +1: larger (activity-weighted) solutions generalize worse.
    """
    t = ctx.shared(_train_totals)
    return Value(t["size"], _details(t))


@measure("duality.mid.gap_hessian", needs=("model", "train_data"), sign=1, family="duality",
         invariances=("permutation", "batchnorm_scaling"), seeded=True,
         reference=REFERENCE)
def duality_mid_gap_hessian(ctx: Context) -> Value:
    """Quadratic duality gap ½ Σ_n λ_n σ_w,n² = ½ tr(H Σ_w) for training midpoint pairs, complete basis.

    Near a minimum g ≈ ½ H ΔW, so c_n σ_g,n σ_w,n ≈ ½ λ_n σ_w,n²: the sharpness (λ_n, of the layer's
    clean-training-loss Hessian) weighted by the size (σ_w,n², of the midpoint dual weights) along it. Exact for
    ≤ 1024 weights, else Hutchinson's estimator over the pairs with 64 probes (details: stderr). Sign +1.
    """
    out = curvature_size(ctx.shared(_train_pairs), ctx.shared(_hessian),
                         generator=ctx.generator("duality/hutchinson"))
    return Value(out["value"], {"stderr": out["stderr"], "method": out["method"]})


@measure("oracle.duality_gap", needs=("model", "train_data", "test_data"), sign=1, family="duality",
         invariances=("permutation", "rescaling", "batchnorm_scaling"), seeded=True,
         reference=REFERENCE, oracle=True, version=2)
def oracle_duality_gap(ctx: Context) -> Value:
    """ORACLE (uses test data): exact duality decomposition Σ_n (μ_g,n μ_w,n + c_n σ_g,n σ_w,n) = mean_k Δl_k.

    Each test sample paired with its nearest same-class clean training sample (raw input space); Δl_k =
    l(test_k) − l(train neighbour_k). Details: the two sums over the complete basis, and the fractions of
    each carried by the Hessian directions used (all for ≤ 1024 weights, else the top k).
    """
    table = duality_table(ctx, "test")
    t = table.attrs
    det = _details(t)
    det.update(directions=len(table), complete=t["complete"], method=t["method"],
               topk_mu_term=float(table["mu_term"].sum()), topk_cov_term=float(table["cov_term"].sum()),
               topk_fraction=float((table["mu_term"] + table["cov_term"]).sum() / t["mean_dl"])
               if t["mean_dl"] != 0 else float("nan"))
    return Value(t["mean_dl"], det)
