"""U-Net (Ronneberger et al., 2015), in 2D as in the paper and in 3D with the same layout.

Paper: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015 (arXiv:1505.04597), Section 2 and Fig. 1.

Layout (Fig. 1): a contracting path of 5 levels with 64, 128, 256, 512, 1024 channels, each two unpadded 3x3
convolutions + ReLU, 2x2 max pooling (stride 2) between levels; an expansive path where each step is a 2x2
up-convolution halving the channels, concatenation with the (centre-cropped) skip, and two 3x3 convolutions + ReLU;
a final 1x1 convolution to the classes. Dropout at the end of the contracting path (Section 3.1). No normalisation.

We write our own implementation: MONAI's ``BasicUNet`` and ``UNet`` differ (instance/batch norm, strided-conv
or residual units, other channel layouts, no valid padding).

Which configuration reproduces the paper: ``spatial_dims=2, in_channels=1, out_channels=2, padding="valid",
dropout=0.5`` maps a 572x572 tile to a 388x388 output as in Fig. 1. The default ``padding="same"`` keeps the output
the size of the input (the weights and the parameter count are the same). The paper states no parameter count,
so the registry records ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    NormSpec,
    StackedConvNormAct,
    center_crop,
    check_valid_unet_input,
    make_conv,
    make_pool,
    make_transposed_conv,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["UNet"]


@register_model(
    "unet",
    family="unet",
    spatial_dims=(2, 3),
    paper_title="U-Net: Convolutional Networks for Biomedical Image Segmentation",
    paper_year=2015,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        kwargs={"padding": "valid", "dropout": 0.5},
        params=None,
        source="MICCAI 2015, Fig. 1 and Section 2 (572x572 input tile, 388x388 output; no parameter count given)",
    ),
    divisor=16,
    test_kwargs={"features": (4, 8, 16, 32, 64)},
)
class UNet(SegmentationModel):
    """U-Net of Ronneberger et al. (MICCAI 2015), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` with ``padding="same"`` (each spatial
    size a multiple of ``2**(len(features) - 1)``, 16 by default); with ``padding="valid"`` the output is smaller
    (572 -> 388 per axis for the paper's network) and sizes must keep every pooled size even.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features: Channels per level (paper: 64, 128, 256, 512, 1024).
        padding: ``"same"`` (output size = input size) or ``"valid"`` (the paper's unpadded convolutions).
        dropout: Dropout probability on the output of the contracting path (the paper uses dropout there but
            states no rate; the paper configuration uses 0.5).
        norm: Normalisation after each convolution (paper: none; ``"batch"`` is a common modern choice).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        padding: str = "same",
        dropout: float = 0.0,
        norm: NormSpec = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if padding not in ("same", "valid"):
            raise ModelError(f"{self.model_name}: padding must be 'same' or 'valid', got {padding!r}")
        if len(features) < 2:
            raise ModelError(f"{self.model_name}: features needs at least 2 levels, got {tuple(features)}")
        self.padding = padding
        self.n_pool = len(features) - 1
        act = ("relu", {"inplace": True})
        conv_kw = {"padding": padding, "norm": norm, "act": act}
        self.down = nn.ModuleList()
        channels = in_channels
        for f in features:
            self.down.append(StackedConvNormAct(2, spatial_dims, channels, f, 3, **conv_kw))
            channels = f
        self.pool = make_pool("max", spatial_dims, 2)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.upconvs = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(len(features) - 2, -1, -1):
            self.upconvs.append(make_transposed_conv(spatial_dims, features[level + 1], features[level], 2))
            self.up.append(StackedConvNormAct(2, spatial_dims, 2 * features[level], features[level], 3, **conv_kw))
        self.head = make_conv(spatial_dims, features[0], out_channels, 1)
        self.input_divisor = (2**self.n_pool,) * spatial_dims

    def check_input(self, x: torch.Tensor) -> None:
        """Check rank and channels, then the size rule of the padding mode (see the class docstring)."""
        if self.padding == "same":
            super().check_input(x)
            return
        self.check_rank_and_channels(x)
        check_valid_unet_input(self.model_name, tuple(x.shape[2:]), self.n_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.dropout(skips.pop())
        for upconv, block in zip(self.upconvs, self.up, strict=True):
            x = upconv(x)
            skip = skips.pop()
            if skip.shape[2:] != x.shape[2:]:
                skip = center_crop(skip, x.shape[2:])
            x = block(torch.cat((skip, x), dim=1))
        return self.head(x)
