"""Training: one model with the per-model loop, many with the stacked trainer, the shared per-epoch
bookkeeping (history rows, probes, stopping rule), and training a zoo into a store with workers.

The names below are imported on first use (PEP 562), so that a torch-free module of this package (the snapshot
schedule, which the config check uses) can be imported without torch."""
from __future__ import annotations

import importlib

_LAZY = {"Probe": "history", "final_metrics": "history", "TrainResult": "loop", "evaluate": "loop",
         "train_model": "loop", "Stack": "stacked", "group_stacks": "stacked", "stack_key": "stacked",
         "train_many": "stacked"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"benchmark.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
