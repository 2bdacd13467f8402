"""W-Net: a U-Net-like density estimator with an independent "reinforcement" decoder (Valloli & Mehta, 2019).

Paper: V. K. Valloli, K. Mehta, "W-Net: Reinforced U-Net for Density Map Estimation", arXiv:1903.11249 (2019),
Section 3 and Fig. 2 (crowd counting; the seeds' "W-Net (density maps)").

Layout: the encoder is the 13 convolutional layers of VGG-16 with batch norm (ImageNet-pretrained), max pooling
after the first four blocks, so the last block works at 1/16 of the input. Two decoders of the same structure
share it, giving the "W": each decoding block upsamples the deeper feature 2x, concatenates the encoder block of
that resolution (conv4_3, conv3_3, conv2_2) and applies a 1x1 convolution then a 3x3 convolution (256, 128, 64
channels), each + BN + ReLU; a last 3x3 convolution (32 channels) ends each decoder at half the input resolution.
The density decoder's 32 feature maps are multiplied by the reinforcement branch's map (its 1x1 convolution to one
channel + sigmoid), and a 1x1 convolution gives the output. Segmentation replaces the density map by class logits
(no output ReLU) and upsamples them bilinearly by 2 to the input size.

We write our own implementation; the encoder is our ``vgg16_bn`` backbone (its convolution blocks; torchvision
weights load into it from a local file). The layout was cross-checked against an unofficial Keras port
(ZhengPeng7/W-Net-Keras); the authors released no code. The design is not inherently 2D, so it runs in 3D too.
Input sizes must be multiples of 16. The paper states no parameter count we could read, so the registry records
``None``; we count 17,002,050 parameters at 2D, RGB input, one output channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_conv, make_pool, resample_linear
from medseg.models.natural.classic._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["WNet", "WNetDecoder"]

RELU = ("relu", {"inplace": True})


class WNetDecoder(nn.Module):
    """One W-Net decoder: three upsample-concatenate-(1x1, 3x3) blocks and a final 3x3 convolution.

    Shapes: the encoder features at strides 2, 4, 8, 16 to ``(B, widths[-1], *spatial / 2)``.

    Args:
        spatial_dims: 2 or 3.
        encoder_channels: Channels of the encoder blocks at strides 2, 4, 8, 16.
        widths: Widths of the three decoding blocks and of the final convolution (paper: 256, 128, 64, 32).
    """

    def __init__(self, spatial_dims: int, encoder_channels: tuple[int, int, int, int],
                 widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        kw = {"norm": "batch", "act": RELU}
        deeper = encoder_channels[3]
        self.blocks = nn.ModuleList()
        for skip, width in zip(encoder_channels[2::-1], widths[:3], strict=True):
            self.blocks.append(nn.Sequential(ConvNormAct(spatial_dims, skip + deeper, width, 1, **kw),
                                             ConvNormAct(spatial_dims, width, width, 3, **kw)))
            deeper = width
        self.final = ConvNormAct(spatial_dims, deeper, widths[3], 3, **kw)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decode ``[stride 2, 4, 8, 16]`` encoder features."""
        x = features[3]
        for block, skip in zip(self.blocks, features[2::-1], strict=True):
            up = nn.functional.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = block(torch.cat((skip, up), dim=1))
        return self.final(x)


@register_model(
    "wnet",
    family="unet_variants",
    spatial_dims=(2, 3),
    paper_title="W-Net: Reinforced U-Net for Density Map Estimation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        params=None,
        source="arXiv:1903.11249, Section 3 and Fig. 2; no parameter figure we could read and no official code "
               "(layout cross-checked with the unofficial ZhengPeng7/W-Net-Keras); built from the paper's text",
    ),
    divisor=16,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "width": 0.125},
)
class WNet(SegmentationModel):
    """W-Net of Valloli & Mehta (2019): VGG-16-BN encoder, density decoder gated by a reinforcement decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 16.
    :attr:`reinforcement_map` holds the last forward's reinforcement-branch map ``(B, 1, *spatial / 2)``.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (paper: RGB).
        out_channels: Output channels (paper: 1 density map; classes for segmentation).
        backbone: A VGG backbone (paper: ``"vgg16_bn"``).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        width: Multiplier of the decoder widths (1 = the paper's 256, 128, 64, 32).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "vgg16_bn",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        width: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                                      self.model_name)
        if not hasattr(self.encoder, "blocks") or len(self.encoder.blocks) != 5:
            raise ModelError(f"{self.model_name}: the encoder must be a 5-block VGG backbone, got {backbone!r}")
        enc = tuple(self.encoder.out_channels[1:])  # blocks 2-5 at strides 2, 4, 8, 16
        widths = tuple(max(round(c * width), 1) for c in (256, 128, 64, 32))
        self.pool = make_pool("max", spatial_dims, 2)
        self.density = WNetDecoder(spatial_dims, enc, widths)  # type: ignore[arg-type]
        self.reinforcement = WNetDecoder(spatial_dims, enc, widths)  # type: ignore[arg-type]
        self.reinforcement_head = make_conv(spatial_dims, widths[3], 1, 1)
        self.head = make_conv(spatial_dims, widths[3], out_channels, 1)
        self.input_divisor = (16,) * spatial_dims
        self.reinforcement_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        features = []
        for i, block in enumerate(self.encoder.blocks):
            x = block(x if i == 0 else self.pool(x))
            features.append(x)
        rb = torch.sigmoid(self.reinforcement_head(self.reinforcement(features[1:])))
        self.reinforcement_map = rb.detach()
        return resample_linear(self.head(self.density(features[1:]) * rb), size)
