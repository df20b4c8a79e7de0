"""Fashion-MNIST from its original idx files: where they are looked for, that they are read exactly (through
torchvision's reader, gzip-compressed or not), the cached pool, and one clear line when they are missing or
damaged."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.errors import DatasetMissingError
from benchmark.zoo import datasets
from benchmark.zoo.datasets import FASHION_DEBIAN, FASHION_ENV, FASHION_FILES, FASHION_SHAPES, load_pool, make_data
from benchmark.zoo.hparams import DatasetHP

REPO = Path(__file__).resolve().parents[3]


def _idx(array: np.ndarray) -> bytes:
    """An idx file's bytes (big-endian header: magic 0x0000 08 ndim, then each dimension), uint8 data."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


SMALL = {"x_train": (600, 28, 28), "y_train": (600,), "x_test": (100, 28, 28), "y_test": (100,)}


@pytest.fixture(scope="module")
def synthetic():
    """Seeded stand-ins of the four files' contents: the original layout with fewer images (the shapes the reader
    expects are set to these by ``fresh``; the real files' shapes are checked on Debian's files below)."""
    rng = np.random.default_rng(0)
    return {k: rng.integers(0, 256 if k.startswith("x") else 10, size=shape, dtype=np.uint8)
            for k, shape in SMALL.items()}


def _write(folder: Path, arrays: dict, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in FASHION_FILES.items():
        data = _idx(arrays[key])
        if compress:
            with gzip.open(folder / f"{stem}.gz", "wb", compresslevel=1) as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)
    return folder


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(FASHION_ENV, raising=False)
    for key, shape in SMALL.items():
        monkeypatch.setitem(FASHION_SHAPES, key, shape)
    load_pool.cache_clear()
    yield
    load_pool.cache_clear()


def _check(pool, arrays):
    np.testing.assert_array_equal(pool.x_train, arrays["x_train"][:, None].astype(np.float32) / 255)
    np.testing.assert_array_equal(pool.x_test, arrays["x_test"][:, None].astype(np.float32) / 255)
    np.testing.assert_array_equal(pool.y_train, arrays["y_train"].astype(np.int64))
    np.testing.assert_array_equal(pool.y_test, arrays["y_test"].astype(np.int64))
    assert pool.x_train.dtype == np.float32 and pool.x_train.shape == (600, 1, 28, 28) and pool.num_classes == 10


@pytest.mark.parametrize("layout", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_files_under_dataset_root_are_read_exactly(tmp_path, synthetic, layout):
    _write(tmp_path / "root" / layout, synthetic, compress=layout != "FashionMNIST/raw")  # torchvision's: unpacked
    _check(datasets.fashion_pool(str(tmp_path / "root"), False), synthetic)


def test_the_environment_variable_is_the_only_place_looked_when_set(tmp_path, synthetic, monkeypatch):
    _write(tmp_path / "root", synthetic)
    monkeypatch.setenv(FASHION_ENV, str(_write(tmp_path / "env", {k: 255 - v if k.startswith("x") else v
                                                                  for k, v in synthetic.items()})))
    pool = datasets.fashion_pool(str(tmp_path / "root"), False)
    np.testing.assert_array_equal(pool.x_test, (255 - synthetic["x_test"][:, None]).astype(np.float32) / 255)
    monkeypatch.setenv(FASHION_ENV, str(tmp_path / "empty"))
    with pytest.raises(DatasetMissingError):
        datasets.fashion_pool(str(tmp_path / "root"), False)


def test_the_cached_pool_equals_a_fresh_read_and_follows_the_files(tmp_path, synthetic):
    folder = _write(tmp_path / "root", synthetic)
    first = datasets.fashion_pool(str(folder), False)
    cached = list((tmp_path / "cache").glob("fashion_*.npz"))
    assert len(cached) == 1
    _check(datasets.fashion_pool(str(folder), False), synthetic)  # from the cache
    changed = dict(synthetic, y_test=(synthetic["y_test"] + 1) % 10)
    _write(folder, changed)  # new files (size or time changes): read again, not served stale
    os.utime(folder / f"{FASHION_FILES['y_test']}.gz", (1, 1))
    np.testing.assert_array_equal(datasets.fashion_pool(str(folder), False).y_test, changed["y_test"])
    assert np.array_equal(first.y_test, synthetic["y_test"])


def test_missing_files_name_the_package_the_places_and_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetMissingError) as err:
        load_pool("fashion", str(tmp_path / "root"), False)
    message = str(err.value)
    for fragment in ("dataset-fashion-mnist", str(tmp_path / "nowhere"), "dataset.root=", FASHION_ENV,
                     "dataset.download=true"):
        assert fragment in message, (fragment, message)


def test_a_truncated_file_is_one_clear_error(tmp_path, synthetic):
    folder = _write(tmp_path / "root", synthetic)
    images = folder / f"{FASHION_FILES['x_test']}.gz"
    with gzip.open(images, "wb") as f:
        f.write(_idx(synthetic["x_test"])[:5000])
    with pytest.raises(DatasetMissingError, match="not a readable idx file"):
        datasets.fashion_pool(str(folder), False)


def test_a_file_of_another_shape_is_refused(tmp_path, synthetic):
    folder = _write(tmp_path / "root", dict(synthetic, y_test=synthetic["y_train"]))
    with pytest.raises(DatasetMissingError, match="Fashion-MNIST's has"):
        datasets.fashion_pool(str(folder), False)


def test_genbench_says_in_one_line_where_to_get_the_files(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env[FASHION_ENV] = str(tmp_path / "nowhere")
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", "train", "zoo=none", "dataset=fashion",
                          "dataset.train_size=100", "dataset.test_size=100", "model=cnn",
                          f"store.root={tmp_path}/s"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert "dataset-fashion-mnist" in lines[0] and "dataset.download=true" in lines[0]
    assert not (tmp_path / "s" / "checkpoints").exists() or not any((tmp_path / "s" / "checkpoints").iterdir())


@pytest.mark.skipif(not Path(FASHION_DEBIAN).is_dir(),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_DEBIAN} is missing; "
                           "apt-get install dataset-fashion-mnist)")
def test_the_real_files_from_debians_package(monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_SHAPES", {"x_train": (60000, 28, 28), "y_train": (60000,),
                                                     "x_test": (10000, 28, 28), "y_test": (10000,)})
    pool = load_pool("fashion")
    assert pool.x_train.shape == (60000, 1, 28, 28) and pool.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(pool.y_train).tolist() == [6000] * 10 and np.bincount(pool.y_test).tolist() == [1000] * 10
    assert 0.0 == pool.x_train.min() and pool.x_train.max() == 1.0
    assert abs(float(pool.x_train.mean()) - 0.286) < 0.001  # Fashion-MNIST's published mean pixel, 0.2860
    data = make_data(DatasetHP(name="fashion", train_size=1000, test_size=10000, seed=3))
    assert np.bincount(data.y_train.numpy()).tolist() == [100] * 10  # stratified
    assert sorted(data.y_test.tolist()) == sorted(pool.y_test.tolist())  # the whole fixed test set
