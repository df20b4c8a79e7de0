"""A suite: several tasks (dataset × architecture × zoo) run as one benchmark, such as ``experiment=standard``.

    # conf/experiment/standard.yaml
    suite:
      name: standard
      seeds: [0, 1, 2]        # every task's replicates
      only: null              # or a list of task names, to run some of them
      tasks:
        mnist1d-mlp:          # one task: the groups it sets, merged onto the composed config, and its axes
          dataset: {name: mnist1d, train_size: 2000, test_size: 4000}
          model: {name: mlp}
          axes: {model: {width: [64, 128]}, ...}

Each task becomes a complete config: the composed one with the task's groups merged in, the zoo replaced
by ``{name: <task>, axes: <its axes>, seeds: suite.seeds}`` and ``leaderboard.name`` set to
``<suite>-<task>``. Everything operational (store, run, evaluate, leaderboard.dir) stays shared, so all
tasks live in one store and write their leaderboards into one folder.
"""
from __future__ import annotations

import copy
from typing import Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

from benchmark.errors import HParamsError, UserError
from benchmark.zoo.grid import HP_GROUPS, zoo_seeds

TASK_KEYS = (*HP_GROUPS, "axes")


def suite_of(cfg: Mapping) -> DictConfig | None:
    """The config's suite, or None for a single zoo."""
    suite = cfg.get("suite") if isinstance(cfg, (DictConfig, dict)) else None
    return suite if suite and suite.get("tasks") else None


def task_names(cfg: Mapping, every: bool = False) -> list[str]:
    """The tasks this run covers, in the suite's order (``suite.only`` narrows them unless ``every``)."""
    suite = suite_of(cfg)
    if suite is None:
        return []
    names = list(suite.tasks)
    only = suite.get("only")
    if only is None or every:
        return names
    only = [only] if isinstance(only, str) else list(only)
    unknown = [n for n in only if n not in names]
    if unknown or not only:
        raise UserError(f"suite.only={only} names no task of suite {suite.name!r} "
                        f"({', '.join(unknown) or 'empty'}); valid: {', '.join(names)}")
    return [n for n in names if n in only]


def task_configs(cfg: DictConfig, every: bool = False) -> dict[str, DictConfig]:
    """One complete config per task the run covers (every task of the suite with ``every``; {} for a single zoo),
    in the suite's order."""
    suite = suite_of(cfg)
    if suite is None:
        return {}
    out = {}
    seeds = zoo_seeds({"seeds": OmegaConf.to_container(suite, resolve=True).get("seeds")}, key="suite.seeds")
    for name in task_names(cfg, every):
        spec = suite.tasks[name]
        extra = sorted(set(spec) - set(TASK_KEYS))
        if extra:
            raise HParamsError(f"suite task {name!r} sets {', '.join(extra)}; a task sets only "
                               f"{', '.join(TASK_KEYS)}")
        task = copy.deepcopy(cfg)
        with open_dict(task):
            for group in HP_GROUPS:
                if group in spec:
                    task[group] = OmegaConf.merge(task[group], spec[group])
            task.zoo = OmegaConf.create({"name": name, "axes": OmegaConf.to_container(spec.get("axes") or {}),
                                         "seeds": seeds, "shard": int(cfg.zoo.get("shard", 0)),
                                         "num_shards": int(cfg.zoo.get("num_shards", 1))})
            task.leaderboard.name = f"{suite.name}-{name}"
            del task["suite"]
        out[name] = task
    return out
