"""Merging stores: the per-job stores of a cluster sweep into one (``genbench collect``).

A merge says what it merges. A model both stores hold is a *conflict* when its hyperparameters, metrics,
history or checkpoint bytes differ; a measurement (model, measure, version) or an early value (model,
fraction, measure, version) both hold is one when its value or status differs (NaN and None are equal to
themselves; the seconds and the time it was written may differ). Identical copies are never conflicts, so
rerunning a merge changes nothing. ``on_conflict`` decides:

- ``fail`` (the default): nothing is copied; the ``MergeConflict`` counts the conflicts and names the first.
- ``keep``: the destination's copy stays.
- ``replace``: the source's copy is taken.

A model conflict decides its measurements too, since they were computed on the other weights: ``keep``
imports none of the source's rows of that model; ``replace`` deletes the destination's rows of that model
before the source's model, checkpoints and rows are copied. Every conflict is a warning line naming the
model (and measure) and both values.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from benchmark.files import write_atomic
from benchmark.store.db import CheckpointError, Store, StoreError, writing
from benchmark.zoo.hparams import HParams, HParamsError

log = logging.getLogger("genbench")

ON_CONFLICT = ("fail", "keep", "replace")
SHOWN = 3  # conflicts named in a MergeConflict's one line


class MergeConflict(StoreError):
    """Two stores hold different copies of the same model or value, and ``collect.on_conflict=fail``."""


@dataclass(frozen=True)
class Conflict:
    """One model, measurement or early value that two stores hold with different contents."""
    model_id: str
    what: str  # "model", or the measure (with the fraction for an early value)
    dest: str  # the destination's value, as text
    source: str  # the source's value
    key: object = None  # the model id, or the key of the measurement or early row

    def line(self) -> str:
        of = f"model {self.model_id}" if self.what == "model" else f"{self.what} of model {self.model_id}"
        return f"{of}: {self.dest} (destination) vs {self.source} (source)"


class _Contents:
    """Every row of a store, keyed, read once; :meth:`absorb` adds another store's rows that it lacks, so that
    the sources of a collect are checked against what the destination would hold, in one pass."""

    def __init__(self, store: Store):
        self.store = store
        self.origin: dict[object, Store] = {}  # key → the store a row was absorbed from
        with store._db() as db:
            self.models = {r[0]: r for r in db.execute(
                "SELECT id, hparams, metrics, history, checkpoint, created FROM models")}
            self.measurements = {r[:3]: r for r in db.execute("SELECT * FROM measurements")}
            self.early = {(r[0], r[1], r[3], r[4]): r for r in db.execute("SELECT * FROM early")}
        self._hashes: dict[Path, str | None] = {}

    def owner(self, key) -> Store:
        """The store that holds the model or row ``key``."""
        return self.origin.get(key, self.store)

    def absorb(self, other: _Contents) -> None:
        """Add the models and rows of ``other`` that these contents lack, remembering where they are."""
        for mine, theirs in ((self.models, other.models), (self.measurements, other.measurements),
                             (self.early, other.early)):
            for key, row in theirs.items():
                if key not in mine:
                    mine[key] = row
                    self.origin[key] = other.store

    def digest(self, path: Path) -> str | None:
        """sha256 of a file, None if it does not exist."""
        if path not in self._hashes:
            self._hashes[path] = _sha256(path) if path.exists() else None
        return self._hashes[path]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN and None to None."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _read_back(hparams: dict) -> dict:
    """Stored hyperparameters as genbench reads them: a field added since, absent from an older store's rows,
    takes its default (which left the model's id as it was). Rows of components unknown here stay as stored."""
    try:
        return HParams.from_dict(hparams).to_dict()
    except HParamsError:
        return hparams


DERIVED_METRICS = ("shift",)  # metrics computed from a model's final weights after training (the shifted test sets)


def _model_conflict(dest: _Contents, source: _Contents, model_id: str) -> Conflict | None:
    """How the two copies of a model differ (the first difference of each field that differs: hyperparameters,
    metrics, history, checkpoint, early checkpoint), or None if they are identical. Metrics derived from the final
    weights (``DERIVED_METRICS``) do not count: one copy may predate them, and the weights are compared."""
    d, s = dest.models[model_id], source.models[model_id]
    ours, theirs = [], []
    for i, field in ((1, "hparams"), (2, "metrics"), (3, "history")):
        a, b = json.loads(d[i]), json.loads(s[i])
        if field == "hparams":
            a, b = _read_back(a), _read_back(b)
        if field == "metrics":  # derived from the checkpoint (compared below) and filled in by genbench measure
            a, b = ({k: v for k, v in m.items() if not k.startswith(DERIVED_METRICS)} for m in (a, b))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            a, b = _flat(a), _flat(b)
            key = next(k for k in sorted(set(a) | set(b)) if k not in a or k not in b or a[k] != b[k])
            show = lambda x: f"{field}.{key}={json.dumps(x[key])}" if key in x else f"no {field}.{key}"
            ours.append(show(a))
            theirs.append(show(b))
        else:
            ours.append(f"{field} of {len(a)} rows")
            theirs.append(f"{'another ' if len(a) == len(b) else ''}{field} of {len(b)} rows")
    for kind, path in (("checkpoint", Store.checkpoint_path), ("early checkpoint", Store.early_path)):
        a, b = dest.digest(path(dest.owner(model_id), model_id)), source.digest(path(source.store, model_id))
        if a != b:
            ours.append(f"{kind} sha256 {a[:12] if a else 'none'}")
            theirs.append(f"{kind} sha256 {b[:12] if b else 'none'}")
    return Conflict(model_id, "model", ", ".join(ours), ", ".join(theirs), model_id) if ours else None


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(row, value: int, status: int) -> str:
    return repr(row[value]) if row[status] == "ok" else str(row[status])


def find_conflicts(dest: _Contents, source: _Contents) -> tuple[list[Conflict], list[Conflict], list[Conflict]]:
    """(model, measurement, early) conflicts between two stores' contents. Rows of a model in conflict are
    decided by it, not counted on their own."""
    models = [c for c in (_model_conflict(dest, source, i) for i in sorted(dest.models.keys() & source.models.keys()))
              if c is not None]
    decided = {c.model_id for c in models}
    rows = [Conflict(k[0], f"{k[1]} v{k[2]}", _value(dest.measurements[k], 3, 5), _value(source.measurements[k], 3, 5),
                     k)
            for k in sorted(dest.measurements.keys() & source.measurements.keys())
            if k[0] not in decided and not all(_same(dest.measurements[k][i], source.measurements[k][i])
                                               for i in (3, 5))]
    early = [Conflict(k[0], f"early {k[2]} v{k[3]} at fraction {k[1]:g}", _value(dest.early[k], 5, 7),
                      _value(source.early[k], 5, 7), k)
             for k in sorted(dest.early.keys() & source.early.keys())
             if k[0] not in decided and not all(_same(dest.early[k][i], source.early[k][i]) for i in (5, 7))]
    return models, rows, early


def refuse(conflicts: list[Conflict], where: str) -> MergeConflict:
    """The one-line error for ``collect.on_conflict=fail``: how many, the first few, and the option."""
    shown = "; ".join(c.line() for c in conflicts[:SHOWN])
    more = f"; and {len(conflicts) - SHOWN} more (each in a warning above)" if len(conflicts) > SHOWN else ""
    return MergeConflict(f"{len(conflicts)} conflict{'s' if len(conflicts) != 1 else ''} {where}, so nothing was "
                         f"copied: {shown}{more}; choose collect.on_conflict=keep (keep the destination's) or "
                         f"collect.on_conflict=replace (take the source's)")


def check_merge(dest: Store, sources: list[Store]) -> None:
    """Refuse (``MergeConflict``) before anything is copied if merging ``sources`` into ``dest`` in turn would
    meet a conflict, between the destination and a source or between two sources; each conflict is a
    warning line. One pass: each source is compared with what the destination would hold by then."""
    union = _Contents(dest)
    found = []
    for source in sources:
        contents = _Contents(source)
        for c in (c for group in find_conflicts(union, contents) for c in group):
            log.warning("conflict between %s and %s: %s", union.owner(c.key).root, source.root,
                        c.line().replace("(destination)", f"({union.owner(c.key).root})").replace(
                            "(source)", f"({source.root})"))
            found.append(c)
        union.absorb(contents)
    if found:
        raise refuse(found, f"between the stores to merge into {dest.root}")


def merge(dest: Store, source: Store, on_conflict: str = "fail") -> dict[str, int]:
    """Copy into ``dest`` every model, measurement and early value of ``source`` that it lacks, deciding the
    conflicts by ``on_conflict`` (``fail``, ``keep`` or ``replace``; see the module's docstring). Returns the
    counts of what was copied (``models``, ``measurements``, ``early``) and of the ``conflicts`` met.

    For clusters whose shared file system cannot hold SQLite locks (NFS, Lustre): each job writes its own
    store, and the stores are merged afterwards. Checkpoints are copied atomically before their rows, so
    an interrupted merge can simply be rerun. Settings the measures depend on (``Store.pin_setting``) must
    agree, or nothing is copied.
    """
    if on_conflict not in ON_CONFLICT:
        raise StoreError(f"collect.on_conflict={on_conflict} is not a rule; valid: {', '.join(ON_CONFLICT)}")
    pinned = dest.settings()
    for key, value in source.settings().items():  # every setting checked before any is written
        if key in pinned:
            dest.pin_setting(key, value)
    d, s = _Contents(dest), _Contents(source)
    models, rows, early = find_conflicts(d, s)
    conflicts = [*models, *rows, *early]
    for c in conflicts:
        log.warning("conflict in collecting %s into %s: %s — %s", source.root, dest.root, c.line(),
                    {"fail": "nothing copied", "keep": "keeping the destination's",
                     "replace": "taking the source's"}[on_conflict])
    if conflicts and on_conflict == "fail":
        raise refuse(conflicts, f"in collecting {source.root} into {dest.root}")
    for key, value in source.settings().items():
        dest.pin_setting(key, value)
    conflicting = {c.model_id for c in models}
    replace = on_conflict == "replace"
    if replace and conflicting:  # first forget the destination's copies: an interruption leaves them missing,
        with dest._db() as db:  # and the rerun copies the source's as new models
            for model_id in sorted(conflicting):
                for table, column in (("measurements", "model_id"), ("early", "model_id"), ("models", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {column} = ?", (model_id,))
        with writing(dest.root):
            for model_id in conflicting:
                dest.early_path(model_id).unlink(missing_ok=True)
    take = {i for i in s.models if i not in d.models or (replace and i in conflicting)}
    skip = set() if replace else conflicting  # keep: the source's rows of another copy of the model stay out
    copied = 0
    for model_id in sorted(take):
        _copy_model(dest, source, s.models[model_id])
        copied += 1
    verb = "REPLACE" if replace else "IGNORE"
    written = {}
    with dest._db() as db:
        # (table, the source's rows, the destination's, the columns of value and status, the columns in all)
        for table, rows, have, compared, width in (("measurements", s.measurements, d.measurements, (3, 5), 9),
                                                   ("early", s.early, d.early, (5, 7), 10)):
            before = db.total_changes
            db.executemany(f"INSERT OR {verb} INTO {table} VALUES ({', '.join('?' * width)})",
                           [r for k, r in rows.items() if r[0] not in skip and not (
                               replace and k in have and r[0] not in conflicting
                               and all(_same(r[i], have[k][i]) for i in compared))])
            written[table] = db.total_changes - before
    return {"models": copied, **written, "conflicts": len(conflicts)}


def _copy_model(dest: Store, source: Store, row: tuple) -> None:
    """A model's checkpoints (atomically, before its row), then its row."""
    model_id, hp, metrics, history, ckpt, created = row
    target = dest.checkpoint_path(model_id)
    snapshots = source.early_path(model_id)
    if not (source.root / ckpt).is_file():
        raise CheckpointError(f"checkpoint of model {model_id} is missing in {source.root}: {source.root / ckpt}; "
                              f"nothing of that model was copied")
    with writing(dest.root):
        if snapshots.exists():
            write_atomic(dest.early_path(model_id), lambda tmp: tmp.write_bytes(snapshots.read_bytes()))
        write_atomic(target, lambda tmp: tmp.write_bytes((source.root / ckpt).read_bytes()))
    with dest._db() as db:
        db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                   (model_id, hp, metrics, history, str(target.relative_to(dest.root)), created))
