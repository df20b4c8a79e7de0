"""Each trained model's errors on the shifted copies of its test set (``benchmark.zoo.shift``): the targets
``metric.shift_error`` (the mean error over the shifts), ``metric.shift_gap`` (that minus the training error) and
``metric.shift.<name>`` (one shift's error), with ``metric.shift_version`` (the version of the shifts' definitions
they were computed under).

They are computed from the final weights, in eval mode (BatchNorm with its running statistics), at the end of
training. A store trained before they existed, or under an older ``SHIFT_VERSION``, gains them without retraining:
:func:`fill_shift_metrics` (run by ``genbench measure`` and ``genbench run``) evaluates the stored checkpoints.
"""
from __future__ import annotations

import json
import logging
from typing import Sequence

from torch import nn

from benchmark.runtime import RunOptions, parallel, set_threads
from benchmark.store import Store
from benchmark.training.loop import evaluate
from benchmark.zoo.datasets import cached_data
from benchmark.zoo.hparams import HParams
from benchmark.zoo.models import build_model
from benchmark.zoo.shift import SHIFT_VERSION, shift_names, shifted_tests

log = logging.getLogger(__name__)

CHUNK = 32  # models per task of fill_shift_metrics


def shift_metrics(model: nn.Module, hp: HParams, train_error: float, root: str, download: bool = False,
                  device: str = "cpu") -> dict:
    """The shift metrics of ``model`` (trained with ``hp``) whose final training error is ``train_error``; {} for
    a dataset with no shifts defined."""
    sets = shifted_tests(hp.dataset, root, download)
    if not sets:
        return {}
    errors = {name: evaluate(model, x.to(device), y.to(device))[1] for name, (x, y) in sets.items()}
    mean = sum(errors.values()) / len(errors)
    return {"shift_error": mean, "shift_gap": mean - train_error,
            **{f"shift.{name}": e for name, e in errors.items()}, "shift_version": SHIFT_VERSION}


def model_from_state(hp: HParams, state: dict, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The network of ``hp`` with the weights (and BatchNorm buffers) ``state``."""
    model = build_model(hp.model, in_shape, num_classes)
    model.load_state_dict(state)
    return model.eval()


def lacks_shift(hp: HParams, metrics: dict) -> bool:
    """Whether a stored model's metrics lack the shift metrics of the current definitions (and it has shifts)."""
    return metrics.get("shift_version") != SHIFT_VERSION and bool(shift_names(hp.dataset.name))


def _fill_task(args) -> tuple[int, dict[str, dict]]:
    root, models, opts = args  # models: (hyperparameters, final training error) pairs
    set_threads(opts)
    store, out = Store(root, readonly=True), {}
    for hp, train_error in models:
        _, final = store.load_states(hp.model_id)
        data = cached_data(hp.dataset, opts.data_root, opts.download)
        model = model_from_state(hp, final, data.in_shape, data.num_classes).to(opts.device)
        out[hp.model_id] = shift_metrics(model, hp, train_error, opts.data_root, opts.download, opts.device)
    return len(models), out


def fill_shift_metrics(hps: Sequence[HParams], store: Store, opts: RunOptions) -> int:
    """Compute the shift metrics of every stored model of ``hps`` that lacks them (see :func:`lacks_shift`) from
    its checkpoint and add them to its metrics. Returns how many models gained them."""
    records = {mid: json.loads(metrics) for mid, _, metrics in store.model_rows()}
    todo = [(hp, records[hp.model_id]["train_error"]) for hp in hps
            if hp.model_id in records and lacks_shift(hp, records[hp.model_id])]
    if not todo:
        return 0
    for d in dict.fromkeys(hp.dataset for hp, _ in todo):  # build the shifted sets once, here, not in every worker
        shifted_tests(d, opts.data_root, opts.download)
    tasks = [(str(store.root), tuple(todo[i:i + CHUNK]), opts) for i in range(0, len(todo), CHUNK)]
    log.info("shifted test sets: computing the errors of %d stored models", len(todo))
    for _, done in parallel(_fill_task, tasks, opts.jobs, "shift", "model", [len(t[1]) for t in tasks],
                            opts.progress):
        store.update_metrics(done)
    return len(todo)
