"""Per-epoch probes that the pipeline passes to the trainer (``benchmark.training.history.Probe``).

The trainer knows only the protocol; what is computed comes from the measures library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from benchmark.zoo.datasets import DataBundle
from benchmark.zoo.hparams import HParams
from measures import history as H
from measures.phases import order_parameters


@dataclass(frozen=True)
class OrderParameters:
    """The learning-phase order parameters of ``measures.phases.order_parameters`` (Feng & Tu, MLST 2021):
    from ``batches`` minibatch gradients of the model's own batch size (alignment, the raw amplitude and the
    floor-corrected squared amplitude ``op.amplitude_sq_corrected``), plus the mislabeled subset's loss, error and
    gradient alignment when the model trains with label noise. Draws only from its own ``generator`` stream, so
    training is the same with or without it. About 6–16% of an epoch's time."""
    batches: int = 8
    tag: str = "phases"
    prefix: str = H.ORDER_PARAMETER_PREFIX

    def __call__(self, model: nn.Module, data: DataBundle, hp: HParams,
                 generator: torch.Generator) -> Mapping[str, float]:
        mislabeled = data.mislabeled if hp.dataset.label_noise > 0 else None
        return order_parameters(model, data.x_train, data.y_train, hp.train.batch_size, generator, self.batches,
                                mislabeled)


DEFAULT_PROBES = (OrderParameters(),)
