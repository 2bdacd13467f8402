"""Dilated Residual Networks DRN-C-26/42 and DRN-D-22/38/54 (Yu, Koltun, Funkhouser, CVPR 2017), 2D or 3D.

Paper: F. Yu, V. Koltun, T. Funkhouser, "Dilated Residual Networks", CVPR 2017 (arXiv:1705.09914), Section 4 and
Figure 6; the layer configuration follows the authors' code (``fyu/drn``, ``drn.py``). A DRN is dilated by design: its
output stride is 8. Layout (channels 16, 32, 64, 128, 256, 512, 512, 512 for the eight levels):

* DRN-C: a 7x7 convolution (stride 1) with BN-ReLU, then residual stages ``layer1`` (16) and ``layer2`` (32,
  stride 2) of basic blocks;
* DRN-D: a 7x7 convolution, then ``layer1``/``layer2`` as plain 3x3 convolutions with BN-ReLU (``layer2`` strided);
* both: ``layer3``/``layer4`` residual stages with stride 2 (64, 128), ``layer5`` (256) with dilation 2 and ``layer6``
  (512) with dilation 4 instead of strides; then the degridding layers ``layer7`` (dilation 2) and ``layer8``
  (dilation 1): basic blocks without residual connection in DRN-C, plain 3x3 convolutions with BN-ReLU in DRN-D.

DRN-C-26 and DRN-D-22 use (1, 1, 2, 2, 2, 2, 1, 1) blocks per level, DRN-C-42 and DRN-D-38 (1, 1, 3, 4, 6, 3, 1, 1)
basic blocks, DRN-D-54 the same with bottleneck blocks. Levels returned: ``layer1`` (stride 1), ``layer2`` (2),
``layer3`` (4) and the final ``layer8`` (8). The ImageNet classifier (``classifier_head``) is a 1x1 convolution from 512
channels to the classes. Published counts (authors' README table, ImageNet models): DRN-C-26 21.1M, DRN-C-42 31.2M,
DRN-D-22 16.4M, DRN-D-38 26.5M, DRN-D-54 35.8M.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.backbones.base import Backbone, ConvNormActD, conv_nd, make_divisible
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.backbones.resnet import BasicBlock, Bottleneck
from medseg.models.blocks import NormSpec

__all__ = ["DRN_CHANNELS", "DRNBackbone"]

DRN_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 512, 512)


class DRNBackbone(Backbone):
    """DRN-C or DRN-D encoder (output stride 8).

    Shapes: ``(B, in_channels, *spatial)`` to 4 maps ``(B, out_channels[i], *spatial / strides[i])``, strides
    ``(1, 2, 4, 8)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        arch: ``"C"`` or ``"D"``.
        layers: Blocks (or convolutions) of the eight levels.
        block: ``"basic"`` or ``"bottleneck"`` for levels 3-6.
        output_stride: Must be 8 (the DRN design).
        width: Multiplier of every channel count.
        norm: Normalisation.
    """

    allowed_output_strides = (8,)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        arch: str = "D",
        layers: Sequence[int] = (1, 1, 2, 2, 2, 2, 1, 1),
        block: str = "basic",
        output_stride: int = 8,
        width: float = 1.0,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        ch = [make_divisible(c * width, 4) for c in DRN_CHANNELS]
        block_cls: type[BasicBlock] | type[Bottleneck] = Bottleneck if block == "bottleneck" else BasicBlock
        self.arch = arch.upper()
        self.stem = ConvNormActD(spatial_dims, in_channels, ch[0], 7, norm=norm)
        self._channels = ch[0]

        def conv_layers(out: int, n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            mods = []
            for i in range(n):
                mods.append(ConvNormActD(spatial_dims, self._channels, out, 3, stride if i == 0 else 1, dilation,
                                         norm=norm))
                self._channels = out
            return nn.Sequential(*mods)

        def res_layers(cls: type[BasicBlock] | type[Bottleneck], planes: int, n: int, stride: int = 1,
                       dilation: int = 1, residual: bool = True) -> nn.Sequential:
            mods = []
            for i in range(n):
                mods.append(cls(spatial_dims, self._channels, planes, stride if i == 0 else 1, dilation,
                                residual=residual, norm=norm))
                self._channels = planes * cls.expansion
            return nn.Sequential(*mods)

        if self.arch == "C":
            self.layer1 = res_layers(BasicBlock, ch[0], layers[0])
            self.layer2 = res_layers(BasicBlock, ch[1], layers[1], stride=2)
        else:
            self.layer1 = conv_layers(ch[0], layers[0])
            self.layer2 = conv_layers(ch[1], layers[1], stride=2)
        c2 = self._channels
        self.layer3 = res_layers(block_cls, ch[2], layers[2], stride=2)
        c3 = self._channels
        self.layer4 = res_layers(block_cls, ch[3], layers[3], stride=2)
        self.layer5 = res_layers(block_cls, ch[4], layers[4], dilation=2)
        self.layer6 = res_layers(block_cls, ch[5], layers[5], dilation=4)
        if self.arch == "C":
            self.layer7 = res_layers(BasicBlock, ch[6], layers[6], dilation=2, residual=False)
            self.layer8 = res_layers(BasicBlock, ch[7], layers[7], dilation=1, residual=False)
        else:
            self.layer7 = conv_layers(ch[6], layers[6], dilation=2)
            self.layer8 = conv_layers(ch[7], layers[7], dilation=1)
        self.out_channels = [ch[0], c2, c3, self._channels]
        self.strides = [1, 2, 4, 8]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 4 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x = self.layer8(self.layer7(self.layer6(self.layer5(self.layer4(x3)))))
        return [x1, x2, x3, x]

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The authors' classifier: a 1x1 convolution with bias on the pooled 512 channels."""
        return conv_nd(self.spatial_dims, self.out_channels[-1], num_classes, 1, bias=True)


def _builder(arch: str, layers: tuple[int, ...], block: str):
    def build(spatial_dims: int, in_channels: int, *, output_stride: int = 8, **kwargs: object) -> DRNBackbone:
        return DRNBackbone(spatial_dims, in_channels, arch=arch, layers=layers, block=block,
                           output_stride=output_stride, **kwargs)  # type: ignore[arg-type]

    return build


_PAPER = "Yu, Koltun, Funkhouser, 'Dilated Residual Networks', CVPR 2017"
_SOURCE = "authors' code README (github.com/fyu/drn, README.md, ImageNet 'Params' column): {}"
for _name, _arch, _layers, _block, _params, _fig in (
    ("drn_c_26", "C", (1, 1, 2, 2, 2, 2, 1, 1), "basic", 21_100_000, "DRN-C-26 21.1M"),
    ("drn_c_42", "C", (1, 1, 3, 4, 6, 3, 1, 1), "basic", 31_200_000, "DRN-C-42 31.2M"),
    ("drn_d_22", "D", (1, 1, 2, 2, 2, 2, 1, 1), "basic", 16_400_000, "DRN-D-22 16.4M"),
    ("drn_d_38", "D", (1, 1, 3, 4, 6, 3, 1, 1), "basic", 26_500_000, "DRN-D-38 26.5M"),
    ("drn_d_54", "D", (1, 1, 3, 4, 6, 3, 1, 1), "bottleneck", 35_800_000, "DRN-D-54 35.8M"),
):
    register_backbone(BackboneInfo(
        name=_name, family="drn", builder=_builder(_arch, _layers, _block), spatial_dims=(2, 3), paper=_PAPER,
        paper_params=_params, source=_SOURCE.format(_fig), default_output_stride=8,
        test_kwargs={"width": 0.125},
    ))
