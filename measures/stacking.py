"""Several trained models of one architecture evaluated as one: the stacked forward pass that the many-model
forms of ``ctx.shared`` (:func:`measures.context.many_form`) use to take the same steps on many models at once.

A :class:`Program` is the module-by-module recipe of a model that is, or whose ``net`` attribute is, an
``nn.Sequential`` of Linear layers, ReLUs, a leading ``Flatten`` and parameter-free dropout or identity
modules (the identity in eval mode, the mode every measure uses): the zoo's MLPs. The parameters of M models
live in one ``(M, P)`` buffer (:func:`stack`), so an optimizer update is a few whole-buffer operations, and
each Linear layer becomes one ``torch.baddbmm`` over ``(M, in, out)`` views of it (weights stored transposed,
which makes autograd return contiguous gradients). :func:`program` returns None for anything else, and
:func:`matches` checks the stacked pass against each model's own ``forward`` on a few inputs, so a model whose
``forward`` does more than ``net`` is not stacked by mistake.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Program:
    ops: tuple[tuple, ...]  # ("linear", weight name, bias name or None) | ("relu",) | ("flatten",) | ("identity",)
    names: tuple[str, ...]  # the parameters in stacked order
    shapes: tuple[tuple[int, ...], ...]  # their shapes in the model (Linear weights as (out, in))


def program(model: nn.Module) -> Program | None:
    """The stacked recipe of ``model`` (module docstring), or None when it is not such a network."""
    net = model if isinstance(model, nn.Sequential) else getattr(model, "net", None)
    if not isinstance(net, nn.Sequential) or any(True for _ in model.buffers()):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    ops: list[tuple] = []
    order: list[str] = []
    for i, mod in enumerate(net):
        if isinstance(mod, nn.Linear):
            bias = None if mod.bias is None else names[id(mod.bias)]
            ops.append(("linear", names[id(mod.weight)], bias))
            order += [names[id(mod.weight)]] + ([bias] if bias else [])
        elif isinstance(mod, nn.ReLU):
            ops.append(("relu",))
        elif isinstance(mod, nn.Flatten) and i == 0 and mod.start_dim == 1 and mod.end_dim == -1:
            ops.append(("flatten",))
        elif not any(True for _ in mod.parameters()) and (
                isinstance(mod, nn.Identity) or type(mod).__name__.endswith("Dropout")):
            ops.append(("identity",))
        else:
            return None
    if len(order) != len(names):  # a parameter outside ``net``
        return None
    params = dict(model.named_parameters())
    return Program(tuple(ops), tuple(order), tuple(tuple(params[n].shape) for n in order))


def stack(prog: Program, params: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """The parameters of M models as one fresh ``(M, P)`` buffer, a row per model, in ``prog.names`` order, each
    Linear weight transposed to (in, out) (:func:`views` gives the per-parameter views)."""
    rows = [torch.cat([(p[n].detach().T if len(shape) == 2 else p[n].detach()).reshape(-1)
                       for n, shape in zip(prog.names, prog.shapes)]) for p in params]
    return torch.stack(rows)


def _offsets(prog: Program) -> list[int]:
    sizes = [math.prod(shape) for shape in prog.shapes]
    return [sum(sizes[:i]) for i in range(len(sizes) + 1)]


def views(prog: Program, flat: torch.Tensor) -> list[torch.Tensor]:
    """Views of a stacked ``(M, P)`` buffer as the parameters :func:`forward` takes: Linear weights ``(M, in,
    out)``, biases ``(M, 1, out)``. Detached and made leaves (``requires_grad_``), they alias the buffer's rows,
    so an in-place update of the buffer moves them; their gradients concatenate, in order, to a buffer-shaped
    tensor (``torch.cat([g.reshape(M, -1) for g in grads], 1)``)."""
    off = _offsets(prog)
    out = []
    for i, shape in enumerate(prog.shapes):
        part = flat[:, off[i]:off[i + 1]]
        out.append(part.view(len(flat), shape[1], shape[0]) if len(shape) == 2 else part.view(len(flat), 1, -1))
    return out


def flat_index(prog: Program, name: str, index: torch.Tensor) -> torch.Tensor:
    """Positions, in a stacked row ``(P,)``, of the entries ``index`` of the model's own flattened parameter
    ``name`` (row-major (out, in) for a weight)."""
    i = prog.names.index(name)
    shape, start = prog.shapes[i], _offsets(prog)[i]
    if len(shape) != 2:
        return start + index
    out_f, in_f = shape
    return start + (index % in_f) * out_f + index // in_f


def forward(prog: Program, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits ``(M, B, classes)`` of the M stacked models on ``x`` ``(M, B, *in_shape)``, eval mode."""
    pos = {n: i for i, n in enumerate(prog.names)}
    for op in prog.ops:
        if op[0] == "linear":
            w = params[pos[op[1]]]
            x = torch.bmm(x, w) if op[2] is None else torch.baddbmm(params[pos[op[2]]], x, w)
        elif op[0] == "relu":
            x = torch.relu(x)
        elif op[0] == "flatten":
            x = x.flatten(2)
    return x


def forward_copies(prog: Program, params: Mapping[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Logits ``(C, B, classes)`` of C parameter sets of one network, given in the model's own layout (``params``
    by name: Linear weights ``(C, out, in)``, biases ``(C, out)``), on inputs ``x``: ``(B, *in_shape)`` seen by
    every copy when ``shared``, else ``(C, B, *in_shape)``, a batch per copy. Eval mode; differentiable.

    Each Linear layer is one ``baddbmm`` over the weights' transposed views, which runs the copies' matmuls
    faster than ``vmap(functional_call)`` does (12 copies of a width-128 MLP on 2,500 samples, one core: about
    a quarter less time, the first layer twice as fast)."""
    h = x.expand(next(iter(params.values())).shape[0], *x.shape) if shared else x
    for op in prog.ops:
        if op[0] == "linear":
            w = params[op[1]].transpose(1, 2)
            h = torch.bmm(h, w) if op[2] is None else torch.baddbmm(params[op[2]].unsqueeze(1), h, w)
        elif op[0] == "relu":
            h = torch.relu(h)
        elif op[0] == "flatten":
            h = h.flatten(2)
    return h


@torch.no_grad()
def matches(prog: Program, params: Sequence[torch.Tensor], models: Sequence[nn.Module],
            xs: Sequence[torch.Tensor], rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether the stacked pass gives each model's own logits on its inputs ``xs[m]`` (a few samples each)."""
    got = forward(prog, params, torch.stack(list(xs)))
    return all(torch.allclose(g, m(x), rtol=rtol, atol=atol) for g, m, x in zip(got, models, xs))
