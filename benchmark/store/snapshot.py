"""The zoo as tables: the frame of models, their hyperparameters, metrics and measure values
(:meth:`benchmark.store.Store.frame`), and a :class:`Snapshot` that reads the store's tables once for a reader that
builds many frames of it (an evaluation of a suite's boards) while nothing writes the store."""
from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd

from benchmark.zoo.hparams import HParams

if TYPE_CHECKING:
    from benchmark.store.db import Store


def models_frame(rows: Sequence[tuple[str, str, str]], ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per model of ``rows`` (id, hyperparameters JSON, metrics JSON) in ``ids`` (default: all):
    ``model_id``, ``hp.*`` (flattened, dotted), ``metric.*``."""
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


def frame_of(models: pd.DataFrame, long: pd.DataFrame, measures: dict[str, int] | None = None) -> pd.DataFrame:
    """``models`` (:func:`models_frame`) with a ``measure.<name>`` column per measure of ``long`` (the measurements
    table), sorted by ``model_id``: the versions ``measures`` maps each name to (default: every name, latest stored
    version). Failed and not-applicable values are NaN."""
    if models.empty:
        return models
    long = long[long.model_id.isin(models.model_id)]
    if measures is not None:
        long = long[[measures.get(n) == v for n, v in zip(long.measure, long.version)]]
    else:
        latest = long.groupby("measure").version.transform("max")
        long = long[long.version == latest]
    wide = long.pivot_table(index="model_id", columns="measure", values="value", aggfunc="first", dropna=False)
    wide.columns = [f"measure.{c}" for c in wide.columns]
    return models.merge(wide, left_on="model_id", right_index=True, how="left").sort_values(
        "model_id", ignore_index=True)


class Snapshot:
    """The store's models, measurements (without their details) and early values, each read on first use and kept:
    frames of any subset of the models, as :meth:`Store.frame` gives them, without reading the store again."""

    def __init__(self, store: Store):
        self.store = store

    @cached_property
    def _model_rows(self) -> list[tuple[str, str, str]]:
        return self.store.model_rows()

    @cached_property
    def measurements(self) -> pd.DataFrame:
        return self.store.measurements(details=False)

    @cached_property
    def early(self) -> pd.DataFrame:
        return self.store.early()

    def models(self, ids: Iterable[str] | None = None) -> pd.DataFrame:
        return models_frame(self._model_rows, ids)

    def frame(self, ids: Iterable[str] | None = None, measures: dict[str, int] | None = None) -> pd.DataFrame:
        return frame_of(self.models(ids), self.measurements, measures)
