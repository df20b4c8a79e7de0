"""The shift targets: every trained model carries its errors on the shifted test sets, computed from its final
weights; a store that lacks them (trained before they existed, or under an older definition) regains exactly the
same values from its checkpoints with `genbench measure`."""
from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from benchmark import pipeline
from benchmark.store import Store
from benchmark.training.shift import model_from_state
from benchmark.zoo.shift import SHIFT_VERSION, shift_names, shifted_tests
from tests.conftest import TINY_MODELS


def _metrics(root) -> dict[str, dict]:
    return {mid: json.loads(m) for mid, _, m in Store(root).model_rows()}


def _rewrite(root, change) -> None:
    db = sqlite3.connect(root / "genbench.sqlite")
    with db:
        for mid, m in db.execute("SELECT id, metrics FROM models").fetchall():
            db.execute("UPDATE models SET metrics = ? WHERE id = ?", (json.dumps(change(json.loads(m))), mid))
    db.close()


def test_each_model_carries_its_shift_errors_and_they_are_its_final_weights_errors(trained_tiny, tmp_path):
    cfg = trained_tiny()
    root = tmp_path / "store"
    store, names = Store(root), shift_names("digits")
    assert len(names) >= 8
    for mid, m in _metrics(root).items():
        errors = [m[f"shift.{n}"] for n in names]
        assert m["shift_version"] == SHIFT_VERSION
        assert m["shift_error"] == pytest.approx(sum(errors) / len(errors), abs=1e-12)
        assert m["shift_gap"] == pytest.approx(m["shift_error"] - m["train_error"], abs=1e-12)
    # one model by hand: the argmax of its logits on every shifted set, one sample at a time
    mid = sorted(_metrics(root))[0]
    hp, metrics, _ = store.model_record(mid)
    sets = shifted_tests(hp.dataset, cfg.dataset.root)
    x0 = next(iter(sets.values()))[0]
    model = model_from_state(hp, store.load_states(mid)[1], tuple(x0.shape[1:]), 10)
    with torch.no_grad():
        for name, (x, y) in sets.items():
            wrong = sum(int(model(x[i:i + 1]).argmax(1).item() != y[i].item()) for i in range(len(y)))
            assert metrics[f"shift.{name}"] == wrong / len(y)


def test_a_store_without_them_regains_the_same_values_without_retraining(trained_tiny, tmp_path):
    cfg = trained_tiny()
    root = tmp_path / "store"
    before = _metrics(root)
    _rewrite(root, lambda m: {k: v for k, v in m.items() if not k.startswith("shift")})
    assert all("shift_gap" not in m for m in _metrics(root).values())
    out = pipeline.measure(cfg)
    assert out["shift_filled"] == TINY_MODELS and out["computed"] == 0  # no measure recomputed, no model retrained
    assert _metrics(root) == before
    assert pipeline.measure(cfg)["shift_filled"] == 0
    # an older definition of the shifts is recomputed too
    _rewrite(root, lambda m: {**m, "shift_version": SHIFT_VERSION - 1, "shift_error": -1.0})
    assert pipeline.measure(cfg)["shift_filled"] == TINY_MODELS and _metrics(root) == before
