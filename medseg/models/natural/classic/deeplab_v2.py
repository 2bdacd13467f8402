"""DeepLab v2 (Chen et al., 2017/2018): ResNet-101 with atrous spatial pyramid pooling (ASPP-L), 2D.

Paper: L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille, "DeepLab: Semantic Image Segmentation with
Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", IEEE TPAMI 40(4), 2018 (arXiv:1606.00915),
Sections 3.1-3.2, 4 and Fig. 4; reference Caffe model ``deeplab_v2`` ResNet-101 prototxt.

Layout: ResNet-101 made dense by atrous convolution (output stride 8: ``res4`` dilated by 2, ``res5`` by 4), and
ASPP-L (Fig. 4): four parallel 3x3 atrous convolutions with rates 6, 12, 18, 24 on the ``res5`` features, each
directly producing the class scores (the reference ``fc1_c0``-``fc1_c3`` layers), summed ("fused"); the stride-8
scores are bilinearly upsampled to the input size. Our ResNet puts the stride of a bottleneck on its 3x3 convolution
(torchvision's layout; the original Caffe ResNet strides the first 1x1), which changes no parameter. The multi-scale
input training (MSC: shared weights on 1, 0.75, 0.5 scaled inputs, max fusion), pretraining on MS-COCO and the fully
connected CRF are training or post-processing steps of the pipeline, not part of this network.

Parameter figure: the paper gives none; ``params`` is ``None``. We count 44,048,532 at ``in_channels=3,
out_channels=21``: ResNet-101 without its classifier 42,500,160 plus ASPP-L 1,548,372.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.natural.classic._modules import ASPPSum, build_backbone, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DeepLabV2"]


@register_model(
    "deeplab_v2",
    family="natural",
    spatial_dims=(2,),
    paper_title="DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully "
                "Connected CRFs",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, params=None,
        source="IEEE TPAMI 2018 (arXiv:1606.00915), Section 3.2 and Fig. 4 (ASPP-L, rates 6/12/18/24, ResNet-101, "
               "VOC 21 classes); the paper states no parameter count",
    ),
    divisor=1,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}},
)
class DeepLabV2(SegmentationModel):
    """DeepLab v2 (Chen et al., TPAMI 2018): atrous ResNet-101 at output stride 8 with summed ASPP-L classifiers.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (any size; the scores are resized).

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels.
        out_channels: Classes (paper: 21).
        backbone: Backbone name (paper: ``"resnet101"``); ASPP runs on its last level.
        output_stride: Output stride of the backbone (paper: 8).
        pretrained_backbone: Local torchvision/timm weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        rates: Atrous rates of ASPP (paper: 6, 12, 18, 24).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        rates: Sequence[int] = (6, 12, 18, 24),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: DeepLab v2 is 2D only, got spatial_dims={spatial_dims}")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride, pretrained_backbone,
                                       backbone_kwargs, self.model_name)
        self.aspp = ASPPSum(spatial_dims, self.backbone.out_channels[-1], out_channels, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        return resize(self.aspp(self.backbone(x)[-1]), x.shape[2:])
