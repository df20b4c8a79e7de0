"""Several models measured together: grouped Contexts that compute a shared intermediate with a many-model form
(``measures.context.many_form``) for every member at once, and the bookkeeping that attributes its cost.

A ``measures.Context`` computes one model alone. The measuring tasks group the Contexts of models that share an
architecture (``benchmark.measuring.jobs.group_key``): the first measure that asks one of them for such an
intermediate computes it for every member that lacks it, in one call, and the others find it ready. The time of
that call is split evenly: the caller records the part it spent on the others in ``lent``, and each other member
receives its part in ``charged`` when it first reads the value, so that each measure's recorded seconds are its
own model's share of what it computed (``benchmark.measuring.jobs.compute``).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from measures import Context


class Member(Context):
    """A Context that can be grouped with others (``group``), with the seconds it ``lent`` to its peers' shared
    values and was ``charged`` for theirs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._group: list[Member] = [self]  # models computing many-model shared intermediates together
        self._charges: dict[tuple, float] = {}  # seconds a peer spent on this model's shared values, by key
        self.lent = 0.0  # seconds this Context's calls spent on its peers' shared values
        self.charged = 0.0  # seconds its peers spent on the shared values it has read

    @staticmethod
    def group(contexts: Sequence["Member"]) -> None:
        """Let ``contexts`` (of different models) compute shared intermediates that have a many-model form
        together (:meth:`shared`). Each keeps its own values; :meth:`leave` drops one from its group."""
        members = list(contexts)
        for c in members:
            c._group = members

    def leave(self) -> None:
        """Leave the group and drop the shared intermediates (the model's measures are done)."""
        if self in self._group:
            self._group.remove(self)
        self._group, self._charges = [self], {}
        self.drop_shared()

    def shared(self, helper: Callable[..., Any], *args) -> Any:
        """``Context.shared``, computed for the whole group at once when ``helper`` has a many-model form."""
        key = self.shared_key(helper, *args)
        if not self.has_shared(key):
            many = getattr(helper, "many", None)
            peers = [c for c in self._group if c is not self and not c.has_shared(key)] if many else []
            if peers:
                start = time.perf_counter()
                with self.recording(f"ctx.shared({helper.__qualname__})") as reads:  # what the helper reads, of each
                    values = many([self, *peers], *args)
                spent = time.perf_counter() - start
                if values is not None:
                    done = [(c, v) for c, v in zip([self, *peers], values) if v is not NotImplemented]
                    share = spent / max(len(done), 1)
                    for c, v in done:
                        c.provide_shared(key, v, reads)
                        if c is not self:
                            c._charges[key] = share
                    self.lent += spent - (share if self.has_shared(key) else 0.0)
            return super().shared(helper, *args)
        value = super().shared(helper, *args)
        if key in self._charges:
            self.charged += self._charges.pop(key)
        return value

    @contextmanager
    def protect(self) -> Iterator[list[str]]:
        """``Context.protect``; a measure that changed its inputs drops the shared values, and their charges."""
        changed: list[str] = []
        try:
            with super().protect() as changed:
                yield changed
        finally:
            if changed:
                self._charges = {}


def costs(ctx: Context) -> tuple[float, float]:
    """(lent, charged) of a Context so far: (0, 0) for one that is no ``Member``."""
    return (ctx.lent, ctx.charged) if isinstance(ctx, Member) else (0.0, 0.0)
