"""The paper reproductions: one protocol file per paper (``conf/reproduce/<paper>.yaml``) and one module with
``run(out_dir, profile, overrides) -> DataFrame``, which trains, analyses, and writes its figures, tables and
``results.md`` into ``out_dir``. ``run(paper, ...)`` below is how the command line calls them."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import pandas as pd

from benchmark.reproduce.common import one_thread

PAPERS = {"pnas": "Feng & Tu 2021, the inverse variance–flatness relation",
          "prl": "Yang, Tang & Tu 2023, SGD's effective landscape-dependent regularization",
          "nmi": "Feng, Zhang & Tu 2023, the activity–weight duality",
          "mlst": "Feng & Tu 2021, phases of learning with mislabeled data"}


def run(paper: str, out: Path, profile: str = "default", overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Rerun ``paper``'s central experiment into ``out`` with the ``profile`` protocol (``default``, ``full``:
    the authors' protocol, ``quick``: a smoke test) and ``key=value`` overrides, on one intra-op thread
    (``common.one_thread``)."""
    module = importlib.import_module(f"benchmark.reproduce.{paper}")
    with one_thread():
        return module.run(Path(out), profile=profile, overrides=tuple(overrides))
