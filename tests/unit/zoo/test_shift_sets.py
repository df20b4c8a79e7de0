"""Shifted test sets as a model sees them: the same samples and labels as make_data, image_size honoured, the
corrupted pools cached on disk; MNIST-1D regenerated with one of its generator's knobs moved."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.errors import HParamsError
from benchmark.zoo import shift
from benchmark.zoo.datasets import FASHION_DEBIAN, downsample, held_out_indices, load_pool, make_data
from benchmark.zoo.hparams import DatasetHP
from benchmark.zoo.shift import MNIST1D_SHIFTS, mnist1d_raw, shift_names, shifted_test, shifted_tests

pytestmark = pytest.mark.usefixtures("shift_cache")


def test_shift_names_per_dataset():
    assert shift_names("digits") == shift_names("fashion") == tuple(n for n in shift.CORRUPTIONS if n != "identity")
    assert len(shift_names("digits")) == 15
    assert shift_names("mnist1d") == ("iid_noise", "corr_noise", "shear", "scale")
    with pytest.raises(HParamsError, match="unknown dataset 'nope'"):
        shift_names("nope")


def test_held_out_indices_are_make_datas():
    hp = DatasetHP(name="digits", train_size=300, test_size=120, seed=4)
    idx = held_out_indices(hp, 500)
    pool = load_pool("digits")
    np.testing.assert_array_equal(make_data(hp).y_test.numpy(), pool.y_test[idx])
    np.testing.assert_array_equal(make_data(hp).x_test.numpy(), pool.x_test[idx])
    with pytest.raises(HParamsError, match="test_size=501 exceeds"):
        held_out_indices(DatasetHP(name="digits", train_size=10, test_size=501), 500)


def test_shifted_sets_hold_make_datas_samples_and_labels(tmp_path, monkeypatch):
    hp = DatasetHP(name="digits", train_size=300, test_size=120, seed=4)
    data = make_data(hp)
    x, y = shifted_test(hp, "identity")
    assert x.dtype == data.x_test.dtype and x.shape == data.x_test.shape
    assert torch.equal(y, data.y_test)
    assert (x - data.x_test).abs().max() <= 0.5 / 255 + 1e-7  # the pools are kept as uint8
    sets = shifted_tests(hp)
    assert list(sets) == list(shift_names("digits"))
    for name, (xs, ys) in sets.items():
        assert torch.equal(ys, data.y_test) and xs.shape == data.x_test.shape and xs.dtype == torch.float32
        pool = shift.corrupt(name, load_pool("digits").x_test, shift.shift_seed(name))
        np.testing.assert_allclose(xs.numpy(), pool[held_out_indices(hp, 500)], atol=0.5 / 255 + 1e-7)
    assert len(list((tmp_path / "shift").glob(f"v{shift.SHIFT_VERSION}_digits_*.npz"))) == 16
    assert shifted_tests(hp) is sets  # kept per process


def test_shifted_sets_honour_image_size_and_read_the_cache(tmp_path, monkeypatch):
    hp = DatasetHP(name="digits", train_size=300, test_size=50, seed=1)
    small = DatasetHP(name="digits", train_size=300, test_size=50, seed=1, image_size=4)
    full, _ = shifted_test(hp, "rotate")
    files = list((tmp_path / "shift").iterdir())
    shift.shifted_pool.cache_clear()
    monkeypatch.setattr(shift, "corrupt", lambda *a: pytest.fail("rebuilt a cached pool"))
    x, y = shifted_test(small, "rotate")
    assert x.shape == (50, 1, 4, 4) and torch.equal(x, downsample(full, small))
    assert list((tmp_path / "shift").iterdir()) == files


def test_an_unknown_shift_is_one_clear_error():
    hp = DatasetHP(name="digits", train_size=10, test_size=10)
    with pytest.raises(HParamsError, match="no shift 'snow' for dataset 'digits'; valid: shot_noise"):
        shifted_test(hp, "snow")
    with pytest.raises(HParamsError, match="no shift 'rotate' for dataset 'mnist1d'; valid: iid_noise"):
        shifted_test(DatasetHP(name="mnist1d", train_size=10, test_size=10), "rotate")


def _normalized(args):
    from mnist1d.data import make_dataset
    return make_dataset(args)


def test_mnist1d_raw_draws_what_make_dataset_draws():
    from mnist1d.data import get_dataset_args
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 300, 0.5, 42
    np_state, py_state = np.random.get_state(), random.getstate()
    x, y = mnist1d_raw(300)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    d = _normalized(args)
    np.testing.assert_array_equal((x - x.mean()) / x.std(), np.concatenate([d["x"], d["x_test"]]))
    np.testing.assert_array_equal(y, np.concatenate([d["y"], d["y_test"]]))


def test_each_mnist1d_shift_moves_its_knob_only():
    clean, y = mnist1d_raw(300)
    for name, (knob, value) in MNIST1D_SHIFTS.items():
        x, ys = mnist1d_raw(300, **{knob: value})
        np.testing.assert_array_equal(ys, y)
        assert np.abs(x - clean).mean() > 0.005, name
    sheared, _ = mnist1d_raw(300, shear_scale=MNIST1D_SHIFTS["shear"][1])
    pos = np.arange(40)
    residual = [np.abs(np.polyval(np.polyfit(pos, d, 1), pos) - d).max() for d in sheared - clean]
    assert max(residual) < 1e-9  # the same draws: only the linear ramp of the shear grew
    tripled, _ = mnist1d_raw(300, iid_noise_scale=0.06)
    moved, _ = mnist1d_raw(300, iid_noise_scale=0.1)
    np.testing.assert_allclose((moved - clean) / 0.08, (tripled - clean) / 0.04, atol=1e-9)  # noise grows linearly


@pytest.mark.slow
def test_mnist1d_clean_knobs_reproduce_the_pool_and_shifted_sets_keep_the_labels():
    x, y = mnist1d_raw()
    pool = load_pool("mnist1d")
    np.testing.assert_array_equal(((x - x.mean()) / x.std()).astype(np.float32)[6000:, None], pool.x_test)
    np.testing.assert_array_equal(y[6000:], pool.y_test)
    hp = DatasetHP(name="mnist1d", train_size=1000, test_size=500, seed=2)
    data = make_data(hp)
    xs, ys = shifted_test(hp, "shear")
    assert torch.equal(ys, data.y_test) and xs.shape == data.x_test.shape and xs.dtype == data.x_test.dtype
    assert not torch.equal(xs, data.x_test)


@pytest.mark.skipif(not Path(FASHION_DEBIAN).is_dir(), reason="Fashion-MNIST's files are not installed")
def test_fashion_shifted_set_is_the_models_test_set_exactly():
    hp = DatasetHP(name="fashion", train_size=100, test_size=300, seed=3)
    data = make_data(hp)
    x, y = shifted_test(hp, "identity")
    assert torch.equal(x, data.x_test) and torch.equal(y, data.y_test)  # 8-bit images survive uint8 exactly
    xs, _ = shifted_test(hp, "stripe")
    torch.testing.assert_close(xs[..., :7], 1 - data.x_test[..., :7], atol=0.5 / 255, rtol=0)
