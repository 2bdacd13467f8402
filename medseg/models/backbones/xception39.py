"""Xception39, BiSeNet's lightweight Xception context path (Yu et al., 2018), 2D or 3D.

Paper: C. Yu, J. Wang, C. Peng, C. Gao, G. Yu, N. Sang, "BiSeNet: Bilateral Segmentation Network for Real-time
Semantic Segmentation", ECCV 2018 (arXiv:1808.00897), Section 3 names Xception39 as the lightweight model of the
context path; the paper gives no layer table. The layout is the authors' PyTorch code (github.com/ycszen/TorchSeg,
``furnace/base_model/xception.py``, ``xception39``): a 3x3 convolution with stride 2 (8 channels, BN, ReLU), 3x3 max
pooling with stride 2, then three stages of 4, 8, 4 residual blocks with bottleneck widths 16, 32, 64 and an
expansion of 4 (64, 128, 256 output channels). A block is three separable convolutions (a 3x3 depthwise convolution
without normalisation, then a 1x1 convolution, BN and ReLU; the last without ReLU) mapping ``C_in -> w -> w -> 4w``,
the first one strided in a stage's first block, whose shortcut is a strided separable 3x3 convolution to ``4w``
channels (BN, no ReLU); other blocks add the identity. ReLU follows the sum.

Levels: the stem (stride 2, 8 channels) and the three stages (strides 8, 16, 32). With ``output_stride`` 16 or 8 the
strided depthwise convolutions of the last stages are dilated instead. Weights in the TorchSeg layout (``conv1``,
``layerN.i.proj``, ``layerN.i.residual_branch``; a ``context_path.`` prefix, as in TorchSeg's BiSeNet checkpoints, is
stripped) load with layout ``"torchseg"``.

Parameter figure: none is published for an ImageNet Xception39 (TorchSeg's README: "we didn't pre-train the
Xception39 model on ImageNet in PyTorch"; the authors' code has no classifier). The authors' network counts 299,448
parameters, as does ours (``paper_params`` is ``None``; checked in the realtime model tests).
"""

from __future__ import annotations

import re

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.models.backbones.base import RELU, Backbone, ConvNormActD, conv_nd, stage_schedule
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.blocks import ActSpec, NormSpec, make_act

__all__ = ["Xception39Backbone", "Xception39Block", "XceptionSeparable"]


class XceptionSeparable(nn.Module):
    """Depthwise kxk convolution (no normalisation), then a 1x1 convolution with BN and an optional ReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        stride: Stride of the depthwise convolution.
        dilation: Dilation of the depthwise convolution.
        act: Activation after the BN, or ``None``.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        act: ActSpec = RELU,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        self.dw = conv_nd(spatial_dims, in_channels, in_channels, 3, stride, dilation, groups=in_channels)
        self.pw = ConvNormActD(spatial_dims, in_channels, out_channels, 1, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        return self.pw(self.dw(x))


class Xception39Block(nn.Module):
    """Xception39 residual block: separable convolutions ``C_in -> w -> w -> 4w`` plus a shortcut, then ReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, 4 * width, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        width: Bottleneck width w.
        stride: Stride of the first separable convolution and of the projection shortcut.
        dilation: Dilation of the first separable convolution.
        project: Use a separable projection shortcut (a stage's first block).
        norm: Normalisation.
    """

    expansion = 4

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        width: int,
        stride: int = 1,
        dilation: int = 1,
        project: bool = False,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        out = width * self.expansion
        self.proj = XceptionSeparable(spatial_dims, in_channels, out, stride, act=None, norm=norm) if project else None
        self.residual_branch = nn.Sequential(
            XceptionSeparable(spatial_dims, in_channels, width, stride, dilation, norm=norm),
            XceptionSeparable(spatial_dims, width, width, norm=norm),
            XceptionSeparable(spatial_dims, width, out, act=None, norm=norm),
        )
        self.act = make_act(RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, 4w, *spatial / stride)``."""
        shortcut = x if self.proj is None else self.proj(x)
        return self.act(shortcut + self.residual_branch(x))


class Xception39Backbone(Backbone):
    """Xception39 encoder (BiSeNet's context path): stem, max pooling, stages of 4, 8, 4 residual blocks.

    Shapes: ``(B, in_channels, *spatial)`` to 4 maps ``(B, out_channels[i], *spatial / strides[i])`` with strides
    ``(2, 8, 16, 32)`` and channels ``(8, 64, 128, 256)`` at ``output_stride=32``, width 1.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        output_stride: 8, 16 or 32.
        layers: Blocks per stage (4, 8, 4).
        widths: Bottleneck width of each stage (16, 32, 64; outputs are 4 times that).
        stem_channels: Stem width (8).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        output_stride: int = 32,
        layers: tuple[int, int, int] = (4, 8, 4),
        widths: tuple[int, int, int] = (16, 32, 64),
        stem_channels: int = 8,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        self.conv1 = ConvNormActD(spatial_dims, in_channels, stem_channels, 3, 2, norm=norm)
        self.maxpool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.out_channels, self.strides = [stem_channels], [2]
        schedule = stage_schedule((2, 2, 2), output_stride, start_stride=4)
        channels, total = stem_channels, 4
        for i, (n, w, (stride, first_dilation, dilation)) in enumerate(zip(layers, widths, schedule, strict=True)):
            blocks = [Xception39Block(spatial_dims, channels if j == 0 else 4 * w, w, stride if j == 0 else 1,
                                      first_dilation if j == 0 else dilation, project=j == 0, norm=norm)
                      for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            channels = 4 * w
            total *= stride
            self.out_channels.append(channels)
            self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 4 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x = self.conv1(x)
        out = [x]
        x = self.maxpool(x)
        for i in range(1, 4):
            x = getattr(self, f"layer{i}")(x)
            out.append(x)
        return out

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """A linear classifier on the pooled last map (the authors' code has none; for counting only)."""
        return nn.Linear(self.out_channels[-1], num_classes)


_TORCHSEG_SEP = re.compile(r"^(layer\d\.\d+\.(?:proj|residual_branch\.\d))\.(conv1|point_wise_cbr\.conv|"
                           r"point_wise_cbr\.bn)\.(\w+)$")
_SEP_PART = {"conv1": "dw", "point_wise_cbr.conv": "pw.conv", "point_wise_cbr.bn": "pw.norm"}


def _map_torchseg(key: str, backbone: Backbone) -> str | None:
    """Map TorchSeg's ``xception39`` keys (optionally under ``context_path.``) to ours; other keys are ignored."""
    if key.startswith("context_path."):
        key = key[len("context_path."):]
    if key.startswith("conv1.conv."):
        return "conv1.conv." + key[len("conv1.conv."):]
    if key.startswith("conv1.bn."):
        return "conv1.norm." + key[len("conv1.bn."):]
    if m := _TORCHSEG_SEP.match(key):
        return f"{m[1]}.{_SEP_PART[m[2]]}.{m[3]}"
    return None


def _build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> Backbone:
    return Xception39Backbone(spatial_dims, in_channels, output_stride=output_stride, **kwargs)  # type: ignore[arg-type]


register_backbone(BackboneInfo(
    name="xception39", family="xception39", builder=_build, spatial_dims=(2, 3),
    paper="Yu, Wang, Peng, Gao, Yu, Sang, 'BiSeNet: Bilateral Segmentation Network for Real-time Semantic "
          "Segmentation', ECCV 2018 (Xception39 context path)",
    paper_params=None,
    source="no published ImageNet figure (the authors' TorchSeg furnace/base_model/xception.py xception39 has no "
           "classifier and counts 299,448 parameters without one)",
    key_maps={"torchseg": _map_torchseg}, test_kwargs={"widths": (4, 8, 16), "layers": (2, 2, 2)},
))
