"""Measuring a stored zoo: every (model, measure) pair the store lacks, one task per group of up to
``GROUP_SIZE`` models that share a ``group_key`` in the workers (so that intermediates with a many-model form,
such as the variance–flatness continuation, are computed for the whole group at once).

The workers are isolated (``benchmark.measuring.isolation``): a measure that ends or crashes its process is
recorded as failed and the others go on. Each value reaches this process as soon as it is computed and is stored
here, in one transaction per second of measure time (cheap measures would otherwise cost more to write than to
compute), so an interrupted run loses at most that second's work.

What a measure can do wrong, and what is recorded (the others go on in every case):

* raises, returns NaN/inf, runs past its time budget, ends its process (``sys.exit``, ``os._exit``, a signal),
  raises ``KeyboardInterrupt``: ``failed``, with what happened;
* returns details that cannot be stored (not JSON, larger than ``MAX_DETAILS_BYTES``): ``failed``, with why;
* changes its inputs in place (the model, the data, an intermediate): ``failed``, and the inputs are put back
  for the measures after it (``measures.Context.protect``);
* raises ``NotApplicable`` (its quantity is undefined for the model): ``not_applicable`` with the reason, which
  is not a failure.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

import measures
from benchmark.measuring import isolation
from benchmark.measuring.context import Trained
from benchmark.measuring.many import Member, costs
from benchmark.runtime import RunOptions, set_threads
from benchmark.store import CheckpointError, Measurement, Store, jsonable
from benchmark.zoo.hparams import HParams, stack_key
from measures.plugins import load_all

log = logging.getLogger("genbench")


FLUSH_S = 1.0  # values are written together once this much measure time has accumulated (one transaction)
MAX_DETAILS_BYTES = 1 << 20  # a measure's details (JSON) larger than this are not stored: the measure fails


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
    that raises (``KeyboardInterrupt`` and ``SystemExit`` included), returns a non-finite value or details that
    cannot be stored, changes its inputs in place or runs past ``timeout`` is ``failed`` with its message; one that
    raises ``NotApplicable`` is ``not_applicable``. The inputs it changed are put back (``Context.protect``) and the
    working directory it left is restored. The seconds are its own model's share of what it computed (``ctx``'s
    time lent to and charged by its group: ``benchmark.measuring.many``)."""
    lent, charged = costs(ctx)
    value, status, error, details = None, "ok", None, {}
    cwd = os.getcwd()
    with run_on.protect() as changed:  # its own cost (guard_ms_per_measure in genbench perf) is not the measure's
        start = time.perf_counter()
        try:
            with time_limit(timeout):
                out = m(run_on)
            value, details = out.value, out.details
        except measures.NotApplicable as why:
            status, error = "not_applicable", str(why)
        except SystemExit as code:  # sys.exit() inside a measure ends the measure, not the run
            status, error = "failed", f"the measure ended its process with status {_exit_status(code.code)} (sys.exit)"
        except BaseException as err:  # noqa: BLE001 — a failing measure is recorded, the others go on
            status, error = "failed", f"{type(err).__name__}: {err}"
            details = {"traceback": traceback.format_exc(limit=-3)}
        elapsed = time.perf_counter() - start
    if os.getcwd() != cwd:
        os.chdir(cwd)
    if changed:
        status, value, error = "failed", None, (f"the measure changed its inputs in place ({', '.join(changed)}); they "
                                                f"were put back for the measures after it")
    elif status == "ok" and not math.isfinite(value):
        status, error, value = "failed", f"returned a non-finite value ({value})", None
    try:
        details = storable(details)
    except ValueError as err:
        status, value, error, details = "failed", None, f"returned details that cannot be stored: {err}", {}
    lent_now, charged_now = costs(ctx)
    seconds = max(0.0, elapsed - (lent_now - lent) + (charged_now - charged))
    return value, status, error, details, seconds


def _exit_status(code: Any) -> int:
    """The status ``sys.exit(code)`` would end a process with: 0 for None, the number, or 1 for a message."""
    return 0 if code is None else code if isinstance(code, int) else 1


def storable(details: Any) -> dict:
    """A measure's details as they will be stored: JSON types only (tensors and NumPy values become numbers,
    non-finite floats None: ``benchmark.store.jsonable``), at most ``MAX_DETAILS_BYTES``. Anything else is a
    ``ValueError`` saying why."""
    if not isinstance(details, dict):
        raise ValueError(f"details must be a dict, got {type(details).__name__}")
    try:
        plain = jsonable(details)
        text = json.dumps(plain, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise ValueError(str(err)) from None
    if len(text) > MAX_DETAILS_BYTES:
        raise ValueError(f"{len(text):,} bytes of JSON, more than the {MAX_DETAILS_BYTES:,} a value's details may hold")
    return plain


GROUP_SIZE = 9  # models measured together in one task, at most: half a stack of the default zoo, so that the
# workers get enough tasks to finish together (the stacked continuation gains little beyond this on a CPU)


def group_key(hp: HParams) -> tuple:
    """What the models of one measuring task share, so that the measures' many-model forms (``measures.context.
    many_form``) can take them together: a stack of the trainer (``stack_key``: dataset, training-set size,
    architecture, depth, width, bias, batch size) with one optimizer."""
    return stack_key(hp) + (hp.optimizer.name,)


def setup_worker(opts: RunOptions, plugins: Sequence[str]) -> None:
    """Once in each measure worker: its torch threads and the plugins' measures."""
    set_threads(opts)
    load_all(list(plugins))


def worker_pool(opts: RunOptions, plugins: Sequence[str] = ()) -> isolation.Pool:
    """The isolated workers (``opts.jobs`` of them) that compute the measures, with the plugin files loaded."""
    return isolation.Pool(opts.jobs, (setup_worker, (opts, [str(Path(p).resolve()) for p in plugins])), opts.isolate)


def by_model(items: Sequence[tuple]) -> list[tuple[str, list]]:
    """Consecutive items grouped by their first element (the model id), in order: [(model_id, [rest, ...])]."""
    out: list[tuple[str, list]] = []
    for model_id, *rest in items:
        if not out or out[-1][0] != model_id:
            out.append((model_id, []))
        out[-1][1].append(rest[0] if len(rest) == 1 else tuple(rest))
    return out


def _measure_items(common: tuple, items: Sequence[tuple[str, str]]) -> Iterator[tuple]:
    """In a worker: the (model_id, measure) items of a group of models (``group_key``), model after model, one
    stored row each. The models' Contexts are grouped (``Member.group``), so an intermediate with a many-model form
    is computed for all of them by the first measure that needs it, and each measure's recorded time is its own
    model's share of it (``Member.lent``, ``Member.charged``)."""
    root, seed, timeout, curvature_samples, opts, hparams, replicates = common
    store = Store(root, readonly=True)
    loaded, unreadable = [], {}
    for model_id, names in by_model(items):
        needs = {need for name in names for need in measures.REGISTRY.get(name).needs}  # what to load
        try:
            trained = Trained.from_store(store, hparams[model_id], opts, replicates.get(model_id, ()), needs)
        except CheckpointError as err:
            unreadable[model_id] = str(err)
            trained = None
        loaded.append((model_id, names, trained,
                       trained and trained.context(seed, curvature_samples=curvature_samples)))
    Member.group([ctx for *_, ctx in loaded if ctx is not None])
    for model_id, names, trained, ctx in loaded:
        if model_id in unreadable:
            yield from (_failed(model_id, name, unreadable[model_id]) for name in names)
            continue
        oracle_ctx = None
        for name in names:
            m = measures.REGISTRY.get(name)
            if m.oracle and oracle_ctx is None:
                oracle_ctx = trained.context(seed, oracle=True, curvature_samples=curvature_samples)
            value, status, error, details, seconds = compute(m, ctx, oracle_ctx if m.oracle else ctx, timeout)
            yield Measurement(model_id, m.name, m.version, value, seconds, status, error, details)
        ctx.leave()


def _failed(model_id: str, name: str, why: str) -> Measurement:
    """The stored row of a measure that could not be computed on a model."""
    return Measurement(model_id, name, measures.REGISTRY.get(name).version, None, 0.0, "failed", why, {})


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


def measure_zoo(models: Iterable[HParams | str], store: Store, names: list[str], opts: RunOptions, *,
                plugins: Sequence[str] = (), seed: int = 0, timeout: float | None = None,
                retry_failed: bool = False, curvature_samples: int | None = None,
                pool: isolation.Pool | None = None) -> dict[str, int]:
    """Compute every (model, measure) pair the store lacks at the measure's current version, on ``models`` (their
    hyperparameters, which the workers receive with the task; or their ids, then read from the store).

    ``retry_failed``: recompute the failed ones too (a not-applicable value is final, like an ok one).
    ``curvature_samples``: a seeded training subset for the curvature measures (None: the whole set).
    ``pool``: the workers to compute them in (``worker_pool``; default: a pool of this call's own)."""
    versions = {n: measures.REGISTRY.get(n).version for n in names}
    done = store.measured(("ok", "not_applicable") if retry_failed else ("ok", "failed", "not_applicable"))
    groups: dict[tuple, list[tuple[str, list[str]]]] = {}
    reused = 0
    hps = {hp.model_id: hp for hp in (m if isinstance(m, HParams) else store.model_record(m)[0] for m in models)}
    for model_id in sorted(hps):
        missing = [n for n in names if (model_id, n, versions[n]) not in done]
        reused += len(names) - len(missing)
        if missing:
            groups.setdefault(group_key(hps[model_id]), []).append((model_id, missing))
    missing_names = {n for group in groups.values() for _, missing in group for n in missing}
    needs_replicates = any("replicates" in measures.REGISTRY.get(n).needs for n in missing_names)
    siblings = replicate_ids(store, [m for g in groups.values() for m, _ in g]) if needs_replicates else {}
    # the most expensive first (width² · depth · train size ∝ a full-set pass), so the workers finish together
    order = sorted(groups, key=lambda k: -(k[4] ** 2 * k[3] * k[1]))
    chunks = [chunk for k in order for chunk in (groups[k][i:i + GROUP_SIZE] for i in range(0, len(groups[k]),
                                                                                           GROUP_SIZE))]
    tasks = [isolation.Task(_measure_items, (str(store.root.resolve()), seed, timeout, curvature_samples, opts,
                                             {m: hps[m] for m, _ in chunk}, {m: siblings.get(m, []) for m, _ in chunk}),
                            tuple((m, n) for m, missing in chunk for n in missing)) for chunk in chunks]
    computed = sum(len(t.items) for t in tasks)
    log.info("measures: %d values reused, %d to compute on %d models", reused, computed, sum(map(len, chunks)))
    iso = isolation.Isolation(measure_of=lambda item: item[1],
                              failed=lambda item, why: _failed(*item, why),
                              hard_timeout=hard_timeout(timeout))
    counts = collections.Counter(row.status for row in stored_rows(tasks, iso, store.save_measurements, "measure",
                                                                   lambda r: r.seconds, opts, plugins, pool))
    return {"reused": reused, "computed": computed, "failed": counts["failed"],
            "not_applicable": counts["not_applicable"]}


def hard_timeout(timeout: float | None) -> float | None:
    """How long a worker may go without reporting a result before it is killed: twice a measure's time budget plus
    a minute (loading a task's models comes before its first result); None without a budget."""
    return None if not timeout else 2 * float(timeout) + 60.0


def stored_rows(tasks: Sequence[isolation.Task], iso: isolation.Isolation, save, desc: str, seconds,
                opts: RunOptions, plugins: Sequence[str], pool: isolation.Pool | None) -> Iterator[tuple]:
    """Every row of ``tasks``, computed in ``pool`` (or in a pool of this call's own, ``worker_pool``) and stored
    with ``save`` as they come (``write_rows``)."""
    with contextlib.nullcontext(pool) if pool is not None else worker_pool(opts, plugins) as workers:
        yield from write_rows(workers.run(tasks, iso), save, tasks, desc, opts.progress, seconds)


def write_rows(rows: Iterator[tuple], save, tasks: Sequence[isolation.Task], desc: str, progress: bool,
               seconds) -> Iterator[tuple]:
    """Pass ``rows`` through, storing them with ``save`` once ``FLUSH_S`` seconds of measure time (``seconds(row)``)
    have accumulated, and at the end (also on Ctrl-C or an error: what was computed is kept), with a progress bar
    in values. A row of None is an item with nothing to store; it is passed through."""
    bar = tqdm(total=sum(len(t.items) for t in tasks), desc=desc, unit="value", disable=not progress,
               dynamic_ncols=True)
    pending: list[tuple] = []
    pending_s = 0.0
    try:
        for row in rows:
            if row is not None:
                pending.append(row)
                pending_s += seconds(row)
                if pending_s >= FLUSH_S:
                    save(pending)
                    pending, pending_s = [], 0.0
            bar.update(1)
            yield row
    finally:
        if pending:
            save(pending)
        bar.close()
