"""Several trained models of one architecture evaluated as one: the stacked forward pass that the many-model
forms of ``ctx.shared`` (:func:`measures.context.many_form`) use to take the same steps on many models at once.

A :class:`Program` is the module-by-module recipe of a model that is, or whose ``net`` attribute is, an ``nn.Sequential``
of Linear layers, ReLUs, a leading ``Flatten`` and parameter-free dropout or identity modules (the identity in
eval mode, the mode every measure uses): the zoo's MLPs. Each Linear layer of M models becomes one
``torch.baddbmm`` over ``(M, in, out)`` weights (stored transposed, which makes autograd return contiguous
gradients). :func:`program` returns None for anything else, and :func:`matches` checks the stacked pass against
each model's own ``forward`` on a few inputs, so a model whose ``forward`` does more than ``net`` is not
stacked by mistake.
"""
from __future__ import annotations

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


def stack(prog: Program, params: Sequence[Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The parameters of several models as stacked leaves in ``prog.names`` order: Linear weights ``(M, in,
    out)``, biases ``(M, 1, out)``; fresh tensors (the models' own are not touched)."""
    out = []
    for name, shape in zip(prog.names, prog.shapes):
        t = torch.stack([p[name].detach() for p in params])
        out.append(t.transpose(1, 2).contiguous() if len(shape) == 2 else t.unsqueeze(1).clone())
    return out


def unstack_index(prog: Program, name: str, flat_index: torch.Tensor) -> torch.Tensor:
    """Positions, in a stacked parameter's per-model row ``(in·out,)``, of the entries ``flat_index`` of the
    model's own flattened parameter ``name`` (row-major (out, in) for a weight)."""
    shape = prog.shapes[prog.names.index(name)]
    if len(shape) != 2:
        return flat_index
    out_f, in_f = shape
    return (flat_index % in_f) * out_f + flat_index // in_f


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


@torch.no_grad()
def matches(prog: Program, params: Sequence[torch.Tensor], models: Sequence[nn.Module],
            xs: Sequence[torch.Tensor], rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether the stacked pass gives each model's own logits on its inputs ``xs[m]`` (a few samples each)."""
    got = forward(prog, params, torch.stack(list(xs)))
    return all(torch.allclose(g, m(x), rtol=rtol, atol=atol) for g, m, x in zip(got, models, xs))
