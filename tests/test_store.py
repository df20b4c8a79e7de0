"""The SQLite store: atomic checkpoints, frames, schema checks, clear errors for corrupt files."""
from __future__ import annotations

import sqlite3

import pytest
import torch

from benchmark.hparams import HParams
from benchmark.store import CheckpointError, Store, StoreError


def _save(store, hp, value=1.0):
    state = {"w": torch.full((2, 2), value)}
    return store.save_model(hp, state, state, {"converged": True, "gap_error": value, "test_size": 10},
                            [{"epoch": 1, "step": 3, "train_loss": 0.5}])


def test_round_trip_and_frame(tmp_path):
    store = Store(tmp_path)
    hp, hp2 = HParams(), HParams().replace(**{"model.width": 8})
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


def test_no_temporary_files_are_left(tmp_path):
    store = Store(tmp_path)
    _save(store, HParams())
    assert [p.suffix for p in (tmp_path / "checkpoints").iterdir()] == [".pt"]


def test_corrupt_and_missing_checkpoints_are_named(tmp_path):
    store = Store(tmp_path)
    model_id = _save(store, HParams())
    path = store.checkpoint_path(model_id)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{path}.*corrupt or truncated"):
        store.load_states(model_id)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        store.load_states(model_id)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    store = Store(tmp_path)
    model_id = _save(store, HParams())

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
    with pytest.raises(StoreError, match="schema version 0"):
        Store(tmp_path)
