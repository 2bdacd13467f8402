"""OSNet backbone (Zhou et al., ICCV 2019): omni-scale residual blocks with a unified aggregation gate, 2D or 3D.

Paper: K. Zhou, Y. Yang, A. Cavallaro, T. Xiang, "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019
(arXiv:1905.00953), Section 3 and Table 1; official code github.com/KaiyangZhou/deep-person-reid
(``torchreid/models/osnet.py``, ``osnet_x1_0``), whose weights load into this module from a local file.

Layout (Table 1, width x1.0): ``conv1`` 7x7 convolution with stride 2 (64 channels), 3x3 max pooling with stride 2;
``conv2`` two OS blocks (256 channels) and a transition (1x1 convolution, 2x2 average pooling); ``conv3`` two OS
blocks (384) and a transition; ``conv4`` two OS blocks (512); ``conv5`` a 1x1 convolution (512). An OS block (Fig. 4)
reduces to ``C/4`` channels by a 1x1 convolution, runs four streams of 1, 2, 3 and 4 "Lite 3x3" layers (1x1
convolution, depthwise 3x3 convolution, BN, ReLU: receptive fields 3, 5, 7, 9), weights every stream channel-wise with
one shared aggregation gate (global average pooling, 1x1 ``C/64``, ReLU, 1x1 ``C/4``, sigmoid), sums the streams,
expands back by a 1x1 convolution with BN and adds the (projected) input, followed by ReLU.

Levels: ``conv1`` (stride 2, 64), the blocks of ``conv2`` (stride 4, 256) and ``conv3`` (stride 8, 384) before their
transitions, and ``conv5`` (stride 16, 512). The native output stride is 16; ``output_stride=8`` drops the pooling of
the ``conv3`` transition and dilates the depthwise convolutions of ``conv4`` by 2.

Parameter figure: the official ``osnet_x1_0(num_classes=1000)`` (the ImageNet model: backbone 1,905,828, the 512-d
``fc`` with BN 263,680, the 1000-way classifier 513,000) has 2,682,508 parameters; we count the same. The paper's
"2.2M" (Table 1 and the abstract) is the re-ID model without the identity classifier: 1,905,828 + 263,680 = 2,169,508.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.models.backbones.base import RELU, Backbone, ConvNormActD, make_divisible
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.blocks import make_act, make_norm

__all__ = ["ChannelGate", "LiteConv", "OSBlock", "OSNetBackbone"]


class LiteConv(nn.Module):
    """Lite 3x3 layer: 1x1 convolution, depthwise 3x3 convolution, BN, ReLU (submodules ``conv1``, ``conv2``).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=False)
        self.conv2 = Conv[Conv.CONV, spatial_dims](out_channels, out_channels, kernel_size=3, padding=dilation,
                                                   dilation=dilation, groups=out_channels, bias=False)
        self.norm = make_norm("batch", spatial_dims, out_channels)
        self.act = make_act(RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the pointwise then the depthwise convolution, BN and ReLU."""
        return self.act(self.norm(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """OSNet's unified aggregation gate: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` (Eq. 3 of the paper).

    Shapes: ``(B, C, *spatial)`` to the same.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc1 = Conv[Conv.CONV, spatial_dims](channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = Conv[Conv.CONV, spatial_dims](hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale ``x`` by its channel-wise gate."""
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))


class OSBlock(nn.Module):
    """Omni-scale residual block (Fig. 4): four streams of 1-4 Lite 3x3 layers fused by a shared gate.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        dilation: Dilation of the depthwise convolutions.
        reduction: Bottleneck reduction (4).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 1,
                 reduction: int = 4) -> None:
        super().__init__()
        mid = out_channels // reduction
        self.conv1 = ConvNormActD(spatial_dims, in_channels, mid, 1)
        self.conv2a = LiteConv(spatial_dims, mid, mid, dilation)
        self.conv2b = nn.Sequential(*[LiteConv(spatial_dims, mid, mid, dilation) for _ in range(2)])
        self.conv2c = nn.Sequential(*[LiteConv(spatial_dims, mid, mid, dilation) for _ in range(3)])
        self.conv2d = nn.Sequential(*[LiteConv(spatial_dims, mid, mid, dilation) for _ in range(4)])
        self.gate = ChannelGate(spatial_dims, mid)
        self.conv3 = ConvNormActD(spatial_dims, mid, out_channels, 1, act=None)
        self.downsample: nn.Module | None = None
        if in_channels != out_channels:
            self.downsample = ConvNormActD(spatial_dims, in_channels, out_channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        x1 = self.conv1(x)
        streams = (self.conv2a(x1), self.conv2b(x1), self.conv2c(x1), self.conv2d(x1))
        out = self.conv3(sum(self.gate(s) for s in streams))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class OSNetBackbone(Backbone):
    """OSNet encoder (Zhou et al., ICCV 2019) returning four maps at strides 2, 4, 8 and 16.

    Shapes: ``(B, in_channels, *spatial)`` to 4 maps ``(B, out_channels[i], *spatial / strides[i])``, strides
    ``(2, 4, 8, 16)`` (``(2, 4, 8, 8)`` at ``output_stride=8``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        channels: Channels of ``conv1`` and of the three OS stages (x1.0: 64, 256, 384, 512).
        blocks: OS blocks per stage (2, 2, 2).
        output_stride: 16 (native) or 8.
        width: Multiplier of every channel count.
    """

    allowed_output_strides = (8, 16)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        channels: Sequence[int] = (64, 256, 384, 512),
        blocks: Sequence[int] = (2, 2, 2),
        output_stride: int = 16,
        width: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        ch = [make_divisible(c * width) for c in channels]
        self.conv1 = ConvNormActD(spatial_dims, in_channels, ch[0], 7, 2)
        self.maxpool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.out_channels, self.strides = [ch[0]], [2]
        total, c = 4, ch[0]
        for i in range(3):
            dilation = 2 if (i == 2 and output_stride == 8) else 1
            layers: list[nn.Module] = []
            for j in range(blocks[i]):
                layers.append(OSBlock(spatial_dims, c if j == 0 else ch[i + 1], ch[i + 1], dilation))
            c = ch[i + 1]
            if i < 2:  # transition: 1x1 convolution and 2x2 average pooling (conv3's pooling dropped at stride 8)
                pool = make_avg_pool(spatial_dims) if not (i == 1 and output_stride == 8) else nn.Identity()
                layers.append(nn.Sequential(ConvNormActD(spatial_dims, c, c, 1), pool))
            self.add_module(f"conv{i + 2}", nn.Sequential(*layers))
            if i < 2:
                self.out_channels.append(c)
                self.strides.append(total)
                total *= 2 if not (i == 1 and output_stride == 8) else 1
        self.conv5 = ConvNormActD(spatial_dims, c, c, 1)
        self.out_channels.append(c)
        self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 4 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x = self.conv1(x)
        features = [x]
        x = self.maxpool(x)
        for stage in (self.conv2, self.conv3):
            for block in stage[:-1]:
                x = block(x)
            features.append(x)
            x = stage[-1](x)
        x = self.conv5(self.conv4(x))
        features.append(x)
        return features

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The official head: ``fc`` (linear 512, BN, ReLU) and the linear ``classifier``."""
        c = self.out_channels[-1]
        return nn.Sequential(nn.Linear(c, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                             nn.Linear(512, num_classes))


def make_avg_pool(spatial_dims: int) -> nn.Module:
    """2x average pooling (the OSNet transition's)."""
    return Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2)


def _map_official(key: str, backbone: Backbone) -> str | None:
    """Map a key of torchreid's ``osnet_x1_0`` weights to ours (``None`` for ``fc``/``classifier``)."""
    if key.startswith(("fc.", "classifier.")):
        return None
    return key.replace(".bn.", ".norm.")


def _build(spatial_dims: int, in_channels: int, *, output_stride: int = 16, **kwargs: object) -> OSNetBackbone:
    return OSNetBackbone(spatial_dims, in_channels, output_stride=output_stride, **kwargs)  # type: ignore[arg-type]


register_backbone(BackboneInfo(
    name="osnet", family="osnet", builder=_build, spatial_dims=(2, 3),
    paper="Zhou, Yang, Cavallaro, Xiang, 'Omni-Scale Feature Learning for Person Re-Identification', ICCV 2019 "
          "(arXiv:1905.00953)",
    paper_params=2_682_508,
    source="official code github.com/KaiyangZhou/deep-person-reid torchreid/models/osnet.py, osnet_x1_0("
           "num_classes=1000) counted with torch (the paper's 2.2M, Table 1, excludes the identity classifier)",
    default_output_stride=16, key_maps={"torchvision": _map_official}, test_kwargs={"width": 0.125},
))
