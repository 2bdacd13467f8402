"""UPSNet: a unified panoptic segmentation network (Xiong et al., CVPR 2019), 2D and 3D.

Paper: Y. Xiong, R. Liao, H. Zhao, R. Hu, M. Bai, E. Yumer, R. Urtasun, "UPSNet: A Unified Panoptic Segmentation
Network", CVPR 2019 (arXiv:1901.03784), Section 3 and Figures 2-3; the authors' code (uber-research/UPSNet,
``upsnet/experiments/upsnet_resnet50_coco_16gpu.yaml``, ``upsnet/models/resnet_upsnet.py``):

- backbone and instance head: Mask R-CNN R50-FPN (:mod:`medseg.models.instance.mask_rcnn`); the FPN adds a global
  context vector to its top level (``fpn_with_gap``: C5 average-pooled, a linear layer, added to P5's lateral);
- **semantic head** (Figure 3): one subnetwork shared by P2..P5 — three 3×3 deformable convolutions (Dai et al., ICCV
  2017; :class:`medseg.models.deformable.DeformConv`, offsets from a 3×3 convolution) with ReLU, 256 → 256 → 128 → 128
  — its outputs upsampled to stride 4 and concatenated (512 channels), a 1×1 convolution to the classes, upsampled ×4;
- **panoptic head** (parameter-free, Section 3.3): every object's logits are its class's semantic logits inside its
  box plus its mask logits pasted into the box; with the background's semantic logit they form the panoptic logits,
  whose arg max assigns each voxel to the background or one object. Training uses the ground-truth boxes, classes
  and masks for the objects and cross-entropy against the instance map.

Losses (the authors' COCO weights): Mask R-CNN's, the semantic cross-entropy × 0.2, the panoptic cross-entropy × 0.1.
Inference: detections with a score of at least ``panoptic_score`` (0.5) enter the panoptic head; each keeps the voxels
it wins.

Paper configuration and parameter figure: the authors' code at that configuration (ResNet-50, 81 COCO classes with
background in the instance head, 133 semantic classes), built with that code (``resnet_upsnet.py``) and counted:
46,129,904 parameters. Ours: 46,125,547 — the
authors' box regression and mask prediction have outputs for the background class too (4 × 81 deltas and 81 masks;
here 4 × 80 and 80), 4,357 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Pool
from torch import nn

from medseg.models.blocks import make_conv
from medseg.models.deformable import DeformConv
from medseg.models.instance.base import Detections, InstanceTarget
from medseg.models.instance.mask_rcnn import SMALL, MaskRCNN
from medseg.models.instance.ops import paste_masks
from medseg.models.instance.targets import ObjectTargets, semantic_map
from medseg.models.natural.refine._modules import upsample_to
from medseg.models.natural.refine.fpn import FeaturePyramid
from medseg.models.panoptic.fusion import panoptic_detections
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DeformableSemanticHead", "GlobalContextFPN", "UPSNet"]


class GlobalContextFPN(FeaturePyramid):
    """FPN whose top lateral also gets C5's global average through a linear layer (UPSNet's ``fpn_with_gap``)."""

    def __init__(self, spatial_dims: int, in_channels: list[int], channels: int = 256) -> None:
        super().__init__(spatial_dims, in_channels, channels)
        self.gap = nn.Linear(in_channels[-1], channels)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """P levels of the C levels, with the global context added at the top."""
        context = self.gap(self.pool(features[-1]).flatten(1))
        y = self.lateral[-1](features[-1]) + context.view(*context.shape, *([1] * (features[-1].dim() - 2)))
        outs = [self.output[-1](y)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            y = lateral + F.interpolate(y, size=lateral.shape[2:], mode="nearest")
            outs.insert(0, self.output[i](y))
        return outs


class DeformableSemanticHead(nn.Module):
    """UPSNet's semantic head: a shared three-layer deformable subnetwork per level, concatenation, 1×1 classifier.

    Shapes: P2..P5 ``(B, C, *spatial_i)`` to logits ``(B, classes, *spatial_P2)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, classes: int, channels: int = 128, levels: int = 4
                 ) -> None:
        super().__init__()
        widths = [(in_channels, in_channels), (in_channels, channels), (channels, channels)]
        self.subnet = nn.ModuleList(DeformConv(spatial_dims, a, b, 3) for a, b in widths)
        self.score = make_conv(spatial_dims, channels * levels, classes, 1)
        nn.init.normal_(self.score.weight, std=0.01)
        nn.init.zeros_(self.score.bias)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        """Semantic logits at the finest level's resolution."""
        size = pyramid[0].shape[2:]
        maps = []
        for p in pyramid:
            y = p
            for conv in self.subnet:
                y = F.relu(conv(y))
            maps.append(upsample_to(y, size))
        return self.score(torch.cat(maps, dim=1))


@register_model(
    "upsnet",
    family="panoptic",
    task="panoptic",
    spatial_dims=(2, 3),
    paper_title="UPSNet: A Unified Panoptic Segmentation Network",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=81, kwargs={"backbone": "resnet50", "semantic_classes": 133},
        params=46_129_904,
        source="authors' code, uber-research/UPSNet upsnet/experiments/upsnet_resnet50_coco_16gpu.yaml (R-50-FPN with "
               "global context, deformable semantic head, 81 instance and 133 semantic classes), built with that code "
               "and counted",
    ),
    divisor=32,
    test_kwargs={2: {**SMALL, "semantic_channels": 8},
                 3: {**SMALL, "fpn_channels": 8, "representation": 16, "mask_channels": 8, "semantic_channels": 8}},
)
class UPSNet(MaskRCNN):
    """UPSNet: Mask R-CNN, a deformable semantic head and a parameter-free panoptic head (Xiong et al., 2019).

    Shapes: ``(B, in_channels, *spatial)`` (multiples of 32) to one
    :class:`~medseg.models.instance.base.Detections` per image whose masks are the objects' panoptic segments
    (disjoint), or a loss dict with targets.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes including background.
        backbone: A registered ResNet.
        pretrained_backbone: Local weights for the backbone.
        backbone_kwargs: Extra backbone options.
        fpn_channels: Pyramid width (256).
        anchor_sizes: Anchor sizes per level P2..P6.
        aspect_ratios: Anchor aspect ratios.
        representation: Box head width (1024).
        mask_channels: Mask head width (256).
        box_pool: Box RoI bins.
        mask_pool: Mask RoI bins.
        rpn_batch: RPN anchors per image.
        roi_batch: RoIs per image.
        pre_nms_topk: RPN proposals per level before NMS.
        post_nms_topk: RPN proposals per image after NMS.
        score_threshold: Detection score threshold (0.05).
        detections_per_image: Detections per image.
        semantic_classes: Semantic head outputs (``out_channels`` when ``None``; the paper's COCO model 133). The
            panoptic head reads class ``c``'s logits from channel ``c``.
        semantic_channels: Width of the deformable subnetwork's last layers (128).
        semantic_weight: Semantic loss weight (0.2).
        panoptic_weight: Panoptic loss weight (0.1).
        panoptic_score: Detections entering the panoptic head at inference (0.5).
    """

    loss_terms = ("rpn_objectness", "rpn_boxes", "classification", "box_regression", "mask", "semantic", "panoptic")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet50",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        fpn_channels: int = 256,
        anchor_sizes: Sequence[float] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        representation: int = 1024,
        mask_channels: int = 256,
        box_pool: int | None = None,
        mask_pool: int | None = None,
        rpn_batch: int = 256,
        roi_batch: int = 512,
        pre_nms_topk: Sequence[int] = (2000, 1000),
        post_nms_topk: Sequence[int] = (1000, 1000),
        score_threshold: float = 0.05,
        detections_per_image: int = 100,
        semantic_classes: int | None = None,
        semantic_channels: int = 128,
        semantic_weight: float = 0.2,
        panoptic_weight: float = 0.1,
        panoptic_score: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, backbone=backbone,
                         pretrained_backbone=pretrained_backbone, backbone_kwargs=backbone_kwargs,
                         fpn_channels=fpn_channels, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                         representation=representation, mask_channels=mask_channels, box_pool=box_pool,
                         mask_pool=mask_pool, rpn_batch=rpn_batch, roi_batch=roi_batch, pre_nms_topk=pre_nms_topk,
                         post_nms_topk=post_nms_topk, score_threshold=score_threshold,
                         detections_per_image=detections_per_image)
        self.semantic_head = DeformableSemanticHead(spatial_dims, fpn_channels, semantic_classes or out_channels,
                                                    semantic_channels)
        self.semantic_weight, self.panoptic_weight, self.panoptic_score = semantic_weight, panoptic_weight, \
            panoptic_score

    def build_neck(self) -> None:
        """The FPN with UPSNet's global context."""
        self.neck = GlobalContextFPN(self.spatial_dims, self.backbone.out_channels[1:5], self.fpn_channels)

    def semantic_logits(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Semantic logits at the input's resolution."""
        return upsample_to(self.semantic_head(features[:4]), x.shape[2:])

    def panoptic_logits(self, semantic: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                        mask_logits: torch.Tensor) -> torch.Tensor:
        """Panoptic logits ``(1 + N, *spatial)`` of one image.

        The background's semantic logit, then each object's class logits inside its box plus its pasted mask logits
        (a large negative value outside the box).
        """
        shape = semantic.shape[1:]
        d = self.spatial_dims
        rows = [semantic[0]]
        pasted = paste_masks(mask_logits.float(), boxes, shape, threshold=None) if len(boxes) else None
        for i in range(len(boxes)):
            inside = torch.zeros(shape, dtype=torch.bool, device=semantic.device)
            lo = [max(int(boxes[i, a].floor()), 0) for a in range(d)]
            hi = [min(int(boxes[i, a + d].ceil()), int(shape[a])) for a in range(d)]
            inside[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
            assert pasted is not None
            rows.append(torch.where(inside, semantic[int(labels[i])] + pasted[i], torch.full_like(semantic[0], -1e4)))
        return torch.stack(rows)

    def extra_losses(self, x: torch.Tensor, features: Sequence[torch.Tensor], targets: Sequence[InstanceTarget],
                     objects: Sequence[ObjectTargets]) -> dict[str, torch.Tensor]:
        """Semantic and panoptic cross-entropies (the panoptic head on the ground-truth objects)."""
        semantic = self.semantic_logits(x, features)
        goal = torch.stack([semantic_map(t) for t in targets]).clamp(max=semantic.shape[1] - 1)
        semantic_loss = F.cross_entropy(semantic.float(), goal) * self.semantic_weight
        mask_logits = self.roi_heads.mask_branch.logits(features, [o.boxes.to(x.dtype) for o in objects])
        losses, start = [], 0
        for b, obj in enumerate(objects):
            n = obj.boxes.shape[0]
            per = mask_logits[start:start + n]
            start += n
            picked = per[torch.arange(n, device=x.device), obj.labels - 1] if n else per[:, 0]
            logits = self.panoptic_logits(semantic[b], obj.boxes.to(x.dtype), obj.labels, picked)
            index = torch.zeros(obj.masks.shape[1:], dtype=torch.long, device=x.device)
            for k in range(n):
                index[obj.masks[k]] = k + 1
            losses.append(F.cross_entropy(logits[None].float(), index[None]))
        return {"semantic": semantic_loss, "panoptic": torch.stack(losses).mean() * self.panoptic_weight}

    def forward(self, x: torch.Tensor, targets: Sequence[InstanceTarget] | None = None
                ) -> list[Detections] | dict[str, torch.Tensor]:
        """Detections with panoptic segments as masks, or with ``targets`` the loss terms."""
        if targets is not None:
            return super().forward(x, targets)
        self.check_input(x)
        return panoptic_detections(
            self, x, lambda semantic, boxes, labels, picked, shape: self.panoptic_logits(
                semantic, boxes, labels, picked).argmax(dim=0))
