"""GCN, "Large Kernel Matters" (Peng et al., CVPR 2017): global convolutional network + boundary refinement, 2D.

Paper: C. Peng, X. Zhang, G. Yu, G. Luo, J. Sun, "Large Kernel Matters -- Improve Semantic Segmentation by Global
Convolutional Network", CVPR 2017 (arXiv:1703.02719), Section 3.2 and Figure 2.

Layout (Figure 2): a ResNet backbone (ResNet-152 in the paper; composed here from our ResNet blocks, see
:func:`~medseg.models.natural.refine._modules.build_backbone`); on each of res-2 .. res-5 a GCN block (k x 1 + 1 x k
and 1 x k + k x 1 convolutions, k = 15, to as many channels as classes, no non-linearity) and a boundary refinement
block (BR, a residual 3x3-ReLU-3x3 branch). Top-down: the res-5 score map is upsampled by a deconvolution (x2) and
added to the res-4 score map, followed by BR, a deconvolution, and so on down to res-2 (whose fused map is deconvolved
to 1/2); then BR, a last deconvolution to full resolution and a final BR give the score map (9 BRs: 4 after the
GCNs, 3 after the sums, 1 at 1/2 and 1 at full resolution; 5 deconvolutions), as in Figure 2. Deconvolutions are
transposed convolutions with kernel 4, stride 2, padding 1 (an exact x2, the FCN-style learnable upsampling the
paper's "Deconv" denotes), with as many channels as classes.

Paper configuration: ResNet-152, PASCAL VOC (21 classes); the paper gives no parameter count, so none is recorded.
We count 60,723,469 (58.1M of it the backbone without ``fc``). 2D only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.natural.refine._modules import BoundaryRefinement, GlobalConvBlock, build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["GCN"]


def _deconv(channels: int) -> nn.Module:
    return Conv[Conv.CONVTRANS, 2](channels, channels, kernel_size=4, stride=2, padding=1)


@register_model(
    "gcn",
    family="natural",
    spatial_dims=(2,),
    paper_title="Large Kernel Matters -- Improve Semantic Segmentation by Global Convolutional Network",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={"backbone": "resnet152", "kernel_size": 15},
        params=None, source="CVPR 2017, Section 3.2 and Figure 2 (ResNet-152, k=15, PASCAL VOC 21 classes); the "
                            "paper states no parameter count",
    ),
    divisor=32,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "kernel_size": 7},
)
class GCN(SegmentationModel):
    """Global Convolutional Network with boundary refinement (Peng et al., CVPR 2017).

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of 32.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3).
        out_channels: Classes (21 for PASCAL VOC); also the width of every GCN/BR/deconvolution.
        backbone: ``"resnet152"`` (the paper's), or ``resnet18/34/50/101``.
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Extra backbone options.
        kernel_size: k of the GCN blocks (15; odd).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet152",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        kernel_size: int = 15,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=32,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        c = out_channels
        chans = self.backbone.out_channels[1:5]
        self.gcn = nn.ModuleList(GlobalConvBlock(ch, c, kernel_size) for ch in chans)
        self.br_in = nn.ModuleList(BoundaryRefinement(2, c) for _ in chans)
        self.br_fused = nn.ModuleList(BoundaryRefinement(2, c) for _ in range(3))
        self.br_half = BoundaryRefinement(2, c)
        self.br_full = BoundaryRefinement(2, c)
        self.deconvs = nn.ModuleList(_deconv(c) for _ in range(5))
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, H, W)`` to score maps ``(B, out_channels, H, W)``."""
        self.check_input(x)
        res = self.backbone(x)[1:5]
        scores = [br(gcn(r)) for gcn, br, r in zip(self.gcn, self.br_in, res, strict=True)]
        y = self.deconvs[0](scores[3])  # 1/16
        for i, level in enumerate((2, 1, 0)):
            y = self.deconvs[i + 1](self.br_fused[i](scores[level] + y))  # 1/8, 1/4, 1/2
        return self.br_full(self.deconvs[4](self.br_half(y)))
