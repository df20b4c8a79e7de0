"""The activity–weight duality measures against explicit loops: nearest clean same-label neighbours by brute
force, activities and losses by hand, dual weights ΔW_k = (W Δa_k) a_kᵀ/‖a_k‖², and the per-direction statistics
in the eigenbasis of the analysed layer's dense Hessian (torch.autograd). The network: a float64 5 → 6 → 4 → 3
MLP, the analysed layer its 6 → 4 hidden-to-hidden matrix (24 weights, a complete dense basis); tanh for the
training-pair measures, ReLU for the oracle, which declares invariance to rescaling ReLU units."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from measures import Context
from measures.testing import ValueCase


def explicit_reference(sizes=(5, 6, 4, 3), n=40, n_test=15, seed=12, mislabeled=None, curvature=None,
                       activation="tanh"):
    """A float64 5→6→4→3 MLP (``activation``: "tanh" or "relu"; the analysed layer: the 6→4 hidden-to-hidden matrix,
    24 weights) and the duality quantities by explicit loops over the CLEAN samples (``mislabeled``: bool mask
    or None): nearest clean same-label neighbours by brute force, midpoint partners, activities by hand
    (a = σ(W_1 x + b_1)),
    dual weights ΔW_k = (W Δa_k) a_kᵀ/‖a_k‖², losses by hand, and the per-direction statistics in the
    eigenbasis of the layer's dense Hessian (torch.autograd) over the clean samples (or over ``curvature``,
    indices of the samples the Hessian is taken over). Returns the Context and the statistics of the training
    midpoint pairs and of the test pairs (each test sample with its nearest clean same-label training sample)."""
    sigma, module = {"tanh": (torch.tanh, nn.Tanh), "relu": (torch.relu, nn.ReLU)}[activation]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(sizes[0], sizes[1]), module(), nn.Linear(sizes[1], sizes[2]),
                          module(), nn.Linear(sizes[2], sizes[3])).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sizes[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (n,), generator=g)
    xt = torch.randn(n_test, sizes[0], generator=g, dtype=torch.float64)
    yt = torch.randint(0, sizes[-1], (n_test,), generator=g)
    extras = {} if mislabeled is None else {"mislabeled": mislabeled}
    ctx = Context(model, train=(x, y), test=(xt, yt), extras=extras)
    clean = [i for i in range(n) if mislabeled is None or not bool(mislabeled[i])]
    w1, b1, w, b2, w3, b3 = (p.detach() for p in model.parameters())

    def act(v):  # input activity of the analysed layer
        return sigma(v @ w1.T + b1)

    def loss(v, label, weight=w):
        return F.cross_entropy(sigma(act(v) @ weight.T + b2) @ w3.T + b3, label, reduction="none")

    def nearest(q, label, exclude=None):
        best = None
        for j in clean:
            if y[j] != label or j == exclude:
                continue
            d = float((q - x[j]).norm())
            if best is None or d < best[0]:
                best = (d, j)
        return best[1]

    hs = clean if curvature is None else list(curvature)
    hess = torch.autograd.functional.hessian(lambda v: loss(x[hs], y[hs], v.reshape(w.shape)).mean(), w.reshape(-1))
    lam, vecs = torch.linalg.eigh(hess)  # complete orthonormal basis of the 24-dimensional weight space

    def stats(anchor_x, anchor_y, partner_x, partner_y):
        a, da = act(anchor_x), act(partner_x) - act(anchor_x)
        dw = torch.stack([torch.outer(w @ da[k], a[k]) / (a[k] @ a[k]) for k in range(len(a))]).reshape(len(a), -1)
        dl = loss(partner_x, partner_y) - loss(anchor_x, anchor_y)
        gk = dl[:, None] * dw / (dw * dw).sum(1, keepdim=True)
        pw, pg = dw @ vecs, gk @ vecs  # (K, 24) projections on the basis
        sw, sg = pw.std(0, correction=0), pg.std(0, correction=0)
        cov = ((pw - pw.mean(0)) * (pg - pg.mean(0))).mean(0)
        c = cov / (sw * sg)
        return {"gap": float((c * sg * sw).sum()), "size": float((sw ** 2).sum()),
                "sharpness": float((sg ** 2).sum().sqrt()), "gap_hessian": 0.5 * float((lam * sw ** 2).sum()),
                "decomposition": float((pw.mean(0) * pg.mean(0) + c * sg * sw).sum()), "mean_dl": float(dl.mean()),
                "n_pairs": len(a)}

    mid = torch.stack([(x[i] + x[nearest(x[i], y[i], exclude=i)]) / 2 for i in clean])
    test_nn = [nearest(xt[i], yt[i]) for i in range(n_test)]
    return ctx, stats(x[clean], y[clean], mid, y[clean]), stats(x[test_nn], y[test_nn], xt, yt)


CTX, TRAIN, _ = explicit_reference()
RELU_CTX, _, RELU_TEST = explicit_reference(activation="relu")


def _case(name: str, ctx: Context, reference: float, why: str) -> ValueCase:
    return ValueCase(name, ctx.model, reference, train=(ctx.x_train, ctx.y_train), test=(ctx.x_test, ctx.y_test),
                     rel=1e-8, abs=1e-12, why=why)


CASES = [
    _case("duality.mid.gap", CTX, TRAIN["gap"], "Σ_n c_n σ_g,n σ_w,n over the dense eigenbasis, midpoint pairs"),
    _case("duality.mid.size", CTX, TRAIN["size"], "Σ_n σ_w,n² over the dense eigenbasis, midpoint pairs"),
    _case("duality.mid.sharpness", CTX, TRAIN["sharpness"], "(Σ_n σ_g,n²)^½ over the dense eigenbasis"),
    _case("duality.mid.gap_hessian", CTX, TRAIN["gap_hessian"], "½ Σ_n λ_n σ_w,n² over the dense eigenbasis"),
    _case("oracle.duality_gap", RELU_CTX, RELU_TEST["mean_dl"],
          "mean_k [l(test_k) − l(nearest same-label training sample)], losses by hand"),
]
