"""The phase measures on hand-made histories whose values are derived by hand. The measures read only the
history; the network (a 5 → 7 → 3 tanh MLP) is there because a Context needs one."""
from __future__ import annotations

import torch
from torch import nn

from measures.testing import ValueCase


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


ALIGNMENT = [0.9, 0.7, 0.5, 0.33, 0.21, 0.14, 0.27, 0.08]


def alignment_history() -> list[dict]:
    """Every epoch has a different alignment, and the last one (0.08) differs from the mean, median, maximum and
    minimum of the history and of its last few rows."""
    return [{"epoch": e, "op.alignment": v} for e, v in enumerate(ALIGNMENT, 1)]


def rising_amplitude_history() -> list[dict]:
    """κ(e) = e/100 at epochs 1–40: the last tenth is epochs 37–40, mean 0.385 (the last row alone: 0.40)."""
    return [{"epoch": e, "op.amplitude_sq_corrected": e / 100} for e in range(1, 41)]


def dipping_amplitude_history() -> list[dict]:
    """κ = 0.3, 0.6, 0.9 at epochs 1–3, then falls by 0.02 per epoch to 0.16 at epoch 40, except a three-epoch
    dip to 0.4 at epochs 10–12. The 5-row running median peaks at 0.86 (epochs 3–5) and keeps the dip; late
    level: the median of the last quarter (epochs 31–40: 0.34 … 0.20, then 0.19 and 0.18 at the shrinking end),
    0.25; midpoint 0.555. The smoothed κ stays at or below it from epoch 21 on (κ(20) = 0.56, κ(21) = 0.54), so
    the fast phase is epochs 1–20 and the fraction 20/40. (Stopping at the first fall below the midpoint would
    end the fast phase at the dip, epoch 9.)"""
    def kappa(e):
        return 0.3 * e if e <= 3 else 0.4 if 10 <= e <= 12 else 0.9 - 0.02 * (e - 3)

    return [{"epoch": e, "op.amplitude_sq_corrected": kappa(e)} for e in range(1, 41)]


def spiky_mislabeled_loss(e: int) -> float:
    """L_m rises 1.1 → 2.0 (epochs 1–10), falls by 0.1 per epoch to 0.2 (epoch 28) and stays there to epoch 50,
    with a one-epoch spike to 5.0 at epoch 16."""
    if e == 16:
        return 5.0
    return 1.0 + 0.1 * e if e <= 10 else max(2.0 - 0.1 * (e - 10), 0.2)


def spiky_mislabeled_history() -> list[dict]:
    """The 5-epoch running median of ``spiky_mislabeled_loss`` turns the peak into 1.9 (first at epoch 9) and
    removes the spike; the final level is 0.2, so half the drop (0.85) is done when the smoothed L_m ≤ 1.05: at
    epoch 20 (1.0; epoch 19 has 1.1). Without the median the spike would be the peak (17/50)."""
    return [{"epoch": e, "op.loss_mislabeled": spiky_mislabeled_loss(e)} for e in range(1, 51)]


CASES = [
    ValueCase("phase.final_alignment", net(), ALIGNMENT[-1], history=alignment_history(), rel=0.0,
              why="op.alignment of the last row, 0.08, unlike any mean, median or extreme of the rows"),
    ValueCase("phase.late_amplitude_sq", net(), (0.37 + 0.38 + 0.39 + 0.40) / 4, history=rising_amplitude_history(),
              rel=1e-12, why="κ(e) = e/100: the mean over epochs 37–40, the last tenth of 40"),
    ValueCase("phase.exploration_fraction", net(), 1 - 20 / 40, history=dipping_amplitude_history(), rel=1e-12,
              why="the smoothed κ stays at or below its midpoint 0.555 from epoch 21 of 40 on"),
    ValueCase("phase.mislabeled_fit_epoch_fraction", net(), 20 / 50, history=spiky_mislabeled_history(), rel=1e-12,
              why="the median-smoothed L_m is half-way from its peak 1.9 to 0.2 at epoch 20 of 50"),
]
