"""Fully convolutional networks FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, 2015), 2D and 3D.

Paper: J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(arXiv:1411.4038); reference Caffe models ``voc-fcn32s``/``voc-fcn16s``/``voc-fcn8s`` (github.com/shelhamer/fcn.
berkeleyvision.org).

Layout (Section 3.1, 4.1-4.2, Fig. 3): VGG-16's convolutions (``conv1_1``-``conv5_3``, five 2x2 max poolings), its
fully connected layers cast as convolutions (``fc6``: 7x7, 4096 channels; ``fc7``: 1x1, 4096; ReLU and dropout 0.5
after each) and a 1x1 class scoring layer ``score_fr`` on ``fc7`` (stride 32).

* FCN-32s: the stride-32 scores are upsampled 32x by a deconvolution fixed to bilinear interpolation.
* FCN-16s: a 1x1 scoring layer on ``pool4`` (``score_pool4``); the ``score_fr`` map is upsampled 2x by a learned
  deconvolution initialised to bilinear (``upscore2``) and summed with it; the sum is upsampled 16x (fixed).
* FCN-8s: additionally the 16s sum is upsampled 2x (``upscore_pool4``, learned) and summed with a scoring layer on
  ``pool3`` (``score_pool3``); the sum is upsampled 8x (fixed).

"The final layer deconvolutional filters are fixed to bilinear interpolation, while intermediate upsampling layers
are initialized to bilinear upsampling, and then learned" and the class scoring layers are zero-initialised (Section
4.2); both are done here. Differences from the Caffe models, all parameter-free: the Caffe net pads ``conv1_1`` by 100
and crops the fused maps, whereas here every convolution (``fc6`` included) is "same"-padded, so the maps align
exactly when each input size is a multiple of 32 (the input divisor); the fixed final upsampling is applied per class
(a grouped deconvolution with a buffer as kernel, so it has no parameters, as the Caffe blob with learning rate 0 is not
trained). The reference "at-once" variant's fixed scaling of ``pool3``/``pool4`` (0.0001/0.01) is a training detail of
that variant and not included.

Parameter figure: Table 1 of the paper gives "134M" parameters for FCN-VGG16 (the convolutionalised VGG-16 with a
21-class scoring layer). We count 134,346,581 for FCN-32s (VGG-16 convolutions 14,714,688, ``fc6`` 102,764,544,
``fc7`` 16,781,312, ``score_fr`` 86,037), 134,364,410 for FCN-16s and 134,376,863 for FCN-8s (21 classes, 3 input
channels; the skip scorers and learned 2x deconvolutions add about 30k), within 0.3% of the figure. In 3D
the 7x7x7 ``fc6`` is 7 times larger (``fc6_kernel`` and ``fc_channels`` make it smaller).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import BilinearUpsample, FullyConvClassifier, build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["FCN8s", "FCN16s", "FCN32s", "FullyConvNet"]

_TITLE = "Fully Convolutional Networks for Semantic Segmentation"
_SOURCE = ("CVPR 2015, Table 1 ('FCN-VGG16 ... # params 134M'), Section 4.1-4.2 and Fig. 3; VOC, 21 classes; "
           "reference Caffe models voc-fcn32s/16s/8s")
_PAPER_KW: dict[str, Any] = {}
_TEST_KW = {2: {"backbone_kwargs": {"width": 0.125}, "fc_channels": 32},
            3: {"backbone_kwargs": {"width": 0.125}, "fc_channels": 32, "fc6_kernel": 3}}


class FullyConvNet(SegmentationModel):
    """FCN with ``n_skips`` skip fusions (0: FCN-32s, 1: FCN-16s, 2: FCN-8s); see the module docstring.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes (paper: 21).
        backbone: Backbone name (paper: ``"vgg16"``); its levels of stride 8, 16, 32 feed ``score_pool3``,
            ``score_pool4`` and ``fc6``.
        pretrained_backbone: Local torchvision/timm weights of the backbone (loaded with
            :func:`medseg.models.backbones.load_pretrained`).
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        fc_channels: Channels of ``fc6``/``fc7`` (paper: 4096).
        fc6_kernel: Kernel of ``fc6`` (paper: 7).
        dropout: Dropout after ``fc6`` and ``fc7`` (paper: 0.5).
        n_skips: 0, 1 or 2 skip fusions (set by the registered subclasses).
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
        fc_channels: int = 4096,
        fc6_kernel: int = 7,
        dropout: float = 0.5,
        n_skips: int = 0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                                       self.model_name)
        strides = list(self.backbone.strides)
        self.n_skips = n_skips
        self.fc = FullyConvClassifier(spatial_dims, self.backbone.out_channels[-1], fc_channels, fc6_kernel,
                                      dropout=dropout)
        self.score_fr = make_conv(spatial_dims, fc_channels, out_channels, 1)
        self.skip_levels = [strides.index(s) for s in (16, 8)[:n_skips]]
        self.score_pools = nn.ModuleList(
            make_conv(spatial_dims, self.backbone.out_channels[i], out_channels, 1) for i in self.skip_levels
        )
        self.upscores = nn.ModuleList(BilinearUpsample(spatial_dims, out_channels, 2) for _ in self.skip_levels)
        self.final_factor = 32 >> n_skips
        self.upsample_final = BilinearUpsample(spatial_dims, out_channels, self.final_factor, learnable=False)
        for conv in (self.score_fr, *self.score_pools):
            if conv.weight.device.type != "meta":
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        features = self.backbone(x)
        score = self.score_fr(self.fc(features[-1]))
        for level, score_pool, upscore in zip(self.skip_levels, self.score_pools, self.upscores, strict=True):
            score = upscore(score) + score_pool(features[level])
        return self.upsample_final(score)


@register_model(
    "fcn32s", family="natural", spatial_dims=(2, 3), paper_title=_TITLE, paper_year=2015,
    paper=PaperConfig(spatial_dims=2, in_channels=3, out_channels=21, kwargs=_PAPER_KW, params=134_000_000,
                      source=_SOURCE),
    divisor=32, test_kwargs=_TEST_KW,
)
class FCN32s(FullyConvNet):
    """FCN-32s (Long et al., CVPR 2015): VGG-16 with ``fc6``/``fc7`` as convolutions, 32x bilinear upsampling.

    See :class:`FullyConvNet` for the arguments (without ``n_skips``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, backbone: str = "vgg16",
                 pretrained_backbone: str | None = None, backbone_kwargs: Mapping[str, Any] | None = None,
                 fc_channels: int = 4096, fc6_kernel: int = 7, dropout: float = 0.5) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, backbone=backbone,
                         pretrained_backbone=pretrained_backbone, backbone_kwargs=backbone_kwargs,
                         fc_channels=fc_channels, fc6_kernel=fc6_kernel, dropout=dropout, n_skips=0)


@register_model(
    "fcn16s", family="natural", spatial_dims=(2, 3), paper_title=_TITLE, paper_year=2015,
    paper=PaperConfig(spatial_dims=2, in_channels=3, out_channels=21, kwargs=_PAPER_KW, params=134_000_000,
                      source=_SOURCE),
    divisor=32, test_kwargs=_TEST_KW,
)
class FCN16s(FullyConvNet):
    """FCN-16s (Long et al., CVPR 2015): FCN-32s with the ``pool4`` skip fused at stride 16, 16x upsampling.

    See :class:`FullyConvNet` for the arguments (without ``n_skips``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, backbone: str = "vgg16",
                 pretrained_backbone: str | None = None, backbone_kwargs: Mapping[str, Any] | None = None,
                 fc_channels: int = 4096, fc6_kernel: int = 7, dropout: float = 0.5) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, backbone=backbone,
                         pretrained_backbone=pretrained_backbone, backbone_kwargs=backbone_kwargs,
                         fc_channels=fc_channels, fc6_kernel=fc6_kernel, dropout=dropout, n_skips=1)


@register_model(
    "fcn8s", family="natural", spatial_dims=(2, 3), paper_title=_TITLE, paper_year=2015,
    paper=PaperConfig(spatial_dims=2, in_channels=3, out_channels=21, kwargs=_PAPER_KW, params=134_000_000,
                      source=_SOURCE),
    divisor=32, test_kwargs=_TEST_KW,
)
class FCN8s(FullyConvNet):
    """FCN-8s (Long et al., CVPR 2015): FCN-16s with the ``pool3`` skip fused at stride 8, 8x upsampling.

    See :class:`FullyConvNet` for the arguments (without ``n_skips``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, backbone: str = "vgg16",
                 pretrained_backbone: str | None = None, backbone_kwargs: Mapping[str, Any] | None = None,
                 fc_channels: int = 4096, fc6_kernel: int = 7, dropout: float = 0.5) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, backbone=backbone,
                         pretrained_backbone=pretrained_backbone, backbone_kwargs=backbone_kwargs,
                         fc_channels=fc_channels, fc6_kernel=fc6_kernel, dropout=dropout, n_skips=2)
