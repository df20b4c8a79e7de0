"""Stacks of BatchNorm conv nets (``cnn_bn``) and residual networks (``resnet``): the stacked BatchNorm and
residual blocks of ``measures.stacking`` against each model's own modules, and the stacked trainer against
``train_model``, member by member: histories, stopping epochs, final weights and running statistics, snapshots,
and the stored state loading back into its model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.errors import HParamsError
from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.training.loop import train_model
from benchmark.training.stacked import Stack, group_stacks, train_many
from benchmark.zoo.datasets import make_data
from benchmark.zoo.models import ConvBNNet, ResNet, build_model
from measures import stacking
from tests.helpers import default_hparams

TOL = 1e-5  # weights, running statistics, losses and errors (measured: at most 2e-7 apart)
PROBE_TOL = 2e-3  # the order parameters: differences of nearly equal gradient statistics (measured: 4e-4)

# digits (8×8 images), 160 training samples, 5 steps of 32 per epoch
BASE = default_hparams().replace(**{
    "dataset.name": "digits", "dataset.train_size": 160, "dataset.test_size": 100, "model.name": "cnn_bn",
    "model.depth": 2, "model.width": 6, "train.batch_size": 32, "train.max_epochs": 4, "train.target_loss": 0.05})


def _models(in_shape, seeds=(0, 1, 2), cls=ConvBNNet, depth=2):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(cls(in_shape, 3, depth=depth, width=4))
    return out


@pytest.mark.parametrize("cls, kinds", [
    (ConvBNNet, ["conv", "batchnorm", "relu"] * 2 + ["channelwise", "flatten", "linear"]),
    (ResNet, ["conv", "batchnorm", "relu"] + ["residual", "relu"] * 3 + ["channelwise", "flatten", "linear"])])
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (2, 10)])
def test_stacked_batchnorm_is_each_models_own_in_training_and_eval_mode(in_shape, cls, kinds):
    """Training mode: each member's logits, parameter gradients and updated running statistics and batch count
    are those of its own module on its own batch; eval mode (separate and shared inputs): its running
    statistics. One ``F.batch_norm`` over the grouped channels normalises each member by its own batch. The
    residual net (three blocks: a projection shortcut in the 1st and 3rd, the identity in the 2nd) adds each
    block's shortcut to its main path."""
    models = _models(in_shape, cls=cls, depth=3 if cls is ResNet else 2)
    prog = stacking.compile_program(models[0])
    assert [op.kind for op in prog.ops] == kinds and stacking.program(models[0]) is None
    flat = stacking.stack(prog, [dict(m.named_parameters()) for m in models])
    params = [v.detach().requires_grad_(True) for v in stacking.views(prog, flat)]
    buffers = stacking.stack_buffers(prog, models)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (3, 7), generator=g)
    for step in range(2):  # two steps: the second starts from running statistics the first moved
        x = torch.randn(3, 7, *in_shape, generator=g)
        got = stacking.forward(prog, params, x, buffers=buffers, train=True)
        grads = torch.autograd.grad(sum(F.cross_entropy(got[j], y[j]) for j in range(3)), params)
        for j, m in enumerate(models):
            m.train().zero_grad()
            out = m(x[j])
            F.cross_entropy(out, y[j]).backward()
            torch.testing.assert_close(got[j], out, rtol=1e-5, atol=1e-6)
            for i, p in enumerate(m.parameters()):
                own = p.grad.T if i in prog.transposed else p.grad  # Linear weights stacked as (in, out)
                torch.testing.assert_close(grads[i][j], own, rtol=1e-4, atol=1e-6)
            for b, own in zip(buffers, m.buffers()):
                torch.testing.assert_close(b[j], own, rtol=1e-6, atol=1e-7)
        assert buffers[2].tolist() == [step + 1] * 3  # num_batches_tracked of the first BatchNorm
    x = torch.randn(3, 5, *in_shape, generator=g)
    with torch.no_grad():
        sep = stacking.forward(prog, params, x, buffers=buffers)
        shared = stacking.forward(prog, params, x[0], shared=True, buffers=buffers)
        before = [b.clone() for b in buffers]
    for j, m in enumerate(models):
        m.eval()
        torch.testing.assert_close(sep[j], m(x[j]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shared[j], m(x[0]), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, buffers))  # eval mode leaves the statistics alone


def test_a_batch_of_one_value_per_channel_fails_as_in_torch():
    models = _models((1, 2, 2), depth=1)  # the first convolution (stride 2) leaves one position
    prog = stacking.compile_program(models[0])
    params = stacking.views(prog, stacking.stack(prog, [dict(m.named_parameters()) for m in models]))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        models[0].train()(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        stacking.forward(prog, params, torch.randn(3, 1, 1, 2, 2), buffers=stacking.stack_buffers(prog, models),
                         train=True)


def _close(a: float, b: float, tol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=tol, abs=tol)


def _assert_same(vec, loop, states=TOL, probes=PROBE_TOL):
    """``vec`` (stacked) equals ``loop`` (``train_model``) up to float rounding: initial state bit for bit, final
    weights and BatchNorm buffers, snapshots, every history row and the final metrics."""
    assert vec.hparams == loop.hparams
    assert list(vec.init_state) == list(loop.init_state)
    assert all(torch.equal(vec.init_state[k], v) for k, v in loop.init_state.items())
    assert list(vec.final_state) == list(loop.final_state)
    for k, v in loop.final_state.items():
        assert vec.final_state[k].dtype == v.dtype, k
        torch.testing.assert_close(vec.final_state[k], v, rtol=states, atol=states, msg=k)
    assert [(s["fraction"], s["epoch"]) for s in vec.snapshots] == [(s["fraction"], s["epoch"]) for s in loop.snapshots]
    for a, b in zip(vec.snapshots, loop.snapshots):
        assert list(a["state"]) == list(b["state"])
        for k, v in b["state"].items():
            torch.testing.assert_close(a["state"][k], v, rtol=states, atol=states, msg=k)
    assert len(vec.history) == len(loop.history), "stopped at a different epoch"
    for a, b in zip(vec.history, loop.history):
        assert list(a) == list(b)
        for k, v in b.items():
            assert _close(a[k], v, probes if k.startswith("op.") else states), (k, a["epoch"], a[k], v)
    for k, v in loop.metrics.items():
        if k != "wall_time":
            assert _close(vec.metrics[k], v, states), k


def test_a_cnn_bn_stack_equals_each_model_trained_alone():
    """Five members in one stack: SGD, momentum with dropout and weight decay, Adam, a label-noise member, and
    one that converges at epoch 3 and leaves the stack (the others, still compared with their own runs, are
    not disturbed); the order-parameter probes run every epoch and snapshots are kept at half-way."""
    hps = [BASE.replace(**{"optimizer.name": "sgd", "optimizer.lr": 0.3}),
           BASE.replace(**{"optimizer.name": "momentum", "optimizer.lr": 0.05, "model.dropout": 0.25,
                           "optimizer.weight_decay": 1e-3, "seed": 1}),
           BASE.replace(**{"optimizer.name": "adam", "optimizer.lr": 0.01, "seed": 2, "train.max_epochs": 3}),
           BASE.replace(**{"optimizer.name": "sgd", "optimizer.lr": 0.2, "dataset.label_noise": 0.2,
                           "dataset.label_noise_mode": "fixed_total", "model.init_scale": 0.5, "seed": 3}),
           BASE.replace(**{"optimizer.name": "sgd", "optimizer.lr": 0.5, "train.target_loss": 2.28, "seed": 4})]
    assert len(group_stacks(hps)) == 1
    vec = train_many(hps, make_data, probes=DEFAULT_PROBES, keep=(0.5,))
    for hp, result in zip(hps, vec):
        _assert_same(result, train_model(hp, make_data(hp.dataset), probes=DEFAULT_PROBES, keep=(0.5,)))
    epochs = [r.metrics["epochs"] for r in vec]
    assert epochs == [4, 4, 3, 4, 3] and vec[4].metrics["converged"]
    assert all(int(r.final_state["net.1.num_batches_tracked"]) == r.metrics["steps"] for r in vec)
    assert any(k.startswith("op.") for k in vec[0].history[0]) and "op.loss_mislabeled" in vec[3].history[0]


def test_the_stored_state_loads_strictly_and_evaluates_as_the_stack_did():
    """Each member's final state dict loads with ``strict=True`` into ``build_model`` and gives, in eval mode,
    the logits of the stacked evaluation pass taken just before the member left the stack."""
    hps = [BASE.replace(**{"optimizer.lr": 0.2, "train.max_epochs": 2}),
           BASE.replace(**{"optimizer.name": "adam", "optimizer.lr": 0.01, "model.dropout": 0.1, "seed": 1})]
    data = make_data(hps[0].dataset)
    stack = Stack(hps, [data, data], "cpu")
    logits, results = {}, {}

    def finished(row, result):
        r = next(i for i, m in enumerate(stack.members) if m.row == row)
        with torch.no_grad():
            logits[row] = stacking.forward(stack.prog, stack.params, data.x_test, shared=True,
                                           buffers=stack.buffers)[r].clone()
        results[row] = result

    stack.run(finished)
    assert [results[r].metrics["epochs"] for r in (0, 1)] == [2, 4]
    for row, hp in enumerate(hps):
        model = build_model(hp.model, data.in_shape, data.num_classes)
        model.load_state_dict(results[row].final_state, strict=True)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(data.x_test), logits[row], rtol=1e-5, atol=1e-6)


def test_a_stack_that_would_step_on_one_value_per_channel_fails_before_training():
    """161 digits in batches of 32 leave one sample; a depth-5 ``cnn_bn`` has shrunk 8×8 to one position by its
    last layer. The stack raises the per-model trainer's error, before any training."""
    bad = BASE.replace(**{"dataset.train_size": 161, "model.depth": 5, "model.width": 4})
    hps = [bad, bad.replace(seed=1)]
    with pytest.raises(HParamsError) as alone:
        train_model(hps[0], make_data(hps[0].dataset))
    with pytest.raises(HParamsError) as stacked:
        train_many(hps, make_data)
    assert str(stacked.value) == str(alone.value)


def test_a_resnet_stack_equals_each_model_trained_alone():
    """Both shortcut kinds (a projection in the strided 1st block, the identity in the 2nd), dropout inside the
    blocks, SGD, momentum and Adam; snapshots at half-way."""
    base = BASE.replace(**{"model.name": "resnet", "model.width": 4, "train.max_epochs": 3})
    hps = [base.replace(**{"optimizer.name": "sgd", "optimizer.lr": 0.3}),
           base.replace(**{"optimizer.name": "momentum", "optimizer.lr": 0.05, "model.dropout": 0.25, "seed": 1}),
           base.replace(**{"optimizer.name": "adam", "optimizer.lr": 0.01, "seed": 2, "train.max_epochs": 2})]
    vec = train_many(hps, make_data, keep=(0.5,))
    for hp, result in zip(hps, vec):
        _assert_same(result, train_model(hp, make_data(hp.dataset), keep=(0.5,)))
    assert [r.metrics["epochs"] for r in vec] == [3, 3, 2]
    assert all(int(r.final_state["blocks.1.bn2.num_batches_tracked"]) == r.metrics["steps"] for r in vec)
