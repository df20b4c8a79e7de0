"""The measure registry: one measure = one small typed function with metadata, registered by a decorator.

    @measure("path_norm", needs=("model",), sign=+1, family="norm",
             reference="Neyshabur et al. 2015; Jiang et al. 2020 eq. (44)")
    def path_norm(ctx: Context) -> float:
        '''Σ over input-output paths of the product of squared weights.'''
        ...

``sign`` is the direction the measure is expected to move with the generalization gap (+1: a larger value
predicts a larger gap). Registering a name twice is an error, not an overwrite.

``needs`` (:data:`NEEDS`) is a contract, not a comment: while a measure runs, reading an input it does not declare
— directly (``ctx.history``, ``ctx.hp(...)``, ``ctx.x_test``) or through an intermediate that rests on it
(``ctx.margins`` rests on the model and the training data), even one another measure computed first — raises
``measures.context.UndeclaredInputError``, which names the measure, what it used and the missing declaration. The
benchmark records it as that measure's failure. ``needs`` is no part of a stored value or its key.

Three more declarations, each checked by the tests:

* ``raise NotApplicable(reason)`` inside a measure: the quantity is undefined for this model (a label-noise
  measure on a clean-label model, an optimizer the theory does not cover). It is stored with status
  ``not_applicable`` and the reason, and never counts as a failure.
* ``sample_size="log" | "sqrt"``: a bound-type measure is reported adjusted for the number m of training
  samples, as the code of Dziugaite et al. 2020 does before ranking: ½(v − log m) for a measure that is a
  logarithm, √(v/m) otherwise. The unadjusted value and m are kept in the details. Without the adjustment a
  zoo that varies m ranks a bound backwards along m (its complexity term is meant to be divided by m).
* ``invariances``: the reparametrisations that leave the value unchanged (:data:`INVARIANCES`).

What the registry-wide property tests (``tests/properties``) check of a measure is declared here too, so that a new
measure is one function with its decorator and no list to edit:

* ``seeded=True``: the measure draws from ``ctx.generator`` (Monte-Carlo noise, Lanczos starts, Hutchinson probes,
  SGD continuations): bit-identical under the same seed, and allowed to change with it. The default, ``False``,
  promises a measure that draws nothing: the same value under any seed.
* ``exact_invariances``: whether the declared invariances hold exactly. The default is ``not seeded``: a seeded
  measure draws its random vectors per parameter index, so on a reparametrised network it is invariant only in
  distribution; ``exact_invariances=True`` says that its randomness does not see the parametrisation (a seeded
  partition of the training samples). A measure that draws nothing is always exact.
* ``needs_label_noise=True``: the measure is undefined (``NotApplicable``) on a model trained without mislabeled
  samples.
* ``oracle=True``: the measure sees test data (``needs`` must include ``"test_data"``): an analysis, shown labelled
  and never ranked.

A measure without ``"permutation"`` in its invariances is expected to move when the hidden units are relabelled.
"""
from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

if TYPE_CHECKING:
    from measures.context import Context

NEEDS = ("model", "init_model", "train_data", "hparams", "history", "test_data", "replicates")
INVARIANCES = {
    "permutation": "permuting the hidden units of a layer (rows of W_l and b_l, columns of W_{l+1}); exact, or "
                   "in distribution for a seeded measure",
    "rescaling": "multiplying each hidden ReLU unit's incoming weights and bias by its own c > 0 and its "
                 "outgoing weights by 1/c (the same function; Neyshabur et al. 2015, Dinh et al. 2017)",
    "batchnorm_scaling": "multiplying the weights (and bias) of a layer that feeds a BatchNorm layer by c > 0, "
                         "with BatchNorm's running mean, variance and ε rescaled to match (× c, × c², × c²): the "
                         "same function, as BatchNorm divides the scale out",
    "units": "measuring the weights or the loss in other units, with the learning rate transformed so that SGD "
             "is the same dynamics (physics measures)",
}
SAMPLE_SIZE = ("log", "sqrt")
ADJUSTED = {"log": "½(v − log m)", "sqrt": "√(v/m)"}
FAMILIES = ("size", "norm", "spectral", "margin", "sharpness", "pacbayes", "hessian", "optimization",
            "heavy_tail", "physics", "duality", "sensitivity", "rank", "replicates", "plugin")


class NotApplicable(Exception):
    """The measure is undefined for this model; the message says why. Stored as ``not_applicable``."""


@dataclass(frozen=True)
class Value:
    """A measure's number plus optional details (fit quality, counts) kept beside it in the store."""
    value: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    name: str
    fn: Callable[["Context"], float | Value]
    needs: frozenset[str]
    sign: int
    reference: str
    family: str
    description: str
    version: int = 1
    oracle: bool = False  # uses test data: an analysis, shown labelled and never ranked
    sample_size: str | None = None  # "log" | "sqrt": reported adjusted for the training-set size m
    invariances: frozenset[str] = frozenset()
    seeded: bool = False  # draws from ctx.generator
    exact_invariances: bool = True  # the declared invariances hold exactly, not only in distribution
    needs_label_noise: bool = False  # NotApplicable on a model trained without mislabeled samples

    def __call__(self, ctx: "Context") -> Value:
        """Run the measure; the result is always a ``Value`` (a bare float is wrapped), adjusted for the
        training-set size when the measure declares ``sample_size``. Inside, the measure sees only the inputs
        it declares in ``needs`` (``Context.running``)."""
        with ctx.running(self.name, self.needs):
            out = self.fn(ctx)
        value, details = (float(out.value), dict(out.details)) if isinstance(out, Value) else (float(out), {})
        if self.sample_size is not None:
            m = len(ctx.y_train)
            value, details = adjust_for_sample_size(value, m, self.sample_size), {
                **details, "unadjusted": value, "m": m, "sample_size": self.sample_size}
        return Value(value, details)

    @property
    def source(self) -> str:
        fn = inspect.unwrap(self.fn)
        try:
            return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
        except (OSError, TypeError):
            return f"{fn.__module__}.{fn.__qualname__}"


def adjust_for_sample_size(value: float, m: int, kind: str) -> float:
    """½(v − log m) for a log measure (``kind="log"``), √(v/m) otherwise (``"sqrt"``; v must be ≥ 0)."""
    if kind == "log":
        return 0.5 * (value - math.log(m))
    if kind == "sqrt":
        if value < 0:
            raise ValueError(f"√(v/m) needs v ≥ 0, got v = {value}")
        return math.sqrt(value / m)
    raise ValueError(f"unknown sample-size adjustment {kind!r}; valid: {', '.join(SAMPLE_SIZE)}")


class DuplicateMeasureError(ValueError):
    pass


class UnknownMeasureError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """Measures by name. ``builtins``: modules whose import registers measures; they are imported on first
    use of the registry (so importing a leaf such as ``measures.seeding`` loads no measure family)."""

    def __init__(self, builtins: tuple[str, ...] = ()) -> None:
        self._measures: dict[str, Measure] = {}
        self._builtins = tuple(builtins)
        self._pending = list(builtins)

    def _load(self) -> None:
        while self._pending:
            module = self._pending[0]
            importlib.import_module(module)  # its @measure calls add(); _pending[0] keeps them from recursing
            self._pending.remove(module)

    def _ordered(self) -> list[Measure]:
        """Built-in families in the order of ``builtins`` (whichever was imported first), each in definition
        order, then every other measure in registration order."""
        rank = {module: i for i, module in enumerate(self._builtins)}
        return sorted(self._measures.values(), key=lambda m: rank.get(m.fn.__module__, len(rank)))

    def add(self, m: Measure) -> Measure:
        if self._pending and m.fn.__module__ not in self._pending:
            self._load()  # built-ins first, so a clashing plugin is the one reported as the second definition
        if m.name in self._measures:
            raise DuplicateMeasureError(
                f"measure {m.name!r} is already registered (at {self._measures[m.name].source}); "
                f"the second definition is at {m.source}. Pick another name.")
        self._measures[m.name] = m
        return m

    def remove(self, name: str) -> None:
        self._load()
        self._measures.pop(name)

    def get(self, name: str) -> Measure:
        self._load()
        try:
            return self._measures[name]
        except KeyError:
            raise UnknownMeasureError(
                f"unknown measure {name!r}; valid: {', '.join(sorted(self._measures))}") from None

    def select(self, include: str | list[str] = "all", exclude: list[str] = ()) -> list[Measure]:
        """Measures by name (``"all"`` for every one), in registration order; unknown names are errors."""
        self._load()
        for name in list(exclude) + ([] if include == "all" else list(include)):
            self.get(name)
        chosen = self._ordered() if include == "all" else [self._measures[n] for n in include]
        return [m for m in chosen if m.name not in set(exclude)]

    def __iter__(self) -> Iterator[Measure]:
        self._load()
        return iter(self._ordered())

    def __len__(self) -> int:
        self._load()
        return len(self._measures)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._measures

    def names(self) -> list[str]:
        self._load()
        return [m.name for m in self._ordered()]


BUILTIN_FAMILIES = tuple(f"measures.{m}" for m in (
    "size", "margins", "norms", "spectral", "heavy_tail", "optimization", "pacbayes", "sharpness", "batch_sharpness",
    "hessian", "duality", "phases", "flatness", "sgd_regularization", "sensitivity", "rank", "replicates",
    "relative_flatness", "margin_distribution"))
REGISTRY = Registry(BUILTIN_FAMILIES)


def _description(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n")[0].split())


def measure(name: str, *, needs: tuple[str, ...] = ("model",), sign: int = 1, reference: str,
            family: str, version: int = 1, oracle: bool = False, sample_size: str | None = None,
            invariances: tuple[str, ...] = (), seeded: bool = False, exact_invariances: bool | None = None,
            needs_label_noise: bool = False, registry: Registry | None = None) -> Callable:
    """Register ``fn(ctx) -> float | Value`` as a measure. The first docstring paragraph is its description;
    the docstring should carry the formula. ``sample_size``, ``invariances``, ``seeded``, ``exact_invariances``
    and ``needs_label_noise``: the module docstring."""
    bad = sorted(set(needs) - set(NEEDS))
    if bad:
        raise ValueError(f"measure {name!r}: unknown needs {bad}; valid: {', '.join(NEEDS)}")
    if sign not in (1, -1):
        raise ValueError(f"measure {name!r}: sign must be +1 or -1, got {sign}")
    if family not in FAMILIES:
        raise ValueError(f"measure {name!r}: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    if sample_size is not None and sample_size not in SAMPLE_SIZE:
        raise ValueError(f"measure {name!r}: sample_size must be one of {', '.join(SAMPLE_SIZE)} or None")
    if sample_size is not None and "train_data" not in needs:
        raise ValueError(f"measure {name!r}: the sample-size adjustment reads m from the training data, so "
                         f"needs must include 'train_data'")
    unknown = sorted(set(invariances) - set(INVARIANCES))
    if unknown:
        raise ValueError(f"measure {name!r}: unknown invariances {unknown}; valid: {', '.join(INVARIANCES)}")
    if "test_data" in needs and not oracle:
        raise ValueError(f"measure {name!r} needs test data, so it must be declared oracle=True")
    for key, flag in (("oracle", oracle), ("seeded", seeded), ("needs_label_noise", needs_label_noise)):
        if not isinstance(flag, bool):
            raise ValueError(f"measure {name!r}: {key} must be True or False, got {flag!r}")
    if exact_invariances is None:
        exact_invariances = not seeded
    if not isinstance(exact_invariances, bool):
        raise ValueError(f"measure {name!r}: exact_invariances must be True, False or None, got {exact_invariances!r}")
    if not (seeded or exact_invariances):
        raise ValueError(f"measure {name!r}: a measure that draws nothing (seeded=False) is exactly invariant; "
                         f"exact_invariances=False needs seeded=True")

    def register(fn: Callable) -> Callable:
        description = _description(fn)
        if sample_size is not None:
            description += f" Reported as {ADJUSTED[sample_size]} of that value v, m the training-set size."
        (REGISTRY if registry is None else registry).add(Measure(name, fn, frozenset(needs), sign, reference, family,
                                           description, version, oracle, sample_size,
                                           frozenset(invariances), seeded, exact_invariances, needs_label_noise))
        return fn

    return register


def is_finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)
