"""preprocess_case against a hand computation (transpose, crop, -1 outside, normalisation, resampling) and the
on-disk cache (layout, reuse, invalidation when the plans or the inputs change)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medseg.data import load_manifest
from medseg.preprocessing import (
    load_cached_case,
    preprocess_case,
    preprocess_dataset,
    resample_image,
    resample_labels,
)


def _plans(spacing: list[float], forward: list[int], scheme: dict[str, Any]) -> dict[str, Any]:
    backward = [forward.index(i) for i in range(3)]
    return {
        "channels": [{"name": "T1", "modality": "MR"}],
        "labels": {"background": 0, "a": 1},
        "configurations": {"3d_fullres": {
            "data_identifier": "medsegPlans_3d_fullres", "spatial_dims": 3, "spacing": spacing,
            "transpose_forward": forward, "transpose_backward": backward, "normalization": [scheme],
            "resampling": {"images": {"order": 3, "order_z": 0}, "labels": {"order": 1, "order_z": 0, "one_hot": True},
                           "separate_z_anisotropy_threshold": 3.0, "force_separate_z": None},
            "median_image_size_in_voxels": [8, 8, 8], "patch_size": [8, 8, 8], "batch_size": 2, "batch_dice": False,
            "num_input_channels": 1, "num_classes": 2,
            "topology": {"n_stages": 2, "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]],
                         "features_per_stage": [4, 8], "n_conv_per_stage": [2, 2], "n_conv_per_stage_decoder": [2]},
            "model": {"name": "nnunet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kwargs": {}},
        }},
    }


def _case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    image = np.zeros((1, 10, 8, 6), dtype=np.float32)
    image[0, 2:9, 1:7, 1:5] = rng.uniform(1, 100, size=(7, 6, 4))
    image[0, 4, 3, 2] = 0.0  # a hole inside the mask: filled, so it stays in the mask
    label = np.zeros((1, 10, 8, 6), dtype=np.int16)
    label[0, 4:7, 2:5, 2:4] = 1
    return image, label


def test_transpose_crop_zscore_with_mask_by_hand() -> None:
    image, label = _case()
    plans = _plans([1.0, 2.0, 1.0], [2, 0, 1], {"scheme": "zscore", "use_mask_for_norm": True})
    data, seg, props = preprocess_case(image, plans, "3d_fullres", label, spacing=[2.0, 1.0, 1.0])
    # hand computation: transpose (z, x, y), crop the nonzero box, z-score inside the mask
    t_img = image.transpose(0, 3, 1, 2)[:, 1:5, 2:9, 1:7]
    t_seg = label.transpose(0, 3, 1, 2)[:, 1:5, 2:9, 1:7]
    assert props["bbox_used_for_cropping"] == [[1, 5], [2, 9], [1, 7]]
    assert props["spacing_after_transpose"] == [1.0, 2.0, 1.0]
    assert props["shape_after_cropping_and_before_resampling"] == [4, 7, 6]
    assert props["shape_before_cropping"] == [10, 8, 6]
    values = t_img[0].astype(np.float64)
    expected = (values - values.mean()) / values.std()
    np.testing.assert_allclose(data[0], expected, atol=1e-5)
    np.testing.assert_array_equal(seg, t_seg)  # spacing unchanged: no resampling
    assert props["shape_after_resampling"] == [4, 7, 6]


def test_outside_nonzero_becomes_minus_one_and_ct_normalisation() -> None:
    image, label = _case()
    image[0, 2, 1, 1] = 0.0  # a corner voxel of the box outside the (filled) mask
    scheme = {"scheme": "ct", "use_mask_for_norm": False, "clip_lower": 10.0, "clip_upper": 80.0, "mean": 40.0,
              "std": 20.0}
    plans = _plans([1.0, 1.0, 1.0], [0, 1, 2], scheme)
    data, seg, _ = preprocess_case(image, plans, "3d_fullres", label, spacing=[1.0, 1.0, 1.0])
    crop = image[0, 2:9, 1:7, 1:5]
    np.testing.assert_allclose(data[0], (np.clip(crop, 10, 80) - 40) / 20, atol=1e-6)
    assert seg[0, 0, 0, 0] == -1 and (seg >= -1).all() and (seg[0][label[0, 2:9, 1:7, 1:5] == 1] == 1).all()


def test_resampling_orders_and_separate_z() -> None:
    image, label = _case()
    plans = _plans([1.0, 1.0, 1.0], [0, 1, 2], {"scheme": "none", "use_mask_for_norm": False})
    data, seg, props = preprocess_case(image, plans, "3d_fullres", label, spacing=[4.0, 1.0, 1.0])
    crop_img, crop_seg = image[:, 2:9, 1:7, 1:5], label[:, 2:9, 1:7, 1:5]
    settings = plans["configurations"]["3d_fullres"]["resampling"]
    np.testing.assert_allclose(data, resample_image(crop_img, [4, 1, 1], [1, 1, 1], settings), atol=1e-6)
    np.testing.assert_array_equal(seg, resample_labels(crop_seg, [4, 1, 1], [1, 1, 1], settings))
    assert props["shape_after_resampling"] == [28, 6, 4]
    # anisotropic source: axis 0 is resampled with nearest neighbour, so every slice is a copy of an input slice
    for k in range(28):
        assert any(np.allclose(data[0, k], crop_img[0, j]) for j in range(7))


def test_without_label_and_channel_check() -> None:
    image, _ = _case()
    plans = _plans([1.0, 1.0, 1.0], [0, 1, 2], {"scheme": "zscore", "use_mask_for_norm": True})
    data, seg, _ = preprocess_case(image, plans, "3d_fullres", spacing=[1.0, 1.0, 1.0])
    assert seg is None and data.shape == (1, 7, 6, 4)
    from medseg.errors import PlanningError

    with pytest.raises(PlanningError, match="channels"):
        preprocess_case(np.concatenate([image, image]), plans, "3d_fullres", spacing=[1.0, 1.0, 1.0])


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        img = np.zeros((12, 10, 8), dtype=np.int16)
        img[1:11, 1:9, 1:7] = rng.integers(1, 200, size=(10, 8, 6))
        lbl = np.zeros(img.shape, dtype=np.uint8)
        lbl[4:8, 3:6, 2:5] = 1
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(img, affine), tmp_path / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lbl, affine), tmp_path / f"c{i}_seg.nii.gz")
        cases.append({"id": f"c{i}", "images": [f"c{i}.nii.gz"], "label": f"c{i}_seg.nii.gz"})
    manifest = {"format_version": 1, "name": "tiny", "channels": [{"name": "T1", "modality": "MR"}],
                "labels": {"background": 0, "a": 1}, "cases": cases}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "manifest.json"


def test_cache_layout_reuse_and_invalidation(small_dataset: Path, tmp_path: Path) -> None:
    manifest = load_manifest(small_dataset)
    plans = _plans([1.0, 1.0, 1.0], [2, 0, 1], {"scheme": "zscore", "use_mask_for_norm": False})
    folder = preprocess_dataset(manifest, plans, "3d_fullres", tmp_path / "cache", workers=2)
    assert folder == tmp_path / "cache" / "medsegPlans_3d_fullres"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["c0.json", "c0.npy", "c0_fg.npz", "c0_seg.npy", "c1.json", "c1.npy", "c1_fg.npz",
                     "c1_seg.npy", "cache.json"]
    case = load_cached_case(folder, "c0")
    assert case["data"].dtype == np.float32 and case["seg"].dtype == np.int16
    assert case["data"].shape[1:] == case["seg"].shape[1:] == tuple(case["properties"]["shape_after_resampling"])
    locs = case["locations"][1]
    assert len(locs) == int((case["seg"][0] == 1).sum()) and (case["seg"][0][tuple(locs.T)] == 1).all()

    stamp = (folder / "c0.npy").stat().st_mtime_ns
    preprocess_dataset(manifest, plans, "3d_fullres", tmp_path / "cache")
    assert (folder / "c0.npy").stat().st_mtime_ns == stamp  # reused

    changed = copy.deepcopy(plans)
    changed["configurations"]["3d_fullres"]["spacing"] = [2.0, 1.0, 1.0]
    preprocess_dataset(manifest, changed, "3d_fullres", tmp_path / "cache")
    rebuilt = load_cached_case(folder, "c0")
    assert rebuilt["properties"]["target_spacing"] == [2.0, 1.0, 1.0]
    stamp = (folder / "c0.npy").stat().st_mtime_ns

    image = small_dataset.parent / "c1.nii.gz"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    preprocess_dataset(load_manifest(small_dataset), changed, "3d_fullres", tmp_path / "cache")
    assert (folder / "c0.npy").stat().st_mtime_ns != stamp  # inputs changed: rebuilt

    (folder / "c1_seg.npy").unlink()
    preprocess_dataset(load_manifest(small_dataset), changed, "3d_fullres", tmp_path / "cache")
    assert (folder / "c1_seg.npy").is_file()
