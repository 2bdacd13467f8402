"""Mask R-CNN with a ResNet-FPN backbone (He et al., ICCV 2017), 2D and 3D.

Paper: K. He, G. Gkioxari, P. Dollár, R. Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870), Section 3 and
Figure 4 (right: the FPN heads), with the feature pyramid of T.-Y. Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017 (arXiv:1612.03144). The parts and their settings are in :mod:`medseg.models.instance.rcnn`.

Layout: ResNet-50 stages C2..C5 → FPN (1×1 laterals, nearest ×2 top-down sums, 3×3 outputs, 256 channels; P6 = P5
subsampled by 2 for the RPN) → RPN on P2..P6 (3 anchors per cell) → RoI heads on P2..P5: box head (RoIAlign 7×7,
two fully connected layers of 1024, softmax over the classes, class-specific box deltas) and mask head (RoIAlign
14×14, four 3×3 convolutions of 256, 2× transposed convolution, 28×28 mask per class). The model trains on boxes and
masks derived from the instance maps (losses: RPN objectness and boxes, classification, box regression, mask).

Paper configuration and parameter figure: the authors' code, Detectron2 (facebookresearch/detectron2,
``configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``: ResNet-50, FPN 256, 80 COCO classes + background),
counted by building its modules' layer definitions: 44,343,216 parameters, with the backbone's batch normalisation
frozen (its scale and shift are buffers there). Ours trains the backbone's normalisation, which adds 53,120
parameters: 44,396,336 (+0.12 %). torchvision's ``maskrcnn_resnet50_fpn`` (91 COCO ids) has 44,401,393.

3D: the same network with 3D convolutions, cubic anchors of the same sizes (aspect ratios along the first axis) and
RoIs of 4³ (boxes) and 7³ (masks) by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medseg.models.instance.base import Detections, InstanceSegmentationModel, InstanceTarget
from medseg.models.instance.rcnn import (
    RPN,
    AnchorGenerator,
    BoxBranch,
    MaskBranch,
    MultiScaleRoIAlign,
    RoIHeads,
    default_anchor_sizes,
    last_level_max_pool,
)
from medseg.models.instance.targets import ObjectTargets, object_targets
from medseg.models.natural.refine._modules import build_backbone
from medseg.models.natural.refine.fpn import FeaturePyramid
from medseg.models.registry import PaperConfig, register_model

__all__ = ["MaskRCNN"]

#: Small variants for the tests.
SMALL = {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "fpn_channels": 16, "representation": 32,
         "mask_channels": 16, "rpn_batch": 64, "roi_batch": 64}


@register_model(
    "mask_rcnn",
    family="instance",
    task="instance",
    spatial_dims=(2, 3),
    paper_title="Mask R-CNN",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=81, kwargs={"backbone": "resnet50"}, params=44_343_216,
        source="authors' code, facebookresearch/detectron2 configs/COCO-InstanceSegmentation/"
               "mask_rcnn_R_50_FPN_3x.yaml (R-50-FPN, 80 classes + background), counted from its layer definitions "
               "(frozen backbone BN); ours trains that BN: +53,120",
    ),
    divisor=32,
    test_kwargs={2: SMALL, 3: {**SMALL, "fpn_channels": 8, "representation": 16, "mask_channels": 8}},
)
class MaskRCNN(InstanceSegmentationModel):
    """Mask R-CNN on a ResNet-FPN (He et al., ICCV 2017): boxes, classes and masks of every object.

    Shapes: ``(B, in_channels, *spatial)`` (each size a multiple of 32) to one
    :class:`~medseg.models.instance.base.Detections` per image, or a loss dict with targets.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes including background.
        backbone: A registered ResNet (``resnet50``; ``resnet101`` for R-101-FPN).
        pretrained_backbone: Local torchvision/timm weights for the backbone.
        backbone_kwargs: Extra backbone options (e.g. ``width``).
        fpn_channels: Pyramid width (256).
        anchor_sizes: Anchor size per level P2..P6 (32 … 512).
        aspect_ratios: Anchor aspect ratios (0.5, 1, 2).
        representation: Width of the box head's fully connected layers (1024).
        mask_channels: Width of the mask head's convolutions (256).
        box_pool: RoI bins of the box head (7 in 2D, 4 in 3D when ``None``).
        mask_pool: RoI bins of the mask head (14 in 2D, 7 in 3D when ``None``).
        rpn_batch: Anchors sampled per image for the RPN loss (256).
        roi_batch: RoIs sampled per image for the head losses (512).
        pre_nms_topk: RPN proposals per level before NMS, (training, inference).
        post_nms_topk: RPN proposals per image after NMS, (training, inference).
        score_threshold: Inference score threshold (0.05).
        detections_per_image: Inference detections kept per image (100).
    """

    output_kind = "detections"
    target_kinds = ("boxes", "masks")
    loss_terms = ("rpn_objectness", "rpn_boxes", "classification", "box_regression", "mask")

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
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.input_divisor = (32,) * spatial_dims
        self.fpn_channels = fpn_channels
        self.representation = representation
        self.box_pool = box_pool or (7 if spatial_dims == 2 else 4)
        self.mask_pool = mask_pool or (14 if spatial_dims == 2 else 7)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=32,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        self.strides = [4, 8, 16, 32]
        self.build_neck()
        anchors = AnchorGenerator(spatial_dims, anchor_sizes or default_anchor_sizes(), aspect_ratios,
                                  [*self.strides, 64])
        self.rpn = RPN(spatial_dims, fpn_channels, anchors, tuple(pre_nms_topk), tuple(post_nms_topk),  # type: ignore[arg-type]
                       batch_per_image=rpn_batch)
        self.roi_heads = RoIHeads(
            spatial_dims, out_channels, self.build_box_pooler(), self.build_box_branch(representation),
            self.build_mask_branch(mask_channels), batch_per_image=roi_batch, score_threshold=score_threshold,
            detections_per_image=detections_per_image)

    # Parts the networks built on Mask R-CNN replace ----------------------------------------------------------------

    def build_neck(self) -> None:
        """The feature pyramid on C2..C5 (:attr:`neck`)."""
        self.neck: nn.Module = FeaturePyramid(self.spatial_dims, self.backbone.out_channels[1:5], self.fpn_channels)

    def build_box_pooler(self) -> nn.Module:
        """RoI pooling for the box head."""
        return MultiScaleRoIAlign(self.box_pool, self.strides)

    def build_box_branch(self, representation: int) -> nn.Module:
        """The box head."""
        return BoxBranch(self.spatial_dims, self.fpn_channels, self.box_pool, self.out_channels, representation)

    def build_mask_branch(self, mask_channels: int) -> MaskBranch:
        """The mask branch."""
        return MaskBranch(self.spatial_dims, self.fpn_channels, self.out_channels, self.strides, self.mask_pool,
                          mask_channels)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """P2..P5 of ``x``."""
        return list(self.neck(self.backbone(x)[1:5]))

    # Forward ------------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, targets: Sequence[InstanceTarget] | None = None
                ) -> list[Detections] | dict[str, torch.Tensor]:
        """Detections of ``x`` ``(B, in_channels, *spatial)``, or with ``targets`` the loss terms."""
        self.check_input(x)
        features = self.pyramid(x)
        rpn_features = [*features, last_level_max_pool(features[-1])]
        shape = tuple(x.shape[2:])
        if targets is None:
            proposals, _ = self.rpn(rpn_features, shape)
            return self.roi_heads.detect(features, proposals, shape)
        self.check_targets(x, targets)
        objects = [object_targets(t) for t in targets]
        proposals, losses = self.rpn(rpn_features, shape, [o.boxes for o in objects])
        losses.update(self.roi_heads.losses(features, proposals, objects))
        losses.update(self.extra_losses(x, features, targets, objects))
        return losses

    def extra_losses(self, x: torch.Tensor, features: Sequence[torch.Tensor], targets: Sequence[InstanceTarget],
                     objects: Sequence[ObjectTargets]) -> dict[str, torch.Tensor]:
        """Loss terms of additional heads (none in Mask R-CNN)."""
        return {}
