"""Effective rank of the weights and of the learned features.

The effective rank of a matrix with singular values s_1 … s_r (Roy & Vetterli 2007) is exp(H(p)),
p_k = s_k / Σ_j s_j, H the Shannon entropy in nats: 1 for a rank-one matrix, r when all singular values are
equal, and continuous in between. A network that fits its data with low-rank weights or features is the
simpler one by this count, so both measures carry sign +1.

Neither is a bound term (no sample-size adjustment). Permuting hidden units leaves singular values unchanged;
rescaling units changes them, so neither is rescaling-invariant.
"""
from __future__ import annotations

import math

import torch

from measures.context import Context
from measures.registry import measure


def effective_rank(matrix: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values of ``matrix`` (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(matrix.double())
    p = s[s > 0] / s.sum()
    return math.exp(-(p * p.log()).sum().item())


def penultimate_features(ctx: Context) -> torch.Tensor:
    """The input of the last Linear/Conv layer for every training sample, (n, features): the representation
    the classifier reads, captured with a forward hook."""
    last = ctx.layers[-1].module
    grabbed = []
    handle = last.register_forward_hook(lambda _m, args, _out: grabbed.append(args[0].detach().flatten(1)))
    try:
        ctx.logits(ctx.x_train)
    finally:
        handle.remove()
    return torch.cat(grabbed)


@measure("weight_effective_rank", needs=("model",), sign=1, family="rank",
         invariances=("permutation", "batchnorm_scaling"),
         reference="Roy & Vetterli 2007, 'The effective rank: a measure of effective dimensionality'")
def weight_effective_rank(ctx: Context) -> float:
    """Mean over the layers of the weight matrices' effective ranks, (1/d) Σ_i exp H(s(W_i)/Σ s(W_i)).

    Conv kernels reshaped to (out, in·k); biases excluded.
    """
    return sum(effective_rank(ctx.matrix(w)) for w in ctx.weights) / len(ctx.weights)


@measure("feature_effective_rank", needs=("model", "train_data"), sign=1, family="rank",
         invariances=("permutation", "batchnorm_scaling"),
         reference="Roy & Vetterli 2007; feature rank and generalization: Huh et al. 2023, 'The low-rank "
                   "simplicity bias in deep networks'")
def feature_effective_rank(ctx: Context) -> float:
    """Effective rank of the penultimate features on the training set, exp H(s(Φ)/Σ s(Φ)), Φ the (n, features)
    matrix of the last layer's inputs (uncentred).
    """
    return effective_rank(ctx.shared(penultimate_features))
