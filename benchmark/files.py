"""Atomic file writes: a reader, or a rerun after an interruption, sees the old file or the whole new one.

A leaf module: it imports nothing of genbench.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into ``<path>.<pid>.tmp``, fsync it, then rename it onto ``path``. An interruption (an
    error, Ctrl-C) removes the temporary file; one left by a killed process carries its pid, so the store can
    tell it is orphaned."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
