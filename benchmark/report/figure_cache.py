"""Which figures must be drawn again: a digest of the data each figure is drawn from, kept in one manifest.

A figures folder holds ``figures.json``: for every figure (its path relative to the folder) the digest of exactly
the data it was drawn from, the figure code and the versions of the libraries that render it. A figure is drawn
again when its file is missing, its digest differs, or the manifest is missing or unreadable; every other figure
is reused as it stands. Evaluating one new measure against a cached zoo then draws its scatter and the few
figures that rank every measure, not the dozens of scatters of the measures that did not change.

The digest is computed from values, not from object identities: DataFrames column by column (names, dtypes and
bytes), object columns value by value through ``repr``, so that the same tables give the same digest in every
process. It is conservative: a change of dtype with equal values draws the figure again, which costs time but
never shows a stale figure.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.files import write_text

MANIFEST = "figures.json"
FORMAT = 1


def code_version(*sources: Path, libraries: Iterable[str] = ()) -> str:
    """A digest of the source files that draw the figures and of the rendering libraries' versions: editing the
    figure code, or upgrading matplotlib, draws every figure again without anyone having to remember it."""
    h = hashlib.sha256()
    for source in sources:
        h.update(Path(source).read_bytes())
    for version in libraries:
        h.update(version.encode() + b"\0")
    return h.hexdigest()


def digest(*parts) -> str:
    """A hex digest of ``parts``: DataFrames, Series, arrays, lists, tuples, dicts and scalars, nested freely."""
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def _feed(h, value) -> None:
    if isinstance(value, pd.DataFrame):
        _tag(h, b"F", len(value.columns))
        for name in value.columns:
            _feed(h, str(name))
            _feed(h, value[name])
    elif isinstance(value, pd.Series):
        _feed(h, value.to_numpy())
    elif isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        data = np.ascontiguousarray(value)
        _tag(h, b"A" + data.dtype.str.encode() + repr(data.shape).encode(), data.nbytes)
        h.update(data.tobytes())
    elif isinstance(value, np.ndarray):
        _feed(h, value.tolist())
    elif isinstance(value, (list, tuple)):
        _tag(h, b"L", len(value))
        for item in value:
            _feed(h, item)
    elif isinstance(value, dict):
        _tag(h, b"D", len(value))
        for key in sorted(value, key=str):
            _feed(h, str(key))
            _feed(h, value[key])
    else:
        text = repr(value).encode()
        _tag(h, b"S", len(text))
        h.update(text)


def _tag(h, kind: bytes, n: int) -> None:
    h.update(kind + b"%d:" % n)


class Manifest:
    """The digests of the figures in ``folder`` as last drawn, read from its ``figures.json`` (empty when that is
    missing or unreadable: every figure is then drawn)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self.entries = self._read()

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        figures = data.get("figures") if isinstance(data, dict) and data.get("format") == FORMAT else None
        if not isinstance(figures, dict) or not all(isinstance(v, str) for v in figures.values()):
            return {}
        return dict(figures)

    def key(self, path: Path) -> str:
        return Path(path).relative_to(self.folder).as_posix()

    def stale(self, path: Path, digest: str) -> bool:
        """Whether the figure at ``path`` must be drawn: its file is missing or was drawn from other data."""
        return self.entries.get(self.key(path)) != digest or not Path(path).is_file()

    def drop(self, paths: Iterable[Path]) -> None:
        """Forget the figures at ``paths`` before drawing them again: an interrupted drawing then leaves no entry
        that vouches for a file it may have replaced."""
        gone = {self.key(p) for p in paths}
        if gone & self.entries.keys():
            self._write({k: v for k, v in self.entries.items() if k not in gone})

    def record(self, digests: dict[Path, str], complete: bool = False) -> None:
        """Record the ``digests`` of figures just drawn or checked; with ``complete`` they are every figure of the
        folder and the others are forgotten. Written only when something changed."""
        entries = {} if complete else dict(self.entries)
        entries.update({self.key(p): d for p, d in digests.items()})
        if entries != self.entries or not self.path.is_file():
            self._write(entries)

    def _write(self, entries: dict[str, str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": FORMAT, "figures": dict(sorted(entries.items()))}, indent=1)
        write_text(self.path, text + "\n")
        self.entries = entries
