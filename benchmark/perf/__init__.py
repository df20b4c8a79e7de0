"""``genbench perf``: the benchmark of the benchmark (throughput, peak fraction, measure costs, scaling)."""
from benchmark.perf.bench import TARGETS, main, run

__all__ = ["TARGETS", "main", "run"]
