"""The pipeline, one function per command: each turns a plan (``benchmark.plan``: the composed config read once)
into its stage's work.

    conf/ → plan (tasks, models, settings) → training → store → measuring → store → evaluation → report

Each function takes a ``Plan`` or a composed config (read into a plan once, at the top); the stages below see
only typed values. Training and measuring are imported by the commands that run them, so that the commands that
only read (printing a stored leaderboard) never load torch. Opening the store and writing the report happen here;
the command line (``benchmark.cli``) only dispatches and prints. Each function returns what it did, for callers
in Python.
"""
from __future__ import annotations

import glob
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from benchmark.errors import UserError
from benchmark.evaluation import board
from benchmark.evaluation import leaderboard as lb
from benchmark.evaluation import suite as cross_task
from benchmark.evaluation.cache import FILE as CACHE_FILE
from benchmark.evaluation.cache import StatsCache, code_version, digest, zoo_columns
from benchmark.files import write_text
from benchmark.plan import Plan, Task
from benchmark.processes import start_forkserver
from benchmark.report import layout, page, tables
from benchmark.report.drawing import Drawer
from benchmark.store import ON_CONFLICT, NotAStoreError, Store, archive, check_merge, converged, merge, migrate
from benchmark.store.snapshot import Snapshot

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("genbench")


def train(cfg: Plan | DictConfig) -> dict:
    """Train (or reuse) every model of the zoo; counts of trained, reused and converged models."""
    from benchmark.measuring.probes import DEFAULT_PROBES
    from benchmark.training.jobs import train_zoo
    plan = Plan.of(cfg)
    scale, hps, store, opts = plan.scale, plan.models, Store(plan.store_root), plan.options
    have = store.model_ids()
    todo = sum(hp.model_id not in have for hp in hps)
    log.info("%s, %d to train, %d reused from %s", scale, todo, len(hps) - todo, store.root)
    store.prune_corrupt([hp.model_id for hp in hps if hp.model_id in have], opts.on_corrupt)
    counts = train_zoo(hps, store, opts, DEFAULT_PROBES)
    df = store.models([hp.model_id for hp in hps])
    counts["converged"] = int(converged(df).sum()) if len(df) else 0
    log.info("trained %d, reused %d; %d of %d models converged to cross-entropy ≤ %g", counts["trained"],
             counts["reused"], counts["converged"], len(df), plan.config["train"]["target_loss"])
    return counts


def measure(cfg: Plan | DictConfig) -> dict:
    """Compute the measures the store lacks on every trained model of the zoo, and the early-prediction values
    on the weights they kept part-way through training (``early.*``); counts, with the wall seconds of the two
    (``seconds``: ``final`` and ``early``)."""
    from benchmark.measuring.early import measure_early
    from benchmark.measuring.jobs import measure_zoo, worker_pool
    from benchmark.training.shift import fill_shift_metrics
    plan = Plan.of(cfg)
    chosen, hps, store, opts, settings = plan.measures, plan.models, Store(plan.store_root), plan.options, plan.measure
    have = store.model_ids()
    ids = [hp.model_id for hp in hps if hp.model_id in have]
    if len(ids) < len(hps):
        log.warning("%d of the zoo's %d models are not trained yet (genbench train trains them)",
                    len(hps) - len(ids), len(hps))
    curvature = settings.curvature_samples
    store.pin_setting("measures.curvature_samples", curvature)
    bad = set(store.prune_corrupt(ids, "skip" if opts.on_corrupt == "retrain" else opts.on_corrupt))
    todo, plugins = [hp for hp in hps if hp.model_id in have and hp.model_id not in bad], list(settings.plugins)
    filled = fill_shift_metrics(todo, store, opts)
    if filled:
        log.info("shifted test sets: %d models gained their shift metrics", filled)
    fractions = plan.early.fractions
    with worker_pool(opts, plugins) as pool:  # one pool for both: their workers' caches serve the early values too
        start = time.perf_counter()
        counts = measure_zoo(todo, store, [m.name for m in chosen], opts, seed=settings.seed,
                             timeout=settings.timeout_s, retry_failed=settings.retry_failed,
                             curvature_samples=curvature, pool=pool)
        log.info("measures: %d reused, %d computed, %d failed, %d not applicable", counts["reused"],
                 counts["computed"], counts["failed"], counts["not_applicable"])
        seconds = {"final": time.perf_counter() - start, "early": 0.0}
        if fractions:
            start = time.perf_counter()
            counts["early"] = measure_early(todo, store, list(plan.early.measures), fractions, opts,
                                            seed=settings.seed, timeout=settings.timeout_s,
                                            curvature_samples=curvature, pool=pool)
            seconds["early"] = time.perf_counter() - start
    return {**counts, "shift_filled": filled, "seconds": seconds}


def evaluate(cfg: Plan | DictConfig) -> pd.DataFrame:
    """Every statistic of every selected measure on the stored zoo; writes the leaderboard's tables, figures,
    page and index, and returns the results table. For a suite, one leaderboard per task and the cross-task
    summary; the returned table has a ``task`` column."""
    plan = Plan.of(cfg)
    cache = StatsCache(Path(plan.store_root) / "cache" / CACHE_FILE) if plan.evaluation.cache else None
    opts = plan.options
    # read-only: evaluating writes only the leaderboard, so a store on a read-only disk can be evaluated; its tables
    # are read once for every board
    snap = Snapshot(Store(plan.store_root, readonly=True))
    try:
        with Drawer(background=opts.isolate and opts.jobs > 1) as figures:  # figures drawn beside the statistics
            if plan.suite is None:
                built = [_evaluate_board(plan, plan.tasks[0], snap, cache, figures, last=True)]
                table, suites = built[0].table, []
            else:
                boards = {}
                for i, task in enumerate(plan.tasks, 1):
                    log.info("evaluating task %d of %d: %s", i, len(plan.tasks), task.name)
                    boards[task.name] = _evaluate_board(plan, task, snap, cache, figures, last=i == len(plan.tasks))
                table = pd.concat([b.table.assign(task=name) for name, b in boards.items()], ignore_index=True)
                built, suites = list(boards.values()), [_write_suite(plan, boards)]
    finally:
        if cache is not None:
            cache.close()
    paths = page.write(plan.board.folder, built, suites)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return table


def _evaluate_board(plan: Plan, task: Task, snap: Snapshot, cache: StatsCache | None, figures: Drawer,
                    last: bool = False) -> board.Board:
    """One leaderboard's board (``board.build``) from the store's tables in ``snap``, with its tables and typed form
    written and its figures handed to ``figures`` (``last``: the run's last board, see ``Drawer.draw``); the
    statistics of measures scored before come from ``cache``."""
    chosen, store = plan.measures, snap.store
    info = lb.measure_info(chosen)
    df = snap.frame([hp.model_id for hp in task.hparams], measures={m.name: m.version for m in chosen})
    if df.empty:
        raise UserError(f"no trained models of zoo {task.name!r} in {store.root}; run `genbench train` first")
    lb.check_rankable(df, task.name)
    axes, files, ev = list(task.axes), task.board, plan.evaluation
    targets = lb.present_targets(df, ev.targets)
    if len(targets) < len(ev.targets):
        log.warning("%s: no values of %s (`genbench measure` adds the shift metrics to a store trained before them)",
                    files.name, ", ".join(t for t in ev.targets if t not in targets))
    if cache is not None:
        _start_cache(cache, files.name, df, axes, ev, targets)
    built = board.build(files.name, df, info, lb.costs(snap.measurements, df.model_id), axes,
                        targets, ev.n_boot, ev.seed, early=_early(plan, snap, df, axes, cache),
                        cache=cache)
    if cache is not None:
        cache.prune()
        computed = cache.computed["ranked"]
        log.info("statistics of %s: %d of %d ranked measures computed, the others' read from %s", files.name,
                 computed, computed + cache.reused["ranked"], cache.path or "memory")
    if plan.plots:
        figures.draw(built, files.figures, last)
    paths = tables.write(files, built)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return built


def _start_cache(cache: StatsCache, name: str, df: pd.DataFrame, axes: list[str], ev, targets: list[str]) -> None:
    """Tell the cache which board it serves, and say in one line why it serves none of it, when it cannot."""
    zoo = zoo_columns(df).sort_values("model_id", ignore_index=True)
    state = {"zoo": digest(zoo), "models": len(df), "code": code_version(),
             "settings": {"targets": list(targets), "n_boot": ev.n_boot, "seed": ev.seed, "axes": list(axes)}}
    why = cache.start(name, state)
    if why:
        log.info("statistics of %s: %s since its last evaluation; recomputing every measure", name, why)


def _early(plan: Plan, snap: Snapshot, df: pd.DataFrame, axes: list[str],
           cache: StatsCache | None = None) -> pd.DataFrame | None:
    """The early-prediction table of the board's models (``early.measures``), or None when none was measured."""
    if not plan.early.fractions:
        return None
    chosen = plan.early_measures
    final = snap.frame(list(df.model_id), measures={m.name: m.version for m in chosen})
    early = snap.early
    early = early[early.fraction.isin(plan.early.fractions)]  # failed values are NaN: fewer models
    info, ev = lb.measure_info(chosen), plan.evaluation

    def compute() -> pd.DataFrame:
        return lb.early_table(final, early, info, axes, n_boot=ev.n_boot, seed=ev.seed, cache=cache)

    if cache is None:
        table = compute()
    else:
        read = ["model_id", "fraction", "epoch", "measure", "version", "value", "status"]  # what early_table reads
        key = digest("early", final, early[read].reset_index(drop=True), info[["measure", "sign", "version"]],
                     axes, ev.n_boot, ev.seed, code_version())
        table = cache.memo("early", key, compute)
    return None if table.empty else table


def _write_suite(plan: Plan, boards: dict[str, board.Board]) -> cross_task.Suite:
    """The suite's cross-task table, the agreement of the tasks' rankings, its Markdown, figure and typed form. A
    task this run did not evaluate (``suite.only``) enters with the board it stored before, if there is one."""
    files, boards = plan.suite, dict(boards)
    every = [task.name for task in plan.every]
    for task in plan.every:
        stored = task.board
        if task.name not in boards and stored.exists():
            boards[task.name] = board.read(stored.name, stored.typed, stored.tables)
    suite = cross_task.build(files.name, {name: boards[name] for name in every if name in boards})
    files.folder.mkdir(parents=True, exist_ok=True)
    paths = [write_text(files.results, suite.cross.to_csv(index=False)),
             write_text(files.agreement, suite.pairs.assign(**{f"concordance_{k}": v for k, v in
                                                              suite.concordance.items()}).to_csv(index=False)),
             write_text(files.markdown, tables.suite_markdown(suite)), suite.save(files.typed)]
    if plan.plots:
        from benchmark.report import plots
        paths.append(plots.write_tasks(suite.cross, list(suite.tasks), files.figure))
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return suite


def leaderboard(cfg: Plan | DictConfig) -> str:
    """One leaderboard as terminal text: ``leaderboard.name`` (or ``leaderboard.zoo`` and ``leaderboard.dataset``,
    which compose it), ``leaderboard.target``, ``leaderboard.sort``, ``leaderboard.order`` and ``leaderboard.top``."""
    plan = Plan.of(cfg)
    if plan.suite is not None:
        return _suite_leaderboard(plan)
    files, view = plan.board, plan.view
    if not files.results.exists():
        have = layout.boards(files.folder)
        raise UserError(f"no leaderboard {files.results}; available: {', '.join(have) or 'none'} "
                        f"(pick one with leaderboard.name=... or leaderboard.zoo=... leaderboard.dataset=..., "
                        f"or run `genbench evaluate`)")
    table = pd.read_csv(files.results)
    try:
        text = tables.terminal(table, view.target, view.sort, view.top, view.order)
    except ValueError as err:  # an unknown target, sort column or order: say which are valid
        raise UserError(f"leaderboard {files.name}: {err}") from None
    return (f"\nLeaderboard {files.name} — predicting {view.target} "
            f"(τ, Ψ oriented by each measure's sign; 95% bootstrap CIs)\n{text}\n")


def _suite_leaderboard(plan: Plan) -> str:
    files = plan.suite
    if not files.results.exists():
        raise UserError(f"no suite summary {files.results}; run `genbench evaluate` with this suite first")
    cross = pd.read_csv(files.results)
    names = [c.removeprefix("tau.") for c in cross.columns if c.startswith("tau.")]
    return (f"\nSuite {files.name} — predicting gap_error on {len(names)} tasks, ranked by the worst task "
            f"(τ oriented by each measure's sign; per-task leaderboards: {files.folder}/{files.name}-<task>.md)\n"
            f"{tables.suite_terminal(cross, names, plan.view.top)}\n")


def run(cfg: Plan | DictConfig) -> str:
    """train → measure → evaluate, then the leaderboard as text, from one plan: the zoo is expanded and the plugins
    are loaded once."""
    plan = Plan.of(cfg)
    if plan.options.isolate:
        start_forkserver()  # the measure workers' fork server imports torch and the measures while this one works
    plan.measures  # noqa: B018  (unknown measure names and broken plugins fail before any training)
    plan.early_measures  # noqa: B018
    train(plan)
    measure(plan)
    evaluate(plan)
    return leaderboard(plan)


def collect(cfg: Plan | DictConfig) -> dict:
    """Merge the stores of ``collect.sources`` (paths or globs) into ``store.root``, deciding the models and values
    two stores hold differently by ``collect.on_conflict`` (``fail``, ``keep``, ``replace``; see
    ``benchmark.store.merge``). A matched folder that holds no store is named and skipped; sources are opened
    read-only, so nothing is ever created in them. With ``fail``, every source is checked before anything is
    copied."""
    plan = Plan.of(cfg)
    sources_given, root, on_conflict = list(plan.config["collect"]["sources"]), plan.store_root, _on_conflict(plan)
    paths = sorted({p for pattern in sources_given for p in glob.glob(str(Path(pattern).expanduser()))})
    paths = [p for p in paths if Path(p).resolve() != Path(root).resolve()]
    if not paths:
        raise UserError(f"collect.sources={sources_given} matches no store")
    sources = []
    for path in paths:
        try:
            sources.append(Store(path, readonly=True))
        except NotAStoreError as err:
            log.warning("collect: skipping %s (%s)", path, err)
    if not sources:
        raise UserError(f"collect.sources={sources_given} matches no genbench store (the {len(paths)} "
                        f"matched paths, each named in a warning above, hold none)")
    dest = Store(root)
    if on_conflict == "fail":
        check_merge(dest, sources)
    total = {"models": 0, "measurements": 0, "early": 0, "conflicts": 0}
    for source in sources:
        counts = merge(dest, source, on_conflict)
        log.info("collected %s: %d models, %d measurements, %d early values, %d conflicts", source.root,
                 counts["models"], counts["measurements"], counts["early"], counts["conflicts"])
        total = {k: total[k] + counts[k] for k in total}
    return total


def _on_conflict(plan: Plan) -> str:
    """``collect.on_conflict``, the rule by which ``collect`` and ``import`` decide what two stores hold differently;
    one ``UserError`` line when it is not one."""
    on_conflict = str(plan.config["collect"].get("on_conflict", "fail"))
    if on_conflict not in ON_CONFLICT:
        raise UserError(f"collect.on_conflict={on_conflict} is not a rule; valid: {', '.join(ON_CONFLICT)}")
    return on_conflict


def export(cfg: Plan | DictConfig) -> dict:
    """Write the store at ``store.root`` as one archive at ``export.path`` (default ``<store.root>.tar``; a name
    ending in ``.gz`` or ``.tgz`` is gzip-compressed); see ``benchmark.store.archive``. The store is only read."""
    plan = Plan.of(cfg)
    path = (plan.config.get("export") or {}).get("path") or f"{plan.store_root.rstrip('/')}.tar"
    counts = archive.export(plan.store_root, Path(path).expanduser().absolute())
    log.info("exported %s: %d models, %d measurements, %d early values, %d run configs → %s (%.1f MB)",
             plan.store_root, counts["models"], counts["measurements"], counts["early"], counts["configs"],
             counts["path"], counts["bytes"] / 1e6)
    return counts


def import_archive(cfg: Plan | DictConfig, source: str) -> dict:
    """Verify the archive ``source`` (a path or a URL) and merge its store into ``store.root`` as ``collect``
    merges a source, by ``collect.on_conflict``. Nothing reaches ``store.root`` unless every member of the
    archive matches its manifest."""
    plan = Plan.of(cfg)
    counts = archive.import_archive(source, plan.store_root, _on_conflict(plan))
    log.info("imported %s into %s: %d models, %d measurements, %d early values, %d run configs, %d conflicts",
             source, plan.store_root, counts["models"], counts["measurements"], counts["early"], counts["configs"],
             counts["conflicts"])
    return counts


def upgrade(cfg: Plan | DictConfig) -> dict:
    """Upgrade the store at ``store.root``, written by an older genbench, in place."""
    root = Plan.of(cfg).store_root
    counts = migrate(root)
    log.info("store %s: schema %s → current; %d models renamed, %d duplicates dropped, %d unchanged",
             root, counts["from_version"], counts["renamed"], counts["dropped"], counts["unchanged"])
    return counts


def describe_measures(cfg: Plan | DictConfig) -> str:
    """Every selected measure with its family, sign, description and reference."""
    chosen = Plan.of(cfg).measures
    width = max(len(m.name) for m in chosen)
    lines = [f"{len(chosen)} measures", ""]
    for m in chosen:
        tag = " [oracle: uses test data, never ranked]" if m.oracle else ""
        lines += [f"{m.name:<{width}}  {m.family:<12} sign {m.sign:+d}  {m.description}{tag}",
                  f"{'':<{width}}  reference: {m.reference}"]
    return "\n".join(lines)


def outputs(cfg: Plan | DictConfig) -> list[str]:
    """Where a run's results are, for the last lines of its log: relative to the current folder when they lie in
    it (the config's paths are absolute from the start), else absolute."""
    plan = Plan.of(cfg)
    out = [f"store: {_shown(plan.store_root)}"]
    if plan.suite is not None:
        files = plan.suite
        if files.results.exists():
            out += [f"suite summary: {_shown(files.markdown)}", f"page: {_shown(layout.index(files.folder))}"]
        return out
    files = plan.board
    if files.results.exists():
        out += [f"leaderboard: {_shown(files.markdown)}", f"page: {_shown(layout.index(files.folder))}"]
    return out


def _shown(path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
