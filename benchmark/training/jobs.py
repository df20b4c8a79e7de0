"""Training a zoo into a store: the models the store lacks, split into tasks for the worker processes.

Each task writes its models to the store as they finish, so an interrupted run loses at most the tasks in
flight and a rerun trains only what is missing.
"""
from __future__ import annotations

import ctypes
import math
import os
from typing import Sequence

from benchmark.runtime import RunOptions, parallel, release_workers, set_threads
from benchmark.store import Store
from benchmark.training.history import Probe
from benchmark.training.loop import check_smallest_batch, train_model
from benchmark.training.shift import model_from_state, shift_metrics
from benchmark.training.stacked import group_stacks, train_many
from benchmark.zoo.datasets import DataBundle, cached_data
from benchmark.zoo.hparams import DatasetHP, HParams
from benchmark.zoo.shift import shifted_tests

SHIP_BYTES = 64 << 20  # a task's datasets up to this size travel with it (_bundles)
MMAP_THRESHOLD, TRIM_THRESHOLD = 64 << 20, 256 << 20  # a training worker's malloc settings (_reuse_freed_memory)


def _reuse_freed_memory() -> None:
    """Have this process's C allocator keep the memory torch frees and hand it out again, instead of mapping
    fresh pages from the system for each tensor of more than 128 KiB and giving them back when it is freed
    (glibc's default; ``mallopt``'s M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). Training allocates and frees the same
    few megabyte-sized tensors at every evaluation chunk and step, and each fresh mapping costs a page fault per
    4 KiB and zeroing: about a tenth of a stacked epoch's CPU time on a 2-core CPU. The values computed do not
    change (torch aligns every tensor to 64 bytes either way). Only for worker processes, which end after the
    stage; a no-op where the C library has no ``mallopt``."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _train_task(args) -> tuple[int, list[str]]:
    root, hps, opts, probes, shipped, parent = args
    if os.getpid() != parent:
        _reuse_freed_memory()
    set_threads(opts)
    store = Store(root)
    data = lambda d: shipped[d] if d in shipped else cached_data(d, opts.data_root, opts.download)
    if opts.vectorize and len(hps) > 1:
        results = train_many(list(hps), data, device=opts.device, probes=probes, test_schedule=opts.test_schedule,
                             keep=opts.keep)
    else:
        results = [train_model(hp, data(hp.dataset), device=opts.device, probes=probes,
                               test_schedule=opts.test_schedule, keep=opts.keep) for hp in hps]
    for r in results:
        bundle = data(r.hparams.dataset)
        model = model_from_state(r.hparams, r.final_state, bundle.in_shape, bundle.num_classes).to(opts.device)
        r.metrics.update(shift_metrics(model, r.hparams, r.metrics["train_error"], opts.data_root, opts.download,
                                       opts.device))
        store.save_model(r.hparams, r.init_state, r.final_state, r.metrics, r.history, r.snapshots)
    return len(hps), [r.hparams.model_id for r in results]


def _bundles(hps: Sequence[HParams], made: dict[DatasetHP, DataBundle]) -> dict[DatasetHP, DataBundle]:
    """The datasets a task trains on, as made here, when together they take at most ``SHIP_BYTES``: a worker
    then neither makes them again nor imports what making them needs (scikit-learn's subset split, about 1.5 s
    of a worker's start on 2 cores). Larger ones (image pools) the worker makes itself, once per process."""
    need = {hp.dataset: made[hp.dataset] for hp in hps}
    size = sum(t.numel() * t.element_size() for b in need.values()
               for t in (b.x_train, b.y_train, b.y_train_clean, b.x_test, b.y_test))
    return need if size <= SHIP_BYTES else {}


def split_tasks(hps: list[HParams], jobs: int) -> list[list[HParams]]:
    """Split the models into training tasks: whole vectorizable stacks while there are at least as many
    stacks as workers (splitting a stack only shrinks its vectorization), otherwise stacks cut so that every
    worker gets a piece. Largest estimated cost first (members × width² × training-set size), so the
    workers finish together."""
    stacks = group_stacks(hps)
    out = []
    for stack in stacks:
        pieces = 1 if len(stacks) >= jobs else max(1, min(len(stack), math.ceil(jobs / len(stacks))))
        size = math.ceil(len(stack) / pieces)
        out += [stack[i:i + size] for i in range(0, len(stack), size)]
    cost = lambda t: len(t) * t[0].model.width ** 2 * t[0].dataset.n_train
    return sorted(out, key=cost, reverse=True)


def train_zoo(hps: list[HParams], store: Store, opts: RunOptions, probes: Sequence[Probe] = ()) -> dict[str, int]:
    """Train every model of ``hps`` that the store does not hold yet, each epoch's history row filled by
    ``probes``. Returns counts."""
    have = store.model_ids()
    todo = [hp for hp in hps if hp.model_id not in have]
    if not todo:
        return {"reused": len(hps), "trained": 0}
    # missing files or impossible sizes fail here, not in a worker
    made = {d: cached_data(d, opts.data_root, opts.download) for d in dict.fromkeys(hp.dataset for hp in todo)}
    for d in made:  # the shifted test sets are built once, here, and read from disk by the workers
        shifted_tests(d, opts.data_root, opts.download)
    for hp in todo:  # and so does a model that cannot take a step on its smallest minibatch
        check_smallest_batch(hp, made[hp.dataset].in_shape, made[hp.dataset].num_classes)
    tasks = split_tasks(todo, opts.jobs) if opts.vectorize else [[hp] for hp in todo]
    tasks = [(str(store.root), tuple(t), opts, tuple(probes), _bundles(t, made), os.getpid()) for t in tasks]
    for _ in parallel(_train_task, tasks, opts.jobs, "train", "model", [len(t[1]) for t in tasks], opts.progress):
        pass
    if opts.jobs > 1 and len(tasks) > 1:
        release_workers()
    return {"reused": len(hps) - len(todo), "trained": len(todo)}
