"""Reproduce the phases of learning dynamics with and without mislabeled data (Feng & Tu, Mach. Learn.: Sci.
Technol. 2021; docs/measures/phases.md) at CPU scale.

    genbench reproduce mlst [--out DIR] [--quick]
    genbench reproduce mlst [--quick]

Setup (reduced): offline MNIST (``mnist5k``), 784→30→30→10 ReLU MLP without biases, plain SGD α = 0.1,
B = 25, trained with ``benchmark.training.loop.train_model`` to training cross-entropy ≤ 0.01 (or an epoch cap), with
a fraction ρ ∈ {0, 0.2, 0.4} of the training labels corrupted by the authors' recipe. The order parameters
(``measures.phases.order_parameters``) are those the trainer writes into every epoch's history row; the
phases come from ``measures.phases.detect_phases``, which reads training-data signals only. The test error is
used only to evaluate them: its minimum should fall in the detected phase II (within ``TOLERANCE`` epochs).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.measuring.probes import OrderParameters
from benchmark.report.format import markdown_table
from benchmark.training.loop import train_model
from benchmark.zoo.datasets import make_data
from benchmark.zoo.hparams import DatasetHP, HParams, ModelHP, OptimizerHP, TrainHP
from benchmark.zoo.models import build_model
from measures.phases import detect_phases, running_median
from measures.seeding import generator

PROBE = OrderParameters()  # the order parameters recorded every epoch, as in the zoo
TOLERANCE = 3  # epochs: how far the test-error minimum may lie outside the detected phase II

COLORS = {"I": "#dbe9f6", "II": "#dff3df", "III": "#fbe3d0", "IV": "#eeeeee", "fast": "#dbe9f6",
          "exploration": "#eeeeee"}


def hparams(rho: float, quick: bool) -> HParams:
    ds = DatasetHP(name="mnist5k", train_size=600 if quick else 2000, test_size=1000, label_noise=rho, seed=0)
    return HParams(dataset=ds, model=ModelHP(name="mlp", depth=2, width=30, bias=False),
                   optimizer=OptimizerHP(name="sgd", lr=0.1),
                   train=TrainHP(batch_size=25, target_loss=0.01, max_epochs=40 if quick else 400), seed=0)


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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        fig.tight_layout()
        name = f"phases_rho{rho:g}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def summarise(rho: float, hist: pd.DataFrame, phases, train_s: float, op_s: float) -> list[dict]:
    rows = []
    labels = np.array(phases.labels)
    for ph in dict.fromkeys(phases.labels):
        sub = hist[labels == ph]
        row = {"rho": rho, "phase": ph, "first_epoch": int(sub["epoch"].min()), "last_epoch": int(sub["epoch"].max()),
               "test_error_start": float(sub["test_error"].iloc[0]),
               "test_error_end": float(sub["test_error"].iloc[-1]),
               "test_error_mean": float(sub["test_error"].mean()), "alignment": float(sub["op.alignment"].mean()),
               "amplitude": float(sub["op.amplitude"].mean()),
               "amplitude_sq_corrected": float(sub["op.amplitude_sq_corrected"].mean()), "train_s": train_s,
               "test_min_epoch": test_min_epoch(hist),
               "op_overhead": op_s * len(hist) / train_s}
        if "op.loss_auc" in hist:
            peak = int(hist["op.loss_auc"].idxmax())
            row.update(auc_peak=float(hist["op.loss_auc"].iloc[peak]), auc_peak_epoch=int(hist["epoch"].iloc[peak]))
        if "op.loss_mislabeled" in hist:
            row.update({k: float(sub[f"op.{k}"].mean()) for k in (
                "loss_correct", "loss_mislabeled", "error_mislabeled", "loss_auc", "cos_correct_mislabeled",
                "norm_ratio_mislabeled")})
        rows.append(row)
    return rows


def test_min_epoch(hist: pd.DataFrame) -> int:
    """Epoch of the minimum of the 5-epoch running median of the test error (the evaluation's reference)."""
    return int(hist["epoch"].iloc[int(np.argmin(running_median(hist["test_error"].to_numpy())))])


def hist_auc(sub: pd.DataFrame) -> str:
    """Where the per-epoch AUC peaks, from the phase table's stored peak columns."""
    if "auc_peak_epoch" not in sub:
        return ""
    return f" (per-epoch peak AUC {sub['auc_peak'].iloc[0]:.3f} at epoch {int(sub['auc_peak_epoch'].iloc[0])})"


def claims(table: pd.DataFrame) -> list[str]:
    """Published statements (docs/measures/phases.md) next to what this run obtained; the verdict is computed."""
    verdict = lambda ok: "**matches**" if ok else "**does not match**"
    out = []
    clean = table[table["rho"] == 0]
    if len(clean):
        ph = clean.set_index("phase")
        if "exploration" in ph.index:
            fast, slow = ph.loc["fast"], ph.loc["exploration"]
            out.append(f"{len(out) + 1}. *Clean data: a fast-learning phase, then a slow exploration phase, with a "
                       f"sharp change of the order parameters.* Obtained: fast phase epochs {int(fast.first_epoch)}–"
                       f"{int(fast.last_epoch)} with mean alignment {fast.alignment:.2f}, exploration from epoch "
                       f"{int(slow.first_epoch)} with {slow.alignment:.2f} — "
                       f"{verdict(fast.alignment > 2 * slow.alignment)}"
                       + (" (at epoch resolution the fast phase is within the first epoch or two: the paper resolves "
                          "it in SGD steps)." if fast.last_epoch <= 2 else "."))
        else:
            out.append(f"{len(out) + 1}. *Clean data: fast learning then exploration.* Obtained: the alignment never "
                       "fell to its midpoint — **does not match**.")
    for rho, sub in table[table["rho"] > 0].groupby("rho"):
        ph = sub.set_index("phase")
        found = list(ph.index)
        if found != ["I", "II", "III", "IV"]:
            out.append(f"{len(out) + 1}. *ρ = {rho:g}: four phases I–IV.* Obtained phases {found} — "
                       "**does not match** (see the figure).")
            continue
        i, ii, iii, iv = (ph.loc[k] for k in ("I", "II", "III", "IV"))
        e = lambda r, k: int(r[k])
        shape = (i.test_error_end < i.test_error_start
                 and ii.test_error_mean <= min(i.test_error_mean, iii.test_error_mean)
                 and iii.test_error_end > iii.test_error_start and iv.test_error_mean >= iii.test_error_mean)
        out.append(f"{len(out) + 1}. *ρ = {rho:g}: I fits the correct samples (test error falls), II wanders near "
                   f"them (test error low), III learns the mislabeled ones (test error rises), IV fits everything "
                   f"(plateau).* Obtained: I epochs {e(i, 'first_epoch')}–{e(i, 'last_epoch')} (test error "
                   f"{i.test_error_start:.3f}→{i.test_error_end:.3f}), II {e(ii, 'first_epoch')}–"
                   f"{e(ii, 'last_epoch')} (mean {ii.test_error_mean:.3f}), III {e(iii, 'first_epoch')}–"
                   f"{e(iii, 'last_epoch')} ({iii.test_error_start:.3f}→{iii.test_error_end:.3f}), IV from "
                   f"{e(iv, 'first_epoch')} (mean {iv.test_error_mean:.3f}) — {verdict(shape)}.")
        t_min = int(ph["test_min_epoch"].iloc[0])
        inside = ii.first_epoch - TOLERANCE <= t_min <= iii.first_epoch - 1 + TOLERANCE
        out.append(f"{len(out) + 1}. *ρ = {rho:g}: the phase boundaries, placed from training data only, agree with "
                   f"the test error.* Obtained: the (5-epoch median) test error is lowest at epoch {t_min}; detected "
                   f"II spans epochs {e(ii, 'first_epoch')}–{e(ii, 'last_epoch')} (the minimum comes "
                   f"{t_min - e(ii, 'first_epoch')} epochs after II starts and {e(iii, 'first_epoch') - t_min} "
                   f"before III starts) — {verdict(inside)} (minimum within II ± {TOLERANCE} epochs).")
        sep = sub.set_index("phase")["loss_auc"]
        best = hist_auc(sub)
        out.append(f"{len(out) + 1}. *ρ = {rho:g}: the per-sample losses of the two subsets separate best in phase "
                   f"II (which allows cleaning the data).* Obtained mean AUC of the per-sample loss for finding the "
                   f"mislabeled samples: " + ", ".join(f"{k} {v:.3f}" for k, v in sep.items())
                   + f" — best phase {sep.idxmax()}: {verdict(sep.idxmax() == 'II')}" + best + ".")
        cos = sub.set_index("phase")["cos_correct_mislabeled"]
        out.append(f"{len(out) + 1}. *ρ = {rho:g}: the alignment of the correct and mislabeled mean gradients "
                   f"separates the phases.* Obtained mean cos(g_c, g_m): " + ", ".join(f"{k} {v:+.2f}"
                                                                                      for k, v in cos.items())
                   + f" — {verdict(cos['II'] < 0 < cos['III'])} (opposed in II, pulling together in III).")
    return out


def report(table: pd.DataFrame, out: Path, quick: bool, wall: float, files: list[str]) -> None:
    cmd = "genbench reproduce mlst" + (" --quick" if quick else "")
    hp = hparams(0.0, quick)
    lines = ["# Reproduction: phases of learning dynamics (Feng & Tu, MLST 2021)", "",
             f"Command: `{cmd}`. Wall time "
             f"{wall / 60:.1f} min on the project machine (2 shared CPU cores, 1 torch thread).", "",
             "## Setup and what was reduced", "",
             f"- Offline MNIST (`mnist5k`), {hp.dataset.train_size} training and 1,000 test images; ρ of the "
             "training labels permuted by the authors' recipe (docs/data.md).",
             "- 784→30→30→10 ReLU MLP without biases, plain SGD α = 0.1, B = 25, trained with "
             f"`benchmark.training.loop.train_model` to training loss ≤ 0.01 or {hp.train.max_epochs} epochs. "
             "Architecture and data size are ours (CPU budget), not the paper's.",
             f"- Order parameters each epoch from {PROBE.batches} seeded minibatch gradients; the subset terms "
             "from a fresh seeded sample of 512 training samples (the trainer's defaults).", "",
             "## Phases found", "", markdown_table(table.drop(columns=["train_s", "op_overhead"])), "",
             "Columns: alignment = mean pairwise cosine of minibatch gradients; amplitude = ‖mean‖/mean‖·‖ (floor "
             "≈ 1/√M for pure noise); amplitude_sq_corrected = κ, the squared amplitude with that floor removed "
             "(0 for pure noise, 1 for identical gradients); test_min_epoch: where the test error is lowest; "
             "loss_auc = P(loss of a mislabeled sample > loss of a correct one); all values are means over the "
             "epochs of the phase; auc_peak(_epoch): the best epoch of the whole run.", "",
             "Cost of the order parameters (one call timed on the trained model × epochs, over the training wall "
             "time): " + ", ".join(f"ρ={r:g}: {100 * v:.0f}%" for r, v in
                                   table.groupby("rho")["op_overhead"].first().items()) + ".", "",
             "## Obtained vs published", ""] + claims(table) + ["",
             "Published statements as summarised in docs/measures/phases.md (exact order-parameter formulas of "
             "the paper not confirmed; ours are in measures/phases.py); only shapes and signs are compared.", "",
             "## Files", ""] + [f"- `{f}`" for f in files + ["phases.csv", "history_rho*.csv"]]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def run(out_dir: Path, quick: bool = False) -> pd.DataFrame:
    """Train one model per ρ, detect its phases, write figures, tables and ``results.md`` into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, runs = [], {}
    for rho in ([0.3] if quick else [0.0, 0.2, 0.4]):
        hp = hparams(rho, quick)
        data = make_data(hp.dataset)
        result = train_model(hp, data, probes=(PROBE,), test_schedule="every")  # the figures plot every epoch
        train_s = result.metrics["wall_time"]
        hist = pd.DataFrame(result.history)
        hist.to_csv(out / f"history_rho{rho:g}.csv", index=False)
        phases = detect_phases(result.history)
        runs[rho] = (hist, phases)
        rows += summarise(rho, hist, phases, train_s, op_cost(hp, data, result))
        print(f"[mlst] ρ={rho}: {len(hist)} epochs in {train_s:.0f} s; phases start at {phases.starts}",
              flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "phases.csv", index=False)
    files = plot(runs, out)
    report(table, out, quick, time.perf_counter() - start, files)
    return table


