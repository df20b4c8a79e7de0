"""Shifted test sets: each model's own test samples under a distribution shift, for targets beyond the i.i.d. gap.

Image datasets get the corruptions of MNIST-C (Mu & Gilmer 2019, arXiv:1906.02337), each at the one severity
MNIST-C uses; MNIST-1D is regenerated with one of its generator's knobs moved away from the training value.
A shifted *pool* is the whole test pool of a dataset under one shift, built once per (dataset, shift,
:data:`SHIFT_VERSION`) and kept in ``cache_dir()/shift/`` (images as uint8, like MNIST-C's own files; MNIST-1D as
float32). A model's shifted test set is the same samples :func:`benchmark.zoo.datasets.make_data` tests it on
(:func:`benchmark.zoo.datasets.held_out_indices`), corrupted at the pool's resolution and then averaged down to
``dataset.image_size``. ``docs/shift.md`` lists every shift with its severity.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from benchmark.errors import HParamsError
from benchmark.zoo.datasets import _on_disk, downsample, global_generators_kept, held_out_indices, load_pool
from benchmark.zoo.hparams import DEFAULT_ROOT
from benchmark.zoo.registry import DATASETS
from measures.seeding import derive_seed32

if TYPE_CHECKING:
    from benchmark.zoo.hparams import DatasetHP

SHIFT_VERSION = 1  # bumped whenever a shift's definition changes; stored with the metrics it gives
REFERENCE_SIDE = 28  # MNIST-C's geometry is in pixels of 28×28 digits; other sizes scale it by side / 28
IMAGE_DATASETS = ("digits", "mnist5k", "fashion", "mnist", "cifar10", "svhn")
CHUNK = 4096  # images resampled at a time, to bound the memory of the sampling grids


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (n, C, H, W) float32 in [0, 1], rng
    severity: str  # MNIST-C's setting, in words


CORRUPTIONS: dict[str, Corruption] = {}


def _corruption(name: str, severity: str):
    def add(fn):
        CORRUPTIONS[name] = Corruption(name, fn, severity)
        return fn
    return add


def corrupt(name: str, x: np.ndarray, seed: int) -> np.ndarray:
    """Images ``x`` (n, C, H, W) in [0, 1] under the corruption ``name``, every random draw from
    ``np.random.default_rng(seed)``: a new float32 array of the same shape, clipped to [0, 1]."""
    if name not in CORRUPTIONS:
        raise HParamsError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise HParamsError(f"corruption {name!r} applies to images (n, C, H, W); got shape {x.shape}")
    out = CORRUPTIONS[name].apply(x.copy(), np.random.default_rng(seed))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _scale(x: np.ndarray) -> float:
    """How many pixels of ``x`` one pixel of a 28×28 digit is."""
    return min(x.shape[-2:]) / REFERENCE_SIDE


# --- resampling: every geometric corruption maps each output pixel to a point of its input image ---

def _sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``x`` (n, C, H, W) read at the points ``rows``, ``cols`` (n, H, W; pixel units), bilinearly, zero outside
    (between the border pixels and the zeros beyond them it interpolates): torch's ``grid_sample``, its grid the
    points scaled to [−1, 1] with the border pixels' centres at ±1, a chunk of images at a time."""
    import torch.nn.functional as F
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for start in range(0, n, CHUNK):
        k = slice(start, start + CHUNK)
        grid = np.stack([2 * cols[k] / max(w - 1, 1) - 1, 2 * rows[k] / max(h - 1, 1) - 1], axis=-1)
        out[k] = F.grid_sample(torch.from_numpy(np.ascontiguousarray(x[k])), torch.from_numpy(grid.astype(np.float32)),
                               mode="bilinear", padding_mode="zeros", align_corners=True).numpy()
    return out


def _affine(x: np.ndarray, matrix: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Each image ``x[i]`` resampled so that the output pixel at (row, col), taken from the image centre, reads the
    input at ``matrix[i] @ (row, col) + offset[i]`` from the centre: ``matrix`` (n, 2, 2), ``offset`` (n, 2)."""
    n, _, h, w = x.shape
    cr, cc = (h - 1) / 2, (w - 1) / 2
    r, q = np.meshgrid(np.arange(h) - cr, np.arange(w) - cc, indexing="ij")
    m = matrix[:, :, :, None, None]
    rows = m[:, 0, 0] * r + m[:, 0, 1] * q + cr
    cols = m[:, 1, 0] * r + m[:, 1, 1] * q + cc
    if offset is not None:
        rows, cols = rows + offset[:, 0, None, None], cols + offset[:, 1, None, None]
    return _sample(x, rows, cols)


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=n)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each image plane (scikit-image's default border, 'nearest')."""
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)


def _canvas(x: np.ndarray) -> tuple[int, int, int, float]:
    """Drawings and random fields are made on a canvas of about 28 pixels a side or more, then averaged down to
    the image: its upsampling factor, its sides, and how many of its pixels one pixel of a 28×28 digit is."""
    h, w = x.shape[-2:]
    m = -(-REFERENCE_SIDE // min(h, w))
    return m, h * m, w * m, min(h, w) * m / REFERENCE_SIDE


def _pool_down(a: np.ndarray, m: int) -> np.ndarray:
    """(n, H·m, W·m) averaged down to (n, 1, H, W)."""
    n, hm, wm = a.shape
    return a.reshape(n, hm // m, m, wm // m, m).mean(axis=(2, 4))[:, None].astype(np.float32)


# --- the corruptions ---

@_corruption("identity", "none: the clean images (MNIST-C's control; not a shift)")
def _identity(x, rng):
    return x


@_corruption("shot_noise", "Poisson counts at 3 photons per unit of intensity, divided by 3")
def _shot_noise(x, rng):
    return rng.poisson(x * 3.0) / 3.0


@_corruption("impulse_noise", "17% of the pixel values replaced, half by 0 and half by 1")
def _impulse_noise(x, rng):
    hit = rng.random(x.shape) < 0.17
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), x)


@_corruption("glass_blur", "blur σ=0.7 px, two sweeps of random swaps with a neighbour ≤ 1 px away, blur σ=0.7 px")
def _glass_blur(x, rng):
    s = _scale(x)
    sigma, delta = 0.7 * s, max(1, round(s))
    x = _blur(x, sigma)
    n, _, h, w = x.shape
    for _ in range(2):
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                swap = np.flatnonzero(rng.random(n) < 0.5)
                dr, dc = rng.integers(-delta, delta, size=(2, len(swap)))
                here = x[swap, :, row, col].copy()
                x[swap, :, row, col] = x[swap, :, row + dr, col + dc]
                x[swap, :, row + dr, col + dc] = here
    return _blur(x, sigma)


@_corruption("motion_blur", "one-sided streak: 21 copies 0..20 px along a random angle in ±45°, "
                            "weighted by a half-Gaussian of σ=3 px")
def _motion_blur(x, rng):
    import torch.nn.functional as F
    n, _, h, w = x.shape
    s = _scale(x)
    angle = np.deg2rad(rng.uniform(-45, 45, size=n))
    steps = np.arange(21)
    weights = np.exp(-steps ** 2 / (2 * 3.0 ** 2))
    weights /= weights.sum()
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([cols, rows], dim=-1)[None]  # (1, H, W, 2) as grid_sample reads it: (col, row) in [-1, 1]
    step = np.stack([np.cos(angle) * 2 / max(w - 1, 1), np.sin(angle) * 2 / max(h - 1, 1)], axis=1) * s
    step = torch.from_numpy(step.astype(np.float32))[:, None, None, :]  # (n, 1, 1, 2): one pixel along the angle
    out = np.empty_like(x)
    for start in range(0, n, CHUNK):
        k = slice(start, start + CHUNK)
        images = torch.from_numpy(np.ascontiguousarray(x[k]))
        out[k] = sum(float(wt) * F.grid_sample(images, grid + int(i) * step[k], mode="bilinear", padding_mode="zeros",
                                               align_corners=True) for i, wt in zip(steps, weights)).numpy()
    return out


def _shear_matrix(c: np.ndarray) -> np.ndarray:
    """scikit-image's AffineTransform(shear=c) in (row, col) order: col' = col − sin(c)·row, row' = cos(c)·row."""
    m = np.zeros((len(c), 2, 2))
    m[:, 0, 0], m[:, 1, 0], m[:, 1, 1] = np.cos(c), -np.sin(c), 1.0
    return m


@_corruption("shear", "horizontal shear of 0.4 rad about the centre, the direction at random")
def _shear(x, rng):
    return _affine(x, _shear_matrix(0.4 * _signs(rng, len(x))))


@_corruption("rotate", "rotation by 0.4 rad (22.9°) about the centre, the direction at random")
def _rotate(x, rng):
    t = 0.4 * _signs(rng, len(x))
    return _affine(x, np.stack([np.stack([np.cos(t), np.sin(t)], 1), np.stack([-np.sin(t), np.cos(t)], 1)], 1))


@_corruption("scale", "shrunk to 0.7 of its size about the centre")
def _scale_down(x, rng):
    return _affine(x, np.broadcast_to(np.eye(2) / 0.7, (len(x), 2, 2)))


@_corruption("translate", "moved 3 px along each axis, each direction at random")
def _translate(x, rng):
    n = len(x)
    move = 3.0 * _scale(x) * np.stack([_signs(rng, n), _signs(rng, n)], axis=1)  # (n, 2) (row, col)
    return _affine(x, np.broadcast_to(np.eye(2), (n, 2, 2)), -move)


@_corruption("brightness", "HSV value raised by 0.5 (grayscale: x + 0.5), hue and saturation kept")
def _brightness(x, rng, amount: float = 0.5):
    value = x.max(axis=1, keepdims=True)
    raised = np.minimum(value + amount, 1.0)
    return np.where(value > 0, x * (raised / np.maximum(value, 1e-12)), raised)


@_corruption("stripe", "the left and right quarters of the columns inverted (1 − x)")
def _stripe(x, rng):
    q = x.shape[-1] // 4
    x[..., :q] = 1.0 - x[..., :q]
    x[..., x.shape[-1] - q:] = 1.0 - x[..., x.shape[-1] - q:]
    return x


def _plasma(maps: int, size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """``maps`` plasma fractals (size × size, a power of two, wrapping around) by the diamond-square algorithm:
    each level fills the midpoints of the last level's squares, then of its diamonds, with the mean of their four
    neighbours plus uniform noise of amplitude ``wibble²``, ``wibble`` starting at 100 and divided by ``decay``
    per level (MNIST-C's recipe). Each map is rescaled to [0, 1]."""
    a = np.zeros((maps, size, size))
    step, wibble = size, 100.0
    noise = lambda shape: wibble * rng.uniform(-wibble, wibble, size=shape)  # noqa: E731
    while step >= 2:
        half = step // 2
        corners = a[:, 0::step, 0::step]
        around = corners + np.roll(corners, -1, axis=1)
        around = around + np.roll(around, -1, axis=2)
        a[:, half::step, half::step] = around / 4 + noise(around.shape)
        centres = a[:, half::step, half::step]
        top = corners + np.roll(corners, -1, axis=2) + centres + np.roll(centres, 1, axis=1)
        a[:, 0::step, half::step] = top / 4 + noise(top.shape)
        left = corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=2)
        a[:, half::step, 0::step] = left / 4 + noise(left.shape)
        step, wibble = half, wibble / decay
    a -= a.min(axis=(1, 2), keepdims=True)
    return a / a.max(axis=(1, 2), keepdims=True)


@_corruption("fog", "a plasma fractal (256×256 map, decay 1.4) added with weight 3, then rescaled by "
                    "max/(max + 3)")
def _fog(x, rng):
    n = len(x)
    m, hc, wc, _ = _canvas(x)
    size = max(256, 1 << int(np.ceil(np.log2(max(hc, wc)))))
    tr, tc = size // hc, size // wc  # disjoint crops per map: each is distributed as MNIST-C's top-left one
    maps = _plasma(-(-n // (tr * tc)), size, 1.4, rng)
    crops = maps[:, :tr * hc, :tc * wc].reshape(-1, tr, hc, tc, wc).transpose(0, 1, 3, 2, 4).reshape(-1, hc, wc)
    fog = _pool_down(crops[:n], m)
    top = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + 3.0 * fog) * top / (top + 3.0)


@_corruption("spatter", "mud: N(0.65, 0.3) noise blurred σ=1 px, kept above 0.65, its mask blurred σ=1.5 px and "
                        "kept above 0.8, painted grey 63/255")
def _spatter(x, rng):
    n = len(x)
    m, hc, wc, s = _canvas(x)
    from scipy.ndimage import gaussian_filter
    liquid = gaussian_filter(rng.normal(0.65, 0.3, size=(n, hc, wc)), sigma=(0, s, s), mode="nearest")
    mud = gaussian_filter((liquid > 0.65).astype(np.float64), sigma=(0, 1.5 * s, 1.5 * s), mode="nearest")
    mud = _pool_down(np.where(mud < 0.8, 0.0, mud), m)
    return x * (1 - mud) + (63 / 255) * mud


def _lines(c0, r0, c1, r1, hc: int, wc: int, s: float) -> np.ndarray:
    """Antialiased segments, one per image (arrays (n,) of canvas pixels), as MNIST-C draws them: intensity
    1 + ln(1 − d / 2.3 px) at vertical distance d from the line, clipped to [0, 1], over columns floor(c0) to
    ceil(c1)."""
    col = np.arange(wc, dtype=np.float32)[None, None, :]
    row = np.arange(hc, dtype=np.float32)[None, :, None]
    c0, r0, c1, r1 = (np.asarray(a, dtype=np.float32)[:, None, None] for a in (c0, r0, c1, r1))
    width = 2.3 * s
    d = np.minimum(np.abs(row - ((r1 - r0) / (c1 - c0) * (col - c0) + r0)), width * (1 - 1e-6))
    ink = np.clip(np.log1p(-d / width) + 1, 0, 1)
    return np.where((col >= np.floor(c0)) & (col < np.ceil(c1)), ink, 0.0)


@_corruption("dotted_line", "a line across the image between two random rows, dashes of 2 px every 4 px")
def _dotted_line(x, rng):
    n = len(x)
    m, hc, wc, s = _canvas(x)
    r0, r1 = rng.integers(0, 27, size=(2, n)) * s
    ink = _lines(np.zeros(n), r0, np.full(n, wc - 1.0), r1, hc, wc, s)
    gap = (np.floor(np.arange(wc) / (2 * s)) % 2) == 0
    ink[:, :, gap] = 0
    return x + _pool_down(np.clip(ink, 0, 1), m)


@_corruption("zigzag", "a zigzag of amplitude 2 px and half-period 2 px from column 2 to 25 along a random "
                       "line (start row at random, slope up to ±5 px over its length)")
def _zigzag(x, rng):
    n = len(x)
    m, hc, wc, s = _canvas(x)
    r0 = rng.integers(0, 27, size=n).astype(float)
    r1 = r0 + rng.integers(-5, 5, size=n)
    theta = np.arctan((r1 - r0) / 23.0)
    length = 23.0 / np.cos(theta)
    along = np.array([0.0, 2, 6, 10, 14, 18, 22])  # the turning points: 0, then (2i + 1)·2 px
    across = np.array([0.0, 2, -2, 2, -2, 2, -2])
    along = np.concatenate([np.broadcast_to(along, (n, 7)), length[:, None]], axis=1)  # (n, 8) ending at the far end
    across = np.concatenate([np.broadcast_to(across, (n, 7)), np.zeros((n, 1))], axis=1)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    cols, rows = (2 + cos * along - sin * across) * s, (r0[:, None] + sin * along + cos * across) * s
    ink = sum(_lines(cols[:, j], rows[:, j], cols[:, j + 1], rows[:, j + 1], hc, wc, s) for j in range(7))
    return x + _pool_down(np.clip(ink, 0, 1), m)


@_corruption("canny_edges", "the binary edge map of scikit-image's Canny detector (σ=1 px, default thresholds)")
def _canny_edges(x, rng):
    from skimage.feature import canny
    sigma = _scale(x)
    gray = x.mean(axis=1)
    edges = np.stack([canny(img, sigma=sigma) for img in gray])
    return np.repeat(edges[:, None].astype(np.float32), x.shape[1], axis=1)


# --- MNIST-1D: the generator regenerated with one knob moved ---

MNIST1D_SHIFTS: dict[str, tuple[str, float]] = {  # shift: (mnist1d's argument, its value; training uses the default)
    "iid_noise": ("iid_noise_scale", 0.1),  # default 0.02
    "corr_noise": ("corr_noise_scale", 0.5),  # default 0.25
    "shear": ("shear_scale", 2.25),  # default 0.75
    "scale": ("scale_coeff", 1.2),  # default 0.4
}


def mnist1d_raw(num_samples: int = 12000, **knobs: float) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D's samples before standardization, drawn as ``mnist1d.data.make_dataset`` draws them (its templates,
    ``transform`` and seeding, seed 42) with ``knobs`` replacing arguments of ``get_dataset_args()``. The knobs
    of :data:`MNIST1D_SHIFTS` only multiply random draws whose number does not depend on them, so every sample
    keeps its template, label, padding, translation and noise draws: only the moved knob differs. Numpy's and
    Python's global generators are left as they were."""
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import set_seed
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, 0.5, 42
    for knob, value in knobs.items():
        setattr(args, knob, value)
    templates = get_templates()
    with global_generators_kept():
        set_seed(args.seed)
        xs, ys = [], []
        for label in range(len(templates["y"])):
            for _ in range(args.num_samples // len(templates["y"])):
                xs.append(transform(templates["x"][label], templates["t"], args)[0])
                ys.append(templates["y"][label])
        order = np.random.permutation(len(ys))
    return np.stack(xs)[order], np.stack(ys)[order]


@functools.lru_cache(maxsize=1)
def _mnist1d_units() -> tuple[float, float]:
    """The mean and standard deviation ``make_dataset`` standardizes the clean samples with."""
    clean, _ = mnist1d_raw()
    return float(clean.mean()), float(clean.std())


def _mnist1d_shifted(shift: str) -> dict[str, np.ndarray]:
    """The test half of MNIST-1D with ``shift``'s knob moved, standardized with the clean data's mean and standard
    deviation (as the pool is), so the model reads it in the units it was trained in."""
    mean, std = _mnist1d_units()
    knob, value = MNIST1D_SHIFTS[shift]
    x, y = mnist1d_raw(**{knob: value})
    half = len(y) // 2
    return {"x": ((x - mean) / std)[half:].astype(np.float32)[:, None, :], "y": y[half:]}


# --- the API the training and measure stages call ---

def shift_names(dataset_name: str) -> tuple[str, ...]:
    """The shifts defined for a registered dataset: the image corruptions for image datasets, the knob shifts for
    MNIST-1D, none for a dataset of one's own."""
    DATASETS.get(dataset_name)
    if dataset_name == "mnist1d":
        return tuple(MNIST1D_SHIFTS)
    if dataset_name in IMAGE_DATASETS:
        return tuple(name for name in CORRUPTIONS if name != "identity")
    return ()


def shift_seed(shift: str) -> int:
    """The seed of a corruption's random draws over a test pool (one per shift, the same for every dataset)."""
    return derive_seed32(0, f"shift/{shift}")


def _check(name: str, shift: str) -> None:
    valid = shift_names(name) + (("identity",) if name in IMAGE_DATASETS else ())
    if shift not in valid:
        raise HParamsError(f"no shift {shift!r} for dataset {name!r}; valid: {', '.join(valid) or 'none'}")


@functools.lru_cache(maxsize=16)
def _pool_digest(name: str, root: str, download: bool) -> str:
    """12 hex digits of the SHA-1 of a dataset's clean test pool (pixels and labels): part of its shifted pools'
    file names, so a changed pool gets new files. Once per dataset and process, not once per shift."""
    pool = load_pool(name, root, download)
    digest = hashlib.sha1(pool.x_test.tobytes())
    digest.update(pool.y_test.tobytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=64)
def shifted_pool(name: str, shift: str, root: str = DEFAULT_ROOT, download: bool = False) -> np.ndarray:
    """The whole test pool of dataset ``name`` under ``shift``, as cached: uint8 images (value × 255, rounded) or
    MNIST-1D's float32 signals. Built once per (dataset, shift, SHIFT_VERSION, pool contents) in
    ``cache_dir()/shift/``; kept per process."""
    _check(name, shift)
    pool = load_pool(name, root, download)
    file = f"shift/v{SHIFT_VERSION}_{name}_{shift}_{_pool_digest(name, root, download)}.npz"
    if name == "mnist1d":
        d = _on_disk(file, lambda: _mnist1d_shifted(shift))
        if not np.array_equal(d["y"], pool.y_test):
            raise RuntimeError(f"MNIST-1D regenerated under {shift!r} does not give the pool's test labels")
        return d["x"]
    make = lambda: {"x": np.round(corrupt(shift, pool.x_test, shift_seed(shift)) * 255).astype(np.uint8)}  # noqa: E731
    return _on_disk(file, make)["x"]


def shifted_test(hp: DatasetHP, shift: str, root: str = DEFAULT_ROOT,
                 download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One shift's (x_test, y_test) for a model with dataset hyperparameters ``hp``: the samples and labels
    ``make_data(hp)`` tests it on, under ``shift``, averaged down to ``dataset.image_size``."""
    _check(hp.name, shift)
    pool = load_pool(hp.name, root, download)
    idx = held_out_indices(hp, len(pool.y_test))
    x = shifted_pool(hp.name, shift, root, download)[idx]
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
    return downsample(torch.from_numpy(np.ascontiguousarray(x)), hp), torch.from_numpy(pool.y_test[idx])


@functools.lru_cache(maxsize=16)
def shifted_tests(hp: DatasetHP, root: str = DEFAULT_ROOT,
                  download: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every shift of ``hp``'s dataset (:func:`shift_names`): its (x_test, y_test) for a model with these dataset
    hyperparameters, kept per process for the models of a zoo that share them."""
    return {shift: shifted_test(hp, shift, root, download) for shift in shift_names(hp.name)}
