"""What genbench's child processes have in common: they start from the ``forkserver`` (a clean interpreter, safe
after torch has started its threads) and never import the user's ``__main__`` module.

A leaf module: it imports nothing of genbench.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import sys
from typing import Iterator, Sequence

# what the measure workers' fork server imports once (``benchmark.measuring.isolation``): torch and every measure
MEASURE_PRELOAD = ["benchmark.measuring.preload"]


@contextlib.contextmanager
def main_not_imported() -> Iterator[None]:
    """Start child processes without multiprocessing importing the ``__main__`` module in them: the children need
    nothing of it, and a user's script without an ``if __name__ == "__main__":`` guard would otherwise run again in
    every child (as joblib's workers, which genbench used before, never did). Only while a child starts: its
    preparation data is taken then."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__spec__ = None
            main.__dict__.pop("__file__", None)
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def start_forkserver(preload: Sequence[str] = tuple(MEASURE_PRELOAD)) -> None:
    """Start multiprocessing's fork server now, unless it runs already, importing ``preload`` (the measure
    workers' modules: torch and every measure family, seconds) while the caller gets on with its own work; the
    first child then forks at once. It ends with this process."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
    with main_not_imported():
        multiprocessing.forkserver.ensure_running()
