"""MFP-Unet: a U-Net whose decoder levels are merged as a multi-feature pyramid before the segmentation layer.

Paper: S. Moradi, M. Ghelich Oghli, A. Alizadehasl, I. Shiri, N. Oveisi, M. Oveisi, M. Maleki, J. Dhooge, "MFP-Unet:
A novel deep learning based approach for left ventricle segmentation in echocardiography", Physica Medica 67,
58-69, 2019 (arXiv:1906.10486), Section 2 and Fig. 2.

The paper's idea (abstract and highlights): "U-net architecture is modified and combined with feature pyramid
network. Feature maps in all levels of the decoder path of U-net are concatenated, their depths are equalized, and
up-sampled to a fixed dimension. This stack of feature maps would be the input of the semantic segmentation layer."

Layout: a U-Net encoder of two conv + batch norm + ReLU per stage with 2x max pooling (the encoder convolutions are
dilated, rate 3, and the bridge is not: the dilated U-Net the paper builds on and compares with), a U-Net decoder
(nearest 2x upsampling, concatenation with the skip, two conv-BN-ReLU), then the pyramid: the bridge and every
decoder level pass through a 3x3 conv + BN + ReLU to ``pyramid_channels`` ("depths equalized"), are upsampled to
the input size and concatenated; a 1x1 convolution gives the classes.

No official code was published and the paper text beyond the abstract could not be read here; the widths (32-512),
the dilation rate 3, the 32-channel 3x3 equalisation and nearest upsampling follow the public Keras reproduction
in github.com/FreedomXL/Pneumothorax-Segmentation-Deep-Learning (``Models/MFP_UNet.py``), whose structure matches
the abstract. The registry records no parameter figure (``None``); at the paper's echocardiography setting (2D,
1 channel, 1 output) we count 8,138,273 parameters, the reproduction's count for the same layers (weights, biases
and batch-norm scale/shift).

Planned topology: ``features_per_stage`` and ``strides`` (nnU-Net plans) set the stages; every pyramid level is
upsampled by its stage's total stride. The design is dimension-agnostic; 3D uses the same layers in 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, StackedConvNormAct, make_conv, make_pool
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["MFPUNet"]

RELU = ("relu", {"inplace": True})


def _double_conv(spatial_dims: int, cin: int, cout: int, dilation: int, norm: NormSpec) -> nn.Sequential:
    return nn.Sequential(
        ConvNormActD(spatial_dims, cin, cout, 3, dilation=dilation, bias=True, norm=norm, act=RELU),
        ConvNormActD(spatial_dims, cout, cout, 3, dilation=dilation, bias=True, norm=norm, act=RELU),
    )


@register_model(
    "mfp_unet",
    family="unet_variants",
    spatial_dims=(2, 3),
    paper_title="MFP-Unet: A novel deep learning based approach for left ventricle segmentation in echocardiography",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        kwargs={},
        params=None,
        source="Physica Medica 67 (2019), abstract/highlights and Fig. 2 (arXiv:1906.10486); no official code and no "
               "parameter figure read; widths and dilation as in the public Keras reproduction "
               "FreedomXL/Pneumothorax-Segmentation-Deep-Learning Models/MFP_UNet.py",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 16, 16), "pyramid_channels": 4},
                 3: {"features_per_stage": (4, 8, 8), "pyramid_channels": 4}},
)
class MFPUNet(SegmentationModel):
    """MFP-Unet (Moradi et al., Physica Medica 2019): U-Net with a multi-feature pyramid over its decoder levels.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    total stride (16 by default, :attr:`input_divisor`).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features_per_stage: Channels per stage, the last the bridge (default 32, 64, 128, 256, 512).
        strides: Downsampling into each stage (plans format); default 2 per axis after the first stage.
        pyramid_channels: Channels every pyramid level is equalised to (default 32).
        encoder_dilation: Dilation of the encoder convolutions (default 3; the bridge is not dilated; 1 gives a
            plain U-Net encoder).
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
        pyramid_channels: int = 32,
        encoder_dilation: int = 3,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        topo = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, (32, 64, 128, 256, 512))
        f, n = topo.features, topo.n_stages
        self.topology = topo
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, s) for s in topo.strides[1:])
        self.encoder = nn.ModuleList(
            _double_conv(spatial_dims, in_channels if i == 0 else f[i - 1], f[i], encoder_dilation if i < n - 1 else 1,
                         norm)
            for i in range(n)
        )
        self.decoder = nn.ModuleList(
            StackedConvNormAct(2, spatial_dims, f[i + 1] + f[i], f[i], 3, norm=norm, act=RELU)
            for i in range(n - 2, -1, -1)
        )
        # pyramid[k] equalises level n-1-k (the bridge first, the full-resolution decoder level last)
        self.pyramid = nn.ModuleList(
            ConvNormActD(spatial_dims, f[i], pyramid_channels, 3, bias=True, norm=norm, act=RELU)
            for i in range(n - 1, -1, -1)
        )
        self.head = make_conv(spatial_dims, n * pyramid_channels, out_channels, 1)
        self.input_divisor = topo.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pools[i - 1](h))
            skips.append(h)
        h = skips.pop()
        levels = [h]
        for block in self.decoder:
            skip = skips.pop()
            h = block(torch.cat((nn.functional.interpolate(h, size=skip.shape[2:], mode="nearest"), skip), dim=1))
            levels.append(h)
        pyramid = [nn.functional.interpolate(conv(level), size=size, mode="nearest") if level.shape[2:] != size
                   else conv(level) for conv, level in zip(self.pyramid, levels, strict=True)]
        return self.head(torch.cat(pyramid[::-1], dim=1))  # finest level first
