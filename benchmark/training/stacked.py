"""Training many models at once: models that can share a forward/backward pass are stacked and trained together.

A *stack* is a set of models whose parameters have the same shapes and who take the same steps: same dataset
(input shape, classes), architecture (``model.name/depth/width/bias``), batch size and training-set size
(``benchmark.zoo.hparams.stack_key``). Everything else stays per member: initial weights (``init_scale``), dropout
rate and masks, learning rate, weight decay, optimizer and its state (SGD, heavy-ball momentum or Adam, in one stack),
data order, training subset and label noise, target loss and epoch budget. A member that converges,
diverges or runs out of epochs freezes and leaves the stack; the others go on.

Each member reproduces ``benchmark.training.loop.train_model`` with the same hyperparameters up to float rounding:

* initial weights from ``build_model(hp.model, ..., generator(hp.seed, "init"))``, the same call;
* each epoch's order ``torch.randperm(n, generator=generator(hp.seed, "order"))``;
* dropout masks ``torch.rand(x.shape, generator=generator(hp.seed, "dropout", device)) >= p`` drawn per
  member in the same layer order and shapes as ``benchmark.zoo.models.Dropout``;
* updates with torch.optim's formulas in its arithmetic order (``measures.updates``, ``fused``): SGD with
  heavy-ball momentum (μ = 0 for plain SGD) and Adam, each with L2 weight decay;
* per-epoch evaluation (the test set on the same schedule), probes (with the same generators: all members at
  once for a probe with a ``many`` form, such as the order parameters, otherwise each member unstacked into its
  own module), history rows, the stopping rule and ``final_metrics`` from ``benchmark.training.history``.

How the stack computes: all members' parameters live in one flat ``(members, P)`` buffer (one row each), so the
optimizer update is a handful of whole-buffer ops whatever the depth. The forward pass is ``measures.stacking``'s,
the one the measures' many-model forms use: a linear layer is one ``torch.baddbmm`` over the members, a
convolution one grouped convolution (``groups = members``); autograd does the backward. A hand-written backward
matched autograd over ``baddbmm`` within noise while duplicating every layer's gradient formula
(``docs/performance.md``).

BatchNorm nets (``cnn_bn``, ``resnet``; a residual block is one op of the stacked program, its main path
and shortcut added): each member's BatchNorm scale and shift are columns of its row; its running mean,
running variance and batch count are per-member buffers ``(members, *shape)`` beside the flat buffer, updated
in place by the training pass exactly as ``nn.BatchNorm`` updates them (its own batch's statistics over batch
and positions, momentum, eps, one count per step) and read by every evaluation. Final states and snapshots carry
each member's buffers, so they load strictly into ``build_model``. The order-parameter probe's many-model form
takes parameters only, so a BatchNorm stack probes member by member on its unstacked modules (eval mode, the
running statistics). How close: on one step from equal states the running statistics come out bit for bit and
the gradients within 4e-7 (the head's batched matmul rounds differently from ``nn.Linear``); on the 8×8 digits
(width 8, batches of 32, 160 steps, six members of SGD, momentum and Adam) five members ended within 5e-7 of
``train_model`` in every weight and running statistic and one (momentum, lr 0.02) separated by 6e-4 at epoch 5
and 3e-2 at epoch 10 (its per-step error stayed below 4e-7: training amplifies rounding once a ReLU's input sits
within rounding of zero). Equal to ``train_model`` therefore means up to float rounding over short runs, not bit
for bit; ``tests/unit/training/test_stacked_bn.py`` checks four epochs at 1e-5.

What a step costs besides its arithmetic is kept small without changing a single bit of any result
(``tests/unit/training/test_exact.py``): an epoch's minibatches are gathered in blocks, not one indexing per
step; the gradients come from a direct call into autograd's engine; SGD's learning rates are converted to
float32 once. The evaluation passes overwrite their own activations at each ReLU. What remains is mostly the
kernels themselves: at these shapes (a few members, batches of 32 or 64, 40 → 64 or 128 → 10) the batched
matmuls run far below the machine's peak, the 10-class output layer slowest of all (MKL's kernel for 10
columns takes about three times as long as for 16; padding the layer to 16 would be faster but rounds
differently, so it would change every trained model).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.training.history import (
    Probe,
    epoch_row,
    evaluates_test,
    final_metrics,
    probe_columns,
    probe_columns_many,
    probe_generators,
    stops,
)
from benchmark.training.loop import TrainResult, check_smallest_batch, train_model
from benchmark.training.snapshots import Snapshots
from benchmark.zoo.datasets import DataBundle
from benchmark.zoo.hparams import DatasetHP, HParams, stack_key
from benchmark.zoo.models import MLP, ConvBNNet, ConvNet, ResNet, build_model
from measures import stacking
from measures.losses import fast_cross_entropy
from measures.seeding import generator
from measures.updates import ADAM_BETAS, OPTIMIZERS, adam_, sgd_

log = logging.getLogger("genbench")

DataSource = Union[Callable[[DatasetHP], DataBundle], Mapping[DatasetHP, DataBundle]]

STACKED_OPTIMIZERS = OPTIMIZERS  # the update rules Stack implements
GATHER_BYTES = 32 << 20  # the most input bytes one gather of an epoch's minibatches copies (Stack._batches)


_ENGINE = getattr(torch.autograd.Variable, "_execution_engine", None)


def _gradients(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``torch.autograd.grad(loss, inputs)`` of a scalar ``loss``: the same call into autograd's engine, with the
    same seed gradient (a one), without the Python wrapper's argument handling (tensor-subclass dispatch,
    batched-gradient and logging checks), which costs about a tenth of a small stack's step on a 2-core CPU.
    Falls back to ``torch.autograd.grad`` where the engine is not reachable so."""
    if _ENGINE is None or not hasattr(_ENGINE, "run_backward"):
        return torch.autograd.grad(loss, inputs)
    return _ENGINE.run_backward((loss,), (torch.ones_like(loss, memory_format=torch.preserve_format),),
                                False, False, tuple(inputs), False, False)


# ------------------------------------------------------------------------------------------------ grouping
def _stack_indices(hps: list[HParams], max_size: int | None = None) -> list[list[int]]:
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    groups: dict[tuple, list[int]] = {}
    for i, hp in enumerate(hps):
        groups.setdefault(stack_key(hp), []).append(i)
    size = lambda idx: max_size or len(idx)
    return [idx[j:j + size(idx)] for idx in groups.values() for j in range(0, len(idx), size(idx))]


def group_stacks(hps: list[HParams], max_size: int | None = None) -> list[list[HParams]]:
    """Split ``hps`` into stacks (``stack_key``), in order of first appearance, each at most ``max_size``."""
    return [[hps[i] for i in idx] for idx in _stack_indices(list(hps), max_size)]


# ------------------------------------------------------------------------------------------------ training
def train_many(hps: list[HParams], data: DataSource, *, device: str | torch.device = "cpu",
               progress: Callable[[TrainResult], None] | None = None,
               max_stack: int | None = None, probes: Sequence[Probe] = (),
               test_schedule: str = "log", keep: Sequence[float] = ()) -> list[TrainResult]:
    """Train every model of ``hps``; the results, in the order of ``hps``, equal ``train_model``'s.

    ``data``: a function from ``DatasetHP`` to ``DataBundle`` (e.g. ``benchmark.zoo.make_data``) or a mapping
    holding every dataset needed; each distinct ``DatasetHP`` is asked for once. ``progress(result)`` is called
    as each model finishes. ``max_stack`` caps the members trained together (memory). ``probes`` fill every
    epoch's history row (``benchmark.training.history``); ``test_schedule`` and ``keep`` as in ``train_model``.
    Stacks of one model, and architectures or optimizers the stack does not implement, go through ``train_model``.
    """
    hps = list(hps)
    get = data.__getitem__ if isinstance(data, Mapping) else data
    bundles: dict[DatasetHP, DataBundle] = {}

    def bundle(d: DatasetHP) -> DataBundle:
        if d not in bundles:
            bundles[d] = get(d)
        return bundles[d]

    results: list[TrainResult | None] = [None] * len(hps)

    def done(i: int, result: TrainResult) -> None:
        results[i] = result
        if progress is not None:
            progress(result)

    for idx in _stack_indices(hps, max_stack):
        members = [hps[i] for i in idx]
        try:
            stack = Stack(members, [bundle(hp.dataset) for hp in members], device, probes,
                          test_schedule, keep) if len(idx) > 1 else None
        except NotImplementedError as err:
            log.info("training %d models one at a time: %s", len(idx), err)
            stack = None
        if stack is None:
            for i in idx:
                done(i, train_model(hps[i], bundle(hps[i].dataset), device=device, probes=probes,
                                    test_schedule=test_schedule, keep=keep))
        else:
            stack.run(lambda row, result: done(idx[row], result))
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- a stack
@dataclass
class _Member:
    hp: HParams
    row: int  # position in the list given to Stack
    model: nn.Module  # the member's own module: initial weights, and unstacked for order parameters
    data: int  # index of its dataset among the stack's distinct ones
    order_gen: torch.Generator
    drop_gen: torch.Generator
    probe_gens: list[torch.Generator]
    init_state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    wall: float = 0.0
    kept: Snapshots | None = None  # (flat weight row, BatchNorm buffers) kept part-way (training.snapshots)


class Stack:
    """Models of one ``stack_key`` trained together: ``run`` trains them to their stopping rules,
    ``train_step`` takes one minibatch step of all of them (``benchmark.perf`` times it).

    Members are rows of flat ``(M, P)`` buffers (parameters, gradient, optimizer state), SGD-family members
    first and Adam members after, so each optimizer updates a contiguous block of rows.
    """

    def __init__(self, hps: list[HParams], bundles: list[DataBundle], device: str | torch.device,
                 probes: Sequence[Probe] = (), test_schedule: str = "log", keep: Sequence[float] = ()):
        """``bundles[i]``: the data of ``hps[i]``. Raises ``NotImplementedError`` for an architecture the
        stacked forward does not know or an optimizer whose update it does not implement."""
        if len({stack_key(hp) for hp in hps}) != 1:
            raise ValueError("the members of a stack must share stack_key(hp)")
        other = sorted({hp.optimizer.name for hp in hps} - set(STACKED_OPTIMIZERS))
        if other:
            raise NotImplementedError(f"no stacked update for optimizer(s) {', '.join(other)}")
        self.probes = tuple(probes)
        evaluates_test(1, test_schedule)  # an unknown schedule fails here
        self.test_schedule = test_schedule
        start = time.perf_counter()
        self.device = torch.device(device)
        first = bundles[0]
        self.in_shape, self.num_classes = first.in_shape, first.num_classes
        self.n, self.bs = len(first.y_train), hps[0].train.batch_size
        keys = list(dict.fromkeys(hp.dataset for hp in hps))
        datasets = {hp.dataset: b for hp, b in zip(hps, bundles)}
        self.data = [datasets[k].to(self.device) for k in keys]
        if any(d.in_shape != self.in_shape or len(d.y_train) != self.n for d in self.data):
            raise NotImplementedError("members' datasets differ in input shape or size")
        self.x = torch.cat([d.x_train for d in self.data])  # (Σ n, *in_shape), every distinct training set
        # datasets that differ only in their labels (label noise) share one evaluation forward pass
        self.inputs = [next(j for j, e in enumerate(self.data) if torch.equal(e.x_train, d.x_train)
                            and torch.equal(e.x_test, d.x_test)) for d in self.data]
        self.y = torch.cat([d.y_train for d in self.data])
        with torch.device("meta"):  # structure only: no memory, no draws from the global generator
            top = max(hps, key=lambda hp: hp.model.dropout).model
            template = build_model(top, self.in_shape, self.num_classes)
        if not isinstance(template, (MLP, ConvNet, ConvBNNet, ResNet)):
            raise NotImplementedError(f"no stacked forward for {type(template).__name__}")
        self.prog = stacking.compile_program(template)
        check_smallest_batch(hps[0], self.in_shape, self.num_classes)  # the members share dataset and batch size
        self.shapes = list(self.prog.shapes)
        # linear weights are stacked transposed, (in, out): their autograd gradient then comes out contiguous
        self.transposed = self.prog.transposed
        self.stacked_shapes = list(self.prog.stacked_shapes)
        self.sizes = [math.prod(s) for s in self.shapes]

        order = sorted(range(len(hps)), key=lambda r: hps[r].optimizer.name == "adam")  # stable
        self.members: list[_Member] = []
        for r in order:
            hp = hps[r]
            model = build_model(hp.model, self.in_shape, self.num_classes, generator(hp.seed, "init")).to(self.device)
            if [tuple(p.shape) for p in model.parameters()] != self.shapes:
                raise NotImplementedError("members' parameter shapes differ")
            self.members.append(_Member(
                hp, r, model, keys.index(hp.dataset), generator(hp.seed, "order"),
                generator(hp.seed, "dropout", self.device), probe_generators(self.probes, hp),
                {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, kept=Snapshots(keep)))
        self.flat = torch.stack([torch.cat([(p.t() if i in self.transposed else p).detach().reshape(-1)
                                            for i, p in enumerate(m.model.parameters())])
                                 for m in self.members])  # (M, P)
        # BatchNorm running statistics and batch counts: (M, *shape) each, updated in place by the training pass
        self.buffers = stacking.stack_buffers(self.prog, [m.model for m in self.members])
        self.n_sgd = sum(m.hp.optimizer.name != "adam" for m in self.members)
        mom = self.flat.new_tensor([self._momentum(m.hp) for m in self.members[:self.n_sgd]])
        self.momentum_buf = torch.zeros_like(self.flat[:self.n_sgd]) if bool((mom > 0).any()) else None
        self.exp_avg = torch.zeros_like(self.flat[self.n_sgd:])
        self.exp_avg_sq = torch.zeros_like(self.flat[self.n_sgd:])
        self.adam_steps = 0
        self.step = 0
        self.epoch = 0
        self._rebuild()
        share = (time.perf_counter() - start) / len(self.members)
        for m in self.members:
            m.wall += share

    @staticmethod
    def _momentum(hp: HParams) -> float:
        return hp.optimizer.momentum if hp.optimizer.name == "momentum" else 0.0

    def _rebuild(self) -> None:
        """Views and per-member columns after the member set changed."""
        col = lambda values, dtype=torch.float32: torch.tensor(values, dtype=dtype, device=self.device)[:, None]
        hps = [m.hp for m in self.members]
        self.lr64 = col([hp.optimizer.lr for hp in hps], torch.float64)
        self.lr32 = self.lr64.float()  # SGD's -η as sgd_ rounds it (negation is exact), converted once, not per step
        self.wd = col([hp.optimizer.weight_decay for hp in hps])
        self.mom = col([self._momentum(hp) for hp in hps])
        self.wd_sgd = any(hp.optimizer.weight_decay for hp in hps[:self.n_sgd])
        self.wd_adam = any(hp.optimizer.weight_decay for hp in hps[self.n_sgd:])
        self.p_drop = col([hp.model.dropout for hp in hps])
        self.keep_scale = col([1.0 - hp.model.dropout for hp in hps])
        self.drop_rows = [r for r, hp in enumerate(hps) if hp.model.dropout > 0]
        self.offsets = torch.tensor([m.data * self.n for m in self.members])
        self.grad = torch.empty_like(self.flat)
        M, views, i = len(self.members), [], 0
        for shape, size in zip(self.stacked_shapes, self.sizes):
            views.append(self.flat[:, i:i + size].view(M, *shape).detach().requires_grad_(True))
            i += size
        self.params = views  # leaves that alias the rows of self.flat
        self.masks: dict[tuple, torch.Tensor] = {}

    # --------------------------------------------------------------------------------------- one step
    def _dropout(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """x · (U ≥ p) / (1 − p) per member, U from each member's own generator in ``Dropout``'s shapes."""
        shape = tuple(x.shape[1:])  # one member's activation: (B, *features)
        buf = self.masks.get((k, shape))
        if buf is None:
            buf = self.masks[(k, shape)] = torch.ones((x.shape[0], *shape), device=self.device)
        for r in self.drop_rows:
            torch.rand(shape, generator=self.members[r].drop_gen, out=buf[r])
        view = (-1,) + (1,) * len(shape)
        return x * (buf >= self.p_drop.view(view)) / self.keep_scale.view(view)

    def train_step(self, idx: torch.Tensor) -> None:
        """One minibatch step of every member; ``idx`` (M, B) rows of ``self.x``."""
        self._step(self.x[idx], self.y[idx])

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One minibatch step of every member on its inputs ``x`` (M, B, *in_shape) and labels ``y`` (M, B)."""
        M, B = y.shape
        with torch.enable_grad():
            logits = stacking.forward(self.prog, self.params, x, self._dropout, buffers=self.buffers,
                                      train=True)  # (M, B, classes)
            loss = F.cross_entropy(logits.reshape(M * B, -1), y.reshape(-1), reduction="none")
            grads = _gradients(loss.view(M, B).mean(1).sum(), self.params)
        torch.cat([g.reshape(M, -1) for g in grads], 1, out=self.grad)
        self._update()

    def _batches(self, idx: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's minibatches ``(self.x[idx[:, i:i + bs]], self.y[idx[:, i:i + bs]])`` for i = 0, bs, 2·bs, …
        (``idx`` (M, n)), each a contiguous tensor as ``train_step`` gathers it. Up to ``GATHER_BYTES`` of
        inputs are gathered by one indexing operation, not one per step: the values are the same copies, with
        two small operations fewer per step."""
        M, n, bs = idx.shape[0], idx.shape[1], self.bs
        full = n // bs
        per_step = M * bs * self.x[0].numel() * self.x.element_size()
        block = max(1, min(full, GATHER_BYTES // max(1, per_step)))
        for start in range(0, full, block):
            steps = min(block, full - start)
            j = idx[:, start * bs:(start + steps) * bs].reshape(M, steps, bs).transpose(0, 1).contiguous()
            xs, ys = self.x[j], self.y[j]
            for k in range(steps):
                yield xs[k], ys[k]
        if full * bs < n:
            j = idx[:, full * bs:]
            yield self.x[j], self.y[j]

    @torch.no_grad()
    def _update(self) -> None:
        """torch.optim.SGD (momentum μ = 0 for plain SGD members) on the first rows, torch.optim.Adam with its
        default betas (make_optimizer's) on the others, L2 weight decay in both."""
        s, flat, grad = self.n_sgd, self.flat, self.grad
        if s:
            sgd_(flat[:s], grad[:s], self.lr32[:s], weight_decay=self.wd[:s] if self.wd_sgd else None,
                 momentum=None if self.momentum_buf is None else self.mom[:s], buf=self.momentum_buf)
        if s < len(self.members):
            self.adam_steps += 1
            adam_(flat[s:], grad[s:], self.lr64[s:], self.exp_avg, self.exp_avg_sq, self.adam_steps,
                  weight_decay=self.wd[s:] if self.wd_adam else None, betas=ADAM_BETAS)

    # ------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _evaluate(self, split: str, rows: Sequence[int]) -> dict[int, tuple[float, float]]:
        """(loss, error) on the ``split`` ("train" or "test") of the members ``rows``, eval mode (as
        ``evaluate``). Members whose data have the same inputs go through one stacked forward pass, each scored
        against its own labels."""
        out: dict[int, tuple[float, float]] = {}
        for g in dict.fromkeys(self.inputs):
            group = [r for r in rows if self.inputs[self.members[r].data] == g]
            if not group:
                continue
            if len(group) == len(self.members):
                params, buffers = self.params, self.buffers
            else:
                sel = torch.tensor(group, device=self.device)
                params, buffers = [p[sel] for p in self.params], [b[sel] for b in self.buffers]
            data = [self.data[self.members[r].data] for r in group]
            x = data[0].x_train if split == "train" else data[0].x_test
            y = torch.stack([d.y_train if split == "train" else d.y_test for d in data])
            out.update(zip(group, self._loss_error(params, x, y, buffers)))
        return out

    def _loss_error(self, params, x, y, buffers=(), batch: int = 8192) -> list[tuple[float, float]]:
        """Mean cross-entropy and error of each member on ``x``; ``y`` (M, n) holds each member's labels;
        ``buffers``: the members' BatchNorm running statistics, as ``params`` rows."""
        M = params[0].shape[0]
        chunk = max(1, batch // M)  # as many samples per pass as ``evaluate`` takes
        loss, wrong = torch.zeros(M, dtype=torch.float64), torch.zeros(M, dtype=torch.long)
        for i in range(0, y.shape[1], chunk):
            xb, yb = x[i:i + chunk], y[:, i:i + chunk]
            logits = stacking.forward(self.prog, params, xb, shared=True, buffers=buffers)  # (M, b, classes)
            ce = fast_cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="none")
            loss += ce.view(M, -1).sum(1).double().cpu()
            wrong += (logits.argmax(2) != yb).sum(1).cpu()
        n = y.shape[1]
        return [(s / n, w / n) for s, w in zip(loss.tolist(), wrong.tolist())]

    def _unstack(self, r: int) -> nn.Module:
        """Member ``r``'s own module holding its current weights and BatchNorm buffers."""
        m = self.members[r].model
        with torch.no_grad():
            for i, (p, stacked) in enumerate(zip(m.parameters(), self.params)):
                p.copy_(stacked[r].t() if i in self.transposed else stacked[r])
            for b, stacked in zip(m.buffers(), self.buffers):
                b.copy_(stacked[r])
        return m

    def _row_state(self, r: int, row: torch.Tensor, buffers: Sequence[torch.Tensor] = ()) -> dict[str, torch.Tensor]:
        """Member ``r``'s state dict with the weights of a flat row of ``self.flat`` (linear weights un-transposed)
        and its BatchNorm ``buffers`` (in the order of the member's own ``buffers()``)."""
        names = [k for k, _ in self.members[r].model.named_parameters()]
        buffer_names = [k for k, _ in self.members[r].model.named_buffers()]
        state = {k: v.detach().cpu().clone() for k, v in self.members[r].model.state_dict().items()}
        for i, (name, part) in enumerate(zip(names, torch.split(row, self.sizes))):
            w = part.view(self.stacked_shapes[i])
            state[name] = (w.t() if i in self.transposed else w).contiguous().clone()
        state.update({name: b.clone() for name, b in zip(buffer_names, buffers)})
        return state

    # ------------------------------------------------------------------------------------------ epochs
    def run(self, finished: Callable[[int, TrainResult], None]) -> None:
        """Train until every member has stopped; ``finished(row, result)`` as each one does."""
        while self.members:
            start = time.perf_counter()
            self.epoch += 1
            perm = torch.stack([torch.randperm(self.n, generator=m.order_gen) for m in self.members])
            idx = (perm + self.offsets[:, None]).to(self.device)  # (M, n) rows of self.x
            for x, y in self._batches(idx):
                self._step(x, y)
                self.step += 1
            everyone = range(len(self.members))
            train = self._evaluate("train", everyone)
            ends = [stops(epoch_row(self.epoch, self.step, train[r], None), m.hp) for r, m in enumerate(self.members)]
            due = evaluates_test(self.epoch, self.test_schedule)
            test = self._evaluate("test", [r for r in everyone if due or ends[r][0]])
            stop = [(r, diverged) for r, (done, diverged) in enumerate(ends) if done]
            if self.probes and self.prog.buffers:  # the many forms take parameters only: member by member
                probed = [probe_columns(self.probes, m.probe_gens, self._unstack(r).train(), self.data[m.data], m.hp)
                          for r, m in enumerate(self.members)]
            else:
                probed = probe_columns_many(
                    self.probes, [m.probe_gens for m in self.members], lambda p, x: stacking.forward(self.prog, p, x),
                    self.params, [self.data[m.data] for m in self.members], [m.hp for m in self.members],
                    lambda r: self._unstack(r).train()) if self.probes else [{} for _ in self.members]
            for r, m in enumerate(self.members):
                m.history.append(epoch_row(self.epoch, self.step, train[r], test.get(r)) | probed[r])
                if m.kept.due(self.epoch):
                    m.kept.add(self.epoch, (self.flat[r].detach().cpu().clone(),
                                            [b[r].detach().cpu().clone() for b in self.buffers]))
            share = (time.perf_counter() - start) / len(self.members)
            for m in self.members:
                m.wall += share
            for r, diverged in stop:
                m = self.members[r]
                final_state = {k: v.detach().cpu().clone() for k, v in self._unstack(r).state_dict().items()}
                metrics = final_metrics(m.hp, m.history, m.wall, diverged)
                snapshots = [{"fraction": f, "epoch": e, "state": self._row_state(r, row, buffers)}
                             for f, e, (row, buffers) in m.kept.pick(len(m.history))]
                finished(m.row, TrainResult(m.hp, m.init_state, final_state, metrics, m.history, snapshots))
            if stop:
                self._remove({r for r, _ in stop})

    def _remove(self, rows: set[int]) -> None:
        keep = [r for r in range(len(self.members)) if r not in rows]
        s = self.n_sgd
        take = lambda t, sel: t[torch.tensor(sel, dtype=torch.long, device=self.device)]
        self.flat = take(self.flat, keep)
        self.buffers = [take(b, keep) for b in self.buffers]
        if self.momentum_buf is not None:
            self.momentum_buf = take(self.momentum_buf, [r for r in keep if r < s])
        self.exp_avg = take(self.exp_avg, [r - s for r in keep if r >= s])
        self.exp_avg_sq = take(self.exp_avg_sq, [r - s for r in keep if r >= s])
        self.n_sgd = sum(r < s for r in keep)
        self.members = [self.members[r] for r in keep]
        if self.members:
            self._rebuild()
