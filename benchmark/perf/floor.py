"""What the machine allows a zoo at best: the FLOPs the measure suite does, and the fraction of the ``torch.mm``
peak that the bare matmuls of the zoo's stacked training steps reach.

Both are measured, so that ``genbench perf`` can say whether a target is out of reach on the machine at hand
rather than guess it:

* :func:`suite_flops` counts, with ``torch.utils.flop_counter`` (matmuls and convolutions, 2 FLOPs per
  multiply-add; decompositions such as ``eigh`` and elementwise work are not counted), the FLOPs of every measure
  on one model of each measuring group (``benchmark.measuring.jobs.group_key``: the models of a group share
  dataset, training-set size, architecture and batch size) and of every early-prediction measure on that model's
  kept snapshots, and scales each group's count by its number of models. With the training stage's useful FLOPs
  it gives the time the pipeline would take if every counted FLOP ran at the peak and nothing else cost time: a
  lower bound on its wall time, so an upper bound on its models per minute.
* :func:`step_matmul_ceiling` times the three matmuls per layer of one stacked training step (forward, the
  gradient of the input, the gradient of the weights: ``bmm`` over the stack's members) alone, for every stack
  shape of the zoo, with the threads one worker uses, and weighs them by each stack's training FLOPs. No
  trainer can run its steps' matmuls faster than this, so the training stage's peak fraction stays below it.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import measures
from benchmark.measuring.context import Trained
from benchmark.measuring.jobs import group_key, replicate_ids
from benchmark.measuring.many import Member
from benchmark.runtime import RunOptions, parallel, set_threads
from benchmark.store import Store
from benchmark.training.stacked import group_stacks
from benchmark.zoo.datasets import cached_data
from benchmark.zoo.hparams import HParams
from benchmark.zoo.models import build_model


def counted_flops(m: measures.Measure, ctx: measures.Context) -> float:
    """FLOPs of one measure on ``ctx``; a measure that raises is counted up to where it stopped."""
    with FlopCounterMode(display=False) as counter:
        try:
            m(ctx)
        except Exception:  # NotApplicable, or a failure the measure stage records; its FLOPs so far count
            pass
    return float(counter.get_total_flops())


def _count_task(args) -> tuple[int, str, dict, dict]:
    """FLOPs of every measure in ``names`` on one stored model, and of every measure in ``early`` on each of its
    snapshots at ``fractions`` (summed over the snapshots)."""
    root, model_id, names, early, fractions, opts, replicates = args
    set_threads(opts)
    store = Store(root)
    trained = Trained.from_store(store, model_id, opts, replicates)
    ctx, oracle = trained.context(), None
    Member.group([ctx])
    final: dict[str, float] = {}
    for name in names:
        m = measures.REGISTRY.get(name)
        if m.oracle and oracle is None:
            oracle = trained.context(oracle=True)
        final[name] = counted_flops(m, oracle if m.oracle else ctx)
    ctx.leave()
    kept: Counter = Counter()
    if early and store.early_path(model_id).exists():
        hp, _, history = store.model_record(model_id)
        init_state, _ = store.load_states(model_id)
        data = cached_data(hp.dataset, opts.data_root, opts.download)
        for snap in store.load_snapshots(model_id):
            if snap["fraction"] not in fractions:
                continue
            snapshot = Trained.from_states(hp, init_state, snap["state"], data, history[:snap["epoch"]], opts.device)
            c = snapshot.context()
            for name in early:
                kept[name] += counted_flops(measures.REGISTRY.get(name), c)
            c.leave()
    return 1, model_id, final, dict(kept)


def suite_flops(store_root: str | Path, hps: Sequence[HParams], names: Sequence[str], early: Sequence[str],
                fractions: Sequence[float], opts: RunOptions, max_groups: int | None = None) -> dict:
    """Counted FLOPs of the measure stage on the zoo ``hps`` of the store: every measure of ``names`` on the final
    weights and every measure of ``early`` on the snapshots at ``fractions``, from one model per measuring group
    (the first by id) times the group's size. ``max_groups``: count only the first groups (in order of their
    first model's id) and scale their total to the whole zoo (a quick estimate). Returns the totals, the FLOPs
    per model of each measure (final and early), and how many models were counted."""
    store = Store(store_root)
    groups: dict[tuple, list[str]] = {}
    for hp in sorted(hps, key=lambda h: h.model_id):
        groups.setdefault(group_key(hp), []).append(hp.model_id)
    chosen = list(groups.values())[:max_groups]
    scale = len(hps) / sum(len(ids) for ids in chosen)  # 1 when every group is counted
    needs_replicates = any("replicates" in measures.REGISTRY.get(n).needs for n in names)
    firsts = [ids[0] for ids in chosen]
    siblings = replicate_ids(store, firsts) if needs_replicates else {}
    size = {ids[0]: len(ids) * scale for ids in chosen}
    tasks = [(str(store_root), m, list(names), list(early), tuple(fractions), opts, siblings.get(m, []))
             for m in firsts]
    final: Counter = Counter()
    kept: Counter = Counter()
    for _, model_id, f, e in parallel(_count_task, tasks, opts.jobs, "count FLOPs", "model", [1] * len(tasks),
                                      opts.progress):
        for name, v in f.items():
            final[name] += v * size[model_id]
        for name, v in e.items():
            kept[name] += v * size[model_id]
    n = len(hps)
    return {"final": sum(final.values()), "early": sum(kept.values()),
            "total": sum(final.values()) + sum(kept.values()), "models": n, "counted_models": len(tasks),
            "groups": len(groups),
            "per_model": {k: v / n for k, v in final.most_common()},
            "early_per_model": {k: v / n for k, v in kept.most_common()}}


def _linear_dims(hp: HParams, in_shape: tuple, num_classes: int) -> list[tuple[int, int]] | None:
    """(in, out) of every layer of ``hp``'s network when all its weighted layers are ``nn.Linear``; else None."""
    model = build_model(hp.model, in_shape, num_classes)
    weighted = [m for m in model.modules() if any(p is not None for p in m.parameters(recurse=False))]
    if not all(isinstance(m, nn.Linear) for m in weighted):
        return None
    return [(m.in_features, m.out_features) for m in weighted]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_operands(members: int, batch: int, dims: Sequence[tuple[int, int]], device: torch.device
                  ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """The operand pairs of the ``bmm`` calls of one stacked step of a network with Linear layers ``dims`` (per
    layer: input × weights, output gradient × weights' transpose, input's transpose × output gradient), and
    their FLOPs (2 per multiply-add)."""
    g = torch.Generator().manual_seed(0)
    ops, flops = [], 0
    for i, o in dims:
        x, w, d = (torch.randn(members, *s, generator=g).to(device) for s in ((batch, i), (i, o), (batch, o)))
        ops += [(x, w), (d, w.transpose(1, 2)), (x.transpose(1, 2), d)]
        flops += 3 * 2 * members * batch * i * o
    return ops, flops


def _bare_step_rate(members: int, batch: int, dims: list[tuple[int, int]], reps: int, device: torch.device
                    ) -> float:
    """FLOP/s of the matmuls of one stacked step alone: per layer ``bmm`` of the input by the weights, of the output
    gradient by the weights' transpose, and of the input's transpose by the output gradient."""
    ops, flops = step_operands(members, batch, dims, device)
    inner = max(1, int(2e8 // flops))  # about 0.2 GFLOP per timing

    def step():
        for a, b in ops:
            torch.bmm(a, b)
    step()
    best = math.inf
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            step()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return flops / best


def step_matmul_ceiling(hps: Sequence[HParams], train_flops: dict[str, float], threads: int, peak_gflops: float,
                        reps: int, device: torch.device) -> dict:
    """The fraction of the ``torch.mm`` peak (``peak_gflops``, measured with ``threads`` threads) that the bare
    matmuls of the zoo's stacked training steps reach with ``threads`` threads: each stack shape's rate
    (``_bare_step_rate``), weighed by the training FLOPs of its models (``train_flops``: model id → FLOPs).
    None when a network has weighted layers other than ``nn.Linear`` (no closed shape list)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds, flops, rates = 0.0, 0.0, {}
        for stack in group_stacks(list(hps)):
            hp = stack[0]
            data = cached_data(hp.dataset)
            dims = _linear_dims(hp, data.in_shape, data.num_classes)
            if dims is None:
                return {"ceiling": None, "why": f"{hp.model.name} has weighted layers other than nn.Linear"}
            key = (len(stack), min(hp.train.batch_size, hp.dataset.n_train), tuple(dims))
            if key not in rates:
                rates[key] = _bare_step_rate(*key[:2], list(dims), reps, device)
            f = sum(train_flops[h.model_id] for h in stack)
            flops, seconds = flops + f, seconds + f / rates[key]
    finally:
        torch.set_num_threads(before)
    gflops = flops / seconds / 1e9
    return {"ceiling": gflops / peak_gflops, "gflops": gflops, "threads": threads, "peak_gflops": peak_gflops,
            "shapes": [{"members": k[0], "batch": k[1], "layers": [list(d) for d in k[2]], "gflops": r / 1e9}
                       for k, r in rates.items()]}
