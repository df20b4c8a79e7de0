"""The GPU check: does genbench give on a GPU what it gives on the CPU, and how fast is it there?

    python -m benchmark.perf.gpu [--device cuda] [--out DIR] [--quick] [--no-perf]
    genbench perf --gpu-check [the same options]

One short script for the machines where a GPU is lent, sized for about five minutes on one H100. Four steps, each on the
CPU and on ``--device`` from the same seeds:

1. **Training, the default zoo.** A slice of ``zoo=tiny`` (MLPs on MNIST-1D; the three seeds of its first
   configuration, then one seed of configurations spread over the grid) trained by ``train_many``, the stacked
   trainer ``genbench run`` uses, with the order-parameter probes. Every model trains for a fixed number of epochs:
   the target loss is set out of reach (``UNREACHED``) so that no model stops on one device an epoch before the
   other (they would then be compared at different epochs). Compared: the final training and test loss and error.
2. **Training, a conv task.** ``experiment=smoke model=cnn``: the 3×3 conv net on scikit-learn's 8×8 digits
   (``Conv2d``), the same way.
3. **Measures.** Every registered measure, as the pipeline computes it (``benchmark.measuring.jobs.compute``,
   oracle measures on the oracle Context), on one trained MLP (its seed replicates given) and one trained conv net.
   Both devices get the CPU-trained weights, so only the measures' own arithmetic differs.
4. **Speed.** ``genbench perf --device DEVICE --quick`` in a subprocess: models per minute of the smoke zoo's whole
   pipeline, and the training stage's useful FLOP/s as a fraction of the device's ``torch.mm`` peak.

**Tolerances.** The two devices run the same float32 arithmetic in a different order (cuBLAS and cuDNN split
their sums into other tiles than the CPU's kernels, and pick algorithms by shape), so every step's result differs
by a rounding error, about 1e-7 relative. Training carries those differences on, and SGD amplifies them slowly;
over a few epochs they stay far below the differences between seeds. A loss therefore agrees within
``LOSS_RTOL`` (1 %) relative, plus ``LOSS_ATOL`` (1e-4) for losses near 0. An error rate counts samples: a
sample whose two largest logits are within the rounding difference may land on either side, so the rates agree
within ``ERROR_SAMPLES`` (3) samples or ``ERROR_FRACTION`` (0.5 %) of the set, whichever is larger. A measure is
computed once from the same weights, without training's amplification, but some iterate (power iteration,
Lanczos, sharpness searches, fits) and a few search a discrete set (a power-law fit's x_min), so a value agrees
within ``MEASURE_RTOL`` (1e-3) relative, plus ``MEASURE_ATOL`` (1e-6) for values near 0; a measure that succeeds
on one device only fails the check. ``--device cpu`` runs the same steps CPU against CPU (a dry run proving the
script works; every difference is then 0).

The JSON (``gpu_check.json``) and the Markdown (``gpu_check.md``) go to ``--out``; the exit status is 0 when every
comparison passes, 1 otherwise. Asking for ``cuda`` where there is none says so in one line and exits 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmark.config import compose
from benchmark.errors import UserError
from benchmark.files import write_text
from benchmark.measuring.context import Trained
from benchmark.measuring.jobs import compute
from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.training.loop import TrainResult
from benchmark.training.stacked import train_many
from benchmark.zoo.datasets import make_data
from benchmark.zoo.grid import expand
from benchmark.zoo.hparams import HParams

LOSS_RTOL, LOSS_ATOL = 1e-2, 1e-4
ERROR_SAMPLES, ERROR_FRACTION = 3, 0.005
MEASURE_RTOL, MEASURE_ATOL = 1e-3, 1e-6
UNREACHED = 1e-12  # the target loss of the check's models (the stopping rule needs one > 0)
PERF_TIMEOUT_S = 420  # genbench perf --quick: about a minute; the device's time is lent by the quarter hour
MLP_ZOO = ("zoo=tiny",)
CONV_ZOO = ("experiment=smoke", "model=cnn")


@dataclasses.dataclass(frozen=True)
class Slice:
    """How much each step does: the default is the real check, ``--quick`` the smallest that covers every step."""
    mlp_models: int
    mlp_epochs: int
    conv_models: int
    conv_epochs: int
    mlp_changes: tuple[tuple[str, Any], ...] = ()  # hyperparameters changed in every model of a slice
    conv_changes: tuple[tuple[str, Any], ...] = ()
    measures: tuple[str, ...] | None = None  # the measures compared (None: every registered one)


FULL = Slice(mlp_models=6, mlp_epochs=10, conv_models=2, conv_epochs=10)
QUICK = Slice(mlp_models=2, mlp_epochs=2, conv_models=1, conv_epochs=2, mlp_changes=(("dataset.train_size", 200),),
              conv_changes=(("dataset.train_size", 200), ("model.width", 8)))


def mlp_slice(n: int) -> list[HParams]:
    """``n`` models of the default zoo: the seeds of its first configuration (replicates, for the measures that
    compare seeds), then seed 0 of configurations spread evenly over the rest of the grid."""
    hps = expand(compose(*MLP_ZOO))
    seeds = len({hp.seed for hp in hps})
    first, rest = hps[:min(n, seeds)], hps[seeds::seeds]
    k = n - len(first)
    return first + [rest[round(i * (len(rest) - 1) / max(1, k - 1))] for i in range(k)] if k > 0 else first


def conv_slice(n: int) -> list[HParams]:
    """The first ``n`` models of the smoke zoo with the conv net (``model=cnn``) on the digits."""
    return expand(compose(*CONV_ZOO))[:n]


def fixed_epochs(hps: list[HParams], epochs: int, changes: tuple[tuple[str, Any], ...] = ()) -> list[HParams]:
    """The models with exactly ``epochs`` epochs each (and ``changes``): no model reaches a target loss of
    ``UNREACHED`` in so few epochs (one that did would stop on both devices; the epochs are compared too)."""
    return [hp.replace(**{"train.max_epochs": epochs, "train.target_loss": UNREACHED, **dict(changes)}) for hp in hps]


def train(hps: list[HParams], device: torch.device) -> tuple[list[TrainResult], float]:
    """The models trained by the pipeline's trainer on ``device``, and the wall time."""
    cache: dict = {}
    data = lambda d: cache[d] if d in cache else cache.setdefault(d, make_data(d))
    start = time.perf_counter()
    results = train_many(hps, data, device=device, probes=DEFAULT_PROBES)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return results, time.perf_counter() - start


def _config(hp: HParams) -> HParams:
    """The configuration of ``hp``: its hyperparameters without the seed (replicates share it)."""
    return hp.replace(seed=0)


def loss_agrees(a: float, b: float) -> bool:
    return abs(a - b) <= LOSS_ATOL + LOSS_RTOL * max(abs(a), abs(b))


def error_agrees(a: float, b: float, n: int) -> bool:
    return abs(a - b) * n <= max(ERROR_SAMPLES, ERROR_FRACTION * n) + 1e-9


def compare_training(hps: list[HParams], device: torch.device) -> tuple[dict, list[TrainResult]]:
    """Train ``hps`` on the CPU and on ``device``: per model, both final metrics and whether each agrees; and the
    CPU-trained models."""
    cpu, cpu_s = train(hps, torch.device("cpu"))
    dev, dev_s = train(hps, device)
    rows = []
    for hp, a, b in zip(hps, cpu, dev):
        row: dict[str, Any] = {"model_id": hp.model_id, "width": hp.model.width, "seed": hp.seed,
                               "epochs": [a.metrics["epochs"], b.metrics["epochs"]], "agree": True}
        for split, n in (("train", hp.dataset.n_train), ("test", hp.dataset.test_size)):
            for kind in ("loss", "error"):
                x, y = float(a.metrics[f"{split}_{kind}"]), float(b.metrics[f"{split}_{kind}"])
                ok = loss_agrees(x, y) if kind == "loss" else error_agrees(x, y, n)
                row[f"{split}_{kind}"] = [x, y]
                row["agree"] = row["agree"] and ok and a.metrics["epochs"] == b.metrics["epochs"]
        row["max_abs_param_diff"] = max(float((a.final_state[k] - b.final_state[k]).abs().max())
                                        for k in a.final_state)
        rows.append(row)
    return {"models": rows, "cpu_s": cpu_s, "device_s": dev_s, "passed": all(r["agree"] for r in rows),
            "epochs": hps[0].train.max_epochs}, cpu


def _measure_all(result: TrainResult, replicates: list[TrainResult], device: torch.device,
                 names: tuple[str, ...] | None) -> dict[str, dict]:
    """Every registered measure (or those ``names``) on ``result``'s weights on ``device``: value (or None),
    status, seconds."""
    import measures
    data = make_data(result.hparams.dataset)
    trained = Trained.from_result(result, data, device)
    others = [Trained.from_result(r, data, device).model for r in replicates]
    trained = dataclasses.replace(trained, replicates=others or None)
    ctx, oracle = trained.context(0), trained.context(0, oracle=True)
    out = {}
    for m in measures.REGISTRY if names is None else map(measures.REGISTRY.get, names):
        value, status, error, _, seconds = compute(m, ctx, oracle if m.oracle else ctx, None)
        out[m.name] = {"value": value, "status": status, "error": error, "seconds": seconds}
    ctx.leave()
    return out


def rel_diff(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if a == b else abs(a - b) / scale if scale > 0 else math.inf


def compare_measures(result: TrainResult, replicates: list[TrainResult], device: torch.device,
                     names: tuple[str, ...] | None = None) -> dict:
    """Every measure on the same weights on the CPU and on ``device``: the values that differ beyond the
    tolerance, the measures that succeed on one device only, and the ten largest relative differences."""
    cpu = _measure_all(result, replicates, torch.device("cpu"), names)
    dev = _measure_all(result, replicates, device, names)
    rows, one_sided = [], []
    for name in cpu:
        a, b = cpu[name], dev[name]
        if (a["status"] == "ok") != (b["status"] == "ok"):
            one_sided.append({"measure": name, "cpu": a["status"], "device": b["status"],
                              "error": a["error"] or b["error"]})
        elif a["status"] == "ok":
            x, y = a["value"], b["value"]
            rows.append({"measure": name, "cpu": x, "device": y, "rel_diff": rel_diff(x, y),
                         "agree": abs(x - y) <= MEASURE_ATOL + MEASURE_RTOL * max(abs(x), abs(y))})
    rows.sort(key=lambda r: -r["rel_diff"])
    failed = [r for r in rows if not r["agree"]]
    return {"model_id": result.hparams.model_id, "model": result.hparams.model.name, "measures": len(cpu),
            "compared": len(rows), "not_ok_on_both": [{"measure": n, "status": a["status"], "error": a["error"]}
                                                      for n, a in cpu.items()
                                                      if a["status"] != "ok" and dev[n]["status"] != "ok"],
            "slowest_s": dict(sorted(((n, a["seconds"]) for n, a in cpu.items()), key=lambda kv: -kv[1])[:5]),
            "beyond_tolerance": failed, "one_sided": one_sided, "worst": rows[:10],
            "cpu_s": sum(v["seconds"] for v in cpu.values()), "device_s": sum(v["seconds"] for v in dev.values()),
            "passed": not failed and not one_sided}


def perf_quick(device: torch.device, folder: Path) -> dict:
    """``genbench perf --device DEVICE --quick`` in a fresh process; its models per minute and peak fraction."""
    path = folder / "perf.json"
    cmd = [sys.executable, "-m", "benchmark.perf.bench", "--device", str(device), "--quick", "--json", str(path)]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PERF_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd[2:]), "returncode": None, "stderr": f"no answer in {PERF_TIMEOUT_S} s",
                "passed": False}
    if done.returncode != 0:
        return {"command": " ".join(cmd[2:]), "returncode": done.returncode, "stderr": done.stderr[-2000:],
                "passed": False}
    report = json.loads(path.read_text())
    p = report["details"]["pipeline"]
    return {"command": "genbench perf --device " + str(device) + " --quick", "returncode": 0,
            "wall_s": time.perf_counter() - start, "models": p["models"],
            "models_per_minute": report["pipeline_models_per_minute"],
            "matmul_peak_gflops": p["matmul_peak_gflops"], "training_gflops": p["training_gflops"],
            "peak_fraction": report["zoo_peak_fraction"], "device_name": report["machine"].get("gpu"),
            "passed": True}


def check(device: torch.device, plan: Slice, perf: bool = True) -> dict:
    """The four steps on ``device`` against the CPU; ``perf=False`` leaves out step 4."""
    start = time.perf_counter()
    mlp = fixed_epochs(mlp_slice(plan.mlp_models), plan.mlp_epochs, plan.mlp_changes)
    conv = fixed_epochs(conv_slice(plan.conv_models), plan.conv_epochs, plan.conv_changes)
    out: dict[str, Any] = {"device": str(device), "plan": dataclasses.asdict(plan),
                           "tolerances": {"loss_rtol": LOSS_RTOL, "loss_atol": LOSS_ATOL,
                                          "error_samples": ERROR_SAMPLES, "error_fraction": ERROR_FRACTION,
                                          "measure_rtol": MEASURE_RTOL, "measure_atol": MEASURE_ATOL}}
    if device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(device)
    out["mlp_training"], mlp_cpu = compare_training(mlp, device)
    out["conv_training"], conv_cpu = compare_training(conv, device)
    same = [r for r in mlp_cpu[1:] if _config(r.hparams) == _config(mlp_cpu[0].hparams)]
    out["mlp_measures"] = compare_measures(mlp_cpu[0], same, device, plan.measures)
    out["conv_measures"] = compare_measures(conv_cpu[0], [], device, plan.measures)
    if perf:
        with tempfile.TemporaryDirectory(prefix="genbench-gpu-check-") as work:
            out["perf"] = perf_quick(device, Path(work))
    steps = ("mlp_training", "conv_training", "mlp_measures", "conv_measures", "perf")
    out["passed"] = all(out[s]["passed"] for s in steps if s in out)
    out["total_s"] = time.perf_counter() - start
    return out


def _pair(v: list[float], digits: int = 4) -> str:
    return f"{v[0]:.{digits}g} / {v[1]:.{digits}g}"


def markdown(report: dict) -> str:
    """The check as a short page: a verdict per step, the models' metrics on both devices, the measures that
    differ most, and the speed."""
    t = report["tolerances"]
    verdict = lambda ok: "passed" if ok else "**FAILED**"
    lines = ["# genbench GPU check", "",
             f"`{report['device']}`" + (f" ({report['device_name']})" if "device_name" in report else "")
             + f" against `cpu`, {report['total_s']:.0f} s: {verdict(report['passed'])}. Tolerances: losses within "
               f"{t['loss_rtol']:g} relative + {t['loss_atol']:g}; error rates within {t['error_samples']} samples "
               f"or {t['error_fraction']:.1%} of the set; measures within {t['measure_rtol']:g} relative + "
               f"{t['measure_atol']:g} (docstring of `benchmark.perf.gpu`).", ""]
    for key, title in (("mlp_training", "Training, default zoo (MLPs on MNIST-1D)"),
                       ("conv_training", "Training, conv net on the digits")):
        s = report[key]
        lines += [f"## {title}: {verdict(s['passed'])}", "",
                  f"{len(s['models'])} models, {s['epochs']} epochs each; {s['cpu_s']:.1f} s on cpu, "
                  f"{s['device_s']:.1f} s on the device. Each cell: cpu / device.", "",
                  "| model | width | seed | train loss | train error | test loss | test error | max param diff "
                  "| agree |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in s["models"]:
            lines.append(f"| `{r['model_id']}` | {r['width']} | {r['seed']} | {_pair(r['train_loss'])} | "
                         f"{_pair(r['train_error'])} | {_pair(r['test_loss'])} | {_pair(r['test_error'])} | "
                         f"{r['max_abs_param_diff']:.1e} | {'yes' if r['agree'] else '**no**'} |")
        lines.append("")
    for key, title in (("mlp_measures", "Measures, one MLP"), ("conv_measures", "Measures, one conv net")):
        s = report[key]
        lines += [f"## {title}: {verdict(s['passed'])}", "",
                  f"Model `{s['model_id']}` ({s['model']}): {s['measures']} measures, {s['compared']} with a value on "
                  f"both devices, {len(s['not_ok_on_both'])} not applicable or failed on both, "
                  f"{len(s['beyond_tolerance'])} beyond the tolerance, {len(s['one_sided'])} with a value on one "
                  f"device only; {s['cpu_s']:.1f} s on cpu, {s['device_s']:.1f} s on the device.", ""]
        for r in s["one_sided"]:
            lines.append(f"- `{r['measure']}`: {r['cpu']} on cpu, {r['device']} on the device ({r['error']})")
        lines += ["", "| measure | cpu | device | relative difference | agree |", "|---|---|---|---|---|"]
        for r in s["beyond_tolerance"] + [r for r in s["worst"] if r["agree"]]:
            lines.append(f"| `{r['measure']}` | {r['cpu']:.6g} | {r['device']:.6g} | {r['rel_diff']:.1e} | "
                         f"{'yes' if r['agree'] else '**no**'} |")
        lines.append("")
    if "perf" in report:
        p = report["perf"]
        lines += ["## Speed", ""]
        if p["returncode"] != 0:
            lines.append(f"`{p['command']}` failed (exit {p['returncode']}):\n\n```\n{p['stderr']}\n```")
        else:
            lines.append(f"`{p['command']}` ({p['wall_s']:.0f} s): the smoke zoo's {p['models']} models through the "
                         f"whole pipeline at {p['models_per_minute']:.1f} models per minute; training at "
                         f"{p['training_gflops']:.1f} GFLOP/s, {p['peak_fraction']:.3f} of the device's `torch.mm` "
                         f"peak ({p['matmul_peak_gflops']:.0f} GFLOP/s, fp32).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check, write ``gpu_check.json`` and ``gpu_check.md`` to ``--out``; 0 if it passed, 1 if not."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU (default cuda)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder of the JSON and Markdown")
    parser.add_argument("--quick", action="store_true", help="the smallest slice (a dry run of the plumbing)")
    parser.add_argument("--no-perf", dest="perf", action="store_false", help="leave out genbench perf --quick")
    parser.add_argument("--measures", help="compare only these measures (comma-separated names)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.measures:
        import measures
        names = tuple(n.strip() for n in args.measures.split(",") if n.strip())
        unknown = [n for n in names if n not in measures.REGISTRY]
        if unknown:
            raise UserError(f"--measures: unknown measure(s) {', '.join(unknown)}; `genbench measures` lists them")
        plan = dataclasses.replace(plan, measures=names)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UserError(f"--device {args.device}: not a torch device ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is available here (torch.cuda.is_available() is "
                        "False); the GPU check runs only where one is lent")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    report = check(device, plan, perf=args.perf)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(args.out / "gpu_check.md", markdown(report))
    print(markdown(report).split("\n\n")[1])
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if report["passed"] else 1


def _entry(argv: list[str]) -> int:
    """``main`` with a ``UserError`` as one line on stderr and exit status 2, as the ``genbench`` CLI does."""
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_entry(sys.argv[1:]))
