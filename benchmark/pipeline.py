"""The pipeline, one function per command: each turns a composed config into its stage's work.

    conf/ → zoo (expand, validate) → training → store → measuring → store → evaluation → report

Expanding the zoo, opening the store and writing the report happen here, once; the command line
(``benchmark.cli``) only dispatches and prints. Each function returns what it did, for callers in Python.
"""
from __future__ import annotations

import glob
import logging
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import measures
from benchmark.errors import UserError
from benchmark.evaluation import board
from benchmark.evaluation import leaderboard as lb
from benchmark.evaluation import suite as cross_task
from benchmark.files import write_text
from benchmark.measuring.early import check_early, measure_early
from benchmark.measuring.jobs import measure_zoo, worker_pool
from benchmark.measuring.probes import DEFAULT_PROBES
from benchmark.report import layout, page, plots, tables
from benchmark.runtime import RunOptions
from benchmark.store import ON_CONFLICT, NotAStoreError, Store, check_merge, converged, merge, migrate
from benchmark.training.history import TEST_SCHEDULES
from benchmark.training.jobs import train_zoo
from benchmark.training.snapshots import Snapshots
from benchmark.zoo.grid import MODELS_PER_MINUTE, expand, varying_axes, zoo_size
from benchmark.zoo.hparams import HParams
from benchmark.zoo.suite import suite_of, task_configs
from measures.plugins import load_all

log = logging.getLogger("genbench")


def options(cfg: DictConfig) -> RunOptions:
    """The operational settings of ``run.*`` and the dataset's location."""
    schedule = str(cfg.run.get("test_schedule", "log"))
    if schedule not in TEST_SCHEDULES:
        raise UserError(f"run.test_schedule={schedule!r} is not a test schedule; valid: {', '.join(TEST_SCHEDULES)}")
    on_corrupt = str(cfg.run.on_corrupt)
    if on_corrupt not in ON_CORRUPT:
        raise UserError(f"run.on_corrupt={on_corrupt!r} is not a choice; valid: {', '.join(ON_CORRUPT)}")
    device = str(cfg.run.device)
    try:
        torch.device(device)
    except RuntimeError:
        raise UserError(f"run.device={device!r} is not a torch device; e.g. cpu, cuda, cuda:1") from None
    return RunOptions(jobs=count_setting(cfg, "run.jobs"), threads=count_setting(cfg, "run.threads", none=True),
                      device=device, vectorize=_flag(cfg, "run.vectorize"), progress=_flag(cfg, "run.progress"),
                      data_root=str(cfg.dataset.root), download=bool(cfg.dataset.download),
                      on_corrupt=on_corrupt, test_schedule=schedule, keep=early_fractions(cfg),
                      isolate=_flag(cfg, "run.isolate"))


ON_CORRUPT = ("retrain", "skip", "fail")


def count_setting(cfg: DictConfig, key: str, none: bool = False) -> int | None:
    """The operational setting ``key``: an integer >= 1 (or null where ``none``), else a one-line ``UserError``."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}={value} must be an integer >= 1{' or null' if none else ''}")
    return value


def _flag(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise UserError(f"{key}={value} must be true or false")
    return value


def early_fractions(cfg: DictConfig) -> tuple[float, ...]:
    """The fractions of training whose weights are kept: ``early.fractions``, or none when ``early.measures`` is
    empty (nothing would read them)."""
    early = cfg.get("early") or {}
    if not early.get("measures"):
        return ()
    fractions = tuple(float(f) for f in early.get("fractions") or ())
    try:
        Snapshots(fractions)
    except ValueError as err:
        raise UserError(f"early.fractions: {err}") from None
    return fractions


def selected_measures(cfg: DictConfig) -> list[measures.Measure]:
    """Load plugins (files and entry points), then the measures the config selects."""
    load_all(list(cfg.measures.plugins or []))
    include = cfg.measures.include
    include = "all" if include == "all" else list(include)
    return measures.REGISTRY.select(include, list(cfg.measures.exclude or []))


def _configs(cfg: DictConfig) -> list[DictConfig]:
    """The config of every zoo the command covers: the tasks of a suite (``experiment=standard``), or the one zoo."""
    return list(task_configs(cfg).values()) or [cfg]


def _hparams(cfg: DictConfig) -> list[HParams]:
    """Every model of the zoo, or of all the suite's tasks together (so they share the workers and the stacks);
    each is validated before anything runs. A zoo larger than ``run.max_models`` is refused before it is expanded."""
    zoo_scale(cfg)
    return list({hp.model_id: hp for c in _configs(cfg) for hp in expand(c)}.values())


def _zoo(cfg: DictConfig) -> tuple[list[HParams], Store]:
    """The zoo's models (``_hparams``) and its store."""
    return _hparams(cfg), Store(cfg.store.root)


def zoo_scale(cfg: DictConfig) -> str:
    """"zoo <name>: N models (C configurations × S seeds)", from the axes alone (nothing is expanded); a
    ``UserError`` when N exceeds ``run.max_models``."""
    sizes = [zoo_size(c) for c in _configs(cfg)]
    configurations, models = sum(c for c, _, _ in sizes), sum(n for _, _, n in sizes)
    seeds = "/".join(sorted({str(s) for _, s, _ in sizes}))
    suite = suite_of(cfg)
    name = f"suite {suite.name} ({len(sizes)} tasks)" if suite is not None else f"zoo {cfg.zoo.name}"
    shards = int(cfg.zoo.get("num_shards", 1))
    shard = f", shard {int(cfg.zoo.get('shard', 0))} of {shards}" if shards > 1 else ""
    line = (f"{name}: {models:,} models{shard} ({configurations:,} configurations × {seeds} "
            f"seed{'s' if seeds != '1' else ''})")
    limit = count_setting(cfg, "run.max_models", none=True)
    if limit is not None and models > limit:
        minutes = models / MODELS_PER_MINUTE
        took = f"{minutes / 60:,.0f} h" if minutes >= 90 else f"{minutes:.0f} min"
        raise UserError(f"{line} is more than run.max_models={limit:,}: ≈ {took} at "
                        f"~{MODELS_PER_MINUTE} models/min, the default zoo's rate on a 2-core CPU; to go on, raise "
                        f"the limit (run.max_models={models}) or split the zoo (zoo.num_shards=...)")
    return line


def train(cfg: DictConfig) -> dict:
    """Train (or reuse) every model of the zoo; counts of trained, reused and converged models."""
    scale = zoo_scale(cfg)
    hps, store = _zoo(cfg)
    opts = options(cfg)
    have = store.model_ids()
    todo = sum(hp.model_id not in have for hp in hps)
    log.info("%s, %d to train, %d reused from %s", scale, todo, len(hps) - todo, store.root)
    store.prune_corrupt([hp.model_id for hp in hps if hp.model_id in have], opts.on_corrupt)
    counts = train_zoo(hps, store, opts, DEFAULT_PROBES)
    df = store.models([hp.model_id for hp in hps])
    counts["converged"] = int(converged(df).sum()) if len(df) else 0
    log.info("trained %d, reused %d; %d of %d models converged to cross-entropy ≤ %g", counts["trained"],
             counts["reused"], counts["converged"], len(df), cfg.train.target_loss)
    return counts


def measure(cfg: DictConfig) -> dict:
    """Compute the measures the store lacks on every trained model of the zoo, and the early-prediction values
    on the weights they kept part-way through training (``early.*``); counts, with the wall seconds of the two
    (``seconds``: ``final`` and ``early``)."""
    chosen = selected_measures(cfg)
    hps, store = _zoo(cfg)
    opts = options(cfg)
    have = store.model_ids()
    ids = [hp.model_id for hp in hps if hp.model_id in have]
    if len(ids) < len(hps):
        log.warning("%d of the zoo's %d models are not trained yet (genbench train trains them)",
                    len(hps) - len(ids), len(hps))
    curvature = cfg.measures.get("curvature_samples")
    store.pin_setting("measures.curvature_samples", curvature)
    bad = set(store.prune_corrupt(ids, "skip" if opts.on_corrupt == "retrain" else opts.on_corrupt))
    todo, plugins = [i for i in ids if i not in bad], list(cfg.measures.plugins or [])
    fractions = early_fractions(cfg)
    with worker_pool(opts, plugins) as pool:  # one pool for both: their workers' caches serve the early values too
        start = time.perf_counter()
        counts = measure_zoo(todo, store, [m.name for m in chosen], opts, seed=int(cfg.measures.seed),
                             timeout=cfg.measures.timeout_s, retry_failed=bool(cfg.measures.retry_failed),
                             curvature_samples=curvature, pool=pool)
        log.info("measures: %d reused, %d computed, %d failed, %d not applicable", counts["reused"],
                 counts["computed"], counts["failed"], counts["not_applicable"])
        seconds = {"final": time.perf_counter() - start, "early": 0.0}
        if fractions:
            start = time.perf_counter()
            counts["early"] = measure_early(todo, store, list(cfg.early.measures), fractions, opts,
                                            seed=int(cfg.measures.seed), timeout=cfg.measures.timeout_s,
                                            curvature_samples=curvature, pool=pool)
            seconds["early"] = time.perf_counter() - start
    return {**counts, "seconds": seconds}


def board_files(cfg: DictConfig) -> layout.BoardFiles:
    return layout.BoardFiles(Path(cfg.leaderboard.dir), str(cfg.leaderboard.name))


def evaluate(cfg: DictConfig) -> pd.DataFrame:
    """Every statistic of every selected measure on the stored zoo; writes the leaderboard's tables, figures,
    page and index, and returns the results table. For a suite, one leaderboard per task and the cross-task
    summary; the returned table has a ``task`` column."""
    chosen = selected_measures(cfg)
    tasks = task_configs(cfg)
    if not tasks:
        built = [_evaluate_board(cfg, chosen)]
        table, suites = built[0].table, []
    else:
        boards = {}
        for i, (name, task) in enumerate(tasks.items(), 1):
            log.info("evaluating task %d of %d: %s", i, len(tasks), name)
            boards[name] = _evaluate_board(task, chosen)
        table = pd.concat([b.table.assign(task=name) for name, b in boards.items()], ignore_index=True)
        built, suites = list(boards.values()), [_write_suite(cfg, boards)]
    paths = page.write(Path(cfg.leaderboard.dir), built, suites)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return table


def _evaluate_board(cfg: DictConfig, chosen: list[measures.Measure]) -> board.Board:
    """One leaderboard's board (``board.build``), with its tables, typed form and figures written."""
    # read-only: evaluating writes only the leaderboard, so a store on a read-only disk can be evaluated
    hps, store = _hparams(cfg), Store(cfg.store.root, readonly=True)
    info = lb.measure_info(chosen)
    df = store.frame([hp.model_id for hp in hps], measures={m.name: m.version for m in chosen})
    if df.empty:
        raise UserError(f"no trained models of zoo {cfg.zoo.name!r} in {store.root}; run `genbench train` first")
    lb.check_rankable(df, str(cfg.zoo.name))
    axes, files = varying_axes(cfg), board_files(cfg)
    built = board.build(files.name, df, info, lb.costs(store.measurements(), df.model_id), axes,
                        list(cfg.evaluate.targets), int(cfg.evaluate.n_boot), int(cfg.evaluate.seed),
                        early=_early(cfg, store, df, axes))
    paths = tables.write(files, built)
    if cfg.leaderboard.plots:
        figures = plots.write(built, files.figures)
        log.info("wrote %d figures under %s", len(figures), files.figures)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return built


def _early(cfg: DictConfig, store: Store, df: pd.DataFrame, axes: list[str]) -> pd.DataFrame | None:
    """The early-prediction table of the board's models (``early.measures``), or None when none was measured."""
    if not early_fractions(cfg):
        return None
    chosen = check_early(list(cfg.early.measures))
    final = store.frame(list(df.model_id), measures={m.name: m.version for m in chosen})
    early = store.early()
    early = early[early.fraction.isin(early_fractions(cfg))]  # failed values are NaN: fewer models
    table = lb.early_table(final, early, lb.measure_info(chosen), axes, n_boot=int(cfg.evaluate.n_boot),
                           seed=int(cfg.evaluate.seed))
    return None if table.empty else table


def _write_suite(cfg: DictConfig, boards: dict[str, board.Board]) -> cross_task.Suite:
    """The suite's cross-task table, the agreement of the tasks' rankings, its Markdown, figure and typed form. A
    task this run did not evaluate (``suite.only``) enters with the board it stored before, if there is one."""
    files, boards = suite_files(cfg), dict(boards)
    every = task_configs(cfg, every=True)
    for name, task in every.items():
        stored = board_files(task)
        if name not in boards and stored.exists():
            boards[name] = board.read(stored.name, stored.typed, stored.tables)
    suite = cross_task.build(files.name, {name: boards[name] for name in every if name in boards})
    files.folder.mkdir(parents=True, exist_ok=True)
    paths = [write_text(files.results, suite.cross.to_csv(index=False)),
             write_text(files.agreement, suite.pairs.assign(**{f"concordance_{k}": v for k, v in
                                                              suite.concordance.items()}).to_csv(index=False)),
             write_text(files.markdown, tables.suite_markdown(suite)), suite.save(files.typed)]
    if cfg.leaderboard.plots:
        paths.append(plots.write_tasks(suite.cross, list(suite.tasks), files.figure))
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return suite


def suite_files(cfg: DictConfig) -> layout.SuiteFiles:
    return layout.SuiteFiles(Path(cfg.leaderboard.dir), str(suite_of(cfg).name))


def leaderboard(cfg: DictConfig) -> str:
    """One leaderboard as terminal text: ``leaderboard.name`` (or ``leaderboard.zoo`` and ``leaderboard.dataset``,
    which compose it), ``leaderboard.target``, ``leaderboard.sort``, ``leaderboard.order`` and ``leaderboard.top``."""
    if suite_of(cfg) is not None:
        return _suite_leaderboard(cfg)
    files = board_files(cfg)
    if not files.results.exists():
        have = layout.boards(files.folder)
        raise UserError(f"no leaderboard {files.results}; available: {', '.join(have) or 'none'} "
                        f"(pick one with leaderboard.name=... or leaderboard.zoo=... leaderboard.dataset=..., "
                        f"or run `genbench evaluate`)")
    table = pd.read_csv(files.results)
    try:
        text = tables.terminal(table, str(cfg.leaderboard.target), str(cfg.leaderboard.sort), cfg.leaderboard.top,
                               str(cfg.leaderboard.get("order", "auto")))
    except ValueError as err:  # an unknown target, sort column or order: say which are valid
        raise UserError(f"leaderboard {files.name}: {err}") from None
    return (f"\nLeaderboard {files.name} — predicting {cfg.leaderboard.target} "
            f"(τ, Ψ oriented by each measure's sign; 95% bootstrap CIs)\n{text}\n")


def _suite_leaderboard(cfg: DictConfig) -> str:
    files = suite_files(cfg)
    if not files.results.exists():
        raise UserError(f"no suite summary {files.results}; run `genbench evaluate` with this suite first")
    cross = pd.read_csv(files.results)
    names = [c.removeprefix("tau.") for c in cross.columns if c.startswith("tau.")]
    return (f"\nSuite {files.name} — predicting gap_error on {len(names)} tasks, ranked by the worst task "
            f"(τ oriented by each measure's sign; per-task leaderboards: {files.folder}/{files.name}-<task>.md)\n"
            f"{tables.suite_terminal(cross, names, cfg.leaderboard.top)}\n")


def run(cfg: DictConfig) -> str:
    """train → measure → evaluate, then the leaderboard as text."""
    selected_measures(cfg)  # unknown measure names and broken plugins fail before any training
    check_early(list((cfg.get("early") or {}).get("measures") or []))
    early_fractions(cfg)
    train(cfg)
    measure(cfg)
    evaluate(cfg)
    return leaderboard(cfg)


def collect(cfg: DictConfig) -> dict:
    """Merge the stores of ``collect.sources`` (paths or globs) into ``store.root``, deciding the models and values
    two stores hold differently by ``collect.on_conflict`` (``fail``, ``keep``, ``replace``; see
    ``benchmark.store.merge``). A matched folder that holds no store is named and skipped; sources are opened
    read-only, so nothing is ever created in them. With ``fail``, every source is checked before anything is
    copied."""
    on_conflict = str(cfg.collect.get("on_conflict", "fail"))
    if on_conflict not in ON_CONFLICT:
        raise UserError(f"collect.on_conflict={on_conflict} is not a rule; valid: {', '.join(ON_CONFLICT)}")
    paths = sorted({p for pattern in cfg.collect.sources for p in glob.glob(str(Path(pattern).expanduser()))})
    paths = [p for p in paths if Path(p).resolve() != Path(cfg.store.root).resolve()]
    if not paths:
        raise UserError(f"collect.sources={list(cfg.collect.sources)} matches no store")
    sources = []
    for path in paths:
        try:
            sources.append(Store(path, readonly=True))
        except NotAStoreError as err:
            log.warning("collect: skipping %s (%s)", path, err)
    if not sources:
        raise UserError(f"collect.sources={list(cfg.collect.sources)} matches no genbench store (the {len(paths)} "
                        f"matched paths, each named in a warning above, hold none)")
    dest = Store(cfg.store.root)
    if on_conflict == "fail":
        check_merge(dest, sources)
    total = {"models": 0, "measurements": 0, "early": 0, "conflicts": 0}
    for source in sources:
        counts = merge(dest, source, on_conflict)
        log.info("collected %s: %d models, %d measurements, %d early values, %d conflicts", source.root,
                 counts["models"], counts["measurements"], counts["early"], counts["conflicts"])
        total = {k: total[k] + counts[k] for k in total}
    return total


def upgrade(cfg: DictConfig) -> dict:
    """Upgrade the store at ``store.root``, written by an older genbench, in place."""
    counts = migrate(cfg.store.root)
    log.info("store %s: schema %s → current; %d models renamed, %d duplicates dropped, %d unchanged",
             cfg.store.root, counts["from_version"], counts["renamed"], counts["dropped"], counts["unchanged"])
    return counts


def describe_measures(cfg: DictConfig) -> str:
    """Every selected measure with its family, sign, description and reference."""
    chosen = selected_measures(cfg)
    width = max(len(m.name) for m in chosen)
    lines = [f"{len(chosen)} measures", ""]
    for m in chosen:
        tag = " [oracle: uses test data, never ranked]" if m.oracle else ""
        lines += [f"{m.name:<{width}}  {m.family:<12} sign {m.sign:+d}  {m.description}{tag}",
                  f"{'':<{width}}  reference: {m.reference}"]
    return "\n".join(lines)


def outputs(cfg: DictConfig) -> list[str]:
    """Where a run's results are, for the last lines of its log: relative to the current folder when they lie in
    it (the config's paths are absolute from the start), else absolute."""
    out = [f"store: {_shown(cfg.store.root)}"]
    if suite_of(cfg) is not None:
        files = suite_files(cfg)
        if files.results.exists():
            out += [f"suite summary: {_shown(files.markdown)}", f"page: {_shown(layout.index(files.folder))}"]
        return out
    files = board_files(cfg)
    if files.results.exists():
        out += [f"leaderboard: {_shown(files.markdown)}", f"page: {_shown(layout.index(files.folder))}"]
    return out


def _shown(path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
