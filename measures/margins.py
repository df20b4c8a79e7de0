"""Measures on the network's outputs on the training set: cross-entropy, margin, entropy.

``tenth_percentile_margin`` is the margin γ that the margin-normalised norm and spectral measures
(``measures.norms``, ``measures.spectral``) divide by; reach it through ``ctx.shared`` so it is computed once.

``inverse_margin`` is a bound-type term and is reported adjusted for the training-set size m as √(v/m)
(the registry's ``sample_size``); the cross-entropy and the output entropy are not bounds and are not adjusted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from measures.context import Context
from measures.registry import measure

MARGIN_PERCENTILE = 10.0


def tenth_percentile_margin(ctx: Context) -> float:
    """γ: the 10th percentile of the training output margins f_y(x) − max_{j≠y} f_j(x) (``ctx.margins``).

    Linear interpolation between order statistics (``numpy.percentile``'s default), as in Jiang et al. 2020,
    who take the 10th percentile rather than the minimum to be robust to a few outliers. Raises if γ ≤ 0
    (more than ~10% of the training set misclassified): the margin-normalised measures are then undefined,
    and we do not take |γ| as some implementations silently do.
    """
    gamma = torch.quantile(ctx.margins.double(), MARGIN_PERCENTILE / 100).item()
    if not gamma > 0:
        raise ValueError(f"the {MARGIN_PERCENTILE:g}th-percentile training margin is {gamma:.4g} ≤ 0 (at least "
                         f"~{MARGIN_PERCENTILE:g}% of the training set is misclassified); margin-normalised "
                         f"measures are undefined for this model")
    return gamma


@measure("cross_entropy", needs=("model", "train_data"), sign=1, family="margin",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Jiang et al. 2020, 'Fantastic generalization measures' (training cross-entropy baseline)")
def cross_entropy(ctx: Context) -> float:
    """Mean cross-entropy of the trained model on the training set.

    (1/n) Σ_i −log softmax(f(x_i))_{y_i}, model in eval mode (dropout off). The zoo stops every model at the
    same target loss, so this mostly measures how far below the target a model lands; sign +1 by the usual
    convention that the empirical-risk term of a bound grows with the loss.
    """
    return ctx.train_loss


@measure("inverse_margin", needs=("model", "train_data"), sign=1, family="margin",
         version=2, sample_size="sqrt", invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Jiang et al. 2020, eq. (22)")
def inverse_margin(ctx: Context) -> float:
    """Inverse squared output margin, 1/γ², with γ the 10th-percentile training margin.

    γ = percentile_10{ f_{y_i}(x_i) − max_{j≠y_i} f_j(x_i) } over the training set (raises if γ ≤ 0).
    """
    return 1.0 / ctx.shared(tenth_percentile_margin) ** 2


@measure("output_entropy", needs=("model", "train_data"), sign=-1, family="margin",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Pereyra et al. 2017, 'Regularizing neural networks by penalizing confident output "
                   "distributions'")
def output_entropy(ctx: Context) -> float:
    """Mean entropy of the softmax outputs on the training set (in nats).

    (1/n) Σ_i H(p_i), H(p) = −Σ_j p_j log p_j, p_i = softmax(f(x_i)). Sign −1: confident (low-entropy)
    predictions on the training set are the overfitting that a confidence penalty counteracts.
    """
    logp = F.log_softmax(ctx.train_logits.double(), dim=1)  # (n, classes)
    return -(logp.exp() * logp).sum(1).mean().item()


ECE_BINS = 15


def _confidences(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """The top softmax probability of every training sample and whether its argmax is the label."""
    p = torch.softmax(ctx.train_logits.double(), dim=1)
    conf, pred = p.max(1)
    return conf, (pred == ctx.y_train).double()


@measure("train_confidence", needs=("model", "train_data"), sign=1, family="margin",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Guo, Pleiss, Sun & Weinberger 2017, 'On calibration of modern neural networks' (confidence); "
                   "training-set confidence as a predictor: Nakai et al. 2026")
def train_confidence(ctx: Context) -> float:
    """Mean top softmax probability on the training set, (1/n) Σ_i max_j σ(f(x_i))_j.

    Sign +1, like ``output_entropy``'s −1: the more confidently a model fits its training set at the same
    training loss, the more it is taken to have memorised.
    """
    return ctx.shared(_confidences)[0].mean().item()


@measure("train_ece", needs=("model", "train_data"), sign=1, family="margin",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Guo, Pleiss, Sun & Weinberger 2017, eq. (3) (expected calibration error); on the training set: "
                   "Nakai et al. 2026")
def train_ece(ctx: Context) -> float:
    """Expected calibration error on the training set, Σ_b (|B_b|/n) |acc(B_b) − conf(B_b)|, over 15 equal-width
    confidence bins B_b = (b/15, (b + 1)/15].

    acc: the fraction of the bin's samples whose argmax is their (possibly noisy) training label; conf: their
    mean top probability.
    """
    conf, correct = ctx.shared(_confidences)
    b = (conf * ECE_BINS).ceil().clamp(1, ECE_BINS).long() - 1  # bin (k/15, (k+1)/15] → k
    n = torch.zeros(ECE_BINS, dtype=torch.float64).index_add_(0, b, torch.ones_like(conf))
    gap = torch.zeros(ECE_BINS, dtype=torch.float64).index_add_(0, b, correct - conf)
    return (gap.abs().sum() / n.sum()).item()
