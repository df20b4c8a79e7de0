"""The inverse variance–flatness relation of SGD solutions (Feng & Tu, PNAS 118, e2015617118, 2021;
arXiv 2001.01678; docs/measures/variance-flatness.md).

From a trained solution w₀ keep running the optimizer that trained it (``measures.updates``: plain SGD,
heavy-ball momentum or Adam, with the training learning rate, batch size and weight decay, a seeded data order)
and record the analysed weights after every step. Then

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

* ``benchmark.reproduce.vf_analysis.variance_flatness`` (``VFSettings``) is the paper's analysis of a whole
  weight matrix, for long trajectories (T several times N, e.g. the reproduction: T = 3,200 for N = 2,500):
  exact PCA of all snapshots (:func:`snapshot_pca`). Only the reproduction (``genbench reproduce pnas``) runs it.
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
PCA and the 28 directions' line scans the rest). When the benchmark measures several models together
(``benchmark.measuring.many.Member.group``) the continuation is one stacked run for all of them
(``block._block_snapshots_many``): 0.26 s per model for 18
40→128→128→10 MLPs against 0.47 s alone. The three ``vf.block_*`` measures share one analysis
(``ctx.shared``).

The package, by concern: ``sampling`` (the continued optimizer and the PCA of its trajectory), ``landscape``
(the batched line losses, the flatness scan and the power-law fit), ``block`` (the registered estimator's
analysis); the registered measures are defined here.
"""
from __future__ import annotations

import math

import numpy as np

from measures.context import Context
from measures.flatness.block import (
    BLOCK,
    BlockSettings,
    BlockSnapshots,
    BlockVFResult,
    block_fit,
    block_index,
    block_variance_flatness,
    middle_hidden_layer,
)
from measures.flatness.landscape import (
    START_SIGMAS,
    FlatnessScan,
    LineLoss,
    PowerLawFit,
    flatness_scan,
    line_loss,
    power_law_fit,
)
from measures.flatness.sampling import (
    Continued,
    PCAResult,
    analysed_names,
    continued_optimizer,
    optimizer_snapshots,
    randomized_svd,
    snapshot_pca,
    split_sample_pca,
)
from measures.registry import NotApplicable, Value, measure

__all__ = ["BLOCK", "REFERENCE", "START_SIGMAS", "BlockSettings", "BlockSnapshots", "BlockVFResult", "Continued",
           "FlatnessScan", "LineLoss", "PCAResult", "PowerLawFit", "analysed_names", "block_fit", "block_index",
           "block_variance_flatness", "continued_optimizer", "flatness_scan", "line_loss", "middle_hidden_layer",
           "optimizer_snapshots", "power_law_fit", "randomized_svd", "snapshot_pca", "split_sample_pca"]

REFERENCE = "Feng & Tu, PNAS 118(9) e2015617118 (2021), arXiv 2001.01678: σ_i² ∝ F_i^(−ψ)"


# --------------------------------------------------------------------------------------------- measures
NEEDS = ("model", "train_data", "hparams")


def _block(ctx: Context, settings: BlockSettings) -> BlockVFResult:
    return block_variance_flatness(ctx, settings)


def _block_name(r: BlockVFResult) -> str:
    return f"{r.rows.shape[0]}x{r.rows.shape[1]}x{r.cols.shape[1]}"


def _too_few(r: BlockVFResult, need: str) -> str:
    """Why the fit is undefined: too few directions whose flatness is finite on both sides."""
    return (f"only {int(r.used.sum())} of {len(r.pcs)} fluctuation directions of {r.layer} have a finite flatness "
            f"({int(r.censored_left.sum() + r.censored_right.sum())} sides censored: the loss does not reach e·L₀ "
            f"within the search range, or, {r.unresolved} of them, the scan did not locate the crossing); {need}")


def _details(r: BlockVFResult) -> dict:
    return {"r2": r.fit.r2, "se": r.fit.se, "n_pcs": r.fit.n, "n_censored_left": int(r.censored_left.sum()),
            "n_censored_right": int(r.censored_right.sum()), "n_unresolved": r.unresolved,
            "pcs": f"{int(r.pcs.min())}-{int(r.pcs.max())}",
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
    if r.fit.n < 3:
        raise NotApplicable(_too_few(r, "a fit of ψ needs 3"))
    if not math.isfinite(r.fit.psi):  # power_law_fit's other undefined case: no spread in log F
        raise NotApplicable(f"ψ is undefined: the {r.fit.n} fitted directions all have the same flatness "
                            f"({r.layer}, blocks {_details(r)['block']})")
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
    if not ok.any():
        raise NotApplicable(_too_few(r, "the mean needs one"))
    return Value(float(np.log(r.flatness[ok]).mean()), _details(r))


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
