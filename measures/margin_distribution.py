"""Normalised margin distributions at several layers (Jiang, Krishnan, Mobahi & Bengio, ICLR 2019).

For a training point x of label i, j = argmax_{j≠i} f_j(x) the strongest other class, and h_l(x) the
representation at layer l, the first-order distance to the decision boundary between i and j is

    d_l(x) = (f_i(x) − f_j(x)) / ‖∇_{h_l}(f_i(x) − f_j(x))‖₂,      d̂_l(x) = d_l(x) / ν_l,

ν_l = √(Σ_k Var_x[h_{l,k}(x)]) the total variation of h_l over the whole training set (population variances).
Each layer's distribution of d̂_l over the training points is summarised by its quartiles Q1, Q2, Q3 and
the fences Q1 − 1.5·IQR and Q3 + 1.5·IQR (IQR = Q3 − Q1; quantiles by linear interpolation, NumPy's default).

Following the authors' code (google-research/google-research, ``demogen/margin_utils.py``, ``margin``):
j is the top class unless it is the label, then the second; the gradients of every layer come from one
backward pass of Σ_x (f_i − f_j) over a chunk (each sample's activations affect only its own outputs);
‖g‖₂ is √(ε + Σ g²), ε = 1e-6. Their code returns the signed distances of every point; the paper keeps only
the positive ones, ignoring the misclassified training points, and so does this module: the statistics
are over the points with f_i > f_j, the same set at every layer, so Q1, Q2, Q3 are positive and have a log.
A fence can be ≤ 0: its log is then None in the details. A model with no correctly classified training point
is ``not_applicable``.

The layers h_l are the inputs of the Linear/Conv layers: h_0 the network input, then every hidden
representation a parametrised layer reads. Jiang et al. use the input and three hidden layers, equally
spaced; networks with at most four such representations (the zoo's MLPs with 2–3 hidden layers) use all of
them, deeper ones the four at round(linspace(0, L − 1, 4)), which keeps the input and the penultimate
features.

Differences from the paper and its code:

* ν_l: ``demogen/total_variation_util.py`` divides √(Σ_k Var h_{l,k}) by the number of training points
  (50,000 for every model there, a constant); the paper's ν_l does not, and neither does this module, whose
  models differ in training-set size.
* The per-model summary. Jiang et al. fit a linear regression of the generalization gap on the 20 log
  features (5 statistics × 4 layers) across models; that fit is not a property of one model. The registered
  values are means over the layers of log Q2 (``margin_dist.median``), log Q1 and log Q3, with sign −1 (larger
  normalised margins, a smaller gap); every per-layer feature, raw and log, is in each one's details.

Permuting hidden units leaves norms and total variations unchanged. Rescaling a hidden unit by its own factor
changes the hidden-layer gradients and variances unequally, so the hidden-layer distances move; ν_l makes
d̂_l invariant only to one scalar per layer.
"""
from __future__ import annotations

import math

import torch

from measures.context import Context
from measures.registry import NotApplicable, Value, measure

EPSILON = 1e-6  # inside the square root of the gradient norm, as in demogen's margin()
MAX_LAYERS = 4  # Jiang et al.: the input and three hidden layers
STATISTICS = ("lower_fence", "q1", "q2", "q3", "upper_fence")


def margin_layers(num_layers: int) -> list[int]:
    """Indices of the Linear/Conv layers whose inputs are measured: all when there are at most
    ``MAX_LAYERS``, else ``MAX_LAYERS`` equally spaced from the first to the last."""
    if num_layers <= MAX_LAYERS:
        return list(range(num_layers))
    return [round(k * (num_layers - 1) / (MAX_LAYERS - 1)) for k in range(MAX_LAYERS)]


def margin_distances(ctx: Context) -> dict:
    """Per measured layer: the signed normalised distance d̂_l of every training point, (n,), and ν_l; and the
    numerators f_i − f_j, (n,). One forward and one backward pass per chunk serve every layer; ν_l comes from
    float64 sums of h − c and (h − c)², c the first chunk's mean (shifted, so that large means do not cancel)."""
    chosen = margin_layers(len(ctx.layers))
    names = [ctx.layers[k].name for k in chosen]
    grabbed: list[torch.Tensor] = []
    handles = [ctx.layers[k].module.register_forward_pre_hook(lambda _m, args: grabbed.append(args[0]))
               for k in chosen]
    numerators, distances = [], [[] for _ in chosen]
    shift, s1, s2 = [None] * len(chosen), [0.0] * len(chosen), [0.0] * len(chosen)
    try:
        for i in range(0, len(ctx.x_train), ctx.chunk):
            x = ctx.x_train[i:i + ctx.chunk].detach().requires_grad_(True)
            y = ctx.y_train[i:i + ctx.chunk]
            grabbed.clear()
            with torch.enable_grad():
                z = ctx.forward(x)
                if len(grabbed) != len(chosen):
                    raise ValueError(f"expected one input for each of the layers {names} in a forward pass, "
                                     f"got {len(grabbed)}")
                other = z.detach().scatter(1, y[:, None], float("-inf")).argmax(1)  # j: the strongest other class
                diff = (z.gather(1, y[:, None]) - z.gather(1, other[:, None])).squeeze(1)
                grads = torch.autograd.grad(diff.sum(), grabbed)
            num = diff.detach().double()
            numerators.append(num)
            for k, (h, g) in enumerate(zip(grabbed, grads)):
                distances[k].append(num / (EPSILON + g.flatten(1).double().square().sum(1)).sqrt())
                h = h.detach().flatten(1).double()
                if shift[k] is None:
                    shift[k] = h.mean(0)
                s1[k] = s1[k] + (h - shift[k]).sum(0)
                s2[k] = s2[k] + (h - shift[k]).square().sum(0)
    finally:
        for handle in handles:
            handle.remove()
    n = len(ctx.x_train)
    out = {"layers": names, "numerators": torch.cat(numerators), "distances": [], "total_variation": []}
    for k, name in enumerate(names):
        nu = (s2[k] / n - (s1[k] / n).square()).clamp_min(0).sum().sqrt().item()
        if not nu > 0:
            raise NotApplicable(f"the input of layer {name} is constant over the training set (total variation "
                                f"0): normalised margins are undefined")
        out["distances"].append(torch.cat(distances[k]) / nu)
        out["total_variation"].append(nu)
    return out


def _log(v: float) -> float | None:
    return math.log(v) if v > 0 else None


def margin_signature(ctx: Context) -> dict:
    """The five statistics of each layer's positive normalised margins, raw and log (None for a value ≤ 0), with
    ν_l and the name of the layer whose input h_l is (``input_of``); ``samples`` the points with a positive margin,
    ``train_size`` all of them."""
    d = ctx.shared(margin_distances)
    positive = d["numerators"] > 0
    used = int(positive.sum().item())
    if used == 0:
        raise NotApplicable("no training point is correctly classified: there is no positive margin")
    probs = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    layers = []
    for name, dist, nu in zip(d["layers"], d["distances"], d["total_variation"]):
        q1, q2, q3 = torch.quantile(dist[positive], probs.to(dist.device)).tolist()
        stats = {"lower_fence": q1 - 1.5 * (q3 - q1), "q1": q1, "q2": q2, "q3": q3, "upper_fence": q3 + 1.5 * (q3 - q1)}
        layers.append({"input_of": name, "total_variation": nu, **stats,
                       **{f"log_{s}": _log(stats[s]) for s in STATISTICS}})
    return {"layers": layers, "samples": used, "train_size": len(positive)}


def _summary(ctx: Context, stat: str) -> Value:
    sig = ctx.shared(margin_signature)
    return Value(sum(layer[f"log_{stat}"] for layer in sig["layers"]) / len(sig["layers"]), sig)


_REFERENCE = ("Jiang, Krishnan, Mobahi & Bengio 2019, 'Predicting the generalization gap in deep networks with "
              "margin distributions', ICLR")


@measure("margin_dist.median", needs=("model", "train_data"), sign=-1, family="margin",
         invariances=("permutation", "batchnorm_scaling"), reference=_REFERENCE)
def margin_dist_median(ctx: Context) -> Value:
    """Mean over the measured layers of the log median normalised margin, (1/|L|) Σ_l log Q2(d̂_l), d̂_l(x) =
    (f_i − f_j)(x) / (‖∇_{h_l}(f_i − f_j)(x)‖₂ √(Σ_k Var h_{l,k})) over the correctly classified training points.

    i the label, j the strongest other class; layers: the input and hidden representations (at most four).
    """
    return _summary(ctx, "q2")


@measure("margin_dist.q1", needs=("model", "train_data"), sign=-1, family="margin",
         invariances=("permutation", "batchnorm_scaling"), reference=_REFERENCE)
def margin_dist_q1(ctx: Context) -> Value:
    """Mean over the measured layers of the log first quartile of the normalised margins, (1/|L|) Σ_l log Q1(d̂_l),
    d̂_l as in ``margin_dist.median``, over the correctly classified training points.
    """
    return _summary(ctx, "q1")


@measure("margin_dist.q3", needs=("model", "train_data"), sign=-1, family="margin",
         invariances=("permutation", "batchnorm_scaling"), reference=_REFERENCE)
def margin_dist_q3(ctx: Context) -> Value:
    """Mean over the measured layers of the log third quartile of the normalised margins, (1/|L|) Σ_l log Q3(d̂_l),
    d̂_l as in ``margin_dist.median``, over the correctly classified training points.
    """
    return _summary(ctx, "q3")
