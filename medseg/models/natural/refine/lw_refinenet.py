"""Light-Weight RefineNet (Nekrasov, Shen & Reid, BMVC 2018) on ResNet-50/101/152 or MobileNetV2, 2D.

Paper: V. Nekrasov, C. Shen, I. Reid, "Light-Weight RefineNet for Real-Time Semantic Segmentation", BMVC 2018
(arXiv:1810.03272), Section 3 and Figure 2.

RefineNet (:mod:`medseg.models.natural.refine.refinenet`) made light: the residual convolution units are removed and
every 3x3 convolution of the refinement path becomes a 1x1 convolution (CRP-LW, FUSION-LW). ResNet models: four
:class:`~medseg.models.natural.refine._modules.RefineNetBlock` in light form (1x1 reduction of the backbone map to
512 channels at 1/32 and 256 elsewhere, 1x1 fusion convolutions, ReLU, CRP of four 1x1 blocks, 1x1 output
convolution), dropout 0.5 on the two deepest maps, a 3x3 classifier at 1/4 resolution (with bias).

MobileNetV2 model (the authors' ``mbv2``): the outputs of the last six inverted-residual groups (24, 32, 64, 96, 160,
320 channels at 1/4, 1/8, 1/16, 1/16, 1/32, 1/32) are each reduced to 256 channels by a 1x1 convolution; maps of
the same resolution are summed (with the upsampled lower-resolution path), ReLU6, a four-block CRP-LW and a 1x1
adaptation convolution per stage; a 3x3 classifier at 1/4. MobileNetV2's last 1x1 convolution (320 -> 1280) is not
part of this network and is removed from the backbone (after pretrained weights are loaded).

Paper configuration: MobileNetV2, PASCAL VOC (21 classes): "we attain 79.2% mean iou on PASCAL VOC using a model that
contains only 3.3M parameters and performs only 9.3B floating point operations" (abstract); we count 3,283,477. For
the ResNet models we count 27,357,525 (ResNet-50), 46,349,653 (ResNet-101) and 61,993,301 (ResNet-152) with 21
classes; the authors' README (DrSleep/light-weight-refinenet) lists "Params, M" 27, 46, 62 and 3.3 for
RF-LW-ResNet-50/101/152 and RF-LW-MobileNet-v2 (checked in ``tests/models/test_natural_refine.py``).
Logits are upsampled (bilinearly) to the input size. 2D only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.mobilenetv2 import MOBILENETV2_SETTINGS
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_conv
from medseg.models.natural.refine._modules import (
    ChainedResidualPooling,
    RefineNetBlock,
    build_backbone,
    upsample_to,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["LightWeightRefineNet"]


def _last_conv_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return int(convs[-1].out_channels)


@register_model(
    "lw_refinenet",
    family="natural",
    spatial_dims=(2,),
    paper_title="Light-Weight RefineNet for Real-Time Semantic Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={"backbone": "mobilenetv2"}, params=3_300_000,
        source="BMVC 2018, abstract: 'a model that contains only 3.3M parameters' (RF-LW with MobileNet-v2, PASCAL "
               "VOC, 79.2% mIoU)",
    ),
    divisor=32,
    test_kwargs={"backbone": "mobilenetv2", "backbone_kwargs": {"width": 0.25}, "features": (16, 8)},
)
class LightWeightRefineNet(SegmentationModel):
    """Light-Weight RefineNet of Nekrasov et al. (BMVC 2018) on ResNet or MobileNetV2.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of 32.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3 in the paper).
        out_channels: Classes (21 for PASCAL VOC).
        backbone: ``"resnet50"`` (default), ``"resnet101"``, ``"resnet152"`` (or ``resnet18/34``), or
            ``"mobilenetv2"``.
        output_stride: Backbone output stride (32: no dilation).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Extra backbone options (e.g. ``{"width": 0.25}``).
        features: Widths ``(1/32 block, other blocks)`` for the ResNet models (512, 256); the MobileNetV2 model uses
            the second value for every stage (256).
        dropout: Dropout on the two deepest backbone maps of the ResNet models (0.5).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet50",
        output_stride: int = 32,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        features: tuple[int, int] = (512, 256),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if not (backbone.startswith("resnet") or backbone == "mobilenetv2"):
            raise ModelError(f"{self.model_name}: backbone must be a ResNet or 'mobilenetv2', got {backbone!r}")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=output_stride,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        wide, narrow = features
        self.mobile = backbone == "mobilenetv2"
        if self.mobile:
            del self.backbone.features[-1]  # the 320 -> 1280 convolution is not part of the segmentation network
            ends = []
            index = 0
            for _, _, n, _ in MOBILENETV2_SETTINGS:
                index += n
                ends.append(index)
            self._taps = ends[1:]  # last block of the groups with 24, 32, 64, 96, 160, 320 channels
            chans = [_last_conv_channels(self.backbone.features[i]) for i in self._taps]
            self.reduce = nn.ModuleList(make_conv(spatial_dims, c, narrow, 1, bias=False) for c in chans)
            self.crps = nn.ModuleList(ChainedResidualPooling(spatial_dims, narrow, 4, 1) for _ in range(4))
            self.adapt = nn.ModuleList(make_conv(spatial_dims, narrow, narrow, 1, bias=False) for _ in range(3))
            self.act = make_act(("relu6", {"inplace": False}))
        else:
            chans = self.backbone.out_channels[1:5]
            self.blocks = nn.ModuleList([
                RefineNetBlock(spatial_dims, chans[3], wide, narrow, fuse=False, light=True),
                RefineNetBlock(spatial_dims, chans[2], narrow, narrow, fuse=True, light=True),
                RefineNetBlock(spatial_dims, chans[1], narrow, narrow, fuse=True, light=True),
                RefineNetBlock(spatial_dims, chans[0], narrow, None, fuse=True, light=True),
            ])
            self.dropout = nn.Dropout(dropout)
        self.classifier = make_conv(spatial_dims, narrow, out_channels, 3, bias=True)
        self.input_divisor = (32,) * spatial_dims

    def _mobile_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.backbone.features):
            x = layer(x)
            if i in self._taps:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``."""
        self.check_input(x)
        if self.mobile:
            self.backbone.check_input(x)
            l3, l4, l5, l6, l7, l8 = (r(t) for r, t in zip(self.reduce, self._mobile_features(x), strict=True))
            y = self.adapt[0](self.crps[0](self.act(l8 + l7)))
            y = self.adapt[1](self.crps[1](self.act(l5 + l6 + upsample_to(y, l6.shape[2:]))))
            y = self.adapt[2](self.crps[2](self.act(l4 + upsample_to(y, l4.shape[2:]))))
            y = self.crps[3](self.act(l3 + upsample_to(y, l3.shape[2:])))
        else:
            c1, c2, c3, c4 = self.backbone(x)[1:5]
            y = self.blocks[0](self.dropout(c4))
            for block, c in zip(self.blocks[1:], (self.dropout(c3), c2, c1), strict=True):
                y = block(c, y)
        return upsample_to(self.classifier(y), x.shape[2:])
