"""Training one model to the common stopping rule (training cross-entropy ≤ target, Jiang et al. 2020)."""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data import DataBundle
from benchmark.hparams import OPTIMIZERS, HParams, HParamsError, OptimizerHP
from benchmark.models import Dropout, build_model
from measures.phases import order_parameters

OP_BATCHES = 8  # minibatch gradients per epoch for the order parameters (SCIENCE.md §2); ~6-9% of an epoch


def derive_seed(seed: int, tag: str) -> int:
    """A stable 63-bit seed for one named random stream of a model (``init``, ``order``, ``dropout``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{tag}".encode()).digest()[:8], "little") >> 1


def generator(seed: int, tag: str, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, tag))


def make_optimizer(params, hp: OptimizerHP) -> torch.optim.Optimizer:
    if hp.name == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.name == "momentum":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    if hp.name == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    raise HParamsError(f"unknown optimizer {hp.name!r}; valid: {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and error rate of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    loss, wrong = 0.0, 0
    for i in range(0, len(y), batch):
        logits = model(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        wrong += (logits.argmax(1) != y[i:i + batch]).sum().item()
    model.train(was_training)
    return loss / len(y), wrong / len(y)


@dataclass
class TrainResult:
    hparams: HParams
    init_state: dict[str, torch.Tensor]
    final_state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)


def final_metrics(hp: HParams, history: list[dict], wall: float, diverged: bool) -> dict:
    """Summary metrics from the per-epoch history (shared by the looped and the vectorized trainer)."""
    last = history[-1]
    steps_per_epoch = last["step"] / last["epoch"]
    first = lambda thr: next((h["step"] for h in history if h["train_loss"] <= thr), math.nan)
    return {
        "converged": bool(last["train_loss"] <= hp.train.target_loss and not diverged),
        "diverged": bool(diverged),
        "epochs": last["epoch"], "steps": last["step"], "steps_per_epoch": steps_per_epoch,
        "train_loss": last["train_loss"], "train_error": last["train_error"],
        "test_loss": last["test_loss"], "test_error": last["test_error"],
        "gap_error": last["test_error"] - last["train_error"],
        "gap_loss": last["test_loss"] - last["train_loss"],
        "steps_to_0.1": first(0.1), "steps_0.1_to_0.01": first(0.01) - first(0.1),
        "train_size": hp.dataset.train_size, "test_size": hp.dataset.test_size,
        "wall_time": wall,
    }


def train_model(hp: HParams, data: DataBundle, *, device: str | torch.device = "cpu") -> TrainResult:
    """Train one model with plain minibatch steps until the full training cross-entropy (eval mode) is at
    most ``hp.train.target_loss`` at the end of an epoch, or ``hp.train.max_epochs`` run out.

    Randomness: initial weights, the per-epoch data order and dropout masks each come from their own
    generator derived from ``hp.seed``, so the same hyperparameters give the same model.
    """
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
    history, step, diverged = [], 0, False
    phase_gen = generator(hp.seed, "phases")  # order parameters' own stream: training randomness untouched
    mislabeled = data.mislabeled if hp.dataset.label_noise > 0 else None
    for epoch in range(1, hp.train.max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=order_gen).to(device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        train_loss, train_error = evaluate(model, data.x_train, data.y_train)
        test_loss, test_error = evaluate(model, data.x_test, data.y_test)
        ops = order_parameters(model, data.x_train, data.y_train, bs, phase_gen, OP_BATCHES, mislabeled)
        history.append({"epoch": epoch, "step": step, "train_loss": train_loss, "train_error": train_error,
                        "test_loss": test_loss, "test_error": test_error, **{f"op.{k}": v for k, v in ops.items()}})
        diverged = not math.isfinite(train_loss)
        if diverged or train_loss <= hp.train.target_loss:
            break
    final_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    metrics = final_metrics(hp, history, time.perf_counter() - start, diverged)
    return TrainResult(hp, init_state, final_state, metrics, history)
