"""The store: an SQLite index of models and measure values, with checkpoints as files; merging the stores
of a cluster sweep, and upgrading the stores of older versions.

    from benchmark.store import Store
    df = Store("runs/store").frame()   # one row per model: hp.*, metric.*, measure.*
    df = Store("runs/store", readonly=True).frame()   # the same, creating nothing (a read-only disk too)
"""
from benchmark.store.columns import CONVERGED, converged
from benchmark.store.db import SCHEMA_VERSION, CheckpointError, NotAStoreError, Store, StoreError, jsonable
from benchmark.store.merge import ON_CONFLICT, MergeConflict, check_merge, merge
from benchmark.store.migrate import migrate
from benchmark.store.records import EarlyValue, Measurement

__all__ = ["CONVERGED", "EarlyValue", "Measurement", "ON_CONFLICT", "SCHEMA_VERSION", "CheckpointError",
           "MergeConflict", "NotAStoreError", "Store", "StoreError", "check_merge", "converged", "jsonable", "merge",
           "migrate"]
