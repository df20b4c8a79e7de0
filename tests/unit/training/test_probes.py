"""Per-epoch probes: the pipeline passes the order parameters to the trainers, which write them into the
history without changing the training itself."""
from __future__ import annotations

import torch

from benchmark.measuring.probes import DEFAULT_PROBES, OrderParameters
from benchmark.training.loop import train_model
from benchmark.training.stacked import train_many
from benchmark.zoo.datasets import make_data
from measures import history as H
from measures.phases import order_parameters
from measures.seeding import generator
from tests.helpers import default_hparams

HP = default_hparams().replace(**{"dataset.name": "digits", "dataset.train_size": 300, "dataset.test_size": 100,
                                  "dataset.label_noise": 0.2, "model.width": 16, "train.batch_size": 30,
                                  "train.max_epochs": 2})


def test_probes_fill_the_history_without_changing_training():
    data = make_data(HP.dataset)
    probed = train_model(HP, data, probes=DEFAULT_PROBES)
    assert all(k in row for row in probed.history for k in ("op.alignment", "op.loss_mislabeled"))
    plain = train_model(HP, data)
    assert not any(k.startswith(H.ORDER_PARAMETER_PREFIX) for row in plain.history for k in row)
    assert set(plain.history[0]) == set(H.COLUMNS)
    assert all(torch.equal(probed.final_state[k], plain.final_state[k]) for k in plain.final_state)
    clean_hp = HP.replace(**{"dataset.label_noise": 0.0})
    clean = train_model(clean_hp, make_data(clean_hp.dataset), probes=DEFAULT_PROBES)
    assert "op.alignment" in clean.history[0] and "op.loss_mislabeled" not in clean.history[0]


def test_the_probe_is_order_parameters_with_its_own_stream():
    """The probe's values equal ``order_parameters`` called by hand with generator(seed, "phases")."""
    data = make_data(HP.dataset)
    result = train_model(HP.replace(**{"train.max_epochs": 1}), data, probes=(OrderParameters(),))
    from benchmark.measuring.context import Trained
    model = Trained.from_result(result, data).model.train()
    by_hand = order_parameters(model, data.x_train, data.y_train, HP.train.batch_size, generator(HP.seed, "phases"),
                               8, data.mislabeled)
    row = result.history[-1]
    assert by_hand == {k.removeprefix("op."): v for k, v in row.items() if k.startswith("op.")}


def test_stacked_trainer_calls_the_same_probes():
    hps = [HP, HP.replace(seed=1)]
    data = make_data(HP.dataset)
    stacked = train_many(hps, {HP.dataset: data}, probes=DEFAULT_PROBES)
    alone = train_model(hps[1], data, probes=DEFAULT_PROBES)
    for a, b in zip(stacked[1].history, alone.history):
        assert a.keys() == b.keys()
        for k in b:
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(b[k])), k
