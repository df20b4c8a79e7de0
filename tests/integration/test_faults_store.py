"""Faults of the store as a user meets them: two stores that hold different copies of a model, a collected
folder that is not a store, a checkpoint of another architecture, a read-only store, a full disk, a store
root that is a broken link. Each is one line and exit status 2 (or a policy that applies), and nothing
stored before is lost or changed.

The read-only and full-disk tests mount a real tmpfs (tests run as root); they are skipped, saying why,
where mounting is not permitted.
"""
from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch

from benchmark import pipeline
from benchmark.store import CheckpointError, MergeConflict, Store
from benchmark.store.db import connect
from tests.conftest import TINY
from tests.integration.test_cli import genbench


def _fails_in_one_line(out, *fragments) -> str:
    """Exit 2 and, as the last line on stderr, the one ``genbench <command>:`` line; no traceback (warnings
    logged before it may precede it)."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("genbench ")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _snapshot(root: Path) -> dict:
    """Every file's sha256 and every row of every table: what must not change."""
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((root / "checkpoints").iterdir()) if p.suffix == ".pt"}
    with connect(root / "genbench.sqlite", readonly=True) as db:  # closes; on a read-only disk too
        rows = {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in ("models", "measurements", "early")}
    return {"files": files, **rows}


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: mount a tmpfs of ``size`` at a new folder; unmounted at teardown. Skips where it cannot."""
    mounted = []

    def mount(name: str, size: str = "8m") -> Path:
        path = tmp_path / name
        path.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _read_only(path: Path) -> None:
    out = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot remount {path} read-only: {out.stderr.strip()}")


# ------------------------------------------------------------------------------------------------ collect
def _two_copies(tmp_path: Path):
    """The trained tiny store as the destination, and a job's copy of it in which one model has other weights
    (and metrics, and one more measurement) and another model one other measure value."""
    dest, source = tmp_path / "store", tmp_path / "jobs" / "a"
    shutil.copytree(dest, source)
    store = Store(source)
    first, second = sorted(store.model_ids())[:2]
    init, final = store.load_states(first)
    hp, metrics, history = store.model_record(first)
    store.save_model(hp, init, {k: v * 1.5 for k, v in final.items()}, {**metrics, "train_loss": 9.0}, history)
    store.save_measurement(first, "only_in_source", 1, 1.0, 0.0, "ok")
    long = store.measurements().set_index(["model_id", "measure"])
    version = int(long.loc[(second, "params"), "version"])
    store.save_measurement(second, "params", version, 12345.0, 0.0, "ok")
    Store(dest).save_measurement(first, "only_in_destination", 1, 2.0, 0.0, "ok")
    return dest, source, first, second, version


def test_collect_of_conflicting_copies_refuses_then_keeps_or_replaces(trained_tiny, tmp_path):
    dest, source, first, second, version = _two_copies(tmp_path)
    before = _snapshot(dest)
    out = genbench("collect", *TINY, f"store.root={dest}", f"collect.sources=[{tmp_path}/jobs/*]",
                   f"hydra.run.dir={tmp_path}/hydra", cwd=tmp_path)
    line = _fails_in_one_line(out, "genbench collect: 2 conflicts", f"model {first}: metrics.train_loss=",
                              "checkpoint sha256", f"params v{version} of model {second}", "12345.0 (source)",
                              "collect.on_conflict=keep", "collect.on_conflict=replace")
    assert "nothing was copied" in line
    assert f"model {first}" in out.stdout + out.stderr and "conflict" in out.stdout + out.stderr
    assert _snapshot(dest) == before  # refused before copying anything

    cfg = trained_tiny(f"collect.sources=[{tmp_path}/jobs/*]", "collect.on_conflict=keep")
    assert pipeline.collect(cfg) == {"models": 0, "measurements": 0, "early": 0, "conflicts": 2}
    assert _snapshot(dest) == before  # the destination's copies, and none of the source's rows of the other weights

    source_files = _snapshot(source)["files"]
    counts = pipeline.collect(trained_tiny(f"collect.sources=[{tmp_path}/jobs/*]", "collect.on_conflict=replace"))
    assert counts["models"] == 1 and counts["conflicts"] == 2
    after = Store(dest)
    assert _snapshot(dest)["files"][f"checkpoints/{first}.pt"] == source_files[f"checkpoints/{first}.pt"]
    assert after.model_record(first)[1]["train_loss"] == 9.0
    long = after.measurements().set_index(["model_id", "measure"])
    assert long.loc[(second, "params"), "value"] == 12345.0
    assert (first, "only_in_source") in long.index and (first, "only_in_destination") not in long.index
    again = pipeline.collect(trained_tiny(f"collect.sources=[{tmp_path}/jobs/*]"))  # now identical: fail passes
    assert again == {"models": 0, "measurements": 0, "early": 0, "conflicts": 0}


def test_collect_skips_a_folder_that_is_not_a_store_and_creates_nothing_in_it(trained_tiny, tmp_path):
    jobs = tmp_path / "jobs"
    shutil.copytree(tmp_path / "store", jobs / "a")
    (jobs / "notes").mkdir()
    (jobs / "notes" / "readme.txt").write_text("not a store")
    (jobs / "photos").mkdir()
    with sqlite3.connect(jobs / "photos" / "genbench.sqlite") as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    listing = lambda: sorted(str(p.relative_to(jobs)) for p in jobs.rglob("*") if "a/" not in str(p.relative_to(jobs)))
    before = listing()
    out = genbench("collect", *TINY, f"store.root={tmp_path}/all", f"collect.sources=[{jobs}/*]",
                   f"hydra.run.dir={tmp_path}/hydra", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = out.stdout + out.stderr
    assert f"skipping {jobs / 'notes'} (no genbench store at {jobs / 'notes'}: it holds no genbench.sqlite)" in logged
    assert f"skipping {jobs / 'photos'} (" in logged and "not a genbench store (tables: photos)" in logged
    assert listing() == before  # no genbench.sqlite, no checkpoints folder created in them
    assert len(Store(tmp_path / "all").model_ids()) == 4

    out = genbench("collect", *TINY, f"store.root={tmp_path}/none", f"collect.sources=[{jobs}/n*,{jobs}/p*]",
                   f"hydra.run.dir={tmp_path}/hydra", cwd=tmp_path)
    _fails_in_one_line(out, "matches no genbench store")
    assert not (tmp_path / "none").exists() and listing() == before


def test_merge_into_a_second_source_that_conflicts_with_the_first_copies_nothing(trained_tiny, tmp_path):
    from benchmark.store import check_merge
    dest, source, first, _, _ = _two_copies(tmp_path)
    shutil.copytree(dest, tmp_path / "jobs" / "b")  # b agrees with the destination, and so conflicts with a
    fresh = Store(tmp_path / "fresh")
    with pytest.raises(MergeConflict, match=f"conflicts between the stores to merge into {fresh.root}"):
        check_merge(fresh, [Store(tmp_path / "jobs" / "a", readonly=True), Store(tmp_path / "jobs" / "b",
                                                                                   readonly=True)])
    with pytest.raises(MergeConflict):
        pipeline.collect(trained_tiny(f"store.root={fresh.root}", f"collect.sources=[{tmp_path}/jobs/*]"))
    assert fresh.model_ids() == set()


# ------------------------------------------------------------------------------------ wrong architecture
def _other_width(root: Path) -> tuple[str, Path]:
    """Overwrite the checkpoint of a width-8 model with a width-16 model's: a file that loads, of another
    architecture."""
    store = Store(root)
    frame = store.models().set_index("model_id")
    narrow = sorted(frame.index[frame["hp.model.width"] == 8])[0]
    wide = sorted(frame.index[frame["hp.model.width"] == 16])[0]
    shutil.copyfile(store.checkpoint_path(wide), store.checkpoint_path(narrow))
    return narrow, store.checkpoint_path(narrow)


def test_a_checkpoint_of_another_architecture_is_retrained_skipped_or_an_error(trained_tiny, tmp_path):
    root = tmp_path / "store"
    victim, path = _other_width(root)
    assert pipeline.train(trained_tiny()) == {"reused": 3, "trained": 1, "converged": 4}
    Store(root).check_checkpoint(victim)

    victim, path = _other_width(root)
    counts = pipeline.measure(trained_tiny("run.on_corrupt=skip", "measures.include=[params,path_norm]"))
    assert counts["computed"] == 3 and counts["reused"] == 3  # path_norm on the three fitting models
    with pytest.raises(CheckpointError, match=rf"{path} does not fit the architecture of model {victim}.*shape"):
        pipeline.measure(trained_tiny("run.on_corrupt=fail"))


def test_a_checkpoint_in_another_dtype_does_not_fit(trained_tiny, tmp_path):
    store = Store(tmp_path / "store")
    victim = sorted(store.model_ids())[0]
    init, final = store.load_states(victim)
    torch.save({"init": {k: v.double() for k, v in init.items()}, "final": {k: v.double() for k, v in final.items()}},
               store.checkpoint_path(victim))
    with pytest.raises(CheckpointError, match=r"as torch.float64, where the model has torch.float32"):
        store.check_checkpoint(victim)


# -------------------------------------------------------------------------------------- read-only disk
@pytest.mark.parametrize("wal_index", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["with-shm", "without-shm"])
def test_a_read_only_store_is_evaluated_and_refuses_training_in_one_line(trained_tiny, tmp_path, tmpfs, wal_index):
    disk = tmpfs("ro")
    root = disk / "store"
    shutil.copytree(tmp_path / "store", root)
    before = _snapshot(root)  # a read-only connection: it leaves the WAL's index (-shm) and an empty -wal behind
    if not wal_index:  # as a writer's clean close leaves it; SQLite cannot create the -shm to read: immutable
        for suffix in ("-wal", "-shm"):
            Path(f"{root / 'genbench.sqlite'}{suffix}").unlink(missing_ok=True)
    _read_only(disk)
    common = [*TINY, f"store.root={root}", f"leaderboard.dir={tmp_path}/lb", "leaderboard.plots=false"]
    out = genbench("evaluate", *common, cwd=tmp_path)  # as a user would: Hydra keeps no run dir for evaluate
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "lb").exists()
    assert len(Store(root, readonly=True).frame()) == 4
    for command in ("train", "measure"):  # Hydra's run dir under store.root is the first thing they cannot write
        _fails_in_one_line(genbench(command, *common, "zoo.axes.model.width=[8,16,32]", cwd=tmp_path),
                           f"genbench {command}: cannot write {root}/hydra: the file system is read-only")
        # with the run dir elsewhere, the store itself says so
        _fails_in_one_line(genbench(command, *common, "zoo.axes.model.width=[8,16,32]",
                                    f"hydra.run.dir={tmp_path}/hydra", cwd=tmp_path),
                           f"genbench {command}: store.root={root} is not writable")
    assert _snapshot(root) == before


# ------------------------------------------------------------------------------------------- full disk
def _fill(disk: Path, leave: int) -> Path:
    """A file that takes all of ``disk`` but ``leave`` bytes."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError:  # ENOSPC: full
            pass
    with open(filler, "rb+") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.parametrize("leave", [0, pytest.param(48 * 1024, marks=pytest.mark.slow)])
def test_a_full_disk_is_one_line_keeps_what_was_stored_and_the_rerun_resumes(tiny_cfg, tmp_path, tmpfs, leave):
    disk = tmpfs("disk", "8m")
    root = disk / "store"
    assert pipeline.train(tiny_cfg(f"store.root={root}"))["trained"] == 4
    before = _snapshot(root)
    filler = _fill(disk, leave)
    args = [*TINY, f"store.root={root}", "zoo.axes.model.width=[8,16,32]", f"hydra.run.dir={tmp_path}/hydra"]
    out = genbench("train", *args, cwd=tmp_path)
    _fails_in_one_line(out, f"genbench train: store.root={root}: the disk is full",
                       "what was stored before is kept, and the same command resumes once there is space")
    assert not list((root / "checkpoints").glob("*.tmp"))
    filler.unlink()
    out = genbench("train", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 reused from" in out.stdout + out.stderr
    after = _snapshot(root)
    assert len(Store(root).model_ids()) == 6
    assert {k: v for k, v in after["files"].items() if k in before["files"]} == before["files"]
    assert set(before["models"]) <= set(after["models"])


def test_sqlite_meeting_a_full_disk_is_a_store_error_and_keeps_the_rows_before(tmp_path, tmpfs):
    from benchmark.store import StoreError
    disk = tmpfs("small", "2m")
    store = Store(disk / "store")
    store.save_measurements([(f"model-{i}", "m", 1, float(i), 0.0, "ok", None, None) for i in range(10)])
    _fill(disk, 64 * 1024)
    rows = [(f"model-{i}", "big", 1, 1.0, 0.0, "ok", None, {"pad": "x" * 4096}) for i in range(200)]
    with pytest.raises(StoreError, match=rf"store.root={disk / 'store'}: the disk is full \(database or disk is full"):
        store.save_measurements(rows)  # 800 KB in one transaction: rolled back whole
    assert len(store.measurements()) == 10


# ------------------------------------------------------------------------------------------- store root
def test_a_store_root_that_is_a_broken_link_is_one_line(tmp_path):
    link = tmp_path / "store"
    link.symlink_to(tmp_path / "gone")
    out = genbench("train", *TINY, f"store.root={link}", f"hydra.run.dir={tmp_path}/hydra", cwd=tmp_path)
    _fails_in_one_line(out, f"store.root={link} is a symbolic link to {tmp_path / 'gone'}, which does not exist")
    assert not (tmp_path / "gone").exists()
