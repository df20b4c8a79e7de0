"""One leaderboard as a value: everything ``genbench evaluate`` computes for one zoo, held in memory.

A :class:`Board` is what the report renders (tables, figures, the page) and what the suite view combines; it is
built once from explicit arguments (:func:`build`) and saved beside the leaderboard's CSVs in a typed form
(:meth:`Board.save`, :func:`load`): one JSON file that keeps every table's columns, dtypes and cells exactly
(floats as their shortest round-trip repr, None apart from NaN), so that a loaded board equals the built one and
nothing has to parse text back into booleans or numbers. Leaderboards written before that file existed are read
from their CSVs (:func:`from_tables`), as the page always read them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation import leaderboard as lb
from benchmark.evaluation.cache import StatsCache
from benchmark.files import write_text

ALPHA = 0.05  # the level of the paired test against #1 (tiers, tied_with_best)
GAP = "gap_error"
FORMAT = 1  # the version of the typed form


def psi_axes(table: pd.DataFrame) -> list[str]:
    """The zoo axes (``hp.*`` columns) a results table breaks ψ_i down by, in its column order."""
    return [c.removeprefix("psi.") for c in table.columns if c.startswith("psi.")]


@dataclass(frozen=True, eq=False)
class Board:
    """One leaderboard: its name, the results table, the zoo DataFrame the statistics were computed on, the gap
    against noise (``leaderboard.gap_noise``), the split-half reliability per target, the baselines' statistics,
    the oracle analyses, the early-prediction table (None when not measured), the level α of the paired test, the
    zoo's varying axes and the targets (``metric.*``). Left out, ``noise`` is computed from the zoo, ``axes`` are
    the table's ψ_i axes and ``targets`` the table's."""

    name: str
    table: pd.DataFrame
    zoo: pd.DataFrame
    noise: dict | None = None
    reliability: dict = field(default_factory=dict)
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)
    oracle: pd.DataFrame = field(default_factory=pd.DataFrame)
    early: pd.DataFrame | None = None
    alpha: float = ALPHA
    axes: list[str] | None = None
    targets: list[str] | None = None

    def __post_init__(self):
        if self.noise is None:
            object.__setattr__(self, "noise", lb.gap_noise(self.zoo))
        if self.axes is None:
            object.__setattr__(self, "axes", psi_axes(self.table))
        if self.targets is None:
            found = self.table.target if "target" in self.table else []
            object.__setattr__(self, "targets", [f"metric.{t}" for t in dict.fromkeys(found)])

    @property
    def psi_axes(self) -> list[str]:
        """The axes the results table breaks ψ_i down by (``psi.<axis>`` columns)."""
        return psi_axes(self.table)

    @property
    def shown_targets(self) -> list[str]:
        """The targets of the results table in its order, the gap first (the order of the page)."""
        found = list(dict.fromkeys(self.table.target)) if "target" in self.table else []
        return sorted(found, key=lambda t: t != GAP)

    def typed(self) -> dict:
        """The board as plain JSON values: exact, and the form :meth:`save` writes."""
        return {"format": FORMAT, "name": self.name, "alpha": float(self.alpha), "axes": list(self.axes),
                "targets": list(self.targets), "noise": plain(self.noise), "reliability": plain(self.reliability),
                **{k: encode_table(getattr(self, k)) for k in ("table", "zoo", "baselines", "oracle", "early")}}

    def save(self, path: Path) -> Path:
        """Write the typed form (:meth:`typed`) to ``path``."""
        return write_text(Path(path), json.dumps(self.typed(), allow_nan=True, separators=(",", ":")))

    def equals(self, other: Board) -> bool:
        """The same board: every scalar, and every table's columns, dtypes and cells (None is not NaN)."""
        return isinstance(other, Board) and json.dumps(self.typed(), allow_nan=True) == json.dumps(
            other.typed(), allow_nan=True)


def build(name: str, df: pd.DataFrame, info: pd.DataFrame, costs: pd.DataFrame, axes: Sequence[str],
          targets: Sequence[str], n_boot: int, seed: int, early: pd.DataFrame | None = None,
          alpha: float = ALPHA, cache: StatsCache | None = None) -> Board:
    """The board of the zoo DataFrame ``df``: every statistic of the measures of ``info`` (``leaderboard.results``,
    with their ``costs``), the baselines, the split-half reliability, the gap against noise and the oracle
    analyses; ``early`` is the early-prediction table when one was measured. A ``cache`` (``benchmark.evaluation.
    cache``) serves the statistics of every measure whose values, zoo and settings it has seen: the board equals
    the one built without it."""
    axes, targets = list(axes), list(targets)
    table = lb.results(df, info, costs, axes, targets=targets, n_boot=n_boot, seed=seed, alpha=alpha, cache=cache)
    baselines = lb.baseline_table(df, axes, targets=targets, n_boot=n_boot, seed=seed, alpha=alpha, cache=cache)
    reliability = lb.reliability(df, info, targets=targets, seed=seed, cache=cache)
    return Board(name, table, df, lb.gap_noise(df), reliability, baselines, lb.oracle_table(df, info), early,
                 alpha, axes, targets)


def load(path: Path) -> Board:
    """The board saved at ``path`` (:meth:`Board.save`)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: typed board format {data.get('format')!r}, expected {FORMAT}")
    tables = {k: decode_table(data[k]) for k in ("table", "zoo", "baselines", "oracle", "early")}
    return Board(data["name"], tables["table"], tables["zoo"], data["noise"], data["reliability"], tables["baselines"],
                 tables["oracle"], tables["early"], data["alpha"], data["axes"], data["targets"])


def read(name: str, typed: Path, tables: dict[str, Path]) -> Board:
    """A stored board: its typed form at ``typed``, or, written before that existed, its ``tables``
    (:func:`from_tables`)."""
    return load(typed) if Path(typed).exists() else from_tables(name, **tables)


def from_tables(name: str, results: Path, zoo: Path, oracle: Path, baselines: Path, summary: Path,
                early: Path) -> Board:
    """A board written before its typed form existed, read from its CSVs and reliability summary (files that are
    missing are empty tables; the noise is computed from the zoo table, α is the default)."""
    has_oracle = oracle.exists() and oracle.stat().st_size > 1  # an empty table is written as "\n"
    reliability = json.loads(summary.read_text()).get("reliability", {}) if summary.exists() else {}
    return Board(name, pd.read_csv(results), pd.read_csv(zoo),
                 reliability=reliability,
                 baselines=pd.read_csv(baselines) if baselines.exists() else pd.DataFrame(),
                 oracle=pd.read_csv(oracle) if has_oracle else pd.DataFrame(),
                 early=pd.read_csv(early) if early.exists() else None)


# ------------------------------------------------------------------------------------------------ typed form
_KINDS = {"f": float, "i": int, "u": int, "b": bool}


def plain(x):
    """``x`` with numpy scalars as Python ones, for JSON."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if x is None or isinstance(x, str):
        return x
    raise TypeError(f"cannot store {type(x).__name__} {x!r} in a typed board")


def _cell(x):
    """One cell of an object column: its type survives the round trip (None, bool, int, float, str)."""
    if isinstance(x, float) and math.isnan(x):
        return x
    return plain(x)


def encode_table(frame: pd.DataFrame | None) -> dict | None:
    """A table as plain JSON values: its columns, dtypes and cells, exactly (None when ``frame`` is None)."""
    if frame is None:
        return None
    index = frame.index
    if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1):
        raise ValueError("a typed board stores tables with a default index (0, 1, ...)")
    columns, dtypes, data = [], [], []
    for i, name in enumerate(frame.columns):
        col = frame.iloc[:, i]
        kind = col.dtype.kind
        if kind in _KINDS and isinstance(col.dtype, np.dtype):
            data.append([_KINDS[kind](x) for x in col.to_numpy()])
        elif kind == "O" and (isinstance(col.dtype, np.dtype) or isinstance(col.dtype, pd.StringDtype)):
            data.append([_cell(x) for x in col.to_numpy()])
        else:
            raise TypeError(f"cannot store column {name!r} of dtype {col.dtype} in a typed board")
        columns.append(plain(name))
        dtypes.append(str(col.dtype))
    return {"rows": len(frame), "columns": columns, "column_dtype": str(frame.columns.dtype), "dtypes": dtypes,
            "data": data}


def decode_table(data: dict | None) -> pd.DataFrame | None:
    """The table :func:`encode_table` encoded."""
    if data is None:
        return None
    frame = pd.DataFrame({i: pd.Series(values, dtype=dtype) for i, (values, dtype) in
                          enumerate(zip(data["data"], data["dtypes"]))}, index=pd.RangeIndex(data["rows"]))
    frame.columns = pd.Index(data["columns"], dtype=data["column_dtype"])
    return frame


__all__ = ["ALPHA", "Board", "build", "decode_table", "encode_table", "from_tables", "load", "plain", "psi_axes",
           "read"]
