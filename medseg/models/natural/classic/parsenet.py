"""ParseNet (Liu, Rabinovich & Berg, 2015), 2D.

Paper: W. Liu, A. Rabinovich, A. C. Berg, "ParseNet: Looking Wider to See Better", ICLR 2016 workshop
(arXiv:1506.04579), Section 3 and Fig. 1; reference Caffe code github.com/weiliu89/caffe/tree/fcn.

Layout: a fully convolutional VGG-16 (FCN-32s: ``fc6`` 7x7 and ``fc7`` 1x1 with 4096 channels, ReLU and dropout 0.5)
with the ParseNet context module on ``fc7`` (Fig. 1e): (1) global average pooling of the feature map gives the
global context feature; (2) the global feature and the local feature map are each L2-normalised over the channels and
rescaled by a learned per-channel scale ("we learn the scaling parameter gamma_i for each channel", Section 3.3),
because features of different layers and of global pooling have very different norms; (3) the global feature is
"unpooled" (replicated to the size of the map) and concatenated with the local features ("early fusion"); a 1x1
classifier scores the combined features and the stride-32 scores are upsampled to the input by fixed bilinear
interpolation, as FCN-32s.

``fc="reduced"`` builds the authors' released "fully convolutional reduced VGGNet" instead (``fc6`` 3x3 with 1024
channels and dilation 12, ``fc7`` 1024, at output stride 8; the DeepLab-LargeFOV front). The initial scale of the L2
normalisation is an option (``norm_scale``; the paper learns it from its initial value).

Parameter figure: the paper gives none; ``params`` is ``None``. Our count at ``in_channels=3, out_channels=60``
(PASCAL-Context, 59 classes + background) is 134,760,316: FCN-32s's layers, the ``2 * 4096`` learned scales and an
8192-channel classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Pool

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import (
    BilinearUpsample,
    FullyConvClassifier,
    L2Norm,
    build_backbone,
    resize,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["ParseNet"]

_FC = {"full": (32, 4096, 7, 1), "reduced": (8, 1024, 3, 12)}  # output stride, channels, fc6 kernel, fc6 dilation


@register_model(
    "parsenet",
    family="natural",
    spatial_dims=(2,),
    paper_title="ParseNet: Looking Wider to See Better",
    paper_year=2015,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=60, params=None,
        source="arXiv:1506.04579, Section 3 and Fig. 1 (context module on FCN-32s; PASCAL-Context, 59 classes + "
               "background); the paper states no parameter count",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "fc_channels": 32, "fc6_kernel": 3},
)
class ParseNet(SegmentationModel):
    """ParseNet (Liu et al., 2015): FCN with global average pooled, L2-normalised context concatenated to fc7.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; each size a multiple of 32 with
    ``fc="full"`` (any size with ``"reduced"``).

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels.
        out_channels: Classes.
        backbone: Backbone name (paper: ``"vgg16"``).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        fc: ``"full"`` (FCN-32s, the default) or ``"reduced"`` (reduced VGG at output stride 8).
        fc_channels: Channels of ``fc6``/``fc7`` (``None``: 4096 for "full", 1024 for "reduced").
        fc6_kernel: Kernel of ``fc6`` (``None``: 7 / 3).
        dropout: Dropout after ``fc6`` and ``fc7`` (0.5).
        norm_scale: Initial value of the learned L2-normalisation scales.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "vgg16",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        fc: str = "full",
        fc_channels: int | None = None,
        fc6_kernel: int | None = None,
        dropout: float = 0.5,
        norm_scale: float = 10.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: ParseNet is 2D only, got spatial_dims={spatial_dims}")
        if fc not in _FC:
            raise ModelError(f"{self.model_name}: fc must be 'full' or 'reduced', got {fc!r}")
        stride, channels, kernel, dilation = _FC[fc]
        channels = fc_channels or channels
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, stride, pretrained_backbone,
                                       backbone_kwargs, self.model_name)
        self.fc = FullyConvClassifier(spatial_dims, self.backbone.out_channels[-1], channels, fc6_kernel or kernel,
                                      dilation, dropout)
        self.global_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.norm_local = L2Norm(channels, norm_scale)
        self.norm_global = L2Norm(channels, norm_scale)
        self.score = make_conv(spatial_dims, 2 * channels, out_channels, 1)
        self.upsample = BilinearUpsample(spatial_dims, out_channels, 32, learnable=False) if stride == 32 else None
        self.input_divisor = (stride if stride == 32 else 1,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        local = self.fc(self.backbone(x)[-1])
        context = self.norm_global(self.global_pool(local)).expand(-1, -1, *local.shape[2:])
        score = self.score(torch.cat([self.norm_local(local), context], dim=1))
        return self.upsample(score) if self.upsample is not None else resize(score, x.shape[2:])
