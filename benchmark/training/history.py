"""Per-epoch bookkeeping shared by the per-model loop and the stacked trainer: the history rows (their
columns are named in ``measures.history``), the per-epoch probes, the stopping rule and the summary metrics.

A *probe* is something measured on the model at the end of every epoch and written into that epoch's row,
such as the order parameters of the learning phases. The trainer does not know what probes compute: the
pipeline passes them in (``benchmark.measuring.probes``). Each probe draws its randomness from its own stream
``generator(hp.seed, probe.tag)``, so adding or removing a probe never changes the training itself.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn

from measures import history as H
from measures.seeding import generator

if TYPE_CHECKING:
    from benchmark.zoo.datasets import DataBundle
    from benchmark.zoo.hparams import HParams


class Probe(Protocol):
    tag: str  # names its random stream, generator(hp.seed, tag)
    prefix: str  # prefixes its history columns, e.g. "op."

    def __call__(self, model: nn.Module, data: DataBundle, hp: HParams,
                 generator: torch.Generator) -> Mapping[str, float]:
        """Values for this epoch's row; ``model`` is in train mode and must be left unchanged."""


class StackedProbe(Probe, Protocol):
    """A probe that can also measure all members of a stack at once (``benchmark.training.stacked``)."""

    def many(self, forward: Callable, params: Sequence[torch.Tensor], data: Sequence[DataBundle],
             hps: Sequence[HParams], generators: Sequence[torch.Generator]) -> list[Mapping[str, float]]:
        """The values of ``__call__`` for each member: ``forward(params, x)`` gives the eval-mode logits
        (K, B, classes) of K stacked models on x (K, B, ...); ``params`` hold the members' weights (unchanged)."""


def probe_generators(probes: Sequence[Probe], hp: HParams) -> list[torch.Generator]:
    return [generator(hp.seed, p.tag) for p in probes]


TEST_SCHEDULES = ("log", "every")


def evaluates_test(epoch: int, schedule: str = "log") -> bool:
    """Whether the end of ``epoch`` evaluates the test set (the epoch a model stops at always does, so its final
    metrics are exact). ``"every"`` epoch; ``"log"``: every epoch up to the 15th, then every 2nd up to the 31st,
    every 4th up to the 63rd, and so on, i.e. 8 evaluations per doubling of the epoch count (a resolution that
    is uniform on the log-epoch axis of a learning curve; 36 evaluations over 100 epochs). The training set is
    evaluated at every epoch either way: the stopping rule and the step-count measures need it."""
    if schedule == "every":
        return True
    if schedule != "log":
        raise ValueError(f"unknown test schedule {schedule!r}; valid: {', '.join(TEST_SCHEDULES)}")
    return epoch % (1 << max(0, (epoch // 8).bit_length() - 1)) == 0


def epoch_row(epoch: int, step: int, train: tuple[float, float], test: tuple[float, float] | None) -> dict:
    """The columns every history row has: the epoch, the step count, (loss, error) on the training and test
    sets; the test columns are NaN at an epoch the test schedule skips (``evaluates_test``)."""
    test = (math.nan, math.nan) if test is None else test
    return {H.EPOCH: epoch, H.STEP: step, H.TRAIN_LOSS: train[0], H.TRAIN_ERROR: train[1],
            H.TEST_LOSS: test[0], H.TEST_ERROR: test[1]}


def probe_columns(probes: Sequence[Probe], gens: Sequence[torch.Generator], model: nn.Module, data: DataBundle,
                  hp: HParams) -> dict:
    """Every probe's values for this epoch, under its prefix; ``gens`` from :func:`probe_generators`."""
    row = {}
    for probe, gen in zip(probes, gens):
        row.update({probe.prefix + k: v for k, v in probe(model, data, hp, gen).items()})
    return row


def probe_columns_many(probes: Sequence[Probe], gens: Sequence[Sequence[torch.Generator]], forward: Callable,
                       params: Sequence[torch.Tensor], data: Sequence[DataBundle], hps: Sequence[HParams],
                       unstack: Callable[[int], nn.Module]) -> list[dict]:
    """:func:`probe_columns` of every member of a stack (``gens[r]`` the member's generators): probes with a
    ``many`` method (``StackedProbe``) measure all members at once, the others member by member on ``unstack(r)``,
    its own module in train mode."""
    rows: list[dict] = [{} for _ in hps]
    for j, probe in enumerate(probes):
        member_gens = [g[j] for g in gens]
        if hasattr(probe, "many"):
            values = probe.many(forward, params, data, hps, member_gens)
        else:
            values = [probe(unstack(r), d, hp, g) for r, (d, hp, g) in enumerate(zip(data, hps, member_gens))]
        for row, v in zip(rows, values):
            row.update({probe.prefix + k: x for k, x in v.items()})
    return rows


def stops(row: Mapping, hp: HParams) -> tuple[bool, bool]:
    """(stop, diverged) after an epoch: the rule of Jiang et al. — the full training cross-entropy is at most
    ``train.target_loss`` — or divergence (a non-finite loss), or the epoch budget is spent."""
    diverged = not math.isfinite(row[H.TRAIN_LOSS])
    done = diverged or row[H.TRAIN_LOSS] <= hp.train.target_loss or row[H.EPOCH] >= hp.train.max_epochs
    return done, diverged


def final_metrics(hp: HParams, history: list[dict], wall: float, diverged: bool) -> dict:
    """Summary metrics from the per-epoch history (shared by the looped and the vectorized trainer)."""
    last = history[-1]
    steps_per_epoch = last[H.STEP] / last[H.EPOCH]
    first = lambda thr: next((h[H.STEP] for h in history if h[H.TRAIN_LOSS] <= thr), math.nan)
    return {
        "converged": bool(last[H.TRAIN_LOSS] <= hp.train.target_loss and not diverged),
        "diverged": bool(diverged),
        "epochs": last[H.EPOCH], "steps": last[H.STEP], "steps_per_epoch": steps_per_epoch,
        "train_loss": last[H.TRAIN_LOSS], "train_error": last[H.TRAIN_ERROR],
        "test_loss": last[H.TEST_LOSS], "test_error": last[H.TEST_ERROR],
        "gap_error": last[H.TEST_ERROR] - last[H.TRAIN_ERROR],
        "gap_loss": last[H.TEST_LOSS] - last[H.TRAIN_LOSS],
        "steps_to_0.1": first(0.1), "steps_0.1_to_0.01": first(0.01) - first(0.1),
        "train_size": hp.dataset.train_size, "n_train": hp.dataset.n_train, "test_size": hp.dataset.test_size,
        "wall_time": wall,
    }
