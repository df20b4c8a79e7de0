"""A trained model as the measures see it: stored (or just-trained) weights, rebuilt into modules, and the
one place where a ``measures.Context`` is made from them (the pipeline, ``genbench perf`` and the tests all
ask here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection, Sequence

import torch
from torch import nn

from benchmark.measuring.many import Member
from benchmark.runtime import RunOptions
from benchmark.store import Store
from benchmark.zoo.datasets import DataBundle, cached_data
from benchmark.zoo.hparams import HParams
from benchmark.zoo.models import build_model

if TYPE_CHECKING:
    from benchmark.training.loop import TrainResult


@dataclass(frozen=True)
class Trained:
    hp: HParams
    model: nn.Module  # the trained weights
    init: nn.Module | None  # the initial weights (None: not loaded, as no measure to compute declared them)
    data: DataBundle
    history: list[dict] | None  # per-epoch rows (None: not loaded, likewise)
    # the other seeds of the configuration, or a function loading them (``Store``-backed in the pipeline)
    replicates: Sequence[nn.Module] | Callable[[], Sequence[nn.Module]] | None = None

    @classmethod
    def from_states(cls, hp: HParams, init_state: dict | None, final_state: dict, data: DataBundle,
                    history: list[dict] | None, device: str | torch.device = "cpu") -> "Trained":
        modules = []
        for state in (final_state, init_state):
            m = None
            if state is not None:
                m = build_model(hp.model, data.in_shape, data.num_classes)
                m.load_state_dict(state)
                m = m.to(device)
            modules.append(m)
        return cls(hp, modules[0], modules[1], data, None if history is None else list(history))

    @classmethod
    def from_result(cls, result: TrainResult, data: DataBundle, device: str | torch.device = "cpu") -> "Trained":
        return cls.from_states(result.hparams, result.init_state, result.final_state, data, result.history, device)

    @classmethod
    def from_store(cls, store: Store, model: str | HParams, opts: RunOptions,
                   replicates: Sequence[str] = (), needs: Collection[str] | None = None) -> "Trained":
        """A stored model, given by its hyperparameters (or its id, then read from the store); a missing or corrupt
        checkpoint raises ``CheckpointError``. ``replicates``: the ids of its seed replicates, loaded when a measure
        first asks for them. ``needs``: the inputs the measures to compute declare (``measures.NEEDS``); the
        initial weights and the history are loaded only if they are among them (default: everything)."""
        wants = lambda need: needs is None or need in needs  # noqa: E731
        if isinstance(model, HParams):
            hp, history = model, store.history(model.model_id) if wants("history") else None
        else:
            hp, _, history = store.model_record(model)
        model_id = hp.model_id
        init_state, final_state = store.load_states(model_id)
        data = cached_data(hp.dataset, opts.data_root, opts.download)
        trained = cls.from_states(hp, init_state if wants("init_model") else None, final_state, data,
                                  history if wants("history") else None, opts.device)

        def load() -> list[nn.Module]:
            out = []
            for other in replicates:  # the same configuration, so the same architecture as this model's
                m = build_model(hp.model, data.in_shape, data.num_classes)
                m.load_state_dict(store.load_states(other)[1])
                out.append(m.to(opts.device))
            return out

        return dataclasses.replace(trained, replicates=load)

    def context(self, seed: int = 0, oracle: bool = False, curvature_samples: int | None = None) -> Member:
        """What the measures may see: weights, initial weights, training data, hyperparameters, history, the
        seed replicates and the mislabeled mask; with ``oracle``, the test data too (for oracle analyses only,
        never ranked). A ``Member``: it can be grouped with the Contexts of other models (``benchmark.measuring.many``).
        ``curvature_samples``: the curvature measures use a seeded subset of that many training samples
        instead of the whole training set (``measures.curvature_samples``; for large datasets)."""
        d = self.data
        return Member(self.model, init_model=self.init, train=(d.x_train, d.y_train),
                       test=(d.x_test, d.y_test) if oracle else None, hparams=self.hp.flat(), history=self.history,
                       replicates=self.replicates, seed=seed,
                       extras={"mislabeled": d.mislabeled, "curvature_samples": curvature_samples})
