"""The command line as a user meets it: every mistake is one line on stderr and exit status 2, with no
traceback; ``--debug`` shows the traceback; Ctrl-C is exit 130 and the rerun resumes; a kill -9 of genbench
leaves none of its worker processes behind."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.perf.answers import ANSWERS, imports_torch
from benchmark.store import Store
from tests.conftest import TINY

SIX = ["zoo.axes.dataset.label_noise=[0.0,0.1,0.2]", "zoo.axes.model.width=[8,16]",
       "zoo.axes.dataset.train_size=[240]"]  # 240 clean: 300 samples in all at label noise 0.2


REPO = Path(__file__).resolve().parents[2]


def genbench(*args, cwd, timeout=300, debug=False):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [sys.executable, "-m", "benchmark.cli", *args, *(["--debug"] if debug else [])]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _one_line(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("genbench") and "Traceback" not in out.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def plugin_with_import_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import math\n\nimport numpy_that_does_not_exist\n")
    return path


@pytest.mark.parametrize("args,fragments", [
    (["train", "model.width=0"], ["model.width must be >= 1, got 0"]),
    (["train", "train.batch_size=abc"], ["train.batch_size", "could not be converted to Integer"]),
    (["train", "dataset.label_noise=1.5"], ["dataset.label_noise must be in [0, 1), got 1.5"]),
    (["train", "dataset=nope"], ["Could not find 'dataset/nope'", "mnist1d"]),
    (["train", "zoo=none", "dataset=digits", "dataset.image_size=3", "dataset.train_size=100"],
     ["dataset.image_size=3 must divide the sides of digits's 8×8 images"]),
    (["train", "model.name=vit"], ["unknown model 'vit'; valid: mlp, cnn, cnn_bn, resnet"]),
    (["train", "optimizer.lr=50"], ["optimizer.lr=50 would have no effect: the zoo 'tiny' varies optimizer.lr",
                                    "zoo.axes.optimizer.lr=[50]"]),
    (["measures", "measures.include=[nope]"], ["unknown measure 'nope'; valid:", "path_norm"]),
    (["measures", "measures.plugins=[/no/such/plugin.py]"], ["measure plugin file not found: /no/such/plugin.py"]),
    (["fly"], ["unknown command 'fly'; valid: run, train"]),
])
def test_a_mistake_is_one_line_and_exit_2(tmp_path, args, fragments):
    _one_line(genbench(*args, f"store.root={tmp_path}/s" if args[0] != "fly" else "x=1", cwd=tmp_path), *fragments)
    assert not (tmp_path / "s" / "checkpoints").exists() or not any((tmp_path / "s" / "checkpoints").iterdir())


def test_a_plugin_that_fails_to_import_names_its_file_and_line(tmp_path, plugin_with_import_error):
    out = genbench("measures", f"measures.plugins=[{plugin_with_import_error}]", cwd=tmp_path)
    _one_line(out, str(plugin_with_import_error), "line 3", "ModuleNotFoundError")


def test_debug_shows_the_traceback(tmp_path):
    out = genbench("train", "model.width=0", cwd=tmp_path, debug=True)
    assert out.returncode != 0 and "Traceback" in out.stderr and "HParamsError" in out.stderr


@pytest.mark.parametrize("kind,fragments", [
    ("corrupt", ["is corrupt or not an SQLite file"]),
    ("malformed", ["is corrupt or not an SQLite file", "malformed"]),
    ("foreign", ["not a genbench store", "photos"]),
    ("old", ["older genbench (store schema 1", "genbench migrate store.root="]),
    ("future", ["store schema 9, which this genbench cannot read"]),
])
def test_an_unusable_store_is_one_line(tmp_path, kind, fragments):
    root = tmp_path / "store"
    root.mkdir()
    path = root / "genbench.sqlite"
    if kind == "corrupt":
        path.write_bytes(b"\x00garbage" * 500)
    elif kind == "malformed":  # a real store whose pages were damaged: "database disk image is malformed"
        store = Store(root)
        for i in range(400):
            store.save_measurement(f"model-{i}", "m", 1, float(i), 0.0, "ok", details={"pad": "x" * 200})
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(path.read_bytes())
        data[4096:4096 * 3] = b"\xff" * (4096 * 2)
        path.write_bytes(bytes(data))
    elif kind == "foreign":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE photos (id INTEGER)")
    else:
        Store(root)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", ("1" if kind == "old" else "9",))
    _one_line(genbench("measure", *TINY, f"store.root={root}", cwd=tmp_path), *fragments)


def test_missing_dataset_files_name_the_path_and_the_option(tmp_path):
    out = genbench("train", "dataset=mnist", f"dataset.root={tmp_path}/nothing", "zoo=none",
                   f"store.root={tmp_path}/s", cwd=tmp_path)
    _one_line(out, "MNIST files not found under", "dataset.download=true")


def test_a_zoo_where_no_model_converged_says_nothing_to_rank(tmp_path):
    out = genbench("run", *TINY, "optimizer.lr=100000", "train.max_epochs=3", f"store.root={tmp_path}/s",
                   f"leaderboard.dir={tmp_path}/lb", cwd=tmp_path)
    _one_line(out, "nothing to rank: 0 of the 4 models", "diverged", "ran out of epochs")
    assert not (tmp_path / "lb").exists()


def _children(pid: int) -> set[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's bookkeeping remains


def _models(root: Path) -> int:
    try:
        with sqlite3.connect(root / "genbench.sqlite", timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM models").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _start_training(root: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmark.cli", "train", *TINY, *SIX, f"store.root={root}", "run.jobs=2",
           "run.vectorize=false", *extra]
    # SIGINT back to its default in the child: a test run started in the background (`pytest &`, nohup) ignores
    # it, the child would inherit that, and Python would then never raise KeyboardInterrupt on Ctrl-C
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_models(proc, root, at_least, limit=240.0):
    start = time.monotonic()
    while _models(root) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < limit, "no model was stored in time"
        time.sleep(0.05)


def test_kill9_of_genbench_leaves_no_worker_behind(tmp_path):
    root = tmp_path / "store"
    proc = _start_training(root)
    try:
        _wait_for_models(proc, root, 1)
        workers = _children(proc.pid)
        assert workers, "training ran without worker processes"
        os.kill(proc.pid, signal.SIGKILL)  # the genbench process alone, as `kill -9 <pid>` does
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived genbench"
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path):
    root = tmp_path / "store"
    proc = _start_training(root)
    _wait_for_models(proc, root, 1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("train:")]
    assert lines == ["genbench train: interrupted; what finished is stored, and the same command resumes"], err
    store = Store(root)  # nothing half-written: every row has its checkpoint, no temporary file survives
    done = store.model_ids()
    for model_id in done:
        store.load_states(model_id)
    assert not list((root / "checkpoints").glob("*.tmp"))
    rerun = genbench("train", *TINY, *SIX, f"store.root={root}", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(done)} reused from" in rerun.stdout + rerun.stderr
    assert len(Store(root).model_ids()) == 6


@pytest.mark.parametrize("name", [n for n, (_, _, may_import) in ANSWERS.items() if not may_import])
def test_quick_answers_do_not_import_torch(name):
    """A mistake in the config, an unknown name, --help and printing a stored leaderboard need no torch: they are
    answered before it would be imported (``genbench perf`` times them; here, only that torch stays out). Run in
    the repository, whose leaderboard/ holds the default board that ``genbench leaderboard`` prints."""
    args = ANSWERS[name][0]
    out = genbench(*args, cwd=REPO)
    assert out.returncode in (0, 2), out.stderr[-2000:]
    assert not imports_torch(args, str(REPO), dict(os.environ)), f"genbench {' '.join(args)} imported torch"
