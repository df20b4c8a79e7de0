"""The store: an SQLite index of models and measure values, with checkpoints as files; merging the stores
of a cluster sweep, and upgrading the stores of older versions.

    from benchmark.store import Store
    df = Store("runs/store").frame()   # one row per model: hp.*, metric.*, measure.*
"""
from benchmark.store.db import SCHEMA_VERSION, CheckpointError, Store, StoreError
from benchmark.store.merge import merge
from benchmark.store.migrate import migrate

__all__ = ["SCHEMA_VERSION", "CheckpointError", "Store", "StoreError", "merge", "migrate"]
