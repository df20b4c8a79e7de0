"""The zoo: typed hyperparameters, the grids over them, and the registered components a model is built from
(datasets, architectures, optimizers)."""
from benchmark.zoo import datasets, models, optimizers  # noqa: F401  (registration)
from benchmark.zoo.datasets import DataBundle, make_data
from benchmark.zoo.grid import base_hparams, expand, varying_axes
from benchmark.zoo.hparams import DatasetHP, HParams, HParamsError, ModelHP, OptimizerHP, TrainHP
from benchmark.zoo.models import build_model
from benchmark.zoo.optimizers import make_optimizer
from benchmark.zoo.registry import DATASETS, MODELS, OPTIMIZERS

__all__ = ["DataBundle", "make_data", "base_hparams", "expand", "varying_axes", "DatasetHP", "HParams",
           "HParamsError", "ModelHP", "OptimizerHP", "TrainHP", "build_model", "make_optimizer", "DATASETS",
           "MODELS", "OPTIMIZERS"]
