"""What a measure may ask about one trained model, and the shared intermediates computed once.

A ``Context`` wraps any ``nn.Module`` classifier (logits out) and the inputs a measure declares it needs:
initial weights, training data, training hyperparameters, the training history. Intermediate quantities
that several measures use (the layers' weight matrices, training logits and margins, the full-batch loss
and its Hessian-vector products) are properties computed on first use; helpers private to a measure family
share results through ``ctx.shared(helper, *args)``, which calls ``helper(ctx, *args)`` once per argument
tuple. Measures never modify the model: parameters are handled functionally (``ctx.loss(params)``).

    from measures import Context, REGISTRY
    ctx = Context(model, init_model=init, train=(x, y), hparams={"optimizer.lr": 0.1, "train.batch_size": 32})
    REGISTRY.get("path_norm")(ctx).value
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from measures import stacking
from measures.losses import fast_cross_entropy
from measures.seeding import generator


def many_form(helper: Callable[..., Any]) -> Callable:
    """Declare ``fn(contexts, *args) -> list`` the form of ``ctx.shared(helper, *args)`` for several models at
    once (one value per Context, in order), as ``helper.many``. ``fn`` returns ``NotImplemented`` in place of a
    value for a model it cannot include (that model then calls ``helper`` alone), or ``None`` instead of the list
    when it can include none; its values must equal ``helper``'s up to float rounding, which its tests show. A
    Context computes one model alone; the benchmark's grouped Contexts (``benchmark.measuring.many``) use it."""
    def declare(fn: Callable[..., list]) -> Callable[..., list]:
        helper.many = fn
        return fn
    return declare


class MissingInputError(ValueError):
    """A measure asked for an input (initial weights, training data, …) the Context was not given."""


class UndeclaredInputError(Exception):
    """A measure used an input that its ``needs`` does not declare. Not a ``MissingInputError``, which a measure
    may catch to fall back: an undeclared input is a mistake in the measure's declaration, never a fallback."""


# How a message names each input of ``measures.registry.NEEDS``.
INPUT_NAMES = {"model": "the model", "init_model": "the initial model", "train_data": "the training data",
               "hparams": "the hyperparameters", "history": "the training history", "test_data": "the test data",
               "replicates": "the seed replicates"}


class Scratch(dict):
    """A dict that a shared helper extends as later measures ask more of it (the Krylov basis that successive
    Lanczos solves grow). Changing it in place is its purpose, so ``Context.protect`` does not look inside it."""


# Pristine copies of the input tensors a guarded Context hands out (``Context.protect``), by the tensor's id, shared
# by every Context that holds the same tensor (the models of one dataset share its tensors), dropped with the tensor.
_PRISTINE: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
_WALK_ITEMS = 1024  # items of one container the guard looks into (beyond them: that the container holds the same)


def _module_state(m: nn.Module) -> tuple:
    return (m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
            tuple(map(id, m._parameters.values())), tuple(map(id, m._buffers.values())))


def _dict_state(d: dict) -> tuple:
    return tuple(d), tuple(map(id, d.values()))


def _list_state(items: list) -> tuple:
    return tuple(map(id, items))


def _array_state(a: np.ndarray) -> Any:
    return a.tobytes() if a.size <= 4096 else (a.shape, a.__array_interface__["data"][0])


def _fields_state(obj: Any) -> tuple:
    return tuple(id(getattr(obj, f.name, None)) for f in dataclasses.fields(obj))


class _Watch:
    """What ``Context.protect`` compares for one input or intermediate: every tensor reachable from it, by PyTorch's
    version counter (which every in-place operation advances), and every mutable container and module on the way,
    by what it holds (the identities of its items, a module's training mode, hooks, parameters and buffers; small
    NumPy arrays by their bytes). Collected once, when the value is given or computed, so that a check only reads
    the counters and states again. Immutable scalars cannot change, and a ``Scratch`` is meant to."""

    __slots__ = ("root", "tensors", "versions", "others", "states")

    def __init__(self, root: Any):
        self.root, self.tensors, self.others = root, [], []
        self._collect(root, 0)
        self.versions = [t._version for t in self.tensors]
        self.states = [state(o) for o, state in self.others]

    def _collect(self, obj: Any, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            self.tensors.append(obj)
        elif isinstance(obj, (str, int, float, bool, type(None), Scratch)):
            return
        elif isinstance(obj, nn.Module):
            if depth == 0:  # a module inside an intermediate is the model's own, watched as an input
                self.others += [(m, _module_state) for m in obj.modules()]
                self.tensors += [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, np.ndarray):
            self.others.append((obj, _array_state))
        elif depth > 6:
            return
        elif isinstance(obj, dict):
            self.others.append((obj, _dict_state))
            for v in list(obj.values())[:_WALK_ITEMS]:
                self._collect(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            if isinstance(obj, list):
                self.others.append((obj, _list_state))
            for v in obj[:_WALK_ITEMS]:
                self._collect(v, depth + 1)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self.others.append((obj, _fields_state))
            for f in dataclasses.fields(obj):
                self._collect(getattr(obj, f.name, None), depth + 1)

    def changed(self, now: Any) -> bool:
        """Whether ``now`` (the value held under the same name today) is not the value watched, as it was."""
        return (now is not self.root or [t._version for t in self.tensors] != self.versions
                or [state(o) for o, state in self.others] != self.states)


def _rows(history: Sequence[Mapping] | None) -> list[dict] | None:
    """A copy of a training history, row by row: the rows' values are numbers (immutable), so copying each row's
    dict is enough to keep the original from a measure that edits the one it is handed (a deep copy costs ~100×)."""
    return None if history is None else [dict(row) for row in history]


def _shared_name(key: tuple) -> str:
    """How a message names the shared value of ``key`` (helper module, qualname, args)."""
    return f"shared {key[1]}{key[2:] if len(key) > 2 else ''}"


def _pristine(t: torch.Tensor) -> torch.Tensor:
    """The copy of ``t`` kept the first time this was asked (``_PRISTINE``)."""
    entry = _PRISTINE.get(id(t))
    if entry is None or entry[0]() is not t:
        key = id(t)
        entry = _PRISTINE[key] = (weakref.ref(t, lambda _: _PRISTINE.pop(key, None)), t.detach().clone())
    return entry[1]


class derived(cached_property):
    """A ``cached_property`` of a Context: an intermediate derived from its inputs, computed on first use. It is
    watched (``_Watch``) from the moment it is computed, so that ``Context.protect`` sees a measure that changes it
    later, and it remembers the inputs it rests on, so that a measure that reads it later, cached, must declare
    them as if it computed it itself (``Context.running``). A data descriptor, so that every read passes here."""

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        name = self.attrname
        if name in instance.__dict__:
            instance._reuse(instance._rests.get(name, ()), f"ctx.{name}")
            return instance.__dict__[name]
        with instance.recording(f"ctx.{name}") as reads:
            value = super().__get__(instance, owner)
        instance._rests[name] = frozenset(reads)
        instance._born[name] = _Watch(value)
        return value

    def __set__(self, instance, value) -> None:
        instance.__dict__[self.attrname] = value
        instance._rests.pop(self.attrname, None)


@functools.cache
def _cached_names(cls: type) -> frozenset[str]:
    """The ``cached_property`` attributes of a Context class: intermediates derived from its inputs."""
    return frozenset(k for c in cls.__mro__ for k, v in vars(c).items() if isinstance(v, cached_property))


@dataclass(frozen=True)
class Layer:
    """A parametrised linear or convolutional layer, in forward order."""
    name: str  # module path, e.g. "net.1"
    module: nn.Module
    weight: str  # parameter name of the weight, e.g. "net.1.weight"
    bias: str | None


LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


class Context:
    def __init__(self, model: nn.Module, *, init_model: nn.Module | None = None,
                 train: tuple[torch.Tensor, torch.Tensor] | None = None,
                 test: tuple[torch.Tensor, torch.Tensor] | None = None,
                 hparams: Mapping[str, Any] | None = None, history: Sequence[Mapping] | None = None,
                 replicates: Sequence[nn.Module] | Callable[[], Sequence[nn.Module]] | None = None,
                 seed: int = 0, chunk: int = 8192, extras: Mapping[str, Any] | None = None):
        """``train``/``test``: (inputs, integer labels). ``hparams``: flat dotted keys such as
        ``optimizer.lr``, ``train.batch_size``, ``optimizer.weight_decay``. ``history``: per-epoch rows with
        ``step`` and ``train_loss``. ``replicates``: the other seeds of the same configuration (trained models
        of the same architecture on the same data), or a function returning them, called on first use.
        ``extras``: anything else a measure documents it reads (e.g. the mislabeled mask). ``chunk``: samples
        per forward pass in full-dataset sums."""
        self._model = copy.deepcopy(model).eval()
        self._init_model = copy.deepcopy(init_model).eval() if init_model is not None else None
        self.device = next(self._model.parameters()).device
        self._train = tuple(t.to(self.device) for t in train) if train is not None else None
        self._test = tuple(t.to(self.device) for t in test) if test is not None else None
        self._hparams = dict(hparams or {})
        self._history = list(history) if history is not None else None
        self._replicates = replicates
        self.seed = seed
        self.chunk = chunk
        self.extras = dict(extras or {})
        self._shared: dict[tuple, Any] = {}
        self._pristine: dict[str, Any] | None = None  # the inputs as given, kept by the first protect()
        self._born: dict[str, _Watch] = {}  # each input and intermediate, watched from when it was given or computed
        self._running: list[tuple[str, frozenset[str]]] = []  # the measures running on this Context, and their needs
        self._reads: list[tuple[str, set[str]]] = []  # the intermediates being computed, and the inputs they read
        self._rests: dict[str, frozenset[str]] = {}  # the inputs each intermediate was computed from

    # ----------------------------------------------------------------------------------------- declared inputs
    @contextmanager
    def running(self, name: str, needs: frozenset[str]) -> Iterator[None]:
        """Run measure ``name`` on this Context: inside, reading an input outside ``needs`` (directly, or through an
        intermediate that rests on it, whoever computed it first) raises ``UndeclaredInputError``. A measure
        called inside another must keep within both declarations."""
        self._running.append((name, frozenset(needs)))
        try:
            yield
        finally:
            self._running.pop()

    @contextmanager
    def recording(self, what: str) -> Iterator[set[str]]:
        """Collect the inputs read while ``what`` (an intermediate) is computed."""
        reads: set[str] = set()
        self._reads.append((what, reads))
        try:
            yield reads
        finally:
            self._reads.pop()

    def _use(self, need: str, what: str, rests: bool = False) -> None:
        """Note that input ``need`` was read (through ``what``), and check it against the running measures."""
        for _, reads in self._reads:
            reads.add(need)
        for name, needs in reversed(self._running):
            if need not in needs:
                used = self._reads[0][0] if self._reads else what
                how = f"{used}, which rests on {INPUT_NAMES[need]}," if rests or used != what else used
                raise UndeclaredInputError(f"measure {name!r} uses {how} but does not declare "
                                           f"needs=(..., {need!r})")

    def _reuse(self, rests: frozenset[str] | tuple, what: str) -> None:
        """A cached intermediate read again: the inputs it rests on count as read now."""
        if self._running or self._reads:
            for need in sorted(rests):
                self._use(need, what, rests=True)

    def _need(self, value, what: str):
        if value is None:
            raise MissingInputError(f"this measure needs {what}, which the Context was not given")
        return value

    @property
    def model(self) -> nn.Module:
        self._use("model", "ctx.model")
        return self._model

    @property
    def init_model(self) -> nn.Module | None:
        self._use("init_model", "ctx.init_model")
        return self._init_model

    @property
    def x_train(self) -> torch.Tensor:
        self._use("train_data", "ctx.x_train")
        return self._need(self._train, "training data (train=(x, y))")[0]

    @property
    def y_train(self) -> torch.Tensor:
        self._use("train_data", "ctx.y_train")
        return self._need(self._train, "training data (train=(x, y))")[1]

    @property
    def x_test(self) -> torch.Tensor:
        self._use("test_data", "ctx.x_test")
        return self._need(self._test, "test data (test=(x, y))")[0]

    @property
    def y_test(self) -> torch.Tensor:
        self._use("test_data", "ctx.y_test")
        return self._need(self._test, "test data (test=(x, y))")[1]

    @property
    def history(self) -> list[Mapping]:
        self._use("history", "ctx.history")
        return self._need(self._history, "the training history (history=[...])")

    @derived
    def replicate_states(self) -> list[dict[str, torch.Tensor]]:
        """Each replicate (``replicates=``) as its parameters and floating-point buffers (BatchNorm's running
        statistics), detached, by name; an architecture that differs from this model's is an error."""
        self._use("replicates", "ctx.replicate_params")
        given = self._need(self._replicates, "the seed replicates of this configuration (replicates=[...])")
        mine = {k: v.shape for k, v in [*self.params.items(), *self.buffers.items()]}
        out = [{k: v.detach().to(self.device) for k, v in [*m.named_parameters(), *m.named_buffers()]
                if k in self.params or v.is_floating_point()} for m in (given() if callable(given) else given)]
        if any({k: v.shape for k, v in p.items()} != mine for p in out):
            raise ValueError("a replicate's parameters differ in name or shape from this model's")
        return out

    @derived
    def replicate_params(self) -> list[dict[str, torch.Tensor]]:
        """The parameters of each replicate, by the names of ``params`` (``replicate_states``)."""
        return [{k: state[k] for k in self.params} for state in self.replicate_states]

    @property
    def num_classes(self) -> int:
        return int(self.train_logits.shape[1])

    def hp(self, key: str) -> Any:
        """A training hyperparameter by dotted key, e.g. ``ctx.hp("optimizer.lr")``."""
        self._use("hparams", f"ctx.hp({key!r})")
        if key not in self._hparams:
            raise MissingInputError(f"this measure needs the hyperparameter {key!r}; the Context has "
                                    f"{sorted(self._hparams) or 'none'}")
        return self._hparams[key]

    def generator(self, tag: str) -> torch.Generator:
        """A generator seeded by (ctx.seed, tag): each measure's randomness is independent of the others'
        and of the order they run in."""
        return generator(self.seed, tag)

    def shared(self, helper: Callable[..., Any], *args) -> Any:
        """``helper(ctx, *args)``, computed once per (helper, args) for this model; the inputs it read count as
        read by every measure that asks for it (``running``)."""
        key = self.shared_key(helper, *args)
        what = f"ctx.shared({helper.__qualname__})"
        if key not in self._shared:
            with self.recording(what) as reads:
                value = helper(self, *args)
            self.provide_shared(key, value, reads)
            return value
        self._reuse(self._rests[_shared_name(key)], what)
        return self._shared[key]

    @staticmethod
    def shared_key(helper: Callable[..., Any], *args) -> tuple:
        """The key of ``ctx.shared(helper, *args)``: (helper module, qualname, *args)."""
        return (helper.__module__, helper.__qualname__, *args)

    def has_shared(self, key: tuple) -> bool:
        return key in self._shared

    def provide_shared(self, key: tuple, value: Any, rests: set[str] | frozenset[str]) -> None:
        """Store the shared value of ``key`` (computed here, or for several models at once), watched from now on
        (``protect``), with the inputs ``rests`` it was computed from."""
        self._shared[key] = value
        self._born[_shared_name(key)] = _Watch(value)
        self._rests[_shared_name(key)] = frozenset(rests)

    def drop_shared(self) -> None:
        """Drop the shared intermediates and stop watching the derived ones (the model's measures are done)."""
        self._shared = {}
        self._born = {k: v for k, v in self._born.items() if k in self._inputs()}
        self._rests = {k: v for k, v in self._rests.items() if k in _cached_names(type(self))}

    # ----------------------------------------------------------------------------------------- protection
    def _inputs(self) -> dict[str, Any]:
        """The inputs a measure could change in place, by the name a message gives them."""
        out: dict[str, Any] = {"the model": self._model, "the initial model": self._init_model}
        for part, pair in (("train", self._train), ("test", self._test)):
            if pair is not None:
                out[f"x_{part}"], out[f"y_{part}"] = pair
        out.update({f"extras[{k!r}]": v for k, v in self.extras.items()})
        return out

    def _caches(self) -> dict[str, Any]:
        """The intermediates derived so far: cached properties and ``shared`` values."""
        out = {name: self.__dict__[name] for name in _cached_names(type(self)) if name in self.__dict__}
        out.update({_shared_name(key): v for key, v in self._shared.items()})
        return out

    @contextmanager
    def protect(self) -> Iterator[list[str]]:
        """Run one measure so that it cannot change what the measures after it see. Yields a list that, on exit,
        names what the measure changed in place (empty when nothing): the model or the initial model (weights,
        buffers, modules, hooks, training mode), the data, the extras, the history, the hyperparameters, or an
        intermediate (``margins``, a ``shared`` value), whether it existed before or the measure computed it.
        Whatever changed is put back: the inputs from pristine copies kept on first use (one copy per tensor, shared
        by the Contexts that hold it), and every derived intermediate is dropped, to be computed again from the
        restored inputs.

        Each input and intermediate is compared with how it was when it was given or computed (``_Watch``).
        Detection rests on PyTorch's version counter, which every in-place tensor operation advances, and on the
        identity of every tensor, module and container; writes that bypass the counter (through ``.data`` or a
        NumPy view of a tensor) are not seen."""
        if self._pristine is None:
            for t in self._inputs().values():
                if isinstance(t, torch.Tensor):
                    _pristine(t)
            self._pristine = {"model": copy.deepcopy(self._model), "init_model": copy.deepcopy(self._init_model),
                              "history": _rows(self._history), "hparams": copy.deepcopy(self._hparams),
                              "extras": dict(self.extras), "train": self._train, "test": self._test}
            self._born.update({name: _Watch(v) for name, v in self._inputs().items()})
        changed: list[str] = []
        try:
            yield changed
        finally:
            p = self._pristine
            now = {**self._inputs(), **self._caches()}
            changed += [name for name, value in now.items() if name in self._born and self._born[name].changed(value)]
            changed += [what for what, now, then in (("the history", self._history, p["history"]),
                                                     ("the hyperparameters", self._hparams, p["hparams"]),
                                                     ("extras", set(self.extras), set(p["extras"])))
                        if now != then]
            if changed:
                self._restore()

    def _restore(self) -> None:
        """Put every input back as it was given and drop every derived intermediate."""
        p = self._pristine
        with torch.no_grad():
            for t in [*(p["train"] or ()), *(p["test"] or ()), *p["extras"].values()]:
                ref = _pristine(t) if isinstance(t, torch.Tensor) else None
                if ref is not None and not torch.equal(t, ref):
                    if t.shape != ref.shape:
                        t.resize_(ref.shape)
                    t.copy_(ref)
        self._model, self._init_model = copy.deepcopy(p["model"]), copy.deepcopy(p["init_model"])
        self._train, self._test, self.extras = p["train"], p["test"], dict(p["extras"])
        self._history, self._hparams = _rows(p["history"]), copy.deepcopy(p["hparams"])
        for name in _cached_names(type(self)):
            self.__dict__.pop(name, None)
        self._shared, self._rests = {}, {}
        self._born = {name: _Watch(v) for name, v in self._inputs().items()}

    # ----------------------------------------------------------------------------------------- weights
    @derived
    def params(self) -> dict[str, torch.Tensor]:
        """Trained parameters, detached, by name."""
        return {k: v.detach() for k, v in self.model.named_parameters()}

    @derived
    def buffers(self) -> dict[str, torch.Tensor]:
        """The floating-point buffers (BatchNorm's running statistics), detached: read in eval mode, never updated."""
        return {k: v.detach() for k, v in self.model.named_buffers() if v.is_floating_point()}

    @derived
    def init_params(self) -> dict[str, torch.Tensor]:
        m = self._need(self.init_model, "the initial weights (init_model=...)")
        return {k: v.detach().to(self.device) for k, v in m.named_parameters()}

    @derived
    def layers(self) -> list[Layer]:
        """Linear and convolutional layers in module order (the forward order of a Sequential)."""
        out = []
        for name, mod in self.model.named_modules():
            if isinstance(mod, LAYER_TYPES):
                prefix = f"{name}." if name else ""
                out.append(Layer(name, mod, prefix + "weight", prefix + "bias" if mod.bias is not None else None))
        if not out:
            raise ValueError("the model has no Linear or Conv layers")
        return out

    @derived
    def weights(self) -> list[torch.Tensor]:
        """Each layer's weight tensor (conv kernels keep their shape)."""
        return [self.params[layer.weight] for layer in self.layers]

    @derived
    def init_weights(self) -> list[torch.Tensor]:
        return [self.init_params[layer.weight] for layer in self.layers]

    @staticmethod
    def matrix(w: torch.Tensor) -> torch.Tensor:
        """A weight as a matrix: Linear (out, in) as is, conv (out, in, *k) reshaped to (out, in·k)."""
        return w.reshape(w.shape[0], -1)

    @derived
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def flatten(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[k].reshape(-1) for k in self.params])

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for k, p in self.params.items():
            out[k] = vec[i:i + p.numel()].view_as(p)
            i += p.numel()
        return out

    def unflatten_rows(self, flats: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of ``flats`` (C, params), C flat parameter vectors, as views ``(C, *shape)`` by name."""
        sizes = [p.numel() for p in self.params.values()]
        return {k: t.view(len(flats), *p.shape)
                for (k, p), t in zip(self.params.items(), flats.split(sizes, 1))}

    @derived
    def _copies_program(self) -> stacking.Program | None:
        """The stacked recipe of the model (:mod:`measures.stacking`) if its pass gives the model's own logits on
        a few training samples, else None (then :meth:`copies_logits` uses ``vmap``)."""
        prog = stacking.program(self.model)
        if prog is None or self._train is None:
            return None
        x = self._train[0][:8]  # a check of the recipe, not a use of the training data
        with torch.no_grad():
            got = stacking.forward_copies(prog, {k: v[None] for k, v in self.params.items()}, x, shared=True)[0]
            want = self.model(x)
        return prog if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5) else None

    def copies_logits(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, shared: bool = True
                      ) -> torch.Tensor:
        """Logits ``(C, B, classes)`` of C parameter sets of the model (``params`` by name, each ``(C, *shape)``)
        on ``x``: ``(B, ...)`` for every copy when ``shared``, else ``(C, B, ...)``. The zoo's MLPs go through
        :func:`measures.stacking.forward_copies` (checked once against the model), a network with convolutions
        through ``functional_call`` copy by copy, any other model through ``vmap(functional_call)``; all agree up
        to float rounding. For the zoo's conv nets on one core, the loop took 2.5–6.6× less time than ``vmap``
        (whose batching rule makes one grouped convolution of all copies) and 1.5–4× less than the stacked
        grouped convolution of :mod:`measures.stacking`: 16 copies on 1,000–2,000 images of 8×8 or 14×14."""
        prog = self._copies_program
        if prog is not None:
            return stacking.forward_copies(prog, params, x, shared)
        if self._copy_by_copy():  # one copy at a time: vmap's batched convolution is the slower way (docstring)
            count = next(iter(params.values())).shape[0]
            return torch.stack([functional_call(self.model, {k: v[c] for k, v in params.items()},
                                                (x if shared else x[c],)) for c in range(count)])
        return vmap(lambda p, xb: functional_call(self.model, p, (xb,)),
                    in_dims=(0, None if shared else 0))(dict(params), x)

    def _copy_by_copy(self) -> bool:
        return self._copies_program is None and any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in self.model.modules())

    def copies_step(self, copies: int) -> int:
        """Samples per :meth:`copies_logits` call of ``copies`` copies that keep its activations within those of
        one ``chunk``-sample forward pass: ``chunk`` when the copies run one at a time, else ``chunk // copies``."""
        return self.chunk if self._copy_by_copy() else max(1, self.chunk // copies)

    # ----------------------------------------------------------------------------------------- outputs
    def forward(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of the model (eval mode) with the given parameters (default: the trained ones)."""
        if params is None:
            return self.model(x)
        return functional_call(self.model, dict(params), (x,))

    def logits(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.forward(x[i:i + self.chunk], params) for i in range(0, len(x), self.chunk)])

    @derived
    def train_logits(self) -> torch.Tensor:
        return self.logits(self.x_train)  # (n, classes)

    @derived
    def margins(self) -> torch.Tensor:
        """Output margin of each training sample, f_y(x) − max_{j≠y} f_j(x); negative when misclassified."""
        z = self.train_logits
        true = z.gather(1, self.y_train[:, None]).squeeze(1)
        other = z.scatter(1, self.y_train[:, None], float("-inf")).max(1).values
        return true - other

    @derived
    def train_loss(self) -> float:
        return fast_cross_entropy(self.train_logits, self.y_train).item()

    @derived
    def train_error(self) -> float:
        return (self.train_logits.argmax(1) != self.y_train).float().mean().item()

    def loss(self, params: Mapping[str, torch.Tensor] | None = None, x: torch.Tensor | None = None,
             y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over (x, y) (default: the whole training set) as a differentiable scalar."""
        x = self.x_train if x is None else x
        y = self.y_train if y is None else y
        params = self.params if params is None else params
        total = sum(fast_cross_entropy(self.forward(x[i:i + self.chunk], params), y[i:i + self.chunk],
                                    reduction="sum") for i in range(0, len(x), self.chunk))
        return total / len(x)

    # ----------------------------------------------------------------------------------------- curvature
    def hvp(self, vec: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        """Hessian-vector product H·v of the full training loss, with respect to the parameters ``names``
        (default: all), as flat vectors. Double backward over the whole training set, chunked."""
        names = list(self.params) if names is None else list(names)
        base = dict(self.params)
        sub = [base[k].clone().requires_grad_(True) for k in names]
        sizes = [p.numel() for p in sub]
        vs = [v.view_as(p) for v, p in zip(torch.split(vec, sizes), sub)]
        x, y = self.x_train, self.y_train
        out = torch.zeros_like(vec)
        for i in range(0, len(x), self.chunk):
            params = {**base, **dict(zip(names, sub))}
            loss = fast_cross_entropy(self.forward(x[i:i + self.chunk], params), y[i:i + self.chunk],
                                   reduction="sum") / len(x)
            grads = torch.autograd.grad(loss, sub, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vs))
            out += torch.cat([h.reshape(-1) for h in torch.autograd.grad(dot, sub)])
        return out
