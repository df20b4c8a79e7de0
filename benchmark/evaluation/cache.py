"""A cache of the leaderboard's statistics, so that scoring one new measure against a stored zoo computes only that
measure's statistics.

Every cached result is filed under a digest (SHA-256) of everything it depends on: the values it was computed from
(a measure's column, the zoo's hyperparameters and metrics in the order the statistics see them), the evaluation
settings (axes, bootstrap draws and seed, ...) and the code that computes it (:func:`code_version`: the source of
the statistics modules and the versions of numpy, scipy and pandas). A changed input therefore never meets an old
result: it has another key. Nothing is ever looked up by name alone.

The cache is one SQLite file (``<store>/cache/statistics.sqlite`` by default). A board records the zoo and settings
it was last evaluated with, so that a run can say in one line why it recomputes everything (:meth:`StatsCache.why`);
after each board, the entries it no longer uses are dropped (:meth:`StatsCache.prune`), so the file stays the size of
what the boards hold. Where the file cannot be written (a read-only disk), the cache lives in memory for the run and
says so once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

log = logging.getLogger("genbench")

FILE = "statistics.sqlite"
_SOURCES = ("leaderboard.py", "cache.py", "stats")  # under benchmark/evaluation/: the code of every cached statistic
_code_version: str | None = None


def sources_digest(paths, *extra: str) -> str:
    """A digest of the files at ``paths`` (names and contents) and of ``extra`` strings (library versions): the
    version of the code that computes a cached result."""
    h = hashlib.sha256()
    for f in paths:
        f = Path(f)
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for text in extra:
        h.update(text.encode() + b"\0")
    return h.hexdigest()


def code_version() -> str:
    """A digest of the statistics' source files and of the numerical libraries' versions: a change to either is a
    change of every cached result."""
    global _code_version
    if _code_version is None:
        import scipy
        here = Path(__file__).resolve().parent
        files = [f for name in _SOURCES for f in (sorted((here / name).rglob("*.py")) if (here / name).is_dir()
                                                   else [here / name])]
        _code_version = sources_digest(files, f"numpy {np.__version__}", f"scipy {scipy.__version__}",
                                       f"pandas {pd.__version__}")
    return _code_version


def _feed(h, x) -> None:
    """Add ``x`` to the hash ``h``, typed, so that values of different types or shapes never collide."""
    if isinstance(x, pd.DataFrame):
        h.update(b"F%d:" % len(x.columns))
        for name in x.columns:
            _feed(h, str(name))
            _feed(h, x[name])
    elif isinstance(x, pd.Series):
        _feed(h, x.to_numpy())
    elif isinstance(x, np.ndarray) and x.dtype.kind in "biufcmM":
        h.update(f"A{x.dtype.str}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    elif isinstance(x, np.ndarray):
        h.update(f"O{x.shape}".encode())
        _feed(h, x.ravel().tolist())
    elif isinstance(x, (list, tuple)):
        h.update(b"L%d:" % len(x))
        for v in x:
            _feed(h, v)
    elif isinstance(x, dict):
        _feed(h, sorted((str(k), v) for k, v in x.items()))
    else:
        text = f"{type(x).__name__}:{x!r}".encode()
        h.update(b"S%d:" % len(text) + text)


def digest(*parts) -> str:
    """The SHA-256 of ``parts`` (tables, columns, arrays, lists, dicts and scalars, nested freely), as hex: computed
    from values, never from object identities, so the same data gives the same digest in every process."""
    h = hashlib.sha256()
    _feed(h, list(parts))
    return h.hexdigest()


def zoo_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """What a statistic sees of the zoo besides the measure it ranks: every column but the measures' (``measure.*``,
    ``early.*``)."""
    return frame[[c for c in frame.columns if not str(c).startswith(("measure.", "early."))]]


class StatsCache:
    """Results of the statistics, keyed by :func:`digest`; ``path`` None keeps them in memory only.

    ``memo(kind, key, compute)`` returns the result filed under ``key`` or computes, files and returns it; the
    counts of reused and computed results per kind are in ``reused`` and ``computed``."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.memory: dict[str, bytes] = {}
        self.used: set[str] = set()
        self.reused: Counter = Counter()
        self.computed: Counter = Counter()
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT, "
                                 "board TEXT, value BLOB, used REAL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS boards (name TEXT PRIMARY KEY, state TEXT)")
            except (OSError, sqlite3.Error) as err:
                log.warning("statistics cache %s cannot be written (%s); computing without it", self.path, err)
                self._db = None
        self.board = ""

    # ------------------------------------------------------------------ results
    def get(self, key: str) -> Any | None:
        """The result filed under ``key``, or None."""
        blob = self.memory.get(key)
        if blob is None and self._db is not None:
            row = self._db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
            blob = None if row is None else row[0]
        if blob is None:
            return None
        self.used.add(key)
        return pickle.loads(blob)

    def put(self, key: str, kind: str, value: Any) -> None:
        """File ``value`` under ``key``."""
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self.memory[key] = blob
        self.used.add(key)
        if self._db is not None:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                             (key, kind, self.board, blob, time.time()))

    def memo(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """The result under ``key``; computed by ``compute()`` and filed when there is none."""
        found = self.get(key)
        if found is not None:
            self.reused[kind] += 1
            return found
        value = compute()
        self.put(key, kind, value)
        self.computed[kind] += 1
        return value

    # ------------------------------------------------------------------ boards
    def start(self, board: str, state: dict) -> str | None:
        """Begin evaluating ``board`` with ``state`` (plain values: the zoo's digest and size, the settings, the
        code version); returns the one line that says why the cache cannot serve it (:meth:`why`), or None."""
        self.board, self.used = board, set()
        self.reused, self.computed = Counter(), Counter()
        if self._db is None:
            return None
        row = self._db.execute("SELECT state FROM boards WHERE name = ?", (board,)).fetchone()
        self._db.execute("INSERT OR REPLACE INTO boards VALUES (?, ?)", (board, json.dumps(state)))
        return None if row is None else self.why(json.loads(row[0]), state)

    @staticmethod
    def why(old: dict, new: dict) -> str | None:
        """What changed between two states of a board that keeps every cached statistic from serving it, in words;
        None when nothing did."""
        changes = []
        if old.get("zoo") != new.get("zoo"):
            changes.append(f"the zoo changed ({old.get('models')} → {new.get('models')} models)"
                           if old.get("models") != new.get("models") else "the zoo's models or metrics changed")
        settings = [f"{k} {old['settings'].get(k)!r} → {v!r}" for k, v in new.get("settings", {}).items()
                    if old.get("settings", {}).get(k) != v]
        if settings:
            changes.append("the evaluation settings changed (" + ", ".join(settings) + ")")
        if old.get("code") != new.get("code"):
            changes.append("genbench's statistics code or numerical libraries changed")
        return "; ".join(changes) or None

    def prune(self) -> int:
        """Drop this board's entries that its evaluation did not use; how many."""
        if self._db is None or not self.board:
            return 0
        keys = [k for (k,) in self._db.execute("SELECT key FROM results WHERE board = ?", (self.board,))]
        stale = [(k,) for k in keys if k not in self.used]
        self._db.executemany("DELETE FROM results WHERE key = ?", stale)
        return len(stale)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


__all__ = ["FILE", "StatsCache", "code_version", "digest", "sources_digest", "zoo_columns"]
