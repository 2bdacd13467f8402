"""Resampling against hand computations and scipy, with nnU-Net's (skimage ``resize(mode='edge')``) semantics."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates, zoom

from medseg.preprocessing import compute_new_shape, resample_channel, resample_image, resample_labels, separate_z_axis


def _centre_coords(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinate of each output voxel centre: ``(i + 0.5) · in / out - 0.5``."""
    return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5


def test_new_shape_rounds_like_nnunet() -> None:
    assert compute_new_shape([10, 20, 7], [1.0, 0.5, 3.0], [2.0, 1.0, 1.0]) == [5, 10, 21]


def test_linear_matches_hand_interpolation() -> None:
    line = np.array([0.0, 10.0, 20.0, 60.0], dtype=np.float32)
    array = np.broadcast_to(line[:, None, None], (4, 2, 2)).copy()
    out = resample_channel(array, (7, 2, 2), order=1)
    x = np.clip(_centre_coords(4, 7), 0, 3)  # edge mode: clamp
    expected = np.interp(x, np.arange(4), line)
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-6)


def test_nearest_matches_hand_indices() -> None:
    line = np.arange(5, dtype=np.float32) * 3
    array = np.broadcast_to(line[None, :, None], (1, 5, 1)).copy()
    out = resample_channel(array, (1, 3, 1), order=0)
    index = np.clip(np.round(_centre_coords(5, 3)), 0, 4).astype(int)
    np.testing.assert_array_equal(out[0, :, 0], line[index])


def test_cubic_matches_scipy_map_coordinates_and_is_clipped() -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(6, 7, 5)).astype(np.float32)
    shape = (9, 4, 8)
    out = resample_channel(array, shape, order=3)
    grid = np.meshgrid(*[_centre_coords(a, b) for a, b in zip(array.shape, shape, strict=True)], indexing="ij")
    expected = map_coordinates(array.astype(np.float64), np.stack(grid), order=3, mode="nearest")
    expected = np.clip(expected, array.min(), array.max())
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() >= array.min() and out.max() <= array.max()


def test_separate_z_decision() -> None:
    assert separate_z_axis([1, 1, 1], [1, 1, 1]) is None
    assert separate_z_axis([0.5, 0.5, 5.0], [1, 1, 1]) == 2  # source anisotropic
    assert separate_z_axis([1, 1, 1], [4.0, 1, 1]) == 0  # target anisotropic
    assert separate_z_axis([4.0, 4.0, 1.0], [1, 1, 1]) is None  # two coarse axes: together
    assert separate_z_axis([1, 1, 1], [1, 1, 1], force=True) is None  # all equal
    assert separate_z_axis([1, 2, 1], [1, 1, 1], force=True) == 1


def test_separate_z_is_inplane_cubic_then_nearest_along_z() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 8, 10, 4)).astype(np.float32)
    spacing, target = [0.5, 0.5, 5.0], [1.0, 1.0, 2.5]
    out = resample_image(data, spacing, target)
    assert out.shape == (1, 4, 5, 8)
    inplane = np.stack([np.clip(zoom(data[0, :, :, k].astype(np.float64), (0.5, 0.5), order=3, mode="nearest",
                                     grid_mode=True), data[0, :, :, k].min(), data[0, :, :, k].max())
                        for k in range(4)], axis=-1)
    z_index = np.clip(np.round(_centre_coords(4, 8)), 0, 3).astype(int)
    np.testing.assert_allclose(out[0], inplane[:, :, z_index], atol=1e-5)


def test_labels_one_hot_linear_then_argmax() -> None:
    seg = np.array([0, 0, 1, 1, 2, 2], dtype=np.int16)[None, :, None, None]
    down = resample_labels(seg, [1, 1, 1], [2, 1, 1])
    np.testing.assert_array_equal(down[0, :, 0, 0], [0, 1, 2])
    up = resample_labels(np.array([0, 1], dtype=np.int16)[None, :, None, None], [2, 1, 1], [1, 1, 1])
    # weights of label 1 at x = -0.25, 0.25, 0.75, 1.25 (clamped): 0, 0.25, 0.75, 1
    np.testing.assert_array_equal(up[0, :, 0, 0], [0, 0, 1, 1])
    assert up.dtype == np.int16


def test_labels_keep_outside_value_and_separate_z() -> None:
    seg = np.zeros((1, 6, 6, 2), dtype=np.int16)
    seg[0, :, :, 1] = 1
    seg[0, 0] = -1
    out = resample_labels(seg, [1, 1, 4], [1, 1, 2])
    assert out.shape == (1, 6, 6, 4)
    np.testing.assert_array_equal(out[0, 2, 2], [0, 0, 1, 1])  # nearest along z
    assert (out[0, 0] == -1).all()
