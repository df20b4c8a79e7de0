"""``genbench``: the command line. Every command except ``perf`` and ``reproduce`` is a Hydra app over
``conf/``, so it takes overrides (``zoo=tiny model.width=32``), ``-m`` sweeps and ``hydra/launcher=...``.

    genbench run                        train (or reuse) the zoo, measure, evaluate, write + print leaderboard
    genbench train [-m] ...             train the zoo (or, with zoo=none and -m, one model per sweep job)
    genbench measure ...                compute missing measures on the stored zoo
    genbench evaluate ...               compute statistics and write leaderboard/ tables
    genbench leaderboard ...            print a leaderboard table from leaderboard/
    genbench measures ...               list every registered measure
    genbench collect collect.sources=[DIR/*]   merge per-job stores (cluster sweeps) into store.root
    genbench reproduce pnas|prl|nmi|mlst [--out DIR] [--quick]
    genbench perf [--json PATH] [--quick]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("genbench")


def _opts(cfg: DictConfig):
    from benchmark.pipeline import RunOptions
    ds = cfg.dataset
    return RunOptions(jobs=int(cfg.run.jobs), threads=cfg.run.get("threads"), device=str(cfg.run.device), vectorize=bool(cfg.run.vectorize),
                      progress=bool(cfg.run.progress), data_root=str(ds.get("root", "~/.cache/genbench/data")),
                      download=bool(ds.get("download", False)), on_corrupt=str(cfg.run.on_corrupt))


def _selected_measures(cfg: DictConfig) -> list:
    """Load plugins (files and entry points), then the measures the config selects."""
    import measures
    from measures.plugins import load_all
    load_all(list(cfg.measures.plugins or []))
    include = cfg.measures.include
    include = "all" if include == "all" else list(include)
    return measures.REGISTRY.select(include, list(cfg.measures.exclude or []))


def _zoo(cfg: DictConfig):
    from benchmark.store import Store
    from benchmark.zoo import expand
    hps = expand(cfg)  # validates every model before anything runs
    return hps, Store(cfg.store.root)


def do_train(cfg: DictConfig) -> dict:
    from benchmark.pipeline import prune_corrupt, train_zoo
    hps, store = _zoo(cfg)
    opts = _opts(cfg)
    prune_corrupt(store, [hp.model_id for hp in hps if hp.model_id in store.model_ids()], opts.on_corrupt)
    counts = train_zoo(hps, store, opts)
    df = store.models([hp.model_id for hp in hps])
    if len(df):
        conv = int(df["metric.converged"].astype(bool).sum())
        log.info("trained %d, reused %d; %d of %d models converged to cross-entropy ≤ %g", counts["trained"],
                 counts["reused"], conv, len(df), cfg.train.target_loss)
    return counts


def do_measure(cfg: DictConfig) -> dict:
    from benchmark.pipeline import measure_zoo, prune_corrupt
    chosen = _selected_measures(cfg)
    hps, store = _zoo(cfg)
    opts = _opts(cfg)
    have = store.model_ids()
    ids = [hp.model_id for hp in hps if hp.model_id in have]
    if len(ids) < len(hps):
        log.warning("%d of the zoo's %d models are not trained yet (genbench train trains them)",
                    len(hps) - len(ids), len(hps))
    bad = set(prune_corrupt(store, ids, "skip" if opts.on_corrupt == "retrain" else opts.on_corrupt))
    counts = measure_zoo([i for i in ids if i not in bad], store, [m.name for m in chosen], opts,
                         plugins=list(cfg.measures.plugins or []), seed=int(cfg.measures.seed),
                         timeout=cfg.measures.timeout_s, retry_failed=bool(cfg.measures.retry_failed))
    log.info("measures: %d reused, %d computed, %d failed", counts["reused"], counts["computed"], counts["failed"])
    return counts


def do_evaluate(cfg: DictConfig) -> pd.DataFrame:
    from benchmark import leaderboard as lb
    from benchmark.zoo import varying_axes
    chosen = _selected_measures(cfg)
    hps, store = _zoo(cfg)
    ids = [hp.model_id for hp in hps]
    info = lb.measure_info(chosen)
    df = store.frame(ids, measures={m.name: m.version for m in chosen})
    if df.empty:
        raise SystemExit(f"no trained models of zoo {cfg.zoo.name!r} in {store.root}; run `genbench train` first")
    axes = varying_axes(cfg)
    table = lb.results(df, info, lb.costs(store.measurements(), df.model_id), axes,
                       targets=list(cfg.evaluate.targets), n_boot=int(cfg.evaluate.n_boot),
                       seed=int(cfg.evaluate.seed))
    noise = lb.gap_noise(df)
    out, name = Path(cfg.leaderboard.dir), str(cfg.leaderboard.name)
    oracle = lb.oracle_table(df, info)
    paths = lb.write(table, noise, oracle, out, name, axes)
    df.to_csv(out / f"{name}.zoo.csv", index=False)
    # --- the page: figures under leaderboard/<name>/, then index.html + README.md over every leaderboard in out
    from benchmark import html, plots
    oracle.to_csv(out / f"{name}.oracle.csv", index=False)
    if cfg.leaderboard.plots:
        figures = plots.write(df, table, out / name)
        log.info("wrote %d figures under %s", len(figures), out / name)
    paths += html.write(out)
    # --- end page
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return table


def do_leaderboard(cfg: DictConfig) -> str:
    """Print one leaderboard: ``leaderboard.name`` (or ``leaderboard.zoo`` and ``leaderboard.dataset``, which compose
    it), ``leaderboard.target``, ``leaderboard.sort``, ``leaderboard.order`` and ``leaderboard.top``."""
    from benchmark import leaderboard as lb
    folder = Path(cfg.leaderboard.dir)
    path = folder / f"{cfg.leaderboard.name}.csv"
    if not path.exists():
        have = sorted(p.name.removesuffix(".csv") for p in folder.glob("*.csv")
                      if not p.name.endswith((".zoo.csv", ".oracle.csv")))
        raise SystemExit(f"no leaderboard {path}; available: {', '.join(have) or 'none'} "
                         f"(pick one with leaderboard.name=... or leaderboard.zoo=... leaderboard.dataset=..., "
                         f"or run `genbench evaluate`)")
    table = pd.read_csv(path)
    try:
        text = lb.terminal(table, str(cfg.leaderboard.target), str(cfg.leaderboard.sort), cfg.leaderboard.top,
                           str(cfg.leaderboard.get("order", "auto")))
    except ValueError as err:  # an unknown target, sort column or order: say which are valid, no traceback
        raise SystemExit(f"leaderboard {cfg.leaderboard.name}: {err}") from None
    print(f"\nLeaderboard {cfg.leaderboard.name} — predicting {cfg.leaderboard.target} "
          f"(τ, Ψ oriented by each measure's sign; 95% bootstrap CIs)\n{text}\n")
    if (folder / "index.html").exists():
        print(f"Tables, per-axis breakdown and plots: {folder / 'index.html'}")
    return text


def do_run(cfg: DictConfig) -> None:
    _selected_measures(cfg)  # unknown measure names and broken plugins fail before any training
    do_train(cfg)
    do_measure(cfg)
    do_evaluate(cfg)
    do_leaderboard(cfg)


def do_collect(cfg: DictConfig) -> dict:
    """Merge the stores of ``collect.sources`` (paths or globs) into ``store.root``."""
    import glob
    from benchmark.store import Store, merge
    dest = Store(cfg.store.root)
    sources = sorted({p for pattern in cfg.collect.sources for p in glob.glob(str(Path(pattern).expanduser()))})
    sources = [p for p in sources if Path(p).resolve() != dest.root.resolve()]
    if not sources:
        raise SystemExit(f"collect.sources={list(cfg.collect.sources)} matches no store")
    total = {"models": 0, "measurements": 0}
    for path in sources:
        counts = merge(dest, Store(path))
        log.info("collected %s: %d models, %d measurements", path, counts["models"], counts["measurements"])
        total = {k: total[k] + counts[k] for k in total}
    return total


def do_list(cfg: DictConfig) -> None:
    chosen = _selected_measures(cfg)
    width = max(len(m.name) for m in chosen)
    print(f"{len(chosen)} measures\n")
    for m in chosen:
        tag = " [oracle: uses test data, never ranked]" if m.oracle else ""
        print(f"{m.name:<{width}}  {m.family:<12} sign {m.sign:+d}  {m.description}{tag}\n"
              f"{'':<{width}}  reference: {m.reference}")


TASKS = {"run": do_run, "train": do_train, "measure": do_measure, "evaluate": do_evaluate,
         "leaderboard": do_leaderboard, "measures": do_list, "collect": do_collect}
def _reproduce(argv: list[str]) -> None:
    import importlib
    from benchmark.reproduce import PAPERS
    parser = argparse.ArgumentParser(prog="genbench reproduce", description="Rerun a paper's central experiment.")
    parser.add_argument("paper", choices=PAPERS)
    parser.add_argument("--out", type=Path, default=None, help="default: leaderboard/reproductions/<paper>")
    parser.add_argument("--quick", action="store_true", help="a one-minute version, for tests")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"benchmark.reproduce_{args.paper}")
    out = args.out or Path("leaderboard/reproductions") / args.paper
    table = module.run(out, quick=args.quick)
    print(table.to_string(index=False))
    print(f"\nwrote {out}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command == "perf":
        from benchmark.perf import main as perf_main
        perf_main(rest)  # its report dict is for Python callers: the console script must exit 0
        return
    if command == "reproduce":
        _reproduce(rest)
        return
    if command not in TASKS:
        raise SystemExit(f"genbench: unknown command {command!r}; valid: "
                         f"{', '.join(list(TASKS) + ['reproduce', 'perf'])}")
    import hydra
    task = TASKS[command]

    def app(cfg: DictConfig) -> None:
        logging.getLogger("genbench").setLevel(logging.INFO)
        task(cfg)

    app.__name__ = f"genbench_{command}"
    sys.argv = [f"genbench-{command}", *rest]
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(app)()


if __name__ == "__main__":
    main()
