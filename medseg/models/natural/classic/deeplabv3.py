"""DeepLabv3 (Chen et al., 2017): ResNet-101 with Multi-Grid and ASPP with image-level features, 2D and 3D.

Paper: L.-C. Chen, G. Papandreou, F. Schroff, H. Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv:1706.05587, 2017, Sections 3.2-3.3 and 4.2-4.3.

Layout: ResNet-101 with atrous convolution at output stride 16 (``block4`` dilated by 2; 8 at evaluation in the paper's
best setting, ``output_stride=8`` with the rates doubled), Multi-Grid unit rates (1, 2, 4) for the three units of
``block4`` (Section 3.2; rates 2, 4, 8 at output stride 16), and ASPP (Section 3.3): one 1x1 convolution, three 3x3
convolutions with rates (6, 12, 18) and image pooling, all with 256 filters and batch norm, concatenated and
projected by a 1x1 convolution with 256 filters and batch norm; "the final 1x1 convolution ... generates the final
logits", bilinearly upsampled to the input size. A dropout of 0.1 follows the projection (the reference TensorFlow
implementation). Our ResNet strides the 3x3 convolution of a bottleneck (torchvision), which changes no parameter.

Parameter figure: the paper gives none; ``params`` is ``None``. Our count at ``in_channels=3, out_channels=21`` is
58,040,661 (ResNet-101 without classifier 42,500,160; ASPP and logits 15,540,501); 3D works with any ResNet
backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import ASPP, build_backbone, resize, set_multi_grid
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DeepLabV3"]


@register_model(
    "deeplabv3",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Rethinking Atrous Convolution for Semantic Image Segmentation",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, params=None,
        source="arXiv:1706.05587, Sections 3.2-3.3 (ResNet-101, output stride 16, Multi-Grid (1, 2, 4), ASPP rates "
               "6/12/18 + 1x1 + image pooling, 256 filters with BN), VOC 21 classes; no parameter count stated",
    ),
    divisor=1,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "aspp_channels": 16,
                 "multi_grid": (1, 2)},
)
class DeepLabV3(SegmentationModel):
    """DeepLabv3 (Chen et al., 2017): atrous ResNet-101 with Multi-Grid, ASPP with image pooling, 1x1 logits.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (any size; the logits are resized).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes (paper: 21).
        backbone: Backbone name (paper: ``"resnet101"``).
        output_stride: 16 (paper's training) or 8 (its best evaluation); the ASPP rates are doubled at 8.
        pretrained_backbone: Local torchvision/timm weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        multi_grid: Unit rates of the blocks of the last ResNet stage (paper: (1, 2, 4)); ``None`` keeps the
            backbone's dilations (needed for non-ResNet backbones).
        rates: ASPP rates at output stride 16 (paper: 6, 12, 18).
        aspp_channels: Filters of the ASPP branches and projection (paper: 256).
        dropout: Dropout after the ASPP projection (0.1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 16,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if output_stride not in (8, 16):
            raise ModelError(f"{self.model_name}: output_stride must be 8 or 16, got {output_stride!r}")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride, pretrained_backbone,
                                       backbone_kwargs, self.model_name)
        self.block4_rates = set_multi_grid(self.backbone, multi_grid) if multi_grid is not None else None
        scale = 16 // output_stride
        self.aspp = ASPP(spatial_dims, self.backbone.out_channels[-1], aspp_channels, [r * scale for r in rates],
                         dropout=dropout)
        self.classifier = make_conv(spatial_dims, aspp_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        return resize(self.classifier(self.aspp(self.backbone(x)[-1])), x.shape[2:])
