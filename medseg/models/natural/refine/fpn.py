"""FPN semantic segmentation head (Kirillov et al., Panoptic FPN, CVPR 2019) on ResNet-50/101, 2D and 3D.

Papers: A. Kirillov, R. Girshick, K. He, P. Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019
(arXiv:1901.02446), Section 3.1 and Figure 3 (the semantic segmentation branch); the feature pyramid of T.-Y. Lin,
P. Dollar, R. Girshick, K. He, B. Hariharan, S. Belongie, "Feature Pyramid Networks for Object Detection", CVPR 2017.

Layout: FPN on the ResNet stages C2..C5 (strides 4..32): 1x1 lateral convolutions to 256 channels, top-down
pathway (nearest-neighbour x2 upsampling and addition), a 3x3 output convolution per level (P2..P5, 256 channels).
Semantic branch (Figure 3): each level P_i is brought to 1/4 scale by ``i - 2`` stages of (3x3 convolution to 128
channels, GroupNorm (32 groups), ReLU, bilinear x2 upsampling); P2 gets one such stage without upsampling; the four
1/4-scale maps are summed, a 1x1 convolution gives the class logits, which are upsampled (bi/trilinearly) x4 to the
input size. The convolutions followed by GroupNorm have no bias (Detectron2's ``SemSegFPNHead``); FPN's convolutions
and the predictor have biases.

Paper configuration: ResNet-50, COCO stuff semantic segmentation (the paper's semantic branch predicts 53 stuff
classes + 1 "other"; 54 outputs); the paper gives no parameter count, so none is recorded. 2D and 3D (the
backbone, FPN and head are written with MONAI's factories).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_conv
from medseg.models.natural.refine._modules import build_backbone, upsample_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["FPNSemantic", "FeaturePyramid"]


class FeaturePyramid(nn.Module):
    """Feature pyramid network (Lin et al., CVPR 2017): lateral 1x1, top-down nearest x2 + sum, 3x3 outputs.

    Shapes: maps ``(B, C_i, *spatial_i)`` (highest resolution first) to as many ``(B, channels, *spatial_i)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Channels of each input level.
        channels: Pyramid width (256).
    """

    def __init__(self, spatial_dims: int, in_channels: list[int], channels: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(make_conv(spatial_dims, c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(make_conv(spatial_dims, channels, channels, 3) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return P levels for the C levels ``features``."""
        y = self.lateral[-1](features[-1])
        outs = [self.output[-1](y)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            y = lateral + nn.functional.interpolate(y, size=lateral.shape[2:], mode="nearest")
            outs.insert(0, self.output[i](y))
        return outs


@register_model(
    "fpn",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Panoptic Feature Pyramid Networks",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=54, kwargs={"backbone": "resnet50"}, params=None,
        source="CVPR 2019, Section 3.1 and Figure 3 (semantic branch on FPN, ResNet-50, COCO 53 stuff classes + "
               "'other'); the paper states no parameter count",
    ),
    divisor=32,
    test_kwargs={2: {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "fpn_channels": 16,
                     "head_channels": 8, "groups": 4},
                 3: {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "fpn_channels": 8,
                     "head_channels": 8, "groups": 4}},
)
class FPNSemantic(SegmentationModel):
    """FPN with the Panoptic FPN semantic segmentation branch (Kirillov et al., CVPR 2019).

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each size a multiple of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        backbone: ``"resnet50"`` (default) or ``"resnet101"`` (or another ResNet).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Extra backbone options.
        fpn_channels: FPN width (256).
        head_channels: Semantic branch width (128).
        groups: GroupNorm groups (32).
    """

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
        head_channels: int = 128,
        groups: int = 32,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=32,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        self.fpn = FeaturePyramid(spatial_dims, self.backbone.out_channels[1:5], fpn_channels)
        norm = ("group", {"num_groups": groups})
        self.branches = nn.ModuleList()
        for level in range(4):  # P2..P5: max(1, level) stages of conv-GN-ReLU, the upsampling ones x2 each
            n = max(1, level)
            self.branches.append(nn.ModuleList(
                ConvNormAct(spatial_dims, fpn_channels if j == 0 else head_channels, head_channels, 3, bias=False,
                            norm=norm) for j in range(n)
            ))
        self.predictor = make_conv(spatial_dims, head_channels, out_channels, 1)
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        pyramid = self.fpn(self.backbone(x)[1:5])
        total = None
        for level, (p, stages) in enumerate(zip(pyramid, self.branches, strict=True)):
            y = p
            for stage in stages:
                y = stage(y)
                if level > 0:
                    y = upsample_to(y, [2 * s for s in y.shape[2:]])
            total = y if total is None else total + y
        return upsample_to(self.predictor(total), x.shape[2:])
