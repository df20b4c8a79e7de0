"""``genbench perf``: how fast genbench is on this machine, measured in one run against its targets.

    genbench perf --json leaderboard/perf.json [--quick] [--threads N] [--device cpu|cuda]

1. Zoo training throughput (model-steps/s): ``training.stacked.train_many`` against the one-model-at-a-time
   ``training.loop.train_model`` on the default zoo (``conf/zoo``), each model for a fixed number of epochs, stack
   by stack, the two alternating which goes first so that load from other processes hits both alike. Both
   produce the same models; the largest parameter difference is recorded. Also the share of the time spent in
   the per-epoch order parameters (the zoo's probes), which both trainers compute model by model.
2. Peak fraction: GFLOP/s of the stacked training step of the largest default model's stack (FLOPs counted by
   ``torch.utils.flop_counter`` on one model's step), over the best ``torch.mm`` 1024×1024 fp32 rate.
3. Every registered measure's seconds and cost in full-batch forward+backward passes on one trained
   default-size model, and the whole suite over that model's training time.
4. Hessian top eigenvalue and trace, genbench's registered measures against PyHessian on the same model and
   the same samples, both checked against a tight reference (Lanczos to 1e-8 and the exact trace).
5. Scaling: log-log slopes of the stacked step time against the number of models and against their size.
6. Peak memory of the run (``ru_maxrss``).

Each number has a target; the JSON records the value, the target and whether it is met. Timings are
best-of-k wall times: on a shared machine, the least disturbed run is the closest to the machine's speed.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.config import compose
from benchmark.measuring.context import Trained
from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.training.loop import train_model
from benchmark.training.stacked import Stack, group_stacks, stack_key, train_many
from benchmark.zoo.datasets import DataBundle, make_data
from benchmark.zoo.grid import base_hparams, expand
from benchmark.zoo.hparams import DatasetHP, HParams
from benchmark.zoo.models import build_model
from benchmark.zoo.optimizers import make_optimizer
from measures.seeding import generator

# name: (comparison, threshold, what it is)
TARGETS = {
    "train_speedup": (">=", 8.0, "vectorized zoo training over the per-model loop (model-steps/s)"),
    "train_peak_fraction": (">=", 0.5, "training GFLOP/s of the largest default model over the matmul peak"),
    "suite_over_training": ("<=", 20.0, "all registered measures on one model over its training time"),
    "hessian_speedup_vs_pyhessian": (">=", 2.0, "PyHessian time over genbench time, top eigenvalue + trace"),
    "hessian_agreement": ("<=", 0.01, "largest relative difference genbench vs PyHessian (top eig, trace)"),
    "peak_memory_gib": ("<", 4.0, "maximum resident set size of the run"),
    "models_slope": ("<=", 1.1, "d log(step time) / d log(models in a stack)"),
    "params_slope": ("<=", 1.1, "d log(step time) / d log(parameters per model)"),
}


@dataclass(frozen=True)
class Plan:
    """How much work each section does: ``--quick`` is a smoke run (under a minute), the default the real one."""
    zoo_models: int | None  # None: the whole default zoo; else the first stacks holding this many models
    zoo_epochs: int
    reps: int  # repetitions of each short timing (best kept)
    peak_steps: int  # stacked training steps timed for the peak fraction
    measure_overrides: tuple[tuple[str, Any], ...]  # applied to the default model for sections 3-4
    hessian_reference: bool  # the exact trace: one Hessian-vector product per parameter
    warm_suite: bool  # run the measure suite once untimed first (library initialisation is not per model)
    model_counts: tuple[int, ...]
    widths: tuple[int, ...]
    scaling_models: int
    scaling_steps: int


FULL = Plan(zoo_models=None, zoo_epochs=2, reps=5, peak_steps=30, measure_overrides=(),
            hessian_reference=True, warm_suite=True, model_counts=(1, 2, 4, 8, 16, 32), widths=(32, 64, 128, 256, 512),
            scaling_models=8, scaling_steps=20)
QUICK = Plan(zoo_models=4, zoo_epochs=1, reps=1, peak_steps=5,
             measure_overrides=(("dataset.train_size", 300), ("dataset.test_size", 300), ("train.max_epochs", 2)),
             hessian_reference=False, warm_suite=False, model_counts=(1, 2, 4), widths=(32, 64, 128), scaling_models=2,
             scaling_steps=3)


# --------------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], Any], reps: int, device: torch.device) -> float:
    """Least wall time of ``reps`` calls of ``fn`` (after one untimed call)."""
    fn()
    best = math.inf
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class _Timed:
    """A probe whose calls' wall time is added up (instrumentation only)."""
    probe: Any
    seconds: float = 0.0

    @property
    def tag(self) -> str:
        return self.probe.tag

    @property
    def prefix(self) -> str:
        return self.probe.prefix

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            return self.probe(*args)
        finally:
            self.seconds += time.perf_counter() - start


def _slope(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "device": str(device),
           "load_average_start": list(os.getloadavg())}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


# ------------------------------------------------------------------------------------------- sections
def matmul_peak(device: torch.device, reps: int, n: int = 1024, inner: int = 5) -> float:
    """Best fp32 GFLOP/s of ``torch.mm`` on two n×n matrices."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    seconds = _best_time(lambda: [torch.mm(a, b) for _ in range(inner)], reps, device) / inner
    return 2 * n ** 3 / seconds / 1e9


def zoo_throughput(hps: list[HParams], data: Callable[[DatasetHP], DataBundle], epochs: int,
                   device: torch.device) -> dict:
    """Train every model for ``epochs`` epochs both ways, stack by stack; model-steps per second of each."""
    hps = [hp.replace(**{"train.max_epochs": epochs}) for hp in hps]
    stacks = group_stacks(hps)
    warm = stacks[0][:2]  # lazily initialised machinery (functorch, BLAS) must not count against either side
    train_many([hp.replace(**{"train.max_epochs": 1}) for hp in warm], data, device=device, probes=DEFAULT_PROBES)
    train_model(warm[0].replace(**{"train.max_epochs": 1}), data(warm[0].dataset), device=device,
                probes=DEFAULT_PROBES)
    vec_s = loop_s = vec_op = loop_op = 0.0
    steps, max_diff = 0, 0.0
    for k, stack in enumerate(stacks):
        def run_vec():
            probes = [_Timed(p) for p in DEFAULT_PROBES]
            _sync(device)
            start = time.perf_counter()
            out = train_many(stack, data, device=device, probes=probes)
            _sync(device)
            return out, time.perf_counter() - start, sum(p.seconds for p in probes)

        def run_loop():
            probes = [_Timed(p) for p in DEFAULT_PROBES]
            _sync(device)
            start = time.perf_counter()
            out = [train_model(hp, data(hp.dataset), device=device, probes=probes) for hp in stack]
            _sync(device)
            return out, time.perf_counter() - start, sum(p.seconds for p in probes)

        if k % 2 == 0:
            (vec, tv, ov), (loop, tl, ol) = run_vec(), run_loop()
        else:
            (loop, tl, ol), (vec, tv, ov) = run_loop(), run_vec()
        vec_s, loop_s, vec_op, loop_op = vec_s + tv, loop_s + tl, vec_op + ov, loop_op + ol
        steps += sum(int(r.metrics["steps"]) for r in loop)
        for a, b in zip(vec, loop):
            max_diff = max(max_diff, max(float((a.final_state[n] - b.final_state[n]).abs().max())
                                         for n in b.final_state))
    return {
        "models": len(hps), "stacks": [len(s) for s in stacks], "epochs": epochs, "model_steps": steps,
        "vectorized_s": vec_s, "looped_s": loop_s,
        "vectorized_model_steps_per_s": steps / vec_s, "looped_model_steps_per_s": steps / loop_s,
        "speedup": loop_s / vec_s,
        "order_parameters_s": {"vectorized": vec_op, "looped": loop_op},
        "speedup_without_order_parameters": (loop_s - loop_op) / (vec_s - vec_op),
        "max_abs_param_diff": max_diff,
    }


def _step_flops(hp: HParams, bundle: DataBundle) -> int:
    """FLOPs of one model's training step (forward and backward at the full batch size), as counted by
    ``torch.utils.flop_counter`` (2 per multiply-add of matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(hp.model, bundle.in_shape, bundle.num_classes, generator(hp.seed, "init"))
    x, y = bundle.x_train[:hp.train.batch_size], bundle.y_train[:hp.train.batch_size]
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(counter.get_total_flops())


def peak_fraction(hps: list[HParams], data: Callable[[DatasetHP], DataBundle], peak: float, steps: int,
                  reps: int, device: torch.device) -> dict:
    """Training GFLOP/s of the stack holding the largest default model (largest batch among its stacks), and of
    the same model trained alone with torch.optim, over the matmul peak (``peak``, or higher if re-measured)."""
    size = lambda hp: (hp.model.width, hp.model.depth, hp.train.batch_size, hp.dataset.train_size)
    top = max(hps, key=size)
    members = [hp for hp in hps if stack_key(hp) == stack_key(top)]
    bundles = [data(hp.dataset) for hp in members]
    flops = _step_flops(top, bundles[0])
    stack = Stack(members, bundles, device)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, stack.n, (steps, len(members), top.train.batch_size), generator=g).to(device)

    offsets = stack.offsets.to(device)[:, None]  # rows of each member's own training set

    def stacked():
        for i in range(steps):
            stack.train_step(idx[i] + offsets)

    bundle = bundles[0].to(device)
    model = build_model(top.model, bundle.in_shape, bundle.num_classes, generator(top.seed, "init")).to(device)
    opt = make_optimizer(model.parameters(), top.optimizer)

    def alone():
        for i in range(steps):
            j = idx[i, 0]
            loss = F.cross_entropy(model(bundle.x_train[j]), bundle.y_train[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    t_stack = t_alone = math.inf
    for _ in range(reps):  # interleaved with the matmul peak, so that load from other processes hits all three
        peak = max(peak, matmul_peak(device, 1))
        t_stack = min(t_stack, _best_time(stacked, 1, device) / steps)
        t_alone = min(t_alone, _best_time(alone, 1, device) / steps)
    stacked_gflops = flops * len(members) / t_stack / 1e9
    alone_gflops = flops / t_alone / 1e9
    return {"model": {"width": top.model.width, "depth": top.model.depth, "batch_size": top.train.batch_size,
                      "params": sum(p.numel() for p in model.parameters())},
            "members": len(members), "flops_per_model_step": flops,
            "stacked_step_s": t_stack, "stacked_gflops": stacked_gflops, "looped_step_s": t_alone,
            "looped_gflops": alone_gflops, "matmul_peak_gflops": peak,
            "fraction": stacked_gflops / peak, "looped_fraction": alone_gflops / peak,
            "note": "the peak is torch.mm 1024x1024; batch-64 GEMMs can run faster per FLOP from cache"}


def _contexts(hp: HParams, result, bundle: DataBundle, device: torch.device):
    trained = Trained.from_result(result, bundle, device)
    return trained.model, (lambda: trained.context()), (lambda: trained.context(oracle=True))


def _full_batch_pass(ctx) -> float:
    """Seconds of one forward+backward pass of the training loss over the whole training set."""
    params = {k: v.clone().requires_grad_(True) for k, v in ctx.params.items()}

    def once():
        torch.autograd.grad(ctx.loss(params), list(params.values()))
    return _best_time(once, 3, ctx.device)


def measure_suite(hp: HParams, bundle: DataBundle, device: torch.device, warm: bool) -> tuple[dict, Any]:
    """Train ``hp`` (its stopping rule), then time every registered measure in registration order on one
    Context, as the pipeline does (shared intermediates are paid by the first measure that needs them)."""
    from measures import REGISTRY
    result = train_model(hp, bundle, device=device, probes=DEFAULT_PROBES)
    train_s = result.metrics["wall_time"]
    model, make_ctx, make_oracle = _contexts(hp, result, bundle, device)

    def suite():
        ctx, oracle, out = make_ctx(), None, {}
        for m in REGISTRY:
            if m.oracle and oracle is None:
                oracle = make_oracle()
            start = time.perf_counter()
            try:
                value, error = m(oracle if m.oracle else ctx).value, None
            except Exception as err:  # a failing measure is reported with its error; the others go on
                value, error = None, f"{type(err).__name__}: {err}"
            out[m.name] = {"seconds": time.perf_counter() - start, "value": value, "error": error}
        return out

    if warm:
        suite()  # the first call of some measures initialises libraries (functorch, LAPACK)
    rows = suite()
    fb = _full_batch_pass(make_ctx())
    for row in rows.values():
        row["full_batch_passes"] = row["seconds"] / fb
    total = sum(r["seconds"] for r in rows.values())
    return ({"model": hp.flat(), "trained_epochs": result.metrics["epochs"], "converged": result.metrics["converged"],
             "train_s": train_s, "full_batch_pass_s": fb, "measures": len(rows),
             "failed": sorted(n for n, r in rows.items() if r["error"]), "suite_s": total,
             "suite_full_batch_passes": total / fb, "suite_over_training": total / train_s, "per_measure": rows},
            (model, make_ctx))


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


def hessian_vs_pyhessian(model, make_ctx: Callable, reps: int, reference: bool, device: torch.device) -> dict:
    """genbench's ``hessian.top_eig`` + ``hessian.trace`` (fresh Context each repetition, so the shared solve is
    paid) against PyHessian's power iteration + Hutchinson trace on the same samples (the whole training set)."""
    from measures import REGISTRY
    from measures.pacbayes import curvature_data
    ctx = make_ctx()
    x, y = curvature_data(ctx)
    out: dict = {"samples": len(y)}
    if "hessian.top_eig" in REGISTRY and "hessian.trace" in REGISTRY:
        def genbench():
            c = make_ctx()
            return REGISTRY.get("hessian.top_eig")(c).value, REGISTRY.get("hessian.trace")(c).value
        out["genbench_method"] = "registered hessian.top_eig + hessian.trace"
    else:
        def genbench():
            return _lanczos_on_context(make_ctx())
        out["genbench_method"] = "Lanczos on Context.hvp (hessian measures not registered)"
    (g_top, g_trace), g_s = genbench(), _best_time(genbench, reps, device)
    out.update(genbench_top_eig=g_top, genbench_trace=g_trace, genbench_s=g_s)
    try:
        import pyhessian
    except ImportError:
        out["pyhessian"] = "not installed (pip install genbench[perf])"
        return out

    def pyh():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            torch.manual_seed(0)  # PyHessian draws from the global generator; fork_rng restores it
            h = pyhessian.hessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=(x, y),
                                  cuda=device.type == "cuda")
            top = h.eigenvalues(top_n=1)[0][0]
            return top, float(np.mean(h.trace()))
    (p_top, p_trace), p_s = pyh(), _best_time(pyh, reps, device)
    out.update(pyhessian_top_eig=p_top, pyhessian_trace=p_trace, pyhessian_s=p_s, speedup=p_s / g_s,
               rel_diff_top_eig=abs(g_top - p_top) / abs(p_top), rel_diff_trace=abs(g_trace - p_trace) / abs(p_trace))
    out["agreement"] = max(out["rel_diff_top_eig"], out["rel_diff_trace"])
    # equal accuracy on λ_max: genbench's Lanczos alone against PyHessian's power iteration run to 1e-7
    def genbench_top():
        if "hessian.top_eig" in REGISTRY:
            return REGISTRY.get("hessian.top_eig")(make_ctx()).value
        return _lanczos_on_context(make_ctx())[0]

    def pyh_tight():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            torch.manual_seed(0)
            h = pyhessian.hessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=(x, y),
                                  cuda=device.type == "cuda")
            return h.eigenvalues(top_n=1, tol=1e-7, maxIter=1000)[0][0]
    g_top_s = _best_time(genbench_top, reps, device)
    p_tight, p_tight_s = pyh_tight(), _best_time(pyh_tight, reps, device)
    out.update(genbench_top_eig_s=g_top_s, pyhessian_tight_top_eig=p_tight, pyhessian_tight_top_eig_s=p_tight_s,
               top_eig_speedup_equal_accuracy=p_tight_s / g_top_s)
    ref = _hvp_reference(model, x, y, device, reference)
    out["reference"] = ref
    out["genbench_rel_err_top_eig"] = abs(g_top - ref["top_eig"]) / abs(ref["top_eig"])
    out["pyhessian_rel_err_top_eig"] = abs(p_top - ref["top_eig"]) / abs(ref["top_eig"])
    out["pyhessian_tight_rel_err_top_eig"] = abs(p_tight - ref["top_eig"]) / abs(ref["top_eig"])
    if "trace" in ref:
        out["genbench_rel_err_trace"] = abs(g_trace - ref["trace"]) / abs(ref["trace"])
        out["pyhessian_rel_err_trace"] = abs(p_trace - ref["trace"]) / abs(ref["trace"])
    return out


def _lanczos_on_context(ctx) -> tuple[float, float]:
    """Fallback when the Hessian measures are not registered: ARPACK on ``Context.hvp``, Hutchinson trace."""
    import scipy.sparse.linalg as sla
    n = ctx.num_params
    w = ctx.flatten(ctx.params)
    op = sla.LinearOperator((n, n), dtype=np.float64, matvec=lambda v: ctx.hvp(
        torch.as_tensor(np.asarray(v).reshape(-1)).to(w)).double().cpu().numpy())
    top = float(sla.eigsh(op, k=1, which="LA", tol=1e-3, return_eigenvectors=False, v0=np.ones(n))[0])
    g = ctx.generator("perf.trace")
    samples = []
    for _ in range(50):
        z = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(w)
        samples.append(float(z @ ctx.hvp(z)))
    return top, float(np.mean(samples))


def scaling(base: HParams, data: Callable[[DatasetHP], DataBundle], plan: Plan, device: torch.device) -> dict:
    """Seconds per stacked training step against the number of members (at the base width) and against the
    parameters per model (``plan.scaling_models`` members, several widths); log-log slopes."""
    def step_time(hps: list[HParams]) -> float:
        stack = Stack(hps, [data(hp.dataset) for hp in hps], device)
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, stack.n, (plan.scaling_steps, len(hps), base.train.batch_size), generator=g)
        idx = idx.to(device)

        offsets = stack.offsets.to(device)[:, None]

        def run():
            for i in range(plan.scaling_steps):
                stack.train_step(idx[i] + offsets)
        return _best_time(run, plan.reps, device) / plan.scaling_steps

    models = [step_time([base.replace(seed=s) for s in range(m)]) for m in plan.model_counts]
    params, sizes = [], []
    for w in plan.widths:
        hp = base.replace(**{"model.width": w})
        bundle = data(hp.dataset)
        sizes.append(sum(p.numel() for p in build_model(hp.model, bundle.in_shape, bundle.num_classes).parameters()))
        params.append(step_time([hp.replace(seed=s) for s in range(plan.scaling_models)]))
    return {"model_counts": list(plan.model_counts), "step_s_by_models": models,
            "models_slope": _slope(list(plan.model_counts), models),
            "widths": list(plan.widths), "params_per_model": sizes, "members": plan.scaling_models,
            "step_s_by_params": params, "params_slope": _slope(sizes, params)}


# ------------------------------------------------------------------------------------------------ report
def targets(values: dict) -> dict:
    out = {}
    for name, (op, threshold, what) in TARGETS.items():
        v = values.get(name)
        met = None if v is None else (v >= threshold if op == ">=" else v <= threshold if op == "<=" else v < threshold)
        out[name] = {"value": v, "target": f"{op} {threshold:g}", "met": met, "what": what}
    return out


def table(report: dict) -> str:
    """The report as a short readable text."""
    m, d = report["machine"], report["details"]
    lines = [f"genbench perf: {m['cpu']}, {m['cores']} cores, {m['threads']} torch thread(s), torch {m['torch']}, "
             f"{m['device']}{' (quick)' if report['quick'] else ''}", "",
             f"{'quantity':32s} {'value':>10s}  {'target':>8s}  met"]
    for name, t in report["targets"].items():
        shown = "n/a" if t["value"] is None else f"{t['value']:.4g}"
        met = "-" if t["met"] is None else "yes" if t["met"] else "NO"
        lines.append(f"{name:32s} {shown:>10s}  {t['target']:>8s}  {met}")
    z, ops = d["zoo"], d["zoo"]["order_parameters_s"]
    lines += ["", f"zoo: {z['models']} models x {z['epochs']} epochs in stacks {z['stacks']}: "
                  f"{z['vectorized_model_steps_per_s']:.0f} vs {z['looped_model_steps_per_s']:.0f} model-steps/s; "
                  f"order parameters {ops['vectorized']:.1f} s vs {ops['looped']:.1f} s, speedup without them "
                  f"{z['speedup_without_order_parameters']:.2f}"]
    p = d["peak"]
    lines.append(f"peak: {p['stacked_gflops']:.1f} GFLOP/s stacked, {p['looped_gflops']:.1f} alone, "
                 f"matmul {p['matmul_peak_gflops']:.1f}")
    s = d["measures"]
    slow = sorted(s["per_measure"].items(), key=lambda kv: -kv[1]["seconds"])[:5]
    lines.append(f"measures: {s['measures']} in {s['suite_s']:.2f} s = {s['suite_full_batch_passes']:.0f} full-batch "
                 f"passes; training {s['train_s']:.1f} s ({s['trained_epochs']} epochs); slowest "
                 + ", ".join(f"{n} {r['seconds']:.2f} s" for n, r in slow))
    h = d["hessian"]
    if "pyhessian_s" in h:
        lines.append(f"hessian: genbench {h['genbench_s']:.2f} s (top {h['genbench_top_eig']:.5g}, "
                     f"trace {h['genbench_trace']:.5g}) vs PyHessian {h['pyhessian_s']:.2f} s "
                     f"(top {h['pyhessian_top_eig']:.5g}, trace {h['pyhessian_trace']:.5g}); reference "
                     + ", ".join(f"{k} {v:.5g}" for k, v in h["reference"].items() if k != "params"))
    return "\n".join(lines)


def run(plan: Plan, device: torch.device, quick: bool) -> dict:
    start = time.perf_counter()
    info = machine(device)
    cfg = compose()
    zoo = expand(cfg)
    if plan.zoo_models is not None:
        chosen = []
        for stack in group_stacks(zoo):
            if len(chosen) < plan.zoo_models:
                chosen += stack[:plan.zoo_models - len(chosen)]
        zoo = chosen
    cache: dict[DatasetHP, DataBundle] = {}
    data = lambda d: cache[d] if d in cache else cache.setdefault(d, make_data(d))

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    peak = matmul_peak(device, plan.reps)
    timings["peak"] = time.perf_counter() - clock
    clock = time.perf_counter()
    zoo_out = zoo_throughput(zoo, data, plan.zoo_epochs, device)
    timings["zoo"] = time.perf_counter() - clock
    clock = time.perf_counter()
    peak_out = peak_fraction(expand(cfg), data, peak, plan.peak_steps, plan.reps, device)
    timings["peak_fraction"] = time.perf_counter() - clock
    clock = time.perf_counter()
    base = base_hparams(cfg).replace(**dict(plan.measure_overrides))
    suite_out, (model, make_ctx) = measure_suite(base, data(base.dataset), device, plan.warm_suite)
    timings["measures"] = time.perf_counter() - clock
    clock = time.perf_counter()
    hess = hessian_vs_pyhessian(model, make_ctx, plan.reps if not quick else 1, plan.hessian_reference, device)
    timings["hessian"] = time.perf_counter() - clock
    clock = time.perf_counter()
    scale = scaling(base_hparams(cfg).replace(**{k: v for k, v in plan.measure_overrides if k.startswith("dataset")}),
                    data, plan, device)
    timings["scaling"] = time.perf_counter() - clock

    values = {
        "train_speedup": zoo_out["speedup"], "train_peak_fraction": peak_out["fraction"],
        "suite_over_training": suite_out["suite_over_training"],
        "hessian_speedup_vs_pyhessian": hess.get("speedup"), "hessian_agreement": hess.get("agreement"),
        "models_slope": scale["models_slope"], "params_slope": scale["params_slope"],
        "peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,  # KiB on Linux
    }
    info["load_average_end"] = list(os.getloadavg())
    return {**values, "quick": quick, "machine": info, "plan": asdict(plan), "targets": targets(values),
            "details": {"zoo": zoo_out, "peak": peak_out, "measures": suite_out, "hessian": hess, "scaling": scale,
                        "section_seconds": timings},
            "total_s": time.perf_counter() - start}


def _finite(obj: Any) -> Any:
    """The report with non-finite floats as strings ("nan", "inf"), so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="genbench perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: under a minute, numbers indicative only")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own setting)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(QUICK if args.quick else FULL, torch.device(args.device), args.quick)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_finite(report), indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
