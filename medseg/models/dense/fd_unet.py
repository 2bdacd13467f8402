"""FD-UNet: a U-Net whose every level is a dense block (Guan, Khan, Sikdar & Chitnis, 2019), 2D and 3D.

Paper: S. Guan, A. A. Khan, S. Sikdar, P. V. Chitnis, "Fully Dense UNet for 2D Sparse Photoacoustic Tomography
Artifact Removal", IEEE Journal of Biomedical and Health Informatics 24(2), 2020 (arXiv:1808.10848, 2018), Section
II and Fig. 2; the same network was used in 3D by the authors' group (dense U-Nets for 3D PAT, arXiv:2104.03130).

Layout (Fig. 2): dense connectivity in both paths. Every dense block has four layers; layer ``i`` sees the block
input and all earlier layers' outputs concatenated and applies a 1x1 convolution to ``F`` channels (``F`` = the
block's input width) then a 3x3 convolution producing ``k`` channels (the growth rate), each followed by BN and
ReLU, so a block adds ``4k`` channels. The growth rate doubles per level so that each level doubles the width of
the one above (``k = f / 8`` for a level of width ``f``). The first level starts with a 3x3 convolution + BN + ReLU
to ``f_0 / 2`` channels. Going down, a 1x1 convolution + BN + ReLU ("transition") precedes the 2x2 max pooling; its
output is also the skip connection. Going up, a 2x2 transposed convolution (stride 2) + BN + ReLU halves the width,
the skip is concatenated, a 1x1 convolution + BN + ReLU reduces the concatenation to a quarter (``f / 2`` for the
level of width ``f``) and a dense block restores ``f``. For artifact removal the paper ends with a 1x1 convolution to
one channel plus a residual connection from the input image; for segmentation we end with a 1x1 convolution to the
classes (the residual cannot apply when the outputs are classes).

Topology: with ``features_per_stage = (f_0, ..., f_L)`` the transition before pooling maps ``f_l`` to ``f_(l+1) / 2``
(the paper's identity width when ``f_(l+1) = 2 f_l``) so that planned widths that stop doubling (nnU-Net caps them)
still give growth rates ``f / 8``; ``strides`` sets each pooling (per axis), as nnU-Net's planner writes them.

We write our own implementation (:class:`medseg.models.blocks.DenseBlock` provides the dense connectivity). Paper
configuration: 2D, one input image, five levels of 64, 128, 256, 512, 1024 channels (growth rates 8 to 128), as we
read Fig. 2; the paper states no parameter count and the authors released no code, so the registry records
``None`` (we count 9,836,577 parameters with one output channel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    ConvNormAct,
    DenseBlock,
    NormSpec,
    make_conv,
    make_norm,
    make_pool,
)
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["FDUNet", "fd_dense_block"]

RELU = ("relu", {"inplace": True})


def fd_dense_block(spatial_dims: int, in_channels: int, growth_rate: int, norm: NormSpec = "batch") -> DenseBlock:
    """FD-UNet's four-layer dense block: per layer a 1x1 conv to ``in_channels``, then a 3x3 conv to ``growth_rate``.

    Each convolution is followed by the norm and ReLU. Shapes: ``(B, C, *spatial)`` to ``(B, C + 4 * growth_rate,
    *spatial)``.
    """

    def layer(cin: int, k: int) -> nn.Module:
        return nn.Sequential(ConvNormAct(spatial_dims, cin, in_channels, 1, norm=norm, act=RELU),
                             ConvNormAct(spatial_dims, in_channels, k, 3, norm=norm, act=RELU))

    return DenseBlock(spatial_dims, in_channels, growth_rate, 4, make_layer=layer)


@register_model(
    "fd_unet",
    family="dense",
    spatial_dims=(2, 3),
    paper_title="Fully Dense UNet for 2D Sparse Photoacoustic Tomography Artifact Removal",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        kwargs={"features_per_stage": (64, 128, 256, 512, 1024)},
        params=None,
        source="IEEE JBHI 2019 (arXiv:1808.10848), Section II and Fig. 2 (widths as we read the figure); no "
               "parameter figure in the paper and no official code; built from the paper's text",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (8, 16, 32, 64)}, 3: {"features_per_stage": (8, 16, 32)}},
)
class FDUNet(SegmentationModel):
    """Fully Dense U-Net of Guan et al. (JBHI 2019): a dense block at every level of both paths, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides per axis (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Classes.
        features_per_stage: Width of each level, multiples of 8 (paper: 64, 128, 256, 512, 1024).
        strides: Pooling into each level (first entry 1); default 2 per axis.
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (64, 128, 256, 512, 1024),
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, multiple_of=8)
        f, pools, divisor = plan.features, plan.pools, plan.divisor
        n = len(f)
        kw = {"norm": norm, "act": RELU}
        self.features = f
        self.stem = ConvNormAct(spatial_dims, in_channels, f[0] // 2, 3, **kw)
        self.encoder = nn.ModuleList(fd_dense_block(spatial_dims, f[i] // 2, f[i] // 8, norm) for i in range(n))
        self.transitions = nn.ModuleList(ConvNormAct(spatial_dims, f[i], f[i + 1] // 2, 1, **kw)
                                         for i in range(n - 1))
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, p) for p in pools)
        self.ups = nn.ModuleList()
        self.reduce = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(n - 2, -1, -1):
            p = pools[level]
            self.ups.append(nn.Sequential(
                Conv[Conv.CONVTRANS, spatial_dims](f[level + 1], f[level + 1] // 2, kernel_size=p, stride=p),
                make_norm(norm, spatial_dims, f[level + 1] // 2) or nn.Identity(), nn.ReLU(inplace=True)))
            self.reduce.append(ConvNormAct(spatial_dims, f[level + 1], f[level] // 2, 1, **kw))
            self.decoder.append(fd_dense_block(spatial_dims, f[level] // 2, f[level] // 8, norm))
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        x = self.encoder[0](self.stem(x))
        skips = []
        for transition, pool, block in zip(self.transitions, self.pools, self.encoder[1:], strict=True):
            x = transition(x)
            skips.append(x)
            x = block(pool(x))
        for up, reduce, block in zip(self.ups, self.reduce, self.decoder, strict=True):
            x = block(reduce(torch.cat((skips.pop(), up(x)), dim=1)))
        return self.head(x)
