"""Which figures must be drawn again: a digest of the data each figure is drawn from, kept in one manifest.

A figures folder holds ``figures.json``: for every figure (its path relative to the folder) the digest of exactly
the data it was drawn from, the figure code and the versions of the libraries that render it. A figure is drawn
again when its file is missing, its digest differs, or the manifest is missing or unreadable; every other figure
is reused as it stands. Evaluating one new measure against a cached zoo then draws its scatter and the few
figures that rank every measure, not the dozens of scatters of the measures that did not change.

The digest is the statistics cache's (``benchmark.evaluation.cache.digest``: values, not object identities; names,
dtypes and bytes). It is conservative: a change of dtype with equal values draws the figure again, which costs time
but never shows a stale figure.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from benchmark.evaluation.cache import digest, sources_digest
from benchmark.files import write_text

MANIFEST = "figures.json"
FORMAT = 1


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

    def stale(self, path: Path, drawn_from: str) -> bool:
        """Whether the figure at ``path`` must be drawn: its file is missing or was drawn from other data than the
        digest ``drawn_from``."""
        return self.entries.get(self.key(path)) != drawn_from or not Path(path).is_file()

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


__all__ = ["FORMAT", "MANIFEST", "Manifest", "digest", "sources_digest"]
