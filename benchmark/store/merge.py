"""Merging stores: the per-job stores of a cluster sweep into one (``genbench collect``)."""
from __future__ import annotations

from benchmark.files import write_atomic
from benchmark.store.db import Store


def merge(dest: Store, source: Store) -> dict[str, int]:
    """Copy into ``dest`` every model, measurement and early value of ``source`` that it lacks (``genbench
    collect``).

    For clusters whose shared file system cannot hold SQLite locks (NFS, Lustre): each job writes its own
    store, and the stores are merged afterwards. Checkpoints are copied atomically before their rows, so
    an interrupted merge can simply be rerun. Settings the measures depend on (``Store.pin_setting``) must
    agree, or nothing is copied.
    """
    for key, value in source.settings().items():
        dest.pin_setting(key, value)
    have = dest.model_ids()
    with source._db() as db:
        models = db.execute("SELECT id, hparams, metrics, history, checkpoint, created FROM models").fetchall()
        rows = db.execute("SELECT * FROM measurements").fetchall()
        early_rows = db.execute("SELECT * FROM early").fetchall()
    copied = 0
    for model_id, hp, metrics, history, ckpt, created in models:
        if model_id in have:
            continue
        target = dest.checkpoint_path(model_id)
        snapshots = source.early_path(model_id)
        if snapshots.exists():
            write_atomic(dest.early_path(model_id), lambda tmp: tmp.write_bytes(snapshots.read_bytes()))
        write_atomic(target, lambda tmp: tmp.write_bytes((source.root / ckpt).read_bytes()))
        with dest._db() as ddb:
            ddb.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                        (model_id, hp, metrics, history, str(target.relative_to(dest.root)), created))
        copied += 1
    with dest._db() as ddb:
        before = ddb.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        ddb.executemany("INSERT OR IGNORE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        after = ddb.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        ddb.executemany("INSERT OR IGNORE INTO early VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", early_rows)
    return {"models": copied, "measurements": after - before}
