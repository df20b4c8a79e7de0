"""Reproduce the activity–weight duality analysis (Feng, Zhang & Tu, Nat. Mach. Intell. 5, 908–918, 2023;
docs/measures/duality.md) with the authors' protocol.

The protocol (``conf/reproduce/nmi.yaml``) follows the authors' code: a 784→30→30→10 ReLU MLP without
biases trained by plain SGD from α = 0.1, B = 25 until the cross-entropy on the correctly labelled
training samples is below 1e-3 and their accuracy above 0.99; one-at-a-time sweeps of α, B, a norm penalty
β‖θ‖ (first 200 epochs) and the fraction ρ of mislabeled samples (the clean count held fixed); several
seeds per setting. For each model the 30×30 hidden layer is analysed: every test image is paired with its
nearest same-class correctly labelled training image, the pair's input change becomes a change of that
layer's weights (the duality), and the loss change is decomposed over the eigenvectors of the layer's
Hessian on the correctly labelled training samples. The gap is Σ_n (μ_g,n μ_w,n + c_n σ_g,n σ_w,n); the
*sharpness* ‖σ_g‖ and the *size* ‖σ_w‖ are its two factors. This analysis reads the test set: it is an
oracle study of the paper's claims, not a generalization measure.

    genbench reproduce nmi [--full] [--quick] [--out DIR] [key=value ...]
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.measuring.context import Trained
from benchmark.report.format import markdown_table
from benchmark.reproduce.common import (
    IMPLEMENTATION_CHECKS,
    begin,
    command_line,
    load_protocol,
    mlp_hparams,
    pm,
    pyplot,
    results_head,
    results_tail,
    save_figure,
    sign_of,
    spread,
    tau_text,
    trend,
    verdict_table,
)
from benchmark.runtime import parallel
from benchmark.training.loop import evaluate, train_model
from benchmark.zoo.datasets import DEFAULT_ROOT, cached_data
from benchmark.zoo.hparams import DatasetHP, HParams
from measures import duality as D

PAPER = "Feng, Zhang & Tu, Nat. Mach. Intell. 5, 908–918 (2023)"
AUTHORS_CODE = "YuFengDuke/A-W-Duality-Project (model_config.py, train_model.py, eval_model.py)"

# axis: (label, the hyperparameter it sets, the direction of the gap as the axis grows)
AXES = {"lr": ("learning rate α", "optimizer.lr", -1),
        "batch_size": ("batch size B", "train.batch_size", +1),
        "beta": ("norm penalty β", None, -1),
        "label_noise": ("label noise ρ", "dataset.label_noise", +1),
        "train_size": ("training-set size n", "dataset.train_size", -1),
        "init_scale": ("initial-weight scale s", "model.init_scale", +1),
        "dropout": ("dropout d", "model.dropout", -1)}
# the values the authors' code sweeps (model_config.py; training images as 400 … 3,200 per class)
AUTHORS = {"lr": (0.005, 0.01, 0.02, 0.05, 0.1), "batch_size": (25, 100, 200, 400), "beta": (0.0, 0.005, 0.01, 0.02),
           "label_noise": (0.0, 0.091, 0.13, 0.167, 0.2), "train_size": (4000, 8000, 16000, 32000),
           "init_scale": (4.0, 5.0, 6.0, 7.0), "dropout": (0.0, 0.05, 0.1, 0.2, 0.3)}
FACTORS = {"sharpness": "sharpness ‖σ_g‖", "size": "size ‖σ_w‖"}


@dataclass(frozen=True)
class Protocol:
    """One block of ``conf/reproduce/nmi.yaml`` (see the comments there)."""
    dataset: str
    train_size: int
    noise_train_size: int
    test_size: int
    width: int
    lr: float
    batch_size: int
    penalty_epochs: int
    stop_loss: float
    stop_accuracy: float
    max_epochs: int
    sweeps: dict
    seeds: tuple
    bootstrap: int
    workers: int

    def __post_init__(self):
        unknown = sorted(set(self.sweeps) - set(AXES))
        if unknown:
            raise ValueError(f"unknown sweep {unknown[0]!r}; valid: {', '.join(AXES)}")
        if not self.seeds:
            raise ValueError("seeds is empty")
        if not self.axes:
            raise ValueError("every sweep is empty")

    @property
    def axes(self) -> list[str]:
        """The swept axes, in the order of ``AXES``."""
        return [a for a in AXES if self.sweeps.get(a)]

    def setting(self, axis: str, value: float) -> tuple[HParams, float]:
        """(hyperparameters at seed 0, β) of the base setting with ``axis`` set to ``value``."""
        train_size = self.noise_train_size if axis == "label_noise" else self.train_size
        hp = mlp_hparams(DatasetHP(name=self.dataset, train_size=train_size, test_size=self.test_size),
                         self.lr, self.batch_size, width=self.width, target_loss=self.stop_loss,
                         max_epochs=self.max_epochs)
        key = AXES[axis][1]
        if key is not None:
            hp = hp.replace(**{key: int(value) if key in ("train.batch_size", "dataset.train_size") else value})
        return hp, float(value) if axis == "beta" else 0.0


def protocol(profile: str = "default", overrides=()) -> Protocol:
    return load_protocol("nmi", Protocol, profile, overrides)


# --------------------------------------------------------------------------------------------- training
def norm_penalty(beta: float, epochs: int):
    """The authors' regulariser: β‖θ‖ (the Euclidean norm of all the weights, not its square) added to the
    loss in the first ``epochs`` epochs."""
    def penalty(model: torch.nn.Module, epoch: int):
        if epoch > epochs:
            return 0.0
        return beta * torch.sqrt(sum((w * w).sum() for w in model.parameters()))
    return penalty


def train(p: Protocol, hp: HParams, beta: float):
    """Train one model to the authors' stop; returns (Trained, data, metrics).

    The stop reads only the correctly labelled samples: their cross-entropy below ``stop_loss`` and their
    accuracy above ``stop_accuracy``. (The authors average the accuracy over the last 9 epochs; a
    cross-entropy below 1e-3 already means an accuracy above 0.998.)"""
    data = cached_data(hp.dataset, DEFAULT_ROOT, False)
    clean = ~data.mislabeled
    xc, yc = data.x_train[clean], data.y_train[clean]

    def until(model):
        loss, err = evaluate(model, xc, yc)
        return loss < p.stop_loss and 1 - err > p.stop_accuracy

    result = train_model(hp, data, penalty=norm_penalty(beta, p.penalty_epochs) if beta > 0 else None,
                         until=until)
    return Trained.from_result(result, data), data, result.metrics


# --------------------------------------------------------------------------------------------- analysis
def analyse(trained: Trained, data, seed: int) -> tuple[dict, dict]:
    """The decomposition of one model (oracle: it reads the test set). Returns the row and the
    per-direction arrays ordered by σ_g, largest first (the authors' order)."""
    ctx = trained.context(seed=seed, oracle=True)  # carries the mislabeled mask: clean samples only
    table = D.duality_table(ctx, "test")
    t = table.attrs
    clean = ~data.mislabeled
    train_loss, train_err = evaluate(trained.model, data.x_train[clean], data.y_train[clean])
    test_loss, test_err = evaluate(trained.model, data.x_test, data.y_test)
    order = np.argsort(-table["sigma_g"].to_numpy(), kind="stable")
    layer = [w for w in trained.model.parameters() if w.dim() > 1][-2]  # the hidden-to-hidden matrix
    row = {"train_loss_clean": train_loss, "train_error_clean": train_err, "test_loss": test_loss,
           "test_error": test_err, "gap": test_loss - train_loss, "gap_error": test_err - train_err,
           "mean_dl": t["mean_dl"], "mu_term": t["mu_term"], "cov_term": t["cov_term"],
           "sharpness": t["sharpness"], "size": math.sqrt(t["size"]),
           "half_lambda_sigma_w2": 0.5 * float((table["eigenvalue"] * table["sigma_w"] ** 2).sum()),
           "identity_error": abs(float((table["mu_term"] + table["cov_term"]).sum()) - t["mean_dl"]),
           "directions": len(table), "complete": bool(t["complete"]), "n_pairs": t["n_pairs"],
           "dropped": t["dropped"], "n_clean": int(clean.sum()), "n_train": len(data.y_train),
           "layer_norm": float(layer.detach().norm()),
           "top10_share": float(table["cov_term"].to_numpy()[order][:10].sum() / t["cov_term"])}
    arrays = {c: table[c].to_numpy()[order] for c in ("sigma_g", "sigma_w", "cov_term", "eigenvalue")}
    return row, arrays


def run_one(task: tuple, p: Protocol) -> tuple:
    """Train and analyse one (setting, seed). Returns ``(1, row, arrays)`` for ``runtime.parallel``."""
    torch.set_num_threads(1)
    key, hp, beta = task
    t0 = time.perf_counter()
    trained, data, metrics = train(p, hp, beta)
    t1 = time.perf_counter()
    row, arrays = analyse(trained, data, hp.seed)
    row = {"key": key, "lr": hp.optimizer.lr, "batch_size": hp.train.batch_size, "beta": beta,
           "label_noise": hp.dataset.label_noise, "train_size": hp.dataset.train_size,
           "init_scale": hp.model.init_scale, "dropout": hp.model.dropout, "seed": hp.seed,
           "epochs": metrics["epochs"], "converged": metrics["converged"], **row,
           "train_s": t1 - t0, "analysis_s": time.perf_counter() - t1}
    return 1, row, arrays


def setting_key(hp: HParams, beta: float) -> str:
    return f"{hp.model_id}/{beta:g}"


def tasks(p: Protocol) -> list[tuple]:
    """The distinct runs ``(setting key, hyperparameters, β)``: the base setting is shared by every sweep
    that passes through it."""
    runs = {}
    for axis in p.axes:
        for value in p.sweeps[axis]:
            hp, beta = p.setting(axis, value)
            key = setting_key(hp, beta)
            for seed in p.seeds:
                runs.setdefault((key, seed), (key, hp.replace(seed=int(seed)), beta))
    return list(runs.values())


# --------------------------------------------------------------------------------------------- statistics
HP_COLUMNS = tuple(AXES)


def base_values(p: Protocol, axis: str) -> dict:
    """The hyperparameter columns of the base setting, as the sweep of ``axis`` starts from it."""
    return {"lr": p.lr, "batch_size": p.batch_size, "beta": 0.0, "label_noise": 0.0,
            "train_size": p.noise_train_size if axis == "label_noise" else p.train_size,
            "init_scale": 1.0, "dropout": 0.0}


def sweep(table: pd.DataFrame, axis: str, p: Protocol, values=None) -> pd.DataFrame:
    """The runs of one sweep: every other setting at its base value, ``axis`` at one of ``values`` (the
    protocol's by default; ``"all"`` keeps every value found). Its axis value is in ``x``."""
    keep = np.ones(len(table), dtype=bool)
    for col, v in base_values(p, axis).items():
        if col != axis:
            keep &= np.isclose(table[col].to_numpy(float), float(v))
    values = p.sweeps[axis] if values is None else values
    if values != "all":
        keep &= np.isin(table[axis].to_numpy(float), np.asarray(values, dtype=float))
    return table[keep].assign(x=table.loc[keep, axis].astype(float)).reset_index(drop=True)


def run_key(row) -> tuple:
    return tuple(float(row[c]) for c in HP_COLUMNS) + (int(row["seed"]),)


def verdicts(table: pd.DataFrame, p: Protocol) -> list[tuple[str, str, str, str, str]]:
    """(claim, source, published, obtained, verdict) rows; every verdict is an interval that could fall
    on the other side."""
    yes = lambda ok: "yes" if ok else "**no**"
    rows = []
    for axis in p.axes:
        label, _, expected = AXES[axis]
        sub = sweep(table, axis, p)
        gap = trend(sub, "gap", p.bootstrap, f"nmi/{axis}/gap")
        factors = {f: trend(sub, f, p.bootstrap, f"nmi/{axis}/{f}") for f in FACTORS}
        direction = "grows" if expected > 0 else "falls"
        found = sign_of(gap)
        rows.append((f"the gap {direction} with the {label}", "secondary summary of the paper's figures",
                     f"τ {'> 0' if expected > 0 else '< 0'}", f"{tau_text(gap)} over {len(sub)} runs",
                     yes(found == expected) + ("" if found else " (no trend resolved)")))
        carriers = [f for f, t in factors.items() if found and sign_of(t) == found]
        against = [f for f, t in factors.items() if found and sign_of(t) == -found]
        text = "; ".join(f"{FACTORS[f]} {tau_text(t)}" for f, t in factors.items())
        if found:
            text += (f" → carried by {' and '.join(FACTORS[f] for f in carriers) or 'neither'}"
                     + (f"; {' and '.join(FACTORS[f] for f in against)} moves against the gap" if against else ""))
        rows.append((f"the gap's change with the {label} is carried by the sharpness, the size or both", "paper",
                     "one or both factors move with the gap", text,
                     yes(bool(carriers)) if found else "— (the gap has no trend to carry)"))
    overall = {f: trend(table, "gap", p.bootstrap, f"nmi/all/{f}", x=f, by=None) for f in FACTORS}
    rows.append(("flatter and smaller solutions generalize better: over all runs the gap rises with both factors",
                 "paper (abstract)", "τ(factor, gap) > 0 for both",
                 "; ".join(f"{FACTORS[f]} {tau_text(t)}" for f, t in overall.items()),
                 yes(all(t["lo"] > 0 for t in overall.values()))))
    share = spread((table["mu_term"].abs() / table["mean_dl"].abs()).tolist())
    rows.append(("the gap is Σ_n c_n σ_g,n σ_w,n: the mean terms Σ μ_g μ_w are negligible", "paper",
                 "Δl ≈ Σ c σ_g σ_w", f"Σ μ_g μ_w / Δl in absolute value: {pm(share, 2).replace(' seeds', ' runs')}",
                 yes(share["hi"] < 0.05)))
    ratio = spread((table["half_lambda_sigma_w2"] / table["cov_term"]).tolist())
    rows.append(("near the minimum g ≈ ½ H ΔW, so direction n contributes ½ λ_n σ_w,n²", "paper",
                 "½ Σ λ σ_w² ≈ Σ c σ_g σ_w", f"ratio {pm(ratio, 2).replace(' seeds', ' runs')}",
                 yes(ratio["lo"] >= 0.5 and ratio["hi"] <= 2)))
    return rows


# --------------------------------------------------------------------------------------------- figures
def plot_factors(table: pd.DataFrame, p: Protocol, path: Path) -> None:
    """The gap and its two factors along every sweep: mean and 95 % t interval over the seeds."""
    plt = pyplot()
    rows = [("gap", "test − train loss (clean)"), ("sharpness", FACTORS["sharpness"]), ("size", FACTORS["size"])]
    fig, ax = plt.subplots(len(rows), len(p.axes), figsize=(3.6 * len(p.axes), 8.4), squeeze=False)
    for j, axis in enumerate(p.axes):
        sub = sweep(table, axis, p)
        for i, (col, ylabel) in enumerate(rows):
            stats = [spread(g[col].tolist()) for _, g in sub.groupby("x", sort=True)]
            x = sorted(sub.x.unique())
            mean = np.array([s["mean"] for s in stats])
            half = np.array([s["hi"] - s["mean"] if s["n"] > 1 else 0.0 for s in stats])
            ax[i, j].errorbar(x, mean, yerr=half, marker="o", ms=4, capsize=3)
            ax[i, j].set_ylabel(ylabel if j == 0 else "")
            if axis in ("lr", "batch_size", "train_size"):
                ax[i, j].set_xscale("log")
        ax[0, j].set_title(f"sweep of the {AXES[axis][0]}", fontsize=9)
        ax[-1, j].set_xlabel(AXES[axis][0])
    fig.suptitle(f"mean and 95 % interval over {len(p.seeds)} seeds", fontsize=9)
    save_figure(fig, path)


def plot_spectra(arrays: dict, table: pd.DataFrame, p: Protocol, path: Path) -> None:
    """σ_g,n, σ_w,n and the cumulative share of Σ c σ_g σ_w over the directions ordered by σ_g, for the two
    ends of every sweep (first seed)."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    for axis, color in zip(p.axes, plt.cm.tab10(np.arange(10))):
        values = p.sweeps[axis]
        for v, ls in ((min(values), "-"), (max(values), "--")):
            rows = sweep(table, axis, p, [v])
            a = arrays[run_key(rows[rows.seed == p.seeds[0]].iloc[0])]
            n = np.arange(1, len(a["sigma_g"]) + 1)
            label = f"{AXES[axis][0]} = {v:g}"
            ax[0].loglog(n, a["sigma_g"], ls, color=color, lw=1, label=label)
            ax[1].loglog(n, a["sigma_w"], ls, color=color, lw=1, label=label)
            ax[2].semilogx(n, np.cumsum(a["cov_term"]) / a["cov_term"].sum(), ls, color=color, lw=1, label=label)
    ax[0].set(xlabel="direction n (ordered by σ_g)", ylabel="σ_g,n", title="sharpness factor")
    ax[1].set(xlabel="direction n (ordered by σ_g)", ylabel="σ_w,n", title="size factor (dual weights)")
    ax[2].set(xlabel="direction n (ordered by σ_g)", ylabel="cumulative share of Σ c σ_g σ_w",
              title="where the gap sits")
    ax[2].legend(fontsize=6)
    save_figure(fig, path)


def plot_decomposition(table: pd.DataFrame, path: Path) -> None:
    """The decomposition's terms against the measured gap, every run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    ax.scatter(table["gap"], table["cov_term"], s=12, label="Σ c σ_g σ_w")
    ax.scatter(table["gap"], table["half_lambda_sigma_w2"], s=12, marker="^", label="½ Σ λ σ_w²")
    lim = [0, float(max(table["gap"].max(), table["cov_term"].max()))]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set(xlabel="measured gap: test − train loss (clean samples)", ylabel="duality term",
           title="decomposition against the gap (oracle)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------- results.md
def _deviations(p: Protocol, table: pd.DataFrame, extended: pd.DataFrame | None) -> list[str]:
    out = []
    if p.dataset != "mnist":
        out.append(f"**Data:** `{p.dataset}` (the 5,000 offline MNIST digits), not the 60,000 of torchvision's "
                   f"MNIST that the authors draw from; {p.train_size:,} training images (the authors: 4,000).")
    if "label_noise" in p.axes and p.noise_train_size != p.train_size:
        effect = ""
        a = spread(sweep(table, "label_noise", p, [0.0])["gap"])
        b = spread(sweep(table, "beta", p, [0.0])["gap"])
        if a["n"] and b["n"]:
            effect = (f" Measured at ρ = 0: the gap is {pm(a)} with {p.noise_train_size:,} images against "
                      f"{pm(b)} with {p.train_size:,}.")
        out.append(f"**Label-noise sweep:** {p.noise_train_size:,} clean images (plus the mislabeled ones), "
                   f"not {p.train_size:,}: {p.train_size:,}/(1 − 0.2) would need more images than `{p.dataset}` "
                   f"holds.{effect}")
    left = {a: [v for v in AUTHORS[a] if float(v) not in {float(x) for x in p.sweeps.get(a, ())}] for a in AUTHORS}
    short = {a: v for a, v in left.items() if v and p.sweeps.get(a)}
    if short:
        text = "; ".join(f"{AXES[a][0]} {', '.join(f'{x:g}' for x in v)}" for a, v in short.items())
        effect = ""
        if extended is not None:
            parts = []
            for a in short:
                ext = sweep(extended, a, p, "all")
                if ext.x.nunique() > len(p.sweeps[a]):
                    t, d = (trend(ext, "gap", p.bootstrap, f"nmi/extended/{a}"),
                            trend(sweep(table, a, p), "gap", p.bootstrap, f"nmi/{a}/gap"))
                    parts.append(f"{AXES[a][0]} ({', '.join(f'{x:g}' for x in sorted(ext.x.unique()))}): "
                                 f"gap {tau_text(t)}, against {tau_text(d)} here")
            if parts:
                effect = (" Measured in `extended/`, the same protocol with those values added (its results.md has "
                          "the command and every verdict): " + "; ".join(parts) + ".")
        out.append(f"**Sweep values left out to fit the time budget** (their runs take the longest): {text}. "
                   f"`--full` runs them.{effect}")
    unswept = [AXES[a][0] for a in AUTHORS if not p.sweeps.get(a)]
    if unswept:
        out.append(f"**Sweeps not run here:** {', '.join(unswept)} (the authors' code sweeps them; `--full` runs "
                   "them).")
    if len(p.seeds) < 10:
        out.append(f"**Repeats:** {len(p.seeds)} seeds per setting, not the authors' 10.")
    out.append("**Stop:** the accuracy condition is tested on the current epoch; the authors average it over "
               "the last 9 epochs. With the cross-entropy below 1e-3 it holds either way (accuracy above 0.998).")
    unconverged = table[~table.converged.astype(bool)]
    if len(unconverged):
        groups = unconverged.groupby("key").size()
        out.append(f"**Not converged:** {len(unconverged)} of {len(table)} runs reached {p.max_epochs} epochs "
                   f"before the stop (as in the authors' loop, they are analysed where they stopped): "
                   + ", ".join(f"{_describe(table[table.key == k].iloc[0], p)} ({n})" for k, n in groups.items()))
    return out


def _describe(row, p: Protocol) -> str:
    """The settings of a run that differ from the base, e.g. ``B = 400``."""
    base = base_values(p, "label_noise" if row.label_noise > 0 else "lr")
    parts = [f"{AXES[a][0].split()[-1]} = {row[a]:g}" for a in AXES if float(row[a]) != float(base[a])]
    return ", ".join(parts) or "the base setting"


def write_results(out: Path, table: pd.DataFrame, p: Protocol, profile: str, command: str, wall: float,
                  extended: pd.DataFrame | None = None) -> None:
    lines = results_head(f"activity–weight duality ({PAPER})", profile)
    lines += [f"Protocol `{profile}` of `conf/reproduce/nmi.yaml`, following the authors' code ({AUTHORS_CODE}). "
              "Everything here reads the test set: it is an oracle analysis of the paper's claims. Trend "
              f"intervals resample the seeds within each setting ({p.bootstrap:,} times); other intervals are "
              "95 % Student-t intervals over the runs; ± is one standard deviation.", "",
              "The sharpness is ‖σ_g‖ = (Σ_n σ_g,n²)^½ and the size ‖σ_w‖ = (Σ_n σ_w,n²)^½, both over the "
              "complete Hessian eigenbasis of the analysed layer.", ""] + verdict_table(verdicts(table, p))
    n = p.width * p.width
    noisy = table[table.label_noise > 0]
    lines += ["", *IMPLEMENTATION_CHECKS,
              f"* Σ_n (μ_g,n μ_w,n + c_n σ_g,n σ_w,n) equals the mean Δl of the pairs to "
              f"{table['identity_error'].max():.1e} over the complete basis of {n} directions "
              f"({int(table['complete'].sum())} of {len(table)} runs complete).",
              f"* {int(table['n_pairs'].min()):,} test images paired per run; pairs dropped for a dead anchor: "
              f"{int(table['dropped'].sum())}.",
              "* The pairs' mean Δl against the measured gap (the pairing is the paper's estimate of the gap, "
              f"not the gap itself): median relative difference "
              f"{float(((table['mean_dl'] - table['gap']).abs() / table['gap'].abs()).median()):.1e}."]
    if len(noisy):
        lines.append(f"* With label noise the Hessian, the anchors and the training loss use only the correctly "
                     f"labelled images: {int(noisy['n_clean'].min()):,} of {int(noisy['n_train'].min()):,}–"
                     f"{int(noisy['n_train'].max()):,}.")
    lines += ["", "## Remaining deviations from the authors' protocol", ""]
    lines += [f"* {d}" for d in _deviations(p, table, extended)]
    per = (table.groupby("key", sort=False)
           .agg(**{c: (c, "first") for c in ("lr", "batch_size", "beta", "label_noise", "train_size",
                                              "init_scale", "dropout")},
                runs=("seed", "size"), epochs=("epochs", "mean"), converged=("converged", "mean"),
                gap=("gap", "mean"), gap_sd=("gap", "std"), test_error=("test_error", "mean"),
                cov_term=("cov_term", "mean"), sharpness=("sharpness", "mean"), size=("size", "mean"),
                top10_share=("top10_share", "mean"))
           .reset_index(drop=True))
    per = per[[c for c in per.columns if c not in ("init_scale", "dropout", "train_size")
               or per[c].nunique() > 1]]
    lines += ["", "## Settings", "", "Means over the seeds (`gap_sd`: the standard deviation); `top10_share`: "
              "the share of Σ c σ_g σ_w in the 10 directions of largest σ_g.", "", markdown_table(per)]
    lines += results_tail({
        "factors_vs_hparams.png": "the gap, the sharpness and the size along every sweep.",
        "spectra.png": "σ_g,n, σ_w,n and the cumulative share of the gap over the directions ordered by σ_g, at "
                       "both ends of every sweep.",
        "decomposition_vs_gap.png": "Σ c σ_g σ_w and ½ Σ λ σ_w² against the measured gap."},
        command, wall, p.workers, "Every run is a row of `results.csv`.")
    (out / "results.md").write_text("\n".join(lines))


def run(out_dir: Path, profile: str = "default", overrides=()) -> pd.DataFrame:
    """Train every setting and seed, analyse, plot, and write ``results.md`` and ``results.csv``."""
    p, out, start = begin(protocol, profile, overrides, out_dir)
    todo = tasks(p)  # every setting is validated here, before anything trains
    for hp in dict.fromkeys(t[1].dataset for t in todo):  # a missing dataset or an impossible size fails here
        cached_data(hp, DEFAULT_ROOT, False)
    rows, arrays = [], {}
    for _, row, arr in parallel(functools.partial(run_one, p=p), todo, p.workers, "nmi", "run",
                                [1] * len(todo), True):
        rows.append(row)
        arrays[run_key(row)] = arr
    order = {(k, hp.seed): i for i, (k, hp, _) in enumerate(todo)}
    table = pd.DataFrame(sorted(rows, key=lambda r: order[(r["key"], r["seed"])]))
    table.to_csv(out / "results.csv", index=False)
    plot_factors(table, p, out / "factors_vs_hparams.png")
    plot_spectra(arrays, table, p, out / "spectra.png")
    plot_decomposition(table, out / "decomposition_vs_gap.png")
    command = command_line("nmi", profile, overrides)
    extended = pd.read_csv(out / "extended" / "results.csv") if (out / "extended" / "results.csv").is_file() else None
    write_results(out, table, p, profile, command, time.perf_counter() - start, extended)
    return table
