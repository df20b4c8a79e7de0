"""Upgrading a store written by an older genbench in place (``genbench migrate store.root=...``).

Schema 1 → 2: model ids hash only the hyperparameters that a model's components use
(``HParams.identity``), so every model whose optimizer ignores a setting (``optimizer.momentum`` for plain
SGD and Adam) gets a new id. Each model row, its checkpoint file and its measurement rows are renamed to the
new id in one transaction per model; checkpoints are renamed before their rows are committed and a rerun
finishes an interrupted migration. Two old models that differ only in an unused setting are the same model:
the older one is kept and the other is dropped (counted in the result).

Schema 2 → 3: a measurement may also be ``not_applicable``. SQLite cannot change a CHECK constraint in place,
so the measurements table is rebuilt with the new constraint and its rows copied, in one transaction. Rows
keep their statuses: a measure that used to fail where it is not applicable gets a new version, and is
recomputed with its new status on the next ``genbench measure``.

Schema 3 → 4: ``dataset.label_noise_mode`` was added, with ``fixed_clean`` as its default. Every model stored
before was trained with the recipe now called ``fixed_total``, so its stored hyperparameters get that mode
written in. Model ids do not change (``HParams.identity`` leaves ``fixed_total`` out of the hash).
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from benchmark.store.db import (
    MIGRATABLE,
    SCHEMA,
    SCHEMA_VERSION,
    Store,
    StoreError,
    schema_version,
    sqlite_error,
    writing,
)
from benchmark.zoo.hparams import HParams


def migrate(root: str | os.PathLike) -> dict[str, int]:
    """Upgrade the store under ``root`` to the current schema. Returns counts: ``renamed`` models,
    ``dropped`` duplicates, ``unchanged`` models; a store already current is left as it is."""
    root = Path(root)
    path = root / "genbench.sqlite"
    if not path.exists():
        raise StoreError(f"no store at {root} (no genbench.sqlite)")
    version = schema_version(path)
    if version == SCHEMA_VERSION:
        return {"renamed": 0, "dropped": 0, "unchanged": len(Store(root).model_ids()), "from_version": version}
    if version not in MIGRATABLE:
        raise StoreError(f"{path} has store schema {version}; this genbench upgrades schema "
                         f"{', '.join(map(str, MIGRATABLE))} only")
    counts = {"renamed": 0, "dropped": 0, "unchanged": 0, "from_version": version}
    db = sqlite3.connect(path, timeout=120)
    try:
        with writing(root):  # a full or read-only disk: one line; each step is a transaction, a rerun finishes
            _label_noise_mode(db)  # first: the ids below are computed from the hyperparameters
            if version == 1:
                _model_ids(db, root, counts)
            if version in (1, 2):
                _status_constraint(db)
            if version in (2, 3):
                counts["unchanged"] = db.execute("SELECT COUNT(*) FROM models").fetchone()[0]
            with db:
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    except sqlite3.OperationalError as err:
        mapped = sqlite_error(path, err)
        if mapped is None:
            raise
        raise mapped from err
    finally:
        db.close()
    return counts


def _label_noise_mode(db: sqlite3.Connection) -> None:
    """Schema 3 → 4: write ``label_noise_mode: fixed_total`` into every stored model that has no mode."""
    rows = db.execute("SELECT id, hparams FROM models").fetchall()
    with db:
        for model_id, hp_json in rows:
            hp = json.loads(hp_json)
            dataset = hp.setdefault("dataset", {})
            if "label_noise_mode" not in dataset:
                dataset["label_noise_mode"] = "fixed_total"
                db.execute("UPDATE models SET hparams = ? WHERE id = ?", (json.dumps(hp), model_id))


def _status_constraint(db: sqlite3.Connection) -> None:
    """Schema 2 → 3: rebuild the measurements table with the not_applicable status allowed."""
    start = SCHEMA.index("CREATE TABLE IF NOT EXISTS measurements")
    create = SCHEMA[start:SCHEMA.index("\n);", start) + 3]
    with db:
        db.execute("ALTER TABLE measurements RENAME TO measurements_v2")
        db.execute(create.replace("IF NOT EXISTS ", "").rstrip().rstrip(";"))
        db.execute("INSERT INTO measurements SELECT * FROM measurements_v2")
        db.execute("DROP TABLE measurements_v2")


def _model_ids(db: sqlite3.Connection, root: Path, counts: dict[str, int]) -> None:
    """Schema 1 → 2: rename every model whose id changed (its row, checkpoint and measurements)."""
    rows = db.execute("SELECT id, hparams, created FROM models ORDER BY created, id").fetchall()
    seen: set[str] = set()
    for old, hp_json, _ in rows:
        new = HParams.from_dict(json.loads(hp_json)).model_id
        if new == old:
            seen.add(new)
            counts["unchanged"] += 1
            continue
        with db:
            if new in seen:  # the same model under another unused setting: keep the first
                db.execute("DELETE FROM measurements WHERE model_id = ?", (old,))
                db.execute("DELETE FROM models WHERE id = ?", (old,))
                (root / "checkpoints" / f"{old}.pt").unlink(missing_ok=True)
                counts["dropped"] += 1
                continue
            src, dst = root / "checkpoints" / f"{old}.pt", root / "checkpoints" / f"{new}.pt"
            if src.exists():
                os.replace(src, dst)
            db.execute("UPDATE models SET id = ?, checkpoint = ? WHERE id = ?",
                       (new, str(dst.relative_to(root)), old))
            db.execute("UPDATE measurements SET model_id = ? WHERE model_id = ?", (new, old))
        seen.add(new)
        counts["renamed"] += 1
