"""Bottom-up grouping: instances from a semantic map, a centre heatmap and offset vectors (2D and 3D).

Panoptic-DeepLab's post-processing (Cheng et al., CVPR 2020, Section 3.3; the authors' ``find_instance_center``,
``group_pixels`` and ``merge_semantic_and_instance``): centres are the heatmap's local maxima above a threshold
(a max pooling with a ``nms_kernel`` window keeps a voxel equal to its neighbourhood's maximum), at most ``top_k`` of
them; every foreground voxel joins the centre nearest to where its offset vector points; each instance takes the
majority class of its voxels' semantic labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medseg.models.instance.base import InstanceMaps

__all__ = ["find_centres", "group_by_centres", "majority_classes", "panoptic_grouping"]


def find_centres(heatmap: torch.Tensor, threshold: float = 0.1, nms_kernel: int = 7, top_k: int | None = 200
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of a heatmap ``(*spatial)``: voxel indices ``(N, D)`` and their scores, by decreasing score."""
    dims = heatmap.dim()
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
    h = heatmap[None, None].float()
    pooled = pool(h, kernel_size=nms_kernel, stride=1, padding=(nms_kernel - 1) // 2)[0, 0]
    peaks = (heatmap.float() == pooled) & (heatmap.float() > threshold)
    coords = torch.nonzero(peaks)
    scores = heatmap[peaks].float()
    order = torch.argsort(scores, descending=True)
    if top_k is not None:
        order = order[:top_k]
    return coords[order], scores[order]


def group_by_centres(foreground: torch.Tensor, offsets: torch.Tensor, centres: torch.Tensor,
                     chunk: int = 1 << 18) -> torch.Tensor:
    """Instance ids (1..N, the centres' order.

    0 off the foreground) of each voxel: the centre nearest to the voxel plus its offset. ``foreground`` ``(*spatial)``
    bool, ``offsets`` ``(D, *spatial)``, ``centres`` ``(N, D)``.
    """
    ids = torch.zeros(foreground.shape, dtype=torch.long, device=foreground.device)
    if centres.numel() == 0:
        return ids
    points = torch.nonzero(foreground)
    if points.numel() == 0:
        return ids
    shifted = points.float() + offsets[(slice(None), *points.T)].T.float()
    c = centres.float()
    nearest = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], chunk):  # bounded memory: chunk × N distances at a time
        nearest[start:start + chunk] = torch.cdist(shifted[start:start + chunk], c).argmin(dim=1)
    ids[tuple(points.T)] = nearest + 1
    return ids


def majority_classes(ids: torch.Tensor, semantic: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    """Per instance ``1..count``, the most frequent foreground class of its voxels (``(count,)``; ties: lowest)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=ids.device)
    inside = ids > 0
    votes = torch.zeros((count + 1) * num_classes, dtype=torch.long, device=ids.device)
    votes.index_add_(0, (ids[inside] * num_classes + semantic[inside]).flatten(),
                     torch.ones(int(inside.sum()), dtype=torch.long, device=ids.device))
    votes = votes.view(count + 1, num_classes)[1:]
    votes[:, 0] = -1  # an instance's class is a foreground class
    return votes.argmax(dim=1)


def panoptic_grouping(semantic_logits: torch.Tensor, heatmap: torch.Tensor, offsets: torch.Tensor,
                      threshold: float = 0.1, nms_kernel: int = 7, top_k: int | None = 200, min_size: int = 0
                      ) -> InstanceMaps:
    """Instances of one image from semantic logits ``(K, *spatial)``, a heatmap and offsets ``(D, *spatial)``.

    Instances smaller than ``min_size`` voxels are dropped. Scores are the centres' heatmap values.
    """
    semantic = semantic_logits.argmax(dim=0)
    centres, scores = find_centres(heatmap, threshold, nms_kernel, top_k)
    ids = group_by_centres(semantic > 0, offsets, centres)
    sizes = torch.bincount(ids.flatten(), minlength=len(centres) + 1)[1:]
    keep = sizes >= max(min_size, 1)
    lookup = torch.zeros(len(centres) + 1, dtype=torch.long, device=ids.device)
    lookup[1:][keep] = torch.arange(1, int(keep.sum()) + 1, device=ids.device)
    ids = lookup[ids]
    count = int(keep.sum())
    classes = majority_classes(ids, semantic, count, semantic_logits.shape[0])
    return InstanceMaps(ids, classes, scores[keep])
