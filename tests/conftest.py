"""Shared fixtures: composing the real Hydra configs with overrides, tiny zoos on offline data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from benchmark.cli import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent

# A zoo of 4 tiny MLPs on scikit-learn's digits that converge in seconds (loose target loss).
TINY = ["dataset=digits", "dataset.train_size=300", "dataset.test_size=300", "zoo=smoke",
        "zoo.axes.dataset.train_size=[150,300]", "zoo.axes.dataset.label_noise=[0.0]",
        "zoo.axes.model.width=[8,16]", "model.depth=1", "optimizer.lr=0.5", "train.batch_size=50",
        "train.target_loss=0.3", "train.max_epochs=300", "run.jobs=1", "run.threads=1", "run.progress=false",
        "evaluate.n_boot=20", "measures.include=[params,log_prod_of_fro,dist_init_fro]"]


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def tiny_cfg(tmp_path):
    """Factory: the tiny zoo with its store and leaderboard under tmp_path, plus extra overrides."""
    def factory(*extra: str):
        return make_cfg(*TINY, f"store.root={tmp_path / 'store'}", f"leaderboard.dir={tmp_path / 'lb'}", *extra)
    return factory


@pytest.fixture(autouse=True, scope="session")
def _threads():
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
