"""Hyperparameters: validation before training, clear errors, stable model ids."""
from __future__ import annotations

import pytest

from benchmark.hparams import HParams, HParamsError
from benchmark.zoo import expand
from tests.conftest import make_cfg


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=0", "optimizer.lr must be > 0"),
    ("optimizer.lr=-0.1", "optimizer.lr must be > 0"),
    ("model.width=0", "model.width must be >= 1"),
    ("model.depth=0", "model.depth must be >= 1"),
    ("dataset.label_noise=1.0", "dataset.label_noise must be in [0, 1)"),
    ("dataset.label_noise=-0.1", "dataset.label_noise must be in [0, 1)"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("train.batch_size=5000", "larger than dataset.train_size"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay must be >= 0"),
    ("optimizer.name=lbfgs", "unknown optimizer 'lbfgs'; valid: sgd, momentum, adam"),
    ("model.name=resnet", "unknown model 'resnet'; valid: mlp, cnn"),
    ("dataset.name=imagenet", "unknown dataset 'imagenet'; valid: mnist1d"),
    ("model.width=wide", "model.width must be of type int"),
    ("+model.heads=4", "unknown key(s) model.heads; valid: model.name"),
])
def test_invalid_hyperparameters_fail_before_training(override, message):
    with pytest.raises(HParamsError) as err:
        expand(make_cfg("zoo=none", override))
    assert message in str(err.value)


def test_invalid_value_inside_a_zoo_axis_fails_for_the_whole_zoo():
    with pytest.raises(HParamsError, match="optimizer.lr must be > 0"):
        expand(make_cfg("zoo.axes.optimizer.lr=[0.1,-1.0]"))
    with pytest.raises(HParamsError, match="zoo axis group 'modle'"):
        expand(make_cfg("+zoo.axes.modle.width=[1,2]"))


def test_model_id_is_stable_and_depends_on_every_hyperparameter():
    hp = HParams()
    assert hp.model_id == HParams().model_id == HParams.from_dict(hp.to_dict()).model_id
    ids = {hp.model_id}
    for key, value in [("model.width", 65), ("seed", 1), ("dataset.label_noise", 0.1), ("train.target_loss", 0.02),
                       ("optimizer.name", "adam"), ("dataset.seed", 3), ("model.bias", False)]:
        ids.add(hp.replace(**{key: value}).model_id)
    assert len(ids) == 8


def test_operational_settings_do_not_change_the_id():
    a = expand(make_cfg("zoo=none", "store.root=/tmp/x", "run.jobs=1", "run.device=cuda"))[0]
    b = expand(make_cfg("zoo=none"))[0]
    c = expand(make_cfg("zoo=none", "dataset=mnist", "dataset.root=/elsewhere", "dataset.download=true"))[0]
    d = expand(make_cfg("zoo=none", "dataset=mnist"))[0]
    assert a.model_id == b.model_id and c.model_id == d.model_id


def test_int_and_float_coercion():
    hp = HParams.from_dict({"optimizer": {"lr": 1}, "model": {"width": 64.0}})
    assert hp.optimizer.lr == 1.0 and isinstance(hp.optimizer.lr, float) and hp.model.width == 64
