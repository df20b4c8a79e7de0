"""genbench's generalization measures: a library on its own (it imports nothing from ``benchmark``).

The built-in measures register themselves in ``REGISTRY`` on its first use; ``measures.seeding`` and
``measures.history`` are leaves that load none of them.
"""
from measures.context import Context, Layer, MissingInputError, UndeclaredInputError
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

__all__ = ["Context", "Layer", "MissingInputError", "UndeclaredInputError", "REGISTRY", "Registry", "Measure",
           "Value", "measure", "NotApplicable", "DuplicateMeasureError", "UnknownMeasureError"]
