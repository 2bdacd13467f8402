"""Torch resampling back to the native grid: equal to the scipy (nnU-Net) rules, chunking changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.inference.resample import export_segmentation, nearest_indices, resample_to_shape
from medseg.preprocessing.resampling import _nearest_axis0, resample_channel, separate_z_axis


def _smooth(shape: tuple[int, ...], channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, channels, *[max(s // 3, 2) for s in shape]), generator=g)
    return torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=False)[0]


@pytest.mark.parametrize(("size_in", "size_out"), [(7, 28), (28, 7), (10, 15), (15, 10), (12, 12), (5, 9)])
def test_nearest_indices_equal_scipy_rule(size_in: int, size_out: int) -> None:
    array = np.arange(size_in)
    assert nearest_indices(size_in, size_out).tolist() == _nearest_axis0(array, size_out).tolist()


def test_linear_resampling_equals_scipy_zoom() -> None:
    data = _smooth((20, 17, 13))
    out = resample_to_shape(data, (31, 12, 26), order=1, order_z=0, axis=None)
    for c in range(3):
        ref = resample_channel(data[c].numpy(), (31, 12, 26), order=1)
        np.testing.assert_allclose(out[c].numpy(), ref, atol=2e-5)


@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("order_z", [0, 1])
def test_separate_z_resampling_equals_scipy(axis: int, order_z: int) -> None:
    data = _smooth((9, 16, 14) if axis == 0 else (16, 14, 9))
    new_shape = (36, 20, 11) if axis == 0 else (20, 11, 36)
    out = resample_to_shape(data, new_shape, order=1, order_z=order_z, axis=axis)
    for c in range(3):
        ref = resample_channel(data[c].numpy(), new_shape, order=1, order_z=order_z, axis=axis)
        np.testing.assert_allclose(out[c].numpy(), ref, atol=2e-5)


def _properties(shape_pre: list[int], crop: list[int], full: list[int], bbox: list[list[int]],
                target: list[float], native: list[float], forward: list[int]) -> dict:
    backward = list(np.argsort(forward))
    return {"shape_after_resampling": shape_pre, "shape_after_cropping_and_before_resampling": crop,
            "shape_before_cropping": full, "bbox_used_for_cropping": bbox, "target_spacing": target,
            "spacing_after_transpose": native, "transpose_forward": forward, "transpose_backward": backward}


def test_export_is_chunk_independent_and_places_the_crop() -> None:
    # transposed (z first), native spacing 4 x 1 x 1 (anisotropic: separate z) from a 2 mm target grid
    props = _properties([12, 20, 18], [6, 40, 36], [50, 60, 8], [[1, 7], [5, 45], [10, 46]], [2.0, 2.0, 2.0],
                        [4.0, 1.0, 1.0], [2, 0, 1])
    assert separate_z_axis(props["target_spacing"], props["spacing_after_transpose"]) == 0
    values = _smooth((12, 20, 18), channels=7) * 5
    settings = {"probabilities": {"order": 1, "order_z": 0}, "separate_z_anisotropy_threshold": 3.0}
    whole = export_segmentation(values, props, settings, class_chunk=7, probabilities=True)
    chunked = export_segmentation(values, props, settings, class_chunk=2, probabilities=True)
    assert whole.labels.shape == (50, 60, 8)  # image axis order
    np.testing.assert_array_equal(whole.labels, chunked.labels)
    np.testing.assert_array_equal(whole.probabilities, chunked.probabilities)
    # the label map is the argmax of the resampled logits, pasted at the crop, transposed back
    resampled = resample_to_shape(values, [6, 40, 36], 1, 0, axis=0).argmax(0).numpy()
    full_t = np.zeros((8, 50, 60), dtype=np.uint8)
    full_t[1:7, 5:45, 10:46] = resampled
    np.testing.assert_array_equal(whole.labels, full_t.transpose(1, 2, 0))
    probs = whole.probabilities.astype(np.float32)
    assert probs.shape == (7, 50, 60, 8)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=5e-3)
    assert (probs[0][whole.labels == 0] >= 0).all() and probs[0, 0, 0, 0] == 1.0  # outside the crop: background
    agree = probs.argmax(0)[6:44, 11:45, 2:6] == whole.labels[6:44, 11:45, 2:6]
    assert agree.mean() > 0.99  # float16 storage may break near-ties
