"""Optimised high-resolution 3D Dense-U-Net (Kolařík et al., 2019), 3D and 2D.

Paper: M. Kolařík, R. Burget, V. Uher, K. Říha, M. K. Dutta, "Optimized High Resolution 3D Dense-U-Net Network for
Brain and Spine Segmentation", Applied Sciences 9(3), 404 (2019). Official code: mrkolarik/3D-brain-segmentation
(Keras), ``3D-dense-unet.py`` (``get_unet``) and its 2D twin ``2D-dense-unet.py``.

Layout (every convolution 3x3x3, "same" padding, bias, ReLU; no normalisation):

* Five levels of 32, 64, 128, 256, 512 filters. Each level is a densely connected pair: ``c1 = conv(x)``,
  ``c2 = conv([x, c1])`` and the level's output is ``[x, c2]`` (the input concatenated with the second
  convolution, "dense interconnections" of the paper's Figure 2). Levels 1-4 are followed by 2x2x2 max pooling.
* Decoder: a 2x2x2 transposed convolution (stride 2, bias) to the level's width, concatenated with the skip, then
  the same dense pair. As in the authors' code, the deepest skip is the level-4 output ``[x, c2]`` while the three
  upper skips are the second convolutions ``c2`` only.
* A 1x1x1 convolution gives the logits (the code ends in a sigmoid for one foreground class; medseg models return
  logits, the loss applies the non-linearity).

Paper configuration: 3D, one input channel (MRI / CT), one output map, 16x400x400 volumes. Parameter figure:
44,783,873, counted from the layer definitions of the authors' ``3D-dense-unet.py`` (the paper's table could not be
read); our count at that configuration is the same. Each spatial size must be a multiple of 16 (four poolings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_conv, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DenseConvPair", "DenseUNet3D"]

RELU = ("relu", {"inplace": True})


class DenseConvPair(nn.Module):
    """Two densely connected 3x3(x3) convolutions: ``c1 = conv(x)``, ``c2 = conv([x, c1])``, output ``[x, c2]``.

    Shapes: ``(B, C_in, *spatial)`` to ``((B, C_in + width, *spatial), c2 (B, width, *spatial))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        width: Filters of both convolutions.
    """

    def __init__(self, spatial_dims: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, width, 3, act=RELU)
        self.conv2 = ConvNormAct(spatial_dims, in_channels + width, width, 3, act=RELU)
        self.out_channels = in_channels + width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the dense output ``[x, c2]`` and the second convolution ``c2``."""
        c2 = self.conv2(torch.cat([x, self.conv1(x)], dim=1))
        return torch.cat([x, c2], dim=1), c2


@register_model(
    "dense_unet3d",
    family="volumetric",
    spatial_dims=(2, 3),
    paper_title="Optimized High Resolution 3D Dense-U-Net Network for Brain and Spine Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        kwargs={},
        params=44_783_873,
        source="official code mrkolarik/3D-brain-segmentation, 3D-dense-unet.py get_unet() (Keras; 1 input channel, "
               "1 sigmoid output), counted from its layer definitions",
    ),
    divisor=16,
    test_kwargs={"features": (4, 4, 8, 8, 8)},
)
class DenseUNet3D(SegmentationModel):
    """Dense-U-Net of Kolařík et al. (Applied Sciences 2019): U-Net levels of densely connected convolution pairs.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2 ** (len(features) - 1)`` (16 by default).

    Args:
        spatial_dims: 3 (paper) or 2 (the authors' ``2D-dense-unet.py``).
        in_channels: Input channels (paper: 1).
        out_channels: Output channels (paper: 1).
        features: Filters of each level, highest resolution first (paper: 32, 64, 128, 256, 512).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (32, 64, 128, 256, 512),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ModelError(f"{self.model_name}: features needs at least two positive widths, got {features}")
        self.encoder = nn.ModuleList()
        channels = in_channels
        block_out: list[int] = []
        for width in features:
            block = DenseConvPair(spatial_dims, channels, width)
            self.encoder.append(block)
            block_out.append(block.out_channels)
            channels = block.out_channels
        self.pool = make_pool("max", spatial_dims, 2)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        n = len(features)
        for level in range(n - 2, -1, -1):  # from the level below the bottleneck upwards
            width = features[level]
            skip = block_out[level] if level == n - 2 else width  # deepest skip: [x, c2]; the others: c2
            self.up.append(make_transposed_conv(spatial_dims, channels, width, 2))
            block = DenseConvPair(spatial_dims, width + skip, width)
            self.decoder.append(block)
            channels = block.out_channels
        self.head = make_conv(spatial_dims, channels, out_channels, 1)
        self.input_divisor = (2 ** (n - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits of the same spatial size."""
        self.check_input(x)
        outs: list[torch.Tensor] = []
        convs: list[torch.Tensor] = []
        n = len(self.encoder)
        for i, block in enumerate(self.encoder):
            x, c2 = block(x if i == 0 else self.pool(x))
            outs.append(x)
            convs.append(c2)
        for j, (up, block) in enumerate(zip(self.up, self.decoder, strict=True)):
            level = n - 2 - j
            skip = outs[level] if j == 0 else convs[level]
            x, _ = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)
