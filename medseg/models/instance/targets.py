"""Training targets built from instance label maps.

Boxes and masks, centre heatmaps and offsets, contours, extreme points.

Every function takes one :class:`~medseg.models.instance.base.InstanceTarget` (or a binary mask) of one image and
works in 2D and 3D; coordinates are voxel indices along the array axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from medseg.models.instance.base import InstanceTarget
from medseg.models.instance.ops import boxes_of_masks

__all__ = [
    "ObjectTargets",
    "center_targets",
    "contour_map",
    "extreme_points",
    "gaussian_heatmap",
    "object_targets",
    "semantic_map",
]


class ObjectTargets(NamedTuple):
    """The objects of one image (ids in increasing order).

    Attributes:
        ids: ``(N,)`` instance ids.
        boxes: ``(N, 2D)`` tight boxes.
        labels: ``(N,)`` classes (1..K-1).
        masks: ``(N, *spatial)`` boolean masks.
    """

    ids: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


def _class_of(target: InstanceTarget, ids: torch.Tensor) -> torch.Tensor:
    lookup = target.classes.to(ids.device).long()
    inside = ids < lookup.numel()
    safe = torch.where(inside, ids, torch.zeros_like(ids))
    return torch.where(inside, lookup[safe], torch.ones_like(ids)).clamp(min=1)


def object_targets(target: InstanceTarget) -> ObjectTargets:
    """Boxes, classes and masks of the objects present in ``target`` (an id without a class entry is class 1)."""
    instances = target.instances.long()
    ids = torch.unique(instances)
    ids = ids[ids > 0]
    masks = instances[None] == ids.view(-1, *([1] * instances.dim()))
    return ObjectTargets(ids, boxes_of_masks(masks), _class_of(target, ids), masks)


def semantic_map(target: InstanceTarget) -> torch.Tensor:
    """The class of every voxel (``(*spatial)`` int64; 0 background)."""
    instances = target.instances.long().clamp(min=0)
    lookup = target.classes.to(instances.device).long()
    size = max(int(instances.max()) + 1 if instances.numel() else 1, lookup.numel())
    full = torch.ones(size, dtype=torch.long, device=instances.device)
    full[: lookup.numel()] = lookup
    full[0] = 0
    return full[instances]


def gaussian_heatmap(centres: torch.Tensor, shape: Sequence[int], sigma: float) -> torch.Tensor:
    """``max_k exp(-|p - c_k|² / (2 σ²))`` over the centres ``(N, D)`` on a grid of ``shape`` (0 without centres)."""
    device = centres.device
    heat = torch.zeros([int(s) for s in shape], dtype=torch.float32, device=device)
    if centres.numel() == 0:
        return heat
    radius = math.ceil(3 * sigma)
    for c in centres.float():
        lo = [max(math.floor(float(v)) - radius, 0) for v in c]
        hi = [min(math.ceil(float(v)) + radius + 1, int(s)) for v, s in zip(c, shape, strict=True)]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            continue
        axes = [torch.arange(a, b, device=device, dtype=torch.float32) - float(v)
                for a, b, v in zip(lo, hi, c, strict=True)]
        mesh = torch.meshgrid(*axes, indexing="ij")
        g = torch.exp(-sum(m * m for m in mesh) / (2 * sigma * sigma))
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        heat[region] = torch.maximum(heat[region], g)
    return heat


def center_targets(target: InstanceTarget, sigma: float = 8.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Panoptic-DeepLab's instance targets (Cheng et al., CVPR 2020, Section 3.2).

    Each object is represented by its centre of mass; the centre heatmap is a gaussian of standard deviation
    ``sigma`` voxels around each centre; every object voxel regresses the offset vector to its object's centre.

    Returns:
        ``heatmap (*spatial)``, ``offsets (D, *spatial)`` (centre minus voxel, 0 on the background) and the
        ``(N, D)`` centres.
    """
    instances = target.instances.long()
    shape = instances.shape
    grids = torch.meshgrid(*[torch.arange(s, device=instances.device, dtype=torch.float32) for s in shape],
                           indexing="ij")
    offsets = torch.zeros((len(shape), *shape), dtype=torch.float32, device=instances.device)
    ids = torch.unique(instances)
    ids = ids[ids > 0]
    centres = []
    for k in ids.tolist():
        mask = instances == k
        centre = torch.stack([g[mask].mean() for g in grids])
        centres.append(centre)
        for axis, g in enumerate(grids):
            offsets[axis][mask] = centre[axis] - g[mask]
    stacked = torch.stack(centres) if centres else torch.zeros((0, len(shape)), device=instances.device)
    return gaussian_heatmap(stacked, shape, sigma), offsets, stacked


def contour_map(instances: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Boolean map of object contours.

    Object voxels with a face neighbour of another id (background included), dilated to ``width`` voxels inwards (CIA-
    Net's contour target, Zhou et al., IPMI 2019, Section 2.1).
    """
    x = instances.long()
    dims = x.dim()
    padded = F.pad(x[None, None].float(), [1, 1] * dims, mode="replicate")[0, 0].long()
    border = torch.zeros_like(x, dtype=torch.bool)
    centre = tuple(slice(1, -1) for _ in range(dims))
    for axis in range(dims):
        for shift in (-1, 1):
            sl = list(centre)
            sl[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            border |= padded[tuple(sl)] != x
    border &= x > 0
    if width > 1:
        kernel = 2 * (width - 1) + 1
        pool = {2: F.max_pool2d, 3: F.max_pool3d}[dims]
        grown = pool(border[None, None].float(), kernel, stride=1, padding=width - 1)[0, 0] > 0
        border = grown & (x > 0)
    return border


def extreme_points(mask: torch.Tensor) -> torch.Tensor:
    """The ``2D`` extreme points of a binary mask (``(2D, D)`` voxel indices).

    Along each axis the lowest and the highest voxel, the one nearest the mask's centre of mass across the other axes
    when several tie (DEXTR's extreme clicking, Maninis et al., CVPR 2018, Section 3).
    """
    coords = torch.nonzero(mask.bool()).float()
    if coords.numel() == 0:
        raise ValueError("extreme points of an empty mask")
    centre = coords.mean(dim=0)
    points = []
    for axis in range(mask.dim()):
        for pick in (coords[:, axis].min(), coords[:, axis].max()):
            tied = coords[coords[:, axis] == pick]
            other = [a for a in range(mask.dim()) if a != axis]
            distance = ((tied[:, other] - centre[other]) ** 2).sum(dim=1)
            points.append(tied[int(torch.argmin(distance))])
    return torch.stack(points).long()
