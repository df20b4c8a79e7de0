"""The SQLite store: atomic checkpoints, frames, schema checks, clear errors for corrupt files."""
from __future__ import annotations

import sqlite3

import pytest
import torch

from benchmark.store import CheckpointError, Store, StoreError
from tests.helpers import default_hparams


def _save(store, hp, value=1.0):
    state = {"w": torch.full((2, 2), value)}
    return store.save_model(hp, state, state, {"converged": True, "gap_error": value, "test_size": 10},
                            [{"epoch": 1, "step": 3, "train_loss": 0.5}])


def test_round_trip_and_frame(tmp_path):
    store = Store(tmp_path)
    hp, hp2 = default_hparams(), default_hparams().replace(**{"model.width": 8})
    a, b = _save(store, hp, 1.0), _save(store, hp2, 2.0)
    assert store.model_ids() == {a, b} and a == hp.model_id
    init, final = store.load_states(a)
    assert torch.equal(final["w"], torch.ones(2, 2))
    got_hp, metrics, history = store.model_record(b)
    assert got_hp == hp2 and metrics["gap_error"] == 2.0 and history[0]["step"] == 3
    store.save_measurement(a, "m", 1, 0.5, 0.01, "ok")
    store.save_measurement(b, "m", 1, None, 0.02, "failed", "ValueError: boom")
    store.save_measurement(a, "m", 2, 7.0, 0.01, "ok")  # a newer version supersedes
    df = store.frame()
    assert list(df.model_id) == sorted([a, b])
    row = df.set_index("model_id")
    assert row.loc[a, "measure.m"] == 7.0 and row.loc[b, "measure.m"] != row.loc[b, "measure.m"]  # NaN
    assert row.loc[a, "hp.model.width"] == 64 and row.loc[b, "metric.gap_error"] == 2.0
    assert store.frame(measures={"m": 1}).set_index("model_id").loc[a, "measure.m"] == 0.5
    assert store.measured(("failed",)) == {(b, "m", 1)}


def test_a_snapshot_gives_the_frames_of_the_store_from_one_read_of_each_table(tmp_path):
    from benchmark.store.snapshot import Snapshot
    store = Store(tmp_path)
    hps = [default_hparams().replace(**{"model.width": w}) for w in (8, 16, 32)]
    ids = [_save(store, hp, float(k)) for k, hp in enumerate(hps)]
    store.save_measurement(ids[0], "m", 1, 0.5, 0.01, "ok")
    store.save_measurement(ids[1], "m", 2, 1.5, 0.01, "ok")
    store.save_measurement(ids[2], "n", 1, None, 0.01, "not_applicable", "no reason")
    snap = Snapshot(Store(tmp_path, readonly=True))
    for subset in (None, ids[:1], ids[1:], []):
        for measures in (None, {"m": 1}, {"m": 2, "n": 1}):
            assert snap.frame(subset, measures).equals(store.frame(subset, measures))
    _save(store, default_hparams().replace(**{"model.width": 64}))  # written after the snapshot read the store
    assert len(snap.frame()) == 3 and len(store.frame()) == 4
    assert list(snap.measurements.columns) == ["model_id", "measure", "version", "value", "seconds", "status", "error"]


def test_no_temporary_files_are_left(tmp_path):
    store = Store(tmp_path)
    _save(store, default_hparams())
    assert [p.suffix for p in (tmp_path / "checkpoints").iterdir()] == [".pt"]


def test_corrupt_and_missing_checkpoints_are_named(tmp_path):
    store = Store(tmp_path)
    model_id = _save(store, default_hparams())
    path = store.checkpoint_path(model_id)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{path}.*corrupt or truncated"):
        store.load_states(model_id)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        store.load_states(model_id)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    store = Store(tmp_path)
    model_id = _save(store, default_hparams())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"init": Evil(), "final": {}}, store.checkpoint_path(model_id))
    with pytest.raises(CheckpointError, match="corrupt"):
        store.load_states(model_id)


def test_store_from_another_schema_version_is_refused(tmp_path):
    Store(tmp_path)
    with sqlite3.connect(tmp_path / "genbench.sqlite") as db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="store schema 0, which this genbench cannot read"):
        Store(tmp_path)


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    (tmp_path / "genbench.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="corrupt or not an SQLite file"):
        Store(tmp_path)


def test_a_foreign_sqlite_database_is_refused_and_left_alone(tmp_path):
    with sqlite3.connect(tmp_path / "genbench.sqlite") as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(StoreError, match="not a genbench store.*photos"):
        Store(tmp_path)
    with sqlite3.connect(tmp_path / "genbench.sqlite") as db:  # nothing was added to it
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["photos"]


def _v1_store(tmp_path, hps):
    """A store as genbench 0.1 wrote it: schema 1, model ids hashed over every field (momentum included)."""
    import json

    from benchmark.zoo.hparams import hash_id
    store = Store(tmp_path)
    state = {"w": torch.ones(1)}
    old_ids = []
    for hp in hps:
        new_id = _save(store, hp)
        old_id = hash_id({k: v for k, v in hp.flat().items()
                          if k not in ("dataset.label_noise_mode", "dataset.image_size")})
        old_ids.append(old_id)
        store.save_measurement(new_id, "m", 1, 1.0, 0.0, "ok")
        stored = hp.to_dict()
        del stored["dataset"]["label_noise_mode"]  # added in schema 4
        del stored["dataset"]["image_size"]  # added later, with a default that leaves ids as they were
        if old_id != new_id:
            store.checkpoint_path(new_id).rename(store.checkpoint_path(old_id))
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE models SET id = ?, checkpoint = ?, hparams = ? WHERE id = ?",
                       (old_id, f"checkpoints/{old_id}.pt", json.dumps(stored), new_id))
            db.execute("UPDATE measurements SET model_id = ? WHERE model_id = ?", (old_id, new_id))
    _old_status_constraint(store.path, version=1)
    del state
    return old_ids


def _old_status_constraint(path, version):
    """Make the measurements table what schemas 1 and 2 had: statuses ok and failed only."""
    with sqlite3.connect(path) as db:
        (create,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'measurements'").fetchone()
        db.execute("ALTER TABLE measurements RENAME TO new")
        db.execute(create.replace("'failed', 'not_applicable'", "'failed'"))
        db.execute("INSERT INTO measurements SELECT * FROM new")
        db.execute("DROP TABLE new")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def test_a_schema_2_store_is_migrated_to_allow_not_applicable_and_keeps_every_row(tmp_path):
    from benchmark.store import migrate
    store = Store(tmp_path)
    hp = default_hparams()
    model_id = _save(store, hp)
    store.save_measurement(model_id, "a", 1, 1.5, 0.1, "ok", details={"k": 1})
    store.save_measurement(model_id, "b", 2, None, 0.2, "failed", "ValueError: no")
    _old_status_constraint(store.path, version=2)
    with sqlite3.connect(store.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO measurements VALUES (?, 'c', 1, NULL, 0, 'not_applicable', 'r', '{}', 0)",
                   (model_id,))  # the old constraint refuses the new status
    with pytest.raises(StoreError, match=r"older genbench \(store schema 2.*genbench migrate"):
        Store(tmp_path)
    before = sqlite3.connect(store.path).execute("SELECT * FROM measurements ORDER BY measure").fetchall()
    assert migrate(tmp_path) == {"renamed": 0, "dropped": 0, "unchanged": 1, "from_version": 2}
    store = Store(tmp_path)
    store.save_measurement(model_id, "c", 1, None, 0.0, "not_applicable", "clean labels")
    after = sqlite3.connect(store.path).execute("SELECT * FROM measurements ORDER BY measure").fetchall()
    assert after[:2] == before
    assert after[2][5:7] == ("not_applicable", "clean labels")
    assert store.measured() == {(model_id, "a", 1), (model_id, "b", 2), (model_id, "c", 1)}


def test_a_schema_3_store_gets_the_label_noise_mode_its_models_were_trained_with(tmp_path):
    import json

    from benchmark.store import migrate
    store = Store(tmp_path)
    noisy = default_hparams().replace(**{"dataset.label_noise": 0.2, "dataset.label_noise_mode": "fixed_total"})
    ids = [_save(store, hp) for hp in (default_hparams(), noisy)]
    with sqlite3.connect(store.path) as db:  # what schema 3 stored: no mode
        for model_id, hp_json in db.execute("SELECT id, hparams FROM models").fetchall():
            hp = json.loads(hp_json)
            del hp["dataset"]["label_noise_mode"]
            db.execute("UPDATE models SET hparams = ? WHERE id = ?", (json.dumps(hp), model_id))
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"older genbench \(store schema 3.*genbench migrate"):
        Store(tmp_path)
    assert migrate(tmp_path) == {"renamed": 0, "dropped": 0, "unchanged": 2, "from_version": 3}
    store = Store(tmp_path)
    assert store.model_ids() == set(ids)
    loaded = store.model_record(ids[1])[0]
    assert loaded == noisy and loaded.model_id == ids[1]  # read back as the recipe it was trained with
    assert store.model_record(ids[0])[0].dataset.label_noise_mode == "fixed_total"


def test_an_old_store_asks_for_migration_and_migrate_renames_every_model(tmp_path):
    from benchmark.store import migrate
    base = default_hparams()
    sgd = base.replace(**{"optimizer.name": "sgd"})
    sgd_other_momentum = sgd.replace(**{"optimizer.momentum": 0.5})  # the same model under an unused setting
    heavy = base.replace(**{"optimizer.name": "momentum"})  # uses momentum: its id does not change
    old = _v1_store(tmp_path, [sgd, heavy])
    assert old[0] != sgd.model_id and old[1] == heavy.model_id
    with pytest.raises(StoreError, match=r"older genbench \(store schema 1.*genbench migrate store.root="):
        Store(tmp_path)
    counts = migrate(tmp_path)
    assert counts == {"renamed": 1, "dropped": 0, "unchanged": 1, "from_version": 1}
    store = Store(tmp_path)
    assert store.model_ids() == {sgd.model_id, heavy.model_id} == {sgd_other_momentum.model_id, heavy.model_id}
    for model_id in store.model_ids():
        store.load_states(model_id)
    assert set(store.measurements().model_id) == store.model_ids()
    assert migrate(tmp_path)["renamed"] == 0  # already current: a no-op


def test_migrate_drops_a_duplicate_that_differed_only_in_an_unused_setting(tmp_path):
    from benchmark.store import migrate
    sgd = default_hparams().replace(**{"optimizer.name": "sgd"})
    twin = sgd.replace(**{"optimizer.momentum": 0.5})
    assert sgd.model_id == twin.model_id
    # two schema-1 rows: the old hash saw momentum, so they had two ids
    tmp = tmp_path / "a"
    _v1_store(tmp, [sgd])
    other = tmp_path / "b"
    _v1_store(other, [twin])
    with sqlite3.connect(tmp / "genbench.sqlite") as db, sqlite3.connect(other / "genbench.sqlite") as src:
        row = src.execute("SELECT * FROM models").fetchone()
        db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?)", row)
    (other / "checkpoints" / f"{row[0]}.pt").rename(tmp / "checkpoints" / f"{row[0]}.pt")
    counts = migrate(tmp)
    assert counts["renamed"] == 1 and counts["dropped"] == 1
    store = Store(tmp)
    assert store.model_ids() == {sgd.model_id}
    assert sorted(p.name for p in (tmp / "checkpoints").iterdir()) == [f"{sgd.model_id}.pt"]



def test_a_pinned_setting_refuses_a_second_value_and_travels_with_a_merge(tmp_path):
    from benchmark.store import merge
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    a.pin_setting("measures.curvature_samples", None)
    a.pin_setting("measures.curvature_samples", None)  # the same value again: fine
    with pytest.raises(StoreError, match=r"measures.curvature_samples=512 differs from the null"):
        a.pin_setting("measures.curvature_samples", 512)
    b.pin_setting("measures.curvature_samples", 512)
    with pytest.raises(StoreError, match="differs"):
        merge(a, b)
    c = Store(tmp_path / "c")
    merge(c, b)
    assert c.settings() == {"measures.curvature_samples": 512}


def test_a_read_only_store_creates_nothing_and_reads_what_is_stored(tmp_path):
    from benchmark.store import NotAStoreError
    with pytest.raises(NotAStoreError, match="holds no genbench.sqlite"):
        Store(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError):
        Store(tmp_path / "empty", readonly=True)
    assert list((tmp_path / "empty").iterdir()) == []
    store = Store(tmp_path / "s")
    model_id = _save(store, default_hparams())
    store.save_measurement(model_id, "m", 1, 0.5, 0.01, "ok")
    (tmp_path / "s" / "checkpoints" / "x.pt.999999999.tmp").write_bytes(b"orphan")
    reader = Store(tmp_path / "s", readonly=True)
    assert reader.model_ids() == {model_id} and reader.frame().loc[0, "measure.m"] == 0.5
    assert (tmp_path / "s" / "checkpoints" / "x.pt.999999999.tmp").exists()  # removing orphans is a writer's job
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # a write through it is a bug, not a user's
        reader.save_measurement(model_id, "m", 2, 0.5, 0.01, "ok")


@pytest.mark.parametrize("kind,match", [
    ("dangling", r"is a symbolic link to .*gone, which does not exist"),
    ("file", "is a file, not a folder"),
    ("sqlite_folder", r"genbench.sqlite is a folder, not a store file"),
    ("checkpoints_file", r"checkpoints is a file, not the store's checkpoints folder"),
])
def test_a_store_root_of_the_wrong_kind_is_named(tmp_path, kind, match):
    root = tmp_path / "store"
    if kind == "dangling":
        root.symlink_to(tmp_path / "gone")
    elif kind == "file":
        root.write_text("x")
    else:
        (root / ("genbench.sqlite" if kind == "sqlite_folder" else "")).mkdir(parents=True)
        if kind == "checkpoints_file":
            (root / "checkpoints").write_text("x")
    for readonly in (False, True):
        with pytest.raises(StoreError, match=match if not readonly or kind in ("dangling", "file") else "."):
            Store(root, readonly=readonly)
    assert not (tmp_path / "gone").exists()


def _pair(tmp_path):
    """Two stores holding the same model and the same measurement and early rows."""
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    model_id = None
    for store in (a, b):
        model_id = _save(store, default_hparams())
        store.save_measurements([(model_id, "nan", 1, float("nan"), 0.1, "ok", None, None),
                                 (model_id, "none", 1, None, 0.2, "failed", "boom", None),
                                 (model_id, "v", 1, 1.0, 0.3, "ok", None, None)])
        store.save_early([(model_id, 0.5, 3, "v", 1, 2.0, 0.1, "ok", None)])
    return a, b, model_id


def test_identical_copies_are_no_conflict_whatever_their_seconds(tmp_path):
    from benchmark.store import merge
    a, b, model_id = _pair(tmp_path)
    with sqlite3.connect(b.path) as db:
        db.execute("UPDATE measurements SET seconds = 99, created = 1")
    assert merge(a, b) == {"models": 0, "measurements": 0, "early": 0, "conflicts": 0}


def test_shift_metrics_one_copy_lacks_are_no_conflict_but_another_metric_is(tmp_path):
    from benchmark.store import MergeConflict, merge
    a, b, model_id = _pair(tmp_path)
    a.update_metrics({model_id: {"shift_error": 0.5, "shift.rotate": 0.6, "shift_version": 1}})
    assert merge(a, b) == {"models": 0, "measurements": 0, "early": 0, "conflicts": 0}
    assert a.model_record(model_id)[1]["shift.rotate"] == 0.6  # the destination's copy is kept
    b.update_metrics({model_id: {"test_error": 0.99}})
    with pytest.raises(MergeConflict, match=r"no metrics.test_error \(destination\) vs metrics.test_error=0.99"):
        merge(a, b)


def test_conflicting_values_keep_or_replace(tmp_path):
    from benchmark.store import MergeConflict, merge
    a, b, model_id = _pair(tmp_path)
    b.save_measurements([(model_id, "v", 1, 5.0, 0.3, "ok", None, None),
                         (model_id, "none", 1, 3.0, 0.2, "ok", None, None)])
    b.save_early([(model_id, 0.5, 3, "v", 1, None, 0.1, "failed", "x")])
    with pytest.raises(MergeConflict, match=r"^3 conflicts in collecting .*b into .*a, so nothing was copied: .*"
                                            r"early v v1 at fraction 0.5 of model \w+: 2.0 \(destination\) vs "
                                            r"failed \(source\)"):
        merge(a, b)
    assert merge(a, b, "keep") == {"models": 0, "measurements": 0, "early": 0, "conflicts": 3}
    assert a.measurements().set_index("measure").loc["v", "value"] == 1.0
    assert merge(a, b, "replace") == {"models": 0, "measurements": 2, "early": 1, "conflicts": 3}
    long = a.measurements().set_index("measure")
    assert long.loc["v", "value"] == 5.0 and long.loc["none", "status"] == "ok"
    assert a.early().status.tolist() == ["failed"]
    assert merge(a, b)["conflicts"] == 0


def test_a_checkpoint_that_misses_a_weight_does_not_fit(tmp_path):
    from benchmark.zoo.models import build_model
    store = Store(tmp_path)
    hp = default_hparams().replace(**{"dataset.name": "digits", "model.width": 4, "model.depth": 1})
    state = build_model(hp.model, (1, 8, 8), 10).state_dict()
    model_id = _save(store, hp)
    torch.save({"init": state, "final": state}, store.checkpoint_path(model_id))
    store.check_checkpoint(model_id)
    partial = {k: v for i, (k, v) in enumerate(state.items()) if i}
    torch.save({"init": state, "final": partial}, store.checkpoint_path(model_id))
    with pytest.raises(CheckpointError, match=r"its final weights lack .*weight and hold nothing more"):
        store.check_checkpoint(model_id)
    assert store.prune_corrupt([model_id], "retrain") == [model_id] and store.model_ids() == set()
