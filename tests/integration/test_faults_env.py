"""The environment as a user meets it: a read-only or full folder, an ASCII-only terminal, a broken config
folder, a zoo far too large, a plugin that changes the current folder. Each is genbench run as a subprocess;
a failure is one line on stderr starting ``genbench <command>:`` and exit status 2, never a traceback."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import pipeline
from benchmark.cli import user_message
from benchmark.store import Store
from tests.conftest import TINY, TINY_MEASURES, TINY_MODELS
from tests.integration.test_cli import _one_line, genbench

HUNDRED = "[" + ",".join(str(i) for i in range(1, 101)) + "]"


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "16m", read_only: bool = True, fill=None):
    """A fresh tmpfs of ``size`` at ``folder``; ``fill(folder)`` writes into it, then it is remounted read-only
    (root, who runs these tests in CI, ignores chmod; a read-only mount it does not)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()}")
    try:
        if fill:
            fill(folder)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def board(trained_tiny, tmp_path):
    """The tiny zoo's store (tmp_path/store) and its evaluated leaderboard (tmp_path/lb)."""
    pipeline.evaluate(trained_tiny("leaderboard.plots=false"))
    return tmp_path


def _copy_board(src: Path):
    return lambda dest: (shutil.copytree(src / "lb", dest / "lb"), shutil.copytree(src / "store", dest / "store"))


def test_reading_commands_work_in_a_read_only_folder_on_a_read_only_store(board, tmp_path):
    with tmpfs(tmp_path / "ro", fill=_copy_board(board)) as ro:
        out = genbench("measures", "measures.include=[params]", cwd=ro)
        assert out.returncode == 0 and "params" in out.stdout and not out.stderr.strip(), out.stderr[-2000:]
        out = genbench("leaderboard", *TINY, "leaderboard.dir=lb", "store.root=store", cwd=ro)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Leaderboard smoke-digits" in out.stdout and "log_prod_of_fro" in out.stdout
        out = genbench("measures", "hydra/job_logging=disabled", "measures.include=[params]", cwd=ro)  # theirs wins
        assert out.returncode == 0 and "params" in out.stdout, out.stderr[-2000:]
        assert sorted(p.name for p in ro.iterdir()) == ["lb", "store"]


def test_writing_into_a_read_only_folder_is_one_line(board, tmp_path):
    with tmpfs(tmp_path / "ro", fill=_copy_board(board)) as ro:
        _one_line(genbench("train", *TINY, cwd=ro),  # the store (runs/store) and Hydra's run dir in it
                  f"genbench train: cannot write {ro / 'runs'}: the file system is read-only", "store.root=DIR")
        _one_line(genbench("measure", *TINY, "store.root=store", cwd=ro),
                  f"cannot write {ro / 'store' / 'hydra'}", "read-only")
        # Hydra's run dir elsewhere: sqlite cannot open the read-only store (naming no file)
        _one_line(genbench("measure", *TINY, "store.root=store", f"hydra.run.dir={tmp_path / 'h'}", cwd=ro),
                  "genbench measure:", str(ro / "store"))
        # the store is writable, the leaderboard folder is not
        _one_line(genbench("evaluate", *TINY, f"store.root={board / 'store'}", f"leaderboard.dir={ro / 'lb'}",
                           cwd=tmp_path), f"genbench evaluate: cannot write {ro / 'lb'}", "read-only",
                  "leaderboard.dir=DIR")


def test_a_full_disk_is_one_line(board, tmp_path):
    with tmpfs(tmp_path / "full", size="64k", read_only=False) as full:
        (full / "filler").write_bytes(b"\0" * 60_000)
        out = genbench("evaluate", *TINY, f"store.root={board / 'store'}", f"leaderboard.dir={full / 'lb'}",
                       cwd=tmp_path)
        _one_line(out, "genbench evaluate: a write failed: no space left on the device", "rerun the same command",
                  f"it writes under store.root={board / 'store'} and leaderboard.dir={full / 'lb'}")


def test_a_store_root_inside_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    _one_line(genbench("train", *TINY, "store.root=afile/store", cwd=tmp_path),
              f"cannot make the folder {tmp_path / 'afile' / 'store' / 'hydra'}", "a part of the path is a file")


def _ascii_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONIOENCODING")}
    return {**env, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}


def test_an_ascii_terminal_gets_ascii(board, tmp_path):
    cmd = [sys.executable, "-m", "benchmark.cli", "leaderboard", *TINY, f"leaderboard.dir={board / 'lb'}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=_ascii_env(), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout.decode("ascii")  # nothing but ASCII reached the terminal
    assert "Leaderboard smoke-digits -- predicting gap_error (tau, Psi oriented" in text, text
    assert "log_prod_of_fro" in text


@pytest.mark.slow
def test_run_in_an_ascii_terminal(tmp_path):
    cmd = [sys.executable, "-m", "benchmark.cli", "run", *TINY, "store.root=s", "leaderboard.dir=lb",
           "leaderboard.plots=false"]
    out = subprocess.run(cmd, cwd=tmp_path, env=_ascii_env(), capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text, err = out.stdout.decode("ascii"), out.stderr.decode("ascii")
    assert "UnicodeEncodeError" not in text + err and "Logging error" not in text + err
    assert "converged to cross-entropy <= 0.3" in text + err and "(tau, Psi oriented" in text
    logs = list((tmp_path / "s" / "hydra").glob("*/*.log"))  # Hydra's log file stays UTF-8
    assert len(logs) == 1 and "cross-entropy ≤ 0.3" in logs[0].read_text(encoding="utf-8")


@pytest.fixture
def configs(tmp_path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "bad.yaml").write_text("name: mlp\nwidth: [64\ndepth: 2\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("defaults:\n  - model: mlp\n store: {root: x}\n")
    (tmp_path / "afile.yaml").write_text("name: mlp\n")
    return tmp_path


@pytest.mark.parametrize("args,fragments", [
    (["--config-dir", "mine", "model=bad"], ["invalid YAML in {tmp}/mine/model/bad.yaml, line 3", "expected ','"]),
    (["--config-path", "broken"], ["invalid YAML in {tmp}/broken/config.yaml, line 3"]),
    (["--config-dir", "afile.yaml"], ["--config-dir afile.yaml: {tmp}/afile.yaml is a file, not a folder"]),
    (["--config-path=afile.yaml"], ["--config-path afile.yaml: {tmp}/afile.yaml is a file, not a folder"]),
    (["-cd", "nothere"], ["-cd nothere: no such folder {tmp}/nothere"]),
    (["nope.key=1"], ["Could not override 'nope.key'", "Key 'nope' not in"]),
])
def test_a_broken_config_folder_is_one_line(configs, args, fragments):
    for command in ("measures", "train"):
        out = genbench(command, *args, "store.root=s", cwd=configs)
        _one_line(out, f"genbench {command}:", *(f.format(tmp=configs) for f in fragments))


@pytest.mark.parametrize("args,fragments", [
    (["zoo.seeds=[]"], ["zoo.seeds=[] is not a list of seeds", "zoo.seeds=[0,1,2]", "or null"]),
    (["zoo.seeds=3"], ["zoo.seeds=3 is not a list of seeds"]),
    (["experiment=standard", "suite.seeds=[]"], ["suite.seeds=[] is not a list of seeds", "suite.seeds=[0,1,2]"]),
])
def test_an_empty_seed_list_is_refused_before_training(tmp_path, args, fragments):
    _one_line(genbench("train", *args, "store.root=s", cwd=tmp_path), *fragments)
    assert not (tmp_path / "s" / "checkpoints").exists()


SLOW = pytest.mark.slow  # the same path as the two cases before them: run by `pytest -m slow`


@pytest.mark.parametrize("setting,fragment", [
    ("run.jobs=0", "run.jobs=0 must be an integer >= 1"), ("run.device=gpu", "run.device='gpu' is not a torch device"),
    pytest.param("run.jobs=abc", "run.jobs=abc must be an integer >= 1", marks=SLOW),
    pytest.param("run.threads=x", "run.threads=x must be an integer >= 1 or null", marks=SLOW),
    pytest.param("run.max_models=many", "run.max_models=many must be an integer >= 1 or null", marks=SLOW),
    pytest.param("run.vectorize=maybe", "run.vectorize=maybe must be true or false", marks=SLOW),
    pytest.param("run.on_corrupt=nope", "run.on_corrupt='nope' is not a choice; valid: retrain, skip, fail",
                 marks=SLOW),
    pytest.param("zoo.shard=x", "zoo.shard=x and zoo.num_shards=1 must be integers", marks=SLOW),
])
def test_an_invalid_run_setting_is_one_line(tmp_path, setting, fragment):
    _one_line(genbench("train", *TINY, setting, "store.root=s", cwd=tmp_path), f"genbench train: {fragment}")


def test_a_million_models_are_refused_at_once_with_the_count_and_the_time(tmp_path):
    out = genbench("train", f"zoo.axes.model.width={HUNDRED}", f"zoo.axes.optimizer.lr={HUNDRED}",
                   f"zoo.axes.train.batch_size={HUNDRED}", "zoo.axes.dataset.train_size=[100]",
                   "zoo.axes.dataset.label_noise=[0.0]", "zoo.seeds=null", "store.root=s", cwd=tmp_path, timeout=60)
    _one_line(out, "genbench train: zoo tiny: 1,000,000 models (1,000,000 configurations × 1 seed) is more than "
                   "run.max_models=20,000: ≈ 667 h at ~25 models/min", "run.max_models=1000000")
    assert not (tmp_path / "s" / "genbench.sqlite").exists()


@pytest.mark.slow
def test_a_zoo_within_a_raised_limit_trains_and_says_its_size_first(tmp_path):
    _one_line(genbench("train", *TINY, "run.max_models=3", "store.root=s", cwd=tmp_path),
              "zoo smoke: 4 models (4 configurations × 1 seed) is more than run.max_models=3")
    out = genbench("train", *TINY, "run.max_models=4", "store.root=s", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "zoo smoke: 4 models (4 configurations × 1 seed), 4 to train" in out.stdout + out.stderr
    assert len(Store(tmp_path / "s").model_ids()) == TINY_MODELS


def test_a_plugin_that_changes_folder_loses_no_path(trained_tiny, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plugin = tmp_path / "wanders.py"
    plugin.write_text(f"import os\n\nos.chdir({str(elsewhere)!r})\n")
    trained_tiny()  # tmp_path/store holds the trained, measured tiny zoo
    out = genbench("measure", *TINY, "store.root=store", "leaderboard.dir=lb", "measures.plugins=[wanders.py]",
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{TINY_MODELS * TINY_MEASURES} reused, 0 computed" in out.stdout + out.stderr
    assert not list(elsewhere.iterdir())


@pytest.mark.parametrize("err,fragments", [  # what root (these tests' user) cannot provoke: its own one line
    (PermissionError(errno.EACCES, "Permission denied", "/data/lb"), ["cannot write /data/lb: permission denied",
                                                                      "leaderboard.dir=DIR"]),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/s/x.pt"), ["cannot write /home/u/s/x.pt: the disk quota",
                                                                      "raise the quota"]),
    (sqlite3.OperationalError("database or disk is full"), ["the disk of the store is full", "free some space"]),
    (sqlite3.OperationalError("attempt to write a readonly database"), ["the store's database is read-only"]),
])
def test_what_root_cannot_provoke_is_one_line_too(err, fragments):
    line = user_message(err)
    assert line is not None and "\n" not in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert user_message(OSError(errno.EIO, "Input/output error", "/x")) is None  # not the user's to fix: a traceback
