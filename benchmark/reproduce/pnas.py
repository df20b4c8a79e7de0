"""Reproduce the inverse variance–flatness relation (Feng & Tu, PNAS 118, e2015617118, 2021;
docs/measures/variance-flatness.md) at CPU scale.

Setup (scaled down from the paper, which used all 60,000 MNIST images and trained for up to 1,000 epochs):
the 4,000 offline MNIST digits of ``mnist5k``, a 784→50→50→10 ReLU MLP without biases, cross-entropy, plain
SGD (α = 0.1, B = 50) until the full training cross-entropy is ≤ 10⁻³ (training accuracy 100 %). From
the solution the same SGD continues for 40 epochs (3,200 steps, one snapshot of the 50×50 hidden-to-hidden
matrix, N = 2,500, after every step: T ≥ N, as in the paper's 12,000 snapshots); PCA; flatness F_i along
PCs 2–50 and every 10th PC up to 1,000 (the paper: every 10th up to 1,000); the fit of
log σ_i² = c − ψ log F_i. A 2×2 sweep of (α, B) checks the robustness of ψ.

    genbench reproduce pnas [--out DIR] [--quick]
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.measuring.context import Trained
from benchmark.report.format import markdown_table
from benchmark.training.loop import train_model
from benchmark.zoo.datasets import DataBundle, make_data
from benchmark.zoo.hparams import DatasetHP, HParams, ModelHP, OptimizerHP, TrainHP
from measures import Context
from measures import flatness as fl

PAPER = "Feng & Tu, PNAS 118(9) e2015617118 (2021)"


@dataclass(frozen=True)
class Scale:
    """Everything the full and the quick reproduction differ in."""
    train_size: int
    width: int
    target_loss: float
    max_epochs: int
    steps: int  # SGD snapshots after the solution
    pcs: tuple[int, ...]
    sweep: tuple[tuple[float, int], ...]  # (α, B) besides the base (0.1, 50)
    gamma_ranges: tuple[tuple[int, int], ...]  # PC ranks (1-based, inclusive) for fits σ_i² ∝ i^(−γ)


FULL = Scale(4000, 50, 1e-3, 1000, 3200, tuple(range(2, 51)) + tuple(range(60, 1001, 10)),
             ((0.2, 50), (0.1, 25), (0.2, 25)), ((20, 200), (20, 1000)))
QUICK = Scale(500, 20, 0.1, 40, 100, tuple(range(2, 16)), ((0.2, 50),), ((5, 30), (5, 60)))


def train_mlp(data: DataBundle, lr: float, batch_size: int, *, width: int, target_loss: float,
              max_epochs: int, seed: int = 0):
    """The paper's network (784→width→width→10, ReLU, no biases) trained by ``train_model`` with plain SGD
    on ``data`` until the training cross-entropy is ≤ ``target_loss``; returns the trained model, its
    Context (with α and B) and the training metrics."""
    hp = HParams(dataset=DatasetHP(name="mnist5k", train_size=len(data.y_train), test_size=len(data.y_test)),
                 model=ModelHP(name="mlp", depth=2, width=width, bias=False),
                 optimizer=OptimizerHP(name="sgd", lr=lr),
                 train=TrainHP(batch_size=batch_size, target_loss=target_loss, max_epochs=max_epochs),
                 seed=seed)
    result = train_model(hp, data)
    trained = Trained.from_result(result, data)
    return trained.model, trained.context(seed=seed), result.metrics


def power_law_exponent(spectrum: np.ndarray, ranks: tuple[int, int]) -> float:
    """γ of σ_i² ∝ i^(−γ) by least squares in log–log over the 1-based ranks ``ranks`` (inclusive)."""
    s = spectrum[spectrum > 0]
    i = np.arange(1, len(s) + 1)
    sel = (i >= ranks[0]) & (i <= min(ranks[1], len(s)))
    return float(-np.polyfit(np.log(i[sel]), np.log(s[sel]), 1)[0]) if sel.sum() >= 3 else math.nan


def spectrum_stats(spectrum: np.ndarray, ranges: tuple[tuple[int, int], ...]) -> dict:
    """n90 (PCs carrying 90 % of the variance), the same without PC 1 (the drift), the share of PC 1, and
    γ over each range of ranks (keys ``gamma_<lo>_<hi>``)."""
    s = spectrum[spectrum > 0]
    n90 = int(np.searchsorted(np.cumsum(s) / s.sum(), 0.9) + 1)
    rest = s[1:]
    n90_rest = int(np.searchsorted(np.cumsum(rest) / rest.sum(), 0.9) + 1)
    out = {"n90": n90, "n90_without_pc1": n90_rest, "pc1_fraction": float(s[0] / s.sum())}
    out.update({f"gamma_{lo}_{hi}": power_law_exponent(s, (lo, hi)) for lo, hi in ranges})
    return out


def analyse(ctx: Context, scale: Scale) -> fl.VFResult:
    return fl.variance_flatness(ctx, fl.VFSettings(steps=scale.steps, params="penultimate", pcs=scale.pcs))


def plot_sigma_vs_flatness(results: dict[str, fl.VFResult], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for (label, r), color in zip(results.items(), plt.cm.viridis(np.linspace(0, 0.85, len(results)))):
        ok = r.used
        ax.loglog(r.flatness[ok], r.variance[ok], "o", ms=3.5, color=color, alpha=0.8,
                  label=f"{label}: ψ = {r.fit.psi:.2f} (R² {r.fit.r2:.2f})")
        f = np.geomspace(r.flatness[ok].min(), r.flatness[ok].max(), 20)
        ax.loglog(f, np.exp(r.fit.intercept) * f ** -r.fit.psi, "-", color=color, lw=1)
    ax.set_xlabel("flatness $F_i$ (width at $e\\cdot L_0$)")
    ax.set_ylabel("variance $\\sigma_i^2$ along PC $i$")
    ax.set_title("Inverse variance–flatness relation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_loss_profiles(ctx: Context, r: fl.VFResult, pcs: list[int], path: Path) -> None:
    """log L(w₀ + δ p_i) along a few PCs, the paper's Fig. 1-style profiles (δ in weight units)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pcs = [p for p in pcs if p in r.pcs]
    width = np.nanmax([r.flatness[r.pcs == p][0] for p in pcs if p in r.pcs] or [1.0])
    deltas = torch.linspace(-1.2 * width, 1.2 * width, 81)
    prof = fl.loss_profiles(ctx, r, pcs, deltas)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for p, row, color in zip(pcs, prof, plt.cm.plasma(np.linspace(0, 0.85, len(pcs)))):
        ax.semilogy(deltas.numpy(), row, color=color, label=f"PC {p}")
    ax.axhline(math.e * r.loss0, color="k", ls=":", lw=1, label="$e\\cdot L_0$")
    ax.set_xlabel("$\\delta$ along the PC")
    ax.set_ylabel("training loss $L(w_0+\\delta p_i)$")
    ax.set_title("Loss profiles along principal components")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_spectrum(r: fl.VFResult, ranges: tuple[tuple[int, int], ...], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = r.pca.spectrum.numpy()
    s = s[s > 0]
    i = np.arange(1, len(s) + 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.loglog(i, s, ".", ms=2, label="$\\sigma_i^2$")
    for (lo, hi), color in zip(ranges, ("r", "g", "m")):
        sel = (i >= lo) & (i <= min(hi, len(s)))
        c = np.polyfit(np.log(i[sel]), np.log(s[sel]), 1)
        ax.loglog(i[sel], np.exp(np.polyval(c, np.log(i[sel]))), "-", color=color, lw=1,
                  label=f"PCs {lo}–{hi}: γ = {-c[0]:.2f}")
    ax.set_xlabel("PC rank $i$")
    ax.set_ylabel("$\\sigma_i^2$")
    ax.set_title("PCA spectrum of the SGD weight fluctuations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _fmt(x, digits=3):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def write_results(out: Path, table: pd.DataFrame, scale: Scale, quick: bool, command: str, wall: float) -> None:
    """``results.md``: the published numbers beside the obtained ones, with a plain verdict per row and the
    reasons where they differ."""
    base = table.iloc[0]
    (g_lo, g_hi) = [f"gamma_{lo}_{hi}" for lo, hi in scale.gamma_ranges[:2]]
    (r_lo, r_hi) = [f"{lo}–{hi}" for lo, hi in scale.gamma_ranges[:2]]
    psis = table["psi"]
    n90 = int(base["n90"])
    n90_rest = int(base["n90_without_pc1"])
    yes = lambda ok: "yes" if ok else "**no**"
    rows = [
        ("ψ > 0 (base model, α = 0.1, B = 50)", "> 0",
         f"ψ = {_fmt(base['psi'])} (R² {_fmt(base['r2'], 2)}, {int(base['n_pcs'])} PCs, "
         f"{int(base['n_censored'])} censored sides)", yes(base["psi"] > 0)),
        ("size of ψ for MNIST", "≈ 4 (a secondary summary; not confirmed from the paper's text)",
         _fmt(base["psi"]), yes(3.0 <= base["psi"] <= 5.0)),
        ("ψ across the (α, B) sweep", "positive, robust to α and B",
         ", ".join(f"({r.lr:g}, {r.batch_size}): {_fmt(r.psi)}" for r in table.itertuples()),
         yes(bool((psis > 0).all())) + (f"; max/min {psis.max() / psis.min():.2f}" if (psis > 0).all() else "")),
        ("PCs carrying 90 % of the variance", "~35 of 2,500",
         f"{n90} with PC 1 (which holds {100 * base['pc1_fraction']:.1f} %), {n90_rest} without PC 1",
         f"{yes(n90 <= 60 and n90 >= 15)} with PC 1, {yes(15 <= n90_rest <= 60)} without"),
        ("σ_i² ∝ i^(−γ) for i ≳ 20", "γ ≈ 2–3",
         f"γ = {_fmt(base[g_lo])} over PCs {r_lo}, {_fmt(base[g_hi])} over PCs {r_hi}",
         f"{yes(1.8 <= base[g_lo] <= 3.2)} ({r_lo}), {yes(1.8 <= base[g_hi] <= 3.2)} ({r_hi})"),
    ]
    lines = [f"# Reproduction: inverse variance–flatness relation ({PAPER})", ""]
    if quick:
        lines += ["**Quick mode** (a smoke test at toy scale: 500 samples, 784→20→20→10, CE ≤ 0.1, 100 "
                  "snapshots, PCs 2–15). Its numbers are not a reproduction.", ""]
    lines += ["| quantity | published | obtained here | agrees |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "## All models", "", markdown_table(table), "",
              "Columns: `psi`, `r2`, `n_pcs` — the fit over the PCs below; `psi_2_50` — the same fit restricted "
              "to PCs 2–50; `gamma_a_b` — the spectrum exponent over PC ranks a–b; `n90` — PCs carrying 90 % "
              "of the variance; `train_s`, `analysis_s` — wall seconds on the shared 2-core machine.", "",
              "## Setup and deviations from the paper", ""]
    if quick:
        lines += ["* Quick mode: see above; the full run uses the setup below.", ""]
    lines += ["* Data: the 4,000-image offline MNIST subset `mnist5k` (1,000 test images), not the 60,000 of the "
              "paper; inputs in [0, 1].",
              "* Network and optimiser as in the paper (784→50→50→10 ReLU, no biases, cross-entropy, plain SGD "
              "α = 0.1, B = 50), trained with `benchmark.training.loop.train_model` until the full training "
              "cross-entropy is ≤ 1e-3 (the paper: accuracy > 0.99 and a very small loss, ≤ 1,000 epochs).",
              "* Snapshots: 3,200 SGD steps (40 epochs of this smaller training set) after the solution, so "
              "T ≥ N = 2,500 as with the paper's ~12,000; PCA by the exact N×N covariance (float64).",
              "* Flatness: full-training-set loss along ±p_i from the solution w₀ to e·L₀ (vectorised line "
              "scans, `measures.flatness.flatness_scan`); a side that does not cross within 10·‖w₀‖ would be "
              "censored and left out (the count is in the table).",
              "* Fit: PCs 2–50 and every 10th PC from 60 to 1,000; PC 1 (the drift) skipped.",
              "", "## Where it does not match, and why", ""]
    notes = []
    if base["pc1_fraction"] > 0.5:
        notes.append(f"PC 1 holds {100 * base['pc1_fraction']:.1f} % of the variance: at CE {scale.target_loss:g} the "
                     "loss is still slowly decreasing, so the weights drift along one direction during the "
                     f"{scale.steps} recorded steps "
                     f"(the paper skips PC 1 for this reason). Counted with PC 1, {n90} PC(s) carry 90 %; "
                     f"without it, {n90_rest} do (the paper: ~35).")
    if not 1.8 <= base[g_hi] <= 3.2:
        notes.append(f"The spectrum is not one power law: γ ≈ {_fmt(base[g_lo])} over PCs {r_lo} steepening to "
                     f"{_fmt(base[g_hi])} over {r_hi} (see `spectrum.png`); the paper does not state its fit "
                     "range. Possible reasons, not tested: 15× fewer training images (a gradient-noise "
                     "covariance of lower effective rank) and 3,200 instead of ~12,000 snapshots.")
    if math.isfinite(base["psi_2_50"]) and base["psi_2_50"] < 0.75 * base["psi"]:
        notes.append(f"ψ depends on the PCs in the fit: PCs 2–50 alone give {_fmt(base['psi_2_50'])}, the "
                     f"paper's sparse set up to PC 1,000 gives {_fmt(base['psi'])}; the relation is steeper "
                     "among the high PCs (see `sigma2_vs_flatness.png`).")
    if (psis > 0).all() and psis.max() / psis.min() > 1.1:
        notes.append(f"ψ is positive throughout the sweep but not constant: {_fmt(psis.min())}–{_fmt(psis.max())}, "
                     "rising with α/B here; one seed per setting, so the trend has no error bar.")
    lines += [f"* {n}" for n in notes] or ["* Every row agrees."]
    lines += ["", "## Figures", "",
              "* `sigma2_vs_flatness.png`: σ_i² against F_i (log–log) with the fits, all models.",
              "* `loss_profiles.png`: loss profiles along a few PCs of the base model (the paper's Fig. 1).",
              "* `spectrum.png`: σ_i² against the PC rank with the γ fits.",
              "", f"Made by `{command}` in {wall / 60:.1f} min (wall clock, 2 shared CPU cores, one torch "
              "thread).", ""]
    (out / "results.md").write_text("\n".join(lines))


def run(out_dir: Path, quick: bool = False) -> pd.DataFrame:
    """Train, analyse, plot and write ``results.md`` under ``out_dir``; returns one row per model."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = QUICK if quick else FULL
    data = make_data(DatasetHP(name="mnist5k", train_size=scale.train_size, test_size=1000))
    rows, results, base_ctx = [], {}, None
    for lr, bs in ((0.1, 50),) + scale.sweep:
        t0 = time.perf_counter()
        _, ctx, metrics = train_mlp(data, lr, bs, width=scale.width, target_loss=scale.target_loss,
                                     max_epochs=scale.max_epochs)
        t1 = time.perf_counter()
        r = analyse(ctx, scale)
        spec = spectrum_stats(r.pca.spectrum.numpy(), scale.gamma_ranges)
        lead = r.pcs <= 50
        fit_lead = fl.power_law_fit(r.variance[lead], r.flatness[lead])
        rows.append({"lr": lr, "batch_size": bs, "epochs": metrics["epochs"], "train_loss": metrics["train_loss"],
                     "test_error": metrics["test_error"], "psi": r.fit.psi, "r2": r.fit.r2, "n_pcs": r.fit.n,
                     "n_censored": r.n_censored, "psi_2_50": fit_lead.psi, **spec, "train_s": t1 - t0,
                     "analysis_s": time.perf_counter() - t1})
        results[f"α={lr:g}, B={bs}"] = r
        if base_ctx is None:
            base_ctx, base_r = ctx, r
    table = pd.DataFrame(rows)
    plot_sigma_vs_flatness(results, out / "sigma2_vs_flatness.png")
    profile_pcs = [2, 5, 10] if quick else [2, 5, 20, 100, 500]
    plot_loss_profiles(base_ctx, base_r, profile_pcs, out / "loss_profiles.png")
    plot_spectrum(base_r, scale.gamma_ranges, out / "spectrum.png")
    command = "genbench reproduce pnas" + (" --quick" if quick else "")
    write_results(out, table, scale, quick, command, time.perf_counter() - start)
    table.to_csv(out / "results.csv", index=False)
    return table

