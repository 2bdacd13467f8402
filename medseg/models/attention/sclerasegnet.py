"""ScleraSegNet: a U-Net with channel/spatial attention modules for sclera segmentation (Wang et al., 2019).

Paper: C. Wang, Y. He, Y. Liu, Z. He, R. He, Z. Sun, "ScleraSegNet: an Improved U-Net Model with Attention for
Accurate Sclera Segmentation", ICB 2019; journal version C. Wang, Y. Wang, Y. Liu, Z. He, R. He, Z. Sun,
"ScleraSegNet: an Attention Assisted U-Net Model for Accurate Sclera Segmentation", IEEE T-BIOM 2(1), 2020. The
authors' repository (github.com/xiamenwcy/ScleraSegNet) releases Caffe testing scripts; the network definitions
and weights are a separate download we could not obtain.

Layout: "several off-the-shelf or improved attention modules are incorporated into the central bottleneck part or
skip connection part of the original U-Net". The U-Net has five levels (64 ... 1024 channels) of two 3x3
convolutions + BN + ReLU, 2x2 max pooling, 2x2 transposed convolutions and concatenated skips. ``attention``
selects the variant:

* ``"cbam"`` (the best performing ScleraSegNet (CBAM)): CBAM (:class:`medseg.models.blocks.CBAM`: channel attention
  from average- and max-pooled descriptors through a shared MLP, then spatial attention from a 7x7 convolution of
  the channel-wise mean and max) on the central bottleneck;
* ``"channel"`` / ``"spatial"``: only CBAM's channel or spatial attention on the bottleneck;
* ``"ssbc"`` (ScleraSegNet (SSBC), first in the SSBC 2019 competition): on every skip connection, "the high stage's
  semantic information guides the selection of features from the low stage in channel-wise and spatial-wise" —
  :class:`HighGuidedAttention`: channel weights ``sigmoid(W_c GAP(h))`` and spatial weights ``sigmoid(W_s h)``
  (upsampled) from the decoder feature ``h`` of the next coarser level rescale the skip.

We write our own implementation from the papers' text (2D as in the paper; the layout runs in 3D too).
``features_per_stage`` and ``strides`` (first entry 1) can be planned. Neither paper states a parameter count we
could read and the network definitions were not obtainable, so the registry records ``None``; we count 31,175,846
parameters for ScleraSegNet (CBAM) at 2D, RGB input, 2 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    CBAM,
    NormSpec,
    StackedConvNormAct,
    make_conv,
    make_pool,
    make_transposed_conv,
    resample_linear,
)
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["ATTENTIONS", "HighGuidedAttention", "ScleraSegNet"]

RELU = ("relu", {"inplace": True})
ATTENTIONS = ("cbam", "channel", "spatial", "ssbc")


class HighGuidedAttention(nn.Module):
    """ScleraSegNet (SSBC)'s skip attention: the coarser decoder feature selects the skip's channels and positions.

    ``x * sigmoid(W_c GAP(h)) * up(sigmoid(W_s h))`` with 1x1 convolutions ``W_c`` (C_h -> C_x) and ``W_s``
    (C_h -> 1). Shapes: ``x`` ``(B, C_x, *spatial)``, ``h`` ``(B, C_h, *spatial_h)`` to ``(B, C_x, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_x.
        high_channels: C_h.
    """

    def __init__(self, spatial_dims: int, in_channels: int, high_channels: int) -> None:
        super().__init__()
        self.channel = make_conv(spatial_dims, high_channels, in_channels, 1)
        self.spatial = make_conv(spatial_dims, high_channels, 1, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Rescale the skip ``x`` by the guidance of ``h``."""
        pooled = h.mean(dim=tuple(range(2, h.dim())), keepdim=True)
        spatial = resample_linear(torch.sigmoid(self.spatial(h)), x.shape[2:])
        return x * torch.sigmoid(self.channel(pooled)) * spatial


@register_model(
    "sclerasegnet",
    family="attention",
    spatial_dims=(2, 3),
    paper_title="ScleraSegNet: an Improved U-Net Model with Attention for Accurate Sclera Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=2,
        kwargs={"attention": "cbam"},
        params=None,
        source="ICB 2019 and IEEE T-BIOM 2020 (attention modules in the bottleneck or skips of U-Net); no "
               "parameter figure we could read and the Caffe network definitions were not obtainable; built from "
               "the papers' text",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 16, 32)}, 3: {"features_per_stage": (4, 8, 16)}},
)
class ScleraSegNet(SegmentationModel):
    """ScleraSegNet of Wang et al. (ICB 2019): U-Net with CBAM-style attention in the bottleneck or on the skips.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides per axis (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Classes.
        features_per_stage: Width of each level (default 64 ... 1024).
        strides: Pooling into each level (first entry 1); default 2 per axis.
        attention: ``"cbam"`` (default), ``"channel"``, ``"spatial"`` (bottleneck) or ``"ssbc"`` (skips).
        reduction: Channel-attention reduction ratio (CBAM: 16).
        norm: Normalisation (batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (64, 128, 256, 512, 1024),
        strides: Sequence[int | Sequence[int]] | None = None,
        attention: str = "cbam",
        reduction: int = 16,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if attention not in ATTENTIONS:
            raise ModelError(f"{self.model_name}: attention must be one of {ATTENTIONS}, got {attention!r}")
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides)
        f, pools, divisor = plan.features, plan.pools, plan.divisor
        n = len(f)
        kw = {"norm": norm, "act": RELU}
        self.attention = attention
        self.encoder = nn.ModuleList(StackedConvNormAct(2, spatial_dims, in_channels if i == 0 else f[i - 1], f[i],
                                                        3, **kw) for i in range(n))
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, p) for p in pools)
        self.bottleneck_attention = None if attention == "ssbc" else CBAM(
            spatial_dims, f[-1], reduction, channel=attention != "spatial", spatial=attention != "channel")
        self.skip_attention = nn.ModuleList(
            HighGuidedAttention(spatial_dims, f[level], f[level + 1]) for level in range(n - 2, -1, -1)
        ) if attention == "ssbc" else None
        self.ups = nn.ModuleList(make_transposed_conv(spatial_dims, f[level + 1], f[level], pools[level])
                                 for level in range(n - 2, -1, -1))
        self.decoder = nn.ModuleList(StackedConvNormAct(2, spatial_dims, 2 * f[level], f[level], 3, **kw)
                                     for level in range(n - 2, -1, -1))
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pools[i - 1](x))
            skips.append(x)
        out = skips.pop()
        if self.bottleneck_attention is not None:
            out = self.bottleneck_attention(out)
        for k, (up, block) in enumerate(zip(self.ups, self.decoder, strict=True)):
            skip = skips.pop()
            if self.skip_attention is not None:
                skip = self.skip_attention[k](skip, out)
            out = block(torch.cat((skip, up(out)), dim=1))
        return self.head(out)
