"""The report of ``genbench perf``: each number's target (``TARGETS``), whether it is met, the readable table
printed at the end and the Markdown report (``--md``), all from the same numbers."""
from __future__ import annotations

from typing import Any

from benchmark.perf.answers import lines as answer_lines
from benchmark.perf.incremental import lines as incremental_lines

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
    "slowest_quick_answer_s": ("<=", 1.5, "seconds of the slowest answer that needs no computing (a config "
                                          "mistake, an unknown name, --help, a stored leaderboard), a fresh "
                                          "genbench process; none of them may import torch (answers section)"),
    "measures_answer_s": ("<=", 3.0, "seconds of `genbench measures` (lists the registry; imports torch)"),
    "train_speedup": (None, None, "stacked over per-model training, model-steps/s (reported, no target)"),
    "conv_train_speedup": (">=", 3.0, "stacked over per-model training of conv nets (every registered conv "
                                      "architecture, 8×8 digits and 14×14 Fashion-MNIST), model-steps/s"),
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
    "plugin_score_s": ("<=", 10.0, "seconds of `genbench run measures.plugins=[m.py]` scoring a new measure (under "
                                   "1 ms per model) on the cached default zoo, a fresh process, end to end"),
    "plugin_score_speedup": (None, None, "the same command recomputing every statistic and figure, over "
                                         "plugin_score_s, timed in the same run (reported)"),
    "standard_plugin_score_s": ("<=", 30.0, "plugin_score_s on the cached standard benchmark (with --standard "
                                            "STORE LEADERBOARD)"),
    "pipeline_s_at_70_gflops": ("<=", 600.0, "default pipeline at 70 GFLOP/s ≤ 600 s: its wall time × the "
                                             "torch.mm peak measured with it / 70, the time on a machine of that "
                                             "peak if time scales with the peak"),
    "peak_elasticity": (None, None, "log(time ratio) / log(peak ratio) of a training slice and torch.mm with 1 "
                                    "and 2 threads: 1 when time scales with the peak (reported; CPU only)"),
}


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
    for key, sc in d.get("scaled", {}).items():
        lines.append(f"{key} at {sc['reference_gflops']:.0f} GFLOP/s: {sc['wall_s']:.0f} s × "
                     f"{sc['peak_gflops']:.1f} / {sc['reference_gflops']:.0f} = {sc['at_reference_s']:.0f} s "
                     f"({sc['gflop_seconds']:.0f} GFLOP·s at {sc['peak_threads']} thread(s))")
    f = d["floor"]
    lines.append(f"floor: {f['suite_flops']['total'] / 1e12:.2f} TFLOP of measures + "
                 f"{d['pipeline']['useful_flops']['total'] / 1e12:.2f} of training at the peak take "
                 f"{f['floor_s']:.0f} s = at most {f['floor_models_per_minute']:.0f} models/min")
    if "answers" in d:
        lines += answer_lines(d["answers"])
    if "incremental" in d:
        lines += incremental_lines(d["incremental"])
    i = d["isolation"]
    lines.append(f"isolation: {i['isolated_s']:.1f} s isolated vs {i['in_process_s']:.1f} s in process on "
                 f"{i['models']} models; guard {i['guard_ms_per_measure']:.2f} ms per measure")
    h = d["hessian"]
    if "pyhessian_s" in h:
        lines.append(f"hessian: genbench {h['genbench_s']:.2f} s vs PyHessian {h['pyhessian_s']:.2f} s; errors "
                     f"genbench {h['genbench_rel_err']}, PyHessian {h['pyhessian_rel_err']}")
    return "\n".join(lines)


def _scaled_markdown(d: dict) -> list[str]:
    """The section on each pipeline's time scaled to the reference peak (``scaled_pipelines``, ``peak_elasticity``)."""
    if "scaled" not in d:
        return []
    ref = next(iter(d["scaled"].values()))["reference_gflops"]
    lines = ["", f"## The pipeline at a {ref:.0f} GFLOP/s peak", "",
             f"Each pipeline's wall time times the `torch.mm` peak measured in its own run (fp32, the threads of the "
             f"pipeline's workers) is the work it took in GFLOP-seconds; over {ref:.0f} GFLOP/s, the peak of the "
             f"slow 2-core machine `genbench run` must suit, it is the time there. This assumes the time scales "
             f"with the matmul peak, a fair first model where the work is mostly matmuls (training steps, "
             f"Hessian-vector products, perturbed copies); the target is the default pipeline within 600 s.", "",
             "| zoo | wall s | peak GFLOP/s | threads | GFLOP·s | s at the reference peak |",
             "|---|---|---|---|---|---|"]
    for key, sc in d["scaled"].items():
        lines.append(f"| {PIPELINES[key]} | {sc['wall_s']:.1f} | {sc['peak_gflops']:.1f} | {sc['peak_threads']} | "
                     f"{sc['gflop_seconds']:.0f} | {sc['at_reference_s']:.0f} |")
    e = d.get("peak_scaling", {})
    lines.append("")
    if e.get("elasticity") is not None:
        lines.append(f"The assumption, checked: {e['models']} models of the zoo's largest stack trained for "
                     f"{e['epochs']} epoch(s) took {e['slice_s'][0]:.2f} s with 1 thread and {e['slice_s'][1]:.2f} s "
                     f"with 2 (×{e['time_ratio']:.2f}), while the `torch.mm` peak went from "
                     f"{e['peak_gflops'][0]:.1f} to {e['peak_gflops'][1]:.1f} GFLOP/s (×{e['peak_ratio']:.2f}): an "
                     f"elasticity of {e['elasticity']:.2f} (1 when time follows the peak; below 1, scaling by the "
                     "peak flatters a slower machine).")
    elif e:
        lines.append(f"The assumption was not checked in this run: {e.get('skipped') or e.get('why')}.")
    return lines


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
    lines += _scaled_markdown(d)
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
    if "answers" in d:
        lines += ["", "## Answers without computing", "", *answer_lines(d["answers"])]
    if "incremental" in d:
        lines += ["", "## Scoring a new measure", "", *incremental_lines(d["incremental"])]
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
