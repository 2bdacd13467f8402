"""Coordinate channels: the same values wherever a voxel is seen (any storage orientation, any patch, the sliding
window), left alone by intensity augmentation, and on the real MNI152 — whose hemispheres are mirror images — the
paper's point: position separates structures that look alike (left and right white matter)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import load_config
from medseg.preprocessing import preprocess_case
from medseg.preprocessing.coordinates import (
    append_coordinates,
    coordinate_channel_count,
    coordinate_channels,
    coordinate_transform,
)
from medseg.training.augment import Augmenter
from medseg.training.config import AugmentationConfig


def _mni_image(dataset: dict[str, Any]) -> Any:
    from medseg.io import load_image

    return load_image(Path(dataset["root"]) / "mni_t1.nii.gz")


def test_voxel_coordinates_span_minus_one_to_one() -> None:
    properties = {"shape_after_resampling": [4, 10, 5]}
    c = coordinate_channels(properties, "voxel")
    assert c.shape == (3, 4, 10, 5)
    np.testing.assert_allclose(c[0, :, 0, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(c[1, 0, [0, -1], 0], [-0.9, 0.9])
    assert coordinate_channel_count("none") == 0 and coordinate_channel_count("world") == 3
    with pytest.raises(ValueError):
        coordinate_channel_count("polar")


def test_a_box_beyond_the_volume_is_zero_outside_and_equal_inside() -> None:
    properties = {"shape_after_resampling": [6, 7, 8]}
    whole = coordinate_channels(properties, "voxel")
    box = coordinate_channels(properties, "voxel", lower=[-2, 3, 5], size=[5, 5, 5])
    np.testing.assert_array_equal(box[:, 2:, :4, :3], whole[:, 0:3, 3:7, 5:8])
    assert not box[:, :2].any() and not box[:, :, 4:].any() and not box[:, :, :, 3:].any()


def test_world_coordinates_follow_the_anatomy_not_the_storage_order(tmp_path: Path,
                                                                     mni_dataset_plans: dict[str, Any]) -> None:
    """One MNI crop stored RAS and as PSL: the preprocessed voxels carry the same set of RAS positions."""
    from medseg.io import load_image

    plans = copy.deepcopy(mni_dataset_plans["plans"])
    ras = nib.load(Path(mni_dataset_plans["root"]) / "mni_t1.nii.gz")
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    psl = ras.as_reoriented(ornt_transform(io_orientation(ras.affine), axcodes2ornt(("P", "S", "L"))))
    nib.save(nib.Nifti1Image(np.asarray(psl.dataobj), psl.affine), tmp_path / "psl.nii.gz")
    seen = []
    for path in (Path(mni_dataset_plans["root"]) / "mni_t1.nii.gz", tmp_path / "psl.nii.gz"):
        image = load_image(path)
        data, _, properties = preprocess_case(image, plans, "3d_fullres")
        coords = coordinate_channels(properties, "world", scale_mm=1.0).reshape(3, -1).T
        values = data[0].reshape(-1)
        order = np.lexsort(coords.T[::-1])
        seen.append((np.round(coords[order], 3), values[order]))
    np.testing.assert_allclose(seen[0][0], seen[1][0], atol=1e-3)  # the same RAS positions …
    np.testing.assert_allclose(seen[0][1], seen[1][1], atol=1e-4)  # … with the same intensities there
    # neighbours along every preprocessed axis are one planned spacing apart (in mm)
    _, _, properties = preprocess_case(load_image(tmp_path / "psl.nii.gz"), plans, "3d_fullres")
    matrix, offset = coordinate_transform(properties, "world", 1.0)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=0), properties["target_spacing"], rtol=1e-6)
    centre = (np.asarray(properties["shape_after_resampling"]) - 1) / 2
    np.testing.assert_allclose(matrix @ centre + offset, 0.0, atol=1e-9)


def test_intensity_augmentation_leaves_coordinate_channels_alone() -> None:
    config = AugmentationConfig(p_rotation=0.0, p_scaling=0.0, p_noise=1.0, p_brightness=1.0, p_gamma=1.0,
                                mirror=False)
    augmenter = Augmenter([8, 8, 8], config)
    properties = {"shape_after_resampling": [8, 8, 8]}
    coords = torch.from_numpy(coordinate_channels(properties, "voxel"))
    image = torch.cat([torch.rand(1, 8, 8, 8) + 1.0, coords])
    seg = torch.zeros(1, 8, 8, 8, dtype=torch.int16)
    out, _ = augmenter(image, seg, np.random.default_rng(0), spatial_only=3)
    assert torch.equal(out[1:], coords) and not torch.equal(out[:1], image[:1])
    # mirroring moves them with the image
    flipped, _ = Augmenter([8, 8, 8], AugmentationConfig(p_rotation=0.0, p_scaling=0.0, p_noise=0.0, p_blur=0.0,
                                                         p_brightness=0.0, p_contrast=0.0, p_lowres=0.0,
                                                         p_gamma=0.0, p_gamma_inverted=0.0, p_mirror=1.0))(
        image, seg, np.random.default_rng(0), spatial_only=3)
    assert torch.equal(flipped[1:], torch.flip(coords, [1, 2, 3]))


def test_appending_checks_the_grid() -> None:
    data = np.zeros((2, 4, 5, 6), np.float32)
    assert append_coordinates(data, {"shape_after_resampling": [4, 5, 6]}, "none") is data
    assert append_coordinates(data, {"shape_after_resampling": [4, 5, 6]}, "voxel").shape == (5, 4, 5, 6)
    with pytest.raises(ValueError):
        append_coordinates(data, {"shape_after_resampling": [4, 5, 7]}, "voxel")


def _hemispheres(root: Path) -> dict[str, Any]:
    """The symmetric MNI152 (2 mm, 48³ through the brain) with its white matter split at the mid-sagittal plane."""
    from methods_helpers import mni

    from medseg.data import load_manifest
    from medseg.planning import compute_fingerprint, plan_experiment, save_fingerprint, save_plans

    root.mkdir(parents=True, exist_ok=True)
    view = (slice(50, 146, 2), slice(60, 156, 2), slice(50, 146, 2))  # centred on the midline (index 98 → 24)
    image = mni("t1")[view].astype(np.int16)
    white = mni("wm")[view] > 127
    labels = np.zeros(white.shape, np.uint8)
    labels[:24][white[:24]] = 1  # voxel x < midline: the right hemisphere (x grows to the left here)
    labels[25:][white[25:]] = 2
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "t1.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "hemispheres.nii.gz")
    case = {"images": ["t1.nii.gz"], "label": "hemispheres.nii.gz"}
    manifest = {"format_version": 1, "name": "hemispheres", "channels": [{"name": "T1", "modality": "MR"}],
                "labels": {"background": 0, "right_wm": 1, "left_wm": 2},
                "cases": [{"id": "a", **case}, {"id": "b", **case}], "splits": [{"train": ["a"], "val": ["b"]}]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    fingerprint = compute_fingerprint(load_manifest(root / "dataset.json"), workers=1)
    save_fingerprint(fingerprint, root / "fingerprint.json")
    save_plans(plan_experiment(fingerprint, configs=("3d_fullres",), dataset_name="hemispheres"), root / "plans.json")
    return {"root": root, "labels": labels}


@pytest.mark.slow
def test_coordinates_separate_mirror_image_structures(tmp_path: Path) -> None:
    """Equal budget: with world coordinates both hemispheres' white matter is found; without, they are confused."""
    from methods_helpers import dice

    from medseg.inference import Predictor, load_folds
    from medseg.io import load_image
    from medseg.training import TrainConfig, train

    data = _hemispheres(tmp_path / "data")
    scores = {}
    for kind in ("none", "world"):
        config = load_config(TrainConfig, None, [
            "epochs=6", "iterations_per_epoch=25", "val_iterations=1", "patch_size=[16, 16, 16]", "batch_size=4",
            "model_kwargs={features_per_stage: [4, 8, 16, 32], norm: batch}", "optimizer=adamw", "lr=0.01",
            "num_workers=0", "device=cpu", "progress=plain", "final_validation=false", "preprocess_workers=1",
            f"cache_dir={tmp_path / 'cache'}", f"coordinates={kind}"])
        train(data["root"] / "plans.json", "3d_fullres", [0], tmp_path / kind, config,
              manifest_path=data["root"] / "dataset.json", stream=open(tmp_path / f"{kind}.log", "w"))  # noqa: SIM115
        folds = load_folds([tmp_path / kind], [0])
        assert folds[0].coordinates == kind
        predicted = Predictor(folds, tta=False, device="cpu").predict(load_image(data["root"] / "t1.nii.gz"))
        labels = predicted.labels.numpy()[0]
        scores[kind] = [dice(labels == c, data["labels"] == c) for c in (1, 2)]
    print("Dice (right, left white matter) per coordinates setting:", scores)
    assert min(scores["world"]) > 0.8, scores
    assert min(scores["world"]) > min(scores["none"]) + 0.2, scores
    shutil.rmtree(tmp_path / "cache")
