"""LinkNet (Chaurasia & Culurciello, 2017), 2D and 3D.

Paper: A. Chaurasia, E. Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic
Segmentation", VCIP 2017 (arXiv:1707.03718), Section 3 and Figs. 1-3.

Layout: the ResNet-18 encoder (initial block: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride
2; encoder blocks 1-4 = ResNet-18's four stages with 64, 128, 256, 512 channels, our
:class:`~medseg.models.backbones.resnet.ResNetBackbone`). Decoder block ``i`` (Fig. 3) maps ``m`` to ``n`` channels:
1x1 convolution ``m -> m/4``, 3x3 full (transposed) convolution ``m/4 -> m/4`` with stride 2, 1x1 convolution
``m/4 -> n``, each followed by BN and ReLU; its output is *added* to the input of the encoder block ``i`` (the
"link"). Decoder 4..1 map 512->256, 256->128, 128->64, 64->64. The final block: 3x3 full convolution 64->32 with
stride 2, 3x3 convolution 32->32, 2x2 full convolution 32->N with stride 2 (Fig. 1). ResNet-18's first stage does not
downsample, so decoder block 1 keeps the size (its full convolution has stride 1), as in the authors' Torch code;
this is what makes the final x4 upsampling return the input size.

Parameters: the paper states "LinkNet ... uses only 11.5 million parameters" (abstract; Table 1 gives 11.5 M
parameters and 21.2 GFLOPs for a 3x640x360 input). We count 11,534,732 with 12 classes (CamVid's 11 + void; the
classifier is 4·32·N + N parameters, so the count barely depends on N); encoder 11,176,512 (ResNet-18 without ``fc``)
and decoder 358,220 (0.3% above the rounded 11.5 M). ``FlopCounterMode`` counts 18.6 GFLOPs (a multiply-add = 2)
for a 3x352x640 input (the paper's 640x360 rounded to the divisor 32), against the paper's 21.2 GFLOPs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_norm
from medseg.models.natural.attention._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["LinkNet", "LinkNetDecoderBlock"]


class _FullConvNormAct(nn.Sequential):
    """3x3 (or k) transposed convolution with stride, BN, ReLU; doubles the size at stride 2."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int, kernel_size: int = 3,
                 norm_act: bool = True) -> None:
        super().__init__()
        pad = (kernel_size - stride + 1) // 2 if kernel_size > stride else 0
        out_pad = stride + 2 * pad - kernel_size if kernel_size > stride else 0
        self.add_module("conv", Conv[Conv.CONVTRANS, spatial_dims](
            in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=pad, output_padding=out_pad,
            bias=not norm_act))
        if norm_act:
            self.add_module("norm", make_norm("batch", spatial_dims, out_channels))
            self.add_module("act", make_act(("relu", {"inplace": True})))


class LinkNetDecoderBlock(nn.Sequential):
    """LinkNet decoder block (Fig. 3): 1x1 conv ``m -> m/4``, full conv with ``stride``, 1x1 conv ``m/4 -> n``.

    Shapes: ``(B, m, *spatial)`` to ``(B, n, *spatial * stride)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        mid = max(in_channels // 4, 1)
        self.reduce = ConvNormActD(spatial_dims, in_channels, mid, 1)
        self.full = _FullConvNormAct(spatial_dims, mid, mid, stride)
        self.expand = ConvNormActD(spatial_dims, mid, out_channels, 1)


@register_model(
    "linknet",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="LinkNet: Exploiting Encoder Representations for Efficient Semantic Segmentation",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=12, kwargs={}, params=11_500_000,
        source="VCIP 2017 (arXiv:1707.03718), abstract ('only 11.5 million parameters') and Table 1 (11.5 M)",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"width": 0.125}},
)
class LinkNet(SegmentationModel):
    """LinkNet of Chaurasia & Culurciello (VCIP 2017): ResNet-18 encoder, decoder blocks added to the encoder links.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 3).
        out_channels: Classes.
        backbone: A ResNet backbone key (paper: ``"resnet18"``); decoder widths follow its stage channels.
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.125}`` for a narrow test network).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet18",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(self.model_name, backbone, spatial_dims, in_channels, 32, pretrained_backbone,
                                      backbone_kwargs)
        chs = self.encoder.out_channels  # stem, layer1..layer4
        self.decoders = nn.ModuleList(
            # decoder 4 .. 1; ResNet's layer1 does not downsample, so decoder 1 keeps the size.
            LinkNetDecoderBlock(spatial_dims, chs[level], chs[max(level - 1, 1)], 2 if level > 1 else 1)
            for level in range(4, 0, -1)
        )
        stem = chs[1]
        mid = max(stem // 2, 1)
        self.final_full = _FullConvNormAct(spatial_dims, stem, mid, 2)
        self.final_conv = ConvNormActD(spatial_dims, mid, mid, 3)
        self.classifier = _FullConvNormAct(spatial_dims, mid, out_channels, 2, kernel_size=2, norm_act=False)
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        feats = self.encoder(x)[1:]  # encoder blocks 1..4
        y = feats[3]
        for i, decoder in enumerate(self.decoders):  # decoder 4 .. 1
            y = decoder(y)
            if i < 3:
                y = y + feats[2 - i]
        return self.classifier(self.final_conv(self.final_full(y)))
