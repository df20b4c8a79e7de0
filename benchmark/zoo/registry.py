"""Registries of the zoo's components (datasets, architectures, optimizers).

A component is declared by name, with the hyperparameters of its group that it reads and where its code is:

    MODELS.declare("mlp", "benchmark.zoo.models:MLP", uses=("depth", "width", "dropout", "bias", "init_scale"))

The built-in components are declared at the bottom of this module, which imports neither torch nor their code:
a config is checked (names, the fields each component uses, a model's id) in well under a second, and the code
is imported the first time a component is built. A component of one's own can also be registered with a decorator
where it is defined (``@MODELS.register("mine", uses=(...))``); it exists once that module is imported.

``uses`` names the hyperparameters of the component's group that it reads (``None``: all of them): only those
enter a model's id, so a setting a component ignores (momentum for plain SGD) can never split one model into
two. Declaring a name twice is an error; an unknown name lists the valid ones.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from benchmark.errors import HParamsError


@dataclass(frozen=True)
class Component:
    name: str
    target: str | Callable[..., Any]  # "module:attribute" (imported when built), or the callable itself
    uses: tuple[str, ...] | None  # None: every field of the group
    family: str = ""  # an architecture's family, the suites' unit of comparison (default: its name)

    @property
    def build(self) -> Callable[..., Any]:
        """The component's code: a class or a function (imports its module the first time)."""
        if callable(self.target):
            return self.target
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    @property
    def description(self) -> str:
        """The first paragraph of the code's docstring."""
        doc = (self.build.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(doc.split())


class ComponentRegistry:
    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group  # "dataset", and its config group "dataset"
        self._items: dict[str, Component] = {}

    def declare(self, name: str, target: str | Callable[..., Any], *, uses: tuple[str, ...] | None = None,
                family: str | None = None) -> None:
        """Add the component ``name`` whose code is ``target`` ("module:attribute", or a callable). ``family``: an
        architecture's family (``MLP``, ``conv``, ``BatchNorm conv``), which a suite's cross-task view groups its
        tasks by; None: the component's own name."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is declared twice ({self._items[name].target} and {target})")
        self._items[name] = Component(name, target, None if uses is None else tuple(uses), family or name)

    def register(self, name: str, *, uses: tuple[str, ...] | None = None, family: str | None = None) -> Callable:
        """``declare`` as a decorator, for a component defined in a module of one's own."""
        def add(build: Callable) -> Callable:
            self.declare(name, build, uses=uses, family=family)
            return build
        return add

    def get(self, name: str) -> Component:
        if name not in self._items:
            raise HParamsError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """In declaration order."""
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Component]:
        return iter(self._items.values())


DATASETS = ComponentRegistry("dataset", "dataset")
MODELS = ComponentRegistry("model", "model")
OPTIMIZERS = ComponentRegistry("optimizer", "optimizer")

# The built-in components. A dataset's code is ``(root, download) -> Pool``; an architecture's a class taking
# ``(in_shape, num_classes, **its model.* fields)``; an optimizer's ``(params, **its optimizer.* fields)``.
TORCHVISION = {"mnist": "MNIST", "cifar10": "CIFAR10", "svhn": "SVHN"}
DATASETS.declare("mnist1d", "benchmark.zoo.datasets:mnist1d_pool")
DATASETS.declare("mnist5k", "benchmark.zoo.datasets:mnist5k_pool")
DATASETS.declare("digits", "benchmark.zoo.datasets:digits_pool")
DATASETS.declare("fashion", "benchmark.zoo.datasets:fashion_pool")
for _name in TORCHVISION:
    DATASETS.declare(_name, f"benchmark.zoo.datasets:{_name}_pool")
ARCHITECTURE = ("depth", "width", "dropout", "bias", "init_scale")  # the model.* fields every architecture uses
MODELS.declare("mlp", "benchmark.zoo.models:MLP", uses=ARCHITECTURE, family="MLP")
MODELS.declare("cnn", "benchmark.zoo.models:ConvNet", uses=ARCHITECTURE, family="conv")
# BatchNorm makes the weights that feed it scale-free, which moves the norm, sharpness and PAC-Bayes measures:
# the BatchNorm conv net and the residual net (whose blocks all normalise) are one family
MODELS.declare("cnn_bn", "benchmark.zoo.models:ConvBNNet", uses=ARCHITECTURE, family="BatchNorm conv")
MODELS.declare("resnet", "benchmark.zoo.models:ResNet", uses=ARCHITECTURE, family="BatchNorm conv")
OPTIMIZERS.declare("sgd", "benchmark.zoo.optimizers:sgd", uses=("lr", "weight_decay"))
OPTIMIZERS.declare("momentum", "benchmark.zoo.optimizers:momentum", uses=("lr", "momentum", "weight_decay"))
OPTIMIZERS.declare("adam", "benchmark.zoo.optimizers:adam", uses=("lr", "weight_decay"))
