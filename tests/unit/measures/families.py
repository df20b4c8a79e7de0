"""Small networks of every architecture family the measures must handle, trained for real on scikit-learn's 8×8
digits: the zoo's plain conv net (``cnn``), its conv net with BatchNorm (``cnn_bn``) and its residual network
with BatchNorm (``resnet``), at small depth and width.

Each is trained by minibatch SGD with momentum (train mode: BatchNorm normalises by the batch and updates its
running statistics) until the full training cross-entropy in eval mode is at most ``TARGET_LOSS``, with a
per-epoch history (losses, errors and the learning-phase order parameters, from 4 minibatch gradients where the
zoo's probe takes 8, to keep the tests fast) and a seed replicate, so that every measure's ``needs`` can be met.
``fitted(family)`` trains one once per test session; its ``context()`` builds the ``measures.Context`` the way the
benchmark does (``benchmark.measuring.context.Trained.context``).
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.zoo.datasets import make_data
from benchmark.zoo.hparams import HParams
from benchmark.zoo.models import ConvBNNet, ConvNet, ResNet, init_parameters
from measures import Context
from measures import history as H
from measures.phases import order_parameters
from measures.seeding import generator
from measures.updates import sgd_

TARGET_LOSS = 0.01
MAX_EPOCHS = 400


FAMILIES = {  # the zoo's own conv architectures (benchmark.zoo.models), small
    "cnn": lambda shape, classes: ConvNet(shape, classes, depth=2, width=8),
    "cnn_bn": lambda shape, classes: ConvBNNet(shape, classes, depth=2, width=8),
    "resnet": lambda shape, classes: ResNet(shape, classes, depth=2, width=4),
}
LR = {"cnn": 0.3, "cnn_bn": 0.2, "resnet": 0.1}


@dataclass(frozen=True)
class Fitted:
    """One trained network of a family with what its Context needs."""
    model: nn.Module
    init: nn.Module
    data: object  # benchmark.zoo.datasets.DataBundle
    hparams: dict
    history: list[dict]
    replicates: tuple[nn.Module, ...]

    def context(self, seed: int = 0, oracle: bool = False, model: nn.Module | None = None,
                init: nn.Module | None = None) -> Context:
        """The Context the benchmark would build (``Trained.context``); ``model``/``init`` replace the weights."""
        d = self.data
        return Context(self.model if model is None else model, init_model=self.init if init is None else init,
                       train=(d.x_train, d.y_train), test=(d.x_test, d.y_test) if oracle else None,
                       hparams=self.hparams, history=self.history, replicates=self.replicates, seed=seed,
                       extras={"mislabeled": d.mislabeled, "curvature_samples": None})


def _hparams(family: str) -> HParams:
    return HParams.from_dict({
        "dataset": {"name": "digits", "train_size": 160, "test_size": 200, "label_noise": 0.05},
        "model": {"name": "cnn", "depth": 2, "width": 8},
        "optimizer": {"name": "sgd", "lr": LR[family], "momentum": 0.9},
        "train": {"batch_size": 32, "target_loss": TARGET_LOSS, "max_epochs": MAX_EPOCHS}})


def _full(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        z = model.eval()(x)
    return F.cross_entropy(z, y).item(), (z.argmax(1) != y).float().mean().item()


def train(family: str, seed: int, data, hp: HParams, probes: bool = True) -> tuple[nn.Module, nn.Module, list]:
    """(trained model, initial model, history) of ``family`` trained from seed ``seed``."""
    x, y = data.x_train, data.y_train
    model = FAMILIES[family](tuple(x.shape[1:]), data.num_classes)
    init_parameters(model, generator(seed, "init"))
    init = copy.deepcopy(model)
    order, probe_gen = generator(seed, "order"), generator(seed, "phases")
    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    bs, lr, history, step = hp.train.batch_size, hp.optimizer.lr, [], 0
    for epoch in range(1, MAX_EPOCHS + 1):
        model.train()
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y), bs):
            idx = perm[i:i + bs]
            grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
            with torch.no_grad():
                for p, g, b in zip(params, grads, bufs):
                    sgd_(p, g, lr, momentum=0.9, buf=b, fused=False)
            step += 1
        loss, err = _full(model, x, y)
        test_loss, test_err = _full(model, data.x_test, data.y_test)
        row = {H.EPOCH: epoch, H.STEP: step, H.TRAIN_LOSS: loss, H.TRAIN_ERROR: err, H.TEST_LOSS: test_loss,
               H.TEST_ERROR: test_err}
        if probes:
            ops = order_parameters(model, x, y, bs, probe_gen, 4, data.mislabeled)
            row.update({H.ORDER_PARAMETER_PREFIX + k: v for k, v in ops.items()})
        history.append(row)
        if not math.isfinite(loss):
            raise RuntimeError(f"{family} diverged at epoch {epoch}")
        if loss <= TARGET_LOSS:
            return model.eval(), init.eval(), history
    raise RuntimeError(f"{family} did not reach cross-entropy {TARGET_LOSS} in {MAX_EPOCHS} epochs ({loss:.3g})")


@functools.lru_cache(maxsize=None)
def fitted(family: str) -> Fitted:
    """``family`` trained from seed 0 on digits (160 clean samples plus 8 mislabeled ones), with its seed-1
    replicate; trained once per test session."""
    hp = _hparams(family)
    data = make_data(hp.dataset)
    model, init, history = train(family, 0, data, hp)
    replicate = train(family, 1, data, hp, probes=False)[0]
    return Fitted(model, init, data, hp.flat(), history, (replicate,))
