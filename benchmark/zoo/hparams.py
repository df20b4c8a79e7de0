"""The hyperparameters that define a model, typed, validated and hashed to a model id.

These dataclasses are the one place where hyperparameter defaults live: ``conf/`` composes its groups on
top of them (``benchmark.config`` registers them as Hydra's schema), and a YAML file in ``conf/dataset/``,
``conf/model/`` or ``conf/optimizer/`` sets only what belongs to its component (a dataset's sizes, an
architecture's depth and width, an optimizer's learning rate). Fields without a default must be given.

Operational settings (paths, device, workers, progress bars) live elsewhere in the config and never enter
the hash: two runs that differ only in where they store things train the same model. Neither do settings
the chosen component ignores (``optimizer.momentum`` for plain SGD or Adam): the registries say which fields
each component uses.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, fields
from typing import Any, Mapping

from benchmark.errors import HParamsError
from benchmark.zoo.registry import DATASETS, MODELS, OPTIMIZERS, ComponentRegistry

__all__ = ["LABEL_NOISE_MODES", "DatasetHP", "ModelHP", "OptimizerHP", "TrainHP", "HParams", "HParamsError", "GROUPS"]


@dataclass(frozen=True)
class DatasetHP:
    name: str  # a registered dataset (benchmark.zoo.datasets)
    train_size: int  # models see a stratified subset of this size of the training pool
    test_size: int  # test error is measured on this many held-out samples
    label_noise: float = 0.0  # fraction of mislabeled training samples (docs/data.md)
    label_noise_mode: str = "fixed_clean"  # fixed_clean: train_size clean samples plus the mislabeled ones;
    # fixed_total: train_size samples in all, a fraction label_noise of them mislabeled (docs/data.md)
    seed: int = 0  # fixes the subset and which samples are mislabeled, shared across model seeds
    image_size: int = 0  # 0: the images as they are; n: each image averaged down to n × n (docs/data.md)

    @property
    def n_mislabeled(self) -> int:
        """How many training samples carry a wrong label."""
        if self.label_noise_mode == "fixed_total":
            return int(round(self.label_noise * self.train_size))
        return int(round(self.train_size / (1 - self.label_noise))) - self.train_size

    @property
    def n_train(self) -> int:
        """How many samples a model trains on: ``train_size``, plus the mislabeled ones in fixed_clean."""
        return self.train_size + (self.n_mislabeled if self.label_noise_mode == "fixed_clean" else 0)


@dataclass(frozen=True)
class ModelHP:
    name: str  # a registered architecture (benchmark.zoo.models)
    depth: int  # hidden layers (mlp), conv layers (cnn, cnn_bn) or residual blocks (resnet); docs/models.md
    width: int  # hidden units (mlp) or channels (cnn, cnn_bn, resnet)
    dropout: float = 0.0
    bias: bool = True
    init_scale: float = 1.0  # multiplies PyTorch's default (Kaiming-uniform) initial weights


@dataclass(frozen=True)
class OptimizerHP:
    name: str  # a registered optimizer (benchmark.zoo.optimizers)
    lr: float
    momentum: float = 0.9  # heavy-ball coefficient, read by "momentum" only
    weight_decay: float = 0.0


@dataclass(frozen=True)
class TrainHP:
    batch_size: int = 32
    target_loss: float = 0.01  # stop once the full training cross-entropy is at most this (Jiang et al.)
    max_epochs: int = 400


LABEL_NOISE_MODES = ("fixed_clean", "fixed_total")
# Fields added after schema 2 enter a model's id only where they change the model, so the ids of models
# stored before them stay valid: the label-noise mode matters only with label noise, and the models stored
# before the mode existed were trained with fixed_total.
_LEGACY = {"dataset.label_noise_mode": lambda hp: hp.dataset.label_noise == 0
           or hp.dataset.label_noise_mode == "fixed_total",
           "dataset.image_size": lambda hp: hp.dataset.image_size == 0}

GROUPS: dict[str, type] = {"dataset": DatasetHP, "model": ModelHP, "optimizer": OptimizerHP, "train": TrainHP}
_COMPONENTS: dict[str, ComponentRegistry] = {"dataset": DATASETS, "model": MODELS, "optimizer": OPTIMIZERS}
OPERATIONAL = {"dataset": ("root", "download")}  # keys of the hp groups that never define a model
DEFAULT_ROOT = "~/.cache/genbench/data"  # where torchvision's files are looked for (``dataset.root``)


@dataclass(frozen=True)
class HParams:
    dataset: DatasetHP
    model: ModelHP
    optimizer: OptimizerHP
    train: TrainHP = TrainHP()
    seed: int = 0  # initial weights, data order and dropout masks

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "HParams":
        """Build from a nested mapping (a Hydra config); unknown keys in the hp groups are errors, missing
        ones take the dataclasses' defaults. Operational keys (``dataset.root``, ``dataset.download``) are
        ignored."""
        groups = {}
        for group, schema in GROUPS.items():
            sub = {k: v for k, v in dict(cfg.get(group) or {}).items() if k not in OPERATIONAL.get(group, ())}
            groups[group] = _build(schema, sub, group)
        hp = cls(**groups, seed=_coerce(int, cfg.get("seed", 0), "seed"))
        hp.validate()
        return hp

    def replace(self, **dotted: Any) -> "HParams":
        """A copy with dotted keys replaced, e.g. ``hp.replace(**{"model.width": 32})``; validated."""
        nested = self.to_dict()
        for key, value in dotted.items():
            *path, leaf = key.split(".")
            node = nested
            for part in path:
                if part not in node or not isinstance(node[part], dict):
                    raise HParamsError(f"unknown hyperparameter {key!r}; valid: {', '.join(self.flat())}")
                node = node[part]
            if leaf not in node:
                raise HParamsError(f"unknown hyperparameter {key!r}; valid: {', '.join(self.flat())}")
            node[leaf] = value
        return HParams.from_dict(nested)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys: ``{"dataset.name": "mnist1d", ..., "seed": 0}``."""
        out = {}
        for group, values in self.to_dict().items():
            if isinstance(values, dict):
                out.update({f"{group}.{k}": v for k, v in values.items()})
            else:
                out[group] = values
        return out

    def identity(self) -> dict[str, Any]:
        """The dotted keys that define the model: every field, less those its components do not use."""
        unused = set()
        for group, registry in _COMPONENTS.items():
            uses = registry.get(getattr(self, group).name).uses
            if uses is not None:
                unused |= {f"{group}.{f.name}" for f in fields(GROUPS[group]) if f.name not in ("name", *uses)}
        unused |= {key for key, omitted in _LEGACY.items() if omitted(self)}
        return {k: v for k, v in self.flat().items() if k not in unused}

    @functools.cached_property
    def model_id(self) -> str:
        """sha1 of the canonical JSON of :meth:`identity`, 16 hex digits (computed once: the fields are frozen)."""
        return hash_id(self.identity())

    def validate(self) -> None:
        d, m, o, t = self.dataset, self.model, self.optimizer, self.train
        names = [(getattr(self, g).name in r,
                  f"unknown {r.kind} {getattr(self, g).name!r}; valid: {', '.join(r.names())}")
                 for g, r in _COMPONENTS.items()]
        checks = names + [
            (d.train_size >= 1, f"dataset.train_size must be >= 1, got {d.train_size}"),
            (d.test_size >= 1, f"dataset.test_size must be >= 1, got {d.test_size}"),
            (d.image_size >= 0, f"dataset.image_size must be >= 0 (0: the images as they are), got {d.image_size}"),
            (0.0 <= d.label_noise < 1.0, f"dataset.label_noise must be in [0, 1), got {d.label_noise}"),
            (d.label_noise_mode in LABEL_NOISE_MODES, f"dataset.label_noise_mode must be one of "
             f"{', '.join(LABEL_NOISE_MODES)}, got {d.label_noise_mode!r}"),
            (m.depth >= 1, f"model.depth must be >= 1, got {m.depth}"),
            (m.width >= 1, f"model.width must be >= 1, got {m.width}"),
            (0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}"),
            (m.init_scale > 0, f"model.init_scale must be > 0, got {m.init_scale}"),
            (o.lr > 0, f"optimizer.lr must be > 0, got {o.lr}"),
            (0.0 <= o.momentum < 1.0, f"optimizer.momentum must be in [0, 1), got {o.momentum}"),
            (o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {o.weight_decay}"),
            (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
            (t.batch_size <= d.train_size,
             f"train.batch_size ({t.batch_size}) is larger than dataset.train_size ({d.train_size})"),
            (t.target_loss > 0, f"train.target_loss must be > 0, got {t.target_loss}"),
            (t.max_epochs >= 1, f"train.max_epochs must be >= 1, got {t.max_epochs}"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise HParamsError("invalid hyperparameters: " + "; ".join(errors))


def stack_key(hp: HParams) -> tuple:
    """What models computed together share: dataset (input shape, classes, ``image_size``) and training-set size,
    architecture up to dropout and init scale (``model.name/depth/width/bias``), and batch size (hence the steps
    per epoch). The
    stacked trainer trains such models in one stack (``benchmark.training.stacked``) and the measuring tasks group
    them, per optimizer, so that the measures' many-model forms take them together (``benchmark.measuring``)."""
    m = hp.model
    return (hp.dataset.name, hp.dataset.n_train, m.name, m.depth, m.width, m.bias, hp.train.batch_size,
            hp.dataset.image_size)


def hash_id(identity: Mapping[str, Any]) -> str:
    """A model id: sha1 of the canonical JSON of its defining dotted keys, 16 hex digits."""
    blob = json.dumps(dict(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _coerce(typ: type, value: Any, key: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise HParamsError(f"{key} must be true or false, got {value!r}")
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise HParamsError(f"{key} must be of type {typ.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict, group: str):
    valid = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise HParamsError(
            f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)}; "
            f"valid: {', '.join(f'{group}.{k}' for k in valid)}")
    missing = [k for k, f in valid.items() if k not in values and f.default is dataclasses.MISSING]
    if missing:
        raise HParamsError(f"missing hyperparameter(s) {', '.join(f'{group}.{k}' for k in missing)}")
    types = typing.get_type_hints(cls)
    return cls(**{k: _coerce(types[k], v, f"{group}.{k}") for k, v in values.items()})
