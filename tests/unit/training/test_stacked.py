"""Tests of benchmark.training.stacked: stacked training equals the per-model trainer, member by member."""
from __future__ import annotations

import math

import pytest
import torch

from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.training.history import evaluates_test
from benchmark.training.loop import train_model
from benchmark.training.stacked import group_stacks, stack_key, train_many
from benchmark.zoo.datasets import DataBundle, make_data
from benchmark.zoo.hparams import HParams
from tests.helpers import default_hparams

TOL = 1e-5

# digits (8×8 images): 160 training samples, 5 steps of 32 per epoch
DIGITS = default_hparams().replace(**{
    "dataset.name": "digits", "dataset.train_size": 160, "dataset.test_size": 100, "model.depth": 2,
    "model.width": 12, "train.batch_size": 32, "train.max_epochs": 4, "train.target_loss": 0.05})


def _hp(base: HParams = DIGITS, **dotted) -> HParams:
    return base.replace(**dotted)


def _synthetic_1d(n: int = 96, length: int = 12, seed: int = 0) -> DataBundle:
    """A (1 channel, length) sequence task for Conv1d stacks: the class is the position of the peak."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 1, length, generator=g)
    y = x[:, 0].argmax(1) % 3
    return DataBundle(x[:n], y[:n], y[:n].clone(), x[n:], y[n:], 3)


def _assert_same(vec, loop, tol=TOL):
    assert vec.hparams == loop.hparams
    assert vec.init_state.keys() == loop.init_state.keys()
    for k in loop.init_state:
        assert torch.equal(vec.init_state[k], loop.init_state[k]), k
    assert vec.final_state.keys() == loop.final_state.keys()
    for k in loop.final_state:
        torch.testing.assert_close(vec.final_state[k], loop.final_state[k], rtol=tol, atol=tol, equal_nan=True, msg=k)
    assert len(vec.history) == len(loop.history), "stopped at a different epoch"
    for a, b in zip(vec.history, loop.history):
        assert a.keys() == b.keys()
        for k in b:
            if isinstance(b[k], float) and math.isnan(b[k]):
                assert math.isnan(a[k]), k
            else:
                assert a[k] == pytest.approx(b[k], rel=tol, abs=tol), (k, a["epoch"])
    for k, v in loop.metrics.items():
        if k == "wall_time":
            continue
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(vec.metrics[k]), k
        else:
            assert vec.metrics[k] == pytest.approx(v, rel=tol, abs=tol), k


def _check(hps, data=make_data, tol=TOL):
    """Both trainers with the zoo's probes (the order parameters), so the histories are compared in full."""
    vec = train_many(hps, data, probes=DEFAULT_PROBES)
    source = data.__getitem__ if isinstance(data, dict) else data
    for hp, v in zip(hps, vec):
        _assert_same(v, train_model(hp, source(hp.dataset), probes=DEFAULT_PROBES), tol)
    return vec


# ------------------------------------------------------------------------------------------- equality
def test_mlp_sgd_momentum_adam_dropout_and_stopping_times_in_one_stack():
    """One stack mixing optimizers, dropout rates (0 and >0), weight decay, init scales, label noise, training
    subsets, seeds, target losses and epoch budgets: each member equals its own per-model run."""
    hps = [
        _hp(**{"optimizer.name": "sgd", "optimizer.lr": 0.5, "train.target_loss": 2.2}),  # converges at epoch 3
        _hp(**{"optimizer.name": "sgd", "optimizer.lr": 0.3, "model.dropout": 0.3, "optimizer.weight_decay": 1e-3,
               "dataset.label_noise": 0.2, "dataset.label_noise_mode": "fixed_total", "seed": 1}),
        _hp(**{"optimizer.name": "momentum", "optimizer.lr": 0.05, "optimizer.momentum": 0.8,
               "optimizer.weight_decay": 5e-4, "train.max_epochs": 2}),  # stops on its epoch budget
        _hp(**{"optimizer.name": "momentum", "optimizer.lr": 0.05, "model.dropout": 0.5, "dataset.seed": 3,
               "model.init_scale": 0.5, "seed": 2}),
        _hp(**{"optimizer.name": "adam", "optimizer.lr": 0.01, "optimizer.weight_decay": 1e-3,
               "train.max_epochs": 3}),
        _hp(**{"optimizer.name": "adam", "optimizer.lr": 0.003, "model.dropout": 0.2, "dataset.label_noise": 0.1,
               "dataset.label_noise_mode": "fixed_total", "seed": 3}),
    ]
    assert len(group_stacks(hps)) == 1
    vec = _check(hps)
    epochs = [r.metrics["epochs"] for r in vec]
    assert epochs == [3, 4, 2, 4, 3, 4] and vec[0].metrics["converged"]
    assert any(k.startswith("op.") for k in vec[0].history[0])
    assert "op.loss_mislabeled" in vec[1].history[0] and "op.loss_mislabeled" not in vec[0].history[0]


def test_conv2d_stack_on_digits():
    base = _hp(**{"model.name": "cnn", "model.width": 6, "model.depth": 3, "train.max_epochs": 3})
    hps = [_hp(base, **{"optimizer.name": "sgd", "optimizer.lr": 0.3}),
           _hp(base, **{"optimizer.name": "momentum", "optimizer.lr": 0.05, "model.dropout": 0.25, "seed": 1}),
           _hp(base, **{"optimizer.name": "adam", "optimizer.lr": 0.01, "optimizer.weight_decay": 1e-3,
                        "train.max_epochs": 2, "model.bias": True})]
    _check(hps)


def test_conv1d_stack_without_bias_on_a_given_dataset_mapping():
    base = default_hparams().replace(**{"dataset.name": "mnist1d", "dataset.train_size": 96, "model.name": "cnn",
                                "model.width": 5, "model.bias": False, "train.batch_size": 16,
                                "train.max_epochs": 3, "train.target_loss": 0.05})
    hps = [_hp(base, **{"optimizer.lr": 0.2}),
           _hp(base, **{"optimizer.name": "adam", "optimizer.lr": 0.02, "model.dropout": 0.1, "seed": 4})]
    data = {hp.dataset: _synthetic_1d() for hp in hps}
    _check(hps, data)


def test_a_diverging_member_leaves_without_disturbing_the_others():
    hps = [_hp(**{"optimizer.lr": 1e12, "model.init_scale": 5.0}), _hp(**{"optimizer.lr": 0.3, "seed": 1})]
    vec = _check(hps)
    assert vec[0].metrics["diverged"] and vec[0].metrics["epochs"] < vec[1].metrics["epochs"]
    assert not vec[1].metrics["diverged"]


def test_mlp_depth_one_without_bias_and_a_ragged_last_batch():
    # 160 samples = 3 batches of 48 + one of 16
    base = _hp(**{"model.depth": 1, "model.bias": False, "train.batch_size": 48, "train.max_epochs": 2})
    _check([_hp(base, **{"seed": s, "optimizer.name": o}) for s, o in ((0, "sgd"), (1, "adam"), (2, "momentum"))])


def test_test_set_schedule_members_stopping_between_test_epochs_and_the_every_schedule():
    """Past epoch 15 the log schedule evaluates the test set every 2nd epoch; a member stopping at an odd epoch
    still gets exact final test metrics, the skipped epochs carry NaN in both trainers, and "every" fills them."""
    base = _hp(**{"model.width": 6, "optimizer.lr": 0.02, "train.max_epochs": 19, "train.target_loss": 1e-6})
    hps = [base, _hp(base, **{"seed": 1, "train.max_epochs": 17})]
    vec = _check(hps)
    for r in vec:
        skipped = [row["epoch"] for row in r.history if math.isnan(row["test_error"])]
        assert skipped == [e for e in range(17, r.metrics["epochs"]) if e % 2]  # 17 only for the 19-epoch model
        assert math.isfinite(r.history[-1]["test_error"]) and r.metrics["test_error"] == r.history[-1]["test_error"]
    every = train_many(hps, make_data, test_schedule="every")
    assert all(math.isfinite(row["test_error"]) for r in every for row in r.history)
    for a, b in zip(every, vec):  # the schedule changes what is recorded, never the training
        for k in b.final_state:
            assert torch.equal(a.final_state[k], b.final_state[k])
    with pytest.raises(ValueError, match="valid: log, every"):
        train_many(hps, make_data, test_schedule="sometimes")


def test_the_log_schedule_has_eight_evaluations_per_doubling():
    due = [e for e in range(1, 129) if evaluates_test(e)]
    assert due[:15] == list(range(1, 16))
    assert due[15:] == [*range(16, 32, 2), *range(32, 64, 4), *range(64, 128, 8), 128]
    assert sum(evaluates_test(e) for e in range(1, 101)) == 36
    assert all(evaluates_test(e, "every") for e in range(1, 50))


# ------------------------------------------------------------------------------------- bookkeeping
def test_results_in_input_order_one_progress_call_each_and_singletons_use_the_looped_trainer():
    hps = [_hp(**{"seed": 0, "train.max_epochs": 1}), _hp(**{"model.width": 7, "train.max_epochs": 1}),
           _hp(**{"seed": 1, "train.max_epochs": 1})]
    seen = []
    vec = train_many(hps, make_data, progress=seen.append)
    assert [r.hparams for r in vec] == hps
    assert sorted(r.hparams.model_id for r in seen) == sorted(hp.model_id for hp in hps)
    alone = train_model(hps[1], make_data(hps[1].dataset))  # a stack of one: exactly the per-model trainer
    for k in alone.final_state:
        assert torch.equal(vec[1].final_state[k], alone.final_state[k])
    assert all(r.metrics["wall_time"] > 0 for r in vec)


def test_grouping_rules():
    a = _hp()
    same = [a.replace(**{k: v}) for k, v in [
        ("optimizer.lr", 0.01), ("optimizer.name", "adam"), ("optimizer.weight_decay", 0.1),
        ("model.dropout", 0.5), ("model.init_scale", 2.0), ("dataset.seed", 5),
        ("dataset.test_size", 50), ("train.max_epochs", 9), ("train.target_loss", 0.5), ("seed", 7)]]
    # label noise with the total fixed keeps the set's size; with the clean count fixed it adds samples
    same.append(a.replace(**{"dataset.label_noise": 0.1, "dataset.label_noise_mode": "fixed_total"}))
    other = [a.replace(**{"dataset.label_noise": 0.1})] + [a.replace(**{k: v}) for k, v in [
        ("model.width", 13), ("model.depth", 3), ("model.bias", False), ("model.name", "cnn"),
        ("train.batch_size", 16), ("dataset.train_size", 100), ("dataset.name", "mnist5k")]]
    assert all(stack_key(h) == stack_key(a) for h in same)
    assert len({stack_key(h) for h in other + [a]}) == len(other) + 1
    stacks = group_stacks([a, *other, *same])
    assert stacks[0] == [a, *same] and [s for s in stacks[1:]] == [[h] for h in other]  # first-appearance order
    assert [len(s) for s in group_stacks([a, *same], max_size=5)] == [5, 5, 2]
    with pytest.raises(ValueError):
        group_stacks([a], max_size=0)
