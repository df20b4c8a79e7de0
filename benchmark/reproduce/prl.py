"""Reproduce "SGD introduces an effective landscape-dependent regularization favoring flat solutions"
(Yang, Tang & Tu, PRL 130, 237101, 2023; docs/measures/sgd-regularization.md) at CPU scale.

Two parts:

1. **Theory check** (:func:`valley_langevin`): anisotropic Langevin dynamics in a valley
   L(x, y) = ½ λ(x) y², temperature Δ across the valley and Δ/κ along it, must have the steady state
   P(x) ∝ λ(x)^(−κ/2) = F(x)^κ (F = 1/√λ) from which the effective-loss estimator of
   ``measures.sgd_regularization`` is derived; isotropic noise (κ = 1) gives P ∝ F.
2. **Networks**: the paper's MNIST MLP (784→50→50→10 ReLU, no biases) on the 4,000 offline digits of
   ``mnist5k``, plain SGD trained by ``benchmark.training.loop.train_model`` to a training cross-entropy of 0.01
   with α ∈ {0.05, 0.1, 0.2} at B = 50 and B ∈ {25, 100} at α = 0.1. For each solution: the top-20 Hessian
   eigenpairs (Lanczos, 40 iterations, full training set), the SGD noise along them
   Δ_n = (α/2B) v_nᵀ C v_n, the flat-direction noise Δ₀, the anisotropy κ_n = Δ_n/Δ₀, the noise–curvature
   exponent and the SGD term over the top directions, L_SGD = Σ_n ½(κ_n − 1) Δ_n ln(α λ_n / 2), ln λ measured
   from the edge of stability 2/α (``measures.sgd_regularization``; the measure ``sgd.log_penalty_topk`` is
   Σ_n L_SGD,n/Δ_n, the paper's normalisation).

    genbench reproduce prl [--out DIR] [--quick]
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from benchmark.report.format import markdown_table
from benchmark.reproduce.common import train_mlp
from benchmark.zoo.datasets import make_data
from benchmark.zoo.hparams import DatasetHP
from measures import sgd_regularization as sr

PAPER = "Yang, Tang & Tu, PRL 130, 237101 (2023)"


# --------------------------------------------------------------------------------------------- theory check
def valley_langevin(kappa: float, *, walkers: int = 2000, steps: int = 20000, dt: float = 0.02,
                    lam0: float = 50.0, a: float = 1.0, temperature: float = 1.0, bins: int = 32,
                    seed: int = 0) -> dict:
    """Simulate dx = −∂ₓL dt + √(2Δ/κ dt) ξ, dy = −∂_yL dt + √(2Δ dt) η for L = ½ λ(x) y²,
    λ(x) = λ₀ exp(a cos x) on the circle x ∈ [0, 2π), and fit log P(x) = c + s·log F(x), F = λ^(−1/2).
    Theory (adiabatic elimination of y, module docstring of measures.sgd_regularization): s = κ.

    y is advanced by the exact Ornstein–Uhlenbeck step at frozen λ, x by Euler; walkers start uniform in x
    with y in equilibrium; the first half of the run is discarded. λ₀ ≫ 1 keeps y fast compared with x.
    Returns the fitted exponent, its R², and the binned density and flatness for plotting."""
    rng = np.random.default_rng(seed)
    lam_of = lambda x: lam0 * np.exp(a * np.cos(x))
    x = rng.uniform(0, 2 * np.pi, walkers)
    y = rng.standard_normal(walkers) * np.sqrt(temperature / lam_of(x))
    counts = np.zeros(bins)
    sx = math.sqrt(2 * temperature / kappa * dt)
    for t in range(steps):
        lam = lam_of(x)
        decay = np.exp(-lam * dt)
        drift = 0.5 * a * np.sin(x) * lam * y * y  # −∂ₓL = −½ λ'(x) y², λ' = −a sin(x) λ
        y = y * decay + np.sqrt(temperature / lam * (1 - decay * decay)) * rng.standard_normal(walkers)
        x = np.mod(x + drift * dt + sx * rng.standard_normal(walkers), 2 * np.pi)
        if t >= steps // 2 and t % 5 == 0:
            counts += np.bincount((x * bins / (2 * np.pi)).astype(int).clip(0, bins - 1), minlength=bins)
    centers = (np.arange(bins) + 0.5) * 2 * np.pi / bins
    density = counts / counts.sum() * bins / (2 * np.pi)
    flat = lam_of(centers) ** -0.5
    ok = density > 0
    fit = scipy.stats.linregress(np.log(flat[ok]), np.log(density[ok]))
    return {"kappa": kappa, "exponent": float(fit.slope), "r2": float(fit.rvalue ** 2),
            "flatness": flat, "density": density}


# --------------------------------------------------------------------------------------------- networks
@dataclass(frozen=True)
class Scale:
    train_size: int
    width: int
    target_loss: float
    max_epochs: int
    settings: sr.SGDRegSettings
    grid: tuple[tuple[float, int], ...]  # (α, B)
    kappas: tuple[float, ...]  # valley-model anisotropies
    walkers: int
    steps: int


FULL = Scale(4000, 50, 0.01, 1000, sr.SGDRegSettings(k=20, iters=40, params="all", max_samples=None, chunk=256),
             ((0.05, 50), (0.1, 50), (0.2, 50), (0.1, 25), (0.1, 100)), (1.0, 2.0, 4.0), 2000, 20000)
QUICK = Scale(500, 20, 0.1, 40, sr.SGDRegSettings(k=6, iters=12, params="all", max_samples=None, chunk=256),
              ((0.1, 50), (0.2, 50)), (1.0, 4.0), 300, 3000)


def analyse(ctx, settings: sr.SGDRegSettings) -> sr.SGDRegResult:
    return sr.sgd_effective_regularization(ctx, settings)


def _monotone(values: list[float], keys: list[float]) -> float:
    """Spearman correlation of ``values`` with ``keys`` (NaN with fewer than 3 points)."""
    if len(values) < 3:
        return float(np.sign(np.corrcoef(keys, values)[0, 1])) if len(values) == 2 else math.nan
    return float(scipy.stats.spearmanr(keys, values).statistic)


def plot_noise_vs_curvature(results: dict[str, sr.SGDRegResult], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.4, 4.3))
    for (label, r), color in zip(results.items(), plt.cm.viridis(np.linspace(0, 0.9, len(results)))):
        pos = r.eigenvalues > 0
        ax.loglog(r.eigenvalues[pos], r.noise[pos], "o", ms=3.5, color=color,
                  label=f"{label}: β = {r.exponent:.2f}")
        lam = np.geomspace(r.eigenvalues[pos].min(), r.eigenvalues[pos].max(), 10)
        c = np.polyfit(np.log(r.eigenvalues[pos]), np.log(r.noise[pos]), 1)
        ax.loglog(lam, np.exp(np.polyval(c, np.log(lam))), "-", lw=1, color=color)
        ax.axhline(r.noise_flat, color=color, ls=":", lw=0.8)
    ax.set_xlabel("Hessian eigenvalue $\\lambda_n$")
    ax.set_ylabel("SGD noise $\\Delta_n=(\\alpha/2B)\\,v_n^T C v_n$")
    ax.set_title("Noise along Hessian eigenvectors (dotted: $\\Delta_0$)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_sweep(table: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    ratio = table["lr"] / table["batch_size"]
    for ax, col, label in zip(axes, ["effective_reg", "lambda_max", "sum_log_lambda"],
                              ["$L_{SGD}$", "$\\lambda_{max}$", "$\\sum_n \\ln\\lambda_n$ (top k)"]):
        for kind, marker in (("lr", "o"), ("batch", "s")):
            sel = table["sweep"].str.contains(kind)
            ax.plot(ratio[sel], table.loc[sel, col], marker, label=f"{kind} sweep")
        ax.set_xscale("log")
        ticks = sorted(set(ratio))
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("$\\alpha/B$")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_valley(fits: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for f, color in zip(fits, plt.cm.plasma(np.linspace(0, 0.8, len(fits)))):
        ax.loglog(f["flatness"], f["density"], "o", ms=3, color=color,
                  label=f"κ = {f['kappa']:g}: fitted exponent {f['exponent']:.2f}")
        ff = np.sort(f["flatness"])
        ax.loglog(ff, f["density"][np.argmin(f["flatness"])] * (ff / ff[0]) ** f["kappa"], "-", lw=1,
                  color=color)
    ax.set_xlabel("flatness $F(x)=\\lambda(x)^{-1/2}$")
    ax.set_ylabel("steady-state density $P(x)$")
    ax.set_title("Valley model: $P\\propto F^{\\kappa}$ (lines: theory)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _fmt(x, digits=3):
    return "—" if not math.isfinite(x) else f"{x:.{digits}g}"


def write_results(out: Path, table: pd.DataFrame, valley: list[dict], quick: bool, command: str,
                  wall: float) -> None:
    ratio = list(table["lr"] / table["batch_size"])
    rho_reg = _monotone(list(table["effective_reg"]), ratio)
    rho_flat = _monotone(list(table["lambda_max"]), ratio)
    rho_logdet = _monotone(list(table["sum_log_lambda"]), ratio)
    rho_test = _monotone(list(table["test_error"]), ratio)
    checks = [
        ("SGD noise is anisotropic: more noise along the sharp directions (κ > 1)", "κ ≫ 1",
         f"⟨κ_n⟩ over the top {int(table['k'].iloc[0])} = {_fmt(table['anisotropy'].min())}–"
         f"{_fmt(table['anisotropy'].max())}; the top-k directions (of {int(table['n_params'].iloc[0])}) carry "
         f"{_fmt(100 * table['top_k_fraction'].min(), 2)}–{_fmt(100 * table['top_k_fraction'].max(), 2)} % of tr C",
         bool((table["anisotropy"] > 1).all())),
        ("Noise grows with curvature (log Δ_n vs log λ_n)", "positive (landscape-dependent noise)",
         f"β = {_fmt(table['beta'].min())}–{_fmt(table['beta'].max())} (R² {_fmt(table['beta_r2'].min(), 2)}–"
         f"{_fmt(table['beta_r2'].max(), 2)})", bool((table["beta"] > 0).all())),
        ("The SGD term grows with α and with the batch-to-batch gradient variance", "yes",
         "by construction on a given landscape (Δ_n = (α/2B)·v_nᵀCv_n); across the solutions SGD reaches, "
         f"Spearman ρ(L_SGD, α/B) = {_fmt(rho_reg, 2)}", None),
        ("More SGD noise (larger α/B) selects flatter minima", "yes",
         f"Spearman ρ(λ_max, α/B) = {_fmt(rho_flat, 2)}, ρ(Σ_n ln λ_n, α/B) = {_fmt(rho_logdet, 2)}",
         bool(rho_flat < 0 and rho_logdet < 0) if math.isfinite(rho_flat) and math.isfinite(rho_logdet) else None),
        ("Steady state in a valley P ∝ F^κ (the theory behind L_SGD)", "exponent = κ",
         ", ".join(f"κ = {v['kappa']:g}: {v['exponent']:.2f}" for v in valley),
         bool(all(abs(v["exponent"] - v["kappa"]) < 0.15 * v["kappa"] for v in valley))),
        ("Too much noise stops convergence", "yes", "not tested", None),
    ]
    yes = lambda ok: "—" if ok is None else ("yes" if ok else "**no**")
    lines = [f"# Reproduction: SGD as an effective landscape-dependent regularization ({PAPER})", ""]
    if quick:
        lines += ["**Quick mode** (a smoke test: 500 samples, 784→20→20→10, CE ≤ 0.1, two models, a short "
                  "valley simulation). Its numbers are not a reproduction.", ""]
    lines += ["The paper's claims are qualitative; the table lists each with what this run measured.", "",
              "| claim | published | obtained here | agrees |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {yes(d)} |" for a, b, c, d in checks]
    lines += ["", f"Test error against α/B (not a claim of the paper, for context): Spearman ρ = {_fmt(rho_test, 2)}.",
              "", "## All models", "", markdown_table(table.drop(columns=["sweep"])), "",
              "## Setup, estimator and deviations from the paper", "",
              "* Data and network: the 4,000-image offline MNIST subset `mnist5k`, 784→50→50→10 ReLU without "
              "biases, cross-entropy, plain SGD, trained with `benchmark.training.loop.train_model` to a training "
              "cross-entropy of 0.01 (equal fit across the sweep).",
              "* Hessian: top-20 eigenpairs of the full training loss by Lanczos (40 iterations, full "
              f"reorthogonalisation) on Hessian-vector products; all {int(table['n_params'].iloc[0]):,} "
              "parameters.",
              "* Noise: per-sample gradients by `torch.func.vmap(grad)` over all 4,000 samples, projected on the "
              "eigenvectors (C is never formed); Δ_n = (α/2B) v_nᵀ C v_n; Δ₀ = the mean of (α/2B) vᵀCv over "
              "the directions orthogonal to the top 20, (α/2B)(tr C − Σ_n v_nᵀCv_n)/(N − 20).",
              "* L_SGD = Σ_n ½(κ_n − 1) Δ_n ln(αλ_n/2) over the top directions, derived in "
              "`measures/sgd_regularization.py` from the "
              "Fokker–Planck steady state P ∝ Π_n F_n^{κ_n}; the valley simulation checks that steady state "
              "(λ(x) = 50·exp(cos x), Δ = 1, exact OU steps across the valley).",
              "* The paper's own network experiments are not rerun at their scale; one seed per setting.",
              "", "## Where it does not match, and why", ""]
    misses = [c for c in checks if c[3] is False]
    lines += [f"* {c[0]}: {c[2]}." for c in misses] or ["* Every tested claim agrees in sign."]
    if math.isfinite(rho_reg) and rho_reg < 0:
        lines += ["* L_SGD evaluated at each model's own solution *falls* as α/B grows (and turns negative once "
                  "most λ_n < 1): the noisier runs end in flatter minima, where both ln λ_n and the gradient "
                  "noise v_nᵀCv_n are smaller, and this outweighs the factor α/B. The paper's statement is about "
                  "the size of the term on a fixed "
                  "landscape (∝ α/B by construction), which these numbers do not contradict: SGD with more noise "
                  "ends where its own effective penalty is lower."]
    lines += ["* Caveats: Δ₀ scales like 1/N, so κ grows with the parameter count; one seed per setting.",
              "", "## Figures", "",
              "* `noise_vs_curvature.png`: Δ_n against λ_n (log–log), all models, with Δ₀ dotted.",
              "* `sweep.png`: L_SGD, λ_max and Σ ln λ_n against α/B.",
              "* `valley.png`: the valley model's P(x) against F(x) with the theory P ∝ F^κ.",
              "", f"Made by `{command}` in {wall / 60:.1f} min (wall clock, 2 shared CPU cores, one torch "
              "thread).", ""]
    (out / "results.md").write_text("\n".join(lines))


def run(out_dir: Path, quick: bool = False) -> pd.DataFrame:
    """Train, analyse, plot and write ``results.md`` under ``out_dir``; returns one row per model."""
    out = Path(out_dir)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    scale = QUICK if quick else FULL
    valley = [valley_langevin(k, walkers=scale.walkers, steps=scale.steps, seed=i)
              for i, k in enumerate(scale.kappas)]
    data = make_data(DatasetHP(name="mnist5k", train_size=scale.train_size, test_size=1000))
    rows, results = [], {}
    for lr, bs in scale.grid:
        t0 = time.perf_counter()
        _, ctx, metrics = train_mlp(data, lr, bs, width=scale.width, target_loss=scale.target_loss,
                                    max_epochs=scale.max_epochs)
        t1 = time.perf_counter()
        r = analyse(ctx, scale.settings)
        pos = r.eigenvalues > 0
        sweep = ",".join(s for s, ok in (("lr", bs == 50), ("batch", lr == 0.1)) if ok)
        rows.append({"sweep": sweep, "lr": lr, "batch_size": bs, "epochs": metrics["epochs"],
                     "train_loss": metrics["train_loss"], "test_error": metrics["test_error"],
                     "lambda_max": float(r.eigenvalues[0]), "sum_log_lambda": float(np.log(r.eigenvalues[pos]).sum()),
                     "noise_trace": r.noise_trace, "delta_1": float(r.noise[0]), "delta_flat": r.noise_flat,
                     "anisotropy": r.anisotropy, "kappa_1": float(r.kappa[0]),
                     "top_k_fraction": float(r.noise.sum() / r.noise_trace), "beta": r.exponent,
                     "beta_r2": r.exponent_r2, "effective_reg": r.effective_reg,
                     "effective_reg_scaled": r.effective_reg_scaled, "k": len(r.eigenvalues),
                     "n_params": r.n_params, "train_s": t1 - t0, "analysis_s": time.perf_counter() - t1})
        results[f"α={lr:g}, B={bs}"] = r
    table = pd.DataFrame(rows)
    plot_noise_vs_curvature(results, out / "noise_vs_curvature.png")
    plot_sweep(table, out / "sweep.png")
    plot_valley(valley, out / "valley.png")
    command = "genbench reproduce prl" + (" --quick" if quick else "")
    write_results(out, table, valley, quick, command, time.perf_counter() - start)
    table.to_csv(out / "results.csv", index=False)
    return table

