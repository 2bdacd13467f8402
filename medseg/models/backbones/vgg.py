"""VGG-16 backbone (Simonyan & Zisserman, 2015), with or without batch norm, 2D or 3D.

Paper: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
(arXiv:1409.1556), Table 1 configuration D: five blocks of 3x3 convolutions (64, 64 | 128, 128 | 256 x 3 | 512 x 3 |
512 x 3) with ReLU, each followed by 2x2 max pooling. The BN variant (torchvision's ``vgg16_bn``) puts a batch norm
after every convolution.

Levels: the output of each block after its pooling (strides 2, 4, 8, 16, 32; channels 64, 128, 256, 512, 512): the
``pool3``/``pool4``/``pool5`` maps FCN uses. With ``output_stride`` 16 or 8 the last one or two poolings become 3x3
poolings with stride 1 and the convolutions after them are dilated by 2 (and 4), as in DeepLab v1/v2 (Chen et al.,
2015/2018, Section 3.1 of DeepLab v2). The classifier (``classifier_head``) is torchvision's: three fully connected
layers 25088-4096-4096-1000 (138,357,544 parameters in all; 138,365,992 with BN).
"""

from __future__ import annotations

import re

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.models.backbones.base import Backbone, ConvNormActD, make_divisible
from medseg.models.backbones.registry import BackboneInfo, register_backbone

__all__ = ["VGG16_CONFIG", "VGGBackbone"]

VGG16_CONFIG: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGGBackbone(Backbone):
    """VGG encoder returning the pooled output of each of its five blocks.

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])``, strides
    ``(2, 4, 8, 16, 32)`` at ``output_stride=32``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        config: Channels of the convolutions of each block (:data:`VGG16_CONFIG`).
        batch_norm: Batch norm after each convolution (``vgg16_bn``).
        output_stride: 8, 16 or 32.
        width: Multiplier of every channel count.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        config: tuple[tuple[int, ...], ...] = VGG16_CONFIG,
        batch_norm: bool = False,
        output_stride: int = 32,
        width: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        self.batch_norm = batch_norm
        self.blocks = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels, dilation, total = in_channels, 1, 1
        for block in config:
            convs = []
            for c in block:
                out = make_divisible(c * width)
                convs.append(ConvNormActD(spatial_dims, channels, out, 3, 1, dilation, bias=True,
                                          norm="batch" if batch_norm else None))
                channels = out
            self.blocks.append(nn.Sequential(*convs))
            if total * 2 > output_stride:
                self.pools.append(Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=1, padding=1))
                dilation *= 2
            else:
                self.pools.append(Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2))
                total *= 2
            self.out_channels.append(channels)
            self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 pooled block outputs of ``x`` (``(B, in_channels, *spatial)``)."""
        self.check_input(x)
        features = []
        for block, pool in zip(self.blocks, self.pools, strict=True):
            x = pool(block(x))
            features.append(x)
        return features

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The classifier of torchvision's model: 7x7 pooling, FC 4096, ReLU, dropout, FC 4096, ReLU, dropout, FC."""
        flat = self.out_channels[-1] * 7 ** self.spatial_dims
        return nn.Sequential(nn.Linear(flat, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True),
                             nn.Dropout(), nn.Linear(4096, num_classes))


_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(\w+)$")


def _torchvision_table(backbone: VGGBackbone) -> dict[int, tuple[str, str]]:
    """Torchvision ``features`` index -> (our module prefix, "conv" or "norm")."""
    table: dict[int, tuple[str, str]] = {}
    index = 0
    for b, block in enumerate(backbone.blocks):
        for j in range(len(block)):
            table[index] = (f"blocks.{b}.{j}", "conv")
            if backbone.batch_norm:
                table[index + 1] = (f"blocks.{b}.{j}", "norm")
            index += 3 if backbone.batch_norm else 2  # conv, (bn,) relu
        index += 1  # max pool
    return table


def _map_torchvision(key: str, backbone: Backbone) -> str | None:
    if key.startswith(("classifier.", "pre_logits.", "head.")):  # the classifier (torchvision; timm)
        return None
    m = _FEATURE_KEY.match(key)
    if m is None:
        return key
    entry = _torchvision_table(backbone).get(int(m.group(1)))  # type: ignore[arg-type]
    return key if entry is None else f"{entry[0]}.{entry[1]}.{m.group(2)}"


def _builder(batch_norm: bool):
    def build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> VGGBackbone:
        return VGGBackbone(spatial_dims, in_channels, batch_norm=batch_norm, output_stride=output_stride,
                           **kwargs)  # type: ignore[arg-type]

    return build


_PAPER = "Simonyan, Zisserman, 'Very Deep Convolutional Networks for Large-Scale Image Recognition', ICLR 2015"
register_backbone(BackboneInfo(
    name="vgg16", family="vgg", builder=_builder(False), spatial_dims=(2, 3), paper=_PAPER, paper_params=138_357_544,
    source="torchvision torchvision/models/vgg.py, VGG16_Weights.IMAGENET1K_V1 meta num_params (paper Table 2: 138M)",
    key_maps={"torchvision": _map_torchvision, "timm": _map_torchvision}, test_kwargs={"width": 0.125},
))
register_backbone(BackboneInfo(
    name="vgg16_bn", family="vgg", builder=_builder(True), spatial_dims=(2, 3), paper=_PAPER,
    paper_params=138_365_992,
    source="torchvision torchvision/models/vgg.py, VGG16_BN_Weights.IMAGENET1K_V1 meta num_params",
    key_maps={"torchvision": _map_torchvision, "timm": _map_torchvision}, test_kwargs={"width": 0.125},
))

#: VGG-11 (Simonyan & Zisserman, Table 1 configuration A): 64 | 128 | 256 x 2 | 512 x 2 | 512 x 2.
VGG11_CONFIG: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))


def _build_vgg11_bn(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> VGGBackbone:
    return VGGBackbone(spatial_dims, in_channels, config=VGG11_CONFIG, batch_norm=True, output_stride=output_stride,
                       **kwargs)  # type: ignore[arg-type]


register_backbone(BackboneInfo(
    name="vgg11_bn", family="vgg", builder=_build_vgg11_bn, spatial_dims=(2, 3), paper=_PAPER,
    paper_params=132_868_840,
    source="torchvision torchvision/models/vgg.py, VGG11_BN_Weights.IMAGENET1K_V1 meta num_params",
    key_maps={"torchvision": _map_torchvision, "timm": _map_torchvision}, test_kwargs={"width": 0.125},
))
