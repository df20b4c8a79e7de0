"""What running the measures isolated costs (``benchmark.measuring.isolation``): every measure on the same models,
computed by one isolated worker process and in genbench's own process (``run.isolate=false``), so that only the
isolation differs, in alternating order on fresh copies of a trained store; and what the guard that keeps a measure
from changing the next one's inputs (``measures.Context.protect``) costs per measure, which both ways pay."""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch

import measures
from benchmark.measuring.context import Trained
from benchmark.measuring.jobs import GROUP_SIZE, measure_zoo, worker_pool
from benchmark.runtime import RunOptions
from benchmark.store import Store


def isolation_cost(store_root: str, model_ids: list[str], opts: RunOptions, rounds: int) -> dict:
    """Seconds to measure ``model_ids`` (at most two measuring groups) with every registered measure, isolated and
    in process, the best of ``rounds`` each in alternating order, and their ratio (``isolation_overhead``)."""
    ids = sorted(model_ids)[:2 * GROUP_SIZE]
    names = measures.REGISTRY.names()
    best = {True: float("inf"), False: float("inf")}
    isolated, in_process = (dataclasses.replace(opts, jobs=1, isolate=flag, progress=False) for flag in (True, False))
    # one pool for every isolated round, as `genbench measure` keeps one for its stages: its worker's caches are
    # as warm as this process's are for the in-process rounds, which set this process's torch threads as a worker's
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp, worker_pool(isolated) as pool:
        for r in range(rounds):
            for isolate in ((True, False) if r % 2 == 0 else (False, True)):
                root = Path(tmp) / f"{r}-{isolate}"
                shutil.copytree(store_root, root, ignore=shutil.ignore_patterns("hydra"))
                store = Store(root)
                store.drop_measurements()
                start = time.perf_counter()
                counts = measure_zoo(ids, store, names, isolated if isolate else in_process,
                                     pool=pool if isolate else None)
                best[isolate] = min(best[isolate], time.perf_counter() - start)
                shutil.rmtree(root)
    torch.set_num_threads(threads)
    trained = Trained.from_store(Store(store_root), ids[0], opts)
    return {"models": len(ids), "values": counts["computed"], "isolated_s": best[True], "in_process_s": best[False],
            "isolation_overhead": best[True] / best[False], "guard_ms_per_measure": guard_ms(trained)}


def guard_ms(trained: Trained, reps: int = 200) -> float:
    """Milliseconds of one ``Context.protect`` around a measure, on a Context that holds every intermediate the
    registry computes (the most it has to check)."""
    ctx = trained.context()
    for m in measures.REGISTRY:
        if not m.oracle:
            try:
                m(ctx)
            except Exception:  # noqa: BLE001 — only the intermediates it leaves matter here
                pass
    start = time.perf_counter()
    for _ in range(reps):
        with ctx.protect():
            pass
    return (time.perf_counter() - start) / reps * 1e3
