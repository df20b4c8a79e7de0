"""How fast genbench answers what needs no computing: a mistake in the config, an unknown name, ``--help``,
printing a stored leaderboard, listing the measures. Each is run as a user runs it, ``genbench`` in a fresh
process, and timed from start to exit; beside it, in the same run, the time Python takes to import torch alone,
which these answers must not pay (all but ``genbench measures``, which loads the measures and so torch).

Whether torch was imported is read from ``python -X importtime`` of the same command, once each."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

# name → (arguments, seconds allowed on a quiet 2-core machine, may it import torch)
ANSWERS = {
    "help": (["--help"], 1.5, False),
    "config_error": (["train", "model.width=0"], 1.5, False),
    "unknown_option": (["train", "dataset=nope"], 1.5, False),
    "unknown_component": (["run", "model.name=vit"], 1.5, False),
    "leaderboard": (["leaderboard"], 1.5, False),
    "unknown_leaderboard": (["leaderboard", "leaderboard.name=nope"], 1.5, False),
    "measures": (["measures"], 3.0, True),
}


def _command() -> list[str]:
    script = shutil.which("genbench")
    return [script] if script else [sys.executable, "-m", "benchmark.cli"]


def _seconds(argv: list[str], cwd: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def imports_torch(args: list[str], cwd: str, env: dict) -> bool:
    """Whether ``genbench ARGS`` imports torch (read from ``-X importtime``, which lists every module imported)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmark.cli", *args], cwd=cwd, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False).stderr
    return any(line.startswith("import time:") and line.split("|")[-1].strip() == "torch" for line in out.splitlines())


def answer_times(cwd: str, board: tuple[str, str] | None = None, repeats: int = 3) -> dict:
    """The median seconds of each answer over ``repeats`` runs in ``cwd``, whether it imported torch, its target, and
    the median seconds of ``python -c 'import torch'`` timed in the same run. ``board`` (folder, name): the stored
    leaderboard that ``genbench leaderboard`` prints (default: the default board under ``cwd``)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    torch_s = statistics.median(_seconds([sys.executable, "-c", "import torch"], cwd, env) for _ in range(repeats))
    out = {"import_torch_s": torch_s, "answers": {}}
    for name, (args, target, may_import) in ANSWERS.items():
        if board is not None and args[0] == "leaderboard":
            args = [*args, f"leaderboard.dir={board[0]}", *([] if "leaderboard.name=nope" in args
                                                             else [f"leaderboard.name={board[1]}"])]
        seconds = statistics.median(_seconds([*_command(), *args], cwd, env) for _ in range(repeats))
        torch = imports_torch(args, cwd, env)
        out["answers"][name] = {"args": " ".join(args), "seconds": seconds, "target_s": target, "torch": torch,
                                "ok": seconds <= target and (may_import or not torch)}
    quick = [a["seconds"] for name, a in out["answers"].items() if not ANSWERS[name][2]]
    out["slowest_quick_answer_s"] = max(quick)
    out["measures_answer_s"] = out["answers"]["measures"]["seconds"]
    out["all_ok"] = all(a["ok"] for a in out["answers"].values())
    return out


def lines(d: dict) -> list[str]:
    """The section's lines for the terminal and the Markdown report."""
    rows = [f"answers without computing (median of fresh `genbench` processes; `import torch` alone takes "
            f"{d['import_torch_s']:.2f} s here):"]
    for name, a in d["answers"].items():
        verdict = "ok" if a["ok"] else "SLOW" if a["seconds"] > a["target_s"] else "imports torch"
        rows.append(f"  genbench {a['args'][:60]:<60} {a['seconds']:5.2f} s (≤ {a['target_s']:.1f} s; "
                    f"torch {'imported' if a['torch'] else 'not imported'}) {verdict}")
    return rows
