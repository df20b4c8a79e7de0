"""Several models of one architecture computed as one: the stacked forward pass that the stacked trainer
(``benchmark.training.stacked``) and the many-model forms of ``ctx.shared`` (:func:`measures.context.many_form`)
both use to take the same steps on many models at once.

A :class:`Program` is the module-by-module recipe of a model that is, or whose ``net`` attribute is, an
``nn.Sequential`` of Linear, Conv1d and Conv2d layers, ReLUs, ``Flatten``, adaptive average pooling and
parameter-free dropout or identity modules, and BatchNorm layers: the zoo's MLPs, ConvNets and ConvBNNets;
and the zoo's ResNet, whose stem, blocks and head run in turn, each ``BasicBlock`` one *residual* op (its main
path and its shortcut, an identity or a 1-wide convolution with BatchNorm, run as two sub-programs and added)
followed by its ReLU (:func:`compile_program`; blocks and ResNets are recognised by their class names and
children, since this module cannot import the zoo: the stacked trainer stacks only the zoo's classes). The
parameters of M models live in one ``(M, P)`` buffer (:func:`stack`), so an optimizer update is a few
whole-buffer operations. Each Linear layer becomes one ``torch.baddbmm`` over ``(M, in, out)`` views of it
(weights stored transposed, which makes autograd return contiguous gradients) and each convolution one grouped
convolution (``groups = M``); autograd does the backward. For the stacked trainer on a 2-core CPU,
``torch.func.vmap(grad(functional_call))`` ran 2–3× slower per model-step (per-op batching-rule overhead that
small nets do not amortise; ``docs/performance.md``).

A BatchNorm layer's scale and shift are parameters like any other; its running mean, running variance and
batch count are *buffers*, held per member outside the parameter buffer (:func:`stack_buffers`, ``(M,
*shape)`` each) and passed to :func:`forward`. In training mode (``train=True``) one ``F.batch_norm`` over the
members-as-channel-groups tensor ``(B, M·C, *spatial)`` normalises each member's channel with the statistics
of that member's own batch (a channel of the grouped tensor holds exactly one member's channel), updates the
running buffers in place through ``(M·C,)`` views of them, and adds one to each member's batch count: what
``nn.BatchNorm`` does in training, member by member. In eval mode it uses the running statistics.

The measures stack linear networks only (:func:`program`), and :func:`matches` checks the stacked pass against
each model's own ``forward`` on a few inputs, so a model whose ``forward`` does more than ``net`` is not stacked
by mistake. This module imports only torch: ``benchmark.training`` may use it without knowing any measure.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Op:
    """One module of the network: what it does, the module itself (a convolution's settings, a pooling layer),
    the positions in :attr:`Program.names` of its weight and bias, and the settings the stacked pass reads from
    the module. Two ops are equal when they compute the same function of their parameters (the module itself is
    not compared), so programs of equal architectures are equal: the measures group models by program."""
    kind: str  # flatten | linear | conv | relu | dropout | identity | channelwise | batchnorm | residual
    module: nn.Module = field(compare=False, repr=False)
    weight: int | None = None
    bias: int | None = None
    settings: tuple = ()
    buffers: tuple[int, ...] = ()  # a BatchNorm's running mean, running variance, batch count in Program.buffers
    # a residual block's settings: (main path's ops, shortcut's ops); its output is their sum


def _walk(ops: Sequence[Op]):
    """Every op, those inside residual blocks included."""
    for op in ops:
        yield op
        if op.kind == "residual":
            for path in op.settings:
                yield from _walk(path)


@dataclass(frozen=True)
class Program:
    ops: tuple[Op, ...]
    names: tuple[str, ...]  # the parameters in stacked order: the model's own (``named_parameters``)
    shapes: tuple[tuple[int, ...], ...]  # their shapes in the model (Linear weights as (out, in))
    buffers: tuple[str, ...] = ()  # the model's buffers (``named_buffers``): BatchNorm running statistics

    @cached_property
    def transposed(self) -> frozenset[int]:
        """The Linear weights, stacked transposed as ``(in, out)``."""
        return frozenset(op.weight for op in _walk(self.ops) if op.kind == "linear")

    @cached_property
    def stacked_shapes(self) -> tuple[tuple[int, ...], ...]:
        """One model's parameters as the stacked pass takes them: Linear weights ``(in, out)``, others as is."""
        return tuple(s[::-1] if i in self.transposed else s for i, s in enumerate(self.shapes))


_BLOCK = ("conv1", "bn1", "relu1", "drop", "conv2", "bn2", "shortcut", "relu2")  # a BasicBlock's children


def _layers(model: nn.Module) -> list[nn.Module]:
    """The modules ``model`` applies one after the other: an ``nn.Sequential``'s, its ``net``'s, or a ResNet's
    stem, blocks and head in turn (``ResNet.forward`` is ``head(blocks(stem(x)))``)."""
    if isinstance(model, nn.Sequential):
        return list(model)
    net = getattr(model, "net", None)
    if isinstance(net, nn.Sequential):
        return list(net)
    children = [name for name, _ in model.named_children()]
    if type(model).__name__ == "ResNet" and children == ["stem", "blocks", "head"] and all(
            isinstance(c, nn.Sequential) for c in model.children()):
        return [m for c in model.children() for m in c]
    raise NotImplementedError(f"no stacked forward for {type(model).__name__}")


class _Compiler:
    """Turns modules into ops, recording which parameters and buffers the ops use."""

    def __init__(self, model: nn.Module):
        self.named = list(model.named_parameters())
        self.index = {id(p): i for i, (_, p) in enumerate(self.named)}
        self.named_buffers = list(model.named_buffers())
        self.buffer_index = {id(b): i for i, (_, b) in enumerate(self.named_buffers)}
        self.used: list[int] = []
        self.used_buffers: list[int] = []

    def ops(self, mods) -> tuple[Op, ...]:
        out: list[Op] = []
        for mod in mods:
            if isinstance(mod, nn.Sequential):
                out += self.ops(mod)
            elif type(mod).__name__ == "BasicBlock" and [n for n, _ in mod.named_children()] == list(_BLOCK):
                # relu2(bn2(conv2(drop(relu1(bn1(conv1(x)))))) + shortcut(x)), models.BasicBlock.forward
                main = self.ops([getattr(mod, n) for n in _BLOCK[:6]])
                out += [Op("residual", mod, settings=(main, self.ops([mod.shortcut]))), *self.ops([mod.relu2])]
            else:
                out.append(self.op(mod))
        return tuple(out)

    def op(self, mod: nn.Module) -> Op:
        index = self.index
        if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
            return Op("flatten", mod)
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if isinstance(mod, nn.Conv1d | nn.Conv2d) and mod.padding_mode != "zeros":
                raise NotImplementedError(f"padding_mode={mod.padding_mode!r}")
            weight, bias = index[id(mod.weight)], None if mod.bias is None else index[id(mod.bias)]
            settings = () if isinstance(mod, nn.Linear) else (
                type(mod).__name__, mod.stride, mod.padding, mod.dilation, mod.groups)
            self.used += [weight] + ([] if bias is None else [bias])
            return Op("linear" if isinstance(mod, nn.Linear) else "conv", mod, weight, bias, settings)
        if type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d):
            if not mod.track_running_stats or mod.momentum is None:
                raise NotImplementedError("BatchNorm without running statistics or with a cumulative average")
            weight, bias = (None, None) if not mod.affine else (index[id(mod.weight)], index[id(mod.bias)])
            stats = tuple(self.buffer_index[id(b)]
                          for b in (mod.running_mean, mod.running_var, mod.num_batches_tracked))
            self.used += [] if weight is None else [weight, bias]
            self.used_buffers += stats
            return Op("batchnorm", mod, weight, bias, (type(mod).__name__, mod.eps, mod.momentum), stats)
        if isinstance(mod, nn.ReLU):
            return Op("relu", mod)
        if type(mod).__name__.endswith("Dropout") and not any(True for _ in mod.parameters()):
            return Op("dropout", mod)
        if isinstance(mod, nn.Identity):
            return Op("identity", mod)
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            return Op("channelwise", mod, settings=(type(mod).__name__, mod.output_size))
        raise NotImplementedError(f"no stacked forward for {type(mod).__name__}")


def compile_program(model: nn.Module) -> Program:
    """The stacked recipe of ``model`` (module docstring); ``NotImplementedError`` says why there is none."""
    c = _Compiler(model)
    ops = c.ops(_layers(model))
    if sorted(c.used) != list(range(len(c.named))):
        raise NotImplementedError("a parameter outside the network's layers, or used twice")
    if sorted(c.used_buffers) != list(range(len(c.named_buffers))):
        raise NotImplementedError("a buffer outside the network's BatchNorm layers, or used twice")
    return Program(ops, tuple(n for n, _ in c.named), tuple(tuple(p.shape) for _, p in c.named),
                   tuple(n for n, _ in c.named_buffers))


def program(model: nn.Module) -> Program | None:
    """The stacked recipe of ``model`` when it is a linear network the measures stack: Linear layers, ReLUs, a
    leading ``Flatten``, parameter-free dropout or identity modules (the identity in eval mode, the mode every
    measure uses); None for anything else, ConvNets and BatchNorm nets included (``Context.copies_logits`` runs
    their copies one by one)."""
    try:
        prog = compile_program(model)
    except NotImplementedError:
        return None
    linear = all(op.kind in ("linear", "relu", "dropout", "identity") or (op.kind == "flatten" and k == 0)
                 for k, op in enumerate(prog.ops))
    return prog if linear else None


def stack(prog: Program, params: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """The parameters of M models as one fresh ``(M, P)`` buffer, a row per model, in ``prog.names`` order, each
    Linear weight transposed to (in, out) (:func:`views` gives the per-parameter views)."""
    rows = [torch.cat([(p[n].detach().T if i in prog.transposed else p[n].detach()).reshape(-1)
                       for i, n in enumerate(prog.names)]) for p in params]
    return torch.stack(rows)


def stack_buffers(prog: Program, models: Sequence[nn.Module]) -> list[torch.Tensor]:
    """The buffers of M models of ``prog``'s architecture as fresh contiguous ``(M, *shape)`` tensors, in the
    order of each model's own ``buffers()`` (``prog.buffers``; by position, as the parameters are stacked, since
    models that differ in their dropout modules name their layers differently): what :func:`forward` reads and,
    in training mode, updates in place."""
    own = [[b.detach() for b in m.buffers()] for m in models]
    if any(len(b) != len(prog.buffers) for b in own):
        raise ValueError(f"models with {len(prog.buffers)} buffers expected")
    return [torch.stack([b[i] for b in own]).contiguous() for i in range(len(prog.buffers))]


def _offsets(prog: Program) -> list[int]:
    sizes = [math.prod(shape) for shape in prog.shapes]
    return [sum(sizes[:i]) for i in range(len(sizes) + 1)]


def views(prog: Program, flat: torch.Tensor) -> list[torch.Tensor]:
    """Views of a stacked ``(M, P)`` buffer as the parameters :func:`forward` takes, ``(M, *stacked_shape)``:
    Linear weights ``(M, in, out)``, biases ``(M, out)``. Detached and made leaves (``requires_grad_``), they
    alias the buffer's rows, so an in-place update of the buffer moves them; their gradients concatenate, in
    order, to a buffer-shaped tensor (``torch.cat([g.reshape(M, -1) for g in grads], 1)``)."""
    off = _offsets(prog)
    return [flat[:, off[i]:off[i + 1]].view(len(flat), *shape) for i, shape in enumerate(prog.stacked_shapes)]


def flat_index(prog: Program, name: str, index: torch.Tensor) -> torch.Tensor:
    """Positions, in a stacked row ``(P,)``, of the entries ``index`` of the model's own flattened parameter
    ``name`` (row-major (out, in) for a Linear weight)."""
    i = prog.names.index(name)
    shape, start = prog.shapes[i], _offsets(prog)[i]
    if i not in prog.transposed:
        return start + index
    out_f, in_f = shape
    return start + (index % in_f) * out_f + index // in_f


def _grouped(x: torch.Tensor) -> torch.Tensor:
    """(M, B, C, *spatial) -> (B, M·C, *spatial): members as channel groups."""
    return x.transpose(0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2], *x.shape[3:])


def _ungrouped(y: torch.Tensor, members: int) -> torch.Tensor:
    """(B, M·C, *spatial) -> (M, B, C, *spatial), a view."""
    return y.view(y.shape[0], members, y.shape[1] // members, *y.shape[2:]).transpose(0, 1)


def forward(prog: Program, params: Sequence[torch.Tensor], x: torch.Tensor,
            dropout: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
            shared: bool = False, buffers: Sequence[torch.Tensor] = (), train: bool = False) -> torch.Tensor:
    """Logits ``(M, B, classes)`` of M stacked models on ``x`` ``(M, B, *in_shape)``, or on ``x``
    ``(B, *in_shape)`` fed to every member when ``shared`` (then the first layer is one wide matmul or conv).

    ``params[i]``: ``(M, *stacked_shapes[i])``, the i-th parameter of every member (:func:`views`).
    ``dropout(op_index, x)`` applies the members' dropout (training); None means eval mode.
    ``buffers``: the members' buffers (:func:`stack_buffers`), needed when the program has BatchNorm layers;
    ``train``: BatchNorm in training mode (each member's batch statistics, its running buffers updated in place
    and its batch count incremented), else eval mode (the running statistics).

    Without autograd (evaluation), a ReLU overwrites the activations the pass itself just made instead of
    allocating new ones: the values are the same, and the evaluation passes over whole data sets, whose
    activations are megabytes, save an allocation and a pass over memory per layer. With autograd every ReLU
    makes a new tensor, as it always did, so no gradient formula sees an in-place operation.
    """
    x, _, _ = _run(prog.ops, params, x, dropout, shared, buffers, train, params[0].shape[0],
                   not torch.is_grad_enabled(), False, ())
    return x


def _run(ops: Sequence[Op], params, x, dropout, shared, buffers, train, members: int, reuse: bool, made: bool,
         where: tuple) -> tuple[torch.Tensor, bool, bool]:
    """:func:`forward` through ``ops``: (output, whether it is still the shared input, whether this pass
    allocated it). ``made``: whether ``x`` is a tensor the pass allocated (never the caller's input, never a
    residual block's input, which its shortcut still reads). ``where``: the enclosing ops' positions, so each
    dropout op has its own key."""
    for k, op in enumerate(ops):
        if op.kind == "flatten":
            x = x.flatten(1 if shared else 2)  # (M, B, features), or (B, features) while shared
        elif op.kind == "linear":
            w = params[op.weight]  # (M, in, out)
            b = None if op.bias is None else params[op.bias]  # (M, out)
            if shared:  # (B, in) @ (in, M·out) -> (M, B, out)
                wide = w.transpose(0, 1).reshape(w.shape[1], -1)
                y = x @ wide if b is None else torch.addmm(b.reshape(-1), x, wide)
                x, shared = _ungrouped(y, members), False
            else:
                x = torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
            made = True
        elif op.kind == "relu":
            x = x.relu_() if reuse and made else torch.relu(x)
            made = True
        elif op.kind == "dropout":
            if dropout is not None:
                y = dropout((*where, k) if where else k, x)
                x, made = y, made or y is not x
        elif op.kind == "identity":
            pass
        elif op.kind == "batchnorm":
            if shared:  # a BatchNorm before any layer with weights: each member normalises its own copy
                x, shared = x.expand(members, *x.shape), False
            mean, var, count = (buffers[i] for i in op.buffers)
            w = None if op.weight is None else params[op.weight].reshape(-1)
            b = None if op.bias is None else params[op.bias].reshape(-1)
            _, eps, momentum = op.settings
            x = _ungrouped(F.batch_norm(_grouped(x), mean.view(-1), var.view(-1), w, b, train, momentum, eps),
                           members)
            if train:
                count.add_(1)
            made = True
        elif op.kind == "conv":
            m = op.module
            conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
            w = params[op.weight].flatten(0, 1)  # (M·out, in/groups, *kernel)
            b = None if op.bias is None else params[op.bias].flatten()
            groups = m.groups if shared else members * m.groups
            x = _ungrouped(conv(x if shared else _grouped(x), w, b, m.stride, m.padding, m.dilation, groups), members)
            shared, made = False, True
        elif op.kind == "residual":
            if shared:
                x, shared = x.expand(members, *x.shape), False
            main, shortcut = op.settings
            y, _, fresh = _run(main, params, x, dropout, False, buffers, train, members, reuse, False,
                               (*where, k, 0))
            skip, _, _ = _run(shortcut, params, x, dropout, False, buffers, train, members, reuse, False,
                              (*where, k, 1))
            x = y.add_(skip) if reuse and fresh else y + skip
            made = True
        else:  # channelwise: pooling acts on each channel alone
            x = op.module(x) if shared else _ungrouped(op.module(_grouped(x)), members)
            made = True
    return x, shared, made


def forward_copies(prog: Program, params: Mapping[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Logits ``(C, B, classes)`` of C parameter sets of one network, given in the model's own layout (``params``
    by name: Linear weights ``(C, out, in)``, biases ``(C, out)``), on inputs ``x``: ``(B, *in_shape)`` seen by
    every copy when ``shared``, else ``(C, B, *in_shape)``, a batch per copy. Eval mode; differentiable.

    Each Linear layer is one ``baddbmm`` over the weights' transposed views, which runs the copies' matmuls
    faster than ``vmap(functional_call)`` does (12 copies of a width-128 MLP on 2,500 samples, one core: about
    a quarter less time, the first layer twice as fast). Shared inputs are expanded to every copy, not taken as
    one wide matmul, so each copy's logits are those of its own batch."""
    h = x.expand(next(iter(params.values())).shape[0], *x.shape) if shared else x
    stacked = [params[n].transpose(1, 2) if i in prog.transposed else params[n] for i, n in enumerate(prog.names)]
    return forward(prog, stacked, h)


@torch.no_grad()
def matches(prog: Program, params: Sequence[torch.Tensor], models: Sequence[nn.Module],
            xs: Sequence[torch.Tensor], rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether the stacked pass gives each model's own logits on its inputs ``xs[m]`` (a few samples each)."""
    got = forward(prog, params, torch.stack(list(xs)))
    return all(torch.allclose(g, m(x), rtol=rtol, atol=atol) for g, m, x in zip(got, models, xs))
