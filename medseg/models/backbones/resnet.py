"""ResNet-18/34/50/101 backbones (He et al., 2016), 2D or 3D, with DeepLab's dilated variants by ``output_stride``.

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385),
Table 1. The bottleneck puts the stride on the 3x3 convolution (torchvision's "ResNet V1.5"), so torchvision and timm
weights load unchanged. Layout: a 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2, then four
stages (``layer1``-``layer4``) of basic (18/34) or bottleneck (50/101) blocks with 64, 128, 256, 512 base channels;
projection shortcuts (1x1 convolution with the stride, BN) where the shape changes.

Levels: the stem (stride 2, 64 channels), then each stage (strides 4, 8, 16, 32; 64/128/256/512 channels times the
expansion, 1 or 4). With ``output_stride`` 16 or 8 the stride of ``layer4`` (and ``layer3``) becomes dilation 2 (and
4), as in DeepLabv3 (Chen et al., 2017, Section 3.1) and torchvision's ``replace_stride_with_dilation``.

Parameter figures (torchvision's ``num_params`` for the ImageNet models with their ``fc``): ResNet-18 11,689,512;
ResNet-34 21,797,672; ResNet-50 25,557,032; ResNet-101 44,549,160.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.models.backbones.base import RELU, Backbone, ConvNormActD, make_divisible, stage_schedule
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.blocks import NormSpec, make_act

__all__ = ["BasicBlock", "Bottleneck", "ResNetBackbone", "map_resnet_block_key"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN, a shortcut, ReLU after the sum (He et al., 2016, Figure 5 left).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, planes, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        planes: Output channels.
        stride: Stride of the first convolution and of the projection shortcut.
        dilation: Dilation of the first convolution.
        dilation2: Dilation of the second convolution (``dilation`` when ``None``).
        residual: Add the shortcut (DRN-C's last layers have none).
        norm: Normalisation.
        bias: Bias of the convolutions.
    """

    expansion = 1

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        dilation2: int | None = None,
        residual: bool = True,
        norm: NormSpec = "batch",
        bias: bool = False,
    ) -> None:
        super().__init__()
        d2 = dilation if dilation2 is None else dilation2
        self.conv1 = ConvNormActD(spatial_dims, in_channels, planes, 3, stride, dilation, bias=bias, norm=norm)
        self.conv2 = ConvNormActD(spatial_dims, planes, planes, 3, 1, d2, bias=bias, norm=norm, act=None)
        self.residual = residual
        self.downsample: nn.Module | None = None
        if residual and (stride != 1 or in_channels != planes):
            self.downsample = ConvNormActD(spatial_dims, in_channels, planes, 1, stride, norm=norm, act=None)
        self.act = make_act(RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, planes, *spatial / stride)``."""
        out = self.conv2(self.conv1(x))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.act(out)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, dilated), 1x1 convolutions with BN and a shortcut (He et al., 2016, Figure 5 right).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, 4 * planes, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        planes: Width of the bottleneck; the output has ``4 * planes`` channels.
        stride: Stride of the 3x3 convolution and of the projection shortcut.
        dilation: Dilation of the 3x3 convolution.
        dilation2: Unused (the signature of :class:`BasicBlock`).
        residual: Add the shortcut.
        norm: Normalisation.
        bias: Bias of the convolutions.
    """

    expansion = 4

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        dilation2: int | None = None,
        residual: bool = True,
        norm: NormSpec = "batch",
        bias: bool = False,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = ConvNormActD(spatial_dims, in_channels, planes, 1, bias=bias, norm=norm)
        self.conv2 = ConvNormActD(spatial_dims, planes, planes, 3, stride, dilation, bias=bias, norm=norm)
        self.conv3 = ConvNormActD(spatial_dims, planes, out, 1, bias=bias, norm=norm, act=None)
        self.residual = residual
        self.downsample: nn.Module | None = None
        if residual and (stride != 1 or in_channels != out):
            self.downsample = ConvNormActD(spatial_dims, in_channels, out, 1, stride, norm=norm, act=None)
        self.act = make_act(RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, 4 * planes, *spatial / stride)``."""
        out = self.conv3(self.conv2(self.conv1(x)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.act(out)


_BLOCK_RULES = [
    (re.compile(r"^(.*)\.conv(\d)\.weight$"), r"\1.conv\2.conv.weight"),
    (re.compile(r"^(.*)\.conv(\d)\.bias$"), r"\1.conv\2.conv.bias"),
    (re.compile(r"^(.*)\.bn(\d)\.(\w+)$"), r"\1.conv\2.norm.\3"),
    (re.compile(r"^(.*)\.downsample\.0\.(\w+)$"), r"\1.downsample.conv.\2"),
    (re.compile(r"^(.*)\.downsample\.1\.(\w+)$"), r"\1.downsample.norm.\2"),
]


def map_resnet_block_key(key: str) -> str | None:
    """Map a torchvision/timm residual-block key to ours; ``None`` when it is not a block key.

    ``...conv1.weight``, ``...bn1.running_mean``, ``...downsample.0.weight`` become ``...conv1.conv.weight``,
    ``...conv1.norm.running_mean``, ``...downsample.conv.weight``.
    """
    for pattern, repl in _BLOCK_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def _map_resnet(key: str, backbone: Backbone) -> str | None:
    if key.startswith(("fc.", "head.")):
        return None
    if key == "conv1.weight":
        return "stem.conv.weight"
    if key.startswith("bn1."):
        return "stem.norm." + key[4:]
    return map_resnet_block_key(key) or key


class ResNetBackbone(Backbone):
    """ResNet encoder (He et al., 2016) returning the stem's and the four stages' feature maps.

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])`` with strides
    ``(2, 4, 8, 16, 32)`` at ``output_stride=32``, ``(2, 4, 8, 16, 16)`` at 16 and ``(2, 4, 8, 8, 8)`` at 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        layers: Blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        block: ``"basic"`` or ``"bottleneck"``.
        output_stride: 8, 16 or 32.
        width: Multiplier of every channel count (1 = the paper's 64-128-256-512).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        layers: Sequence[int] = (3, 4, 6, 3),
        block: str = "bottleneck",
        output_stride: int = 32,
        width: float = 1.0,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        block_cls: type[BasicBlock] | type[Bottleneck] = Bottleneck if block == "bottleneck" else BasicBlock
        self.block = block_cls
        stem = make_divisible(64 * width)
        self.stem = ConvNormActD(spatial_dims, in_channels, stem, 7, 2, norm=norm)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.out_channels, self.strides = [stem], [2]
        schedule = stage_schedule((1, 2, 2, 2), output_stride, start_stride=4)
        channels = stem
        total = 4
        for i, (n, (stride, first_dilation, dilation)) in enumerate(zip(layers, schedule, strict=True)):
            planes = make_divisible((64 << i) * width)
            blocks = []
            for j in range(n):
                d = first_dilation if j == 0 else dilation
                blocks.append(block_cls(spatial_dims, channels, planes, stride if j == 0 else 1, d,
                                        dilation2=dilation, norm=norm))
                channels = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            total *= stride
            self.out_channels.append(channels)
            self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x = self.stem(x)
        features = [x]
        x = self.pool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The ``fc`` of torchvision's model: a linear layer on the pooled last feature map."""
        return nn.Linear(self.out_channels[-1], num_classes)


def _builder(layers: tuple[int, ...], block: str):
    def build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> ResNetBackbone:
        return ResNetBackbone(spatial_dims, in_channels, layers=layers, block=block, output_stride=output_stride,
                              **kwargs)  # type: ignore[arg-type]

    return build


_PAPER = "He, Zhang, Ren, Sun, 'Deep Residual Learning for Image Recognition', CVPR 2016"
for _name, _layers, _block, _params in (
    ("resnet18", (2, 2, 2, 2), "basic", 11_689_512),
    ("resnet34", (3, 4, 6, 3), "basic", 21_797_672),
    ("resnet50", (3, 4, 6, 3), "bottleneck", 25_557_032),
    ("resnet101", (3, 4, 23, 3), "bottleneck", 44_549_160),
):
    register_backbone(BackboneInfo(
        name=_name, family="resnet", builder=_builder(_layers, _block), spatial_dims=(2, 3), paper=_PAPER,
        paper_params=_params,
        source=f"torchvision torchvision/models/resnet.py, {_name.capitalize()}_Weights.IMAGENET1K_V1 meta num_params",
        key_maps={"torchvision": _map_resnet, "timm": _map_resnet}, test_kwargs={"width": 0.125},
    ))
