"""Inference shared by the panoptic heads built on Mask R-CNN (EfficientPS, UPSNet).

Both detect objects, keep those scoring at least ``panoptic_score``, take each kept object's mask logits for its
class and its image's semantic logits, and let a model-specific fusion pick, per voxel, "stuff" (0) or object
``k + 1``; the objects become :class:`~medseg.models.instance.base.Detections` whose masks are their panoptic
segments (objects left without a voxel are dropped).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medseg.models.instance.base import Detections
from medseg.models.instance.rcnn import last_level_max_pool

#: ``fuse(semantic, boxes, labels, mask_logits, shape)`` → the winner map: 0 stuff, ``k + 1`` object ``k``.
Fusion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]], torch.Tensor]


def panoptic_detections(model: torch.nn.Module, x: torch.Tensor, fuse: Fusion) -> list[Detections]:
    """Detections of ``model`` (a Mask R-CNN with ``semantic_logits`` and ``panoptic_score``) on ``x``, fused."""
    features = model.pyramid(x)
    shape = tuple(x.shape[2:])
    proposals, _ = model.rpn([*features, last_level_max_pool(features[-1])], shape)
    found = model.roi_heads.detect_boxes(features, proposals, shape)
    semantic = model.semantic_logits(x, features)
    out = []
    with torch.no_grad():
        for b, (boxes, scores, labels) in enumerate(found):
            keep = scores >= model.panoptic_score
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            n = boxes.shape[0]
            per_image = [boxes if i == b else boxes[:0] for i in range(len(found))]
            logits = model.roi_heads.mask_branch.logits(features, per_image)
            picked = logits[torch.arange(n, device=x.device), labels - 1] if n else logits[:, 0]
            winner = fuse(semantic[b], boxes, labels, picked, shape)
            masks = torch.stack([winner == k + 1 for k in range(n)]) if n else \
                torch.zeros((0, *shape), dtype=torch.bool, device=x.device)
            present = masks.flatten(1).any(dim=1)
            out.append(Detections(boxes[present], scores[present], labels[present], masks[present]))
    return out
