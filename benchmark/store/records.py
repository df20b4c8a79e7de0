"""The records the store writes, typed: what the measuring workers send and the store keeps, field by field in the
order of the tables' columns (``measurements`` and ``early``). They are tuples, so the workers send them as they are
and the store writes them with one statement."""
from __future__ import annotations

from typing import Any, NamedTuple


class Measurement(NamedTuple):
    """One measure's value on one model: ``status`` ok, failed (``error`` says why) or not_applicable."""
    model_id: str
    measure: str
    version: int
    value: float | None
    seconds: float
    status: str
    error: str | None = None
    details: dict[str, Any] | None = None


class EarlyValue(NamedTuple):
    """One measure's value on the weights a model kept at ``fraction`` of its training (at ``epoch``; -1 where the
    worker that computed it died before saying which)."""
    model_id: str
    fraction: float
    epoch: int
    measure: str
    version: int
    value: float | None
    seconds: float
    status: str
    error: str | None = None
