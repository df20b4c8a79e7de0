"""Training one model to the common stopping rule (training cross-entropy ≤ target, Jiang et al. 2020)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import HParamsError
from benchmark.training.history import (
    Probe,
    epoch_row,
    evaluates_test,
    final_metrics,
    probe_columns,
    probe_generators,
    stops,
)
from benchmark.training.snapshots import Snapshots
from benchmark.zoo.datasets import DataBundle
from benchmark.zoo.hparams import HParams
from benchmark.zoo.models import Dropout, build_model
from benchmark.zoo.optimizers import make_optimizer
from measures.losses import fast_cross_entropy
from measures.seeding import generator


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and error rate of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    loss, wrong = 0.0, 0
    for i in range(0, len(y), batch):
        logits = model(x[i:i + batch])
        loss += fast_cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        wrong += (logits.argmax(1) != y[i:i + batch]).sum().item()
    model.train(was_training)
    return loss / len(y), wrong / len(y)


def check_smallest_batch(hp: HParams, in_shape: tuple[int, ...], num_classes: int) -> None:
    """Raise ``HParamsError`` if the model cannot take a training step on the epoch's smallest minibatch: one
    sample (``n_train mod batch_size = 1``, or batches of one) is too few for a BatchNorm layer whose feature
    map has shrunk to a single position (one value per channel). Tried on the meta device, so it costs no
    memory, no arithmetic and no random draw, and a model that cannot train fails before any training."""
    n, bs = hp.dataset.n_train, hp.train.batch_size
    if min(bs, n % bs or bs) != 1:
        return
    with torch.device("meta"):
        model = build_model(hp.model, in_shape, num_classes)
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return
        try:
            model.train()(torch.empty(1, *in_shape))
        except ValueError as err:
            raise HParamsError(
                f"model {hp.model.name} (depth {hp.model.depth}) cannot train on a minibatch of one sample, which "
                f"train.batch_size={bs} leaves from {n} training samples ({err}); choose another batch size or "
                f"training-set size") from None


@dataclass
class TrainResult:
    hparams: HParams
    init_state: dict[str, torch.Tensor]
    final_state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    # weights part-way through training: {"fraction", "epoch", "state"} per requested fraction (snapshots.py)
    snapshots: list[dict] = field(default_factory=list)


def train_model(hp: HParams, data: DataBundle, *, device: str | torch.device = "cpu",
                probes: Sequence[Probe] = (), test_schedule: str = "log",
                before_step: Callable[[nn.Module], None] | None = None,
                penalty: Callable[[nn.Module, int], torch.Tensor] | None = None,
                until: Callable[[nn.Module], bool] | None = None,
                keep: Sequence[float] = ()) -> TrainResult:
    """Train one model with plain minibatch steps until the full training cross-entropy (eval mode) is at
    most ``hp.train.target_loss`` at the end of an epoch, or ``hp.train.max_epochs`` run out. ``probes`` add
    their values to every epoch's history row (``benchmark.training.history``); the test set is evaluated on
    ``test_schedule`` (``history.evaluates_test``) and at the last epoch. ``before_step(model)``, if given,
    runs before every minibatch step (for example to record the weights' trajectory); it must not change
    the model. ``penalty(model, epoch)``, if given, is added to every minibatch loss (a regulariser such as
    the NMI authors' β‖θ‖ for the first 200 epochs). ``until(model)``, if given, replaces the target-loss rule:
    training stops at the end of the first epoch where it returns True (divergence and ``max_epochs`` still
    stop it), and ``metrics["converged"]`` says whether it did.

    Randomness: initial weights, the per-epoch data order and dropout masks each come from their own
    generator derived from ``hp.seed``, so the same hyperparameters give the same model.
    """
    evaluates_test(1, test_schedule)  # an unknown schedule fails before any training
    check_smallest_batch(hp, data.in_shape, data.num_classes)
    start = time.perf_counter()
    data = data.to(device)
    model = build_model(hp.model, data.in_shape, data.num_classes, generator(hp.seed, "init")).to(device)
    init_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    drop_gen = generator(hp.seed, "dropout", device)
    for m in model.modules():
        if isinstance(m, Dropout):
            m.generator = drop_gen
    order_gen = generator(hp.seed, "order")
    opt = make_optimizer(model.parameters(), hp.optimizer)
    n, bs = len(data.y_train), hp.train.batch_size
    history, step, diverged, reached = [], 0, False, False
    gens = probe_generators(probes, hp)
    kept = Snapshots(keep)
    for epoch in range(1, hp.train.max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=order_gen).to(device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            if before_step is not None:
                before_step(model)
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            if penalty is not None:
                loss = loss + penalty(model, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        train = evaluate(model, data.x_train, data.y_train)
        stop, diverged = stops(epoch_row(epoch, step, train, None), hp)
        if until is not None and not diverged:
            reached = until(model)
            stop = reached or epoch >= hp.train.max_epochs
        test = evaluate(model, data.x_test, data.y_test) if stop or evaluates_test(epoch, test_schedule) else None
        history.append({**epoch_row(epoch, step, train, test), **probe_columns(probes, gens, model, data, hp)})
        if kept.due(epoch):
            kept.add(epoch, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        if stop:
            break
    final_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    metrics = final_metrics(hp, history, time.perf_counter() - start, diverged)
    if until is not None:
        metrics["converged"] = bool(not diverged and reached)
    return TrainResult(hp, init_state, final_state, metrics, history,
                       [{"fraction": f, "epoch": e, "state": s} for f, e, s in kept.pick(len(history))])
