"""RefineNet (Lin et al., CVPR 2017): 4-cascaded multi-path refinement on ResNet-101, 2D.

Paper: G. Lin, A. Milan, C. Shen, I. Reid, "RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic
Segmentation", CVPR 2017 (arXiv:1611.06612), Section 3 and Figures 2(c) and 3.

Layout (4-cascaded RefineNet, Figure 2(c)): the four ResNet stages (1/4 .. 1/32) feed RefineNet-4 .. RefineNet-1.
Each RefineNet block (:class:`~medseg.models.natural.refine._modules.RefineNetBlock`) has an adaptive convolution
(a 3x3 convolution reducing the backbone map to 512 channels for RefineNet-4 and 256 for the others, then two
residual convolution units, RCU), multi-resolution fusion (a 3x3 convolution per path, upsampling of the lower
resolution to the higher, sum), chained residual pooling (CRP: 5x5 max pooling with stride 1 and a 3x3 convolution,
chained, summed) and output RCUs. Block widths, the number of RCUs (2 adaptive, 3 output) and of CRP blocks (4)
follow the authors' released models (the MatConvNet code and its PyTorch port used by Nekrasov et al.); the paper's
Figure 3 draws one output RCU and two pooling blocks. Dropout (0.5) is applied to the two deepest backbone maps and
before the classifier (a 3x3 convolution at 1/4 resolution); logits are upsampled (bilinearly) to the input size.

Paper configuration: ResNet-101, PASCAL VOC (21 classes). The RefineNet paper gives no parameter count; we count
118.1M at this configuration (42.5M backbone without ``fc``, 75.6M refinement path) and record none.

2D only (``spatial_dims=(2,)``), as in the registry's key list; the blocks themselves are written for 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.refine._modules import RefineNetBlock, build_backbone, upsample_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["RefineNet"]


@register_model(
    "refinenet",
    family="natural",
    spatial_dims=(2,),
    paper_title="RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic Segmentation",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={"backbone": "resnet101"}, params=None,
        source="CVPR 2017, Section 3 and Figure 2(c) (4-cascaded RefineNet on ResNet-101, PASCAL VOC); the paper "
               "states no parameter count",
    ),
    divisor=32,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "features": (16, 8)},
)
class RefineNet(SegmentationModel):
    """4-cascaded RefineNet of Lin et al. (CVPR 2017) on a ResNet backbone.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of ``output_stride``.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3 in the paper).
        out_channels: Classes (21 for PASCAL VOC).
        backbone: A ResNet of :mod:`medseg.models.backbones` (``resnet18/34/50/101``) or ``"resnet152"``; the
            paper's main model is ResNet-101.
        output_stride: Backbone output stride (32 in the paper: no dilation).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Extra backbone options (e.g. ``{"width": 0.125}`` for a narrow test variant).
        features: Widths ``(RefineNet-4, RefineNet-1..3)`` (512, 256 in the paper).
        dropout: Dropout on the two deepest backbone maps and before the classifier (0.5 in the released code).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 32,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        features: tuple[int, int] = (512, 256),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=output_stride,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        chans = self.backbone.out_channels[1:5]
        wide, narrow = features
        self.blocks = nn.ModuleList([
            RefineNetBlock(spatial_dims, chans[3], wide, narrow, fuse=False),
            RefineNetBlock(spatial_dims, chans[2], narrow, narrow, fuse=True),
            RefineNetBlock(spatial_dims, chans[1], narrow, narrow, fuse=True),
            RefineNetBlock(spatial_dims, chans[0], narrow, None, fuse=True),
        ])
        self.dropout = nn.Dropout(dropout)
        self.classifier = make_conv(spatial_dims, narrow, out_channels, 3, bias=True)
        self.input_divisor = (output_stride,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``."""
        self.check_input(x)
        c1, c2, c3, c4 = self.backbone(x)[1:5]
        c3, c4 = self.dropout(c3), self.dropout(c4)
        y = self.blocks[0](c4)
        for block, c in zip(self.blocks[1:], (c3, c2, c1), strict=True):
            y = block(c, y)
        return upsample_to(self.classifier(self.dropout(y)), x.shape[2:])
