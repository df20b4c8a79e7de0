"""The hyperparameters that define a model, typed, validated and hashed to a model id.

Operational settings (paths, device, workers, progress bars) live elsewhere in the config and never
enter the hash: two runs that differ only in where they store things train the same model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

DATASETS = ("mnist1d", "mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "svhn")
MODELS = ("mlp", "cnn")
OPTIMIZERS = ("sgd", "momentum", "adam")


class HParamsError(ValueError):
    """An invalid hyperparameter, raised before any training starts."""


@dataclass(frozen=True)
class DatasetHP:
    name: str = "mnist1d"
    train_size: int = 4000  # models see a stratified subset of this size of the training pool
    test_size: int = 4000  # test error is measured on this many held-out samples
    label_noise: float = 0.0  # fraction of mislabeled training samples (SCIENCE.md §2 recipe)
    seed: int = 0  # fixes the subset and which samples are mislabeled, shared across model seeds


@dataclass(frozen=True)
class ModelHP:
    name: str = "mlp"
    depth: int = 2  # hidden layers (mlp) or conv layers (cnn)
    width: int = 64  # hidden units (mlp) or channels (cnn)
    dropout: float = 0.0
    bias: bool = True
    init_scale: float = 1.0  # multiplies PyTorch's default (Kaiming-uniform) initial weights


@dataclass(frozen=True)
class OptimizerHP:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # used by "momentum" (SGD with heavy ball) only
    weight_decay: float = 0.0


@dataclass(frozen=True)
class TrainHP:
    batch_size: int = 32
    target_loss: float = 0.01  # stop once the full training cross-entropy is at most this (Jiang et al.)
    max_epochs: int = 300


@dataclass(frozen=True)
class HParams:
    dataset: DatasetHP = DatasetHP()
    model: ModelHP = ModelHP()
    optimizer: OptimizerHP = OptimizerHP()
    train: TrainHP = TrainHP()
    seed: int = 0  # initial weights, data order and dropout masks

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "HParams":
        """Build from a nested mapping (a Hydra config); unknown keys in the hp groups are errors.

        Keys that are operational (``root``, ``download`` in the dataset group) are ignored.
        """
        groups = {}
        for f in fields(cls):
            if f.name == "seed":
                continue
            sub = dict(cfg.get(f.name) or {})
            if f.name == "dataset":
                sub.pop("root", None)
                sub.pop("download", None)
            groups[f.name] = _build(f.type if not isinstance(f.type, str) else _GROUPS[f.name], sub, f.name)
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

    @property
    def model_id(self) -> str:
        """sha1 of the canonical JSON of every hyperparameter, 16 hex digits."""
        blob = json.dumps(self.flat(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def validate(self) -> None:
        d, m, o, t = self.dataset, self.model, self.optimizer, self.train
        checks = [
            (d.name in DATASETS, f"unknown dataset {d.name!r}; valid: {', '.join(DATASETS)}"),
            (m.name in MODELS, f"unknown model {m.name!r}; valid: {', '.join(MODELS)}"),
            (o.name in OPTIMIZERS, f"unknown optimizer {o.name!r}; valid: {', '.join(OPTIMIZERS)}"),
            (d.train_size >= 1, f"dataset.train_size must be >= 1, got {d.train_size}"),
            (d.test_size >= 1, f"dataset.test_size must be >= 1, got {d.test_size}"),
            (0.0 <= d.label_noise < 1.0, f"dataset.label_noise must be in [0, 1), got {d.label_noise}"),
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
            raise HParamsError("invalid hyperparameters:\n  " + "\n  ".join(errors))


_GROUPS = {"dataset": DatasetHP, "model": ModelHP, "optimizer": OptimizerHP, "train": TrainHP}


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
    types = {"int": int, "float": float, "str": str, "bool": bool}
    kwargs = {k: _coerce(types[valid[k].type] if isinstance(valid[k].type, str) else valid[k].type, v,
                         f"{group}.{k}") for k, v in values.items()}
    return cls(**kwargs)
