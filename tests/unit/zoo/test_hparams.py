"""Hyperparameters: validation before training, clear errors, stable model ids."""
from __future__ import annotations

import pytest

from benchmark.zoo import expand
from benchmark.zoo.hparams import HParams, HParamsError
from tests.conftest import make_cfg
from tests.helpers import default_hparams


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=0", "optimizer.lr must be > 0"),
    ("optimizer.lr=-0.1", "optimizer.lr must be > 0"),
    ("model.width=0", "model.width must be >= 1"),
    ("model.depth=0", "model.depth must be >= 1"),
    ("dataset.label_noise=1.0", "dataset.label_noise must be in [0, 1)"),
    ("dataset.label_noise=-0.1", "dataset.label_noise must be in [0, 1)"),
    ("dataset.label_noise_mode=shuffled", "dataset.label_noise_mode must be one of fixed_clean, fixed_total"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("train.batch_size=5000", "larger than dataset.train_size"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay must be >= 0"),
    ("optimizer.name=lbfgs", "unknown optimizer 'lbfgs'; valid: sgd, momentum, adam"),
    ("model.name=vit", "unknown model 'vit'; valid: mlp, cnn, cnn_bn, resnet"),
    ("dataset.name=imagenet", "unknown dataset 'imagenet'; valid: mnist1d"),
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
    hp = default_hparams()
    assert hp.model_id == default_hparams().model_id == HParams.from_dict(hp.to_dict()).model_id
    ids = {hp.model_id}
    for key, value in [("model.width", 65), ("seed", 1), ("dataset.label_noise", 0.1), ("train.target_loss", 0.02),
                       ("optimizer.name", "adam"), ("dataset.seed", 3), ("model.bias", False)]:
        ids.add(hp.replace(**{key: value}).model_id)
    assert len(ids) == 8


def test_the_label_noise_mode_enters_the_id_only_where_it_changes_the_model():
    hp = default_hparams()
    # the ids genbench gave these models before the mode existed (it trained them with fixed_total)
    assert hp.model_id == hp.replace(**{"dataset.label_noise_mode": "fixed_total"}).model_id == "0c0d6861d5027f7d"
    noisy = hp.replace(**{"dataset.label_noise": 0.2})
    total = noisy.replace(**{"dataset.label_noise_mode": "fixed_total"})
    assert total.model_id == "e8df4b5d374e7e27"
    assert noisy.model_id != total.model_id  # the clean count fixed is another model
    assert noisy.dataset.n_train == round(noisy.dataset.train_size / 0.8)
    assert total.dataset.n_train == total.dataset.train_size


def test_operational_settings_do_not_change_the_id():
    a = expand(make_cfg("zoo=none", "store.root=/tmp/x", "run.jobs=1", "run.device=cuda"))[0]
    b = expand(make_cfg("zoo=none"))[0]
    c = expand(make_cfg("zoo=none", "dataset=mnist", "dataset.root=/elsewhere", "dataset.download=true"))[0]
    d = expand(make_cfg("zoo=none", "dataset=mnist"))[0]
    assert a.model_id == b.model_id and c.model_id == d.model_id


def test_int_and_float_coercion():
    base = default_hparams().to_dict()
    hp = HParams.from_dict({**base, "optimizer": {**base["optimizer"], "lr": 1},
                            "model": {**base["model"], "width": 64.0}})
    assert hp.optimizer.lr == 1.0 and isinstance(hp.optimizer.lr, float) and hp.model.width == 64


@pytest.mark.parametrize("override,message", [
    ("model.width=wide", "Value 'wide' of type 'str' could not be converted to Integer"),
    ("train.batch_size=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
])
def test_the_schema_rejects_mistyped_or_unknown_values_while_composing(override, message):
    from hydra.errors import ConfigCompositionException
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("zoo=none", override)
    assert message in str(err.value.__cause__)


def test_missing_hyperparameters_are_named():
    with pytest.raises(HParamsError, match="missing hyperparameter.*dataset.train_size"):
        HParams.from_dict({"dataset": {"name": "digits", "test_size": 10}, "model": {"name": "mlp", "depth": 1,
                           "width": 4}, "optimizer": {"name": "sgd", "lr": 0.1}})


def test_settings_a_component_does_not_use_never_enter_the_model_id():
    hp = default_hparams()
    for name in ("sgd", "adam"):
        a = hp.replace(**{"optimizer.name": name, "optimizer.momentum": 0.9})
        assert a.model_id == a.replace(**{"optimizer.momentum": 0.5}).model_id
        assert "optimizer.momentum" not in a.identity()
    heavy = hp.replace(**{"optimizer.name": "momentum"})
    assert heavy.model_id != heavy.replace(**{"optimizer.momentum": 0.5}).model_id
    # a model whose components use every field keeps the id it had when every field was hashed
    from benchmark.zoo.hparams import hash_id
    assert heavy.model_id == hash_id({k: v for k, v in heavy.flat().items()
                                      if k not in ("dataset.label_noise_mode", "dataset.image_size")})


def test_a_zoo_axis_over_an_unused_setting_is_the_same_model_twice():
    with pytest.raises(HParamsError, match="does not use|do not use"):
        expand(make_cfg("optimizer=sgd", "+zoo.axes.optimizer.momentum=[0.5,0.9]", "zoo=none"))
