"""The plan: the composed config read once, into typed settings that every stage below receives.

    plan = Plan.of(cfg)          # a Hydra DictConfig (the command line, ``benchmark.config.compose``) or a Plan
    plan.tasks                   # the zoos this command covers: one, or the tasks of a suite (``experiment=standard``)
    plan.models                  # every model of them, expanded and validated once
    plan.measures                # the selected measures (plugins loaded once, on first use)
    plan.options                 # run.* as ``RunOptions`` (imports torch, on first use)

This is the one module, with ``benchmark.config`` and the command line, that reads a ``DictConfig``: a suite's
tasks are composed here (each task's groups merged onto the config, as typed by the schema), and from then on the
stages see plain values. Nothing here imports torch until a property that needs it is read, so a mistake in the
config is answered before torch is loaded.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from benchmark.errors import HParamsError, UserError
from benchmark.report.layout import BoardFiles, SuiteFiles
from benchmark.training.snapshots import Snapshots
from benchmark.zoo.grid import HP_GROUPS, MODELS_PER_MINUTE, expand, varying_axes, zoo_seeds, zoo_size
from benchmark.zoo.hparams import HParams

if TYPE_CHECKING:
    import measures
    from benchmark.runtime import RunOptions

TASK_KEYS = (*HP_GROUPS, "axes")
ON_CORRUPT = ("retrain", "skip", "fail")


@dataclass(frozen=True)
class Task:
    """One zoo: its name, the hyperparameter groups and zoo of its config (plain values), its leaderboard and the
    hp.* columns its axes vary."""
    name: str
    config: dict = field(repr=False)
    board: BoardFiles
    axes: tuple[str, ...]

    @functools.cached_property
    def hparams(self) -> tuple[HParams, ...]:
        """Every model of the zoo (this shard's share), validated."""
        return tuple(expand(self.config))


@dataclass(frozen=True)
class Evaluation:
    targets: tuple[str, ...]
    n_boot: int
    seed: int
    cache: bool = True  # reuse the statistics of measures already scored (benchmark.evaluation.cache)


@dataclass(frozen=True)
class View:
    """How ``genbench leaderboard`` prints a stored board."""
    target: str
    sort: str
    order: str
    top: int | None


@dataclass(frozen=True)
class MeasureSettings:
    include: str | tuple[str, ...]  # "all" or names
    exclude: tuple[str, ...]
    plugins: tuple[str, ...]
    seed: int
    timeout_s: float | None
    retry_failed: bool
    curvature_samples: int | None


@dataclass(frozen=True)
class Early:
    """The early-prediction settings: the measures computed on the weights kept at ``fractions`` of training
    (none kept when no measure reads them)."""
    measures: tuple[str, ...]
    fractions: tuple[float, ...]


@dataclass(frozen=True)
class Plan:
    config: dict = field(repr=False)  # the whole composed config as plain values
    tasks: tuple[Task, ...]  # the tasks this command covers, in the suite's order (one for a single zoo)
    every: tuple[Task, ...]  # every task of the suite (the same as tasks for a single zoo)
    suite: SuiteFiles | None
    store_root: str
    board: BoardFiles  # leaderboard.dir and leaderboard.name: a single zoo's board (a suite's are its tasks')
    plots: bool
    evaluation: Evaluation
    view: View
    measure: MeasureSettings
    early: Early

    @classmethod
    def of(cls, cfg: "DictConfig | Plan") -> "Plan":
        return cfg if isinstance(cfg, Plan) else make_plan(cfg)

    @functools.cached_property
    def models(self) -> tuple[HParams, ...]:
        """Every model of the zoo, or of all the covered tasks together (so that they share the workers and the
        stacks), each once; a zoo larger than ``run.max_models`` is refused before it is expanded."""
        self.scale  # noqa: B018  (the size check)
        return tuple({hp.model_id: hp for task in self.tasks for hp in task.hparams}.values())

    @functools.cached_property
    def scale(self) -> str:
        """"zoo <name>: N models (C configurations × S seeds)", from the axes alone (nothing is expanded); a
        ``UserError`` when N exceeds ``run.max_models``."""
        sizes = [zoo_size(t.config) for t in self.tasks]
        configurations, models = sum(c for c, _, _ in sizes), sum(n for _, _, n in sizes)
        seeds = "/".join(sorted({str(s) for _, s, _ in sizes}))
        zoo = self.config["zoo"]
        name = f"suite {self.suite.name} ({len(sizes)} tasks)" if self.suite is not None else f"zoo {zoo['name']}"
        shards = int(zoo.get("num_shards", 1))
        shard = f", shard {int(zoo.get('shard', 0))} of {shards}" if shards > 1 else ""
        line = (f"{name}: {models:,} models{shard} ({configurations:,} configurations × {seeds} "
                f"seed{'s' if seeds != '1' else ''})")
        limit = count_setting(self.config, "run.max_models", none=True)
        if limit is not None and models > limit:
            minutes = models / MODELS_PER_MINUTE
            took = f"{minutes / 60:,.0f} h" if minutes >= 90 else f"{minutes:.0f} min"
            raise UserError(f"{line} is more than run.max_models={limit:,}: ≈ {took} at "
                            f"~{MODELS_PER_MINUTE} models/min, the default zoo's rate on a 2-core CPU; to go on, "
                            f"raise the limit (run.max_models={models}) or split the zoo (zoo.num_shards=...)")
        return line

    @functools.cached_property
    def options(self) -> "RunOptions":
        """The operational settings of ``run.*`` and the dataset's location, checked."""
        import torch

        from benchmark.runtime import RunOptions
        from benchmark.training.history import TEST_SCHEDULES
        run = self.config["run"]
        schedule = str(run.get("test_schedule", "log"))
        if schedule not in TEST_SCHEDULES:
            raise UserError(f"run.test_schedule={schedule!r} is not a test schedule; valid: "
                            f"{', '.join(TEST_SCHEDULES)}")
        on_corrupt = str(run["on_corrupt"])
        if on_corrupt not in ON_CORRUPT:
            raise UserError(f"run.on_corrupt={on_corrupt!r} is not a choice; valid: {', '.join(ON_CORRUPT)}")
        device = str(run["device"])
        try:
            torch.device(device)
        except RuntimeError:
            raise UserError(f"run.device={device!r} is not a torch device; e.g. cpu, cuda, cuda:1") from None
        c = self.config
        return RunOptions(jobs=count_setting(c, "run.jobs"), threads=count_setting(c, "run.threads", none=True),
                          device=device, vectorize=flag(c, "run.vectorize"), progress=flag(c, "run.progress"),
                          data_root=str(c["dataset"]["root"]), download=bool(c["dataset"]["download"]),
                          on_corrupt=on_corrupt, test_schedule=schedule, keep=self.early.fractions,
                          isolate=flag(c, "run.isolate"))

    @functools.cached_property
    def measures(self) -> "list[measures.Measure]":
        """The selected measures: plugins (files and entry points) loaded once, then ``measures.include`` less
        ``measures.exclude``; an unknown name lists the valid ones."""
        import measures
        from measures.plugins import load_all
        load_all(list(self.measure.plugins))
        include = self.measure.include
        return measures.REGISTRY.select(include if include == "all" else list(include), list(self.measure.exclude))

    @functools.cached_property
    def early_measures(self) -> "list[measures.Measure]":
        """The measures of ``early.measures``, checked (they must be registered and rankable)."""
        from benchmark.measuring.early import check_early
        self.measures  # noqa: B018  (plugins loaded)
        return check_early(list(self.early.measures))


def select(config: dict, key: str, default: Any = None) -> Any:
    """The value at the dotted ``key`` of a plain config, or ``default``."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def count_setting(config: dict, key: str, none: bool = False) -> int | None:
    """The operational setting ``key``: an integer >= 1 (or null where ``none``), else a one-line ``UserError``."""
    value = select(config, key)
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}={value} must be an integer >= 1{' or null' if none else ''}")
    return value


def flag(config: dict, key: str) -> bool:
    value = select(config, key)
    if not isinstance(value, bool):
        raise UserError(f"{key}={value} must be true or false")
    return value


def early_fractions(config: dict) -> tuple[float, ...]:
    """The fractions of training whose weights are kept: ``early.fractions``, or none when ``early.measures`` is
    empty (nothing would read them)."""
    early = config.get("early") or {}
    if not early.get("measures"):
        return ()
    fractions = tuple(float(f) for f in early.get("fractions") or ())
    try:
        Snapshots(fractions)
    except ValueError as err:
        raise UserError(f"early.fractions: {err}") from None
    return fractions


TARGET_METRICS = ("gap_error", "test_error", "gap_loss", "shift_gap", "shift_error")  # besides metric.shift.<name>


def targets(config: dict) -> tuple[str, ...]:
    """``evaluate.targets``, each ``metric.<name>`` of ``TARGET_METRICS`` or ``metric.shift.<shift>`` (one shifted
    test set's error, docs/shift.md); anything else is a one-line ``UserError`` that lists the valid names."""
    chosen = tuple(str(t) for t in config["evaluate"]["targets"] or ())
    if not chosen:
        raise UserError("evaluate.targets is empty; name at least one, e.g. [metric.gap_error]")
    for t in chosen:
        name = t.removeprefix("metric.")
        if t.startswith("metric.") and (name in TARGET_METRICS or name.startswith("shift.")):
            continue
        raise UserError(f"evaluate.targets: unknown target {t!r}; valid: "
                        f"{', '.join('metric.' + m for m in TARGET_METRICS)}, metric.shift.<shift>")
    return chosen


def make_plan(cfg: DictConfig) -> Plan:
    """Read the composed config once: the tasks it covers, and every setting, as plain typed values. A suite's
    unknown task names and invalid early fractions fail here; the zoo's size and models (``scale``, ``models``) and
    the run options (``options``) are checked when first read, before the stage that needs them starts."""
    config = OmegaConf.to_container(cfg, resolve=True)
    tasks = [_task(c) for c in task_configs(cfg).values()]
    every = [_task(c) for c in task_configs(cfg, every=True).values()]
    suite = suite_of(cfg)
    board_dir = Path(config["leaderboard"]["dir"])
    if not tasks:
        tasks = every = [_task(cfg)]
    lb, ev, ms = config["leaderboard"], config["evaluate"], config["measures"]
    include = ms["include"]
    return Plan(
        config=config, tasks=tuple(tasks), every=tuple(every),
        suite=SuiteFiles(board_dir, str(suite["name"])) if suite is not None else None,
        store_root=str(config["store"]["root"]), board=BoardFiles(board_dir, str(lb["name"])),
        plots=bool(lb["plots"]),
        evaluation=Evaluation(targets(config), int(ev["n_boot"]), int(ev["seed"]),
                              "cache" not in ev or flag(config, "evaluate.cache")),
        view=View(str(lb["target"]), str(lb["sort"]), str(lb.get("order", "auto")), lb["top"]),
        measure=MeasureSettings(include="all" if include == "all" else tuple(include),
                                exclude=tuple(ms.get("exclude") or ()), plugins=tuple(ms.get("plugins") or ()),
                                seed=int(ms["seed"]), timeout_s=ms.get("timeout_s"),
                                retry_failed=bool(ms.get("retry_failed", False)),
                                curvature_samples=ms.get("curvature_samples")),
        early=Early(tuple((config.get("early") or {}).get("measures") or ()), early_fractions(config)))


def _task(cfg: DictConfig) -> Task:
    config = OmegaConf.to_container(cfg, resolve=True)
    task_config = {key: config.get(key) for key in (*HP_GROUPS, "seed", "zoo")}
    return Task(name=str(config["zoo"]["name"]), config=task_config,
                board=BoardFiles(Path(config["leaderboard"]["dir"]), str(config["leaderboard"]["name"])),
                axes=tuple(varying_axes(task_config)))


# ---- suites: several tasks (dataset × architecture × zoo) composed from one config --------------------------------

def suite_of(cfg: DictConfig) -> DictConfig | None:
    """The config's suite, or None for a single zoo."""
    suite = cfg.get("suite")
    return suite if suite and suite.get("tasks") else None


def task_names(cfg: DictConfig, every: bool = False) -> list[str]:
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
    in the suite's order: the composed config with the task's groups merged in (typed by the schema), the zoo
    replaced by ``{name: <task>, axes: <its axes>, seeds: suite.seeds}`` and ``leaderboard.name`` set to
    ``<suite>-<task>``. Everything operational stays shared: all tasks live in one store and write their
    leaderboards into one folder."""
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
