"""DeepLab v1, DeepLab-LargeFOV (Chen et al., 2015), 2D.

Paper: L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille, "Semantic Image Segmentation with Deep
Convolutional Nets and Fully Connected CRFs", ICLR 2015 (arXiv:1412.7062), Section 3.1 and Table 2.

Layout (Section 3.1): VGG-16 "converted into a fully convolutional one", with the last two max poolings no longer
subsampling ("we skip subsampling after the last two max-pooling layers") and the following convolutions dilated
("hole algorithm": rate 2 for ``conv5``); the fully connected ``fc6`` is subsampled spatially and in channels:
DeepLab-LargeFOV uses a 3x3 ``fc6`` with input stride (dilation) 12 and 1024 channels, then a 1x1 ``fc7`` with 1024
channels (ReLU and dropout 0.5 after each) and a 1x1 ``fc8`` with the class scores; the stride-8 scores are
bilinearly upsampled to the input size. Our ``vgg16`` backbone at output stride 8 implements the skipped subsampling
(3x3 max poolings with stride 1) and the dilated ``conv5``. The fully connected CRF that DeepLab applies to the
network's output is a post-processing step of the pipeline, not part of this network.

Parameter figure: Table 2 of the paper lists DeepLab-LargeFOV (kernel 3x3, input stride 12, receptive field 224) with
"20.5M" parameters. We count 20,505,429 at ``in_channels=3, out_channels=21`` (VGG-16 convolutions 14,714,688,
``fc6`` 4,719,616, ``fc7`` 1,049,600, ``fc8`` 21,525).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import FullyConvClassifier, build_backbone, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DeepLabV1"]


@register_model(
    "deeplab_v1",
    family="natural",
    spatial_dims=(2,),
    paper_title="Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs",
    paper_year=2015,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, params=20_500_000,
        source="ICLR 2015, Table 2 (DeepLab-LargeFOV: kernel 3x3, input stride 12, # params 20.5M) and Section 3.1",
    ),
    divisor=1,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "fc_channels": 32},
)
class DeepLabV1(SegmentationModel):
    """DeepLab-LargeFOV (Chen et al., ICLR 2015): atrous VGG-16 at output stride 8, 3x3 fc6 with rate 12.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (any size; the scores are resized).

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels.
        out_channels: Classes (paper: 21).
        backbone: Backbone name (paper: ``"vgg16"``).
        output_stride: Output stride of the backbone (paper: 8).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        fc_channels: Channels of ``fc6``/``fc7`` (LargeFOV: 1024).
        fc6_kernel: Kernel of ``fc6`` (LargeFOV: 3).
        fc6_dilation: Dilation (input stride) of ``fc6`` (LargeFOV: 12).
        dropout: Dropout after ``fc6`` and ``fc7`` (paper: 0.5).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "vgg16",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        fc_channels: int = 1024,
        fc6_kernel: int = 3,
        fc6_dilation: int = 12,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: DeepLab v1 is 2D only, got spatial_dims={spatial_dims}")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride, pretrained_backbone,
                                       backbone_kwargs, self.model_name)
        self.fc = FullyConvClassifier(spatial_dims, self.backbone.out_channels[-1], fc_channels, fc6_kernel,
                                      fc6_dilation, dropout)
        self.fc8 = make_conv(spatial_dims, fc_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        return resize(self.fc8(self.fc(self.backbone(x)[-1])), x.shape[2:])
