"""U-Net with concurrent spatial and channel squeeze & excitation (scSE) blocks (Roy, Navab & Wachinger, 2018).

Paper: A. G. Roy, N. Navab, C. Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully
Convolutional Networks", MICCAI 2018, LNCS 11070 (arXiv:1803.02579), Section 2 (cSE, sSE, scSE; Fig. 1) and
Section 3 (scSE blocks "after every encoder and decoder block" of U-Net, SD-Net and fully convolutional DenseNet;
reduction ratio ``r = 2``).

The scSE block is :class:`medseg.models.blocks.ChannelSpatialSELayer` (cSE from MONAI's ``ChannelSELayer``, which
is the paper's channel excitation with ``r = 2``; sSE our own 1x1 conv + sigmoid; combined by addition). MONAI has
no spatial or concurrent SE layer in this version and no U-Net with SE blocks at these places, so the network is our
own: a U-Net with two 3x3 convolutions + batch norm + ReLU per block, 2x max pooling, 2x2 transposed convolutions,
concatenated skips and a final 1x1 convolution, with an scSE block after every encoder block, the bottleneck and
every decoder block.

Paper configuration: 2D, one MRI channel, 28 classes (the MALC whole-brain segmentation, 27 structures + background),
``features=(64, 128, 256, 512, 1024)``. We found no absolute parameter count for the paper's networks, so the
registry records ``None``; we count 32,796,389 parameters for this configuration, of which the scSE blocks hold
1,752,265 (5.6% on top of the 31,044,124 of the same U-Net without them). The only figure we found is relative and
from the journal extension (A. G. Roy, N. Navab, C. Wachinger, "Recalibrating Fully Convolutional Networks with
Spatial and Channel 'Squeeze & Excitation' Blocks", IEEE Transactions on Medical Imaging, 2019, abstract): "SE blocks
only lead to a minimal increase in model complexity of about 1.5%". Our 5.6% is larger; the ratio depends on the
U-Net's widths and on the networks averaged over, which we could not check against the papers' text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    ChannelSpatialSELayer,
    NormSpec,
    StackedConvNormAct,
    make_conv,
    make_pool,
    make_transposed_conv,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["SCSEUNet"]


@register_model(
    "scse_unet",
    family="se",
    spatial_dims=(2, 3),
    paper_title="Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=28,
        kwargs={"features": (64, 128, 256, 512, 1024), "reduction": 2},
        params=None,
        source="MICCAI 2018 (arXiv:1803.02579), Sections 2-3 (scSE after every encoder/decoder block, r=2, MALC "
               "27 structures); no absolute parameter count found (the TMI 2019 extension's abstract: SE blocks add "
               "about 1.5% model complexity)",
    ),
    divisor=16,
    test_kwargs={"features": (4, 8, 8, 16, 16)},
)
class SCSEUNet(SegmentationModel):
    """U-Net with scSE blocks after every encoder and decoder block (Roy et al., MICCAI 2018), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(len(features) - 1)`` (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features: Channels per level (64, 128, 256, 512, 1024 by default).
        reduction: Channel reduction ratio of cSE (paper: 2).
        combine: How scSE combines cSE and sSE: ``"add"`` (paper) or ``"max"`` (the journal extension's best).
        norm: Normalisation after each convolution (batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        reduction: int = 2,
        combine: str = "add",
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        features = tuple(int(f) for f in features)
        depth = len(features)
        if depth < 2:
            raise ModelError(f"{self.model_name}: features needs at least 2 levels, got {features}")
        kw = {"norm": norm, "act": ("relu", {"inplace": True})}
        self.pool = make_pool("max", spatial_dims, 2)
        self.encoder = nn.ModuleList(
            nn.Sequential(
                StackedConvNormAct(2, spatial_dims, in_channels if i == 0 else features[i - 1], f, 3, **kw),
                ChannelSpatialSELayer(spatial_dims, f, reduction, combine),
            )
            for i, f in enumerate(features)
        )
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            f = features[level]
            self.ups.append(make_transposed_conv(spatial_dims, features[level + 1], f, 2))
            self.decoder.append(nn.Sequential(
                StackedConvNormAct(2, spatial_dims, 2 * f, f, 3, **kw),
                ChannelSpatialSELayer(spatial_dims, f, reduction, combine),
            ))
        self.head = make_conv(spatial_dims, features[0], out_channels, 1)
        self.input_divisor = (2 ** (depth - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.decoder, strict=True):
            x = block(torch.cat((skips.pop(), up(x)), dim=1))
        return self.head(x)
