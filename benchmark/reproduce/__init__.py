"""The paper reproductions: one module per paper, each with ``run(out_dir, quick=False) -> DataFrame`` that
trains, analyses, and writes its figures, tables and ``results.md`` into ``out_dir``. ``run(paper, ...)``
below is how the command line calls them."""
from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd

from benchmark.reproduce.common import one_thread

PAPERS = {"pnas": "Feng & Tu 2021, the inverse variance–flatness relation",
          "prl": "Yang, Tang & Tu 2023, SGD's effective landscape-dependent regularization",
          "nmi": "Feng, Zhang & Tu 2023, the activity–weight duality",
          "mlst": "Feng & Tu 2021, phases of learning with mislabeled data"}


def run(paper: str, out: Path, quick: bool = False) -> pd.DataFrame:
    """Rerun ``paper``'s central experiment into ``out``, on one intra-op thread (``common.one_thread``)."""
    with one_thread():
        return importlib.import_module(f"benchmark.reproduce.{paper}").run(Path(out), quick=quick)
