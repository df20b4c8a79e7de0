"""Shared pieces of the paper reproductions (``genbench reproduce pnas|prl|nmi|mlst``)."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

PAPERS = ("pnas", "prl", "nmi", "mlst")


@contextmanager
def one_thread():
    """Run on one intra-op thread: the reproductions' matrices are small, and extra threads only add
    synchronisation on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def markdown_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a GitHub Markdown table, floats to ``digits`` significant digits."""
    cell = lambda v: f"{v:.{digits}g}" if isinstance(v, (float, np.floating)) else str(v)
    rows = [" | ".join(map(str, df.columns)), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(cell(v) for v in rec) for rec in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def main(paper: str, run: Callable[..., pd.DataFrame], description: str, argv: list[str] | None = None) -> None:
    """``python -m benchmark.reproduce_<paper> [--out DIR] [--quick]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("leaderboard/reproductions") / paper)
    parser.add_argument("--quick", action="store_true", help="a toy-scale version (< 1 min), for tests")
    args = parser.parse_args(argv)
    print(run(args.out, quick=args.quick).to_string(index=False))
