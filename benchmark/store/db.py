"""The store: an SQLite index of models and measure values, checkpoints as files.

Layout under ``root``::

    genbench.sqlite          models, measurements, meta (schema version)
    checkpoints/<id>.pt      {"init": state_dict, "final": state_dict}, loaded with weights_only=True
    checkpoints/<id>.early.pt  {"fractions", "epochs", "states"}: weights part-way through training, only for
                             models trained with a non-empty ``early.measures`` (early prediction)

Crash safety: a checkpoint is written to a temporary file and renamed into place *before* its row is
inserted, so a row always points to a complete file; a row is one transaction. Concurrency: WAL journal
mode and a long busy timeout let several worker processes write to one store (SQLite serialises writers).
SQL goes through parameters only; nothing is unpickled.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pandas as pd
import torch

from benchmark.errors import UserError
from benchmark.files import write_atomic
from benchmark.zoo.hparams import HParams

log = logging.getLogger("genbench")

# 2: model ids hash only the hyperparameters a model's components use (HParams.identity)
# 3: a measurement's status is ok, failed or not_applicable (a quantity undefined for that model)
# 4: dataset.label_noise_mode is stored (models written before hold fixed_total)
SCHEMA_VERSION = 4
MIGRATABLE = (1, 2, 3)  # older schemas `genbench migrate` upgrades
STATUSES = ("ok", "failed", "not_applicable")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    hparams TEXT NOT NULL,      -- JSON, nested
    metrics TEXT NOT NULL,      -- JSON
    history TEXT NOT NULL,      -- JSON list of per-epoch rows
    checkpoint TEXT NOT NULL,   -- path relative to the store root
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    model_id TEXT NOT NULL REFERENCES models(id),
    measure TEXT NOT NULL,
    version INTEGER NOT NULL,
    value REAL,                 -- NULL unless ok
    seconds REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'not_applicable')),
    error TEXT,                 -- the failure message, or why the measure is not applicable
    details TEXT NOT NULL,      -- JSON
    created REAL NOT NULL,
    PRIMARY KEY (model_id, measure, version)
);
CREATE TABLE IF NOT EXISTS early (       -- measures on the weights part-way through training
    model_id TEXT NOT NULL REFERENCES models(id),
    fraction REAL NOT NULL,     -- of the model's epochs, as requested
    epoch INTEGER NOT NULL,     -- the snapshot's real epoch
    measure TEXT NOT NULL,
    version INTEGER NOT NULL,
    value REAL,
    seconds REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'not_applicable')),
    error TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (model_id, fraction, measure, version)
);
"""


class StoreError(UserError):
    """A store that cannot be used as it is: corrupt, not a genbench store, or of another schema version."""


class CheckpointError(StoreError):
    """A checkpoint file is missing, truncated or not a genbench checkpoint."""


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One transaction on the store file: commit on success, roll back on error."""
    db = sqlite3.connect(path, timeout=120)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL stays atomic and uncorrupted on a crash; no fsync per commit
        db.execute("PRAGMA busy_timeout=120000")
        with db:
            yield db
    except sqlite3.DatabaseError as err:
        if type(err) is not sqlite3.DatabaseError:  # a locked file, a constraint: not a damaged store
            raise
        raise StoreError(f"{path} is corrupt or not an SQLite file ({err}); move it away, or point "
                         f"store.root=... at another folder") from None
    finally:
        db.close()


def schema_version(path: Path) -> int | None:
    """The schema version recorded in the store file ``path``; None for a new (empty) file. A file that is
    not SQLite, or an SQLite database that is not a genbench store, is a ``StoreError``."""
    with connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        if "meta" not in tables:
            raise StoreError(f"{path} is an SQLite database but not a genbench store "
                             f"(tables: {', '.join(sorted(tables))}); point store.root=... elsewhere")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise StoreError(f"{path} has no schema version: not a genbench store")
    return int(row[0])


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / "genbench.sqlite"
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store.root={self.root} is a file, not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "checkpoints").mkdir(exist_ok=True)
        self._remove_orphans()
        version = schema_version(self.path)
        if version is not None and version != SCHEMA_VERSION:
            if version in MIGRATABLE:
                raise StoreError(
                    f"{self.path} was written by an older genbench (store schema {version}; this one reads "
                    f"{SCHEMA_VERSION}): upgrade it in place with `genbench migrate store.root={self.root}`")
            raise StoreError(f"{self.path} has store schema {version}, which this genbench cannot read (it reads "
                             f"{SCHEMA_VERSION} and upgrades {', '.join(map(str, MIGRATABLE))}): use the genbench that "
                             f"wrote it, or point store.root=... at another folder")
        with self._db() as db:  # every table IF NOT EXISTS: a store written before the early table gains it
            db.executescript(SCHEMA)
            if version is None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _remove_orphans(self) -> None:
        """Delete temporary checkpoint files left by writers that died (their pid is no longer running)."""
        for tmp in (self.root / "checkpoints").glob("*.tmp"):
            pid = tmp.suffixes[-2].lstrip(".") if len(tmp.suffixes) >= 2 else ""
            if pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def _db(self):
        return connect(self.path)

    # ------------------------------------------------------------------------------------------ models
    def checkpoint_path(self, model_id: str) -> Path:
        return self.root / "checkpoints" / f"{model_id}.pt"

    def model_ids(self) -> set[str]:
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT id FROM models")}

    def early_path(self, model_id: str) -> Path:
        return self.root / "checkpoints" / f"{model_id}.early.pt"

    def save_model(self, hp: HParams, init_state: dict, final_state: dict, metrics: dict,
                   history: list[dict], snapshots: Sequence[dict] = ()) -> str:
        """Write the checkpoint (and the snapshots part-way through training, if any) atomically, then the row.
        Returns the model id."""
        model_id = hp.model_id
        path = self.checkpoint_path(model_id)
        if snapshots:
            kept = {"fractions": [s["fraction"] for s in snapshots], "epochs": [s["epoch"] for s in snapshots],
                    "states": [s["state"] for s in snapshots]}
            write_atomic(self.early_path(model_id), lambda tmp: torch.save(kept, tmp))
        write_atomic(path, lambda tmp: torch.save({"init": init_state, "final": final_state}, tmp))
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                       (model_id, json.dumps(hp.to_dict()), json.dumps(_jsonable(metrics)),
                        json.dumps(_jsonable(history)), str(path.relative_to(self.root)), time.time()))
        return model_id

    def load_states(self, model_id: str) -> tuple[dict, dict]:
        """(initial, final) state dicts of a stored model."""
        path = self.checkpoint_path(model_id)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint of model {model_id} is missing: {path}") from None
        except Exception as err:  # torch raises several types for truncated/corrupt zip archives
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err
        if not isinstance(ckpt, dict) or set(ckpt) != {"init", "final"}:
            raise CheckpointError(f"{path} is not a genbench checkpoint (expected keys init, final)")
        return ckpt["init"], ckpt["final"]

    def load_snapshots(self, model_id: str) -> list[dict]:
        """The weights a model kept part-way through training: [{"fraction", "epoch", "state"}], [] if none."""
        path = self.early_path(model_id)
        if not path.exists():
            return []
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            return [{"fraction": f, "epoch": e, "state": s}
                    for f, e, s in zip(ckpt["fractions"], ckpt["epochs"], ckpt["states"], strict=True)]
        except Exception as err:
            raise CheckpointError(f"early checkpoint {path} is corrupt or truncated ({type(err).__name__}: "
                                  f"{err})") from err

    def prune_corrupt(self, model_ids: Iterable[str], on_corrupt: str) -> list[str]:
        """Check the checkpoints of ``model_ids``; a corrupt one is deleted (``retrain``: the caller trains it
        again), skipped (``skip``) or an error (``fail``). Returns the corrupt ids."""
        bad = []
        for model_id in model_ids:
            try:
                self.load_states(model_id)
            except CheckpointError as err:
                if on_corrupt == "fail":
                    raise
                log.warning("%s — %s", err, "retraining it" if on_corrupt == "retrain" else "skipping it")
                bad.append(model_id)
                if on_corrupt == "retrain":
                    self.delete_model(model_id)
        return bad

    def delete_model(self, model_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM measurements WHERE model_id = ?", (model_id,))
            db.execute("DELETE FROM early WHERE model_id = ?", (model_id,))
            db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        self.checkpoint_path(model_id).unlink(missing_ok=True)
        self.early_path(model_id).unlink(missing_ok=True)

    def model_record(self, model_id: str) -> tuple[HParams, dict, list[dict]]:
        """(hyperparameters, metrics, history) of a stored model."""
        with self._db() as db:
            row = db.execute("SELECT hparams, metrics, history FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise StoreError(f"no model {model_id} in {self.path}")
        return HParams.from_dict(json.loads(row[0])), json.loads(row[1]), json.loads(row[2])

    def settings(self) -> dict:
        """The settings pinned with :meth:`pin_setting`."""
        with self._db() as db:
            rows = db.execute("SELECT key, value FROM meta WHERE key LIKE 'setting:%'").fetchall()
        return {k.removeprefix("setting:"): json.loads(v) for k, v in rows}

    def pin_setting(self, key: str, value) -> None:
        """Record a setting that every stored measure value depends on (the first time), or check that
        ``value`` is the recorded one: values computed under two settings must never mix in one store."""
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (f"setting:{key}",)).fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES (?, ?)", (f"setting:{key}", json.dumps(value)))
                return
        if json.loads(row[0]) != value:
            raise StoreError(f"{key}={json.dumps(value)} differs from the {row[0]} that the measures in "
                             f"{self.root} were computed with; use {key}={row[0]}, or another store.root")

    # ------------------------------------------------------------------------------------ measurements
    def save_measurement(self, model_id: str, measure: str, version: int, value: float | None,
                         seconds: float, status: str, error: str | None = None, details: dict | None = None):
        self.save_measurements([(model_id, measure, version, value, seconds, status, error, details)])

    def save_measurements(self, rows: Sequence[tuple]) -> None:
        """Several measurements in one transaction: each row is the arguments of ``save_measurement``."""
        now = time.time()
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(model_id, measure, version, value, seconds, status, error,
                             json.dumps(_jsonable(details or {})), now)
                            for model_id, measure, version, value, seconds, status, error, details in rows])

    def measured(self, statuses: Iterable[str] = STATUSES) -> set[tuple[str, str, int]]:
        """(model_id, measure, version) triples already stored with one of ``statuses``."""
        statuses = list(statuses)
        marks = ",".join("?" * len(statuses))
        with self._db() as db:
            return {tuple(r) for r in db.execute(
                f"SELECT model_id, measure, version FROM measurements WHERE status IN ({marks})", statuses)}

    def measurements(self) -> pd.DataFrame:
        """Long table: model_id, measure, version, value, seconds, status, error, details."""
        with self._db() as db:
            return pd.read_sql_query("SELECT * FROM measurements", db)

    def drop_measurements(self) -> None:
        """Delete every measure value and early value (the models stay): a store to measure again from scratch."""
        with self._db() as db:
            db.execute("DELETE FROM measurements")
            db.execute("DELETE FROM early")

    def save_early(self, rows: Sequence[tuple]) -> None:
        """Early values in one transaction: (model_id, fraction, epoch, measure, version, value, seconds, status,
        error) per row."""
        now = time.time()
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO early VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*row, now) for row in rows])

    def early(self) -> pd.DataFrame:
        """Long table of the early values: model_id, fraction, epoch, measure, version, value, seconds, status,
        error."""
        with self._db() as db:
            return pd.read_sql_query("SELECT * FROM early", db)

    # ---------------------------------------------------------------------------------------- frames
    def models(self, ids: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per model: ``model_id``, ``hp.*`` (flattened, dotted), ``metric.*``."""
        with self._db() as db:
            rows = db.execute("SELECT id, hparams, metrics FROM models").fetchall()
        keep = set(ids) if ids is not None else None
        records = []
        for model_id, hp_json, metrics_json in rows:
            if keep is not None and model_id not in keep:
                continue
            hp = HParams.from_dict(json.loads(hp_json))
            rec = {"model_id": model_id}
            rec.update({f"hp.{k}": v for k, v in hp.flat().items()})
            rec.update({f"metric.{k}": v for k, v in json.loads(metrics_json).items()})
            records.append(rec)
        return pd.DataFrame.from_records(records)

    def frame(self, ids: Iterable[str] | None = None, measures: dict[str, int] | None = None) -> pd.DataFrame:
        """The zoo DataFrame: one row per model, ``hp.*``, ``metric.*`` and ``measure.<name>`` columns.

        ``measures`` maps name → version to include (default: every name, latest stored version).
        Failed and not-applicable measurements appear as NaN.
        """
        df = self.models(ids)
        if df.empty:
            return df
        long = self.measurements()
        long = long[long.model_id.isin(df.model_id)]
        if measures is not None:
            long = long[[measures.get(n) == v for n, v in zip(long.measure, long.version)]]
        else:
            latest = long.groupby("measure").version.transform("max")
            long = long[long.version == latest]
        wide = long.pivot_table(index="model_id", columns="measure", values="value", aggfunc="first",
                                dropna=False)
        wide.columns = [f"measure.{c}" for c in wide.columns]
        return df.merge(wide, left_on="model_id", right_index=True, how="left").sort_values(
            "model_id", ignore_index=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _jsonable(obj):
    """JSON-safe copy: non-finite floats become None, tensors become numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj
