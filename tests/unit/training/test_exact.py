"""The stacked trainer's shortcuts change no bit of a trained model: each one is checked against the plain
computation it replaces, with ``torch.equal`` and ``==`` (not a tolerance).

* ``Stack._batches`` gathers an epoch's minibatches in blocks instead of one ``x[idx]`` per step;
* the SGD rows take their learning rate as a float32 column converted once (``Stack.lr32``);
* ``measures.stacking.forward`` overwrites its own activations at a ReLU when autograd is off;
* ``benchmark.training.jobs`` hands small datasets to its tasks instead of having each worker make them.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.runtime import RunOptions
from benchmark.store import Store
from benchmark.training import jobs, stacked
from benchmark.training.stacked import Stack, train_many
from benchmark.zoo.datasets import make_data
from measures import stacking
from measures.updates import sgd_
from tests.helpers import default_hparams

# digits (8×8 images): 150 training samples = 4 batches of 32 and a ragged one of 22
BASE = default_hparams().replace(**{
    "dataset.name": "digits", "dataset.train_size": 150, "dataset.test_size": 100, "model.depth": 2,
    "model.width": 12, "train.batch_size": 32, "train.max_epochs": 4, "train.target_loss": 0.05})
HPS = [BASE.replace(**{"optimizer.lr": 0.3}),
       BASE.replace(**{"optimizer.lr": 0.1, "seed": 1, "dataset.label_noise": 0.2,
                       "dataset.label_noise_mode": "fixed_total", "model.dropout": 0.2}),
       BASE.replace(**{"optimizer.name": "momentum", "optimizer.lr": 0.05, "optimizer.weight_decay": 1e-3,
                       "seed": 2, "train.max_epochs": 3}),
       BASE.replace(**{"optimizer.name": "adam", "optimizer.lr": 0.01, "seed": 3})]


def _stack() -> Stack:
    return Stack(HPS, [make_data(hp.dataset) for hp in HPS], "cpu", DEFAULT_PROBES)


def _per_step(self: Stack, idx: torch.Tensor):
    """The minibatches as the trainer took them before: one gather per step."""
    for i in range(0, self.n, self.bs):
        yield self.x[idx[:, i:i + self.bs]], self.y[idx[:, i:i + self.bs]]


def _same_value(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("gather_bytes", [1, 3 * 32 * 64 * 4 * 4, stacked.GATHER_BYTES])
def test_blocked_gathers_give_the_minibatches_of_one_gather_per_step(monkeypatch, gather_bytes):
    """A block of one step, of three steps (a short last block), and the whole epoch, plus the ragged batch."""
    monkeypatch.setattr(stacked, "GATHER_BYTES", gather_bytes)
    s = _stack()
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(s.n, generator=g) + s.offsets[r] for r in range(len(s.members))])
    got, want = list(s._batches(idx)), list(_per_step(s, idx))
    assert [tuple(x.shape) for x, _ in got] == [(4, 32, 1, 8, 8)] * 4 + [(4, 22, 1, 8, 8)]
    assert len(got) == len(want)
    for (x, y), (x0, y0) in zip(got, want):
        assert x.is_contiguous() and torch.equal(x, x0) and torch.equal(y, y0)


def test_stacked_training_is_bit_identical_to_one_gather_per_step(monkeypatch):
    """Every weight, snapshot, history value (order parameters included) and metric, with SGD, momentum, Adam,
    dropout, weight decay and label noise in one stack."""
    fast = train_many(HPS, make_data, probes=DEFAULT_PROBES, keep=(0.5,))
    monkeypatch.setattr(Stack, "_batches", _per_step)
    slow = train_many(HPS, make_data, probes=DEFAULT_PROBES, keep=(0.5,))
    for a, b in zip(fast, slow):
        assert all(torch.equal(a.final_state[k], b.final_state[k]) for k in b.final_state)
        assert [s["epoch"] for s in a.snapshots] == [s["epoch"] for s in b.snapshots]
        for sa, sb in zip(a.snapshots, b.snapshots):
            assert all(torch.equal(sa["state"][k], sb["state"][k]) for k in sb["state"])
        assert len(a.history) == len(b.history)
        for ra, rb in zip(a.history, b.history):
            assert ra.keys() == rb.keys() and all(_same_value(ra[k], rb[k]) for k in rb)
        assert all(_same_value(a.metrics[k], b.metrics[k]) for k in b.metrics if k != "wall_time")


def test_the_sgd_rows_update_as_sgd_with_the_float64_learning_rates():
    s = _stack()
    k = s.n_sgd
    assert k == 3 and s.momentum_buf is not None
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        s.grad.copy_(torch.randn(s.grad.shape, generator=g))
        theta, buf = s.flat[:k].clone(), s.momentum_buf.clone()
        sgd_(theta, s.grad[:k], s.lr64[:k], weight_decay=s.wd[:k], momentum=s.mom[:k], buf=buf)
        s._update()
        assert torch.equal(s.flat[:k], theta) and torch.equal(s.momentum_buf, buf)


def test_eval_forward_reuses_only_its_own_activations():
    """Without autograd the logits equal those with autograd bit for bit, and the caller's input is left as it
    was even when the network starts with a ReLU."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.ReLU(), nn.Linear(5, 7), nn.ReLU(), nn.Identity(), nn.ReLU(), nn.Linear(7, 3))
              for _ in range(3)]
    prog = stacking.compile_program(models[0])
    params = stacking.views(prog, stacking.stack(prog, [dict(m.named_parameters()) for m in models]))
    x = torch.randn(3, 11, 5)
    before = x.clone()
    with torch.no_grad():
        fast = stacking.forward(prog, params, x)
        shared = stacking.forward(prog, params, x[0], shared=True)
    assert torch.equal(x, before)
    with torch.enable_grad():
        plain = stacking.forward(prog, [p.detach().requires_grad_(True) for p in params], x)
        plain_shared = stacking.forward(prog, [p.detach().requires_grad_(True) for p in params], x[0], shared=True)
    assert torch.equal(fast, plain.detach()) and torch.equal(shared, plain_shared.detach())
    torch.testing.assert_close(fast[1], models[1](x[1]).detach())  # and it is the model's own function


def test_tasks_carry_small_datasets_and_leave_large_ones_to_the_worker(monkeypatch):
    made = {hp.dataset: make_data(hp.dataset) for hp in HPS}
    shipped = jobs._bundles(HPS[:2], made)
    assert set(shipped) == {HPS[0].dataset, HPS[1].dataset} and shipped[HPS[1].dataset] is made[HPS[1].dataset]
    monkeypatch.setattr(jobs, "SHIP_BYTES", 1000)
    assert jobs._bundles(HPS[:2], made) == {}


def test_worker_processes_train_the_models_of_one_process_bit_for_bit(tmp_path):
    """Two worker processes (datasets handed over, the allocator's settings changed) store exactly what one
    process trains, every weight and history value."""
    hps = [hp.replace(**{"train.max_epochs": 2}) for hp in HPS] + \
          [BASE.replace(**{"model.width": 9, "train.max_epochs": 2, "seed": s}) for s in (5, 6)]
    stores = {}
    for j in (1, 2):
        stores[j] = Store(tmp_path / f"jobs{j}")
        opts = RunOptions(jobs=j, threads=1, progress=False, keep=(0.5,))
        assert jobs.train_zoo(hps, stores[j], opts, DEFAULT_PROBES) == {"reused": 0, "trained": len(hps)}
    one, two = stores[1], stores[2]
    assert one.model_ids() == two.model_ids() == {hp.model_id for hp in hps}
    for hp in hps:
        for a, b in zip(one.load_states(hp.model_id), two.load_states(hp.model_id)):
            assert all(torch.equal(a[k], b[k]) for k in b)
        ha, hb = one.history(hp.model_id), two.history(hp.model_id)
        assert len(ha) == len(hb) == 2
        assert all(ra.keys() == rb.keys() and all(_same_value(ra[k], rb[k]) for k in rb) for ra, rb in zip(ha, hb))


def test_the_step_gradients_are_autograds(monkeypatch):
    """The direct call into the engine gives torch.autograd.grad's gradients bit for bit (and is what a step
    uses), and without a reachable engine the step falls back to torch.autograd.grad itself."""
    s = _stack()
    idx = torch.stack([torch.arange(32) + s.offsets[r] for r in range(len(s.members))])
    x, y = s.x[idx], s.y[idx]

    def loss():
        with torch.enable_grad():
            logits = stacking.forward(s.prog, s.params, x)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    want = torch.autograd.grad(loss(), s.params)
    got = stacked._gradients(loss(), s.params)
    monkeypatch.setattr(stacked, "_ENGINE", None)
    fallback = stacked._gradients(loss(), s.params)
    assert len(got) == len(want) == len(fallback) == len(s.params)
    assert all(torch.equal(a, b) and torch.equal(c, b) for a, b, c in zip(got, want, fallback))
