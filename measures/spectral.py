"""Spectral-norm measures (Bartlett et al. 2017; Jiang et al. 2020, Appendix C, "spectral" measures).

Notation as in ``measures.norms``: layers W_1 … W_d (``ctx.layers``), initial weights W_i⁰, γ the
10th-percentile training margin; ‖·‖_2 the spectral norm, ‖·‖_F the Frobenius norm. Biases are excluded.
Equation numbers are Jiang et al.'s (arXiv:1912.02178, Appendix C; numbering as in the ``ComplexityType`` enum
of nitarshan/robust-generalization-measures).

Two spectral norms of a convolutional layer are offered:

* the plain measures use the kernel reshaped to a matrix (out, in·k) — Jiang et al.'s approximation
  (Yoshida & Miyato 2017, §3.2). For Linear layers this is the exact operator norm.
* the ``*_fft`` measures use the exact operator norm of the convolution on the layer's input grid, by the
  method of Sedghi, Gupta & Long 2019 ("The singular values of convolutional layers"): with *circular*
  boundary conditions the convolution is block-diagonalised by the DFT, and its singular values are those
  of the (out × in) matrices K̂(ω) = Σ_t W[:, :, t] e^{2πi⟨ω, t⟩/n}, one per frequency ω of the n-point grid.
  Strided convolutions are handled exactly by the polyphase decomposition: a stride-s circular convolution on
  an n-grid is a stride-1 circular convolution on the (n/s)-grid from in·s (per spatial axis) polyphase input
  channels, so the per-frequency matrices are (out × in·Π s). Where n is not a multiple of s the grid is
  rounded up to the next multiple. The model's convolutions pad with *zeros*, whose operator is a Toeplitz
  (not circulant) matrix: the two operator norms differ by boundary effects and coincide in the limit of a
  large grid, where both tend to sup_ω ‖K̂(ω)‖_2. The input grid of each layer is recorded by a forward hook
  on one training sample, so the ``*_fft`` measures need ``train_data``. For Linear layers both variants are
  the same number, so on an MLP each ``*_fft`` measure equals its plain counterpart.

Singular values of each reshaped weight are computed once per model (``layer_svdvals``) and shared with the
heavy-tailed measures of ``measures.heavy_tail``.

Sample size: every measure here is a bound-type complexity term and is reported adjusted for the number m of
training samples (the registry's ``sample_size``; docs/measures/spectral.md): ½(v − log m) for a logarithm,
√(v/m) otherwise, v the formula of its docstring. The unadjusted v and m are kept in the details.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from measures.context import Context
from measures.margins import tenth_percentile_margin
from measures.norms import layer_dist_fro_sq, layer_fro_sq, log_sum_rebalanced
from measures.registry import measure

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
METHODS = ("reshape", "fft")


# ----------------------------------------------------------------------------------------- shared intermediates
def layer_svdvals(ctx: Context) -> tuple[torch.Tensor, ...]:
    """Singular values (descending) of each layer's weight as a matrix (out, in·k), computed in the weights'
    precision and returned as float64."""
    return tuple(torch.linalg.svdvals(ctx.matrix(w)).double() for w in ctx.weights)


def layer_input_sizes(ctx: Context) -> tuple[tuple[int, ...], ...]:
    """The spatial size of each layer's input (``()`` for a Linear layer), recorded by forward hooks on one
    training sample."""
    if not any(isinstance(layer.module, CONV_TYPES) for layer in ctx.layers):
        return tuple(() for _ in ctx.layers)
    sizes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, inputs, output):
            sizes[name] = tuple(inputs[0].shape[2:]) if isinstance(module, CONV_TYPES) else ()
        return hook

    handles = [layer.module.register_forward_hook(record(layer.name)) for layer in ctx.layers]
    try:
        with torch.no_grad():
            ctx.forward(ctx.x_train[:1])
    finally:
        for h in handles:
            h.remove()
    missing = [layer.name for layer in ctx.layers if layer.name not in sizes]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass; cannot record their input size")
    return tuple(sizes[layer.name] for layer in ctx.layers)


def conv_operator_norm(weight: torch.Tensor, in_size: tuple[int, ...], stride: tuple[int, ...] | None = None,
                       padding: tuple[int, ...] | None = None, dilation: tuple[int, ...] | None = None,
                       groups: int = 1) -> float:
    """Exact spectral norm of the circular convolution (cross-correlation, as ``torch.nn.functional.conv*d``)
    with kernel ``weight`` (out, in/groups, *k) on an input grid ``in_size``; Sedghi et al. 2019, extended
    to strides by the polyphase decomposition (see the module docstring).

    Output position i reads input (s·i + t·dil − pad) mod n for tap t. Writing t·dil − pad = s·q_t + r_t
    (0 ≤ r_t < s), this is a stride-1 circular correlation on the m = ⌈n/s⌉ grid of the polyphase component
    r_t, so the operator's singular values are those of M(ω)[o, (c, r)] = Σ_{t: r_t = r} W[o, c, t]·e^{2πi ω q_t/m}
    over the frequencies ω of the m-grid. With stride 1 the padding contributes a unit-modulus factor and
    does not change the norm.
    """
    k = weight.dim() - 2
    stride = stride or (1,) * k
    padding = padding or (0,) * k
    dilation = dilation or (1,) * k
    if groups > 1:  # block-diagonal over groups: the largest block's norm
        out_per_group = weight.shape[0] // groups
        return max(conv_operator_norm(block, in_size, stride, padding, dilation)
                   for block in weight.split(out_per_group, dim=0))
    x = weight.to(torch.complex128)  # (out, in, T_1, …, T_k)
    grids, phases = [], []
    for a in range(k):
        s, taps = stride[a], weight.shape[2 + a]
        m = -(-in_size[a] // s)
        offsets = torch.arange(taps) * dilation[a] - padding[a]
        q = torch.div(offsets, s, rounding_mode="floor")
        r = offsets - q * s
        omega = torch.arange(m, dtype=torch.float64)
        phase = torch.exp(2j * math.pi * omega[:, None] * q[None, :].double() / m)  # (m, T_a)
        factor = phase[:, :, None] * F.one_hot(r, s).to(phase.dtype)[None]  # (m, T_a, s)
        x = torch.tensordot(x, factor, dims=([2], [1]))  # T_a replaced by (m, s) at the end
        grids.append(m)
        phases.append(s)
    # x: (out, in, m_1, s_1, …, m_k, s_k)
    perm = [2 + 2 * a for a in range(k)] + [0, 1] + [3 + 2 * a for a in range(k)]
    mats = x.permute(perm).reshape(math.prod(grids), weight.shape[0], weight.shape[1] * math.prod(phases))
    return torch.linalg.matrix_norm(mats, ord=2).max().item()  # max over frequencies of (out, in·Πs) norms


def _layer_conv_norm(layer, weight: torch.Tensor, in_size: tuple[int, ...]) -> float:
    mod = layer.module
    k = weight.dim() - 2
    padding = mod.padding
    if isinstance(padding, str):  # "valid" or "same" (stride 1 only): the padding only shifts the phase
        padding = (0,) * k if padding == "valid" else tuple(d * (t - 1) // 2 for d, t in
                                                            zip(mod.dilation, weight.shape[2:]))
    return conv_operator_norm(weight, in_size, tuple(mod.stride), tuple(padding), tuple(mod.dilation), mod.groups)


def layer_spectral_norms(ctx: Context, method: str) -> tuple[float, ...]:
    """‖W_i‖_2 per layer: ``"reshape"`` the reshaped-kernel matrix's, ``"fft"`` the exact conv operator's."""
    if method == "reshape":
        return tuple(s[0].item() for s in ctx.shared(layer_svdvals))
    if method != "fft":
        raise ValueError(f"unknown spectral-norm method {method!r}; valid: {', '.join(METHODS)}")
    plain = ctx.shared(layer_spectral_norms, "reshape")
    sizes = ctx.shared(layer_input_sizes)
    return tuple(_layer_conv_norm(layer, w, size) if isinstance(layer.module, CONV_TYPES) else norm
                 for layer, w, size, norm in zip(ctx.layers, ctx.weights, sizes, plain))


def layer_dist_spectral_norms(ctx: Context, method: str) -> tuple[float, ...]:
    """‖W_i − W_i⁰‖_2 per layer, by ``method`` as in ``layer_spectral_norms``."""
    deltas = [w - w0 for w, w0 in zip(ctx.weights, ctx.init_weights)]
    if method == "reshape":
        return tuple(torch.linalg.svdvals(ctx.matrix(d))[0].item() for d in deltas)
    if method != "fft":
        raise ValueError(f"unknown spectral-norm method {method!r}; valid: {', '.join(METHODS)}")
    plain = ctx.shared(layer_dist_spectral_norms, "reshape")
    sizes = ctx.shared(layer_input_sizes)
    return tuple(_layer_conv_norm(layer, d, size) if isinstance(layer.module, CONV_TYPES) else norm
                 for layer, d, size, norm in zip(ctx.layers, deltas, sizes, plain))


# ----------------------------------------------------------------------------------------- formulas
def _log_prod_of_spec(ctx: Context, method: str) -> float:
    return sum(2.0 * math.log(s) for s in ctx.shared(layer_spectral_norms, method))


def _log_prod_of_spec_over_margin(ctx: Context, method: str) -> float:
    return _log_prod_of_spec(ctx, method) - 2.0 * math.log(ctx.shared(tenth_percentile_margin))


def _fro_over_spec(ctx: Context, method: str) -> float:
    return sum(f / s ** 2 for f, s in zip(ctx.shared(layer_fro_sq), ctx.shared(layer_spectral_norms, method)))


def _spec_init_ratio(ctx: Context, method: str) -> float:
    return sum(f / s ** 2 for f, s in zip(ctx.shared(layer_dist_fro_sq), ctx.shared(layer_spectral_norms, method)))


def _dist_spec_init(ctx: Context, method: str) -> float:
    return sum(s ** 2 for s in ctx.shared(layer_dist_spectral_norms, method))


# ----------------------------------------------------------------------------------------- measures
_FFT_REF = "; exact conv norms: Sedghi, Gupta & Long 2019"


@measure("log_prod_of_spec", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (32); Bartlett et al. 2017")
def log_prod_of_spec(ctx: Context) -> float:
    """Log product of the layers' squared spectral norms, log Π_i ‖W_i‖_2².

    Σ_{i=1}^d log ‖W_i‖_2², conv kernels reshaped to (out, in·k) (biases excluded).
    """
    return _log_prod_of_spec(ctx, "reshape")


@measure("log_prod_of_spec_fft", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (32)" + _FFT_REF)
def log_prod_of_spec_fft(ctx: Context) -> float:
    """Log product of squared spectral norms with exact conv operator norms, log Π_i ‖A_i‖_2².

    As ``log_prod_of_spec`` with each conv layer's norm that of the circular convolution operator A_i on its
    input grid (FFT method, module docstring).
    """
    return _log_prod_of_spec(ctx, "fft")


@measure("log_prod_of_spec_over_margin", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (31); Bartlett et al. 2017")
def log_prod_of_spec_over_margin(ctx: Context) -> float:
    """Margin-normalised log product of squared spectral norms, log( Π_i ‖W_i‖_2² / γ² ).

    Σ_i log ‖W_i‖_2² − 2 log γ, γ the 10th-percentile training margin; conv kernels reshaped.
    """
    return _log_prod_of_spec_over_margin(ctx, "reshape")


@measure("log_prod_of_spec_over_margin_fft", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (31)" + _FFT_REF)
def log_prod_of_spec_over_margin_fft(ctx: Context) -> float:
    """Margin-normalised log product of squared spectral norms with exact conv operator norms.

    Σ_i log ‖A_i‖_2² − 2 log γ (FFT conv norms, module docstring).
    """
    return _log_prod_of_spec_over_margin(ctx, "fft")


@measure("log_sum_of_spec", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (35)")
def log_sum_of_spec(ctx: Context) -> float:
    """Log of the rebalanced sum of squared spectral norms, log( d·(Π_i ‖W_i‖_2²)^{1/d} ).

    log d + (1/d)·Σ_i log ‖W_i‖_2²: the smallest log Σ_i ‖W_i‖_2² over rescalings of the layers that leave a
    bias-free ReLU network unchanged (``measures.norms`` docstring); conv kernels reshaped.
    """
    return log_sum_rebalanced(_log_prod_of_spec(ctx, "reshape"), len(ctx.layers))


@measure("log_sum_of_spec_fft", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (35)" + _FFT_REF)
def log_sum_of_spec_fft(ctx: Context) -> float:
    """Log of the rebalanced sum of squared spectral norms with exact conv operator norms.

    log d + (1/d)·Σ_i log ‖A_i‖_2² (FFT conv norms).
    """
    return log_sum_rebalanced(_log_prod_of_spec(ctx, "fft"), len(ctx.layers))


@measure("log_sum_of_spec_over_margin", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (34)")
def log_sum_of_spec_over_margin(ctx: Context) -> float:
    """Margin-normalised log rebalanced sum of squared spectral norms, log( d·(Π_i ‖W_i‖_2² / γ²)^{1/d} ).

    log d + (1/d)·(Σ_i log ‖W_i‖_2² − 2 log γ); conv kernels reshaped.
    """
    return log_sum_rebalanced(_log_prod_of_spec_over_margin(ctx, "reshape"), len(ctx.layers))


@measure("log_sum_of_spec_over_margin_fft", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (34)" + _FFT_REF)
def log_sum_of_spec_over_margin_fft(ctx: Context) -> float:
    """Margin-normalised log rebalanced sum of squared spectral norms with exact conv operator norms.

    log d + (1/d)·(Σ_i log ‖A_i‖_2² − 2 log γ) (FFT conv norms).
    """
    return log_sum_rebalanced(_log_prod_of_spec_over_margin(ctx, "fft"), len(ctx.layers))


@measure("log_spec_init_main", needs=("model", "init_model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Bartlett et al. 2017, Theorem 1.1; Jiang et al. 2020, eq. (29)")
def log_spec_init_main(ctx: Context) -> float:
    """Log of the main term of the spectrally-normalised margin bound, distance-from-init form (spec-init).

    log( Π_i ‖W_i‖_2² / γ² · Σ_i ‖W_i − W_i⁰‖_F² / ‖W_i‖_2² ): Bartlett et al.'s bound with their (2,1)-norm
    replaced by the Frobenius norm and the log factors dropped, as in Jiang et al.; conv kernels reshaped.
    """
    return _log_prod_of_spec_over_margin(ctx, "reshape") + math.log(_spec_init_ratio(ctx, "reshape"))


@measure("log_spec_init_main_fft", needs=("model", "init_model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Bartlett et al. 2017; Jiang et al. 2020, eq. (29)" + _FFT_REF)
def log_spec_init_main_fft(ctx: Context) -> float:
    """Log spec-init main term with exact conv operator norms.

    log( Π_i ‖A_i‖_2² / γ² · Σ_i ‖W_i − W_i⁰‖_F² / ‖A_i‖_2² ), the Frobenius norms those of the kernels
    (as in nitarshan/robust-generalization-measures).
    """
    return _log_prod_of_spec_over_margin(ctx, "fft") + math.log(_spec_init_ratio(ctx, "fft"))


@measure("log_spec_orig_main", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Bartlett et al. 2017, Theorem 1.1; Jiang et al. 2020, eq. (30)")
def log_spec_orig_main(ctx: Context) -> float:
    """Log of the main term of the spectrally-normalised margin bound, measured from the origin (spec-orig).

    log( Π_i ‖W_i‖_2² / γ² · Σ_i ‖W_i‖_F² / ‖W_i‖_2² ); conv kernels reshaped.
    """
    return _log_prod_of_spec_over_margin(ctx, "reshape") + math.log(_fro_over_spec(ctx, "reshape"))


@measure("log_spec_orig_main_fft", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="log", invariances=("permutation",),
         reference="Bartlett et al. 2017; Jiang et al. 2020, eq. (30)" + _FFT_REF)
def log_spec_orig_main_fft(ctx: Context) -> float:
    """Log spec-orig main term with exact conv operator norms.

    log( Π_i ‖A_i‖_2² / γ² · Σ_i ‖W_i‖_F² / ‖A_i‖_2² ), the Frobenius norms those of the kernels.
    """
    return _log_prod_of_spec_over_margin(ctx, "fft") + math.log(_fro_over_spec(ctx, "fft"))


@measure("fro_over_spec", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="sqrt", invariances=("permutation", "batchnorm_scaling"),
         reference="Jiang et al. 2020, eq. (33)")
def fro_over_spec(ctx: Context) -> float:
    """Sum of the layers' stable ranks, Σ_i ‖W_i‖_F² / ‖W_i‖_2².

    Conv kernels reshaped to (out, in·k) (biases excluded).
    """
    return _fro_over_spec(ctx, "reshape")


@measure("fro_over_spec_fft", needs=("model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="sqrt", invariances=("permutation", "batchnorm_scaling"),
         reference="Jiang et al. 2020, eq. (33)" + _FFT_REF)
def fro_over_spec_fft(ctx: Context) -> float:
    """Σ_i ‖W_i‖_F² / ‖A_i‖_2² with exact conv operator norms in the denominator.

    The numerator is the kernel's squared Frobenius norm (as in nitarshan/robust-generalization-measures),
    not the operator's, which would be Π(grid size) times larger for a circular convolution.
    """
    return _fro_over_spec(ctx, "fft")


@measure("dist_spec_init", needs=("model", "init_model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="sqrt", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (41)")
def dist_spec_init(ctx: Context) -> float:
    """Squared spectral distance from initialization, Σ_i ‖W_i − W_i⁰‖_2².

    Conv kernels reshaped to (out, in·k) (biases excluded).
    """
    return _dist_spec_init(ctx, "reshape")


@measure("dist_spec_init_fft", needs=("model", "init_model", "train_data"), sign=1, family="spectral",
         version=2, sample_size="sqrt", invariances=("permutation",),
         reference="Jiang et al. 2020, eq. (41)" + _FFT_REF)
def dist_spec_init_fft(ctx: Context) -> float:
    """Squared spectral distance from initialization with exact conv operator norms, Σ_i ‖A_i − A_i⁰‖_2².

    The convolution is linear in its kernel, so A_i − A_i⁰ is the convolution with kernel W_i − W_i⁰.
    """
    return _dist_spec_init(ctx, "fft")
