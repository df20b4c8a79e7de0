"""Testing a measure, in the manner of torchmetrics' ``MetricTester`` and scikit-learn's estimator checks: a value
test names a measure, the model and data it runs on and a reference value worked out independently (a closed form,
a brute-force loop, the published formula by hand), and :func:`check_measure` runs it through the registry and
adds the checks every measure owes: finite, bit-identical under the same seed, seed-free when it does not declare
``seeded=True``, and unchanged by the reparametrisations it declares (``invariances``), exactly or, for a seeded
measure, within its seed noise.

    from measures.testing import ValueCase, check_measure

    case = ValueCase("my.weight_l1", model, reference=12.5, init_model=init, train=(x, y))
    check_measure(case)  # an AssertionError says what failed

Torch only: no test framework is imported, so a plugin's own tests (pytest, unittest) call it as they like.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from measures.context import Context
from measures.registry import REGISTRY, Measure, NotApplicable, Registry, adjust_for_sample_size

EXACT_REL = 1e-4  # an exact invariance: the value moves by float summation order only
IN_DISTRIBUTION_REL = 0.05  # a seeded measure's invariance: within 5 % or three times its seed-to-seed change


@dataclass(frozen=True)
class ValueCase:
    """One value test: measure ``measure`` on ``model`` (and the other inputs it declares) must give ``reference``
    within ``rel`` (relative) or ``abs`` (absolute) tolerance. For a measure reported adjusted for the training-set
    size (``sample_size``), ``reference`` is the value before the adjustment, and the adjustment is checked too.
    ``why``: how the reference was worked out, shown when the case fails. ``registry``: where the measure is
    registered (default ``measures.REGISTRY``)."""
    measure: str
    model: nn.Module
    reference: float
    init_model: nn.Module | None = None
    train: tuple[torch.Tensor, torch.Tensor] | None = None
    test: tuple[torch.Tensor, torch.Tensor] | None = None
    hparams: Mapping[str, Any] | None = None
    history: Sequence[Mapping] | None = None
    replicates: Sequence[nn.Module] | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    rel: float = 1e-6
    abs: float = 0.0
    seed: int = 0
    why: str = ""
    registry: Registry | None = None  # where the measure is registered (default: ``measures.REGISTRY``)

    def __str__(self) -> str:
        return f"{self.measure}: {self.why}" if self.why else self.measure

    def context(self, seed: int | None = None, transform: Callable[[nn.Module], nn.Module] | None = None) -> Context:
        """A fresh Context of the case (measure seed ``seed``, default the case's), with ``transform`` applied to
        the model, the initial model and the replicates alike."""
        f = transform or (lambda m: m)
        return Context(f(self.model), init_model=None if self.init_model is None else f(self.init_model),
                       train=self.train, test=self.test, hparams=self.hparams, history=self.history,
                       replicates=None if self.replicates is None else [f(r) for r in self.replicates],
                       seed=self.seed if seed is None else seed, extras=dict(self.extras))

    @property
    def registered(self) -> Measure:
        return (REGISTRY if self.registry is None else self.registry).get(self.measure)


def value_of(case: ValueCase, ctx: Context) -> float:
    """The case's measure on ``ctx`` through the registry: its value v before any sample-size adjustment, after
    checking that the reported value is that adjustment of v (``measures.registry.adjust_for_sample_size``)."""
    m = case.registered
    out = m(ctx)
    if m.sample_size is None:
        return out.value
    v = out.details["unadjusted"]
    assert out.details["m"] == len(ctx.y_train), f"{case}: details['m'] is not the training-set size"
    want = adjust_for_sample_size(v, len(ctx.y_train), m.sample_size)
    assert math.isclose(out.value, want, rel_tol=1e-12, abs_tol=1e-15), \
        f"{case}: reported {out.value}, but the {m.sample_size} adjustment of {v} is {want}"
    return v


def check_value(case: ValueCase) -> float:
    """The measure on the case equals the reference within the case's tolerance; returns the value."""
    got = value_of(case, case.context())
    assert math.isfinite(got), f"{case}: not finite ({got})"
    assert abs(got - case.reference) <= max(case.rel * abs(case.reference), case.abs), \
        f"{case}: got {got!r}, the reference is {case.reference!r} (rel {case.rel}, abs {case.abs})"
    return got


def check_seed(case: ValueCase) -> None:
    """Bit-identical on two fresh Contexts of the same seed; the same under another seed unless ``seeded``."""
    a, b = value_of(case, case.context()), value_of(case, case.context())
    assert a == b, f"{case}: two runs with seed {case.seed} differ ({a!r}, {b!r})"
    if not case.registered.seeded:
        other = value_of(case, case.context(seed=case.seed + 1))
        assert other == a, f"{case}: declares no seeded=True, yet seed {case.seed + 1} gives {other!r} for {a!r}"


def check_invariances(case: ValueCase) -> None:
    """Each declared invariance that has a transform here (``TRANSFORMS``) holds: within ``EXACT_REL`` for an
    exactly invariant measure; for one invariant in distribution, within ``IN_DISTRIBUTION_REL`` or three times
    the change that another seed makes, whichever is larger."""
    m = case.registered
    before = value_of(case, case.context())
    for how in sorted(m.invariances & set(TRANSFORMS)):
        after = value_of(case, case.context(transform=TRANSFORMS[how]))
        if m.exact_invariances:
            tol = max(EXACT_REL * abs(before), 1e-6)
        else:
            other = value_of(case, case.context(seed=case.seed + 1))
            tol = max(IN_DISTRIBUTION_REL * abs(before), 3 * abs(before - other), 1e-6)
        assert abs(after - before) <= tol, f"{case}: declares {how} invariance, but moved {before!r} → {after!r}"


def check_measure(case: ValueCase) -> float:
    """Every check of a value test: the value, the seed, the declared invariances. Returns the value."""
    got = check_value(case)
    check_seed(case)
    check_invariances(case)
    return got


def check_not_applicable(case: ValueCase) -> str:
    """The measure refuses the case (``NotApplicable``); returns the reason it gives."""
    try:
        value_of(case, case.context())
    except NotApplicable as why:
        return str(why)
    raise AssertionError(f"{case}: expected NotApplicable")


# ------------------------------------------------------------------------------------- reparametrisations
_NORM = nn.modules.batchnorm._BatchNorm


def _hidden_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module, _NORM | None]]:
    """(layer, next layer, the BatchNorm right after the layer in module order or None) for each hidden layer of a
    chain of Linear/Conv layers (a Sequential-style network)."""
    seq = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, _NORM))]
    layers = [m for m in seq if not isinstance(m, _NORM)]
    after = {id(a): b for a, b in zip(seq, seq[1:])
             if not isinstance(a, _NORM) and isinstance(b, _NORM) and b.num_features == a.weight.shape[0]}
    return [(a, b, after.get(id(a))) for a, b in zip(layers, layers[1:])]


def permute_hidden_units(model: nn.Module, seed: int) -> nn.Module:
    """The same function with the hidden units (channels) of every hidden layer permuted: rows of W_i and
    b_i, the features of the BatchNorm layer that follows it (scale, shift, running statistics), and the matching
    columns of W_{i+1}. For chains of layers (not residual networks). Returns a copy."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for first, second, norm in _hidden_pairs(model):
            perm = torch.randperm(first.weight.shape[0], generator=g)
            moved = [first.weight, first.bias]
            if norm is not None:
                moved += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
            for t in moved:
                if t is not None:
                    t.copy_(t[perm])
            second.weight.copy_(second.weight[:, perm])
    return model


def rescale_relu_units(model: nn.Module, seed: int, spread: float = 4.0) -> nn.Module:
    """The same function after a node-wise positive rescaling (Neyshabur et al. 2015; Dinh et al. 2017): each
    hidden unit's incoming weights and bias (its BatchNorm scale and shift, when a BatchNorm layer produces the
    unit's pre-activation) are multiplied by its own factor c > 0 (log-uniform in [1/spread, spread], seeded) and
    its outgoing weights divided by it, which a ReLU passes through unchanged. Returns a copy."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for first, second, norm in _hidden_pairs(model):
            c = torch.exp((torch.rand(first.weight.shape[0], generator=g) * 2 - 1) * math.log(spread))
            if norm is not None:
                norm.weight.mul_(c)
                norm.bias.mul_(c)
            else:
                first.weight.mul_(c.view(-1, *[1] * (first.weight.dim() - 1)))
                if first.bias is not None:
                    first.bias.mul_(c)
            second.weight.div_(c.view(1, -1, *[1] * (second.weight.dim() - 2)))
    return model


def rescale_batchnorm_inputs(model: nn.Module, seed: int, spread: float = 4.0) -> nn.Module:
    """The same function after multiplying the weights (and bias) of every layer that feeds a BatchNorm layer by
    one factor c > 0 per layer (log-uniform in [1/spread, spread], seeded). BatchNorm divides the scale out:
    in training mode through the batch statistics; in eval mode, which the measures use, the running mean
    and variance are the statistics of the scaled layer (× c and × c²) and ε becomes c²ε, so that
    (cz − cμ)/√(c²σ² + c²ε) is exactly (z − μ)/√(σ² + ε). A model without BatchNorm is returned unchanged.
    Returns a copy."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seq = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, _NORM))]
        for first, norm in zip(seq, seq[1:]):
            if isinstance(first, _NORM) or not isinstance(norm, _NORM):
                continue
            c = math.exp((float(torch.rand((), generator=g)) * 2 - 1) * math.log(spread))
            for t in (first.weight, first.bias, norm.running_mean):
                if t is not None:
                    t.mul_(c)
            norm.running_var.mul_(c * c)
            norm.eps = norm.eps * c * c
    return model


TRANSFORMS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "permutation": lambda model: permute_hidden_units(model, 0),
    "rescaling": lambda model: rescale_relu_units(model, 0),
    "batchnorm_scaling": lambda model: rescale_batchnorm_inputs(model, 0),
}


def replace(case: ValueCase, **changes) -> ValueCase:
    """A copy of ``case`` with ``changes`` (another measure on the same network, another reference)."""
    return dataclasses.replace(case, **changes)
