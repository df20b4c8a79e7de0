"""Weights kept during training, for early prediction: how well a measure computed part-way through training
predicts the final generalization gap (``benchmark.measuring.early``).

The models train until they reach the target loss, so their number of epochs is known only at the end. Each
model therefore keeps its weights at the end of every epoch in at most ``SLOTS`` snapshots: once they are
full, every other one is dropped and only every second epoch is kept from then on (the stride doubles). At the
end the snapshot nearest each requested fraction f of the E epochs is chosen; its epoch differs from f·E by at
most half the stride, E/``SLOTS`` epochs (1.6 % of training), and its real epoch is recorded with it.
"""
from __future__ import annotations

from typing import Any, Sequence

SLOTS = 64  # snapshots held per model at most


class Snapshots:
    def __init__(self, fractions: Sequence[float], slots: int = SLOTS):
        bad = [f for f in fractions if not 0 < f < 1]
        if bad:
            raise ValueError(f"fractions of training must lie strictly between 0 and 1, got {bad}")
        self.fractions = tuple(sorted(set(float(f) for f in fractions)))
        self.slots, self.stride = slots, 1
        self.kept: list[tuple[int, Any]] = []

    def due(self, epoch: int) -> bool:
        """Whether the weights at the end of ``epoch`` are to be kept (call :meth:`add` then)."""
        return bool(self.fractions) and epoch % self.stride == 0

    def add(self, epoch: int, state: Any) -> None:
        self.kept.append((epoch, state))
        if len(self.kept) > self.slots:
            self.stride *= 2
            self.kept = [(e, s) for e, s in self.kept if e % self.stride == 0]

    def pick(self, epochs: int) -> list[tuple[float, int, Any]]:
        """(fraction, epoch, state) for each fraction: the kept snapshot nearest fraction·``epochs`` (the
        earlier one on a tie); none when nothing was kept."""
        if not self.kept:
            return []
        return [(f, *min(self.kept, key=lambda k: (abs(k[0] - f * epochs), k[0]))) for f in self.fractions]
