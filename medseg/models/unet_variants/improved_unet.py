"""Improved U-Net for seabed mineral images: a narrower U-Net with batch normalisation after every convolution.

Paper: W. Song et al. (Minzu University of China), "An Improved U-Net Convolutional Networks for Seabed Mineral Image
Segmentation", IEEE Access 7, 2019 (authors' list, pages and DOI not verified here); the group later extended the
design to JPU-Net / JPMU-Net / ResU-Net (H. Wang, L. Dong, W. Song et al., "Improved U-Net-Based Novel Segmentation
Algorithm for Underwater Mineral Image", Intelligent Automation & Soft Computing 32(3), 2022).

What we could establish about the design (no official code was published and the paper's full text could not be
read here, so the layout is a reconstruction, stated as such): the network keeps U-Net's symmetric encoder-decoder
with concatenated skips and makes it lighter and easier to train on a small underwater data set, by halving the
channel widths (32-512 instead of 64-1024) and adding batch normalisation after each convolution.

Layout: five levels of two 3x3 conv + batch norm + ReLU ("same" padding), 2x max pooling; the decoder upsamples by a
2x2 transposed convolution halving the channels, concatenates the skip and applies two conv-BN-ReLU; a 1x1
convolution gives the classes.

The registry records no parameter figure (``None``); at the paper's setting as we read it (2D RGB images, 2 classes:
nodule and background) we count 7,766,018 parameters. Planned topology: ``features_per_stage`` and ``strides``
(nnU-Net plans) set the stages. The design is dimension-agnostic; 3D uses the same layers in 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    NormSpec,
    StackedConvNormAct,
    make_conv,
    make_pool,
    make_transposed_conv,
)
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["ImprovedUNet"]


@register_model(
    "improved_unet",
    family="unet_variants",
    spatial_dims=(2, 3),
    paper_title="An Improved U-Net Convolutional Networks for Seabed Mineral Image Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=2,
        kwargs={},
        params=None,
        source="IEEE Access 7 (2019); no official code, full text not read: reconstruction (U-Net with "
               "halved widths and batch normalisation), no parameter figure",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 16, 16)}, 3: {"features_per_stage": (4, 8, 8)}},
)
class ImprovedUNet(SegmentationModel):
    """Improved U-Net of Song et al. (IEEE Access 2019): a batch-normalised U-Net with halved widths.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    total stride (16 by default, :attr:`input_divisor`).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features_per_stage: Channels per stage (default 32, 64, 128, 256, 512).
        strides: Downsampling into each stage (plans format); default 2 per axis after the first stage.
        norm: Normalisation (batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        topo = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, (32, 64, 128, 256, 512))
        f, n = topo.features, topo.n_stages
        kw = {"norm": norm, "act": ("relu", {"inplace": True})}
        self.topology = topo
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, s) for s in topo.strides[1:])
        self.encoder = nn.ModuleList(
            StackedConvNormAct(2, spatial_dims, in_channels if i == 0 else f[i - 1], f[i], 3, **kw) for i in range(n)
        )
        self.ups = nn.ModuleList(make_transposed_conv(spatial_dims, f[i + 1], f[i], topo.strides[i + 1])
                                 for i in range(n - 2, -1, -1))
        self.decoder = nn.ModuleList(StackedConvNormAct(2, spatial_dims, 2 * f[i], f[i], 3, **kw)
                                     for i in range(n - 2, -1, -1))
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = topo.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pools[i - 1](h))
            skips.append(h)
        h = skips.pop()
        for up, block in zip(self.ups, self.decoder, strict=True):
            h = block(torch.cat((skips.pop(), up(h)), dim=1))
        return self.head(h)
