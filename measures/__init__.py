"""genbench's generalization measures: a library on its own (it imports nothing from ``benchmark``).

Importing the package registers every built-in measure in ``REGISTRY``.
"""
from measures.context import Context, Layer, MissingInputError
from measures.registry import (REGISTRY, DuplicateMeasureError, Measure, Registry, UnknownMeasureError, Value,
                               measure)
from measures import size, norms, margins, spectral, heavy_tail, optimization, pacbayes, sharpness, hessian, duality, phases, flatness, sgd_regularization  # noqa: F401,E402  (registration)

__all__ = ["Context", "Layer", "MissingInputError", "REGISTRY", "Registry", "Measure", "Value", "measure",
           "DuplicateMeasureError", "UnknownMeasureError"]
