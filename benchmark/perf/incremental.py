"""How long a researcher waits to see a new measure on a board: ``genbench run measures.plugins=[m.py]`` against a
zoo that is already trained, measured and evaluated, timed as a user runs it (a fresh ``genbench`` process, start
to exit), against the same command with every statistic and figure computed again (``evaluate.cache=false`` and
the figures' manifests removed) in the same run.

Each repetition scores a measure the store has never seen (a plugin file with a fresh name, costing well under
10 ms per model), so that every repetition pays for computing its values, its statistics and the figures that
involve it, as a new measure does."""
from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from benchmark.perf.answers import _command
from benchmark.report.figure_cache import MANIFEST

PLUGIN = '''"""A measure that genbench perf scores to time the researcher's loop: the summed absolute weight change."""
from measures import Context, measure


@measure("perf.{name}", needs=("model", "init_model"), sign=+1, family="plugin", reference="genbench perf")
def weight_change(ctx: Context) -> float:
    """Sum of the absolute weight changes from initialization."""
    return sum(float((w - w0).abs().sum()) for w, w0 in zip(ctx.weights, ctx.init_weights))
'''


def _plugin(folder: Path, name: str) -> Path:
    path = folder / f"perf_{name}.py"
    path.write_text(PLUGIN.format(name=name))
    return path


def _run(args: list[str], cwd: Path) -> float:
    """Seconds of one ``genbench`` command in a fresh process; a failure raises with its last lines."""
    start = time.perf_counter()
    done = subprocess.run([*_command(), *args], cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"genbench {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def plugin_times(overrides: list[str], store: Path, boards: Path, work: Path, reps: int = 3) -> dict:
    """The median seconds of scoring a new plugin measure on the zoo of ``overrides`` stored in ``store`` (its
    boards under ``boards``, evaluated before), incrementally and with everything recomputed, over ``reps``
    repetitions of each, alternated; their ratio is the speedup of the cache."""
    work.mkdir(parents=True, exist_ok=True)
    base = [*overrides, f"store.root={store}", f"leaderboard.dir={boards}", "run.progress=false"]
    incremental, full = [], []
    for rep in range(reps):
        plugin = _plugin(work, f"incremental_{rep}_{time.time_ns()}")
        incremental.append(_run(["run", *base, f"measures.plugins=[{plugin}]"], work))
        for manifest in boards.rglob(MANIFEST):
            manifest.unlink()
        plugin = _plugin(work, f"full_{rep}_{time.time_ns()}")
        full.append(_run(["run", *base, f"measures.plugins=[{plugin}]", "evaluate.cache=false"], work))
    inc, rec = statistics.median(incremental), statistics.median(full)
    return {"overrides": overrides, "incremental_s": inc, "full_s": rec, "speedup": rec / inc,
            "incremental_runs_s": incremental, "full_runs_s": full}


def lines(d: dict) -> list[str]:
    """The section's lines for the terminal and the Markdown report."""
    out = ["scoring a new measure on a stored zoo (`genbench run measures.plugins=[m.py]`, a fresh process each, "
           "median):"]
    for label, r in d.items():
        out.append(f"  {label}: {r['incremental_s']:.1f} s with the caches, {r['full_s']:.1f} s recomputing every "
                   f"statistic and figure (×{r['speedup']:.1f})")
    return out
