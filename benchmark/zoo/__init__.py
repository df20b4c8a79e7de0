"""The zoo: typed hyperparameters, the grids over them, and the registered components a model is built from
(datasets, architectures, optimizers).

The hyperparameters, the grids and the registries import neither torch nor the components' code, so that a
config is checked in well under a second; the names that need torch (data, models, optimizers) are imported the
first time they are used (PEP 562)."""
from __future__ import annotations

import importlib

from benchmark.zoo.grid import base_hparams, expand, varying_axes
from benchmark.zoo.hparams import DatasetHP, HParams, HParamsError, ModelHP, OptimizerHP, TrainHP
from benchmark.zoo.registry import DATASETS, MODELS, OPTIMIZERS

_LAZY = {"DataBundle": "benchmark.zoo.datasets", "make_data": "benchmark.zoo.datasets",
         "build_model": "benchmark.zoo.models", "make_optimizer": "benchmark.zoo.optimizers"}

__all__ = ["DataBundle", "make_data", "base_hparams", "expand", "varying_axes", "DatasetHP", "HParams",
           "HParamsError", "ModelHP", "OptimizerHP", "TrainHP", "build_model", "make_optimizer", "DATASETS",
           "MODELS", "OPTIMIZERS"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
