"""A checkpoint that passed its check is not read again until its file changes; a changed one is checked again, and a
store that cannot be written keeps no record."""
from __future__ import annotations

import json
import os

import torch

from benchmark.store import Store
from benchmark.store.checked import FILE
from tests.helpers import default_hparams


def _stored(tmp_path) -> tuple[Store, str]:
    from benchmark.zoo.models import build_model
    store = Store(tmp_path / "store")
    hp = default_hparams().replace(**{"dataset.name": "digits", "model.width": 4, "model.depth": 1})
    state = build_model(hp.model, (1, 8, 8), 10).state_dict()
    model_id = store.save_model(hp, state, state, {"converged": True, "gap_error": 0.1, "test_size": 10},
                                [{"epoch": 1, "step": 3, "train_loss": 0.5}])
    return store, model_id


def _count_checks(store, monkeypatch) -> list[str]:
    calls = []
    original = store.check_checkpoint
    monkeypatch.setattr(store, "check_checkpoint", lambda model_id, hp=None: calls.append(model_id) or original(
        model_id, hp))
    return calls


def test_an_unchanged_checkpoint_is_checked_once_and_a_changed_one_again(tmp_path, monkeypatch):
    store, model_id = _stored(tmp_path)
    calls = _count_checks(store, monkeypatch)
    assert store.prune_corrupt([model_id], "fail") == [] and calls == [model_id]
    record = json.loads((store.root / "cache" / FILE).read_text())
    path = store.checkpoint_path(model_id)
    assert record == {model_id: [[path.stat().st_size, path.stat().st_ino, path.stat().st_ctime_ns]]}
    assert store.prune_corrupt([model_id], "fail") == [] and calls == [model_id]

    os.truncate(path, path.stat().st_size // 2)  # the same name, another file: checked again, found bad
    assert store.prune_corrupt([model_id], "retrain") == [model_id] and calls == [model_id, model_id]
    assert store.model_ids() == set() and json.loads((store.root / "cache" / FILE).read_text()) == {}


def test_rewritten_weights_are_checked_again(tmp_path, monkeypatch):
    store, model_id = _stored(tmp_path)
    store.prune_corrupt([model_id], "fail")
    ckpt = torch.load(store.checkpoint_path(model_id))
    torch.save({**ckpt, "final": {k: v for i, (k, v) in enumerate(ckpt["final"].items()) if i}},
               store.checkpoint_path(model_id))
    calls = _count_checks(store, monkeypatch)
    assert store.prune_corrupt([model_id], "skip") == [model_id] and calls == [model_id]


def test_a_read_only_store_keeps_no_record(tmp_path, monkeypatch):
    store, model_id = _stored(tmp_path)
    reader = Store(store.root, readonly=True)
    calls = _count_checks(reader, monkeypatch)
    for _ in range(2):
        assert reader.prune_corrupt([model_id], "skip") == []
    assert calls == [model_id, model_id] and not (store.root / "cache").exists()
