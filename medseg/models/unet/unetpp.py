"""UNet++: a U-Net with nested, dense skip pathways and deep supervision (Zhou et al., 2018).

Paper: Z. Zhou, M. M. Rahman Siddiquee, N. Tajbakhsh, J. Liang, "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation", DLMIA/ML-CDS (MICCAI workshops) 2018, LNCS 11045 (arXiv:1807.10165), Section 2, Fig. 1 and
Table 1.

Layout: nodes ``X[i][j]`` on level ``i = 0..4`` (channels 32, 64, 128, 256, 512) and column ``j``. The backbone
``X[i][0]`` is the U-Net encoder (2x2 max pooling between levels). Every other node is
``X[i][j] = H(concat(X[i][0], ..., X[i][j-1], U(X[i+1][j-1])))``, where ``H`` is two 3x3 convolutions with ReLU
and ``U`` a 2x2 transposed convolution with stride 2 to the level's channels (the authors' Keras code). With deep
supervision a 1x1 convolution head sits on each of ``X[0][1..4]``, all at full resolution; without it, only on
``X[0][4]``. The paper uses no normalisation.

We write our own implementation: MONAI's ``BasicUNetPlusPlus`` uses other channels (32, 32, 64, 128, 256, 32),
instance norm, and deconvolution/upsampling blocks that differ from the paper.

Paper configuration (Table 1): 2D, channels 32..512, one input channel and one output channel (binary sigmoid
output). Table 1 gives 9.04M parameters for UNet++ with and without deep supervision (and 7.76M for the U-Net with
the same widths, 9.13M for the wide U-Net with 35..560). Our count for that configuration is 9,041,700 with
deep supervision (four heads) and 9,041,601 without; our U-Net (``unet``) with 32..512 counts 7,759,521. We could not
read Table 1 itself; the first author states the same figures in MrGiovanni/UNetPlusPlus issue #1 ("U-Net (7.76M)
vs UNet++ (9.04M)", and 9.13M for the wide U-Net).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, StackedConvNormAct, make_conv, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["UNetPlusPlus"]


@register_model(
    "unetpp",
    family="unet",
    spatial_dims=(2, 3),
    paper_title="UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        kwargs={"features": (32, 64, 128, 256, 512), "deep_supervision": True},
        params=9_040_000,
        source="DLMIA 2018, Table 1 (UNet++ w/ deep supervision: 9.04M; w/o: 9.04M), as the first author states in "
               "MrGiovanni/UNetPlusPlus#1",
    ),
    divisor=16,
    deep_supervision=True,
    test_kwargs={"features": (4, 8, 8, 16, 16)},
)
class UNetPlusPlus(SegmentationModel):
    """UNet++ of Zhou et al. (DLMIA 2018), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(len(features) - 1)`` (16 by default). With ``deep_supervision=True`` in training mode, forward returns a
    list of ``len(features) - 1`` full-resolution outputs ``(B, out_channels, *spatial)``, from ``X[0][4]`` (the
    deepest nested path, also the eval output) to ``X[0][1]``; in eval mode only the ``X[0][4]`` output.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels.
        features: Channels per level (paper: 32, 64, 128, 256, 512).
        deep_supervision: Heads on every ``X[0][j]`` (returned in training mode).
        norm: Normalisation after each convolution (paper: none).
        dropout: Dropout after each convolution (the paper does not mention dropout; 0 by default).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: bool = False,
        norm: NormSpec = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        depth = len(features)
        if depth < 2:
            raise ModelError(f"{self.model_name}: features needs at least 2 levels, got {tuple(features)}")
        self.depth = depth
        self.deep_supervision = deep_supervision
        kw = {"norm": norm, "act": ("relu", {"inplace": True}), "dropout": dropout}
        self.pool = make_pool("max", spatial_dims, 2)
        # nodes[i][j] is H of X[i][j]; ups[i][j] maps X[i+1][j-1] to level i (for j >= 1).
        self.nodes = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(depth):
            row = nn.ModuleList()
            ups = nn.ModuleList()
            for j in range(depth - i):
                if j == 0:
                    cin = in_channels if i == 0 else features[i - 1]
                else:
                    cin = features[i] * (j + 1)
                    ups.append(make_transposed_conv(spatial_dims, features[i + 1], features[i], 2))
                row.append(StackedConvNormAct(2, spatial_dims, cin, features[i], 3, **kw))
            self.nodes.append(row)
            self.ups.append(ups)
        n_heads = depth - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(make_conv(spatial_dims, features[0], out_channels, 1) for _ in range(n_heads))
        self.input_divisor = (2 ** (depth - 1),) * spatial_dims
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] * (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; see the class docstring for the outputs."""
        self.check_input(x)
        grid: list[list[torch.Tensor]] = [[] for _ in range(self.depth)]
        for i in range(self.depth):
            grid[i].append(self.nodes[i][0](x if i == 0 else self.pool(grid[i - 1][0])))
        # Column by column: X[i][j] needs X[i+1][j-1], which the previous column computed.
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                up = self.ups[i][j - 1](grid[i + 1][j - 1])
                grid[i].append(self.nodes[i][j](torch.cat([*grid[i][:j], up], dim=1)))
        if self.deep_supervision and self.training:
            # heads[k] sits on X[0][k+1]; return the deepest path first.
            return [self.heads[j - 1](grid[0][j]) for j in range(self.depth - 1, 0, -1)]
        return self.heads[-1](grid[0][self.depth - 1])
