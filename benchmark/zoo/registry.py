"""Registries of the zoo's components (datasets, architectures, optimizers), filled by decorators.

    @MODELS.register("mlp", uses=("depth", "width", "dropout", "bias", "init_scale"))
    class MLP(nn.Module): ...

``uses`` names the hyperparameters of the component's group that it reads (``None``: all of them): only those
enter a model's id, so a setting a component ignores (momentum for plain SGD) can never split one model into
two. Registering a name twice is an error; an unknown name lists the valid ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from benchmark.errors import HParamsError


@dataclass(frozen=True)
class Component:
    name: str
    build: Callable[..., Any]
    uses: tuple[str, ...] | None  # None: every field of the group
    description: str


class ComponentRegistry:
    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group  # "dataset", and its config group "dataset"
        self._items: dict[str, Component] = {}

    def register(self, name: str, *, uses: tuple[str, ...] | None = None) -> Callable:
        def add(build: Callable) -> Callable:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice "
                                 f"({self._items[name].build.__qualname__} and {build.__qualname__})")
            doc = (build.__doc__ or "").strip().split("\n\n")[0]
            self._items[name] = Component(name, build, None if uses is None else tuple(uses), " ".join(doc.split()))
            return build
        return add

    def get(self, name: str) -> Component:
        if name not in self._items:
            raise HParamsError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """In registration order."""
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Component]:
        return iter(self._items.values())


DATASETS = ComponentRegistry("dataset", "dataset")
MODELS = ComponentRegistry("model", "model")
OPTIMIZERS = ComponentRegistry("optimizer", "optimizer")
