"""``medseg predict --points`` with DEXTR, 2D (a picture) and 3D (an anisotropic, flipped NIfTI volume).

A tiny DEXTR is trained for two steps through ``medseg train``, then asked for the objects that world-millimetre
extreme points mark. Its threshold is set to 0 so that every voxel of the region DEXTR crops around the points
(their box grown by ``relax`` voxels of the network's grid) becomes the object: the test can then check exactly
where the points landed — through the image's affine, the planned transpose, crop and resampling, and back to the
input's grid — whatever the few training steps taught the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli.main import main
from medseg.io import load_image
from medseg.models import get_model_info

RELAX = {2: 4, 3: 2}


def _discs(shape: tuple[int, ...], centres: list[tuple[int, ...]], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    out = np.zeros(shape, dtype=np.int32)
    for k, c in enumerate(centres, start=1):
        out[sum((g - v) ** 2 for g, v in zip(grid, c, strict=True)) <= radius ** 2] = k
    return out


def _write_case(root: Path, name: str, objects: np.ndarray, dims: int, rng: np.random.Generator) -> dict:
    image = (objects > 0) * 200.0 + rng.normal(20, 5, objects.shape)
    if dims == 2:
        sitk.WriteImage(sitk.GetImageFromArray(np.clip(image, 0, 255).astype(np.uint8)), str(root / f"{name}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(objects.astype(np.uint16)), str(root / f"{name}_obj.png"))
        files = (f"{name}.png", f"{name}_obj.png")
    else:
        affine = np.array([[-0.8, 0, 0, 40.0], [0, 0.8, 0, -12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(objects.astype(np.int16), affine), str(root / f"{name}_obj.nii.gz"))
        files = (f"{name}.nii.gz", f"{name}_obj.nii.gz")
    return {"id": name, "images": [files[0]], "label": files[1],
            "classes": {str(k): "blob" for k in range(1, int(objects.max()) + 1)}}


def _extreme_points(mask: np.ndarray) -> np.ndarray:
    """DEXTR's extreme points of a mask (two per axis), voxel indices."""
    coords = np.argwhere(mask)
    points = []
    for a in range(mask.ndim):
        points += [coords[coords[:, a].argmin()], coords[coords[:, a].argmax()]]
    return np.array(points, dtype=np.float64)


@pytest.mark.parametrize("dims", [2, 3])
def test_predict_points_segments_the_marked_objects(dims: int, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(dims)
    if dims == 2:
        shape, centres, radius = (64, 64), [[(16, 16), (44, 40)], [(18, 44), (46, 14)]], 7
    else:
        shape, centres, radius = (32, 32, 16), [[(9, 9, 5), (22, 22, 10)], [(9, 22, 10), (22, 9, 5)]], 4
    cases = [_write_case(tmp_path, name, _discs(shape, c, radius), dims, rng) for name, c in zip("ab", centres,
                                                                                               strict=True)]
    base = {"format_version": 1, "task": "instance", "channels": [{"name": "grey", "modality": "photo"}],
            "labels": {"background": 0, "blob": 1}}
    (tmp_path / "dataset.json").write_text(json.dumps({**base, "cases": cases,
                                                       "splits": [{"train": ["a"], "val": ["b"]}]}))
    (tmp_path / "test.json").write_text(json.dumps({**base, "cases": cases[1:]}))
    config = "2d" if dims == 2 else "3d_fullres"
    small = {**get_model_info("dextr").test_kwargs[dims], "threshold": 0.0}
    kwargs = json.dumps(small).replace('"', "")
    patch = "[64, 64]" if dims == 2 else "[16, 32, 32]"
    for args in (["plan", str(tmp_path / "dataset.json"), "-o", str(tmp_path / "plans.json"), "--model", "dextr",
                  "--configs", config, "--workers", "1"],
                 ["train", str(tmp_path / "plans.json"), "--config", config, "--fold", "0", "--out",
                  str(tmp_path / "run"), "--epochs", "1", "--iters-per-epoch", "2", "--manifest",
                  str(tmp_path / "dataset.json"), "--set", f"patch_size={patch}", "--set", "batch_size=1",
                  "--set", "num_workers=0", "--set", "preprocess_workers=1", "--set", "val_iterations=1",
                  "--set", "final_validation=false", "--set", "progress=plain", "--set", f"model_kwargs={kwargs}"]):
        assert main(args) == 0, capsys.readouterr()
    # the points of both objects of case b, in world millimetres (RAS), from the label map as medseg loads it
    label = load_image(tmp_path / cases[1]["label"])
    objects = np.asarray(label.array)[0]
    affine = np.asarray(label.affine, dtype=np.float64)
    marked = []
    for k in (1, 2):
        voxels = _extreme_points(objects == k)
        world = (affine @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3]
        marked.append((voxels, world[:, :2] if dims == 2 else world))
    assert dims == 3 or np.allclose([w for _, w in marked], [w[:, :2] for _, w in marked])
    points = {"coordinates": "RAS", "cases": {"b": [{"points": w.tolist(), "class": "blob"} for _, w in marked]}}
    (tmp_path / "points.json").write_text(json.dumps(points))
    fmt = ["--format", "png"] if dims == 2 else []
    code = main(["predict", "-i", str(tmp_path / "test.json"), "-o", str(tmp_path / "pred"), "-m",
                 str(tmp_path / "run"), "--folds", "0", "--device", "cpu", "--no-tta",
                 "--points", str(tmp_path / "points.json"), *fmt])
    assert code == 0, capsys.readouterr()
    found = np.asarray(load_image(tmp_path / "pred" / ("b.png" if dims == 2 else "b.nii.gz")).array)[0]
    table = json.loads((tmp_path / "pred" / "b_instances.json").read_text())["instances"]
    assert [(o["id"], o["class_name"]) for o in table] == [(1, "blob"), (2, "blob")]
    cfg = json.loads((tmp_path / "plans.json").read_text())["configurations"][config]
    native_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    for k, (voxels, _) in enumerate(marked, start=1):
        assert found[objects == k].min() == k  # the marked object lies wholly inside the region it was given
        box = np.argwhere(found == k)
        lo, hi = box.min(axis=0), box.max(axis=0)
        for a in range(dims):
            # the crop: the points' box grown by relax voxels of the network's grid, here in input voxels
            grow = RELAX[dims] if dims == 2 else (RELAX[dims] * cfg["spacing"][cfg["transpose_forward"].index(a)]
                                                  / native_spacing[a])
            assert abs(lo[a] - (voxels[:, a].min() - grow)) <= 1.5, (k, a, lo, voxels, grow)
            assert abs(hi[a] - (voxels[:, a].max() + grow)) <= 1.5, (k, a, hi, voxels, grow)
