"""RA-UNet: a U-Net of pre-activation residual blocks whose skips pass through residual attention modules.

Paper: Q. Jin, Z. Meng, C. Sun, H. Cui, R. Su, "RA-UNet: A Hybrid Deep Attention-Aware Network to Extract Liver and
Tumor in CT Scans", Frontiers in Bioengineering and Biotechnology 8:605132 (2020) (arXiv:1811.01328, 2018),
Section 2 (Fig. 3-5); authors' code: github.com/RanSuLab/RAUNet-tumor-segmentation (Keras, ``build_model.py``:
``build_res_atten_unet_3d`` for the liver and tumour networks RA-UNet-II, ``build_res_atten_unet_2d`` with
``filter_num=4`` for the 2D RA-UNet-I). The attention module is that of F. Wang et al., "Residual Attention Network
for Image Classification", CVPR 2017 (arXiv:1704.06904).

Layout (``build_res_atten_unet_3d``, ``filter_num = 8``): a 3x3x3 conv-BN-ReLU stem with 32 channels at full
resolution; five 2x max poolings, each followed by a residual block, with 32, 64, 128, 256 and 512 channels (two
blocks at the bottleneck). Every residual block is a full pre-activation bottleneck (K. He et al., "Identity Mappings
in Deep Residual Networks", ECCV 2016): BN-ReLU-1x1 conv to a quarter of the output width, BN-ReLU-3x3 conv,
BN-ReLU-1x1 conv to the output width, plus a 1x1 convolution of the block input (the code always projects the
shortcut). The skip of each of the levels 4, 3, 2, 1 passes through an attention module (:class:`AttentionModule`):
one residual block, then a trunk of two residual blocks and a soft-mask branch - an hourglass of residual blocks
that max-pools down to the bottleneck's resolution (1, 2, 3, 4 poolings for levels 4, 3, 2, 1), comes back up by
nearest-neighbour upsampling with additive skips, and ends in two 1x1 convolutions and a sigmoid - combined as
``(1 + mask) * trunk`` and followed by one residual block. The decoder upsamples (nearest), concatenates the
attention output and applies a residual block (256, 128, 64, 32 channels); at full resolution it concatenates the
stem and applies a 3x3 conv-BN-ReLU (32) and a 3x3 output convolution. Keras defaults: every convolution has a
bias, batch norm epsilon 1e-3 and momentum 0.99. The 2D network (RA-UNet-I) is the same with ``filter_num = 4``
(16, 16, 32, 64, 128, 256 channels).

Paper configuration: RA-UNet-II, 3D, one CT channel, one output channel (sigmoid), ``filter_num = 8``. The paper
states no parameter count here; the authors' ``build_res_atten_unet_3d`` has 4,420,849 trainable parameters (counted
from its layer definitions: Keras batch norm has two trainable parameters per channel), which the registry records;
ours has the same number. The 2D RA-UNet-I (``filter_num = 4``) has 737,897 in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormActConv, NormSpec, make_conv, make_pool
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["AttentionModule", "PreActBottleneck", "RAUNet"]

KERAS_BN: NormSpec = ("batch", {"eps": 1e-3, "momentum": 0.01})
RELU = ("relu", {"inplace": True})


class PreActBottleneck(nn.Module):
    """Full pre-activation bottleneck block with a projection shortcut, as in the RA-UNet code.

    ``BN-ReLU-conv1x1(C_in -> C/4)``, ``BN-ReLU-conv3(C/4 -> C/4)``, ``BN-ReLU-conv1x1(C/4 -> C)``, plus
    ``conv1x1(C_in -> C)`` of the raw input. Shapes: ``(B, C_in, *spatial)`` to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C (a multiple of 4).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec = KERAS_BN) -> None:
        super().__init__()
        mid = max(out_channels // 4, 1)
        self.body = nn.Sequential(
            NormActConv(spatial_dims, in_channels, mid, 1, norm=norm, act=RELU),
            NormActConv(spatial_dims, mid, mid, 3, norm=norm, act=RELU),
            NormActConv(spatial_dims, mid, out_channels, 1, norm=norm, act=RELU),
        )
        self.shortcut = make_conv(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C, *spatial)``."""
        return self.body(x) + self.shortcut(x)


class AttentionModule(nn.Module):
    """Residual attention module of Wang et al. (CVPR 2017) as RA-UNet uses it (``p = 1, t = 2, r = 1``).

    Shapes: ``(B, C, *spatial)`` to the same. The soft-mask branch max-pools ``len(strides)`` times (by
    ``strides[i]``), so each spatial size must be a multiple of their product.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        strides: Pooling strides of the soft-mask branch, one per pooling (per axis).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, strides: Sequence[Sequence[int]],
                 norm: NormSpec = KERAS_BN) -> None:
        super().__init__()
        depth = len(strides)
        if depth < 1:
            raise ValueError("the soft-mask branch needs at least one pooling")

        def res() -> PreActBottleneck:
            return PreActBottleneck(spatial_dims, channels, channels, norm)

        self.pre = res()
        self.trunk = nn.Sequential(res(), res())
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, s) for s in strides)
        self.down = nn.ModuleList(res() for _ in range(depth))
        self.skips = nn.ModuleList(res() for _ in range(depth - 1))
        self.up = nn.ModuleList(res() for _ in range(depth))
        self.mask_out = nn.Sequential(make_conv(spatial_dims, channels, channels, 1),
                                      make_conv(spatial_dims, channels, channels, 1), nn.Sigmoid())
        self.post = res()
        self.last_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend ``x``: ``post((1 + mask) * trunk)``; the mask of the last call is kept in :attr:`last_mask`."""
        x = self.pre(x)
        trunk = self.trunk(x)
        sizes = [x.shape[2:]]
        mask = self.down[0](self.pools[0](x))
        skips = []
        for i, skip in enumerate(self.skips):
            skips.append(skip(mask))
            sizes.append(mask.shape[2:])
            mask = self.down[i + 1](self.pools[i + 1](mask))
        for up in self.up[:-1]:
            mask = F.interpolate(up(mask), size=tuple(sizes.pop()), mode="nearest") + skips.pop()
        mask = F.interpolate(self.up[-1](mask), size=tuple(sizes.pop()), mode="nearest")
        mask = self.mask_out(mask)
        self.last_mask = mask.detach()
        return self.post((1 + mask) * trunk)


@register_model(
    "ra_unet",
    family="attention",
    spatial_dims=(2, 3),
    paper_title="RA-UNet: A Hybrid Deep Attention-Aware Network to Extract Liver and Tumor in CT Scans",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        kwargs={"features_per_stage": (32, 32, 64, 128, 256, 512)},
        params=4_420_849,
        source="authors' code github.com/RanSuLab/RAUNet-tumor-segmentation, build_model.py "
               "build_res_atten_unet_3d (filter_num=8, RA-UNet-II), trainable parameters; the paper "
               "(arXiv:1811.01328) states no parameter count",
    ),
    divisor=32,
    test_kwargs={2: {"features_per_stage": (4, 4, 8, 8, 16)}, 3: {"features_per_stage": (4, 4, 8, 8)}},
)
class RAUNet(SegmentationModel):
    """RA-UNet of Jin et al. (2018): residual U-Net with residual attention modules on the skips, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides (32 by default). :attr:`attention_masks` holds the soft masks of the last forward pass,
    coarsest level first.

    Args:
        spatial_dims: 3 (RA-UNet-II, paper configuration) or 2 (RA-UNet-I).
        in_channels: Input channels.
        out_channels: Output channels (the paper: 1, sigmoid).
        features_per_stage: Channels per level, highest resolution (the stem) first; ``None``: the paper's 32, 32,
            64, 128, 256, 512 in 3D and 16, 16, 32, 64, 128, 256 in 2D.
        strides: Pooling stride into each level (``strides[0]`` = 1), one int or one per axis; default 2.
        norm: Normalisation (paper code: Keras batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: NormSpec = KERAS_BN,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        default = (32, 32, 64, 128, 256, 512) if spatial_dims == 3 else (16, 16, 32, 64, 128, 256)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, default, 3)
        f, n = plan.features, len(plan)
        self.plan = plan
        self.stem = ConvNormAct(spatial_dims, in_channels, f[0], 3, norm=norm, act=RELU)
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, s) for s in plan.strides[1:])
        self.encoder = nn.ModuleList(PreActBottleneck(spatial_dims, f[lv - 1], f[lv], norm) for lv in range(1, n))
        self.bottleneck = PreActBottleneck(spatial_dims, f[n - 1], f[n - 1], norm)
        # attention[k] and decoder[k] belong to level n-2-k (coarsest first), levels n-2 .. 1
        self.attention = nn.ModuleList(
            AttentionModule(spatial_dims, f[lv], plan.strides[lv + 1:], norm) for lv in range(n - 2, 0, -1)
        )
        self.decoder = nn.ModuleList(
            PreActBottleneck(spatial_dims, f[lv + 1] + f[lv], f[lv], norm) for lv in range(n - 2, 0, -1)
        )
        self.fuse = ConvNormAct(spatial_dims, f[1] + f[0], f[0], 3, norm=norm, act=RELU)
        self.head = make_conv(spatial_dims, f[0], out_channels, 3)
        self.input_divisor = plan.divisor
        self.attention_masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        stem = self.stem(x)
        skips = []
        h = stem
        for pool, block in zip(self.pools, self.encoder, strict=True):
            h = block(pool(h))
            skips.append(h)
        h = self.bottleneck(skips.pop())
        masks = []
        for attention, block in zip(self.attention, self.decoder, strict=True):
            skip = attention(skips.pop())
            masks.append(attention.last_mask)
            h = block(torch.cat((F.interpolate(h, size=tuple(skip.shape[2:]), mode="nearest"), skip), dim=1))
        self.attention_masks = [m for m in masks if m is not None]
        h = self.fuse(torch.cat((F.interpolate(h, size=tuple(stem.shape[2:]), mode="nearest"), stem), dim=1))
        return self.head(h)
