"""genbench's generalization measures: a library on its own (it imports nothing from ``benchmark``).

The built-in measures register themselves in ``REGISTRY`` on its first use; ``measures.seeding`` and
``measures.history`` are leaves that load none of them. The registry's own module needs no torch; ``Context`` and
the errors it raises are imported on first use (PEP 562), so that reading the registry's conventions (the benchmark's
tables) never loads torch.
"""
from __future__ import annotations

import importlib

from measures.registry import (
    REGISTRY,
    DuplicateMeasureError,
    Measure,
    NotApplicable,
    Registry,
    UnknownMeasureError,
    Value,
    measure,
)

_CONTEXT = ("Context", "Layer", "MissingInputError", "UndeclaredInputError")

__all__ = ["Context", "Layer", "MissingInputError", "UndeclaredInputError", "REGISTRY", "Registry", "Measure",
           "Value", "measure", "NotApplicable", "DuplicateMeasureError", "UnknownMeasureError"]


def __getattr__(name: str):
    if name in _CONTEXT:
        return getattr(importlib.import_module("measures.context"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
