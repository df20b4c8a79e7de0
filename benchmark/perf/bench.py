"""``genbench perf``: how fast genbench is on this machine, measured in one run against its targets.

    genbench perf [--json leaderboard/perf.json] [--md leaderboard/perf.md] [--quick] [--device cpu|cuda]

1. **The pipeline, end to end** (the headline). ``benchmark.pipeline``'s train → measure → evaluate, as
   ``genbench run`` runs them (the configured workers, every registered measure, the statistics, tables, plots
   and page), on fresh stores: the default zoo, a quarter of it (``zoo.num_shards=4``) for the scaling slope,
   and the model mix of the zoo before replicates (``LEGACY_MIX``), each in a fresh process of its own. Models
   per minute count every stage, the workers' start included; the interpreter's own start is not.
   A sampler thread in that process adds up the resident memory of it and its workers every 0.2 s (Linux
   ``/proc``), so the peak is that of the pipeline's process tree, nothing left over from another.
2. **Training at the machine's limit.** Useful FLOPs of the training stage (forward and backward of every
   training step, plus the full training-set evaluation the stopping rule needs at every epoch; counted per
   architecture by ``torch.utils.flop_counter``, times each model's epochs and samples) over its wall time, as a
   fraction of the ``torch.mm`` peak of the same cores (1024² fp32, or 4096² on a GPU, measured before and after
   the stage, best kept).
3. **Measures against training**: the measure stage's wall time over the training stage's, and the mean seconds
   per model of each measure (from the store).
4. **The Hessian against PyHessian**: ``hessian.top_eig`` + ``hessian.trace`` against PyHessian's
   ``eigenvalues()`` + ``trace()`` (defaults) on the same trained model and its whole training set; both against
   a tight reference (ARPACK to 1e-8 and the exact trace, one Hessian-vector product per parameter).
5. **Stacked against looped training** (``train_speedup``, no longer a headline): every default model for a few
   epochs both ways, stack by stack, alternating which goes first; both give the same models.
6. **What the machine allows** (``benchmark.perf.floor``, reported without targets): the measure stage's counted
   FLOPs on the default zoo, the models per minute training and measures would give with every counted FLOP at
   the run's best ``torch.mm`` peak (an upper bound), the measure stage's achieved fraction of the peak, and the
   fraction of the peak the bare matmuls of the zoo's stacked training steps reach.

Each number has a target; the JSON records the value, the target and whether it is met, and the Markdown report
(``--md``) is generated from the same numbers. Timings of the small sections are best-of-k wall times.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import pipeline
from benchmark.config import compose
from benchmark.measuring.context import Trained
from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.perf.floor import step_matmul_ceiling, suite_flops
from benchmark.perf.isolation import isolation_cost
from benchmark.runtime import RunOptions
from benchmark.store import Store, converged
from benchmark.training.loop import train_model
from benchmark.training.stacked import group_stacks, train_many
from benchmark.zoo.datasets import DataBundle, make_data
from benchmark.zoo.grid import expand
from benchmark.zoo.hparams import DatasetHP, HParams
from benchmark.zoo.models import build_model
from measures.seeding import generator

# name: (comparison, threshold, what it is); a comparison of None is reported without a target
TARGETS: dict[str, tuple[str | None, float | None, str]] = {
    "pipeline_models_per_minute": (">=", 100.0, "models trained, measured (every registered measure) and evaluated "
                                                "per minute, default zoo, whole pipeline"),
    "zoo_peak_fraction": (">=", 0.5, "useful training FLOP/s of the training stage over the torch.mm peak"),
    "suite_over_training": ("<=", 1.0, "wall time of the measure stage over that of the training stage"),
    "hessian_speedup_vs_pyhessian": (">=", 2.0, "PyHessian time over genbench time, top eigenvalue + trace"),
    "hessian_agreement": ("<=", 0.01, "genbench's largest relative error against the reference (top eig, trace)"),
    "models_slope": ("<=", 1.05, "d log(pipeline time) / d log(models), a quarter of the zoo to all of it"),
    "peak_memory_gib": ("<=", 4.0, "peak resident memory of the process tree during the pipeline"),
    "isolation_overhead": ("<=", 1.1, "measure time of one isolated worker over the same measures computed in "
                                      "genbench's own process, every measure on the same models"),
    "guard_ms_per_measure": (None, None, "milliseconds the input guard (Context.protect) adds to each measure, "
                                         "isolated or not (reported)"),
    "train_speedup": (None, None, "stacked over per-model training, model-steps/s (reported, no target)"),
    "pipeline_floor_models_per_minute": (None, None, "models per minute if every counted FLOP of training and "
                                                     "measures ran at the run's best torch.mm peak and nothing else "
                                                     "took time (an upper bound, reported)"),
    "step_matmul_ceiling": (None, None, "fraction of the torch.mm peak the bare matmuls of the zoo's stacked "
                                        "training steps reach (an upper bound for their part, reported)"),
    "suite_peak_fraction": (None, None, "counted measure FLOPs over the measure stage's wall time, over the "
                                        "torch.mm peak (reported)"),
    "suite_over_training_floor": (None, None, "the least suite_over_training possible with the training stage at "
                                              "zoo_peak_fraction's target and every counted measure FLOP at the "
                                              "peak (reported; above 1 the two targets exclude each other)"),
}

# The default zoo's model mix before it had replicates (one seed per configuration, widths 64 and 256).
LEGACY_MIX = ("zoo.seeds=null", "zoo.axes.model.width=[64,256]")
HESSIAN_ROUNDS = 5  # interleaved timing rounds of genbench and PyHessian, at least (each call well under a second)


@dataclass(frozen=True)
class Plan:
    """How much work each section does: ``--quick`` is a smoke run (about a minute), the default the real one."""
    zoo: tuple[str, ...]  # overrides selecting the zoo whose pipeline is timed
    legacy: tuple[str, ...] | None  # overrides of the second mix timed (None: not timed)
    quarter: bool  # also time a quarter of the zoo (for models_slope)
    speedup_models: int | None  # models trained both ways for train_speedup (None: the whole zoo)
    speedup_epochs: int
    reps: int  # repetitions of each short timing (best kept)
    hessian_reference: bool  # the exact trace: one Hessian-vector product per parameter
    floor_groups: int | None  # measuring groups whose FLOPs are counted, scaled to the zoo (None: all)


FULL = Plan(zoo=(), legacy=LEGACY_MIX, quarter=True, speedup_models=None, speedup_epochs=2, reps=3,
            hessian_reference=True, floor_groups=None)
QUICK = Plan(zoo=("experiment=smoke",), legacy=None, quarter=True, speedup_models=4, speedup_epochs=1, reps=1,
             hessian_reference=False, floor_groups=2)


# --------------------------------------------------------------------------------------------- helpers
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


# ------------------------------------------------------------------------------------------ pipeline
def _flops_per_sample(hp: HParams, bundle: DataBundle) -> tuple[float, float]:
    """(forward + backward, forward) FLOPs per training sample of ``hp``'s architecture, as counted by
    ``torch.utils.flop_counter`` (2 per multiply-add of matmuls and convolutions) on one full batch."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(hp.model, bundle.in_shape, bundle.num_classes, generator(hp.seed, "init"))
    b = min(hp.train.batch_size, len(bundle.y_train))
    x, y = bundle.x_train[:b], bundle.y_train[:b]
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    train = counter.get_total_flops() / b
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return train, counter.get_total_flops() / b


def model_flops(store: Store, hps: list[HParams]) -> dict[str, tuple[float, float]]:
    """Per model id: (FLOPs of its training steps, FLOPs of its stopping-rule evaluation), i.e. epochs × n samples
    × the forward-and-backward (resp. forward) FLOPs per sample of its architecture."""
    frame = store.models([hp.model_id for hp in hps])
    epochs = dict(zip(frame["model_id"], frame["metric.epochs"]))
    cache: dict[tuple, tuple[float, float]] = {}
    out = {}
    for hp in hps:
        key = (hp.dataset.name, hp.model, hp.train.batch_size)
        if key not in cache:
            cache[key] = _flops_per_sample(hp, make_data(hp.dataset))
        step, forward = cache[key]
        samples = float(epochs[hp.model_id]) * hp.dataset.n_train
        out[hp.model_id] = (samples * step, samples * forward)
    return out


def useful_flops(store: Store, hps: list[HParams]) -> dict:
    """FLOPs the training stage had to do: every training step's forward and backward (epochs × n samples) and
    the full training-set forward pass of the stopping rule at every epoch. The test set, order parameters and
    other probes are not counted."""
    per = model_flops(store, hps).values()
    train, evaluation = sum(t for t, _ in per), sum(e for _, e in per)
    return {"training_steps": train, "stopping_rule_evaluation": evaluation, "total": train + evaluation}


def time_pipeline(overrides: tuple[str, ...], device: torch.device, folder: Path, peak_threads: int,
                  reps: int) -> dict:
    """``genbench run`` of a zoo on a fresh store under ``folder``: each stage's wall time, the models, the
    useful training FLOPs and the peak fraction, the peak memory, and the mean seconds of every measure."""
    cfg = compose(*overrides, f"store.root={folder / 'store'}", f"leaderboard.dir={folder / 'leaderboard'}",
                  "run.progress=false", f"run.device={device}")
    hps = expand(cfg)
    peak = matmul_peak(device, reps, peak_threads)
    seconds, results = {}, {}
    with _quiet(), MemorySampler() as memory:
        for stage in ("train", "measure", "evaluate"):
            start = time.perf_counter()
            results[stage] = getattr(pipeline, stage)(cfg)
            _sync(device)
            seconds[stage] = time.perf_counter() - start
            if stage == "train":
                peak = max(peak, matmul_peak(device, reps, peak_threads))
    store = Store(cfg.store.root)
    flops = useful_flops(store, hps)
    values = store.measurements()
    total = sum(seconds.values())
    frame = store.models([hp.model_id for hp in hps])
    per_measure = values.groupby("measure")["seconds"].mean().sort_values(ascending=False)
    early = store.early()
    return {
        "zoo": str(cfg.zoo.name), "overrides": list(overrides), "models": len(hps),
        "converged": int(converged(frame).sum()),
        "epochs_mean": float(frame["metric.epochs"].mean()),
        "widths": sorted({hp.model.width for hp in hps}), "seeds": sorted({hp.seed for hp in hps}),
        "stage_s": seconds, "total_s": total, "models_per_minute": len(hps) / total * 60,
        "measure_values": int(len(values)), "measure_status": values["status"].value_counts().to_dict(),
        "measure_seconds_per_model": float(values["seconds"].sum() / len(hps)),
        "per_measure_s": per_measure.to_dict(),
        "measure_split_s": results["measure"]["seconds"], "early_values": int(len(early)),
        "early_seconds_per_model": float(early["seconds"].sum() / len(hps)),
        "useful_flops": flops, "matmul_peak_gflops": peak, "peak_threads": peak_threads,
        "training_gflops": flops["total"] / seconds["train"] / 1e9,
        "zoo_peak_fraction": flops["total"] / seconds["train"] / 1e9 / peak,
        "suite_over_training": seconds["measure"] / seconds["train"],
        "peak_memory_gib": memory.peak, "store": str(cfg.store.root),
        "jobs": int(cfg.run.jobs),
    }


def time_pipeline_alone(*args) -> dict:
    """``time_pipeline(*args)`` in a fresh spawned process, as a user's ``genbench run`` would be: its memory,
    its thread settings and its pool of measure workers start from nothing rather than from what an earlier
    pipeline of this report left behind (the peak memory of one pipeline otherwise counts the last one's too)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_time_pipeline_and_release, *args).result()


def _time_pipeline_and_release(*args) -> dict:
    """``time_pipeline`` and then the end of joblib's reusable workers: they would otherwise idle for minutes,
    and this process, at its exit, waits for its children."""
    from joblib.externals.loky import get_reusable_executor
    try:
        return time_pipeline(*args)
    finally:
        get_reusable_executor().shutdown(wait=True, kill_workers=True)


# ------------------------------------------------------------------------------------ stacked vs loop
def zoo_throughput(hps: list[HParams], data: Callable[[DatasetHP], DataBundle], epochs: int,
                   device: torch.device) -> dict:
    """Train every model for ``epochs`` epochs both ways, stack by stack; model-steps per second of each."""
    hps = [hp.replace(**{"train.max_epochs": epochs}) for hp in hps]
    stacks = group_stacks(hps)
    warm = stacks[0][:2]  # lazily initialised machinery (BLAS) must not count against either side
    train_many([hp.replace(**{"train.max_epochs": 1}) for hp in warm], data, device=device, probes=DEFAULT_PROBES)
    train_model(warm[0].replace(**{"train.max_epochs": 1}), data(warm[0].dataset), device=device,
                probes=DEFAULT_PROBES)
    vec_s = loop_s = 0.0
    steps, max_diff = 0, 0.0
    for k, stack in enumerate(stacks):
        def run_vec():
            _sync(device)
            start = time.perf_counter()
            out = train_many(stack, data, device=device, probes=DEFAULT_PROBES)
            _sync(device)
            return out, time.perf_counter() - start

        def run_loop():
            _sync(device)
            start = time.perf_counter()
            out = [train_model(hp, data(hp.dataset), device=device, probes=DEFAULT_PROBES) for hp in stack]
            _sync(device)
            return out, time.perf_counter() - start

        if k % 2 == 0:
            (vec, tv), (loop, tl) = run_vec(), run_loop()
        else:
            (loop, tl), (vec, tv) = run_loop(), run_vec()
        vec_s, loop_s = vec_s + tv, loop_s + tl
        steps += sum(int(r.metrics["steps"]) for r in loop)
        for a, b in zip(vec, loop):
            max_diff = max(max_diff, max(float((a.final_state[n] - b.final_state[n]).abs().max())
                                         for n in b.final_state))
    return {"models": len(hps), "stacks": [len(s) for s in stacks], "epochs": epochs, "model_steps": steps,
            "vectorized_s": vec_s, "looped_s": loop_s,
            "vectorized_model_steps_per_s": steps / vec_s, "looped_model_steps_per_s": steps / loop_s,
            "speedup": loop_s / vec_s, "max_abs_param_diff": max_diff}


# --------------------------------------------------------------------------------- what the machine allows
def floor_numbers(p: dict, counted: dict, best_peak_gflops: float) -> dict:
    """From the timed pipeline ``p`` and the measure stage's counted FLOPs (``suite_flops``): the time training
    and measures would take with every counted FLOP at ``best_peak_gflops`` (the highest ``torch.mm`` peak measured
    in the run, the most generous) and nothing else (``floor_s``; its models per minute are an upper bound), and
    the measure stage's achieved FLOP rate and fraction of ``p``'s own peak (as ``zoo_peak_fraction``)."""
    floor_s = (p["useful_flops"]["total"] + counted["total"]) / (best_peak_gflops * 1e9)
    rate = counted["total"] / p["stage_s"]["measure"] / 1e9
    # training at the target fraction f of a peak P takes T/(fP), the measures at P at least M/P: ratio ≥ f·M/T
    joint = TARGETS["zoo_peak_fraction"][1] * counted["total"] / p["useful_flops"]["total"]
    return {"floor_s": floor_s, "floor_peak_gflops": best_peak_gflops,
            "floor_models_per_minute": p["models"] / floor_s * 60, "suite_gflops": rate,
            "suite_peak_fraction": rate / p["matmul_peak_gflops"], "suite_over_training_floor": joint}


def machine_floor(p: dict, cfg, hps: list[HParams], opts: RunOptions, device: torch.device, reps: int,
                  groups: int | None, best_peak_gflops: float) -> dict:
    """For the timed pipeline ``p`` of the zoo ``hps`` (config ``cfg``): the measure stage's counted FLOPs
    (``benchmark.perf.floor.suite_flops``; ``groups``: count that many measuring groups only), the floor they and
    training set (``floor_numbers``), and the bare-matmul ceiling of the training steps with one worker's threads
    against the ``torch.mm`` peak of those threads."""
    fractions = pipeline.early_fractions(cfg)
    early = list(cfg.early.measures) if fractions else []
    names = [m.name for m in pipeline.selected_measures(cfg)]
    run_opts = dataclasses.replace(opts, device=str(device), progress=False)
    counted = suite_flops(p["store"], hps, names, early, fractions, run_opts, groups)
    worker = opts.threads or max(1, (os.cpu_count() or 1) // max(1, opts.jobs))
    per_model = model_flops(Store(p["store"]), hps)
    ceiling = step_matmul_ceiling(hps, {k: t for k, (t, _) in per_model.items()}, worker,
                                  matmul_peak(device, reps, worker), reps, device)
    return {"suite_flops": counted, **floor_numbers(p, counted, best_peak_gflops), "step_matmul": ceiling}


# ------------------------------------------------------------------------------------------- Hessian
def _hvp_reference(model, x, y, device, exact_trace: bool) -> dict:
    """Top eigenvalue by ARPACK Lanczos to 1e-8 and, when asked, the exact trace Σ_i e_iᵀ H e_i (batched
    Hessian-vector products), of the mean cross-entropy on (x, y)."""
    import scipy.sparse.linalg as sla
    from torch.func import functional_call
    names = [k for k, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone().requires_grad_(True)
    shapes = [p.shape for p in model.parameters()]
    with torch.enable_grad():
        params = dict(zip(names, (t.view(s) for t, s in zip(torch.split(flat, [math.prod(s) for s in shapes]),
                                                             shapes))))
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        grad = torch.autograd.grad(loss, flat, create_graph=True)[0]
    n = flat.numel()

    def hvp(v):
        return torch.autograd.grad(grad, flat, v, retain_graph=True)[0]
    op = sla.LinearOperator((n, n), dtype=np.float64, matvec=lambda v: hvp(
        torch.as_tensor(np.asarray(v).reshape(-1), dtype=flat.dtype, device=device)).double().cpu().numpy())
    top = float(sla.eigsh(op, k=1, which="LA", tol=1e-8, return_eigenvectors=False, v0=np.ones(n))[0])
    out = {"top_eig": top, "params": n}
    if exact_trace:
        trace, chunk = 0.0, 256
        for i in range(0, n, chunk):
            eye = torch.zeros(min(chunk, n - i), n, device=device, dtype=flat.dtype)
            eye[torch.arange(len(eye)), torch.arange(i, i + len(eye))] = 1
            hv = torch.autograd.grad(grad, flat, eye, retain_graph=True, is_grads_batched=True)[0]
            trace += float(hv[:, i:i + len(eye)].diagonal().sum())
        out["trace"] = trace
    return out


def hessian_vs_pyhessian(trained: Trained, reps: int, reference: bool, device: torch.device) -> dict:
    """genbench's ``hessian.top_eig`` + ``hessian.trace`` (a fresh Context each repetition, so the shared solve is
    paid) against PyHessian's power iteration + Hutchinson trace (its defaults) on the same samples, the whole
    training set; both against the reference. ``agreement`` is genbench's largest relative error."""
    from measures import REGISTRY
    from measures.pacbayes import curvature_data
    x, y = curvature_data(trained.context())
    out: dict = {"samples": len(y), "params": sum(p.numel() for p in trained.model.parameters()),
                 "model": {"width": trained.hp.model.width, "depth": trained.hp.model.depth,
                           "train_size": trained.hp.dataset.train_size}, "threads": torch.get_num_threads()}

    def genbench():
        c = trained.context()
        return REGISTRY.get("hessian.top_eig")(c).value, REGISTRY.get("hessian.trace")(c).value
    g_top, g_trace = genbench()
    out.update(genbench_top_eig=g_top, genbench_trace=g_trace)
    ref = _hvp_reference(trained.model, x, y, device, reference)
    out["reference"] = ref
    errors = {"top_eig": abs(g_top - ref["top_eig"]) / abs(ref["top_eig"])}
    if "trace" in ref:
        errors["trace"] = abs(g_trace - ref["trace"]) / abs(ref["trace"])
    out["genbench_rel_err"] = errors
    out["agreement"] = max(errors.values())
    try:
        import pyhessian
    except ImportError:
        out["pyhessian"] = "not installed (pip install genbench[perf])"
        out["genbench_s"] = _best_time(genbench, reps, device)
        return out

    def pyh():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            torch.manual_seed(0)  # PyHessian draws from the global generator; fork_rng restores it
            h = pyhessian.hessian(copy.deepcopy(trained.model), torch.nn.CrossEntropyLoss(), data=(x, y),
                                  cuda=device.type == "cuda")
            return h.eigenvalues(top_n=1)[0][0], float(np.mean(h.trace()))
    p_top, p_trace = pyh()
    g_s, p_s = _best_times([genbench, pyh], max(reps, HESSIAN_ROUNDS), device)  # interleaved, the same conditions
    out.update(genbench_s=g_s, pyhessian_top_eig=p_top, pyhessian_trace=p_trace, pyhessian_s=p_s,
               speedup=p_s / g_s)
    out["pyhessian_rel_err"] = {"top_eig": abs(p_top - ref["top_eig"]) / abs(ref["top_eig"])}
    if "trace" in ref:
        out["pyhessian_rel_err"]["trace"] = abs(p_trace - ref["trace"]) / abs(ref["trace"])
    return out


def _largest_model(store_root: str, hps: list[HParams], device: torch.device) -> Trained:
    """The stored model with the most parameters and training samples (the Hessian section's model)."""
    top = max(hps, key=lambda hp: (hp.model.width, hp.model.depth, hp.dataset.train_size, -hp.seed))
    return Trained.from_store(Store(store_root), top.model_id, RunOptions(device=str(device)))


# ------------------------------------------------------------------------------------------------ report
def targets(values: dict) -> dict:
    out = {}
    for name, (op, threshold, what) in TARGETS.items():
        v = values.get(name)
        if op is None or v is None:
            met = None
        else:
            met = v >= threshold if op == ">=" else v <= threshold if op == "<=" else v < threshold
        out[name] = {"value": v, "target": "none" if op is None else f"{op} {threshold:g}", "met": met, "what": what}
    return out


PIPELINES = {"pipeline": "default", "quarter": "default, a quarter", "legacy": "before replicates"}  # key: label


def _pipelines(details: dict) -> list[tuple[str, dict]]:
    """The pipeline timings the report holds, in ``PIPELINES`` order."""
    return [(key, details[key]) for key in PIPELINES if details.get(key)]


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def table(report: dict) -> str:
    """The report as a short readable text."""
    m, d = report["machine"], report["details"]
    lines = [f"genbench perf: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}"
             f"{' (quick)' if report['quick'] else ''}", "", f"{'quantity':34s} {'value':>10s}  {'target':>8s}  met"]
    for name, t in report["targets"].items():
        met = "-" if t["met"] is None else "yes" if t["met"] else "NO"
        lines.append(f"{name:34s} {_fmt(t['value'], 4):>10s}  {t['target']:>8s}  {met}")
    lines.append("")
    for key, p in _pipelines(d):
        s = p["stage_s"]
        lines.append(f"{key}: {p['models']} models (widths {p['widths']}, {len(p['seeds'])} seed(s)) in "
                     f"{p['total_s']:.0f} s = {p['models_per_minute']:.1f} models/min; train {s['train']:.0f} s, "
                     f"measures {s['measure']:.0f} s (early {p['measure_split_s']['early']:.0f} s), "
                     f"evaluate {s['evaluate']:.0f} s; "
                     f"training {p['training_gflops']:.1f} GFLOP/s of {p['matmul_peak_gflops']:.1f}")
    f = d["floor"]
    lines.append(f"floor: {f['suite_flops']['total'] / 1e12:.2f} TFLOP of measures + "
                 f"{d['pipeline']['useful_flops']['total'] / 1e12:.2f} of training at the peak take "
                 f"{f['floor_s']:.0f} s = at most {f['floor_models_per_minute']:.0f} models/min")
    i = d["isolation"]
    lines.append(f"isolation: {i['isolated_s']:.1f} s isolated vs {i['in_process_s']:.1f} s in process on "
                 f"{i['models']} models; guard {i['guard_ms_per_measure']:.2f} ms per measure")
    h = d["hessian"]
    if "pyhessian_s" in h:
        lines.append(f"hessian: genbench {h['genbench_s']:.2f} s vs PyHessian {h['pyhessian_s']:.2f} s; errors "
                     f"genbench {h['genbench_rel_err']}, PyHessian {h['pyhessian_rel_err']}")
    return "\n".join(lines)


def _floor_markdown(p: dict, f: dict) -> list[str]:
    """The section on what the machine allows the default zoo (``machine_floor``)."""
    c, m = f["suite_flops"], f["step_matmul"]
    train = p["useful_flops"]["total"]
    counted = (f"counted on one model of each of its {c['groups']} measuring groups"
               if c["counted_models"] == c["groups"] else
               f"counted on one model of each of the first {c['counted_models']} of its {c['groups']} measuring "
               "groups and scaled to the zoo")
    lines = ["", "## What this machine allows", "",
             f"The measure stage does {c['total'] / 1e12:.2f} TFLOP of counted matmuls on the "
             f"{PIPELINES['pipeline']} zoo (`{p['zoo']}`; {c['final'] / 1e12:.2f} on the final weights, "
             f"{c['early'] / 1e12:.2f} on the early snapshots; {c['total'] / c['models'] / 1e9:.1f} GFLOP per model, "
             f"{counted}, by `torch.utils.flop_counter`), against {train / 1e12:.2f} TFLOP of useful training. At "
             f"the highest `torch.mm` peak measured in this run, {f['floor_peak_gflops']:.0f} GFLOP/s, with "
             f"nothing else taking time, the two would take {f['floor_s']:.0f} s: at most "
             f"{f['floor_models_per_minute']:.0f} models per minute. The measure stage ran them at "
             f"{f['suite_gflops']:.1f} GFLOP/s ({f['suite_peak_fraction']:.2f} of the peak measured with it, "
             f"{p['matmul_peak_gflops']:.0f} GFLOP/s).", "",
             f"With training at `zoo_peak_fraction`'s target ({TARGETS['zoo_peak_fraction'][1]:g} of a peak) and "
             f"every counted measure FLOP at that peak, the measure stage would still take "
             f"{f['suite_over_training_floor']:.2f} times the training stage (`suite_over_training_floor`, "
             f"{TARGETS['zoo_peak_fraction'][1]:g} × {c['total'] / 1e12:.2f} / {train / 1e12:.2f}): "
             + ("the two targets exclude each other with this suite and this zoo." if f["suite_over_training_floor"] > 1
                else "the two targets can both be met."), ""]
    if m["ceiling"] is None:
        lines.append(f"No bare-matmul ceiling for the training steps: {m['why']}.")
    else:
        shapes = ", ".join(f"{s['members']}×({s['batch']}×{'→'.join(str(d[0]) for d in s['layers'])}"
                           f"→{s['layers'][-1][1]}) {s['gflops']:.0f}" for s in m["shapes"])
        lines.append(f"The bare matmuls of the zoo's stacked training steps (forward, input gradient, weight "
                     f"gradient; members × (batch × layer widths), GFLOP/s: {shapes}) reach {m['gflops']:.1f} "
                     f"GFLOP/s with {m['threads']} thread(s), {m['ceiling']:.2f} of that many threads' `torch.mm` "
                     f"peak ({m['peak_gflops']:.0f} GFLOP/s): the steps' part of `zoo_peak_fraction` cannot exceed "
                     "this on this machine.")
    lines += ["", "Counted measure FLOPs per model (the ten largest, final weights):", "",
              "| measure | GFLOP/model | share |", "|---|---|---|"]
    total = sum(c["per_model"].values())
    for name, v in list(c["per_model"].items())[:10]:
        lines.append(f"| `{name}` | {v / 1e9:.2f} | {v / total:.0%} |")
    return lines


def markdown(report: dict, command: str) -> str:
    """``leaderboard/perf.md``, generated from the report (every number in it is in the JSON)."""
    m, d = report["machine"], report["details"]
    p, t = d["pipeline"], report["targets"]
    lines = [
        "# genbench perf", "",
        f"Generated by `{command}` in {report['total_s']:.0f} s. Every number is in the JSON next to this file; "
        "the analysis of what limits each one is in [docs/performance.md](../docs/performance.md).", "",
        f"**Machine.** {m['cpu']}, {m['cores']} cores, torch {m['torch']} on `{m['device']}`"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f", Python {m['python']}. Load average {m['load_average_start'][0]:.1f} at the start and "
          f"{m['load_average_end'][0]:.1f} at the end.", "",
        "| quantity | value | target | met | what |", "|---|---|---|---|---|"]
    for name, row in t.items():
        met = "–" if row["met"] is None else "yes" if row["met"] else "**no**"
        lines.append(f"| `{name}` | {_fmt(row['value'])} | {row['target']} | {met} | {row['what']} |")
    lines += ["", "## The pipeline, end to end", "",
              "| zoo | models | widths | seeds | train s | measures s | of which early s | evaluate s | total s | "
              "models/min | measure s/model | early s/model | training GFLOP/s | peak GFLOP/s | fraction | "
              "memory GiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, q in _pipelines(d):
        s = q["stage_s"]
        lines.append(f"| {PIPELINES[key]} | {q['models']} | {q['widths']} | {len(q['seeds'])} | {s['train']:.1f} | "
                     f"{s['measure']:.1f} | {q['measure_split_s']['early']:.1f} | {s['evaluate']:.1f} | "
                     f"{q['total_s']:.1f} | {q['models_per_minute']:.1f} | {q['measure_seconds_per_model']:.2f} | "
                     f"{q['early_seconds_per_model']:.2f} | {q['training_gflops']:.1f} | "
                     f"{q['matmul_peak_gflops']:.1f} | {q['zoo_peak_fraction']:.2f} | {q['peak_memory_gib']:.2f} |")
    f = p["useful_flops"]
    lines += ["", f"Useful training FLOPs of the default zoo: {f['training_steps'] / 1e9:.0f} GFLOP of training steps "
                  f"and {f['stopping_rule_evaluation'] / 1e9:.0f} GFLOP of stopping-rule evaluation, "
                  f"{p['epochs_mean']:.0f} epochs per model on average; the peak is `torch.mm` on "
                  f"{p['peak_threads']} thread(s), the cores the pipeline's {p['jobs']} workers use. The measure "
                  "stage's wall time includes the early-prediction table (`early.measures` on the weights kept "
                  "part-way through training); measure and early s/model are the measures' own seconds per model "
                  "(one worker's time) on the final weights and on the snapshots.", "",
              "Measures by mean seconds per model on the default zoo (the ten slowest):", "",
              "| measure | s/model | share |", "|---|---|---|"]
    total = sum(p["per_measure_s"].values())
    for name, sec in list(p["per_measure_s"].items())[:10]:
        lines.append(f"| `{name}` | {sec:.3f} | {sec / total:.0%} |")
    lines += _floor_markdown(p, d["floor"])
    h = d["hessian"]
    lines += ["", "## The Hessian against PyHessian", "",
              f"Model: MLP of width {h['model']['width']}, depth {h['model']['depth']}, {h['params']:,} parameters, "
              f"on its whole training set ({h['samples']:,} samples). Reference: ARPACK λ_max to 1e-8"
              + (" and the exact trace." if "trace" in h["reference"] else " (exact trace skipped in this run).")
              + f" Seconds: the least of rounds that time the two in turn, {h['threads']} thread(s) each.", "",
              "| | seconds | λ_max | rel. error | trace | rel. error |", "|---|---|---|---|---|---|"]
    ref = h["reference"]
    ge = h["genbench_rel_err"]
    lines.append(f"| genbench `hessian.top_eig` + `hessian.trace` | {h['genbench_s']:.2f} | "
                 f"{h['genbench_top_eig']:.6g} | {ge['top_eig']:.1e} | {h['genbench_trace']:.6g} | "
                 f"{_fmt(ge.get('trace'), 2)} |")
    if "pyhessian_s" in h:
        pe = h["pyhessian_rel_err"]
        lines.append(f"| PyHessian `eigenvalues()` + `trace()`, defaults | {h['pyhessian_s']:.2f} | "
                     f"{h['pyhessian_top_eig']:.6g} | {pe['top_eig']:.1e} | {h['pyhessian_trace']:.6g} | "
                     f"{_fmt(pe.get('trace'), 2)} |")
    else:
        lines.append(f"| PyHessian | {h.get('pyhessian')} | | | | |")
    lines.append(f"| reference | | {ref['top_eig']:.6g} | | {_fmt(ref.get('trace'), 6)} | |")
    i = d["isolation"]
    lines += ["", "## Isolated measures", "",
              f"Every measure on {i['models']} default models ({i['values']} values), by one isolated worker process "
              f"and in genbench's own process, the best of alternating rounds: {i['isolated_s']:.1f} s against "
              f"{i['in_process_s']:.1f} s (×{i['isolation_overhead']:.3f}). Both pay the input guard, "
              f"{i['guard_ms_per_measure']:.2f} ms per measure on a Context holding every intermediate."]
    z = d["zoo"]
    lines += ["", "## Stacked against looped training", "",
              f"{z['models']} default models, {z['epochs']} epoch(s) each, in stacks of {sorted(set(z['stacks']))}: "
              f"{z['vectorized_model_steps_per_s']:.0f} model-steps/s stacked against "
              f"{z['looped_model_steps_per_s']:.0f} looped (×{z['speedup']:.2f}); the largest parameter difference "
              f"between the two trainers' models is {z['max_abs_param_diff']:.1e}.", ""]
    return "\n".join(lines)


def run(plan: Plan, device: torch.device, quick: bool, work: Path) -> dict:
    start = time.perf_counter()
    info = machine(device)
    opts = pipeline.options(compose(*plan.zoo))
    threads = opts.jobs * (opts.threads or max(1, (os.cpu_count() or 1) // max(1, opts.jobs)))
    details: dict[str, Any] = {}
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    details["pipeline"] = time_pipeline_alone(plan.zoo, device, work / "default", threads, plan.reps)
    if plan.quarter:
        details["quarter"] = time_pipeline_alone((*plan.zoo, "zoo.num_shards=4", "zoo.shard=0"), device,
                                                 work / "quarter", threads, plan.reps)
    if plan.legacy is not None:
        details["legacy"] = time_pipeline_alone((*plan.zoo, *plan.legacy), device, work / "legacy", threads, plan.reps)
    timings["pipeline"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cfg = compose(*plan.zoo)
    hps = expand(cfg)
    best_peak = max(q["matmul_peak_gflops"] for _, q in _pipelines(details))
    details["floor"] = machine_floor(details["pipeline"], cfg, hps, opts, device, plan.reps, plan.floor_groups,
                                     best_peak)
    timings["floor"] = time.perf_counter() - clock

    clock = time.perf_counter()
    trained = _largest_model(details["pipeline"]["store"], hps, device)
    details["hessian"] = hessian_vs_pyhessian(trained, plan.reps, plan.hessian_reference, device)
    timings["hessian"] = time.perf_counter() - clock

    clock = time.perf_counter()
    details["isolation"] = isolation_cost(details["pipeline"]["store"], [hp.model_id for hp in hps],
                                          dataclasses.replace(opts, device=str(device)), max(2, plan.reps))
    timings["isolation"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cache: dict[DatasetHP, DataBundle] = {}
    data = lambda d: cache[d] if d in cache else cache.setdefault(d, make_data(d))
    chosen = hps
    if plan.speedup_models is not None:
        chosen = []
        for stack in group_stacks(hps):
            if len(chosen) < plan.speedup_models:
                chosen += stack[:plan.speedup_models - len(chosen)]
    details["zoo"] = zoo_throughput(chosen, data, plan.speedup_epochs, device)
    timings["train_speedup"] = time.perf_counter() - clock
    details["section_seconds"] = timings

    p, q = details["pipeline"], details.get("quarter")
    values = {
        "pipeline_models_per_minute": p["models_per_minute"], "zoo_peak_fraction": p["zoo_peak_fraction"],
        "suite_over_training": p["suite_over_training"],
        "hessian_speedup_vs_pyhessian": details["hessian"].get("speedup"),
        "hessian_agreement": details["hessian"]["agreement"],
        "models_slope": (math.log(p["total_s"] / q["total_s"]) / math.log(p["models"] / q["models"])
                         if q and q["models"] < p["models"] else None),
        "peak_memory_gib": max(d["peak_memory_gib"] for d in (p, q, details.get("legacy")) if d),
        "isolation_overhead": details["isolation"]["isolation_overhead"],
        "guard_ms_per_measure": details["isolation"]["guard_ms_per_measure"],
        "train_speedup": details["zoo"]["speedup"],
        "pipeline_floor_models_per_minute": details["floor"]["floor_models_per_minute"],
        "step_matmul_ceiling": details["floor"]["step_matmul"]["ceiling"],
        "suite_peak_fraction": details["floor"]["suite_peak_fraction"],
        "suite_over_training_floor": details["floor"]["suite_over_training_floor"],
    }
    info["load_average_end"] = list(os.getloadavg())
    return {**values, "quick": quick, "machine": info, "plan": asdict(plan), "targets": targets(values),
            "details": details, "total_s": time.perf_counter() - start}


def _finite(obj: Any) -> Any:
    """The report with non-finite floats as strings ("nan", "inf"), so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="genbench perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the report here (e.g. leaderboard/perf.json)")
    parser.add_argument("--md", type=Path, help="write the Markdown report here (e.g. leaderboard/perf.md)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute), numbers indicative only")
    parser.add_argument("--threads", type=int, help="torch threads of the in-process sections (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        from benchmark.errors import UserError
        raise UserError(f"--device {args.device}: no CUDA device is available here (torch.cuda.is_available() "
                        "is False)")
    torch.set_num_threads(args.threads or 1)  # the pipeline's workers set their own threads
    with tempfile.TemporaryDirectory(prefix="genbench-perf-") as work:
        report = run(QUICK if args.quick else FULL, device, args.quick, Path(work))
    print(table(report))
    command = "genbench perf" + "".join(f" {a}" for a in (argv or []))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_finite(report), indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(report, command))
        print(f"wrote {args.md}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
