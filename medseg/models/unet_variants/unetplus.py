"""U-NetPlus: a U-Net with a batch-normalised VGG-11 encoder and a nearest-neighbour decoder (Hasan & Linte, 2019).

Paper: S. M. K. Hasan, C. A. Linte, "U-NetPlus: A Modified Encoder-Decoder U-Net Architecture for Semantic and
Instance Segmentation of Surgical Instruments from Laparoscopic Images", EMBC 2019 (arXiv:1902.08994), Section II and
Fig. 1 (the figure is also the authors' project page, github.com/SMKamrulHasan/UNetPlus, which releases no code).

Layout (Fig. 1): the encoder is VGG-11 with batch norm (ImageNet-pretrained in the paper): 3x3 convolutions + BN +
ReLU with 64 | 128 | 256, 256 | 512, 512 | 512, 512 channels per block and 2x2 max pooling after each block. The
decoder replaces the transposed convolutions of TernausNet (Iglovikov & Shvets, 2018, the paper's baseline) by
nearest-neighbour upsampling with scale factor 2, each followed by two 3x3 convolutions + ReLU. A centre block on the
pooled last encoder block (512 -> 512 -> 256) feeds five decoder steps; each upsampled decoder output is concatenated
with the encoder block of its resolution: 512 + 256 = 768, 512 + 256 = 768, 256 + 256 = 512, 128 + 64 = 192 and
64 + 32 = 96 channels (the figure's labels), the decoder blocks producing 256, 256, 64 and 32 channels (their middle
convolution: 512, 512, 128, 64, twice the output as in TernausNet, capped at 512); a 3x3 convolution + ReLU to 32
channels and a 1x1 convolution give the classes. Where TernausNet's third decoder block gives 128 channels, the
figure's concatenation (256 + 256) implies 256, which we follow.

The encoder is our ``vgg11_bn`` backbone (torchvision's ``vgg11_bn`` weights load into it from a local file, 2D
weights inflate into 3D). The design is not inherently 2D, so the same layout runs in 3D. Input sizes must be
multiples of 32.

Paper configuration: 2D RGB frames, binary instrument segmentation (one output channel). We count 23,024,993
parameters; the paper states no parameter count and no code was released, so the registry records ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_conv, make_pool
from medseg.models.natural.classic._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["NearestDecoderBlock", "UNetPlus"]

RELU = ("relu", {"inplace": True})


class NearestDecoderBlock(nn.Sequential):
    """Nearest-neighbour 2x upsampling, then two 3x3 convolutions + ReLU (U-NetPlus' decoder step, Fig. 1).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *2 spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        middle_channels: Output of the first convolution.
        out_channels: C_out.
    """

    def __init__(self, spatial_dims: int, in_channels: int, middle_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvNormAct(spatial_dims, in_channels, middle_channels, 3, act=RELU),
            ConvNormAct(spatial_dims, middle_channels, out_channels, 3, act=RELU),
        )


@register_model(
    "unetplus",
    family="unet_variants",
    spatial_dims=(2, 3),
    paper_title="U-NetPlus: A Modified Encoder-Decoder U-Net Architecture for Semantic and Instance Segmentation of "
                "Surgical Instruments from Laparoscopic Images",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        params=None,
        source="EMBC 2019 (arXiv:1902.08994), Section II and Fig. 1; no parameter figure in the paper and no "
               "official code (the authors' repository holds the figure only); built from the paper's figure",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "width": 0.125},
)
class UNetPlus(SegmentationModel):
    """U-NetPlus of Hasan & Linte (EMBC 2019): VGG-11-BN encoder, nearest-neighbour upsampling decoder, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 32.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (paper: RGB).
        out_channels: Classes (paper: 1 binary, 4 parts or 8 instrument types).
        backbone: A VGG backbone with batch norm (paper: ``"vgg11_bn"``).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        width: Multiplier of the decoder widths (1 = the paper's).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "vgg11_bn",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        width: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                                      self.model_name)
        if not hasattr(self.encoder, "blocks") or len(self.encoder.blocks) != 5:
            raise ModelError(f"{self.model_name}: the encoder must be a 5-block VGG backbone, got {backbone!r}")
        enc = list(self.encoder.out_channels)  # 64, 128, 256, 512, 512

        def w(c: int) -> int:
            return max(round(c * width), 1)

        outs = [w(256), w(256), w(256), w(64), w(32)]  # centre, then decoders at strides 16, 8, 4, 2
        middles = [w(512), w(512), w(512), w(128), w(64)]
        self.pool = make_pool("max", spatial_dims, 2)
        self.center = NearestDecoderBlock(spatial_dims, enc[4], middles[0], outs[0])
        self.decoder = nn.ModuleList(
            NearestDecoderBlock(spatial_dims, enc[4 - i] + outs[i], middles[i + 1], outs[i + 1]) for i in range(4)
        )
        self.final = ConvNormAct(spatial_dims, enc[0] + outs[4], w(32), 3, act=RELU)
        self.head = make_conv(spatial_dims, w(32), out_channels, 1)
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        for block in self.encoder.blocks:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.center(x)
        for block in self.decoder:
            x = block(torch.cat((x, skips.pop()), dim=1))
        return self.head(self.final(torch.cat((x, skips.pop()), dim=1)))
