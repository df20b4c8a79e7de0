"""Reproduce the phases of learning dynamics with and without mislabeled data (Feng & Tu, Mach. Learn.: Sci.
Technol. 2, 043001, 2021; docs/measures/phases.md).

The protocol (``conf/reproduce/mlst.yaml``): a bias-free 784→30→30→10 ReLU MLP, plain SGD (α = 0.1, B = 25)
on MNIST, trained to a training cross-entropy of 0.01 with a fraction ρ of the training labels wrong (the
authors' recipe, the clean count fixed), several seeds per ρ. The trainer records the order parameters
(``measures.phases.order_parameters``) every epoch, and ``measures.phases.detect_phases`` places the phases
from those training-only signals. The test error, evaluated every epoch, is read only afterwards, to test
what the paper says happens to it in each phase: so no verdict holds by construction.

    genbench reproduce mlst [--full] [--quick] [--out DIR] [key=value ...]
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.measuring.probes import OrderParameters
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
    spread,
    verdict_table,
)
from benchmark.runtime import parallel
from benchmark.training.loop import train_model
from benchmark.zoo.datasets import DEFAULT_ROOT, cached_data
from benchmark.zoo.hparams import LABEL_NOISE_MODES, DatasetHP, HParams
from benchmark.zoo.models import build_model
from measures.phases import detect_phases, running_median
from measures.seeding import generator

PAPER = "Feng & Tu, Mach. Learn.: Sci. Technol. 2, 043001 (2021)"
PROBE = OrderParameters()  # the order parameters recorded every epoch, as in the zoo
PHASES = ("I", "II", "III", "IV")

COLORS = {"I": "#dbe9f6", "II": "#dff3df", "III": "#fbe3d0", "IV": "#eeeeee", "fast": "#dbe9f6",
          "exploration": "#eeeeee"}


@dataclass(frozen=True)
class Protocol:
    """One block of ``conf/reproduce/mlst.yaml`` (see the comments there)."""
    dataset: str
    train_size: int
    label_noise_mode: str
    test_size: int
    width: int
    lr: float
    batch_size: int
    stop_loss: float
    max_epochs: int
    rhos: tuple
    seeds: tuple
    tolerance: int
    workers: int

    def __post_init__(self):
        if self.label_noise_mode not in LABEL_NOISE_MODES:
            raise ValueError(f"label_noise_mode must be one of {', '.join(LABEL_NOISE_MODES)}, "
                             f"got {self.label_noise_mode!r}")
        if not self.seeds or not self.rhos:
            raise ValueError("seeds and rhos must not be empty")


def protocol(profile: str = "default", overrides=()) -> Protocol:
    return load_protocol("mlst", Protocol, profile, overrides)


def hparams(p: Protocol, rho: float, seed: int) -> HParams:
    ds = DatasetHP(name=p.dataset, train_size=p.train_size, test_size=p.test_size, label_noise=float(rho),
                   label_noise_mode=p.label_noise_mode)
    return mlp_hparams(ds, p.lr, p.batch_size, width=p.width, target_loss=p.stop_loss, max_epochs=p.max_epochs,
                       seed=int(seed))


def op_cost(hp: HParams, data, result, repeats: int = 5) -> float:
    """Seconds per ``order_parameters`` call on the trained model (as the trainer calls it each epoch)."""
    model = build_model(hp.model, data.in_shape, data.num_classes)
    model.load_state_dict(result.final_state)
    gen = generator(hp.seed, "timing")
    PROBE(model.train(), data, hp, gen)
    start = time.perf_counter()
    for _ in range(repeats):
        PROBE(model, data, hp, gen)
    return (time.perf_counter() - start) / repeats


def _shade(ax, phases) -> None:
    epochs = np.array(phases.epochs)
    for label in dict.fromkeys(phases.labels):
        sel = epochs[[lab == label for lab in phases.labels]]
        ax.axvspan(sel.min() - 0.5, sel.max() + 0.5, color=COLORS[label], zorder=0)
        ax.text((sel.min() + sel.max()) / 2, 1.0, label, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8)


def plot(runs: dict, out: Path) -> list[str]:
    plt = pyplot()
    files = []
    for rho, (hist, phases) in runs.items():
        e = hist["epoch"]
        noisy = "op.loss_mislabeled" in hist
        fig, ax = plt.subplots(4 if noisy else 2, 1, figsize=(8, 11 if noisy else 6), sharex=True)
        ax[0].plot(e, hist["test_error"], label="test error")
        ax[0].plot(e, hist["train_error"], label="training error (labels trained on)")
        ax[0].set(ylabel="error")
        fig.suptitle(f"MNIST, ρ = {rho}: phases from measures.phases.detect_phases")
        panels = [(ax[1], [("op.alignment", "alignment A"), ("op.amplitude_sq_corrected", "corrected amplitude² κ")],
                   "order parameter")]
        if noisy:
            ax[2].semilogy(e, hist["op.loss_correct"], label="loss, correct subset")
            ax[2].semilogy(e, hist["op.loss_mislabeled"], label="loss, mislabeled subset")
            ax[2].set(ylabel="mean cross-entropy")
            auc = ax[2].twinx()
            auc.plot(e, hist["op.loss_auc"], color="C2", lw=0.8, label="AUC of per-sample loss (right axis)")
            auc.set_ylabel("AUC mislabeled vs correct")
            auc.legend(fontsize=8, loc="lower left")
            panels.append((ax[3], [("op.cos_correct_mislabeled", "cos(g_c, g_m)"),
                                   ("op.norm_ratio_mislabeled", "‖g_m‖/‖g_c‖ (right axis)")], "cosine"))
        for a, series, ylabel in panels:
            a.plot(e, hist[series[0][0]], label=series[0][1])
            if series[1][0] == "op.norm_ratio_mislabeled":
                twin = a.twinx()
                twin.semilogy(e, hist[series[1][0]], color="C3", lw=0.8, label=series[1][1])
                twin.set_ylabel("norm ratio")
                twin.legend(fontsize=8, loc="lower right")
                a.axhline(0, color="k", lw=0.5)
            else:
                a.plot(e, hist[series[1][0]], label=series[1][1])
            a.set(ylabel=ylabel)
        for a in ax:
            _shade(a, phases)
            a.legend(fontsize=8, loc="upper right")
        ax[-1].set_xlabel("epoch")
        name = f"phases_rho{rho:g}.png"
        save_figure(fig, out / name, dpi=110)
        files.append(name)
    return files


def summarise(rho: float, seed: int, hist: pd.DataFrame, phases) -> list[dict]:
    """One row per detected phase: its epochs, the test error at its start and end and its mean, and the
    means of the order parameters over its epochs."""
    rows = []
    labels = np.array(phases.labels)
    t_min = test_min_epoch(hist)
    peak = int(hist["op.loss_auc"].to_numpy().argmax()) if "op.loss_auc" in hist else None
    for ph in dict.fromkeys(phases.labels):
        sub = hist[labels == ph]
        row = {"rho": rho, "seed": seed, "phase": ph, "first_epoch": int(sub["epoch"].min()),
               "last_epoch": int(sub["epoch"].max()), "epochs": len(sub),
               "test_error_start": float(sub["test_error"].iloc[0]),
               "test_error_end": float(sub["test_error"].iloc[-1]),
               "test_error_mean": float(sub["test_error"].mean()), "alignment": float(sub["op.alignment"].mean()),
               "amplitude_sq_corrected": float(sub["op.amplitude_sq_corrected"].mean()),
               "test_min_epoch": t_min, "run_epochs": len(hist)}
        if peak is not None:
            row["auc_peak_phase"] = labels[peak]
        if "op.loss_mislabeled" in hist:
            row.update({k: float(sub[f"op.{k}"].mean()) for k in (
                "loss_correct", "loss_mislabeled", "loss_auc", "cos_correct_mislabeled", "norm_ratio_mislabeled")})
        rows.append(row)
    return rows


def test_min_epoch(hist: pd.DataFrame) -> int:
    """Epoch of the minimum of the 5-epoch running median of the test error (the evaluation's reference)."""
    return int(hist["epoch"].iloc[int(np.argmin(running_median(hist["test_error"].to_numpy())))])


def blind(history: list[dict]) -> list[dict]:
    """The history with every test-set column removed: what the phase detector may see."""
    return [{k: v for k, v in row.items() if not k.startswith("test_")} for row in history]


def run_one(task: tuple, p: Protocol) -> tuple:
    """Train one (ρ, seed) with the order parameters and the test error every epoch; returns
    ``(1, (rows, history, seconds), None)`` for ``runtime.parallel``."""
    torch.set_num_threads(1)
    rho, seed = task
    hp = hparams(p, rho, seed)
    data = cached_data(hp.dataset, DEFAULT_ROOT, False)
    result = train_model(hp, data, probes=(PROBE,), test_schedule="every")
    phases = detect_phases(result.history)
    blind_ok = detect_phases(blind(result.history)).labels == phases.labels
    hist = pd.DataFrame(result.history)
    rows = [{**r, "converged": result.metrics["converged"], "blind_ok": blind_ok,
             "n_train": hp.dataset.n_train, "n_mislabeled": hp.dataset.n_mislabeled,
             "train_s": result.metrics["wall_time"], "op_s": op_cost(hp, data, result)}
            for r in summarise(float(rho), int(seed), hist, phases)]
    return 1, (rows, hist, phases), None


# --------------------------------------------------------------------------------------------- verdicts
def _per_seed(table: pd.DataFrame, rho: float, fn) -> list[float]:
    """``fn(phases)`` for every seed of ``rho`` whose run shows all four phases (``phases`` indexed by name)."""
    out = []
    for _, g in table[table.rho == rho].groupby("seed"):
        ph = g.set_index("phase")
        if set(PHASES) <= set(ph.index):
            out.append(float(fn(ph)))
    return out


def verdicts(table: pd.DataFrame, p: Protocol) -> list[tuple[str, str, str, str, str]]:
    """(claim, source, published, obtained, verdict) rows. The phases come from training-only signals, and
    every verdict reads the test error or an order parameter the detector did not use, with an interval
    over the seeds: each could come out the other way."""
    yes = lambda ok: "yes" if ok else "**no**"
    n = len(p.seeds)
    rows = []
    clean = table[table.rho == 0]
    if len(clean):
        found = [set(g.phase) == {"fast", "exploration"} for _, g in clean.groupby("seed")]
        ratio = spread([g.set_index("phase").alignment["fast"] / g.set_index("phase").alignment["exploration"]
                        for _, g in clean.groupby("seed") if set(g.phase) == {"fast", "exploration"}])
        rows.append(("clean data: a fast-learning phase, then a slow exploration phase", "paper",
                     "two phases", f"found in {sum(found)} of {len(found)} seeds", yes(all(found))))
        rows.append(("clean data: the minibatch gradients are more aligned while learning fast (the boundary "
                     "comes from the corrected amplitude, not from the alignment)", "paper",
                     "alignment drops at the change", f"alignment fast / exploration {pm(ratio)}",
                     yes(ratio["n"] > 1 and ratio["lo"] > 1)))
    for rho in [r for r in p.rhos if r > 0]:
        sub = table[table.rho == rho]
        found = sum(set(PHASES) <= set(g.phase) for _, g in sub.groupby("seed"))
        tag = f"ρ = {rho:g}: "
        rows.append((tag + "four phases I–IV", "paper", "I, II, III, IV", f"all four in {found} of {n} seeds",
                     yes(found == n)))
        if not found:
            continue
        fall = spread(_per_seed(table, rho, lambda ph: ph.test_error_end["I"] - ph.test_error_start["I"]))
        rows.append((tag + "the test error falls in phase I", "paper", "end − start < 0", pm(fall),
                     yes(fall["hi"] < 0)))
        inside = _per_seed(table, rho, lambda ph: ph.first_epoch["II"] - p.tolerance <= ph.test_min_epoch["II"]
                           <= ph.first_epoch["III"] - 1 + p.tolerance)
        length = spread(_per_seed(table, rho, lambda ph: ph.epochs["II"]))
        rows.append((tag + "the test error is lowest in phase II", "paper",
                     f"its minimum in II (± {p.tolerance} epochs)",
                     f"in {int(sum(inside))} of {len(inside)} seeds; II lasts {pm(length, 2)} epochs",
                     yes(len(inside) == n and all(inside))))
        rise = spread(_per_seed(table, rho, lambda ph: ph.test_error_end["III"] - ph.test_error_start["III"]))
        rows.append((tag + "the test error rises in phase III", "paper", "end − start > 0", pm(rise),
                     yes(rise["lo"] > 0)))
        high = spread(_per_seed(table, rho, lambda ph: ph.test_error_mean["IV"] - ph.test_error_mean["II"]))
        drift = spread(_per_seed(table, rho, lambda ph: abs(ph.test_error_end["IV"] - ph.test_error_start["IV"])
                                 / max(ph.test_error_end["III"] - ph.test_error_start["III"], 1e-12)))
        rows.append((tag + "the test error plateaus high in phase IV", "paper",
                     "IV above II, and flat next to III's rise",
                     f"IV − II {pm(high)}; the change within IV (absolute) over III's rise {pm(drift, 2)}",
                     yes(high["lo"] > 0 and drift["hi"] < 0.5)))
        best = spread(_per_seed(table, rho, lambda ph: ph.loss_auc["II"] - ph.loss_auc.drop("II").max()))
        peaks = [g.auc_peak_phase.iloc[0] for _, g in sub.groupby("seed")]
        rows.append((tag + "the per-sample losses of the correct and mislabeled samples separate best in II",
                     "paper", "AUC highest in II",
                     f"AUC(II) − best other phase {pm(best)}; the single best epoch falls in II in "
                     f"{peaks.count('II')} of {len(peaks)} seeds", yes(best["lo"] > 0)))
        opposed = spread(_per_seed(table, rho, lambda ph: ph.cos_correct_mislabeled["II"]))
        together = spread(_per_seed(table, rho, lambda ph: ph.cos_correct_mislabeled["III"]))
        rows.append((tag + "the mean gradients of the correct and the mislabeled samples oppose each other in II "
                     "and pull together in III", "paper", "cos < 0 in II, > 0 in III",
                     f"II {pm(opposed)}; III {pm(together)}", yes(opposed["hi"] < 0 < together["lo"])))
    return rows


# --------------------------------------------------------------------------------------------- figures
def plot_phases(table: pd.DataFrame, p: Protocol, path: Path) -> None:
    """The mean test error of each phase against ρ, with the 95 % interval over the seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    noisy = [r for r in p.rhos if r > 0]
    for k, ph in enumerate(PHASES):
        stats = [spread(table[(table.rho == r) & (table.phase == ph)].test_error_mean.tolist()) for r in noisy]
        x = np.array(noisy) + (k - 1.5) * 0.008
        ax.errorbar(x, [s["mean"] for s in stats], yerr=[s["hi"] - s["mean"] if s["n"] > 1 else 0 for s in stats],
                    marker="o", ms=4, capsize=3, label=f"phase {ph}")
    ax.set(xlabel="fraction ρ of mislabeled training samples", ylabel="mean test error in the phase",
           title=f"phases from training signals; {len(p.seeds)} seeds, 95 % intervals")
    ax.legend(fontsize=8)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------- results.md
def write_results(out: Path, table: pd.DataFrame, p: Protocol, profile: str, command: str, wall: float) -> None:
    lines = results_head(f"phases of learning dynamics ({PAPER})", profile)
    lines += [f"Protocol `{profile}` of `conf/reproduce/mlst.yaml`. The phases are placed from training-only "
              "signals (`measures.phases.detect_phases`: the mislabeled samples' loss with label noise, the "
              "corrected gradient amplitude without); the test error is read only here, to test the paper's "
              "statements about it. Intervals are 95 % Student-t intervals over the seeds; ± is one standard "
              "deviation.", ""] + verdict_table(verdicts(table, p))
    runs = table.drop_duplicates(["rho", "seed"])
    overhead = (runs.op_s * runs.run_epochs / runs.train_s).groupby(runs.rho).median()
    lines += ["", *IMPLEMENTATION_CHECKS,
              f"* The detector never reads the test set: with every test column removed from the history it "
              f"places the same phases in {int(runs.blind_ok.sum())} of {len(runs)} runs.",
              f"* Label noise `{p.label_noise_mode}`"
              + (" (the clean count fixed)" if p.label_noise_mode == "fixed_clean" else " (the total fixed)") + ": "
              + ", ".join(f"ρ = {r:g}: {int(g.n_train.iloc[0]):,} images, {int(g.n_mislabeled.iloc[0]):,} wrong"
                          for r, g in runs.groupby("rho")) + ".",
              f"* Runs that reached the training loss {p.stop_loss:g}: {int(runs.converged.sum())} of {len(runs)}"
              + (f" (the others stopped at {p.max_epochs} epochs)." if not runs.converged.all() else "."),
              "* The order parameters cost "
              + ", ".join(f"ρ = {r:g}: {100 * v:.0f} %" for r, v in overhead.items())
              + " of the training time (one call timed on the trained model × epochs).",
              "", "## Deviations", "",
              "* **The authors' code for this paper was not found**, so the network (the one of their NMI code), "
              f"the data ({p.train_size:,} clean `{p.dataset}` images plus the mislabeled ones), the stop "
              f"(training cross-entropy {p.stop_loss:g}) and the noise levels are this project's choices.",
              "* **Order parameters:** the paper's exact formulas were not confirmed; genbench's are in "
              "`docs/measures/phases.md`, estimated from 8 seeded minibatch gradients and 512 seeded samples "
              "per epoch.",
              "* **Resolution:** phases are placed per epoch; the paper follows SGD steps, so a phase shorter than "
              "a few epochs (phase II at small ρ, the fast phase on clean data) is resolved coarsely here.",
              "", "## Phases, every run", "",
              markdown_table(table.drop(columns=["train_s", "op_s", "blind_ok", "n_train", "n_mislabeled"])), "",
              "Columns: alignment = mean pairwise cosine of the minibatch gradients; amplitude_sq_corrected = κ, "
              "the squared amplitude with its pure-noise floor removed; test_min_epoch: where the 5-epoch running "
              "median of the test error is lowest; loss_auc = P(loss of a mislabeled sample > loss of a correct "
              "one); means over the epochs of the phase; auc_peak_phase: the phase of the run's best epoch."]
    lines += results_tail({
        "phases_rho<ρ>.png": "the test error and the order parameters of the first seed, phases shaded.",
        "phase_test_error.png": "the mean test error of each phase against ρ, every seed."},
        command, wall, p.workers, "Every epoch of the first seed is in `history_rho<ρ>.csv`.")
    (out / "results.md").write_text("\n".join(lines))


def run(out_dir: Path, profile: str = "default", overrides=()) -> pd.DataFrame:
    """Train every (ρ, seed), place the phases, test the paper's statements; write the figures,
    ``phases.csv`` and ``results.md`` into ``out_dir``."""
    p, out, start = begin(protocol, profile, overrides, out_dir)
    for rho in p.rhos:  # a bad value or an impossible size fails here, before anything trains
        hp = hparams(p, rho, p.seeds[0])
        hp.validate()
        cached_data(hp.dataset, DEFAULT_ROOT, False)
    tasks = [(rho, seed) for rho in p.rhos for seed in p.seeds]
    rows, first = [], {}
    for _, (run_rows, hist, phases), _ in parallel(functools.partial(run_one, p=p), tasks, p.workers, "mlst",
                                                   "run", [1] * len(tasks), True):
        rows += run_rows
        rho, seed = run_rows[0]["rho"], run_rows[0]["seed"]
        if seed == p.seeds[0]:
            first[rho] = (hist, phases)
    table = pd.DataFrame(rows).sort_values(["rho", "seed", "first_epoch"], kind="stable").reset_index(drop=True)
    table.to_csv(out / "phases.csv", index=False)
    for rho, (hist, _) in first.items():
        hist.to_csv(out / f"history_rho{rho:g}.csv", index=False)
    plot(dict(sorted(first.items())), out)
    if any(r > 0 for r in p.rhos):
        plot_phases(table, p, out / "phase_test_error.png")
    command = command_line("mlst", profile, overrides)
    write_results(out, table, p, profile, command, time.perf_counter() - start)
    return table
