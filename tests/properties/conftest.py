"""The real trained network every registry-wide property is checked on."""
from __future__ import annotations

import dataclasses

import pytest

from benchmark.measuring.context import Trained
from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.training.loop import train_model
from benchmark.zoo.datasets import make_data
from benchmark.zoo.hparams import HParams


@pytest.fixture(scope="session")
def trained_digits() -> Trained:
    """An MLP on digits with label noise, trained by the zoo's trainer with its per-epoch probes, and its seed-1
    replicate (for the replicate measures)."""
    hp = HParams.from_dict({
        "dataset": {"name": "digits", "train_size": 360, "test_size": 300, "label_noise": 0.1},  # 400 in all
        "model": {"name": "mlp", "depth": 2, "width": 16},
        "optimizer": {"name": "sgd", "lr": 0.3}, "train": {"batch_size": 40, "target_loss": 0.01,
                                                           "max_epochs": 300}})
    data = make_data(hp.dataset)
    replicate = Trained.from_result(train_model(hp.replace(seed=1), data), data).model
    return dataclasses.replace(Trained.from_result(train_model(hp, data, probes=DEFAULT_PROBES), data),
                               replicates=(replicate,))
