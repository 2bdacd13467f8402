"""NMS, RoIAlign, box coding, mask pasting and the instance targets, against references computed here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medseg.models.instance.base import Detections, InstanceTarget, detections_to_instances
from medseg.models.instance.grouping import find_centres, group_by_centres, majority_classes
from medseg.models.instance.ops import (
    BoxCoder,
    batched_nms,
    box_iou,
    boxes_of_masks,
    nms,
    paste_masks,
    roi_align,
)
from medseg.models.instance.targets import (
    center_targets,
    contour_map,
    extreme_points,
    object_targets,
    semantic_map,
)

# --- references -----------------------------------------------------------------------------------------------------


def reference_iou(a: np.ndarray, b: np.ndarray) -> float:
    d = len(a) // 2
    inter = 1.0
    for k in range(d):
        inter *= max(0.0, min(a[k + d], b[k + d]) - max(a[k], b[k]))
    vol = lambda x: math.prod(max(0.0, x[k + d] - x[k]) for k in range(d))  # noqa: E731
    return inter / (vol(a) + vol(b) - inter)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS: take the best remaining box, drop every box overlapping it above the threshold."""
    remaining = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [i for i in remaining if reference_iou(boxes[best], boxes[i]) <= threshold]
    return keep


def reference_sample(feature: np.ndarray, point: tuple[float, ...]) -> np.ndarray:
    """Bilinear/trilinear sample as the RoIAlign kernels (Detectron, torchvision) define it, ``feature`` (C, *S)."""
    size = feature.shape[1:]
    if any(p < -1.0 or p > s for p, s in zip(point, size, strict=True)):
        return np.zeros(feature.shape[0])
    low, high, frac = [], [], []
    for p, s in zip(point, size, strict=True):
        p = max(p, 0.0)
        lo = int(p)
        if lo >= s - 1:
            lo = hi = s - 1
            p = float(lo)
        else:
            hi = lo + 1
        low.append(lo)
        high.append(hi)
        frac.append(p - lo)
    value = np.zeros(feature.shape[0])
    for corner in itertools.product((0, 1), repeat=len(size)):
        index = tuple(high[a] if c else low[a] for a, c in enumerate(corner))
        weight = math.prod(frac[a] if c else 1 - frac[a] for a, c in enumerate(corner))
        value += weight * feature[(slice(None), *index)]
    return value


def reference_roi_align(feature: np.ndarray, box: np.ndarray, bins: int, scale: float, ratio: int,
                        aligned: bool) -> np.ndarray:
    """One RoI: every bin the mean of ratio^D samples at the bin's sub-cell centres (Mask R-CNN, Figure 3)."""
    d = len(box) // 2
    offset = 0.5 if aligned else 0.0
    start = [box[a] * scale - offset for a in range(d)]
    length = [box[a + d] * scale - offset - start[a] for a in range(d)]
    if not aligned:
        length = [max(v, 1.0) for v in length]
    out = np.zeros((feature.shape[0], *[bins] * d))
    for cell in itertools.product(range(bins), repeat=d):
        acc = np.zeros(feature.shape[0])
        for sub in itertools.product(range(ratio), repeat=d):
            point = tuple(start[a] + (cell[a] + (sub[a] + 0.5) / ratio) * length[a] / bins for a in range(d))
            acc += reference_sample(feature, point)
        out[(slice(None), *cell)] = acc / ratio**d
    return out


def random_boxes(rng: np.random.Generator, n: int, dims: int, extent: float = 40.0) -> np.ndarray:
    lo = rng.uniform(0, extent, size=(n, dims))
    size = rng.uniform(2, 15, size=(n, dims))
    return np.concatenate([lo, lo + size], axis=1)


# --- NMS ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_equals_greedy_reference(dims: int, threshold: float) -> None:
    rng = np.random.default_rng(dims * 10 + int(threshold * 10))
    boxes = random_boxes(rng, 300, dims, extent=30.0 if dims == 2 else 12.0)
    scores = rng.random(300)
    kept = nms(torch.tensor(boxes), torch.tensor(scores), threshold, block=64).tolist()
    assert kept == reference_nms(boxes, scores, threshold)
    assert 0 < len(kept) < 300


def test_batched_nms_never_suppresses_across_groups() -> None:
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 120, 2, extent=20.0)
    scores = rng.random(120)
    groups = rng.integers(0, 3, 120)
    kept = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(groups), 0.5).tolist()
    expected = []
    for g in range(3):
        index = np.flatnonzero(groups == g)
        expected += [int(index[i]) for i in reference_nms(boxes[index], scores[index], 0.5)]
    assert sorted(kept) == sorted(expected)
    assert kept == sorted(kept, key=lambda i: -scores[i])


def test_box_iou_and_coder() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    iou = box_iou(a, a)
    assert iou[0, 1].item() == pytest.approx(25 / 175)
    assert torch.allclose(iou.diagonal(), torch.ones(2))
    coder = BoxCoder((10.0, 5.0))
    ref = torch.tensor([[2.0, 3.0, 4.0, 9.0, 7.0, 12.0]])  # 3D: lo then hi
    target = torch.tensor([[1.0, 4.0, 6.0, 14.0, 8.0, 17.0]])
    deltas = coder.encode(target, ref)
    assert torch.allclose(coder.decode(deltas, ref), target, atol=1e-5)
    assert deltas[0, 0].item() == pytest.approx(10 * (7.5 - 5.5) / 7)  # centre offset over the size, weight 10
    assert deltas[0, 3].item() == pytest.approx(5 * math.log(13 / 7))  # log size ratio, weight 5


# --- RoIAlign -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("dims", [2, 3])
def test_roi_align_equals_reference(dims: int, aligned: bool) -> None:
    rng = np.random.default_rng(dims + 2 * aligned)
    size = 9 if dims == 2 else 6
    features = rng.standard_normal((2, 3, *[size] * dims))
    scale = 0.5
    boxes = []
    for i in range(6):
        lo = rng.uniform(-3, 2 * size - 4, size=dims)  # some start outside the image
        hi = lo + rng.uniform(0.3, 9, size=dims)
        boxes.append([i % 2, *lo, *hi])
    rois = torch.tensor(boxes)
    bins, ratio = 3, 2
    ours = roi_align(torch.tensor(features), rois, bins, scale, ratio, aligned).numpy()
    for k, roi in enumerate(boxes):
        expected = reference_roi_align(features[int(roi[0])], np.array(roi[1:]), bins, scale, ratio, aligned)
        np.testing.assert_allclose(ours[k], expected, rtol=1e-6, atol=1e-9)


def test_roi_align_of_a_constant_map_is_constant_inside() -> None:
    features = torch.full((1, 1, 16, 16), 2.5)
    out = roi_align(features, torch.tensor([[0.0, 2.0, 3.0, 10.0, 12.0]]), 7, 1.0, 2, True)
    assert torch.allclose(out, torch.full_like(out, 2.5))


# --- masks and boxes ------------------------------------------------------------------------------------------------


def test_boxes_of_masks_and_paste_masks() -> None:
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 3:8, 10:21] = True
    boxes = boxes_of_masks(masks)
    assert boxes[0].tolist() == [3, 10, 8, 21]
    assert boxes[1].tolist() == [0, 0, 0, 0]
    pasted = paste_masks(torch.ones(1, 28, 28), boxes[:1], (20, 30))
    assert torch.equal(pasted[0], masks[0])


def test_detections_to_instances_pastes_by_score_and_drops_duplicates() -> None:
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, :5, :5] = True
    masks[1, 1:5, 1:6] = True  # mostly covered by the better object 0: dropped
    masks[2, 6:, 6:] = True
    det = Detections(torch.zeros(3, 4), torch.tensor([0.9, 0.8, 0.6]), torch.tensor([1, 1, 2]), masks)
    maps = detections_to_instances(det)
    assert maps.classes.tolist() == [1, 2]
    assert int((maps.instances == 1).sum()) == 25 and int((maps.instances == 2).sum()) == 16
    low = detections_to_instances(det, score_threshold=0.7)
    assert low.classes.tolist() == [1]


# --- targets --------------------------------------------------------------------------------------------------------


def _target() -> InstanceTarget:
    inst = torch.zeros(12, 16, dtype=torch.long)
    inst[1:4, 2:8] = 5
    inst[6:11, 9:14] = 2
    return InstanceTarget(inst, torch.tensor([0, 0, 2, 0, 0, 1]))


def test_object_targets_and_semantic_map() -> None:
    t = _target()
    obj = object_targets(t)
    assert obj.ids.tolist() == [2, 5]
    assert obj.labels.tolist() == [2, 1]
    assert obj.boxes.tolist() == [[6, 9, 11, 14], [1, 2, 4, 8]]
    sem = semantic_map(t)
    assert set(sem[t.instances == 2].tolist()) == {2} and set(sem[t.instances == 5].tolist()) == {1}
    assert int(sem[t.instances == 0].sum()) == 0


def test_center_targets() -> None:
    t = _target()
    heat, offsets, centres = center_targets(t, sigma=2.0)
    assert centres.tolist() == [[8.0, 11.0], [2.0, 4.5]]
    assert heat[8, 11].item() == pytest.approx(1.0)
    assert heat[2, 4].item() == pytest.approx(math.exp(-0.25 / 8))
    assert offsets[:, 6, 9].tolist() == [2.0, 2.0]  # voxel + offset = its object's centre
    assert offsets[:, 0, 0].tolist() == [0.0, 0.0]


def test_contour_map_and_extreme_points() -> None:
    inst = torch.zeros(9, 9, dtype=torch.long)
    inst[2:7, 2:7] = 1
    inst[4, 4] = 2  # an object inside another: both have contours around it
    contour = contour_map(inst)
    assert contour[2, 2] and contour[6, 4] and not contour[3, 3] and contour[4, 3] and contour[4, 4]
    assert not contour[0, 0]
    disc = torch.zeros(11, 11, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(11), torch.arange(11), indexing="ij")
    disc[(yy - 5) ** 2 + (xx - 5) ** 2 <= 9] = True
    assert extreme_points(disc).tolist() == [[2, 5], [8, 5], [5, 2], [5, 8]]


def test_grouping_by_centres() -> None:
    heat = torch.zeros(20, 20)
    heat[5, 5], heat[5, 6], heat[14, 14] = 0.9, 0.5, 0.8  # (5, 6) is no peak: its neighbour is higher
    centres, scores = find_centres(heat, threshold=0.1, nms_kernel=3)
    assert centres.tolist() == [[5, 5], [14, 14]] and scores.tolist() == pytest.approx([0.9, 0.8])
    foreground = torch.zeros(20, 20, dtype=torch.bool)
    foreground[3:8, 3:8] = True
    foreground[12:17, 12:17] = True
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    near_first = (yy - 5) ** 2 + (xx - 5) ** 2 < (yy - 14) ** 2 + (xx - 14) ** 2
    target = torch.where(near_first, torch.tensor(5.0), torch.tensor(14.0))
    offsets = torch.stack([target - yy, target - xx])
    ids = group_by_centres(foreground, offsets, centres, chunk=7)
    assert set(ids[3:8, 3:8].flatten().tolist()) == {1} and set(ids[12:17, 12:17].flatten().tolist()) == {2}
    semantic = torch.ones(20, 20, dtype=torch.long)
    semantic[12:17, 12:15] = 2
    assert majority_classes(ids, semantic, 2, 3).tolist() == [1, 2]
