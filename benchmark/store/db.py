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

Faults of the disk are the user's to fix, so they are ``StoreError`` lines that name the store, never
tracebacks: a full disk (SQLite's "database or disk is full", ENOSPC) says that what was stored is kept and
the same command resumes once there is space; a read-only folder (EROFS, EACCES) says the store is not
writable. ``Store(root, readonly=True)`` opens an existing store for the commands that only read it
(``genbench evaluate``, the sources of ``genbench collect``): it creates no folder, table or store, and reads
a store on a read-only file system too.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import shutil
import sqlite3
import sys
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from benchmark.errors import UserError
from benchmark.files import write_atomic
from benchmark.store.architecture import state_mismatch
from benchmark.store.checked import Checked
from benchmark.store.records import EarlyValue, Measurement
from benchmark.store.snapshot import frame_of, models_frame
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
    """A store that cannot be used as it is: corrupt, not a genbench store, of another schema version, on a
    full or read-only disk."""


class NotAStoreError(StoreError):
    """A folder that holds no genbench store (no ``genbench.sqlite``, or an SQLite file of something else):
    ``genbench collect`` skips such a source instead of stopping."""


class CheckpointError(StoreError):
    """A checkpoint file is missing, truncated, not a genbench checkpoint, or holds weights that do not fit
    its model's architecture."""


FULL = "database or disk is full"
_UNWRITABLE = ("attempt to write a readonly database", "unable to open database file")


def disk_full(root: Path, err: BaseException) -> StoreError:
    """The one line for a store whose disk filled up: nothing stored is lost, and the rerun resumes."""
    return StoreError(f"store.root={root}: the disk is full ({err}); what was stored before is kept, and the "
                      f"same command resumes once there is space")


def not_writable(root: Path, err: BaseException | str) -> StoreError:
    """The one line for a store that cannot be written; the commands that only read it still work."""
    return StoreError(f"store.root={root} is not writable: {err} (genbench evaluate only reads it; the commands "
                      f"that write need a writable store.root)")


def os_store_error(root: Path, err: OSError) -> StoreError | None:
    """The ``StoreError`` for a fault of the disk under ``root`` (full, read-only, no permission), or None
    for any other ``OSError`` (a bug keeps its traceback)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(root, err)
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return not_writable(root, err)
    return None


@contextmanager
def writing(root: Path) -> Iterator[None]:
    """Turn a full or read-only disk met while writing under ``root`` into its one-line ``StoreError``."""
    try:
        yield
    except OSError as err:
        mapped = os_store_error(root, err)
        if mapped is None:
            raise
        raise mapped from err


def sqlite_error(path: Path, err: sqlite3.OperationalError, readonly: bool = False) -> StoreError | None:
    """The ``StoreError`` for SQLite's words for a full or unwritable disk, or None for any other error (a
    locked file, a bug: a write through a connection opened read-only)."""
    text = str(err)
    if readonly and "attempt to write" in text:
        return None
    if FULL in text or ("disk I/O error" in text and _nearly_full(path.parent)):  # no room for the WAL's files
        return disk_full(path.parent, err)
    if "disk I/O error" in text:
        return StoreError(f"{path}: {err}; the disk under store.root={path.parent} failed a read or write (is it "
                          f"failing, or was it unmounted?)")
    if any(words in text for words in _UNWRITABLE):
        if path.is_dir():
            return StoreError(f"{path} is a folder, not a store file; move it away, or point store.root=... "
                              f"at another folder")
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            return not_writable(path.parent, err)
        return StoreError(f"cannot open {path} ({err})")
    return None


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB free on the file system of ``folder``: SQLite reports a WAL index it cannot grow as a
    "disk I/O error", not as a full disk."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _open(path: Path, readonly: bool) -> sqlite3.Connection:
    """A connection to ``path``; read-only ones never write to the folder, so a store on a read-only file
    system opens too: SQLite first tries ``mode=ro``, which needs the WAL index (``-shm``) beside the file,
    and where that cannot be created, the file is read ``immutable`` (as it is on disk)."""
    if not readonly:
        return sqlite3.connect(path, timeout=120)
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}"
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=120)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as err:
        db.close()
        if "unable to open database file" not in str(err):
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        log.warning("%s cannot be opened for reading with its write-ahead log (its folder is read-only); the "
                    "values written last, still in %s, may be missing", path, wal)
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=120)


@contextmanager
def connect(path: Path, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    """One transaction on the store file: commit on success, roll back on error. A full or read-only disk is
    a ``StoreError`` naming the store."""
    try:
        db = _open(path, readonly)
    except sqlite3.OperationalError as err:
        mapped = sqlite_error(path, err, readonly)
        if mapped is None:
            raise
        raise mapped from err
    try:
        if not readonly:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL stays atomic and uncorrupted on a crash; no fsync per commit
        db.execute("PRAGMA busy_timeout=120000")
        with db:
            yield db
    except sqlite3.OperationalError as err:
        mapped = sqlite_error(path, err, readonly)
        if mapped is None:
            raise
        raise mapped from err
    except sqlite3.DatabaseError as err:
        if type(err) is not sqlite3.DatabaseError:  # a locked file, a constraint: not a damaged store
            raise
        raise StoreError(f"{path} is corrupt or not an SQLite file ({err}); move it away, or point "
                         f"store.root=... at another folder") from None
    finally:
        db.close()


def schema_version(path: Path, readonly: bool = False) -> int | None:
    """The schema version recorded in the store file ``path``; None for a new (empty) file. A file that is
    not SQLite is a ``StoreError``; an SQLite database that is not a genbench store a ``NotAStoreError``."""
    with connect(path, readonly) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        if "meta" not in tables:
            raise NotAStoreError(f"{path} is an SQLite database but not a genbench store "
                                 f"(tables: {', '.join(sorted(tables))}); point store.root=... elsewhere")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise NotAStoreError(f"{path} has no schema version: not a genbench store")
    return int(row[0])


class Store:
    """The store under ``root``, created if need be. ``readonly=True`` opens an existing store for reading
    only: it creates no folder, table or store file and removes no orphan, so it works on a read-only disk and
    on a folder that should not become a store (a ``NotAStoreError`` if it holds none). In a writable folder,
    SQLite may leave the empty ``-wal``/``-shm`` files of a WAL-mode reader beside an existing store."""

    def __init__(self, root: str | os.PathLike, readonly: bool = False):
        self.root = Path(root)
        self.path = self.root / "genbench.sqlite"
        self.readonly = readonly
        _check_root(self.root)
        if readonly:
            if not self.path.exists():
                raise NotAStoreError(f"no genbench store at {self.root}: it holds no genbench.sqlite")
            version = schema_version(self.path, readonly=True)
            if version is None:
                raise NotAStoreError(f"{self.path} is an empty SQLite file, not a genbench store")
            self._check_version(version)
            return
        with writing(self.root):
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # a parent is a file or a dangling link
                raise StoreError(f"store.root={self.root} cannot be created: a part of its path is a file or a "
                                 f"broken link") from None
            if not os.access(self.root, os.W_OK):  # found here, not at the first write after hours of training
                read_only = os.statvfs(self.root).f_flag & os.ST_RDONLY
                raise not_writable(self.root, "it is on a read-only file system" if read_only else "permission denied")
            checkpoints = self.root / "checkpoints"
            if checkpoints.exists() and not checkpoints.is_dir():
                raise StoreError(f"{checkpoints} is a file, not the store's checkpoints folder; move it away")
            checkpoints.mkdir(exist_ok=True)
            self._remove_orphans()
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a store file; move it away, or point store.root=... "
                             f"at another folder")
        version = schema_version(self.path)
        self._check_version(version)
        with self._db() as db:  # every table IF NOT EXISTS: a store written before the early table gains it
            db.executescript(SCHEMA)
            if version is None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _check_version(self, version: int | None) -> None:
        if version is not None and version != SCHEMA_VERSION:
            if version in MIGRATABLE:
                raise StoreError(
                    f"{self.path} was written by an older genbench (store schema {version}; this one reads "
                    f"{SCHEMA_VERSION}): upgrade it in place with `genbench migrate store.root={self.root}`")
            raise StoreError(f"{self.path} has store schema {version}, which this genbench cannot read (it reads "
                             f"{SCHEMA_VERSION} and upgrades {', '.join(map(str, MIGRATABLE))}): use the genbench that "
                             f"wrote it, or point store.root=... at another folder")

    def _remove_orphans(self) -> None:
        """Delete temporary checkpoint files left by writers that died (their pid is no longer running)."""
        for tmp in (self.root / "checkpoints").glob("*.tmp"):
            pid = tmp.suffixes[-2].lstrip(".") if len(tmp.suffixes) >= 2 else ""
            if pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def _db(self):
        return connect(self.path, self.readonly)

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
            self._write_torch(self.early_path(model_id), kept)
        self._write_torch(path, {"init": init_state, "final": final_state})
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                       (model_id, json.dumps(hp.to_dict()), json.dumps(jsonable(metrics)),
                        json.dumps(jsonable(history)), str(path.relative_to(self.root)), time.time()))
        return model_id

    def _write_torch(self, path: Path, obj) -> None:
        """``torch.save(obj)`` to ``path`` atomically. Serialised in memory first: torch's own file writer
        reports a full disk as a bare RuntimeError, a plain write as the ENOSPC it is."""
        import torch
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with writing(self.root):
            write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))

    def load_states(self, model_id: str) -> tuple[dict, dict]:
        """(initial, final) state dicts of a stored model."""
        import torch
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
        import torch
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

    def check_checkpoint(self, model_id: str, hp: HParams | None = None) -> None:
        """Load the checkpoint of ``model_id`` and check that its weights fit the model's architecture (the
        names, shapes and dtypes of the model built from its stored hyperparameters): a ``CheckpointError``
        if not. Loading a wrong state dict would fail much later, as a size mismatch deep in a measure, and
        ``load_state_dict`` silently casts another dtype."""
        init, final = self.load_states(model_id)
        hp = hp or self.model_record(model_id)[0]
        for name, state in (("init", init), ("final", final)):
            problem = state_mismatch(state, hp.model, hp.dataset.name, hp.dataset.image_size)
            if problem:
                raise CheckpointError(f"checkpoint {self.checkpoint_path(model_id)} does not fit the architecture "
                                      f"of model {model_id} ({hp.model.name}, depth {hp.model.depth}, width "
                                      f"{hp.model.width}): its {name} weights {problem}")
        if {k: (v.shape, v.dtype) for k, v in init.items()} != {k: (v.shape, v.dtype) for k, v in final.items()}:
            raise CheckpointError(f"checkpoint {self.checkpoint_path(model_id)}: its init and final weights have "
                                  f"different names, shapes or dtypes")

    def prune_corrupt(self, model_ids: Iterable[str], on_corrupt: str) -> list[str]:
        """Check the checkpoints of ``model_ids`` (:meth:`check_checkpoint`: readable, and fitting the model's
        architecture); a bad one is deleted (``retrain``: the caller trains it again), skipped (``skip``) or an
        error (``fail``). Returns the bad ids. A checkpoint whose file has not changed since it passed is not read
        again (``benchmark.store.checked``)."""
        model_ids = list(model_ids)
        with self._db() as db:
            rows = dict(db.execute("SELECT id, hparams FROM models").fetchall())
        checked, bad = Checked(self.root, not self.readonly), []
        for model_id in model_ids:
            files = [self.checkpoint_path(model_id)]
            if model_id in rows and checked.passed_before(model_id, files):
                continue
            try:
                if model_id in rows:
                    self.check_checkpoint(model_id, HParams.from_dict(json.loads(rows[model_id])))
                    checked.passed(model_id, files)
                else:  # no row (deleted meanwhile): nothing to check the weights against
                    self.load_states(model_id)
            except CheckpointError as err:
                checked.failed(model_id)
                if on_corrupt == "fail":
                    checked.save()
                    raise
                log.warning("%s — %s", err, "retraining it" if on_corrupt == "retrain" else "skipping it")
                bad.append(model_id)
                if on_corrupt == "retrain":
                    self.delete_model(model_id)
        checked.save()
        return bad

    def delete_model(self, model_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM measurements WHERE model_id = ?", (model_id,))
            db.execute("DELETE FROM early WHERE model_id = ?", (model_id,))
            db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        with writing(self.root):
            self.checkpoint_path(model_id).unlink(missing_ok=True)
            self.early_path(model_id).unlink(missing_ok=True)

    def history(self, model_id: str) -> list[dict]:
        """The per-epoch history of a stored model (its hyperparameters are known to whoever asks)."""
        with self._db() as db:
            row = db.execute("SELECT history FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise StoreError(f"no model {model_id} in {self.path}")
        return json.loads(row[0])

    def model_record(self, model_id: str) -> tuple[HParams, dict, list[dict]]:
        """(hyperparameters, metrics, history) of a stored model."""
        with self._db() as db:
            row = db.execute("SELECT hparams, metrics, history FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise StoreError(f"no model {model_id} in {self.path}")
        return HParams.from_dict(json.loads(row[0])), json.loads(row[1]), json.loads(row[2])

    def update_metrics(self, updates: dict[str, dict]) -> None:
        """Merge ``updates[model_id]`` into each stored model's metrics (new keys added, the same keys replaced), in
        one transaction: metrics derived from a stored model's final weights after it was trained (errors on
        shifted test sets), so an old store gains them without retraining."""
        with self._db() as db:
            for model_id, new in updates.items():
                row = db.execute("SELECT metrics FROM models WHERE id = ?", (model_id,)).fetchone()
                if row is None:
                    raise StoreError(f"no model {model_id} in {self.path}")
                merged = {**json.loads(row[0]), **jsonable(new)}
                db.execute("UPDATE models SET metrics = ? WHERE id = ?", (json.dumps(merged), model_id))

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
        self.save_measurements([Measurement(model_id, measure, version, value, seconds, status, error, details)])

    def save_measurements(self, rows: Sequence[Measurement]) -> None:
        """Several measurements in one transaction."""
        now = time.time()
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*r[:7], json.dumps(jsonable(r.details or {})), now)
                            for r in (Measurement(*row) for row in rows)])

    def measured(self, statuses: Iterable[str] = STATUSES) -> set[tuple[str, str, int]]:
        """(model_id, measure, version) triples already stored with one of ``statuses``."""
        statuses = list(statuses)
        marks = ",".join("?" * len(statuses))
        with self._db() as db:
            return {tuple(r) for r in db.execute(
                f"SELECT model_id, measure, version FROM measurements WHERE status IN ({marks})", statuses)}

    def measurements(self, details: bool = True) -> pd.DataFrame:
        """Long table: model_id, measure, version, value, seconds, status, error, and (``details``) details and
        created."""
        columns = "*" if details else "model_id, measure, version, value, seconds, status, error"
        with self._db() as db:
            return pd.read_sql_query(f"SELECT {columns} FROM measurements", db)

    def drop_measurements(self) -> None:
        """Delete every measure value and early value (the models stay): a store to measure again from scratch."""
        with self._db() as db:
            db.execute("DELETE FROM measurements")
            db.execute("DELETE FROM early")

    def save_early(self, rows: Sequence[EarlyValue]) -> None:
        """Early values in one transaction."""
        now = time.time()
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO early VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*EarlyValue(*row), now) for row in rows])

    def early(self) -> pd.DataFrame:
        """Long table of the early values: model_id, fraction, epoch, measure, version, value, seconds, status,
        error."""
        with self._db() as db:
            return pd.read_sql_query("SELECT * FROM early", db)

    # ---------------------------------------------------------------------------------------- frames
    def model_rows(self) -> list[tuple[str, str, str]]:
        """Every model as stored: (id, hyperparameters JSON, metrics JSON)."""
        with self._db() as db:
            return db.execute("SELECT id, hparams, metrics FROM models").fetchall()

    def models(self, ids: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per model: ``model_id``, ``hp.*`` (flattened, dotted), ``metric.*``."""
        return models_frame(self.model_rows(), ids)

    def frame(self, ids: Iterable[str] | None = None, measures: dict[str, int] | None = None) -> pd.DataFrame:
        """The zoo DataFrame: one row per model, ``hp.*``, ``metric.*`` and ``measure.<name>`` columns.

        ``measures`` maps name → version to include (default: every name, latest stored version).
        Failed and not-applicable measurements appear as NaN.
        """
        df = self.models(ids)
        return df if df.empty else frame_of(df, self.measurements(details=False), measures)


def _check_root(root: Path) -> None:
    """``store.root`` names a folder, or nothing yet: not a file, not a link to nowhere."""
    if root.is_symlink() and not root.exists():
        raise StoreError(f"store.root={root} is a symbolic link to {os.readlink(root)}, which does not exist")
    if root.exists() and not root.is_dir():
        raise StoreError(f"store.root={root} is a file, not a folder")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def jsonable(obj):
    """JSON-safe copy: non-finite floats become None, tensors and NumPy arrays and scalars become numbers. Any
    other object is left as it is (``json.dumps`` then says it is not serializable)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.ndarray, np.generic)) or _is_tensor(obj):
        return jsonable(obj.tolist())
    return obj


def _is_tensor(obj) -> bool:
    """Whether ``obj`` is a torch tensor, without importing torch (no tensor exists before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)
