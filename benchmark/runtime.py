"""Operational settings and the worker pool: never part of a model's identity.

Work is split into tasks that run in ``jobs`` worker processes (joblib/loky); each worker uses
``cores // jobs`` torch threads. Every process that runs genbench work for another one (a pool worker, a job
of Hydra's joblib or submitit launcher) ends when its parent does, even after ``kill -9`` of the parent, so
an interrupted run never leaves training behind while its rerun starts.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from benchmark.zoo.hparams import DEFAULT_ROOT

PARENT_POLL_S = 0.5
_bound_to: int | None = None


@dataclass(frozen=True)
class RunOptions:
    """Operational settings (``run.*`` and the dataset's location)."""
    jobs: int = 1
    threads: int | None = None  # torch threads per worker (None: cores // jobs)
    device: str = "cpu"
    vectorize: bool = True
    progress: bool = True
    data_root: str = DEFAULT_ROOT
    download: bool = False
    on_corrupt: str = "retrain"  # a corrupt checkpoint: "retrain" the model, "skip" it, or "fail"
    test_schedule: str = "log"  # epochs that evaluate the test set (benchmark.training.history.evaluates_test)
    keep: tuple[float, ...] = ()  # fractions of the epochs whose weights are kept (early prediction)
    isolate: bool = True  # measures run in isolated worker processes (False: in this process, for a debugger)


def set_threads(opts: RunOptions) -> None:
    """torch threads of this process: ``run.threads``, or the cores divided among the workers."""
    torch.set_num_threads(opts.threads or max(1, (os.cpu_count() or 1) // max(1, opts.jobs)))


def bind_to_parent() -> None:
    """End this process (exit status 1) as soon as its parent is gone. Idempotent.

    A daemon thread polls ``os.getppid()``: when the parent dies the process is re-parented, so the value
    changes. Store writes are atomic, so ending at any point loses only the work in flight.
    """
    global _bound_to
    parent = os.getppid()
    if _bound_to is not None or parent <= 1:
        return
    _bound_to = parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="genbench-parent-watch", daemon=True).start()


def _in_worker(fn: Callable, parent: int, task):
    if os.getpid() != parent:
        bind_to_parent()
    return fn(task)


def release_workers() -> None:
    """End joblib's reusable worker processes, which would otherwise idle for minutes holding their memory (after
    training: the measures run in workers of their own, ``benchmark.measuring.isolation``)."""
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def parallel(fn: Callable, tasks: Sequence, jobs: int, desc: str, unit: str, weights: Sequence[int],
             progress: bool) -> Iterator:
    """``fn(task)`` for every task, yielded in order of completion, in ``jobs`` worker processes, with a
    progress bar advanced by each result's first element (counted in ``weights``)."""
    bar = tqdm(total=sum(weights), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            results = (fn(t) for t in tasks)
        else:
            me = os.getpid()
            results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
                delayed(_in_worker)(fn, me, t) for t in tasks)
        for out in results:
            bar.update(out[0])
            yield out
    finally:
        bar.close()
