"""Datasets: the offline pools, the seeded subsets, the mislabeling recipe, clear errors for missing files."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from benchmark.errors import DatasetMissingError
from benchmark.zoo.datasets import corrupt_labels, load_pool, make_data
from benchmark.zoo.hparams import DatasetHP, HParamsError


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37])
def test_corrupt_labels_mislabels_exactly_the_fraction(fraction):
    y = np.arange(1000) % 10
    noisy = corrupt_labels(y, fraction, 10, seed=3)
    assert (noisy != y).sum() == round(fraction * 1000)  # every chosen sample ends up wrong
    assert noisy.min() >= 0 and noisy.max() < 10
    np.testing.assert_array_equal(noisy, corrupt_labels(y, fraction, 10, seed=3))
    assert fraction == 0 or not np.array_equal(noisy, corrupt_labels(y, fraction, 10, seed=4))


def test_corrupt_labels_keeps_the_label_histogram_of_permuted_ones():
    # labels are permuted among the chosen samples, then unchanged ones shifted: nearly the same histogram
    y = np.repeat(np.arange(10), 100)
    noisy = corrupt_labels(y, 0.5, 10, seed=0)
    assert np.abs(np.bincount(noisy, minlength=10) - 100).max() < 30


def test_digits_subset_is_stratified_and_seeded():
    hp = DatasetHP(name="digits", train_size=500, test_size=200, label_noise=0.2)
    a, b = make_data(hp), make_data(hp)
    assert a.x_train.shape == (500, 1, 8, 8) and a.x_test.shape == (200, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert np.abs(np.bincount(a.y_train_clean.numpy(), minlength=10) - 50).max() <= 1
    assert int(a.mislabeled.sum()) == 100
    other = make_data(DatasetHP(name="digits", train_size=500, test_size=200, seed=1))
    assert not torch.equal(other.x_train, a.x_train)
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1


def test_mnist5k_is_the_real_offline_mnist():
    pool = load_pool("mnist5k")
    assert pool.x_train.shape == (4000, 1, 28, 28) and pool.x_test.shape == (1000, 1, 28, 28)
    assert np.array_equal(np.bincount(pool.y_test), np.bincount(pool.y_test, minlength=10))
    assert 0.05 < pool.x_train.mean() < 0.25 and pool.x_train.max() == 1.0  # ink on a black background


def test_mnist1d_pool_is_generated_locally_without_touching_global_rng():
    state = np.random.get_state()[1].copy(), random.getstate()
    pool = load_pool("mnist1d")
    assert pool.x_train.shape == (6000, 1, 40) and pool.x_test.shape == (6000, 1, 40)
    assert set(np.unique(pool.y_train)) == set(range(10))
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]


def test_sizes_beyond_the_pool_are_rejected():
    with pytest.raises(HParamsError, match="exceeds the digits training pool"):
        make_data(DatasetHP(name="digits", train_size=5000, test_size=100))
    with pytest.raises(HParamsError, match="exceeds the digits test pool"):
        make_data(DatasetHP(name="digits", train_size=100, test_size=5000))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "svhn"])
def test_missing_torchvision_files_name_the_path_and_the_option(name, tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        load_pool(name, str(tmp_path / "nowhere"), False)
    assert str(tmp_path / "nowhere") in str(err.value) and "dataset.download=true" in str(err.value)
