"""A zoo: the full grid of hyperparameters over a zoo config's axes, around the base hyperparameters.

    # conf/zoo/tiny.yaml
    name: tiny
    axes:                      # nested like the hp groups; every combination is one model
      dataset: {label_noise: [0.0, 0.1, 0.2]}
      model: {width: [64, 256]}
    seeds: [0]                 # the seed is an axis too when it lists several
    shard: 0                   # this job trains models index % num_shards == shard
    num_shards: 1
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

from benchmark.errors import HParamsError
from benchmark.zoo.hparams import GROUPS, HParams

HP_GROUPS = tuple(GROUPS)
MODELS_PER_MINUTE = 25  # `genbench run` of the default zoo on a 2-core CPU, training to leaderboard (docs/performance)


def to_container(cfg: Any) -> Any:
    """Plain dicts and lists of a nested mapping (a composed config as well: its values are read, and so resolved,
    through the Mapping interface, without importing its library)."""
    if isinstance(cfg, Mapping):
        return {k: to_container(v) for k, v in cfg.items()}
    if isinstance(cfg, Sequence) and not isinstance(cfg, (str, bytes)):
        return [to_container(v) for v in cfg]
    return cfg


def base_hparams(cfg: Mapping) -> HParams:
    """The hyperparameters of the config's groups, before the zoo's axes."""
    c = to_container(cfg)
    return HParams.from_dict({**{g: c.get(g, {}) for g in HP_GROUPS}, "seed": c.get("seed", 0)})


def zoo_axes(zoo: Mapping) -> dict[str, list]:
    """Flatten the nested ``axes`` mapping to dotted keys, plus ``seed`` from ``seeds``."""
    zoo = to_container(zoo) or {}
    axes: dict[str, list] = {}
    for group, values in (zoo.get("axes") or {}).items():
        if group not in HP_GROUPS:
            raise HParamsError(f"zoo axis group {group!r} is not a hyperparameter group; valid: {', '.join(HP_GROUPS)}")
        for key, grid in (values or {}).items():
            if not isinstance(grid, list) or not grid:
                raise HParamsError(f"zoo axis {group}.{key} must be a non-empty list, got {grid!r}")
            axes[f"{group}.{key}"] = grid
    seeds = zoo_seeds(zoo)
    if seeds is not None:
        axes["seed"] = seeds
    return axes


def zoo_seeds(zoo: Mapping, key: str = "zoo.seeds") -> list[int] | None:
    """The zoo's seeds: a non-empty list, or None (``null``: every model takes the base ``seed``)."""
    seeds = (to_container(zoo) or {}).get("seeds")
    if seeds is None:
        return None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise HParamsError(f"{key}={_show(seeds)} is not a list of seeds; give one or more integers "
                           f"({key}=[0,1,2]), or null for one model per configuration with the base seed")
    return list(seeds)


def _show(value: Any) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


def zoo_size(cfg: Mapping) -> tuple[int, int, int]:
    """``(configurations, seeds, models)`` of the zoo, computed from its axes without expanding it: models is this
    shard's share of configurations × seeds."""
    zoo = to_container(cfg.get("zoo")) or {}
    axes = zoo_axes(zoo)
    seeds = len(axes.pop("seed", [None]))
    configurations = math.prod(len(v) for v in axes.values())
    shard, num_shards = _shard(zoo)
    return configurations, seeds, len(range(shard, configurations * seeds, num_shards))


def _shard(zoo: Mapping) -> tuple[int, int]:
    shard, num_shards = zoo.get("shard", 0), zoo.get("num_shards", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (shard, num_shards)):
        raise HParamsError(f"zoo.shard={shard} and zoo.num_shards={num_shards} must be integers")
    if not 0 <= shard < num_shards:
        raise HParamsError(f"zoo.shard must be in [0, zoo.num_shards={num_shards}), got {shard}")
    return shard, num_shards


def expand(cfg: Mapping) -> list[HParams]:
    """Every model of the zoo (this shard's share), validated before anything trains."""
    base = base_hparams(cfg)
    zoo = to_container(cfg.get("zoo")) or {}
    axes = zoo_axes(zoo)
    shard, num_shards = _shard(zoo)
    keys = list(axes)
    models = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        models.append(base.replace(**dict(zip(keys, combo))))
    ids = [hp.model_id for hp in models]
    if len(set(ids)) != len(ids):
        raise HParamsError("the zoo lists the same model twice (an axis repeats a value, or varies a setting "
                           "that the model's components do not use, such as optimizer.momentum for sgd)")
    return models[shard::num_shards]


def shadowed(cfg: Mapping, overrides: list[str]) -> str | None:
    """A one-line complaint if a command-line override sets a hyperparameter that the zoo varies (the axis
    would replace it in every model, so it would silently have no effect); None otherwise."""
    axes = zoo_axes(cfg.get("zoo"))
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in axes:
            axis = "zoo.seeds" if key == "seed" else f"zoo.axes.{key}"
            return (f"{key}={value} would have no effect: the zoo {cfg['zoo'].get('name')!r} varies {key} over "
                    f"{axes[key]}; set the axis instead ({axis}=[{value}]) or pick a zoo that does not vary it "
                    f"(zoo=none)")
    return None


def varying_axes(cfg: Mapping) -> list[str]:
    """The ``hp.*`` column names the zoo varies (seed excluded), for the granulated statistics."""
    return [f"hp.{k}" for k, v in zoo_axes(cfg.get("zoo")).items() if k != "seed" and len(v) > 1]
