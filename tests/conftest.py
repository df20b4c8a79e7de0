"""Shared fixtures: composing the real Hydra configs with overrides, and one tiny zoo on offline data that
is trained once per test session and copied to each test that needs a trained store."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmark import pipeline
from benchmark.config import compose

ROOT = Path(__file__).resolve().parent.parent

# A zoo of 4 tiny MLPs on scikit-learn's digits that converge in seconds (loose target loss).
TINY = ["dataset=digits", "dataset.test_size=300", "zoo=smoke",
        "zoo.axes.dataset.train_size=[150,300]", "zoo.axes.dataset.label_noise=[0.0]",
        "zoo.axes.model.width=[8,16]", "model.depth=1", "optimizer.lr=0.5", "train.batch_size=50",
        "train.target_loss=0.3", "train.max_epochs=300", "run.jobs=1", "run.threads=1", "run.progress=false",
        "evaluate.n_boot=20", "measures.include=[params,log_prod_of_fro,dist_init_fro]",
        "early.measures=[log_prod_of_fro,dist_init_fro]"]
TINY_MODELS, TINY_MEASURES = 4, 3


def make_cfg(*overrides: str):
    return compose(*overrides)


@pytest.fixture
def tiny_cfg(tmp_path):
    """Factory: the tiny zoo with its store and leaderboard under tmp_path, plus extra overrides."""
    def factory(*extra: str):
        return make_cfg(*TINY, f"store.root={tmp_path / 'store'}", f"leaderboard.dir={tmp_path / 'lb'}", *extra)
    return factory


@pytest.fixture(scope="session")
def _tiny_zoo_store(tmp_path_factory) -> Path:
    """The tiny zoo trained and its three measures computed, once per session (never modified: copy it)."""
    root = tmp_path_factory.mktemp("tiny-zoo") / "store"
    cfg = make_cfg(*TINY, f"store.root={root}")
    assert pipeline.train(cfg)["trained"] == TINY_MODELS
    assert pipeline.measure(cfg)["computed"] == TINY_MODELS * TINY_MEASURES
    return root


@pytest.fixture
def trained_tiny(tiny_cfg, tmp_path, _tiny_zoo_store):
    """Factory like ``tiny_cfg``, whose store (tmp_path/store) already holds the trained and measured tiny zoo."""
    shutil.copytree(_tiny_zoo_store, tmp_path / "store")
    return tiny_cfg


def pytest_configure(config):
    """One torch thread from the start, collection included: the value cases (tests/values) compute their references
    when their modules are imported, and two threads on a shared 2-core machine only contend."""
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _threads():
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
