"""Weights kept part-way through training: the thinning rule, and that a kept snapshot is exactly the model
that training for that many epochs produces (looped and stacked trainers alike)."""
from __future__ import annotations

import pytest
import torch

from benchmark.training.loop import train_model
from benchmark.training.snapshots import Snapshots
from benchmark.training.stacked import train_many
from benchmark.zoo.datasets import make_data
from tests.helpers import default_hparams

HP = default_hparams().replace(**{
    "dataset.name": "digits", "dataset.train_size": 300, "dataset.test_size": 100, "model.depth": 2,
    "model.width": 16, "optimizer.lr": 0.2, "train.batch_size": 50, "train.target_loss": 0.05,
    "train.max_epochs": 300})
KEEP = (0.25, 0.5, 0.75)


def test_thinning_keeps_at_most_the_slots_and_picks_the_nearest_kept_epoch():
    s = Snapshots(KEEP, slots=8)
    for epoch in range(1, 51):
        if s.due(epoch):
            s.add(epoch, epoch)
    kept = [e for e, _ in s.kept]
    assert len(kept) <= 8 and s.stride == 8 and kept == list(range(8, 49, 8))
    picked = s.pick(50)  # targets 12.5, 25, 37.5
    assert [(f, e) for f, e, _ in picked] == [(0.25, 16), (0.5, 24), (0.75, 40)]
    assert all(abs(e - f * 50) <= s.stride / 2 + 0.5 for f, e, _ in picked)
    assert Snapshots(()).due(1) is False
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        Snapshots((0.5, 1.0))


@pytest.fixture(scope="module")
def data():
    return make_data(HP.dataset)


def test_a_snapshot_is_the_model_trained_for_that_many_epochs(data):
    full = train_model(HP, data, keep=KEEP)
    epochs = len(full.history)
    assert [s["fraction"] for s in full.snapshots] == list(KEEP)
    for snap in full.snapshots:
        assert abs(snap["epoch"] - snap["fraction"] * epochs) <= max(1, epochs / 64)
        short = train_model(HP.replace(**{"train.max_epochs": snap["epoch"]}), data)
        assert all(torch.equal(snap["state"][k], short.final_state[k]) for k in short.final_state)


def test_stacked_members_keep_the_same_snapshots_as_the_looped_trainer(data):
    hps = [HP, HP.replace(seed=1), HP.replace(**{"optimizer.lr": 0.1})]
    stacked = train_many(hps, lambda d: data, keep=KEEP)
    for hp, vec in zip(hps, stacked):
        loop = train_model(hp, data, keep=KEEP)
        assert [s["epoch"] for s in vec.snapshots] == [s["epoch"] for s in loop.snapshots]
        for a, b in zip(vec.snapshots, loop.snapshots):
            assert a["state"].keys() == b["state"].keys()
            diff = max((a["state"][k] - b["state"][k]).abs().max().item() for k in b["state"])
            assert diff < 1e-4, (a["epoch"], diff)  # float rounding grows with the epochs: 1e-5 at epoch 36


def test_nothing_is_kept_without_fractions(data):
    assert train_model(HP.replace(**{"train.max_epochs": 3}), data).snapshots == []
