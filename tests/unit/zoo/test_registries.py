"""The zoo's registries: a new dataset is one function plus one YAML file, a new architecture one class plus
one YAML file, a new optimizer one function plus one YAML file; names are unique and unknown ones list the
valid ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.errors import HParamsError
from benchmark.training.loop import train_model
from benchmark.zoo import DATASETS, MODELS, OPTIMIZERS, expand, make_data
from benchmark.zoo.datasets import Pool
from tests.conftest import make_cfg


@pytest.fixture
def new_components(tmp_path):
    """A dataset, an architecture and an optimizer registered the way a user adds them, with their YAML files
    in a folder put on Hydra's search path."""
    @DATASETS.register("test_blobs")
    def blobs(root: str, download: bool) -> Pool:
        """Two Gaussian blobs in 5 dimensions, 200/200."""
        rng = np.random.default_rng(0)
        def draw(n):
            y = rng.integers(0, 2, n)
            return (rng.normal(size=(n, 5)) + 2.0 * y[:, None]).astype(np.float32), y.astype(np.int64)
        (x, y), (xt, yt) = draw(200), draw(200)
        return Pool(x, y, xt, yt, 2)

    @MODELS.register("test_linear", uses=("bias",))
    class Linear(nn.Module):
        """One linear layer."""
        def __init__(self, in_shape, num_classes, bias=True):
            super().__init__()
            self.fc = nn.Linear(int(np.prod(in_shape)), num_classes, bias=bias)

        def forward(self, x):
            return self.fc(x.flatten(1))

    @OPTIMIZERS.register("test_rmsprop", uses=("lr",))
    def rmsprop(params, lr):
        """RMSprop."""
        return torch.optim.RMSprop(params, lr=lr)

    conf = tmp_path / "conf"
    for group, text in (("dataset", "name: test_blobs\ntrain_size: 100\ntest_size: 100\n"),
                        ("model", "name: test_linear\ndepth: 1\nwidth: 1\n"),
                        ("optimizer", "name: test_rmsprop\nlr: 0.01\n")):
        (conf / group).mkdir(parents=True)
        (conf / group / f"test_{group}.yaml").write_text(text)
    yield f"hydra.searchpath=[file://{conf}]"
    for registry, name in ((DATASETS, "test_blobs"), (MODELS, "test_linear"), (OPTIMIZERS, "test_rmsprop")):
        registry._items.pop(name)
    from benchmark.zoo.datasets import cached_data, load_pool
    load_pool.cache_clear()
    cached_data.cache_clear()


def test_new_components_compose_and_train(new_components):
    cfg = make_cfg(new_components, "dataset=test_dataset", "model=test_model", "optimizer=test_optimizer",
                   "zoo=none", "train.max_epochs=5", "train.target_loss=0.05")
    (hp,) = expand(cfg)
    assert (hp.dataset.name, hp.model.name, hp.optimizer.name) == ("test_blobs", "test_linear", "test_rmsprop")
    # only the fields the components use define the model: depth, width and momentum do not
    assert hp.model_id == hp.replace(**{"model.width": 7, "model.depth": 3, "optimizer.momentum": 0.1}).model_id
    assert hp.model_id != hp.replace(**{"model.bias": False}).model_id
    result = train_model(hp, make_data(hp.dataset))
    assert result.metrics["epochs"] >= 1 and result.metrics["test_error"] < 0.2  # blobs 2σ apart: learnable


def test_a_name_registered_twice_is_an_error():
    with pytest.raises(ValueError, match="declared twice"):
        MODELS.register("mlp", uses=())(lambda *a: None)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(HParamsError, match="unknown optimizer 'lbfgs'; valid: sgd, momentum, adam"):
        OPTIMIZERS.get("lbfgs")
    with pytest.raises(HParamsError, match="unknown dataset 'imagenet'; valid: mnist1d, mnist5k, digits"):
        DATASETS.get("imagenet")


def test_every_declared_component_resolves_to_its_code_and_uses_real_fields():
    """The catalog in benchmark.zoo.registry names each built-in's code by path: each path imports, and each
    component's ``uses`` are fields of its hyperparameter group."""
    import dataclasses

    from benchmark.zoo.hparams import GROUPS
    for registry in (DATASETS, MODELS, OPTIMIZERS):
        for component in registry:
            assert callable(component.build), component.name
            fields = {f.name for f in dataclasses.fields(GROUPS[registry.group])}
            assert set(component.uses or ()) <= fields, component.name
