"""OCRNet: object-contextual representations (Yuan, Chen & Wang, ECCV 2020) on HRNetV2-W48 or a dilated ResNet, 2D.

Paper: Y. Yuan, X. Chen, J. Wang, "Object-Contextual Representations for Semantic Segmentation", ECCV 2020
(arXiv:1909.11065), Section 3.2-3.3 and Figure 3; code: HRNet-Semantic-Segmentation (branch HRNet-OCR,
``seg_hrnet_ocr.py``) and openseg.pytorch.

Pipeline: backbone features -> (1) soft object regions: an auxiliary head (1x1 convolution with BN-ReLU, 1x1
convolution to K classes) predicts coarse segmentation logits, supervised by the ground truth (auxiliary loss, weight
0.4 in the paper); (2) object region representations: the pixel representations (a 3x3 convolution to 512 channels
with BN-ReLU) are aggregated per region, weighted by the spatial softmax of each region's logits; (3) pixel-region
relation: keys/queries are two 1x1 convolutions (with BN-ReLU) to 256 channels, the relation is the softmax over
regions of ``query . key / sqrt(256)``; (4) the object-contextual representation (the relation-weighted region values,
1x1 to 256 and back to 512 channels with BN-ReLU) is concatenated with the pixel representation, fused by a 1x1
convolution (1024 -> 512, BN-ReLU, dropout 0.05) and classified by a 1x1 convolution.

Outputs: in training with ``deep_supervision=True`` the list ``[main, soft_object_regions]`` (both logits upsampled to
the input size; ``deep_supervision_scales = [(1, 1), (1, 1)]``); otherwise the main logits.

Paper configuration: HRNetV2-W48 + OCR on Cityscapes (19 classes); we count 70,372,678 parameters: HRNetV2-W48
65,325,120, OCR head 5,047,558 (aux head 534,259, 3x3 pixel representation 3,319,296, OCR block 1,184,256,
classifier 9,747). The head equals the authors' ``seg_hrnet_ocr.py`` layer by layer (HRNet-Semantic-Segmentation,
branch HRNet-OCR: ``conv3x3_ocr`` with bias, ``SpatialOCR_Module(512, 256, 512)``, ``cls_head``, ``aux_head``), and
HRNetV2-W48 with its 1x1 head is the 65.8M of that repository's README (the ``hrnetv2_w48`` model). Parameter figure: a
figure of 70.3M for HRNetV2-W48 + OCR is attributed to the paper, but we could not read it in any source available to
us (the paper's tables were not readable; the authors' READMEs give no parameter count for OCR), so ``params`` is
``None``; our count would be 0.1% above it. 2D only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.backbones.hrnet import HRNetBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.refine._modules import build_backbone, upsample_to
from medseg.models.natural.refine.hrnetv2_w48 import HRNET_TEST_KWARGS
from medseg.models.registry import PaperConfig, register_model

__all__ = ["OCRNet", "ObjectContextualBlock", "gather_object_regions"]


def gather_object_regions(features: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """Object region representations (Eq. 2): ``(B, C, *spatial)`` and ``(B, K, *spatial)`` to ``(B, C, K)``.

    Each region's representation is the average of the pixel features weighted by the spatial softmax of its logits.
    """
    probs = torch.softmax(region_logits.flatten(2), dim=2)  # (B, K, N)
    return torch.bmm(features.flatten(2), probs.transpose(1, 2))  # (B, C, K)


class ObjectContextualBlock(nn.Module):
    """Pixel-region relation and object-contextual representation (Eqs. 3-5; ``SpatialOCR_Module`` of the code).

    Shapes: pixel features ``(B, C, *spatial)`` and region representations ``(B, C, K)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C (512).
        key_channels: Width of queries, keys and values (256).
        out_channels: C_out (512).
        dropout: Dropout after the fusion convolution (0.05).
    """

    def __init__(self, spatial_dims: int, channels: int, key_channels: int, out_channels: int,
                 dropout: float = 0.05) -> None:
        super().__init__()
        self.key_channels = key_channels

        def cbr(cin: int, cout: int) -> nn.Module:
            return ConvNormActD(spatial_dims, cin, cout, 1)

        self.f_pixel = nn.Sequential(cbr(channels, key_channels), cbr(key_channels, key_channels))
        self.f_object = nn.Sequential(cbr(channels, key_channels), cbr(key_channels, key_channels))
        self.f_down = cbr(channels, key_channels)
        self.f_up = cbr(key_channels, channels)
        self.fuse = nn.Sequential(cbr(2 * channels, out_channels), nn.Dropout(dropout))
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Augment pixel features ``x`` with their object-contextual representation."""
        proxy = regions.reshape(*regions.shape, *([1] * (self.spatial_dims - 1)))  # (B, C, K, 1[, 1])
        query = self.f_pixel(x).flatten(2).transpose(1, 2)  # (B, N, Ck)
        key = self.f_object(proxy).flatten(2)  # (B, Ck, K)
        value = self.f_down(proxy).flatten(2).transpose(1, 2)  # (B, K, Ck)
        relation = torch.softmax(torch.bmm(query, key) * self.key_channels ** -0.5, dim=-1)  # (B, N, K)
        context = torch.bmm(relation, value).transpose(1, 2).reshape(x.shape[0], self.key_channels, *x.shape[2:])
        return self.fuse(torch.cat([self.f_up(context), x], dim=1))


@register_model(
    "ocrnet",
    family="natural",
    spatial_dims=(2,),
    paper_title="Object-Contextual Representations for Semantic Segmentation",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={}, params=None,
        source="ECCV 2020, Section 3.3 (HRNetV2-W48 + OCR, Cityscapes, 19 classes); a 70.3M figure is attributed "
               "to the paper but could not be read in any available source; our head equals the authors' "
               "seg_hrnet_ocr.py",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"backbone_kwargs": HRNET_TEST_KWARGS, "ocr_channels": 16, "key_channels": 8},
)
class OCRNet(SegmentationModel):
    """OCRNet of Yuan et al. (ECCV 2020): soft object regions, pixel-region relation, object-contextual representation.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of ``input_divisor`` (32 for
    HRNet, the output stride for ResNets).

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3).
        out_channels: Classes K (19 on Cityscapes).
        backbone: ``"hrnetv2_w48"`` (default), ``"hrnetv2_w18"``, or a ResNet (``"resnet101"``: the paper's other
            backbone, dilated to ``output_stride`` 8, the soft regions predicted from stage 3 and OCR on stage 4).
        output_stride: Output stride of a ResNet backbone (8 in the paper); HRNet is fixed at 1/4.
        pretrained_backbone: Local weights file for the backbone.
        backbone_kwargs: Extra backbone options.
        ocr_channels: Width of the pixel representation (512).
        key_channels: Width of the relation's keys/queries (256).
        deep_supervision: Return ``[main, soft_object_regions]`` in training.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "hrnetv2_w48",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        ocr_channels: int = 512,
        key_channels: int = 256,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.hrnet = backbone.startswith("hrnet")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels,
                                       output_stride=None if self.hrnet else output_stride,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        if isinstance(self.backbone, HRNetBackbone):
            feat = aux_in = self.backbone.representation_channels
            aux_mid = aux_in
            self.input_divisor = (32,) * spatial_dims
        else:  # ResNet: auxiliary head on stage 3 (1024 -> 512), OCR on stage 4 (openseg.pytorch's SpatialOCRNet)
            aux_in, feat = self.backbone.out_channels[3], self.backbone.out_channels[4]
            aux_mid = ocr_channels
            self.input_divisor = (max(output_stride, 16),) * spatial_dims
        self.aux_head = nn.Sequential(
            ConvNormActD(spatial_dims, aux_in, aux_mid, 1 if self.hrnet else 3, bias=True),
            make_conv(spatial_dims, aux_mid, out_channels, 1, bias=True),
        )
        self.pixel = ConvNormActD(spatial_dims, feat, ocr_channels, 3, bias=True)
        self.ocr = ObjectContextualBlock(spatial_dims, ocr_channels, key_channels, ocr_channels)
        self.classifier = make_conv(spatial_dims, ocr_channels, out_channels, 1, bias=True)
        self.deep_supervision = deep_supervision
        self.deep_supervision_scales = [(1,) * spatial_dims] * 2 if deep_supervision else []
        self.loss_weights = (1.0, 0.4) if deep_supervision else ()  # the soft object regions' loss weight 0.4

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, out_channels, H, W)``; ``[main, soft_object_regions]`` in training with deep supervision."""
        self.check_input(x)
        features = self.backbone(x)
        if self.hrnet:
            aux_in = feat = HRNetBackbone.representation(features)
        else:
            aux_in, feat = features[3], features[4]
        regions_logits = upsample_to(self.aux_head(aux_in), feat.shape[2:])
        pixels = self.pixel(feat)
        out = self.classifier(self.ocr(pixels, gather_object_regions(pixels, regions_logits)))
        out = upsample_to(out, x.shape[2:])
        if self.deep_supervision and self.training:
            return [out, upsample_to(regions_logits, x.shape[2:])]
        return out
