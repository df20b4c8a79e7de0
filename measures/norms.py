"""Frobenius-norm, distance and path-norm measures (Jiang et al. 2020, Appendix C, "norm-based measures").

Notation: the model's d Linear/Conv layers in forward order (``ctx.layers``) have weights W_1 … W_d (a conv
kernel (out, in, *k) counts as the matrix (out, in·k), whose Frobenius norm is the kernel's), W_i⁰ the initial
weights, γ the 10th-percentile training margin (``measures.margins.tenth_percentile_margin``). Biases are
excluded from every measure here except ``param_norm``.

Equation numbers are those of Jiang et al., "Fantastic generalization measures and where to find them"
(ICLR 2020, arXiv:1912.02178), Appendix C, as tabulated in the ``ComplexityType`` enum of
nitarshan/robust-generalization-measures (Dziugaite et al. 2020).

The "log sum" measures use the rebalanced sum of Jiang et al.: for a ReLU network without biases, rescaling
W_i by c_i > 0 with Π c_i = 1 leaves the function unchanged, and the smallest Σ_i ‖W_i‖² over such
rescalings is d·(Π_i ‖W_i‖²)^{1/d} (AM–GM); hence log-sum = log d + (1/d)·Σ_i log ‖W_i‖².

``fisher_rao_norm`` (Liang et al. 2019) is the one measure here that reads the training data besides the margin:
it is the mean square of the loss's derivative along the parameters themselves.

Sample size: every measure here is a bound-type complexity term and is reported adjusted for the number m of
training samples (the registry's ``sample_size``; docs/measures/norms.md): ½(v − log m) for a logarithm,
√(v/m) otherwise, v the formula of its docstring. The unadjusted v and m are kept in the details.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from measures.context import Context
from measures.losses import fast_cross_entropy
from measures.margins import tenth_percentile_margin
from measures.registry import measure


def layer_fro_sq(ctx: Context) -> tuple[float, ...]:
    """‖W_i‖_F² for each layer (biases excluded)."""
    return tuple(w.double().square().sum().item() for w in ctx.weights)


def layer_dist_fro_sq(ctx: Context) -> tuple[float, ...]:
    """‖W_i − W_i⁰‖_F² for each layer (biases excluded)."""
    return tuple((w.double() - w0.double()).square().sum().item() for w, w0 in zip(ctx.weights, ctx.init_weights))


def log_sum_rebalanced(log_prod: float, depth: int) -> float:
    """log( d·exp(log_prod / d) ): the log of the smallest sum over norm-preserving layer rescalings."""
    return math.log(depth) + log_prod / depth


def _log_margin_sq(ctx: Context) -> float:
    return 2.0 * math.log(ctx.shared(tenth_percentile_margin))


# ----------------------------------------------------------------------------------------- Frobenius norms
@measure("log_prod_of_fro", needs=("model", "train_data"), sign=1, family="norm",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (37); Neyshabur et al. 2015")
def log_prod_of_fro(ctx: Context) -> float:
    """Log product of the layers' squared Frobenius norms, log Π_i ‖W_i‖_F².

    Σ_{i=1}^d log ‖W_i‖_F² over the d Linear/Conv layers (biases excluded).
    """
    return sum(math.log(f) for f in ctx.shared(layer_fro_sq))


@measure("log_prod_of_fro_over_margin", needs=("model", "train_data"), sign=1, family="norm",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (36); Neyshabur et al. 2015")
def log_prod_of_fro_over_margin(ctx: Context) -> float:
    """Margin-normalised log product of squared Frobenius norms, log( Π_i ‖W_i‖_F² / γ² ).

    Σ_i log ‖W_i‖_F² − 2 log γ, γ the 10th-percentile training margin (biases excluded).
    """
    return log_prod_of_fro(ctx) - _log_margin_sq(ctx)


@measure("log_sum_of_fro", needs=("model", "train_data"), sign=1, family="norm",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (39)")
def log_sum_of_fro(ctx: Context) -> float:
    """Log of the rebalanced sum of squared Frobenius norms, log( d·(Π_i ‖W_i‖_F²)^{1/d} ).

    log d + (1/d)·Σ_i log ‖W_i‖_F² (see the module docstring for why the sum is rebalanced; biases excluded).
    """
    return log_sum_rebalanced(log_prod_of_fro(ctx), len(ctx.layers))


@measure("log_sum_of_fro_over_margin", needs=("model", "train_data"), sign=1, family="norm",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (38)")
def log_sum_of_fro_over_margin(ctx: Context) -> float:
    """Margin-normalised log rebalanced sum of squared Frobenius norms, log( d·(Π_i ‖W_i‖_F² / γ²)^{1/d} ).

    log d + (1/d)·(Σ_i log ‖W_i‖_F² − 2 log γ) (biases excluded).
    """
    return log_sum_rebalanced(log_prod_of_fro_over_margin(ctx), len(ctx.layers))


# ----------------------------------------------------------------------------------------- distances and size
@measure("dist_init_fro", needs=("model", "init_model", "train_data"), sign=1, family="norm",
         version=2, sample_size="sqrt", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (40); Nagarajan & Kolter 2019")
def dist_init_fro(ctx: Context) -> float:
    """Squared Frobenius distance from initialization, Σ_i ‖W_i − W_i⁰‖_F².

    Sum over layers of the squared Frobenius norm of (trained − initial) weights (biases excluded).
    """
    return sum(ctx.shared(layer_dist_fro_sq))


@measure("param_norm", needs=("model", "train_data"), sign=1, family="norm",
         version=2, sample_size="sqrt", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (42)")
def param_norm(ctx: Context) -> float:
    """Squared Euclidean norm of all parameters, ‖θ‖².

    Σ over every parameter tensor of the module (weights, biases and any other parameter) of its squared
    entries. Jiang et al.'s eq. (42) sums the weight matrices only, Σ_i ‖W_i‖_F²; this is the quantity that
    weight decay penalises.
    """
    return sum(p.double().square().sum().item() for p in ctx.params.values())


# ----------------------------------------------------------------------------------------- path norm
def path_norm_value(ctx: Context) -> float:
    """Σ_outputs f_{w²}(1): the network with every weight squared and every Linear/Conv bias set to zero, on
    an all-ones input of the training inputs' shape.

    Parameters that are not Linear/Conv biases (the weights, and e.g. normalisation scales) are squared.
    Non-parametric linear maps (average pooling, an identity skip) keep their coefficients unsquared. A
    BatchNorm layer in eval mode is the per-channel affine map z ↦ a·z + b, a = γ/√(σ² + ε), b = β − aμ, with
    the running statistics μ, σ²: its coefficient a is squared and its shift b, like a bias, set to zero
    (γ → γ², β → 0, μ → 0, σ² → (σ² + ε)² − ε, so that γ²/√(σ² + ε) becomes a²).
    """
    biases = {layer.bias for layer in ctx.layers if layer.bias is not None}
    squared = {k: torch.zeros_like(p) if k in biases else p.square() for k, p in ctx.params.items()}
    for name, m in ctx.model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            prefix = f"{name}." if name else ""
            if m.bias is not None:
                squared[prefix + "bias"] = torch.zeros_like(m.bias)
            squared[prefix + "running_mean"] = torch.zeros_like(m.running_mean)
            squared[prefix + "running_var"] = (m.running_var.double() + m.eps).square().sub(m.eps).to(m.running_var)
    ones = torch.ones_like(ctx.x_train[:1])  # (1, *input shape)
    with torch.no_grad():
        return ctx.forward(ones, squared).double().sum().item()


@measure("path_norm", needs=("model", "train_data"), sign=1, family="norm",
         version=2, sample_size="sqrt",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Neyshabur et al. 2015, 'Norm-based capacity control in neural networks'; "
                   "Jiang et al. 2020, eq. (44)")
def path_norm(ctx: Context) -> float:
    """Squared ℓ2 path norm: Σ over input–output paths of the product of the squared weights along the path.

    Σ_j f_{w²}(1)_j: the network with every weight squared (w² = w∘w) and biases set to zero, evaluated on an
    all-ones input and summed over the outputs. For a ReLU network every pre-activation is then non-negative,
    so each unit passes its input through and the output sums the products along all paths; biases are not
    paths and are excluded. ``train_data`` is read only for the input's shape. Fixed linear maps that are
    not parameters (average pooling) enter with their coefficients, unsquared.
    """
    return ctx.shared(path_norm_value)


@measure("path_norm_over_margin", needs=("model", "train_data"), sign=1, family="norm",
         version=2, sample_size="sqrt", invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Neyshabur et al. 2015; Jiang et al. 2020, eq. (43)")
def path_norm_over_margin(ctx: Context) -> float:
    """Path norm over the squared margin, Σ_j f_{w²}(1)_j / γ².

    ``path_norm`` divided by γ², γ the 10th-percentile training margin (biases excluded from the path norm).
    """
    return ctx.shared(path_norm_value) / ctx.shared(tenth_percentile_margin) ** 2


def _directional_losses(ctx: Context) -> torch.Tensor:
    """⟨θ, ∇_θ ℓ_i⟩ for every training sample i: the derivative of ℓ_i((1 + t)θ) at t = 0, one forward-mode
    pass (``torch.func.jvp``) per chunk with the parameters themselves as the tangent. Every parameter,
    biases included, is in θ."""
    params = {k: v.detach() for k, v in ctx.params.items()}
    out = []
    with warnings.catch_warnings():  # torch's first forward-mode pass scripts its own decompositions
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        for i in range(0, len(ctx.x_train), ctx.chunk):
            x, y = ctx.x_train[i:i + ctx.chunk], ctx.y_train[i:i + ctx.chunk]

            def losses(p, x=x, y=y):
                return fast_cross_entropy(ctx.forward(x, p), y, reduction="none")

            out.append(torch.func.jvp(losses, (params,), (params,))[1])
    return torch.cat(out)


@measure("fisher_rao_norm", needs=("model", "train_data"), sign=1, family="norm", sample_size="sqrt",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Liang, Poggio, Rakhlin & Stokes 2019, 'Fisher–Rao metric, geometry, and complexity of neural "
                   "networks', eqs. (3.2), (5.3); Jiang et al. 2020, Appendix C (the Fisher–Rao norm)")
def fisher_rao_norm(ctx: Context) -> float:
    """Squared empirical Fisher–Rao norm, ‖θ‖_fr² = (1/n) Σ_i ⟨θ, ∇_θ ℓ(f_θ(x_i), y_i)⟩², ℓ the cross-entropy.

    The empirical form (true labels, not labels drawn from the model). For a bias-free ReLU network of L + 1
    layers, ⟨θ, ∇_θ ℓ⟩ = (L + 1)⟨∂ℓ/∂f, f⟩ (Liang et al., Lemma 3.1), which is how Jiang et al. write it; here
    the directional derivative is taken directly, so it holds for any network. Invariant to node rescaling: the
    rescaling map is linear in θ, so it commutes with θ → (1 + t)θ.
    """
    return ctx.shared(_directional_losses).double().square().mean().item()
