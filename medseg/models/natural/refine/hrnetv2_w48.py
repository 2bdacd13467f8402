"""HRNetV2-W48 segmentation network (Wang et al., TPAMI 2020): the HRNetV2 representation and a 1x1 head, 2D.

Paper: J. Wang, K. Sun, T. Cheng, B. Jiang, C. Deng, Y. Zhao, D. Liu, Y. Mu, M. Tan, X. Wang, W. Liu, B. Xiao, "Deep
High-Resolution Representation Learning for Visual Recognition", TPAMI 2020 (arXiv:1908.07919), Section 4 ("Semantic
segmentation") and the Cityscapes table; code: HRNet-Semantic-Segmentation (``seg_hrnet.py``).

Layout: the HRNetV2-W48 backbone (:mod:`medseg.models.backbones.hrnet`); its four branches are upsampled bilinearly to
the 1/4 branch and concatenated (HRNetV2, 15C = 720 channels); the head of the reference code (``last_layer``) is a
1x1 convolution 720 -> 720 (with bias), BN, ReLU and a 1x1 convolution to the classes (with bias). The logits, at
1/4 resolution, are upsampled bilinearly to the input size.

Paper configuration: HRNetV2-W48, Cityscapes (19 classes); we count 65,859,379 parameters. The authors' code
(HRNet-Semantic-Segmentation README, Cityscapes table of the master branch) lists "HRNetV2-W48 | Train | Val | 65.8M |
696.2 | No | No | No | 80.9"; we record 65.8M (0.1% from our count). The paper's own Cityscapes table gives 65.9M
as we recall it (not read here). 2D only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.backbones.hrnet import HRNetBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.refine._modules import build_backbone, upsample_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["HRNetV2Seg"]

HRNET_TEST_KWARGS = {"width": 4, "stem_width": 8, "modules": (1, 1, 1), "num_blocks": 1}


def build_hrnet(name: str, spatial_dims: int, in_channels: int, pretrained: str | None,
                backbone_kwargs: Mapping[str, Any] | None, model_name: str) -> HRNetBackbone:
    """Build an HRNet backbone (``hrnetv2_w18`` or ``hrnetv2_w48``) for a segmentation network."""
    if not name.startswith("hrnetv2"):
        raise ModelError(f"{model_name}: backbone must be an HRNetV2 ('hrnetv2_w18', 'hrnetv2_w48'), got {name!r}")
    backbone = build_backbone(name, spatial_dims, in_channels, pretrained=pretrained, backbone_kwargs=backbone_kwargs)
    assert isinstance(backbone, HRNetBackbone)
    return backbone


@register_model(
    "hrnetv2_w48",
    family="natural",
    spatial_dims=(2,),
    paper_title="Deep High-Resolution Representation Learning for Visual Recognition",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={}, params=65_800_000,
        source="TPAMI 2020, Section 4 (HRNetV2-W48 on Cityscapes, 19 classes); figure from the authors' "
               "HRNet-Semantic-Segmentation README, Cityscapes table: 'HRNetV2-W48 | Train | Val | 65.8M | 696.2 | "
               "... | 80.9'",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": HRNET_TEST_KWARGS},
)
class HRNetV2Seg(SegmentationModel):
    """HRNetV2 segmentation network (Wang et al., TPAMI 2020): concatenated multi-resolution representation + 1x1 head.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of 32.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3).
        out_channels: Classes (19 on Cityscapes).
        backbone: ``"hrnetv2_w48"`` (the paper's) or ``"hrnetv2_w18"``.
        pretrained_backbone: Local timm/HRNet-Image-Classification weights file for the backbone.
        backbone_kwargs: Extra backbone options (narrow test variants).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "hrnetv2_w48",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_hrnet(backbone, spatial_dims, in_channels, pretrained_backbone, backbone_kwargs,
                                    self.model_name)
        c = self.backbone.representation_channels
        self.head = nn.Sequential(
            ConvNormActD(spatial_dims, c, c, 1, bias=True),
            make_conv(spatial_dims, c, out_channels, 1, bias=True),
        )
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``."""
        self.check_input(x)
        rep = HRNetBackbone.representation(self.backbone(x))
        return upsample_to(self.head(rep), x.shape[2:])
