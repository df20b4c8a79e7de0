"""Checkpoints checked once: the file facts of every checkpoint that passed ``Store.check_checkpoint``.

``genbench train`` and ``genbench measure`` check every stored checkpoint before they rely on it (it must load and
fit its model's architecture), which means reading every weight file of the zoo, and the datasets whose shapes the
architecture needs, on every run, even when nothing is left to train. A checkpoint whose file has not changed since
it passed cannot fail again, so ``store.root/cache/checked.json`` keeps, for each one that passed, its size, its
inode and its change time (``st_ctime_ns``, which every write, truncation, rename or ``touch`` advances and no user
can set back); a checkpoint is checked again when any of them differ. A store that cannot be written keeps no
record and checks everything, as before. Measuring loads each checkpoint it uses again, so a file that rots in
place without any change of its metadata still fails the measures of its model, with its path.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from benchmark.files import write_text

FILE = "checked.json"


def _facts(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_ino, st.st_ctime_ns]


class Checked:
    """The record of checkpoints that passed, for the store at ``root`` (read once; :meth:`save` writes it back)."""

    def __init__(self, root: Path, writable: bool):
        self.path = Path(root) / "cache" / FILE
        self.writable = writable
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8")) if writable else {}
        except (OSError, ValueError):
            entries = {}
        self.entries: dict = entries if isinstance(entries, dict) else {}
        self.changed = False

    def passed_before(self, model_id: str, files: list[Path]) -> bool:
        """Whether the checkpoint files of ``model_id`` are exactly those that passed before."""
        return self.entries.get(model_id) == [_facts(f) for f in files]

    def passed(self, model_id: str, files: list[Path]) -> None:
        self.entries[model_id] = [_facts(f) for f in files]
        self.changed = True

    def failed(self, model_id: str) -> None:
        self.changed |= self.entries.pop(model_id, None) is not None

    def save(self) -> None:
        if self.writable and self.changed:
            try:
                self.path.parent.mkdir(exist_ok=True)
                write_text(self.path, json.dumps(self.entries, separators=(",", ":")))
            except OSError:  # a full or read-only disk: the next run checks again
                pass
