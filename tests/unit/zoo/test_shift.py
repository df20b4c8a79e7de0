"""Shifted test sets: each image corruption pinned on a small fixed image against a closed form or scipy's own
transform; what every corruption keeps; that labels survive them."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from benchmark.zoo import shift
from benchmark.zoo.shift import CORRUPTIONS, corrupt

RANDOM = set(CORRUPTIONS) - {"identity", "scale", "brightness", "stripe", "canny_edges"}


pytestmark = pytest.mark.usefixtures("shift_cache")


def _digits(n=6):
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.data[:n] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)


def _blob(h=28, w=28, centre=(13.0, 12.0), sigma=2.0):
    r, c = np.mgrid[:h, :w]
    img = np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * sigma ** 2))
    return img[None, None].astype(np.float32)


def _com(img):
    r, c = np.mgrid[:img.shape[-2], :img.shape[-1]]
    return np.array([(img * r).sum(), (img * c).sum()]) / img.sum()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("shape", [(6, 1, 8, 8), (3, 1, 28, 28), (2, 3, 12, 20)])
def test_corruption_keeps_shape_dtype_range_and_is_seeded(name, shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32) ** 3 if shape[1] == 3 else None
    x = _digits() if shape == (6, 1, 8, 8) else x
    x = np.concatenate([_blob(), _blob(centre=(10, 16)), _blob(sigma=4)]) if shape[-1] == 28 else x
    before = x.copy()
    a = corrupt(name, x, seed=1)
    assert a.shape == x.shape and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(x, before)  # the input is left alone
    np.testing.assert_array_equal(a, corrupt(name, x, seed=1))
    if name in RANDOM:
        assert not np.array_equal(a, corrupt(name, x, seed=2))
    if name != "identity":
        assert not np.array_equal(a, x)


def test_rotate_matches_scipys_rotation_one_way_or_the_other():
    img = np.zeros((1, 1, 28, 28), np.float32)
    img[0, 0, 6:22, 12:15] = 1.0  # a vertical bar
    img[0, 0, 6:9, 15:20] = 0.5  # with a flag: the two directions differ
    out = corrupt("rotate", img, seed=3)[0, 0]
    refs = [ndimage.rotate(img[0, 0], s * np.rad2deg(0.4), reshape=False, order=1, mode="grid-constant")
            for s in (-1, 1)]
    assert min(np.abs(out - r).max() for r in refs) < 1e-5
    assert np.abs(refs[0] - refs[1]).max() > 0.5


@pytest.mark.parametrize("side", [28, 8])
def test_translate_moves_the_centre_of_mass_by_three_pixels_of_a_28_side_digit(side):
    img = _blob(side, side, centre=((side - 1) / 2, (side - 1) / 2), sigma=side / 14)
    moved = np.array([_com(corrupt("translate", img, seed)[0, 0]) - _com(img[0, 0]) for seed in range(8)])
    np.testing.assert_allclose(np.abs(moved), 3 * side / 28, atol=1e-3)
    assert len({tuple(np.sign(m)) for m in moved}) > 1  # the directions are drawn


def test_scale_shrinks_about_the_centre_like_scipys_affine_transform():
    img = _blob(centre=(10, 17), sigma=3)
    c = np.array([13.5, 13.5])
    ref = ndimage.affine_transform(img[0, 0], np.eye(2) / 0.7, offset=c - c / 0.7, order=1,
                                  mode="grid-constant")
    np.testing.assert_allclose(corrupt("scale", img, 0)[0, 0], ref, atol=1e-5)
    np.testing.assert_allclose(_com(ref) - c, 0.7 * (_com(img[0, 0]) - c), atol=0.05)


def test_shear_slants_a_vertical_line_by_sin_of_the_angle_per_row():
    img = np.zeros((1, 1, 28, 28), np.float32)
    img[0, 0, :, 13] = 1.0
    out = corrupt("shear", img, seed=0)[0, 0]
    rows = np.arange(4, 24)
    cols = np.arange(28)
    centre = (out[rows] * cols).sum(1) / out[rows].sum(1)
    slope = np.polyfit(rows - 13.5, centre, 1)[0]
    assert abs(abs(slope) - np.sin(0.4)) < 1e-6
    np.testing.assert_allclose(centre, 13 + slope * (rows - 13.5), atol=1e-5)


def test_brightness_adds_half_to_gray_and_keeps_the_hue_of_colour():
    x = _digits()
    np.testing.assert_allclose(corrupt("brightness", x, 0), np.minimum(x + 0.5, 1), atol=1e-6)
    rgb = np.array([0.2, 0.1, 0.0], np.float32).reshape(1, 3, 1, 1)
    out = corrupt("brightness", rgb, 0)[:, :, 0, 0]
    np.testing.assert_allclose(out, [[0.7, 0.35, 0.0]], atol=1e-6)  # value 0.2 -> 0.7, ratios kept
    assert corrupt("brightness", x, 0).mean() > x.mean() + 0.3


def test_shot_noise_is_poisson_at_three_photons_and_keeps_the_mean():
    x = np.full((100, 1, 28, 28), 0.2, np.float32)
    out = corrupt("shot_noise", x, 0)
    assert np.allclose(out * 3, np.round(out * 3), atol=1e-5)  # counts / 3
    assert abs(out.mean() - 0.2) < 0.005
    assert abs((out == 0).mean() - np.exp(-0.6)) < 0.01


def test_impulse_noise_replaces_seventeen_percent_by_zero_or_one():
    x = np.full((50, 1, 28, 28), 0.5, np.float32)
    out = corrupt("impulse_noise", x, 0)
    hit = out != 0.5
    assert abs(hit.mean() - 0.17) < 0.01 and set(np.unique(out[hit])) == {0.0, 1.0}
    assert abs((out[hit] == 1).mean() - 0.5) < 0.03


def test_stripe_inverts_the_outer_quarters_only():
    x = np.random.default_rng(1).random((2, 1, 8, 28)).astype(np.float32)
    out = corrupt("stripe", x, 0)
    np.testing.assert_allclose(out[..., :7], 1 - x[..., :7], atol=1e-7)
    np.testing.assert_allclose(out[..., 21:], 1 - x[..., 21:], atol=1e-7)
    np.testing.assert_array_equal(out[..., 7:21], x[..., 7:21])


def test_canny_gives_a_binary_map_on_the_border_of_a_square():
    img = np.zeros((1, 1, 28, 28), np.float32)
    img[0, 0, 8:20, 8:20] = 1.0
    out = corrupt("canny_edges", img, 0)[0, 0]
    assert set(np.unique(out)) == {0.0, 1.0}
    edge = np.argwhere(out == 1)
    assert len(edge) > 30 and (edge.min() >= 6) and (edge.max() <= 21)
    assert out[11:17, 11:17].sum() == 0 and out[:5].sum() == 0  # nothing inside the square or far off


def test_dotted_line_inks_only_its_dashes_and_zigzag_stays_in_its_columns():
    black = np.zeros((20, 1, 28, 28), np.float32)
    dots = corrupt("dotted_line", black, 0)
    inked = dots.sum(axis=(0, 1, 2)) > 0
    on = ((np.arange(28) // 2) % 2 == 1) & (np.arange(28) < 27)  # the segment ends before its last column
    assert not inked[~on].any() and inked[on].all()
    zig = corrupt("zigzag", black, 0)
    cols = np.flatnonzero(zig.sum(axis=(0, 1, 2)) > 0)
    assert cols.min() == 2 and cols.max() <= 25 and zig.max() == 1.0
    ink = zig.sum(axis=(1, 2, 3))
    assert (ink > 5).all() and np.median(ink) > 30  # every image gets one; near an edge it leaves the frame


def test_motion_blur_keeps_the_mass_and_moves_it_by_the_kernels_mean_within_45_degrees():
    img = _blob(centre=(13.5, 13.5), sigma=1.5)
    steps = np.arange(21)
    w = np.exp(-steps ** 2 / 18.0)
    mean = (w * steps).sum() / w.sum()
    for seed in range(4):
        out = corrupt("motion_blur", img, seed)[0, 0]
        assert abs(out.sum() - img.sum()) < 1e-3 * img.sum()
        move = _com(out) - _com(img[0, 0])
        assert abs(np.hypot(*move) - mean) < 0.02
        assert abs(move[0]) <= abs(move[1]) + 1e-6  # within 45° of horizontal


def test_glass_blur_keeps_the_mass_of_a_centred_digit_and_differs_from_blurring_twice():
    img = _blob(centre=(13.5, 13.5), sigma=3)
    out = corrupt("glass_blur", img, 0)[0, 0]
    assert abs(out.sum() - img.sum()) < 1e-3 * img.sum()
    twice = ndimage.gaussian_filter(ndimage.gaussian_filter(img[0, 0], 0.7, mode="nearest"), 0.7, mode="nearest")
    assert np.abs(out - twice).max() > 0.01


def test_fog_is_a_smooth_field_added_at_weight_three_and_rescaled():
    x = np.concatenate([_blob(), _blob(centre=(5, 20))])
    x /= x.max(axis=(1, 2, 3), keepdims=True)  # each image's maximum is 1: fog = (x + 3 f) / 4
    f = (4 * corrupt("fog", x, 0) - x) / 3
    assert f.min() >= -1e-5 and f.max() <= 1 + 1e-5 and f.std() > 0.01
    assert np.corrcoef(f[..., :-1].ravel(), f[..., 1:].ravel())[0, 1] > 0.9
    maps = shift._plasma(3, 32, 1.4, np.random.default_rng(0))
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1)


def test_spatter_paints_mud_of_grey_63():
    out = corrupt("spatter", np.zeros((40, 1, 28, 28), np.float32), 0)
    mud = out[out > 0]
    assert len(mud) > 0 and mud.min() >= 0.8 * 63 / 255 - 1e-6 and mud.max() <= 63 / 255 + 1e-6


def test_unknown_corruption_and_non_images_fail_with_one_clear_error():
    with pytest.raises(shift.HParamsError, match="valid: identity, shot_noise"):
        corrupt("snow", _digits(), 0)
    with pytest.raises(shift.HParamsError, match="applies to images"):
        corrupt("rotate", np.zeros((3, 40), np.float32), 0)


def test_labels_survive_every_corruption_of_the_digits():
    """A logistic regression fitted on clean digits loses accuracy on most corruptions; one fitted on corrupted
    training digits (another seed) reads the corrupted test digits well above chance: the label is still there,
    even where a pixel-wise linear model fitted on clean digits cannot find it (scale, translate, edges)."""
    from sklearn.linear_model import LogisticRegression
    pool = shift.load_pool("digits")
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    fit = lambda x: LogisticRegression(max_iter=300, random_state=0).fit(flat(x), pool.y_train)  # noqa: E731
    clean = fit(pool.x_train)
    base = clean.score(flat(pool.x_test), pool.y_test)
    drops = 0
    for name in shift.shift_names("digits"):
        test = corrupt(name, pool.x_test, shift.shift_seed(name))
        drops += clean.score(flat(test), pool.y_test) < base - 0.005
        assert fit(corrupt(name, pool.x_train, 7)).score(flat(test), pool.y_test) > 0.6, name
    assert drops >= 12
