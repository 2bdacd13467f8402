"""Panoptic FPN (Kirillov et al., CVPR 2019): Mask R-CNN with a semantic segmentation branch on its FPN, 2D and 3D.

Paper: A. Kirillov, R. Girshick, K. He, P. Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019 (arXiv:1901.02446),
Section 3 and Figure 3. Mask R-CNN R50-FPN (:mod:`medseg.models.instance.mask_rcnn`) with a semantic branch on the
same pyramid: each level P2..P5 is brought to stride 4 by ``max(1, level)`` stages of (3×3 convolution to 128, GroupNorm
32, ReLU, bilinear ×2 upsampling; P2's stage does not upsample), the four maps are summed, a 1×1 convolution gives the
class logits, upsampled ×4. Losses: Mask R-CNN's plus the semantic cross-entropy weighted 0.5 (the authors' COCO
setting, Detectron2 ``SEM_SEG_HEAD.LOSS_WEIGHT``). Objects come from the instance branch (pasted by score, each
voxel to the first); the semantic branch labels the rest of the scene (here: every voxel's class, trained on the
classes the objects paint).

Paper configuration and parameter figure: the authors' code, Detectron2
``configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml`` (80 thing classes + background in the instance
branch, 54 semantic outputs: 53 stuff classes and "things"), built and counted: 45,973,990 (backbone BN frozen, as
buffers); ours trains that BN: +53,120.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.blocks import ConvNormAct, make_conv
from medseg.models.instance.mask_rcnn import SMALL, MaskRCNN
from medseg.models.instance.targets import ObjectTargets, semantic_map
from medseg.models.natural.refine._modules import upsample_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PanopticFPN", "SemanticFPNHead"]


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch (Figure 3): per level conv-GN-ReLU(-upsample) stages to stride 4, summed, 1×1.

    Shapes: P2..P5 ``(B, C, *spatial_i)`` to logits ``(B, classes, *spatial_P2)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Pyramid width.
        classes: Output classes.
        channels: Branch width (128).
        groups: GroupNorm groups (32).
        levels: Pyramid levels (4).
    """

    def __init__(self, spatial_dims: int, in_channels: int, classes: int, channels: int = 128, groups: int = 32,
                 levels: int = 4) -> None:
        super().__init__()
        norm = ("group", {"num_groups": min(groups, channels)})
        self.branches = nn.ModuleList(
            nn.ModuleList(ConvNormAct(spatial_dims, in_channels if j == 0 else channels, channels, 3, bias=False,
                                      norm=norm) for j in range(max(1, level)))
            for level in range(levels)
        )
        self.predictor = make_conv(spatial_dims, channels, classes, 1)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits at the finest level's resolution."""
        total = None
        for level, (p, stages) in enumerate(zip(pyramid, self.branches, strict=True)):
            y = p
            for stage in stages:
                y = stage(y)
                if level > 0:
                    y = upsample_to(y, [2 * s for s in y.shape[2:]])
            total = y if total is None else total + y
        assert total is not None
        return self.predictor(total)


@register_model(
    "panoptic_fpn",
    family="panoptic",
    task="panoptic",
    spatial_dims=(2, 3),
    paper_title="Panoptic Feature Pyramid Networks",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=81, kwargs={"backbone": "resnet50", "semantic_classes": 54},
        params=45_973_990,
        source="authors' code, facebookresearch/detectron2 configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml "
               "(R-50-FPN, 80 thing classes + background, 54 semantic outputs), built and counted (frozen backbone "
               "BN); ours trains that BN: +53,120",
    ),
    divisor=32,
    test_kwargs={2: {**SMALL, "semantic_channels": 8, "groups": 4},
                 3: {**SMALL, "fpn_channels": 8, "representation": 16, "mask_channels": 8, "semantic_channels": 8,
                     "groups": 4}},
)
class PanopticFPN(MaskRCNN):
    """Panoptic FPN: Mask R-CNN and a semantic segmentation branch on one feature pyramid (Kirillov et al., 2019).

    Shapes: as :class:`~medseg.models.instance.mask_rcnn.MaskRCNN`; :meth:`semantic_logits` gives
    ``(B, semantic_classes, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes including background (the instance branch, and the semantic branch by default).
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
        score_threshold: Inference score threshold.
        detections_per_image: Inference detections per image.
        semantic_classes: Outputs of the semantic branch (``out_channels`` when ``None``; the paper's COCO model 54).
        semantic_channels: Semantic branch width (128).
        groups: Its GroupNorm groups (32).
        semantic_weight: Weight of the semantic loss (0.5).
    """

    loss_terms = ("rpn_objectness", "rpn_boxes", "classification", "box_regression", "mask", "semantic")

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
        groups: int = 32,
        semantic_weight: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, backbone=backbone,
                         pretrained_backbone=pretrained_backbone, backbone_kwargs=backbone_kwargs,
                         fpn_channels=fpn_channels, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                         representation=representation, mask_channels=mask_channels, box_pool=box_pool,
                         mask_pool=mask_pool, rpn_batch=rpn_batch, roi_batch=roi_batch, pre_nms_topk=pre_nms_topk,
                         post_nms_topk=post_nms_topk, score_threshold=score_threshold,
                         detections_per_image=detections_per_image)
        self.semantic_head = SemanticFPNHead(spatial_dims, fpn_channels, semantic_classes or out_channels,
                                             semantic_channels, groups)
        self.semantic_weight = semantic_weight

    def semantic_logits(self, x: torch.Tensor, features: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The semantic branch's logits at the input's resolution."""
        features = self.pyramid(x) if features is None else features
        return upsample_to(self.semantic_head(features[:4]), x.shape[2:])

    def extra_losses(self, x: torch.Tensor, features: Sequence[torch.Tensor], targets: Sequence[Any],
                     objects: Sequence[ObjectTargets]) -> dict[str, torch.Tensor]:
        """The semantic cross-entropy (weighted)."""
        logits = self.semantic_logits(x, features)
        goal = torch.stack([semantic_map(t) for t in targets]).clamp(max=logits.shape[1] - 1)
        return {"semantic": F.cross_entropy(logits.float(), goal) * self.semantic_weight}
