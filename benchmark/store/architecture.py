"""Does a checkpoint's state dict fit its model's architecture? The weights of another architecture (another
width, depth or input shape, or another dtype) under a model's id are a damaged store, found when the
checkpoints are checked (``Store.prune_corrupt``) rather than as a size mismatch deep inside a measure.

The expected names, shapes and dtypes come from the model built from its stored hyperparameters, on the
``meta`` device (no memory, no draw from torch's random generator). The input shape and the number of
classes are the dataset's: known for the torchvision datasets (their files may lie anywhere, and loading
them would cost seconds), read from the pool for the offline ones (cached per process).
"""
from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from benchmark.zoo.hparams import ModelHP

if TYPE_CHECKING:
    import torch

log = logging.getLogger("genbench")

# (input shape, classes) of the datasets whose pools need files under dataset.root
_KNOWN = {"mnist": ((1, 28, 28), 10), "fashion": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
          "svhn": ((3, 32, 32), 10)}


@functools.lru_cache(maxsize=None)
def data_shape(dataset: str, image_size: int = 0) -> tuple[tuple[int, ...], int] | None:
    """(input shape, number of classes) of the registered dataset ``dataset`` (its images averaged down to
    ``image_size`` a side, ``dataset.image_size``); None when it cannot be told (its pool cannot be loaded from
    the default location)."""
    if dataset in _KNOWN:
        shape, classes = _KNOWN[dataset]
    else:
        from benchmark.zoo.datasets import load_pool
        try:
            pool = load_pool(dataset)
        except Exception as err:  # a dataset plugin whose files are elsewhere: check what can be checked
            log.debug("cannot tell the input shape of dataset %s (%s); checkpoints are checked without it", dataset,
                      err)
            return None
        shape, classes = tuple(int(n) for n in pool.x_train.shape[1:]), int(pool.num_classes)
    if image_size and len(shape) == 3:
        shape = (shape[0], image_size, image_size)
    return shape, classes


@functools.lru_cache(maxsize=256)
def expected_state(model: ModelHP, dataset: str,
                   image_size: int = 0) -> dict[str, tuple[tuple[int, ...], torch.dtype]] | None:
    """{name: (shape, dtype)} of the state dict of the architecture ``model`` on ``dataset`` (at ``image_size``);
    None when the dataset's shape is unknown."""
    shape = data_shape(dataset, image_size)
    if shape is None:
        return None
    import torch

    from benchmark.zoo.models import build_model
    with torch.device("meta"):
        built = build_model(model, *shape)
    return {k: (tuple(v.shape), v.dtype) for k, v in built.state_dict().items()}


def state_mismatch(state, model: ModelHP, dataset: str, image_size: int = 0) -> str | None:
    """How ``state`` does not fit the architecture (a phrase), or None if it fits (or cannot be checked)."""
    import torch
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "are not a state dict of tensors"
    expected = expected_state(model, dataset, image_size)
    if expected is None:
        return None
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        return (f"lack {', '.join(missing[:3]) or 'nothing'} and hold {', '.join(extra[:3]) or 'nothing more'}"
                f"{' …' if len(missing) > 3 or len(extra) > 3 else ''}")
    for key, (shape, dtype) in expected.items():
        got = state[key]
        if tuple(got.shape) != shape:
            return f"hold {key} of shape {tuple(got.shape)}, where the model has {shape}"
        if got.dtype != dtype:
            return f"hold {key} as {got.dtype}, where the model has {dtype}"
    return None
