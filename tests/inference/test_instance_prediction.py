"""Instance prediction: objects across window borders found once (dense and detection models), export to the native
grid, world points to preprocessed voxels, the points file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.errors import InferenceError
from medseg.inference.instance import (
    InstanceWindowPredictor,
    export_instances,
    load_points,
    points_to_voxels,
    window_cores,
)
from medseg.models.instance.base import Detections, InstanceSegmentationModel
from medseg.models.instance.grouping import panoptic_grouping
from medseg.models.instance.ops import boxes_of_masks


def _scene(shape: tuple[int, int] = (96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs (objects) on a dark background; two of them straddle the borders of 64-pixel windows."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    objects = np.zeros(shape, dtype=np.int32)
    for k, (cy, cx, r) in enumerate([(32, 32, 9), (48, 70, 8), (20, 80, 6), (75, 20, 7), (80, 60, 10)], start=1):
        objects[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return (objects > 0).astype(np.float32)[None], objects


class _ThresholdDetector(InstanceSegmentationModel):
    """A detection model without weights: every bright connected component of a window is one detection."""

    output_kind = "detections"
    target_kinds = ("boxes", "masks")
    loss_terms = ("none",)

    def __init__(self) -> None:
        super().__init__(2, 1, 2)
        self.windows = 0

    def forward(self, x: torch.Tensor, targets: object = None) -> list[Detections]:
        out = []
        for image in x:
            self.windows += 1
            labels, n = ndimage.label(image[0].numpy() > 0.5)
            masks = torch.from_numpy(np.stack([labels == k for k in range(1, n + 1)]) if n
                                     else np.zeros((0, *labels.shape), dtype=bool))
            out.append(Detections(boxes_of_masks(masks), torch.full((n,), 0.9), torch.ones(n, dtype=torch.long),
                                  masks))
        return out


class _OracleDense(InstanceSegmentationModel):
    """A dense model without weights: semantic logits, a centre heatmap and offsets made from the bright pixels of
    the window, as a trained Panoptic-DeepLab would predict them; a component cut by the window's border gets offsets
    but no centre (the window cannot see where its centre is)."""

    output_kind = "dense"
    target_kinds = ("center_heatmap", "offsets")
    loss_terms = ("none",)

    def __init__(self) -> None:
        super().__init__(2, 1, 2)
        self.dense_channels = 2 + 1 + 2
        self.vector_channels = {3: 0, 4: 1}

    def forward(self, x: torch.Tensor, targets: object = None) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 5, *x.shape[2:])
        yy, xx = torch.meshgrid(torch.arange(x.shape[2]).float(), torch.arange(x.shape[3]).float(), indexing="ij")
        for b, image in enumerate(x):
            fg = image[0] > 0.5
            out[b, 1] = torch.where(fg, 5.0, -5.0)
            labels, n = ndimage.label(fg.numpy())
            for k in range(1, n + 1):
                m = torch.from_numpy(labels == k)
                cy, cx = yy[m].mean(), xx[m].mean()
                cut = bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
                if not cut:
                    out[b, 2] = torch.maximum(out[b, 2], torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8))
                out[b, 3][m] = cy - yy[m]
                out[b, 4][m] = cx - xx[m]
        return out

    def group(self, dense: torch.Tensor, **options: object) -> list:
        return [panoptic_grouping(d[:2], d[2], d[3:], threshold=0.3, nms_kernel=7) for d in dense]


def _assert_each_object_once(found: np.ndarray, truth: np.ndarray) -> None:
    ids = [v for v in np.unique(found) if v > 0]
    assert len(ids) == int(truth.max()), (len(ids), int(truth.max()))
    for k in range(1, int(truth.max()) + 1):
        hit = np.unique(found[truth == k])
        assert len(hit) == 1 and hit[0] > 0, (k, hit)  # one id covers the whole object


def test_detections_of_overlapping_windows_are_merged_once() -> None:
    image, truth = _scene()
    model = _ThresholdDetector()
    predictor = InstanceWindowPredictor([model], [64, 64], step=0.5, device="cpu")
    found = predictor.predict(image)
    assert model.windows == 4 and predictor.stats.windows == 4  # 2 × 2 windows of 64 over 96, overlapping by 32
    _assert_each_object_once(found.instances.numpy(), truth)
    assert found.classes.tolist() == [1] * 5 and len(found.scores) == 5


def test_detections_with_mirroring_and_an_ensemble_still_count_each_object_once() -> None:
    image, truth = _scene()
    predictor = InstanceWindowPredictor([_ThresholdDetector(), _ThresholdDetector()], [64, 64], step=0.5,
                                        mirror_axes=[0, 1], device="cpu")
    _assert_each_object_once(predictor.predict(image).instances.numpy(), truth)


def test_dense_outputs_are_stitched_then_grouped_once() -> None:
    image, truth = _scene()
    predictor = InstanceWindowPredictor([_OracleDense()], [64, 64], step=0.5, mirror_axes=[0, 1], device="cpu")
    found = predictor.predict(image)
    _assert_each_object_once(found.instances.numpy(), truth)


def test_a_2d_model_on_a_volume_numbers_objects_over_all_slices() -> None:
    image, _ = _scene((64, 64))
    volume = np.stack([image[0], image[0][::-1]])[None]  # (C, D, H, W): two slices
    found = InstanceWindowPredictor([_ThresholdDetector()], [64, 64], device="cpu").predict(volume)
    ids = found.instances.numpy()
    assert ids.shape == (2, 64, 64)
    assert set(np.unique(ids[0])) & set(np.unique(ids[1])) == {0}  # ids stay unique across slices
    assert len(found.classes) == int(ids.max())


def test_window_cores_split_each_overlap_in_the_middle() -> None:
    assert window_cores([0, 32, 64], 64, 128) == [(0.0, 48.0), (48.0, 80.0), (80.0, 128.0)]
    assert window_cores([0], 64, 64) == [(0.0, 64.0)]


def test_export_instances_inverts_the_preprocessing() -> None:
    properties = {"shape_before_cropping": [10, 8, 6], "transpose_forward": [2, 0, 1], "transpose_backward": [1, 2, 0],
                  "bbox_used_for_cropping": [[1, 5], [2, 8], [0, 8]],
                  "shape_after_cropping_and_before_resampling": [4, 6, 8], "shape_after_resampling": [8, 6, 8]}
    pre = np.zeros((8, 6, 8), dtype=np.int32)
    pre[2:6, 1:3, 4:6] = 7
    native = export_instances(pre, properties)
    assert native.shape == (10, 8, 6)
    expected = np.zeros((6, 10, 8), dtype=np.int32)  # transposed order: (z, x, y)
    expected[1 + 1:1 + 3, 2 + 1:2 + 3, 0 + 4:0 + 6] = 7  # the first axis halves (8 → 4): rows 2..5 → 1..2
    assert np.array_equal(native, expected.transpose(1, 2, 0))


def test_points_to_voxels_follow_the_affine_transpose_crop_and_resampling() -> None:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 1.0]
    properties = {"transpose_forward": [2, 0, 1], "bbox_used_for_cropping": [[1, 5], [2, 8], [0, 8]],
                  "shape_after_cropping_and_before_resampling": [4, 6, 8], "shape_after_resampling": [8, 6, 8]}
    world = np.array([[10.0 + 2 * 4, -4.0 + 2 * 3, 1.0 + 3 * 2]])  # voxel (4, 3, 2) of the input
    voxel = points_to_voxels(world, affine, properties)[0]
    # transposed (2, 4, 3), minus the crop start (1, 2, 0) → (1, 2, 3); the first axis doubles (centres aligned)
    assert voxel == pytest.approx([(1 + 0.5) * 2 - 0.5, 2.0, 3.0])


def test_load_points(tmp_path: Path) -> None:
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"coordinates": "LPS", "cases": {"a": [{"points": [[1, 2, 3], [4, 5, 6]],
                                                                       "class": "coin"},
                                                                      {"points": [[1, 2], [3, 4]]}]}}))
    groups = load_points(path, {"background": 0, "coin": 1})
    assert groups["a"][0].label == 1 and groups["a"][1].label is None
    assert groups["a"][0].points_mm.tolist() == [[-1, -2, 3], [-4, -5, 6]]  # LPS → RAS
    assert groups["a"][1].points_mm.tolist() == [[-1, -2, 0], [-3, -4, 0]]  # pictures: z = 0
    for bad, message in ((["x"], "a points file is an object"),
                         ({"cases": {"a": [{"points": [[1, 2, 3]]}]}}, "two or more"),
                         ({"cases": {"a": [{"points": [[1, 2, 3], [2, 3, 4]], "class": "cat"}]}}, "not one of"),
                         ({"coordinates": "XYZ", "cases": {}}, "RAS or LPS")):
        path.write_text(json.dumps(bad))
        with pytest.raises(InferenceError, match=message):
            load_points(path, {"background": 0, "coin": 1})
