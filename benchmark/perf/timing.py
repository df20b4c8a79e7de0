"""Timing and machine helpers of ``genbench perf``: best-of-k wall times, the ``torch.mm`` peak, the machine's
description, the peak memory of the process tree, and a time scaled by the peak (with the check of that model)."""
from __future__ import annotations

import logging
import math
import os
import platform
import resource
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.training.stacked import train_many
from benchmark.zoo.datasets import DataBundle, make_data
from benchmark.zoo.hparams import DatasetHP, HParams


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], Any], reps: int, device: torch.device) -> float:
    """Least wall time of ``reps`` calls of ``fn`` (after one untimed call)."""
    return _best_times([fn], reps, device)[0]


def _best_times(fns: list[Callable[[], Any]], reps: int, device: torch.device) -> list[float]:
    """Least wall time of each of ``fns`` over ``reps`` rounds that call every one in turn (after one untimed
    call each), so that a ratio of two is measured under the same conditions when the machine's speed drifts."""
    for fn in fns:
        fn()
    best = [math.inf] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "device": str(device), "load_average_start": list(os.getloadavg())}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def matmul_peak(device: torch.device, reps: int, threads: int | None = None) -> float:
    """Best fp32 GFLOP/s of ``torch.mm`` on two n×n matrices (n = 1024 on a CPU, with ``threads`` threads; 4096
    on a GPU, where TF32 stays off as torch's default)."""
    n, inner = (4096, 10) if device.type == "cuda" else (1024, 5)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seconds = _best_time(lambda: [torch.mm(a, b) for _ in range(inner)], reps, device) / inner
    finally:
        torch.set_num_threads(before)
    return 2 * n ** 3 / seconds / 1e9


REFERENCE_PEAK_GFLOPS = 70.0  # the torch.mm peak of the slow 2-core machine genbench run must suit


def scaled_to_peak(seconds: float, peak_gflops: float, threads: int,
                   reference: float = REFERENCE_PEAK_GFLOPS) -> dict:
    """A wall time as the work it took in units of the machine's speed: ``gflop_seconds`` = seconds × the
    ``torch.mm`` peak measured with it (GFLOP/s, on ``threads`` threads), and ``at_reference_s`` = that over a
    ``reference`` peak, the time on a machine whose peak is ``reference``. This assumes the time scales with the
    matmul peak, a fair first model where the work is mostly matmuls, as genbench's is on a CPU (training steps,
    the Hessian-vector products and perturbed copies of the measures); ``genbench perf``'s ``peak_elasticity``
    checks it on a slice of training."""
    return {"wall_s": seconds, "peak_gflops": peak_gflops, "peak_threads": threads,
            "gflop_seconds": seconds * peak_gflops, "reference_gflops": reference,
            "at_reference_s": seconds * peak_gflops / reference}


def _pss(pid: int, rss: int) -> int:
    """The proportional set size of ``pid`` in bytes (``/proc/<pid>/smaps_rollup``), or ``rss`` if unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss


class MemorySampler:
    """Peak memory (GiB) of this process and all its descendants, sampled every ``interval`` s from ``/proc``
    (Linux): the sum of their proportional set sizes (``smaps_rollup``'s Pss: a page shared by k processes counts
    1/k in each, so the sum is what the tree holds; the measure workers share the fork server's pages copy-on-write,
    which a sum of resident sets would count once per worker), or of their resident sets where Pss cannot be read.
    Elsewhere, the largest single resident set (``ru_maxrss``) of this process."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def tree_gib() -> float | None:
        try:
            parent: dict[int, int] = {}
            rss: dict[int, int] = {}
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    parent[int(entry.name)] = int(fields[1])
                    rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
                except (OSError, IndexError, ValueError):
                    continue
        except OSError:
            return None
        tree, frontier = {os.getpid()}, [os.getpid()]
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        return sum(_pss(p, rss.get(p, 0)) for p in tree) / 2 ** 30

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.tree_gib()
            if now is None:
                return
            self.peak = max(self.peak, now)
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.tree_gib() or 0.0,
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)  # KiB on Linux


@contextmanager
def _quiet() -> Iterator[None]:
    """genbench's INFO lines (one per stage) are for users of ``genbench run``, not for a timing report."""
    log = logging.getLogger("genbench")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def peak_elasticity(hps: list[HParams], device: torch.device, epochs: int, reps: int) -> dict:
    """Does the time follow the matmul peak? A slice of the zoo's training (``hps``, one stack, ``epochs`` epochs)
    and ``torch.mm`` (1024², fp32), each with 1 and with 2 threads, all four timed in the same alternating rounds
    (best kept): the elasticity log(t₁/t₂) / log(peak₂/peak₁) is 1 when the time is inversely proportional to the
    peak, 0 when the peak does not matter. It is left out (None, with the reason) where the second thread adds
    less than a tenth to the peak (the other core is busy), and on a GPU, where threads do not set the peak."""
    if device.type != "cpu":
        return {"skipped": f"threads do not set the peak of {device.type}"}
    hps = [hp.replace(**{"train.max_epochs": epochs}) for hp in hps]
    cache: dict[DatasetHP, DataBundle] = {}
    data = lambda d: cache[d] if d in cache else cache.setdefault(d, make_data(d))
    before, n, inner = torch.get_num_threads(), 1024, 5
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

    def with_threads(threads: int, work: Callable[[], Any]) -> Callable[[], Any]:
        def go():
            torch.set_num_threads(threads)
            try:
                work()
            finally:
                torch.set_num_threads(before)
        return go
    train = lambda: train_many(hps, data, device=device, probes=DEFAULT_PROBES)
    mm = lambda: [torch.mm(a, b) for _ in range(inner)]
    one, two, m1, m2 = _best_times([with_threads(1, train), with_threads(2, train), with_threads(1, mm),
                                    with_threads(2, mm)], max(2, reps), device)
    p1, p2 = 2 * n ** 3 * inner / m1 / 1e9, 2 * n ** 3 * inner / m2 / 1e9
    out = {"models": len(hps), "epochs": epochs, "slice_s": [one, two], "peak_gflops": [p1, p2],
           "time_ratio": one / two, "peak_ratio": p2 / p1, "elasticity": None}
    if p2 / p1 < 1.1:
        out["why"] = f"the second thread added {p2 / p1 - 1:.0%} to the peak: the other core is busy"
    else:
        out["elasticity"] = math.log(one / two) / math.log(p2 / p1)
    return out
