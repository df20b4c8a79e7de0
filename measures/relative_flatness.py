"""Relative flatness of the classifier layer (Petzka, Kamp, Adilova, Sminchisescu & Boley, NeurIPS 2021).

For the last layer f(x) = W φ(x) + b, rows w_1 … w_C of W reading the features φ(x) ∈ R^d, Petzka et al.
define (trace form) κ_Tr(W) = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr(H_{s,s'}), H_{s,s'} the d × d block of the Hessian of
the mean training cross-entropy with respect to rows w_s and w_s'. With softmax outputs
p_i = σ(f(x_i)) and A_i = diag(p_i) − p_i p_iᵀ, H_{(s,k),(s',k')} = (1/n) Σ_i φ_k(x_i) φ_k'(x_i) A_i[s, s'], so

    κ_Tr = (1/n) Σ_i ‖φ(x_i)‖² tr(A_i W Wᵀ),      tr(A W Wᵀ) = Σ_s p_s ‖w_s‖² − ‖Wᵀp‖²,

computed in this closed form (no Hessian is formed), chunked over the whole training set, in float64. The
labels do not enter: the cross-entropy's Hessian in the logits is A_i whatever the label.

As the authors' code does (kampmichael/RelativeFlatnessAndGeneralization,
``CorrelationFlatnessGeneralization/measure_comparison.py`` with ``utils.calculateNeuronwiseHessians_fc_layer``):

* the layer is the classifier's weight W (their ``feature_layer_id`` is LeNet5's ``fc3.weight``); the bias
  is not a parameter of the Hessian;
* the loss is the mean over all n training samples, and the trace is not divided by d (``normalize=False``;
  their FAM regulariser divides by d, their measure does not);
* the measure is taken on the network reparametrised so that every feature has unit standard deviation over
  the training set: φ_k → φ_k/σ_k and column k of W → σ_k · column k (σ the population standard deviation,
  NumPy's ``np.std``). For a ReLU layer this is a rescaling of its units, so the function is unchanged. It
  makes the value invariant to any positive rescaling of the feature units, which κ_Tr alone is only for one
  scalar per layer (φ → λφ, W → W/λ); rescaling the units of earlier layers changes neither φ nor W. The
  unstandardised κ_Tr is in the details (``unstandardised``).

Two differences from their code:

* A feature constant over the training set (σ_k = 0: a dead ReLU unit, φ_k ≡ 0) is left as it is there, so
  its outgoing weights, which the function does not depend on, still enter ⟨w_s, w_s'⟩ and a rescaling of
  that unit moves the value. Here W̃ = W diag(σ) literally: its column and its feature are dropped. A constant
  feature acts on the logits as the bias does, and the bias is not in the measure either. The count of the
  features kept is in the details (``standardised_features``).
* For a network trained with weight decay α they add 2α Σ_s ‖w_s‖² for the penalty; here the loss is the
  plain cross-entropy, as for the other Hessian measures.
"""
from __future__ import annotations

import torch
from torch import nn

from measures.context import Context
from measures.rank import penultimate_features
from measures.registry import NotApplicable, Value, measure


def _trace_a_gram(p: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """tr(A_i G) for every row p_i of ``p``, A_i = diag(p_i) − p_i p_iᵀ: Σ_s p_s G_ss − p_iᵀ G p_i."""
    return (p * gram.diagonal()).sum(1) - ((p @ gram) * p).sum(1)


def relative_flatness_terms(ctx: Context) -> dict:
    """κ_Tr on the feature-standardised network and on the network as given, with the feature counts."""
    last = ctx.layers[-1]
    if not isinstance(last.module, nn.Linear):
        raise NotApplicable(f"the closed form needs a Linear classifier layer; the last layer {last.name} is "
                            f"{type(last.module).__name__}")
    phi = ctx.shared(penultimate_features)
    w = ctx.params[last.weight].double()
    b = ctx.params[last.bias].double() if last.bias is not None else torch.zeros(len(w), dtype=w.dtype,
                                                                                  device=w.device)
    n = len(phi)
    mean = torch.zeros(phi.shape[1], dtype=torch.float64, device=phi.device)
    for i in range(0, n, ctx.chunk):
        mean += phi[i:i + ctx.chunk].double().sum(0)
    mean /= n
    var = torch.zeros_like(mean)
    for i in range(0, n, ctx.chunk):
        var += (phi[i:i + ctx.chunk].double() - mean).square().sum(0)
    sd = (var / n).sqrt()
    inv = torch.where(sd > 0, 1 / sd, torch.zeros_like(sd))  # σ_k = 0: φ̃_k = 0 and W̃'s column k = 0
    gram_raw = w @ w.T
    w_std = w * sd
    gram_std = w_std @ w_std.T
    raw = std = 0.0
    for i in range(0, n, ctx.chunk):
        f = phi[i:i + ctx.chunk].double()
        p = torch.softmax(f @ w.T + b, dim=1)  # the function is the same in both parametrisations
        raw += (f.square().sum(1) * _trace_a_gram(p, gram_raw)).sum().item()
        std += ((f * inv).square().sum(1) * _trace_a_gram(p, gram_std)).sum().item()
    return {"value": std / n, "unstandardised": raw / n, "features": int(phi.shape[1]),
            "standardised_features": int((sd > 0).sum().item()), "samples": n}


@measure("relative_flatness", needs=("model", "train_data"), sign=1, family="hessian",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Petzka, Kamp, Adilova, Sminchisescu & Boley 2021, 'Relative flatness and generalization', "
                   "NeurIPS (the trace form κ_Tr)")
def relative_flatness(ctx: Context) -> Value:
    """Relative flatness of the classifier layer on unit-variance features, κ_Tr = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr(H_{s,s'})
    = (1/n) Σ_i ‖φ̃(x_i)‖² tr((diag p_i − p_i p_iᵀ) W̃ W̃ᵀ), φ̃_k = φ_k/σ_k and W̃ = W diag(σ).

    H is the Hessian of the mean training cross-entropy in W (bias excluded), φ the penultimate features, σ_k
    their standard deviations over the training set, as in the authors' code; a feature with σ_k = 0 is dropped.
    """
    t = ctx.shared(relative_flatness_terms)
    return Value(t["value"], {k: v for k, v in t.items() if k != "value"})
