"""Early prediction: the measures of ``early.measures`` computed on the weights each model kept part-way
through training (``early.fractions`` of its epochs; ``benchmark.training.snapshots``), stored in the store's
``early`` table. The evaluator asks how well each one, at 25 %, 50 % and 75 % of training, predicts the final
generalization gap (``benchmark.evaluation.leaderboard.early_table``).

A snapshot is measured as a model of its own: its weights, the initial weights, the training data and the
hyperparameters. Measures that read the training history (which is not finished there), the seed replicates
(which have no snapshot at the same point) or test data cannot be measured early and are refused. Reuse,
failures and time budgets work as for the final models (``benchmark.measuring.jobs``).
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator, Sequence

import measures
from benchmark.errors import UserError
from benchmark.measuring import isolation
from benchmark.measuring.context import Trained
from benchmark.measuring.jobs import by_model, compute, hard_timeout, stored_rows
from benchmark.runtime import RunOptions
from benchmark.store import CheckpointError, EarlyValue, Store
from benchmark.zoo.datasets import cached_data
from benchmark.zoo.hparams import HParams

log = logging.getLogger("genbench")

EARLY_NEEDS = frozenset({"model", "init_model", "train_data", "hparams"})
TASK_MODELS = 8  # models per worker task


def check_early(names: Sequence[str]) -> list[measures.Measure]:
    """The measures of ``early.measures``; one that reads more than a snapshot holds is a ``UserError``."""
    chosen = [measures.REGISTRY.get(n) for n in names]
    bad = [f"{m.name} (reads {', '.join(sorted(m.needs - EARLY_NEEDS))})" for m in chosen
           if not m.needs <= EARLY_NEEDS]
    if bad:
        raise UserError(f"early.measures: {'; '.join(bad)} cannot be computed part-way through training, where "
                        f"only {', '.join(sorted(EARLY_NEEDS))} exist")
    return chosen


def _early_items(common: tuple, items: Sequence[tuple[str, float, str]]) -> Iterator[tuple]:
    """In a worker: the (model_id, fraction, measure) items of some models, snapshot after snapshot, one row of
    the ``early`` table each (None for the items of a model whose checkpoint cannot be read: not stored)."""
    root, seed, timeout, curvature_samples, opts, hparams = common
    store = Store(root, readonly=True)
    for model_id, wanted in by_model(items):
        hp, history = hparams[model_id], store.history(model_id)
        try:
            init_state, _ = store.load_states(model_id)
            snapshots = {s["fraction"]: s for s in store.load_snapshots(model_id)}
        except CheckpointError as err:
            log.warning("%s — its early values are skipped", err)
            yield from (None for _ in wanted)  # nothing stored: a rerun tries again
            continue
        data = cached_data(hp.dataset, opts.data_root, opts.download)
        for fraction, names in by_model(wanted):
            snap = snapshots[fraction]
            trained = Trained.from_states(hp, init_state, snap["state"], data, history[:snap["epoch"]], opts.device)
            ctx = trained.context(seed, curvature_samples=curvature_samples)
            for name in names:
                m = measures.REGISTRY.get(name)
                value, status, error, _, seconds = compute(m, ctx, ctx, timeout)
                yield EarlyValue(model_id, fraction, snap["epoch"], m.name, m.version, value, seconds, status, error)
            ctx.leave()


def _failed(item: tuple[str, float, str], why: str) -> EarlyValue:
    """The ``early`` row of an item whose measure ended its worker (its snapshot's epoch unknown here: -1)."""
    model_id, fraction, name = item
    return EarlyValue(model_id, fraction, -1, name, measures.REGISTRY.get(name).version, None, 0.0, "failed", why)


def measure_early(models: Iterable[HParams | str], store: Store, names: Sequence[str], fractions: Sequence[float],
                  opts: RunOptions, *, plugins: Sequence[str] = (), seed: int = 0, timeout: float | None = None,
                  curvature_samples: int | None = None, pool: isolation.Pool | None = None) -> dict[str, int]:
    """Every (model, snapshot, measure) value the store's ``early`` table lacks at the measure's current version,
    for the snapshots at ``fractions`` (those a model did not keep are left out). Models that kept no snapshot
    (trained with ``early.measures=[]``, or by a genbench that kept none) are counted in ``without_snapshots``."""
    chosen = check_early(names)
    long = store.early()
    done = set(zip(long.model_id, long.fraction, long.measure, long.version))
    todo, without = [], 0
    hps = {hp.model_id: hp for hp in (m if isinstance(m, HParams) else store.model_record(m)[0] for m in models)}
    for model_id in sorted(hps):
        path = store.early_path(model_id)
        if not path.exists():
            without += 1
            continue
        missing = {f: [m.name for m in chosen if (model_id, f, m.name, m.version) not in done] for f in fractions}
        missing = {f: n for f, n in missing.items() if n}
        if missing:
            todo.append((model_id, missing))
    if without:
        log.warning("early prediction: %d models kept no weights part-way through training (trained with "
                    "early.measures=[] or by an older genbench); train them into a fresh store.root to include them",
                    without)
    computed = sum(len(n) for _, missing in todo for n in missing.values())
    log.info("early prediction: %d values to compute on %d models", computed, len(todo))
    chunks = [todo[i:i + TASK_MODELS] for i in range(0, len(todo), TASK_MODELS)]
    tasks = [isolation.Task(_early_items, (str(store.root.resolve()), seed, timeout, curvature_samples, opts,
                                           {model_id: hps[model_id] for model_id, _ in chunk}),
                            tuple((model_id, f, n) for model_id, missing in chunk for f, names in missing.items()
                                  for n in names))
             for chunk in chunks]
    iso = isolation.Isolation(measure_of=lambda item: item[2], failed=_failed, hard_timeout=hard_timeout(timeout))
    failed = sum(row is not None and row.status == "failed"
                 for row in stored_rows(tasks, iso, store.save_early, "early", lambda r: r.seconds, opts, plugins,
                                        pool))
    return {"computed": computed, "failed": failed, "without_snapshots": without}
