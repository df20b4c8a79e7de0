"""Measuring a stored zoo: every (model, measure) pair the store lacks, one task per group of up to
``GROUP_SIZE`` models that share a ``group_key`` in the workers (so that intermediates with a many-model form,
such as the variance–flatness continuation, are computed for the whole group at once).

Values are stored as they are computed, in one transaction per second of measure time (cheap measures would
otherwise cost more to write than to compute), so an interrupted run loses at most that second's work. A
measure that raises, returns NaN/inf or runs past its time budget is recorded as failed with its message,
and the others go on. A measure that raises ``NotApplicable`` (its quantity is undefined for the model) is
recorded as not_applicable with the reason; that is not a failure.
"""
from __future__ import annotations

import json
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
from benchmark.zoo.hparams import HParams
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


def compute(m: measures.Measure, ctx: measures.Context, run_on: measures.Context, timeout: float | None
            ) -> tuple[float | None, str, str | None, dict, float]:
    """One measure on ``run_on`` (``ctx``, or its oracle twin): (value, status, error, details, seconds). A measure
    that raises, returns a non-finite value or runs past ``timeout`` is ``failed`` with its message; one that
    raises ``NotApplicable`` is ``not_applicable``. The seconds are its own model's share of what it computed
    (``ctx``'s time lent to and charged by its group: ``Context.shared``)."""
    start, lent, charged = time.perf_counter(), ctx.lent, ctx.charged
    value, status, error, details = None, "ok", None, {}
    try:
        with time_limit(timeout):
            out = m(run_on)
        value, details = out.value, dict(out.details)
        if not math.isfinite(value):
            status, error, value = "failed", f"returned a non-finite value ({value})", None
    except measures.NotApplicable as why:
        status, error = "not_applicable", str(why)
    except Exception as err:  # a failing measure is recorded, the others go on
        status, error = "failed", f"{type(err).__name__}: {err}"
        details = {"traceback": traceback.format_exc(limit=-3)}
    seconds = max(0.0, time.perf_counter() - start - (ctx.lent - lent) + (ctx.charged - charged))
    return value, status, error, details, seconds


GROUP_SIZE = 9  # models measured together in one task, at most: half a stack of the default zoo, so that the
# workers get enough tasks to finish together (the stacked continuation gains little beyond this on a CPU)


def group_key(hp: HParams) -> tuple:
    """What the models of one measuring task share, so that the measures' many-model forms (``measures.context.
    many_form``) can take them together: (dataset, training-set size, architecture, depth, width, bias, batch
    size, optimizer)."""
    m = hp.model
    return (hp.dataset.name, hp.dataset.n_train, m.name, m.depth, m.width, m.bias, hp.train.batch_size,
            hp.optimizer.name)


def _measure_task(args) -> tuple[int, str, tuple[int, int]]:
    """Compute the missing measures of a group of models (``group_key``), model after model; each result is
    stored as soon as it exists. The models' Contexts are grouped (``Context.group``), so an intermediate with
    a many-model form is computed for all of them by the first measure that needs it, and each measure's
    recorded time is its own model's share of it (``Context.lent``, ``Context.charged``)."""
    root, models, plugins, seed, timeout, curvature_samples, opts, replicates = args
    set_threads(opts)
    load_all(plugins)
    store = Store(root)
    failed = not_applicable = 0
    loaded = []
    for model_id, names in models:
        try:
            trained = Trained.from_store(store, model_id, opts, replicates.get(model_id, ()))
        except CheckpointError as err:
            store.save_measurements([(model_id, name, measures.REGISTRY.get(name).version, None, 0.0, "failed",
                                      str(err), None) for name in names])
            failed += len(names)
            continue
        loaded.append((model_id, names, trained, trained.context(seed, curvature_samples=curvature_samples)))
    measures.Context.group([ctx for *_, ctx in loaded])
    pending: list[tuple] = []  # values not yet written: at most FLUSH_S seconds of work
    pending_s = 0.0
    try:
        for model_id, names, trained, ctx in loaded:
            oracle_ctx = None
            for name in names:
                m = measures.REGISTRY.get(name)
                if m.oracle and oracle_ctx is None:
                    oracle_ctx = trained.context(seed, oracle=True, curvature_samples=curvature_samples)
                value, status, error, details, seconds = compute(m, ctx, oracle_ctx if m.oracle else ctx, timeout)
                failed += status == "failed"
                not_applicable += status == "not_applicable"
                pending.append((model_id, m.name, m.version, value, seconds, status, error, details))
                pending_s += seconds
                if pending_s >= FLUSH_S:
                    store.save_measurements(pending)
                    pending, pending_s = [], 0.0
            ctx.leave()
    finally:  # also on Ctrl-C or a worker's error: what was computed is kept
        if pending:
            store.save_measurements(pending)
    return len(models), models[0][0], (failed, not_applicable)


def replicate_ids(store: Store, model_ids: Iterable[str]) -> dict[str, list[str]]:
    """For each of ``model_ids``, the other stored models whose hyperparameters differ from its own only in the
    seed (its seed replicates), sorted."""
    by_config: dict[str, list[str]] = {}
    wanted = set(model_ids)
    for model_id in sorted(store.model_ids()):
        identity = dict(store.model_record(model_id)[0].identity())
        identity.pop("seed")
        by_config.setdefault(json.dumps(identity, sort_keys=True, default=str), []).append(model_id)
    return {m: [o for o in ids if o != m] for ids in by_config.values() for m in ids if m in wanted}


def measure_zoo(model_ids: Iterable[str], store: Store, names: list[str], opts: RunOptions, *,
                plugins: Sequence[str] = (), seed: int = 0, timeout: float | None = None,
                retry_failed: bool = False, curvature_samples: int | None = None) -> dict[str, int]:
    """Compute every (model, measure) pair the store lacks at the measure's current version.

    ``retry_failed``: recompute the failed ones too (a not-applicable value is final, like an ok one).
    ``curvature_samples``: a seeded training subset for the curvature measures (None: the whole set)."""
    versions = {n: measures.REGISTRY.get(n).version for n in names}
    done = store.measured(("ok", "not_applicable") if retry_failed else ("ok", "failed", "not_applicable"))
    groups: dict[tuple, list[tuple[str, list[str]]]] = {}
    reused = 0
    for model_id in sorted(model_ids):
        missing = [n for n in names if (model_id, n, versions[n]) not in done]
        reused += len(names) - len(missing)
        if missing:
            groups.setdefault(group_key(store.model_record(model_id)[0]), []).append((model_id, missing))
    plugin_paths = [str(Path(p).resolve()) for p in plugins]
    needs_replicates = any("replicates" in measures.REGISTRY.get(n).needs for n in names)
    siblings = replicate_ids(store, [m for g in groups.values() for m, _ in g]) if needs_replicates else {}
    # the most expensive first (width² · depth · train size ∝ a full-set pass), so the workers finish together
    order = sorted(groups, key=lambda k: -(k[4] ** 2 * k[3] * k[1]))
    tasks = [(str(store.root), chunk, plugin_paths, seed, timeout, curvature_samples, opts,
              {m: siblings.get(m, []) for m, _ in chunk})
             for k in order for chunk in (groups[k][i:i + GROUP_SIZE] for i in range(0, len(groups[k]), GROUP_SIZE))]
    computed = sum(len(missing) for t in tasks for _, missing in t[1])
    log.info("measures: %d values reused, %d to compute on %d models", reused, computed,
             sum(len(t[1]) for t in tasks))
    failed = not_applicable = 0
    for _, _, (f, na) in parallel(_measure_task, tasks, opts.jobs, "measure", "model", [len(t[1]) for t in tasks],
                                  opts.progress):
        failed, not_applicable = failed + f, not_applicable + na
    return {"reused": reused, "computed": computed, "failed": failed, "not_applicable": not_applicable}
