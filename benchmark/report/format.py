"""Number formatting, in one place for every table, figure title, page and ``results.md``."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

MISSING = "—"


def fmt(x, digits: int = 2) -> str:
    """``x`` to ``digits`` decimals; integers as they are; "—" when missing or not finite; never "-0.00"."""
    if x is None or isinstance(x, str):
        return MISSING if x is None else x
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not math.isfinite(float(x)):
        return MISSING
    return f"{round(float(x), digits) + 0.0:.{digits}f}"


def fmt_p(p) -> str:
    """A p-value as "p = 0.012", or "p < 0.001" below that."""
    return "p < 0.001" if isinstance(p, (int, float)) and math.isfinite(p) and p < 0.001 else f"p = {fmt(p, 3)}"


def count(x) -> str:
    """A count for a table cell: the integer, or "—" when missing (NaN, None or not finite)."""
    return str(int(x)) if x is not None and x == x and math.isfinite(float(x)) else "—"


def fmt_ci(point, lo, hi, digits: int = 2, point_digits: int | None = None) -> str:
    """``point [lo, hi]``: the interval to ``digits`` decimals, the point to ``point_digits`` (default the same)."""
    return f"{fmt(point, digits if point_digits is None else point_digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def significant(x, digits: int = 4) -> str:
    """A float to ``digits`` significant digits (``%g``); anything else as text."""
    return f"{x:.{digits}g}" if isinstance(x, (float, np.floating)) else str(x)


def markdown_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a GitHub Markdown table, floats to ``digits`` significant digits."""
    rows = [" | ".join(map(str, df.columns)), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(significant(v, digits) for v in rec) for rec in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def seconds_text(x) -> str:
    """A duration with a unit that keeps two significant digits: ``0.25 s``, ``12 ms``, ``47 µs``."""
    if x is None or not math.isfinite(float(x)):
        return "—"
    x = float(x)
    if x >= 0.1:
        return f"{x:.2g} s" if x < 10 else f"{x:.0f} s"
    if x >= 1e-4:
        return f"{1e3 * x:.2g} ms"
    return f"{1e6 * x:.2g} µs"


def ranked(table: pd.DataFrame, target: str = "gap_error") -> pd.DataFrame:
    """The rows of one target, best τ first (ties by name, undefined τ last) — the order of every figure."""
    return table[table.target == target].sort_values(["tau", "measure"], ascending=[False, True],
                                                      na_position="last", ignore_index=True)


def short(axis: str) -> str:
    """``hp.dataset.label_noise`` → ``dataset.label_noise``."""
    return axis.removeprefix("hp.")
