"""Measuring: stored models rebuilt into ``measures.Context``s, every registered measure computed on every
model with failures recorded, and the per-epoch probes that training is given."""
from benchmark.measuring.context import Trained
from benchmark.measuring.jobs import measure_zoo, time_limit
from benchmark.measuring.probes import DEFAULT_PROBES, OrderParameters

__all__ = ["Trained", "measure_zoo", "time_limit", "DEFAULT_PROBES", "OrderParameters"]
