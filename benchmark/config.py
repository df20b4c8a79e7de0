"""The configuration: where ``conf/`` is, the schema it composes on, and composing it from Python.

``conf/`` sits at the top of the source tree and ships inside the package as ``benchmark/conf`` (see
``pyproject.toml``), so an installed genbench finds its configs from any directory.

The schema (registered in Hydra's ConfigStore as ``genbench_schema``, first in ``conf/config.yaml``'s defaults
list) types every hyperparameter group with the dataclasses of ``benchmark.zoo.hparams`` and takes their
defaults from there: a YAML file sets only what belongs to its component, a mistyped value
(``train.batch_size=abc``) fails while the config is composed, and each default is written once.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from benchmark.zoo.hparams import DEFAULT_ROOT, GROUPS, HParams

SCHEMA = "genbench_schema"
# the config's paths, made absolute where it is composed
PATHS = ("store.root", "leaderboard.dir", "dataset.root", "export.path")
PATH_LISTS = ("measures.plugins", "collect.sources")
_HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """``conf/``: inside the installed package, or at the top of a source checkout (editable install)."""
    for candidate in (_HERE / "conf", _HERE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"genbench's configs are missing: neither {_HERE / 'conf'} nor {_HERE.parent / 'conf'}"
                            " holds config.yaml (a broken installation?)")


def _schema(cls: type, extra: tuple = ()) -> type:
    """A mutable copy of the frozen hyperparameter dataclass ``cls`` for OmegaConf: same fields, types and
    defaults, required fields as ``???``."""
    hints = typing.get_type_hints(cls)
    specs = [(f.name, hints[f.name],
              dataclasses.field(default=MISSING if f.default is dataclasses.MISSING else f.default))
             for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", specs + list(extra))


def _root_schema() -> type:
    operational = {"dataset": (("root", str, dataclasses.field(default=f"${{oc.env:GENBENCH_DATA,'{DEFAULT_ROOT}'}}")),
                               ("download", bool, dataclasses.field(default=False)))}
    groups = {g: _schema(cls, operational.get(g, ())) for g, cls in GROUPS.items()}
    specs = [(g, schema, dataclasses.field(default=MISSING)) for g, schema in groups.items() if g != "train"]
    specs.append(("train", groups["train"], dataclasses.field(default_factory=groups["train"])))
    specs.append(("seed", int, dataclasses.field(default=HParams.__dataclass_fields__["seed"].default)))
    # operational groups: their defaults are in conf/config.yaml and conf/<group>/
    specs += [(k, Any, dataclasses.field(default=MISSING))
              for k in ("zoo", "measures", "store", "run", "collect", "evaluate", "leaderboard", "early", "export")]
    specs.append(("suite", Any, dataclasses.field(default=None)))  # several tasks at once (benchmark.zoo.suite)
    return dataclasses.make_dataclass("ConfigSchema", specs)


def _job_logging(file: bool) -> dict:
    """Hydra's default job logging (``[time][logger][level] - message`` on stdout), with its log file in the run
    dir written in UTF-8 whatever the locale (``file``), or without a file (the commands that write nothing)."""
    handlers = {"console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stdout"}}
    if file:
        handlers["file"] = {"class": "logging.FileHandler", "formatter": "simple", "encoding": "utf-8",
                            "filename": "${hydra.runtime.output_dir}/${hydra.job.name}.log"}
    return {"version": 1, "formatters": {"simple": {"format": "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"}},
            "handlers": handlers, "root": {"level": "INFO", "handlers": list(handlers)},
            "disable_existing_loggers": False}


def register() -> None:
    """Put the schema, and the job logging of ``conf/config.yaml`` (``genbench``, ``genbench_console``), into
    Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA, node=_root_schema())
    store.store(group="hydra/job_logging", name="genbench", node=_job_logging(file=True), provider="genbench")
    store.store(group="hydra/job_logging", name="genbench_console", node=_job_logging(file=False),
                provider="genbench")


def compose(*overrides: str) -> DictConfig:
    """The composed config with Hydra overrides, as the command line would see it (no multirun)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return absolute_paths(hydra_compose(config_name="config", overrides=list(overrides)))


def absolute_paths(cfg: DictConfig, base: str | Path | None = None) -> DictConfig:
    """Make the config's paths (:data:`PATHS`, and each entry of :data:`PATH_LISTS`) absolute, in place: a relative
    one is relative to ``base`` (default: the current folder, where genbench was started), and ``~`` is expanded.
    Done once, where the config is composed, so that nothing later (a plugin measure that changes the current
    folder) can move them. Returns ``cfg``."""
    base = Path(base if base is not None else os.getcwd())

    def absolute(path: Any) -> str:
        path = Path(os.path.expanduser(str(path)))
        return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))

    with open_dict(cfg):
        for key in PATHS:
            value = OmegaConf.select(cfg, key, default=None)
            if value is not None:
                OmegaConf.update(cfg, key, absolute(value), merge=False)
        for key in PATH_LISTS:
            values = OmegaConf.select(cfg, key, default=None)
            if values is not None and not isinstance(values, str):
                OmegaConf.update(cfg, key, [absolute(v) for v in values], merge=False)
    return cfg


register()
