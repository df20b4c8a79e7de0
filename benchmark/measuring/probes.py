"""Per-epoch probes that the pipeline passes to the trainer (``benchmark.training.history.Probe``).

The trainer knows only the protocol; what is computed comes from the measures library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from benchmark.zoo.datasets import DataBundle
from benchmark.zoo.hparams import HParams
from measures import history as H
from measures.phases import Member, order_parameters, order_parameters_many


@dataclass(frozen=True)
class OrderParameters:
    """The learning-phase order parameters of ``measures.phases.order_parameters`` (Feng & Tu, MLST 2021):
    from ``batches`` minibatch gradients of the model's own batch size (alignment, the raw amplitude and the
    floor-corrected squared amplitude ``op.amplitude_sq_corrected``), plus the mislabeled subset's loss, error and
    gradient alignment when the model trains with label noise. Draws only from its own ``generator`` stream, so
    training is the same with or without it. The stacked trainer measures all members of a stack at once
    (``many``); about a quarter of an epoch's time at width 128."""
    batches: int = 8
    tag: str = "phases"
    prefix: str = H.ORDER_PARAMETER_PREFIX

    def __call__(self, model: nn.Module, data: DataBundle, hp: HParams,
                 generator: torch.Generator) -> Mapping[str, float]:
        return order_parameters(model, data.x_train, data.y_train, hp.train.batch_size, generator, self.batches,
                                _mislabeled(data, hp))

    def many(self, forward: Callable, params: Sequence[torch.Tensor], data: Sequence[DataBundle],
             hps: Sequence[HParams], generators: Sequence[torch.Generator]) -> list[Mapping[str, float]]:
        """All members of a stack at once (``order_parameters_many``); they share their batch size."""
        members = [Member(d.x_train, d.y_train, g, _mislabeled(d, hp)) for d, hp, g in zip(data, hps, generators)]
        return order_parameters_many(forward, params, members, hps[0].train.batch_size, self.batches)


def _mislabeled(data: DataBundle, hp: HParams) -> torch.Tensor | None:
    """The mislabeled mask the subset terms read, or None for a model trained without label noise."""
    return data.mislabeled if hp.dataset.label_noise > 0 else None


DEFAULT_PROBES = (OrderParameters(),)
