"""The README's "Running zoo=jiang on SLURM" recipe, small, against a real SLURM cluster.

CI brings up a single-node cluster on the test machine with ``.ci/slurm-up`` before ``pytest -m slow``; it
writes ``ok``, or why not, to /tmp/genbench-slurm-status, and this test skips (quoting the reason) unless
SLURM is usable. The test

1. shards a small smoke zoo (8 MLPs on scikit-learn's digits) over a 4-task SLURM job array with Hydra's
   submitit launcher, every job writing its own store, exactly as the README does;
2. ``scancel``s one array task while it trains, so that shard's models are lost;
3. resubmits the very same command: the finished shards' models are reused (their files are untouched),
   the cancelled shard is retrained, and the command exits 0;
4. merges the per-job stores with ``genbench collect`` and checks through the Python API that every model of
   the zoo is there exactly once and loadable.

The SLURM jobs run the venv's Python (submitit pickles the call with ``sys.executable``) on this node, so they
see ``tmp_path``. Uses no fixture of tests/conftest.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
STATUS = Path("/tmp/genbench-slurm-status")
SHARDS = 4
ZOO_SIZE = 8  # zoo=smoke: label_noise × train_size × width, 2 × 2 × 2
# Small, fast models; a tiny target loss that is never reached makes every model run all max_epochs, so a
# shard's job trains for ~20-30 s on one core (6,000 epochs: the stacked trainer and the log test schedule make
# an epoch of these models cost ~3 ms): long enough to be cancelled mid-run, short enough for CI.
ZOO = ["experiment=smoke", "model.depth=1", "zoo.axes.model.width=[8,16]",
       "zoo.axes.dataset.train_size=[200,300]", "dataset.test_size=200",
       "train.target_loss=1e-9", "train.max_epochs=6000"]
ACTIVE = "PD,R,CG,CF,S,RQ,RS,RF,SO"  # squeue states of a job that has not finished


def _slurm_unusable() -> str | None:
    """Why SLURM cannot be used here, or None."""
    missing = [t for t in ("sinfo", "sbatch", "squeue", "scancel") if shutil.which(t) is None]
    if missing:
        return f"no {', '.join(missing)} on PATH (CI installs SLURM with .ci/slurm-up)"
    if STATUS.exists():
        status = STATUS.read_text().strip()
        if status != "ok":
            return f".ci/slurm-up could not bring SLURM up: {status}"
    try:
        out = subprocess.run(["sinfo", "-h", "-t", "idle", "-o", "%n"], capture_output=True, text=True,
                             timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s (is slurmctld running? see .ci/slurm-up)"
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        return f"sinfo failed ({lines[-1] if lines else f'exit {out.returncode}'}); is slurmctld running?"
    if not out.stdout.strip():
        return "no idle SLURM node (sinfo -t idle lists none)"
    return None


def _squeue(*args: str) -> list[tuple[str, str]]:
    """(job id, state) rows, array tasks one per row, e.g. ("12_3", "RUNNING")."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", *args], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0:  # an empty answer must mean "no such job", never "squeue failed"
        pytest.fail(f"squeue {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return [tuple(line.split("|", 1)) for line in out.stdout.split() if "|" in line]


def _wait(predicate, timeout: float, what: str, logs=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def _end(proc: subprocess.Popen, grace: float) -> int:
    """The return code of ``proc`` after at most ``grace`` seconds, terminating its process group then."""
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # start_new_session: the group is this child's alone
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(timeout=15)


def _files(root: Path) -> dict[str, int]:
    """Modification times of a store's files other than its SQLite database (which opening may touch) and its
    caches (``cache/``: the record of checkpoints already checked, written on the run after they were)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and ".sqlite" not in p.name and not p.name.endswith(("-wal", "-shm", ".db"))
            and p.relative_to(root).parts[0] != "cache"}


def test_readme_slurm_recipe_survives_a_cancelled_job(tmp_path):
    reason = _slurm_unusable()
    if reason:
        pytest.skip(f"SLURM not usable: {reason}")
    from benchmark.store import Store

    name = f"genbench-test-{uuid.uuid4().hex[:8]}"  # the jobs' SLURM name: ours to watch and clean up
    jobs, sweep = tmp_path / "jobs", tmp_path / "sweep"
    genbench = [sys.executable, "-m", "benchmark.cli"]
    train = [*genbench, "train", "-m", *ZOO, "hydra/launcher=submitit_slurm",
             "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
             f"hydra.launcher.name={name}",
             f"zoo.num_shards={SHARDS}", f"zoo.shard=range(0,{SHARDS})", f"store.root={jobs}/${{zoo.shard}}",
             "run.jobs=1", "run.threads=1", "run.progress=false", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}

    def submit(log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(train, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def job_logs() -> str:
        tails = [f"--- {p.relative_to(tmp_path)}\n{_tail(p, 25)}" for p in sorted(sweep.glob(".submitit/*/*"))
                 if p.suffix in (".out", ".err") and p.stat().st_size]
        return "\n".join(tails[-8:]) or "(no submitit job logs)"

    def count(shard: int) -> int:
        root = jobs / str(shard)
        return len(Store(root).model_ids()) if root.exists() else 0

    procs: list[subprocess.Popen] = []
    try:
        # ---- 1. submit the sharded zoo; 2. cancel one array task while it runs
        log1 = tmp_path / "train-1.log"
        procs.append(first := submit(log1))
        logs1 = lambda: f"--- genbench train (first submission)\n{_tail(log1)}\n{job_logs()}"

        def running():
            if first.poll() is not None:
                pytest.fail(f"genbench train exited ({first.returncode}) before a job could be cancelled\n"
                            f"{logs1()}")
            return [job for job, state in _squeue("-n", name) if state == "RUNNING"]

        victim = _wait(running, 120, f"a RUNNING job named {name} in squeue", logs1)[0]
        shard = int(victim.split("_")[1])  # array task i runs the sweep's i-th job: zoo.shard=i
        # cancel it mid-training: once genbench has opened the shard's store (it then loads the data and
        # trains, for ~20 s), plus a moment. SLURM kills the job KillWait (5 s on CI) after the SIGTERM,
        # which submitit ignores, so the shard's models are never saved.
        _wait(lambda: (jobs / str(shard)).exists(), 120, f"job {victim} to open its store", logs1)
        time.sleep(2)
        subprocess.run(["scancel", victim], check=True, timeout=30)
        # really cancelled, so the test cannot pass vacuously (squeue keeps ended jobs for MinJobAge)
        _wait(lambda: dict(_squeue("-t", "all", "-j", victim)).get(victim) == "CANCELLED", 30,
              f"squeue to report {victim} CANCELLED", logs1)

        # the other tasks finish, then the first submission ends. With SLURM accounting, submitit learns from
        # sacct that the cancelled task is over and raises UncompletedJobError (exit 1, accepted). Without it
        # (CI's cluster has none), sacct fails, submitit cannot tell the task will never write its result and
        # would wait forever: there the first submission is ended once SLURM has no active task of ours left.
        _wait(lambda: not _squeue("-n", name, "-t", ACTIVE), 240, f"the other jobs of {name} to finish", logs1)
        accounting = shutil.which("sacct") is not None and subprocess.run(
            ["sacct", "-n", "-X", "-j", victim.split("_")[0]], capture_output=True, timeout=30).returncode == 0
        if accounting:
            try:
                first.wait(timeout=180)  # submitit polls sacct less and less often, at least every 60 s
            except subprocess.TimeoutExpired:
                pytest.fail(f"genbench train did not end after its job {victim} was cancelled\n{logs1()}")
        else:
            _end(first, grace=3)
        counts = {s: count(s) for s in range(SHARDS)}
        per_shard = ZOO_SIZE // SHARDS
        assert counts[shard] < per_shard, (
            f"the cancelled shard {shard} stored all its models before it was killed: {counts}\n{logs1()}")
        assert all(counts[s] == per_shard for s in counts if s != shard), (
            f"shards other than the cancelled {shard} did not all finish: {counts} models\n{logs1()}")
        before = {s: _files(jobs / str(s)) for s in range(SHARDS) if s != shard}

        # ---- 3. resubmit the very same command: the finished shards are skipped, the cancelled one retrained
        log2 = tmp_path / "train-2.log"
        procs.append(second := submit(log2))
        logs2 = lambda: f"--- genbench train (resubmission)\n{_tail(log2)}\n{job_logs()}"
        try:
            rc = second.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the resubmitted genbench train did not finish within 300 s\n{logs2()}")
        assert rc == 0, f"the resubmitted genbench train failed ({rc})\n{logs2()}"
        assert {s: count(s) for s in range(SHARDS)} == {s: per_shard for s in range(SHARDS)}, logs2()
        for s, files in before.items():
            assert files and _files(jobs / str(s)) == files, (
                f"shard {s} was already complete but its store's files changed on resubmission\n{logs2()}")

        # ---- 4. merge the per-job stores, as the README does, and load every model
        log3 = tmp_path / "collect.log"
        with log3.open("w") as out:
            rc = subprocess.run([*genbench, "collect", *ZOO, f"store.root={tmp_path / 'all'}",
                                 f"collect.sources=[{jobs}/*]"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, timeout=180).returncode
        assert rc == 0, f"genbench collect failed ({rc})\n{_tail(log3)}"
        shard_ids = [Store(jobs / str(s)).model_ids() for s in range(SHARDS)]
        assert sum(map(len, shard_ids)) == ZOO_SIZE and len(set().union(*shard_ids)) == ZOO_SIZE, (
            f"the shards do not partition the zoo: {[sorted(i) for i in shard_ids]}")
        store = Store(tmp_path / "all")
        ids = store.model_ids()
        assert len(ids) == ZOO_SIZE and ids == set().union(*shard_ids), (
            f"collected {len(ids)} models, expected the zoo's {ZOO_SIZE}\n{_tail(log3)}")
        for model_id in sorted(ids):
            init, final = store.load_states(model_id)
            assert init and final and init.keys() == final.keys(), model_id
    finally:
        subprocess.run(["scancel", "-n", name], capture_output=True, timeout=30)
        for proc in procs:
            if proc.poll() is None:
                _end(proc, grace=0)
