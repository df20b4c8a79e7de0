"""BatchNorm networks (``cnn_bn``, ``resnet``) through the real training path, ``genbench train``'s
(``pipeline.train``: the zoo grid, the training tasks, the stacked trainer's fallback to the per-model loop, the
per-epoch probes, the store): they reach the target loss; the running statistics are stored with the weights and
come back bit for bit from the store and from an exported archive; every evaluation uses them (eval mode)."""
from __future__ import annotations

import math

import pytest
import torch

from benchmark import pipeline
from benchmark.errors import HParamsError
from benchmark.measuring.context import Trained
from benchmark.measuring.jobs import group_key
from benchmark.runtime import RunOptions
from benchmark.store import Store
from benchmark.store.archive import export, import_archive
from benchmark.training.jobs import split_tasks
from benchmark.training.loop import evaluate, train_model
from benchmark.training.stacked import Stack, train_many
from benchmark.zoo import expand, make_data
from benchmark.zoo.hparams import stack_key
from tests.conftest import make_cfg

TARGET = 0.05
# two architectures × two seeds on 300 digits: each pair shares a stack_key, so the stacked trainer is asked first
ZOO = ["zoo=none", "dataset=digits", "dataset.train_size=300", "dataset.test_size=100", "model.depth=3",
       "model.width=8", "optimizer.lr=0.5", "train.batch_size=50", f"train.target_loss={TARGET}",
       "train.max_epochs=100", "+zoo.axes.model.name=[cnn_bn,resnet]", "zoo.seeds=[0,1]", "run.jobs=1",
       "run.threads=1", "run.progress=false"]
OPTS = RunOptions(jobs=1, threads=1, progress=False)


def _running(state: dict) -> dict:
    return {k: v for k, v in state.items() if "running" in k or "num_batches" in k}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The four models trained into a real store by ``pipeline.train``; (config, hparams, store)."""
    root = tmp_path_factory.mktemp("bn") / "store"
    cfg = make_cfg(*ZOO, f"store.root={root}")
    assert pipeline.train(cfg)["trained"] == 4
    return cfg, expand(cfg), Store(root)


def test_the_models_reach_the_target_and_their_running_statistics_count_every_step(zoo):
    """``num_batches_tracked`` counts the train-mode forward passes: exactly one per step, so neither the
    evaluations nor the probes (the learning-phase order parameters run every epoch) moved the statistics."""
    _, hps, store = zoo
    assert sorted(hp.model.name for hp in hps) == ["cnn_bn", "cnn_bn", "resnet", "resnet"]
    for hp in hps:
        _, metrics, history = store.model_record(hp.model_id)
        assert metrics["converged"] and metrics["train_loss"] <= TARGET, (hp.model.name, metrics)
        init, final = store.load_states(hp.model_id)
        running = _running(final)
        counts = {int(v) for k, v in running.items() if k.endswith("num_batches_tracked")}
        assert counts == {metrics["steps"]} and metrics["steps"] == 6 * metrics["epochs"]  # ⌈300 / 50⌉ per epoch
        assert all(int(v) == 0 for k, v in _running(init).items() if k.endswith("num_batches_tracked"))
        for k, v in running.items():
            if k.endswith("running_mean"):
                assert v.abs().max() > 1e-3, k
            if k.endswith("running_var"):
                assert (v - 1).abs().max() > 1e-2 and bool((v > 0).all()), k
        assert any(key.startswith("op.") for key in history[-1])  # the probes ran


def test_stored_statistics_load_back_and_evaluation_uses_them(zoo):
    """The model loaded from the store (``Trained.from_store``, as the measures get it) holds the running
    statistics bit for bit, and its eval-mode loss is the training loss the stopping rule saw; the same weights
    with batch statistics (train mode) give other outputs."""
    _, hps, store = zoo
    for hp in hps:
        trained = Trained.from_store(store, hp, OPTS)
        _, final = store.load_states(hp.model_id)
        state = trained.model.state_dict()
        assert list(state) == list(final)
        assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in final.items())
        metrics = store.model_record(hp.model_id)[1]
        loss, error = evaluate(trained.model, trained.data.x_train, trained.data.y_train)
        assert math.isclose(loss, metrics["train_loss"], rel_tol=1e-6) and error == metrics["train_error"]
        x = trained.data.x_train[:100]
        with torch.no_grad():
            eval_out = trained.model.eval()(x)
            before = {k: v.clone() for k, v in trained.model.state_dict().items()}
            train_out = trained.model.train()(x)
        assert not torch.allclose(eval_out, train_out, atol=1e-3)
        trained.model.load_state_dict(before)  # the train-mode pass moved the running statistics


def test_the_stored_model_is_the_one_the_stacked_trainer_trains(zoo):
    """Each pair of seeds trains as one stack (``train_many``), and the store holds exactly what it gives."""
    _, hps, store = zoo
    pair = [h for h in hps if h.model.name == "resnet"]
    data = make_data(pair[0].dataset)
    for hp, result in zip(pair, train_many(pair, {pair[0].dataset: data})):
        init, final = store.load_states(hp.model_id)
        assert all(torch.equal(result.final_state[k], final[k]) for k in final)
        assert all(torch.equal(result.init_state[k], init[k]) for k in init)


def test_the_stacked_trainer_takes_both_architectures_and_grouping_keeps_them_apart(zoo):
    """``cnn_bn`` and ``resnet`` stack (``test_stacked_bn.py`` checks them against ``train_model`` in detail):
    two epochs of each pair equal the per-model trainer's up to float rounding."""
    _, hps, _ = zoo
    assert len({stack_key(h) for h in hps}) == 2 and len({group_key(h) for h in hps}) == 2
    tasks = split_tasks(list(hps), 2)
    assert sorted(len(t) for t in tasks) == [2, 2] and all(len({h.model.name for h in t}) == 1 for t in tasks)
    for name in ("cnn_bn", "resnet"):
        pair = [h.replace(**{"train.max_epochs": 2}) for h in hps if h.model.name == name]
        data = make_data(pair[0].dataset)
        Stack(pair, [data, data], "cpu")
        for hp, result in zip(pair, train_many(pair, {pair[0].dataset: data})):
            assert result.hparams == hp and result.metrics["epochs"] == 2
            for k, v in train_model(hp, data).final_state.items():
                torch.testing.assert_close(result.final_state[k], v, rtol=1e-5, atol=1e-5, msg=k)


def test_an_exported_and_imported_store_keeps_the_running_statistics(zoo, tmp_path):
    _, hps, store = zoo
    archive = tmp_path / "zoo.tar"
    export(store.root, archive)
    import_archive(str(archive), tmp_path / "copy")
    copy = Store(tmp_path / "copy")
    for hp in hps:
        for a, b in zip(store.load_states(hp.model_id), copy.load_states(hp.model_id)):
            assert list(a) == list(b)
            assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
        copy.check_checkpoint(hp.model_id)  # names, shapes and dtypes fit the architecture, buffers included


def test_a_model_that_cannot_step_on_its_smallest_minibatch_fails_before_training(tmp_path):
    """97 digits in batches of 32 leave one sample in the last minibatch; a depth-5 resnet has shrunk the 8×8
    image to one position by its last block, where BatchNorm cannot normalise one value per channel. One
    clear error before any training (checked on the meta device, without touching torch's global generator);
    depth 4 (2×2 positions) trains."""
    bad = ["zoo=none", "dataset=digits", "dataset.train_size=97", "dataset.test_size=50", "model=resnet",
           "model.depth=5", "model.width=4", "train.batch_size=32", "train.max_epochs=1", "run.jobs=1",
           "run.progress=false", f"store.root={tmp_path / 'store'}"]
    state = torch.random.get_rng_state()
    with pytest.raises(HParamsError) as err:
        pipeline.train(make_cfg(*bad))
    assert torch.equal(torch.random.get_rng_state(), state)
    message = str(err.value)
    assert "\n" not in message and "model resnet (depth 5) cannot train on a minibatch of one sample" in message
    assert "train.batch_size=32 leaves from 97 training samples" in message
    assert not any((tmp_path / "store" / "checkpoints").glob("*.pt"))
    (hp,) = expand(make_cfg(*bad))
    with pytest.raises(HParamsError, match="cannot train on a minibatch of one sample"):
        train_model(hp, make_data(hp.dataset))
    assert pipeline.train(make_cfg(*bad, "model.depth=4"))["trained"] == 1
    assert pipeline.train(make_cfg(*bad, "model.depth=5", "dataset.train_size=98"))["trained"] == 1
