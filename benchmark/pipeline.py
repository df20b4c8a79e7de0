"""Orchestration: train (or reuse) a zoo into the store, then compute (or reuse) every measure on it.

Work is split into tasks that each write their own results to the store as they finish, so an
interrupted run loses at most the tasks in flight and a rerun redoes only what is missing. Tasks run in
``jobs`` worker processes (joblib/loky); each worker uses ``cpu_count // jobs`` torch threads.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from benchmark.data import DataBundle, make_data
from benchmark.hparams import DatasetHP, HParams
from benchmark.models import build_model
from benchmark.store import CheckpointError, Store

log = logging.getLogger("genbench")


@dataclass(frozen=True)
class RunOptions:
    """Operational settings: never part of a model's identity."""
    jobs: int = 1
    threads: int | None = None  # torch threads per worker (None: cores // jobs)
    device: str = "cpu"
    vectorize: bool = True
    progress: bool = True
    data_root: str = "~/.cache/genbench/data"
    download: bool = False
    on_corrupt: str = "retrain"  # a corrupt checkpoint: "retrain" the model, "skip" it, or "fail"


def _set_threads(opts: "RunOptions") -> None:
    """torch threads per worker: ``run.threads``, or the cores divided among the workers."""
    torch.set_num_threads(opts.threads or max(1, (os.cpu_count() or 1) // max(1, opts.jobs)))


@functools.lru_cache(maxsize=16)
def _data(hp: DatasetHP, root: str, download: bool) -> DataBundle:
    return make_data(hp, root, download)


def _parallel(fn, tasks: Sequence, jobs: int, desc: str, unit: str, weights: Sequence[int], progress: bool):
    """Run ``fn(task)`` for every task, in order of completion, with a progress bar counted in ``weights``."""
    bar = tqdm(total=sum(weights), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            results = (fn(t) for t in tasks)
        else:
            results = Parallel(n_jobs=jobs, return_as="generator_unordered")(delayed(fn)(t) for t in tasks)
        for out in results:
            bar.update(out[0])
            yield out
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------------ training
def _train_task(args) -> tuple[int, list[str]]:
    root, hps, opts = args
    _set_threads(opts)
    store = Store(root)
    data = lambda d: _data(d, opts.data_root, opts.download)
    if opts.vectorize and len(hps) > 1:
        from benchmark.vtrain import train_many
        results = train_many(list(hps), data, device=opts.device)
    else:
        from benchmark.train import train_model
        results = [train_model(hp, data(hp.dataset), device=opts.device) for hp in hps]
    for r in results:
        store.save_model(r.hparams, r.init_state, r.final_state, r.metrics, r.history)
    return len(hps), [r.hparams.model_id for r in results]


def _stacks(hps: list[HParams], jobs: int) -> list[list[HParams]]:
    """Split the models into training tasks: whole vectorizable stacks while there are at least as many
    stacks as workers (splitting a stack only shrinks its vectorization), otherwise stacks cut so that every
    worker gets a piece. Largest estimated cost first (members × width² × training-set size), so the
    workers finish together."""
    from benchmark.vtrain import group_stacks
    stacks = group_stacks(hps)
    out = []
    for stack in stacks:
        pieces = 1 if len(stacks) >= jobs else max(1, min(len(stack), math.ceil(jobs / len(stacks))))
        size = math.ceil(len(stack) / pieces)
        out += [stack[i:i + size] for i in range(0, len(stack), size)]
    cost = lambda t: len(t) * t[0].model.width ** 2 * t[0].dataset.train_size
    return sorted(out, key=cost, reverse=True)


def train_zoo(hps: list[HParams], store: Store, opts: RunOptions) -> dict[str, int]:
    """Train every model of ``hps`` that the store does not hold yet. Returns counts."""
    have = store.model_ids()
    todo = [hp for hp in hps if hp.model_id not in have]
    log.info("zoo: %d models, %d reused from %s, %d to train", len(hps), len(hps) - len(todo), store.root,
             len(todo))
    if not todo:
        return {"reused": len(hps), "trained": 0}
    tasks = _stacks(todo, opts.jobs) if opts.vectorize else [[hp] for hp in todo]
    tasks = [(str(store.root), tuple(t), opts) for t in tasks]
    for _ in _parallel(_train_task, tasks, opts.jobs, "train", "model", [len(t[1]) for t in tasks], opts.progress):
        pass
    return {"reused": len(hps) - len(todo), "trained": len(todo)}


# ----------------------------------------------------------------------------------------------- measuring
class MeasureTimeout(TimeoutError):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise ``MeasureTimeout`` after ``seconds`` (SIGALRM; only enforceable in a main thread)."""
    import threading
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


def load_models(store: Store, model_id: str, opts: RunOptions):
    """(hparams, history, metrics, trained model, initial model, data) of a stored model."""
    hp, metrics, history = store.model_record(model_id)
    data = _data(hp.dataset, opts.data_root, opts.download)
    init_state, final_state = store.load_states(model_id)
    model = build_model(hp.model, data.in_shape, data.num_classes)
    model.load_state_dict(final_state)
    init = build_model(hp.model, data.in_shape, data.num_classes)
    init.load_state_dict(init_state)
    return hp, history, metrics, model.to(opts.device), init.to(opts.device), data


def _measure_task(args) -> tuple[int, str, int]:
    """Compute the missing measures of one model; each result is stored as soon as it exists."""
    root, model_id, names, plugins, seed, timeout, opts = args
    import measures
    from measures.context import Context
    from measures.plugins import load_all
    _set_threads(opts)
    load_all(plugins)
    store = Store(root)
    try:
        hp, history, _, model, init, data = load_models(store, model_id, opts)
    except CheckpointError as err:
        for name in names:
            m = measures.REGISTRY.get(name)
            store.save_measurement(model_id, name, m.version, None, 0.0, "failed", str(err))
        return 1, model_id, len(names)
    common = dict(init_model=init, train=(data.x_train, data.y_train), hparams=hp.flat(), history=history,
                  seed=seed, extras={"mislabeled": data.mislabeled})
    ctx = Context(model, **common)
    oracle_ctx = None
    failed = 0
    for name in names:
        m = measures.REGISTRY.get(name)
        if m.oracle and oracle_ctx is None:
            oracle_ctx = Context(model, test=(data.x_test, data.y_test), **common)
        start = time.perf_counter()
        value, status, error, details = None, "ok", None, {}
        try:
            with time_limit(timeout):
                out = m(oracle_ctx if m.oracle else ctx)
            value, details = out.value, dict(out.details)
            if not math.isfinite(value):
                status, error, value = "failed", f"returned a non-finite value ({value})", None
        except Exception as err:  # a failing measure is recorded, the others go on
            status, error = "failed", f"{type(err).__name__}: {err}"
            details = {"traceback": traceback.format_exc(limit=-3)}
        failed += status == "failed"
        store.save_measurement(model_id, m.name, m.version, value, time.perf_counter() - start, status, error,
                               details)
    return 1, model_id, failed


def measure_zoo(model_ids: Iterable[str], store: Store, names: list[str], opts: RunOptions, *,
                plugins: Sequence[str] = (), seed: int = 0, timeout: float | None = None,
                retry_failed: bool = False) -> dict[str, int]:
    """Compute every (model, measure) pair the store lacks at the measure's current version."""
    import measures
    versions = {n: measures.REGISTRY.get(n).version for n in names}
    done = store.measured(("ok",) if retry_failed else ("ok", "failed"))
    tasks, reused = [], 0
    for model_id in sorted(model_ids):
        missing = [n for n in names if (model_id, n, versions[n]) not in done]
        reused += len(names) - len(missing)
        if missing:
            tasks.append((str(store.root), model_id, missing, [str(Path(p).resolve()) for p in plugins], seed,
                          timeout, opts))
    log.info("measures: %d values reused, %d to compute on %d models", reused,
             sum(len(t[2]) for t in tasks), len(tasks))
    failed = 0
    for _, _, f in _parallel(_measure_task, tasks, opts.jobs, "measure", "model", [1] * len(tasks), opts.progress):
        failed += f
    return {"reused": reused, "computed": sum(len(t[2]) for t in tasks), "failed": failed}


def prune_corrupt(store: Store, model_ids: Iterable[str], on_corrupt: str) -> list[str]:
    """Check the checkpoints of ``model_ids``; a corrupt one is deleted (to be retrained), skipped or fatal."""
    bad = []
    for model_id in model_ids:
        try:
            store.load_states(model_id)
        except CheckpointError as err:
            if on_corrupt == "fail":
                raise
            log.warning("%s — %s", err, "retraining it" if on_corrupt == "retrain" else "skipping it")
            bad.append(model_id)
            if on_corrupt == "retrain":
                store.delete_model(model_id)
    return bad
