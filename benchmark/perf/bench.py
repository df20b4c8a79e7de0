"""``genbench perf``: how fast genbench is on this machine, measured in one run against its targets.

    genbench perf [--json leaderboard/perf.json] [--md leaderboard/perf.md] [--quick] [--device cpu|cuda]
    genbench perf --gpu-check [--device cuda] [--out DIR]     (the GPU against the CPU: benchmark.perf.gpu)

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
   epochs both ways, stack by stack, alternating which goes first; both give the same models. The same for conv
   nets (``conv_train_speedup``, target ≥ 3): a stack of six per conv architecture on the 8×8 digits and on
   Fashion-MNIST at 14×14 (``CONV_DATA``; left out, and said, when its files are missing).
6. **What the machine allows** (``benchmark.perf.floor``, reported without targets): the measure stage's counted
   FLOPs on the default zoo, the models per minute training and measures would give with every counted FLOP at
   the run's best ``torch.mm`` peak (an upper bound), the measure stage's achieved fraction of the peak, and the
   fraction of the peak the bare matmuls of the zoo's stacked training steps reach.
7. **The pipeline at a 70 GFLOP/s peak** (``pipeline_s_at_70_gflops``): each timed pipeline's wall time times the
   ``torch.mm`` peak measured with it (the GFLOP-seconds it took) over 70 GFLOP/s, the peak of the slow 2-core
   machine ``genbench run`` must suit within 600 s; so runs on different machines compare. It assumes the time
   scales with the matmul peak, a fair first model since on a CPU the pipeline is mostly matmuls (training steps,
   Hessian-vector products, perturbed copies); ``peak_elasticity`` checks it on a slice of training timed with
   1 and with 2 threads against the peak with 1 and 2 threads.

Each number has a target; the JSON records the value, the target and whether it is met, and the Markdown report
(``--md``) is generated from the same numbers (``benchmark.perf.report``). Timings of the small sections are
best-of-k wall times (``benchmark.perf.timing``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import pipeline
from benchmark.config import compose
from benchmark.measuring.context import Trained
from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.perf.answers import answer_times
from benchmark.perf.floor import step_matmul_ceiling, suite_flops
from benchmark.perf.incremental import plugin_times
from benchmark.perf.isolation import isolation_cost
from benchmark.perf.report import TARGETS, _pipelines, markdown, table, targets
from benchmark.perf.timing import (
    MemorySampler,
    _best_time,
    _best_times,
    _quiet,
    _sync,
    machine,
    matmul_peak,
    peak_elasticity,
    scaled_to_peak,
)
from benchmark.plan import make_plan
from benchmark.report import layout
from benchmark.runtime import RunOptions
from benchmark.store import Store, converged
from benchmark.training.loop import train_model
from benchmark.training.stacked import group_stacks, train_many
from benchmark.zoo.datasets import DataBundle, load_pool, make_data
from benchmark.zoo.grid import expand
from benchmark.zoo.hparams import DatasetHP, HParams
from benchmark.zoo.models import build_model
from measures.seeding import generator

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
    scaling_models: int = 8  # models of the slice timed with 1 and with 2 threads (peak_elasticity)
    scaling_epochs: int = 10


FULL = Plan(zoo=(), legacy=LEGACY_MIX, quarter=True, speedup_models=None, speedup_epochs=2, reps=3,
            hessian_reference=True, floor_groups=None)
QUICK = Plan(zoo=("experiment=smoke",), legacy=None, quarter=True, speedup_models=4, speedup_epochs=1, reps=1,
             hessian_reference=False, floor_groups=2, scaling_models=4, scaling_epochs=1)


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
        zoo = make_plan(cfg)  # read once, as `genbench run` does
        for stage in ("train", "measure", "evaluate"):
            start = time.perf_counter()
            results[stage] = getattr(pipeline, stage)(zoo)
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


CONV_FAMILIES = ("cnn", "cnn_bn", "resnet")  # the conv architectures timed by conv_throughput, where registered
CONV_DATA = ({"name": "digits", "train_size": 500, "test_size": 500},  # 8×8 images
             {"name": "fashion", "train_size": 500, "test_size": 1000, "image_size": 14})


def conv_slice() -> tuple[list[HParams], list[str]]:
    """One stack of six conv nets (two learning rates × three seeds) per registered conv family and image dataset
    of ``CONV_DATA``, and why any dataset was left out (its files are missing)."""
    from benchmark.errors import DatasetMissingError
    from benchmark.zoo.registry import MODELS
    hps, skipped = [], []
    for data in CONV_DATA:
        try:
            load_pool(data["name"])
        except DatasetMissingError as err:
            skipped.append(f"{data['name']}: {err}")
            continue
        hps += [HParams.from_dict({"dataset": data, "model": {"name": name, "depth": 2, "width": 16},
                                   "optimizer": {"name": "momentum", "lr": lr}, "train": {"batch_size": 32},
                                   "seed": seed})
                for name in CONV_FAMILIES if name in MODELS for lr in (0.02, 0.05) for seed in (0, 1, 2)]
    return hps, skipped


def conv_throughput(epochs: int, device: torch.device) -> dict:
    """``zoo_throughput`` of ``conv_slice``, per architecture and in all: the conv stacks' speed against training
    each model alone."""
    hps, skipped = conv_slice()
    cache: dict[DatasetHP, DataBundle] = {}
    data = lambda d: cache[d] if d in cache else cache.setdefault(d, make_data(d))  # noqa: E731
    per = {name: zoo_throughput([hp for hp in hps if hp.model.name == name], data, epochs, device)
           for name in dict.fromkeys(hp.model.name for hp in hps)}
    vec, loop = sum(r["vectorized_s"] for r in per.values()), sum(r["looped_s"] for r in per.values())
    return {"models": len(hps), "datasets": sorted({hp.dataset.name for hp in hps}), "skipped": skipped,
            "epochs": epochs, "by_architecture": per, "vectorized_s": vec, "looped_s": loop,
            "speedup": loop / vec if vec else None}


# ------------------------------------------------------------------------------- time scaled by the peak
def scaled_pipelines(details: dict) -> dict:
    """Each timed pipeline's wall time with the ``torch.mm`` peak measured in its own run, and scaled to the
    reference peak (``benchmark.perf.timing.scaled_to_peak``): what ``genbench run`` would take on the slow
    2-core machine, if its time scales with the matmul peak (``peak_elasticity`` checks that)."""
    return {key: scaled_to_peak(q["total_s"], q["matmul_peak_gflops"], q["peak_threads"])
            for key, q in _pipelines(details)}


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
    zoo = make_plan(cfg)
    fractions = zoo.early.fractions
    early = list(zoo.early.measures) if fractions else []
    names = [m.name for m in zoo.measures]
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


def run(plan: Plan, device: torch.device, quick: bool, work: Path,
        standard: tuple[Path, Path] | None = None) -> dict:
    """Every section of the report on a fresh zoo under ``work``; ``standard`` (store, leaderboard folder): a
    trained, measured and evaluated standard benchmark on which to time scoring a new measure too."""
    start = time.perf_counter()
    info = machine(device)
    opts = make_plan(compose(*plan.zoo)).options
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
    details["scaled"] = scaled_pipelines(details)
    timings["pipeline"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cfg = compose(*plan.zoo)
    hps = expand(cfg)
    best_peak = max(q["matmul_peak_gflops"] for _, q in _pipelines(details))
    details["floor"] = machine_floor(details["pipeline"], cfg, hps, opts, device, plan.reps, plan.floor_groups,
                                     best_peak)
    timings["floor"] = time.perf_counter() - clock

    clock = time.perf_counter()
    boards = work / "default" / "leaderboard"
    details["answers"] = answer_times(str(work), (str(boards), layout.boards(boards)[0]), repeats=plan.reps)
    timings["answers"] = time.perf_counter() - clock

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

    clock = time.perf_counter()
    details["conv"] = conv_throughput(plan.speedup_epochs, device)
    timings["conv_speedup"] = time.perf_counter() - clock

    clock = time.perf_counter()
    details["peak_scaling"] = peak_elasticity(max(group_stacks(hps), key=len)[:plan.scaling_models], device,
                                              plan.scaling_epochs, plan.reps)
    timings["peak_scaling"] = time.perf_counter() - clock

    clock = time.perf_counter()  # last: it adds plugin measures to the default zoo's store
    details["incremental"] = {"default zoo": plugin_times(list(plan.zoo), work / "default" / "store", boards,
                                                          work / "incremental", reps=plan.reps)}
    if standard is not None:
        details["incremental"]["standard benchmark"] = plugin_times(
            ["experiment=standard"], standard[0], standard[1], work / "incremental-standard", reps=plan.reps)
    timings["incremental"] = time.perf_counter() - clock
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
        "slowest_quick_answer_s": details["answers"]["slowest_quick_answer_s"],
        "measures_answer_s": details["answers"]["measures_answer_s"],
        "train_speedup": details["zoo"]["speedup"],
        "conv_train_speedup": details["conv"]["speedup"],
        "pipeline_floor_models_per_minute": details["floor"]["floor_models_per_minute"],
        "step_matmul_ceiling": details["floor"]["step_matmul"]["ceiling"],
        "suite_peak_fraction": details["floor"]["suite_peak_fraction"],
        "suite_over_training_floor": details["floor"]["suite_over_training_floor"],
        "pipeline_s_at_70_gflops": details["scaled"]["pipeline"]["at_reference_s"],
        "peak_elasticity": details["peak_scaling"].get("elasticity"),
        "plugin_score_s": details["incremental"]["default zoo"]["incremental_s"],
        "plugin_score_speedup": details["incremental"]["default zoo"]["speedup"],
        "standard_plugin_score_s": details["incremental"].get("standard benchmark", {}).get("incremental_s"),
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
    if argv and "--gpu-check" in argv:
        from benchmark.perf.gpu import main as gpu_check
        code = gpu_check([a for a in argv if a != "--gpu-check"])
        if code:
            sys.exit(code)
        return {}
    parser = argparse.ArgumentParser(prog="genbench perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the report here (e.g. leaderboard/perf.json)")
    parser.add_argument("--md", type=Path, help="write the Markdown report here (e.g. leaderboard/perf.md)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute), numbers indicative only")
    parser.add_argument("--threads", type=int, help="torch threads of the in-process sections (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--gpu-check", action="store_true", help="the GPU against the CPU instead "
                        "(python -m benchmark.perf.gpu --help)")
    parser.add_argument("--standard", nargs=2, type=Path, metavar=("STORE", "LEADERBOARD"),
                        help="also time scoring a new measure on this trained, measured and evaluated standard "
                             "benchmark (store.root and leaderboard.dir; it gains the plugin measures)")
    args = parser.parse_args(argv)
    if args.standard and not (args.standard[0] / "genbench.sqlite").is_file():
        from benchmark.errors import UserError
        raise UserError(f"--standard {args.standard[0]}: no genbench store there (run `genbench run "
                        f"experiment=standard store.root={args.standard[0]}` first)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        from benchmark.errors import UserError
        raise UserError(f"--device {args.device}: no CUDA device is available here (torch.cuda.is_available() "
                        "is False)")
    torch.set_num_threads(args.threads or 1)  # the pipeline's workers set their own threads
    with tempfile.TemporaryDirectory(prefix="genbench-perf-") as work:
        report = run(QUICK if args.quick else FULL, device, args.quick, Path(work),
                     tuple(p.resolve() for p in args.standard) if args.standard else None)
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
