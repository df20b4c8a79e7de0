"""Measuring a stored zoo: every (model, measure) pair the store lacks, one task per model in the workers.

Values are stored as they are computed, in one transaction per second of measure time (cheap measures would
otherwise cost more to write than to compute), so an interrupted run loses at most that second's work. A
measure that raises, returns NaN/inf or runs past its time budget is recorded as failed with its message,
and the others go on. A measure that raises ``NotApplicable`` (its quantity is undefined for the model) is
recorded as not_applicable with the reason; that is not a failure.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import measures
from benchmark.measuring.context import Trained
from benchmark.runtime import RunOptions, parallel, set_threads
from benchmark.store import CheckpointError, Store
from measures.plugins import load_all

log = logging.getLogger("genbench")


FLUSH_S = 1.0  # values are written together once this much measure time has accumulated (one transaction)


class MeasureTimeout(TimeoutError):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise ``MeasureTimeout`` after ``seconds`` (SIGALRM; only enforceable in a main thread)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise MeasureTimeout(f"ran past its time budget of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _measure_task(args) -> tuple[int, str, tuple[int, int]]:
    """Compute the missing measures of one model; each result is stored as soon as it exists."""
    root, model_id, names, plugins, seed, timeout, curvature_samples, opts = args
    set_threads(opts)
    load_all(plugins)
    store = Store(root)
    try:
        trained = Trained.from_store(store, model_id, opts)
    except CheckpointError as err:
        store.save_measurements([(model_id, name, measures.REGISTRY.get(name).version, None, 0.0, "failed", str(err),
                                  None) for name in names])
        return 1, model_id, (len(names), 0)
    ctx, oracle_ctx = trained.context(seed, curvature_samples=curvature_samples), None
    failed = not_applicable = 0
    pending: list[tuple] = []  # values not yet written: at most FLUSH_S seconds of work
    pending_s = 0.0
    try:
        for name in names:
            m = measures.REGISTRY.get(name)
            if m.oracle and oracle_ctx is None:
                oracle_ctx = trained.context(seed, oracle=True, curvature_samples=curvature_samples)
            start = time.perf_counter()
            value, status, error, details = None, "ok", None, {}
            try:
                with time_limit(timeout):
                    out = m(oracle_ctx if m.oracle else ctx)
                value, details = out.value, dict(out.details)
                if not math.isfinite(value):
                    status, error, value = "failed", f"returned a non-finite value ({value})", None
            except measures.NotApplicable as why:
                status, error = "not_applicable", str(why)
            except Exception as err:  # a failing measure is recorded, the others go on
                status, error = "failed", f"{type(err).__name__}: {err}"
                details = {"traceback": traceback.format_exc(limit=-3)}
            failed += status == "failed"
            not_applicable += status == "not_applicable"
            seconds = time.perf_counter() - start
            pending.append((model_id, m.name, m.version, value, seconds, status, error, details))
            pending_s += seconds
            if pending_s >= FLUSH_S:
                store.save_measurements(pending)
                pending, pending_s = [], 0.0
    finally:  # also on Ctrl-C or a worker's error: what was computed is kept
        if pending:
            store.save_measurements(pending)
    return 1, model_id, (failed, not_applicable)


def measure_zoo(model_ids: Iterable[str], store: Store, names: list[str], opts: RunOptions, *,
                plugins: Sequence[str] = (), seed: int = 0, timeout: float | None = None,
                retry_failed: bool = False, curvature_samples: int | None = None) -> dict[str, int]:
    """Compute every (model, measure) pair the store lacks at the measure's current version.

    ``retry_failed``: recompute the failed ones too (a not-applicable value is final, like an ok one).
    ``curvature_samples``: a seeded training subset for the curvature measures (None: the whole set)."""
    versions = {n: measures.REGISTRY.get(n).version for n in names}
    done = store.measured(("ok", "not_applicable") if retry_failed else ("ok", "failed", "not_applicable"))
    tasks, reused = [], 0
    for model_id in sorted(model_ids):
        missing = [n for n in names if (model_id, n, versions[n]) not in done]
        reused += len(names) - len(missing)
        if missing:
            tasks.append((str(store.root), model_id, missing, [str(Path(p).resolve()) for p in plugins], seed,
                          timeout, curvature_samples, opts))
    log.info("measures: %d values reused, %d to compute on %d models", reused,
             sum(len(t[2]) for t in tasks), len(tasks))
    failed = not_applicable = 0
    for _, _, (f, na) in parallel(_measure_task, tasks, opts.jobs, "measure", "model", [1] * len(tasks),
                                  opts.progress):
        failed, not_applicable = failed + f, not_applicable + na
    return {"reused": reused, "computed": sum(len(t[2]) for t in tasks), "failed": failed,
            "not_applicable": not_applicable}
