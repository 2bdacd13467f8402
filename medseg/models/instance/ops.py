"""Box operations, non-maximum suppression, RoIAlign and mask pasting in plain torch, for 2D and 3D.

Boxes are ``(N, 2D)`` tensors ``(lo_0, …, lo_{D-1}, hi_0, …, hi_{D-1})`` in continuous voxel coordinates along the
array axes (axis 0 first), where voxel ``i`` spans ``[i, i + 1)``: a box covering voxels ``a … b`` is ``(a, b + 1)``.
In 2D this is torchvision's ``(x1, y1, x2, y2)`` with the axes in array order ``(row, column)``.

- :func:`nms` is greedy non-maximum suppression (Neubeck & Van Gool, ICPR 2006): boxes by decreasing score, each
  kept unless a kept box overlaps it with IoU above the threshold (blocked, so memory stays bounded).
- :func:`roi_align` is RoIAlign (He et al., "Mask R-CNN", ICCV 2017, Section 3 and Figure 3): each output bin averages
  ``sampling_ratio`` samples per axis, each sample bilinearly (trilinearly) interpolated from the four (eight)
  nearest feature values; with ``aligned=True`` a continuous coordinate ``c`` is sampled at ``c · scale - 0.5`` (the
  half-pixel correction of Detectron2's ``ROIAlignV2``). Samples outside ``[-1, size]`` read 0 and samples in
  ``[-1, 0)`` or beyond ``size - 1`` read the border value, as torchvision's and Detectron's kernels do.
- :class:`BoxCoder` is the box parameterisation of R-CNN (Girshick et al., CVPR 2014, Appendix C): centre offsets
  relative to the size, log size ratios, each scaled by a weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_iou",
    "box_volume",
    "boxes_of_masks",
    "clip_boxes",
    "mask_iou",
    "nms",
    "paste_masks",
    "roi_align",
]


def _dims(boxes: torch.Tensor) -> int:
    return boxes.shape[-1] // 2


def box_volume(boxes: torch.Tensor) -> torch.Tensor:
    """Area (2D) or volume (3D) of each box ``(N, 2D)`` → ``(N,)`` (0 for empty boxes)."""
    d = _dims(boxes)
    return (boxes[:, d:] - boxes[:, :d]).clamp(min=0).prod(dim=1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair of boxes: ``(N, 2D)``, ``(M, 2D)`` → ``(N, M)``."""
    d = _dims(a)
    inter = None
    for axis in range(d):  # one (N, M) extent per axis: no (N, M, D) intermediates
        extent = (torch.minimum(a[:, None, axis + d], b[None, :, axis + d])
                  - torch.maximum(a[:, None, axis], b[None, :, axis])).clamp_(min=0)
        inter = extent if inter is None else inter.mul_(extent)
    assert inter is not None
    union = box_volume(a)[:, None] + box_volume(b)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def clip_boxes(boxes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Clip boxes to the image ``[0, shape)`` along each axis."""
    upper = torch.tensor([float(s) for s in shape] * 2, dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), upper)


def boxes_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``(N, 2D)`` of binary masks ``(N, *spatial)`` (all zeros for an empty mask)."""
    n, spatial = masks.shape[0], masks.shape[1:]
    boxes = torch.zeros(n, 2 * len(spatial), dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    for axis in range(len(spatial)):
        other = tuple(a + 1 for a in range(len(spatial)) if a != axis)
        present = masks.bool().any(dim=other) if other else masks.bool()
        index = torch.arange(spatial[axis], device=masks.device, dtype=torch.float32)
        big = torch.full_like(index, float(spatial[axis]))
        lo = torch.where(present, index, big).amin(dim=1)
        hi = torch.where(present, index + 1, torch.zeros_like(index)).amax(dim=1)
        empty = ~present.any(dim=1)
        boxes[:, axis] = torch.where(empty, torch.zeros_like(lo), lo)
        boxes[:, axis + len(spatial)] = torch.where(empty, torch.zeros_like(hi), hi)
    return boxes


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, block: int = 1024) -> torch.Tensor:
    """Greedy non-maximum suppression; returns the indices kept, by decreasing score.

    A box is dropped when it overlaps a kept box of higher score with IoU above ``iou_threshold``. The boxes are
    visited by decreasing score in blocks of ``block``: a block's boxes are first tested against every box kept
    from earlier blocks at once, then scanned in order against the block's own kept boxes, so memory stays within
    ``block`` times the kept boxes whatever the number of boxes.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    ordered = boxes[order].float()
    kept_boxes = ordered[:0]
    kept: list[torch.Tensor] = []
    for start in range(0, len(order), block):
        part = ordered[start:start + block]
        alive = torch.ones(len(part), dtype=torch.bool, device=boxes.device)
        if len(kept_boxes):
            alive &= ~(box_iou(kept_boxes, part) > iou_threshold).any(dim=0)
        within = (box_iou(part, part) > iou_threshold).cpu().numpy()
        flags = alive.cpu().numpy()
        for i in range(len(part)):
            if flags[i]:
                flags[i + 1:] &= ~within[i, i + 1:]
        index = torch.from_numpy(flags).to(boxes.device)
        kept_boxes = torch.cat([kept_boxes, part[index]])
        kept.append(order[start:start + block][index])
    return torch.cat(kept)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
                ) -> torch.Tensor:
    """:func:`nms` within each group (class) separately: boxes of different groups never suppress each other.

    Returns the indices kept, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = []
    for group in torch.unique(groups):
        index = torch.nonzero(groups == group).flatten()
        kept.append(index[nms(boxes[index], scores[index], iou_threshold)])
    merged = torch.cat(kept)
    return merged[torch.argsort(scores[merged], descending=True, stable=True)]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of binary masks ``(N, *spatial)``, ``(M, *spatial)`` → ``(N, M)``."""
    fa = a.flatten(1).float()
    fb = b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return inter / union.clamp(min=1)


class BoxCoder:
    """R-CNN's box regression targets (Girshick et al., CVPR 2014, Appendix C), in D dimensions.

    For a reference box with centre ``c`` and size ``s`` and a target box ``(c*, s*)``: ``t_c = w_c (c* - c) / s``
    and ``t_s = w_s log(s* / s)`` per axis. Decoding clamps ``t_s / w_s`` at ``log(1000 / 16)`` (Detectron's
    ``bbox_xform_clip``).

    Args:
        weights: ``(w_c, w_s)``: (1, 1) for the RPN, (10, 5) for the box head (Detectron's ``BBOX_REG_WEIGHTS``
            (10, 10, 5, 5)).
    """

    clip = math.log(1000.0 / 16)

    def __init__(self, weights: tuple[float, float] = (1.0, 1.0)) -> None:
        self.wc, self.ws = float(weights[0]), float(weights[1])

    def encode(self, targets: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Regression targets of ``targets`` relative to ``references`` (both ``(N, 2D)``)."""
        d = _dims(references)
        size = (references[:, d:] - references[:, :d]).clamp(min=1e-6)
        centre = references[:, :d] + 0.5 * size
        t_size = (targets[:, d:] - targets[:, :d]).clamp(min=1e-6)
        t_centre = targets[:, :d] + 0.5 * t_size
        return torch.cat([self.wc * (t_centre - centre) / size, self.ws * torch.log(t_size / size)], dim=1)

    def decode(self, deltas: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Boxes from regression ``deltas`` ``(N, 2D)`` relative to ``references`` ``(N, 2D)``."""
        d = _dims(references)
        references = references.to(deltas.dtype)
        size = references[:, d:] - references[:, :d]
        centre = references[:, :d] + 0.5 * size
        dc = deltas[:, :d] / self.wc
        ds = (deltas[:, d:] / self.ws).clamp(max=self.clip)
        new_centre = centre + dc * size
        new_size = torch.exp(ds) * size
        return torch.cat([new_centre - 0.5 * new_size, new_centre + 0.5 * new_size], dim=1)


def _sample_axis(lo: torch.Tensor, hi: torch.Tensor, bins: int, ratio: int, size: int, aligned: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per RoI and sample along one axis: low index, high index, their weights, and the validity mask."""
    offset = 0.5 if aligned else 0.0
    start = lo - offset
    length = hi - lo
    if not aligned:
        length = length.clamp(min=1.0)
    step = length / bins
    grid = (torch.arange(bins * ratio, device=lo.device, dtype=lo.dtype) + 0.5) / ratio  # in bins
    coords = start[:, None] + grid[None, :] * step[:, None]  # (K, bins * ratio)
    valid = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    coords = torch.where(at_end, low.to(coords.dtype), coords)
    high = torch.where(at_end, low, low + 1)
    frac = coords - low.to(coords.dtype)
    return low, high, frac, valid


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | Sequence[int],
              spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True) -> torch.Tensor:
    """RoIAlign of ``rois`` on ``features``.

    Args:
        features: ``(B, C, *spatial)`` feature maps (2D or 3D).
        rois: ``(K, 1 + 2D)``: batch index, then the box in input-image coordinates.
        output_size: Bins per axis (an int for all axes).
        spatial_scale: Feature size / input size (1 / stride).
        sampling_ratio: Samples per bin and axis (> 0; Detectron's Mask R-CNN uses 2).
        aligned: Half-pixel correction (Detectron2's ``ROIAlignV2``).

    Returns:
        ``(K, C, *output_size)``.
    """
    dims = features.dim() - 2
    sizes = [int(output_size)] * dims if isinstance(output_size, int) else [int(s) for s in output_size]
    if sampling_ratio < 1:
        raise ValueError("sampling_ratio must be at least 1")
    k, channels = rois.shape[0], features.shape[1]
    if k == 0:
        return features.new_zeros((0, channels, *sizes))
    batch = rois[:, 0].long()
    boxes = rois[:, 1:].to(features.dtype) * spatial_scale
    axes = [_sample_axis(boxes[:, a], boxes[:, a + dims], sizes[a], sampling_ratio, features.shape[2 + a], aligned)
            for a in range(dims)]
    # (K, C, *[bins·ratio]) by summing the 2^D interpolation corners
    out = None
    fmap = features.movedim(1, -1)  # (B, *spatial, C)
    for corner in range(1 << dims):
        index: list[torch.Tensor] = [batch.view(k, *([1] * dims))]
        weight = None
        for a, (low, high, frac, valid) in enumerate(axes):
            pick_high = (corner >> a) & 1
            idx = high if pick_high else low
            w = frac if pick_high else 1 - frac
            w = w * valid.to(w.dtype)
            shape = [k] + [1] * dims
            shape[1 + a] = idx.shape[1]
            index.append(idx.view(shape))
            weight = w.view(shape) if weight is None else weight * w.view(shape)
        values = fmap[tuple(index)]  # (K, *samples, C)
        assert weight is not None
        term = values * weight[..., None]
        out = term if out is None else out + term
    assert out is not None
    pooled = out.movedim(-1, 1)  # (K, C, *samples)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    return pool(pooled, kernel_size=sampling_ratio, stride=sampling_ratio) if sampling_ratio > 1 else pooled


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, shape: Sequence[int], threshold: float | None = 0.5
                ) -> torch.Tensor:
    """Resample box-local masks ``(N, *M)`` into their boxes on an image of ``shape``.

    Each mask is sampled bi/trilinearly at the centres of the image voxels inside its box (the mask's cells spanning
    the box evenly, zero beyond the mask's outer cell centres, as Detectron2's ``paste_masks_in_image``); outside
    the box the result is 0.

    Returns:
        ``(N, *shape)``: booleans at ``> threshold``, or the probabilities when ``threshold`` is ``None``.
    """
    dims = len(shape)
    n = masks.shape[0]
    out = torch.zeros((n, *[int(s) for s in shape]), dtype=masks.dtype, device=masks.device)
    for i in range(n):
        box = boxes[i]
        lo = [max(math.floor(float(box[a])), 0) for a in range(dims)]
        hi = [min(math.ceil(float(box[a + dims])), int(shape[a])) for a in range(dims)]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            continue
        axes = []
        for a in range(dims):
            centres = torch.arange(lo[a], hi[a], device=masks.device, dtype=torch.float32) + 0.5
            extent = max(float(box[a + dims] - box[a]), 1e-6)
            axes.append((centres - float(box[a])) / extent * 2 - 1)  # in [-1, 1] across the box
        mesh = torch.meshgrid(*axes, indexing="ij")
        grid = torch.stack(mesh[::-1], dim=-1)[None].to(masks.dtype)  # grid_sample wants (x, y[, z]) last
        sampled = F.grid_sample(masks[i][None, None], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0, 0]
        out[(i, *[slice(a, b) for a, b in zip(lo, hi, strict=True)])] = sampled
    return out > threshold if threshold is not None else out
