"""Aligned Xception-65 backbone as modified in DeepLabv3+ (Chen et al., 2018), 2D or 3D.

Paper: L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam, "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation", ECCV 2018 (arXiv:1802.02611), Section 3.2 and Figure 4, modifying F. Chollet,
"Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017. Changes from Xception: a deeper middle flow
(16 repeated modules), every max pooling replaced by a depthwise separable convolution with stride, and batch norm
(and, in the exit flow, ReLU) after each 3x3 depthwise convolution. Layout (as the TensorFlow DeepLab code
``research/deeplab/core/xception.py`` and timm's ``xception65``): a stem of two 3x3 convolutions (32 with stride 2,
then 64); entry flow: three modules of three separable convolutions (128, 256, 728 channels; the third convolution of
each with stride 2; 1x1 strided projection shortcut); middle flow: 16 modules of three 728-channel separable
convolutions with identity shortcut; exit flow: a module (728, 1024, 1024; stride 2; projection shortcut), then three
separable convolutions (1536, 1536, 2048) with BN-ReLU and no shortcut. Entry/middle modules apply ReLU before each
separable convolution. Batch norm with eps 1e-3 (the TensorFlow value).

Levels: the stem (stride 2, 64 channels) and the outputs of the entry modules (strides 4, 8, 16; 128, 256, 728) and of
the exit flow (stride 32, 2048). With ``output_stride`` 16 or 8 the strided separable convolutions of the exit (and
last entry) module lose their stride and the following ones are dilated (DeepLabv3+ uses output stride 16 or 8).
Parameter figure: 39.9M with the 2048-1000 classifier (timm's ``xception65.tf_in1k`` model card).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from medseg.models.backbones.base import RELU, Backbone, ConvNormActD, make_divisible, stage_schedule
from medseg.models.blocks import NormSpec, make_act

__all__ = ["SeparableConv", "XceptionBackbone", "XceptionModule"]

_BN: NormSpec = ("batch", {"eps": 1e-3})


class SeparableConv(nn.Module):
    """Depthwise separable convolution: depthwise kxk (``dw``: conv, BN, optional ReLU), pointwise 1x1 (``pw``).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        stride: Stride of the depthwise convolution.
        dilation: Dilation of the depthwise convolution.
        act: ReLU after each of the two BNs (the exit flow) or not.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        act: bool = False,
        norm: NormSpec = _BN,
    ) -> None:
        super().__init__()
        a = RELU if act else None
        self.dw = ConvNormActD(spatial_dims, in_channels, in_channels, 3, stride, dilation, groups=in_channels,
                               norm=norm, act=a)
        self.pw = ConvNormActD(spatial_dims, in_channels, out_channels, 1, norm=norm, act=a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        return self.pw(self.dw(x))


class XceptionModule(nn.Module):
    """Three separable convolutions (the third strided) with an optional shortcut (Chen et al., 2018, Figure 4).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, channels[-1], *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        channels: Output channels of the three separable convolutions.
        stride: Stride of the third one (and of the projection shortcut).
        dilation: Dilation of the depthwise convolutions.
        start_with_relu: ReLU before each separable convolution (entry and middle flows); otherwise BN-ReLU inside.
        skip: Add the shortcut (identity, or a 1x1 projection with BN when the shape changes).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: tuple[int, int, int],
        stride: int = 1,
        dilation: int = 1,
        start_with_relu: bool = True,
        skip: bool = True,
        norm: NormSpec = _BN,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.shortcut: nn.Module | None = None
        if skip and (channels[-1] != in_channels or stride != 1):
            self.shortcut = ConvNormActD(spatial_dims, in_channels, channels[-1], 1, stride, norm=norm, act=None)
        stack: list[tuple[str, nn.Module]] = []
        c = in_channels
        for i, out in enumerate(channels):
            if start_with_relu:
                stack.append((f"act{i + 1}", make_act(("relu", {"inplace": i > 0}))))
            stack.append((f"conv{i + 1}", SeparableConv(spatial_dims, c, out, stride if i == 2 else 1, dilation,
                                                        act=not start_with_relu, norm=norm)))
            c = out
        self.stack = nn.Sequential()
        for name, module in stack:
            self.stack.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, channels[-1], *spatial / stride)``."""
        out = self.stack(x)
        if self.skip:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return out


class XceptionBackbone(Backbone):
    """Aligned Xception encoder (DeepLabv3+) returning the stem's, the entry modules' and the exit flow's maps.

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        middle_blocks: Modules of the middle flow (16 in Xception-65, 8 in Xception-41).
        output_stride: 8, 16 or 32.
        width: Multiplier of every channel count.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        middle_blocks: int = 16,
        output_stride: int = 32,
        width: float = 1.0,
        norm: NormSpec = _BN,
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)

        def w(c: int) -> int:
            return make_divisible(c * width)

        self.stem = nn.Sequential(ConvNormActD(spatial_dims, in_channels, w(32), 3, 2, norm=norm),
                                  ConvNormActD(spatial_dims, w(32), w(64), 3, 1, norm=norm))
        cfg: list[dict] = [dict(ch=(w(128),) * 3, s=2), dict(ch=(w(256),) * 3, s=2), dict(ch=(w(728),) * 3, s=2)]
        cfg += [dict(ch=(w(728),) * 3, s=1) for _ in range(middle_blocks)]
        cfg += [dict(ch=(w(728), w(1024), w(1024)), s=2), dict(ch=(w(1536), w(1536), w(2048)), s=1, exit=True)]
        schedule = stage_schedule([b["s"] for b in cfg], output_stride, start_stride=2)
        self.blocks = nn.Sequential()
        channels, total = w(64), 2
        self.out_channels, self.strides = [channels], [2]
        self._taps: list[int] = []
        for i, (b, (stride, first_dilation, _)) in enumerate(zip(cfg, schedule, strict=True)):
            exit_ = b.get("exit", False)
            self.blocks.add_module(str(i), XceptionModule(spatial_dims, channels, b["ch"], stride, first_dilation,
                                                          start_with_relu=not exit_, skip=not exit_, norm=norm))
            channels = b["ch"][-1]
            total *= stride
            if i < 3 or exit_:
                self._taps.append(i)
                self.out_channels.append(channels)
                self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x = self.stem(x)
        out = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._taps:
                out.append(x)
        return out

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The head of timm's model: a linear layer on the pooled 2048 channels."""
        return nn.Linear(self.out_channels[-1], num_classes)


_TIMM_RULES = [
    (re.compile(r"^stem\.(\d)\.conv\.(\w+)$"), r"stem.\1.conv.\2"),
    (re.compile(r"^stem\.(\d)\.bn\.(\w+)$"), r"stem.\1.norm.\2"),
    (re.compile(r"^blocks\.(\d+)\.shortcut\.conv\.(\w+)$"), r"blocks.\1.shortcut.conv.\2"),
    (re.compile(r"^blocks\.(\d+)\.shortcut\.bn\.(\w+)$"), r"blocks.\1.shortcut.norm.\2"),
    (re.compile(r"^blocks\.(\d+)\.stack\.conv(\d)\.conv_(dw|pw)\.(\w+)$"), r"blocks.\1.stack.conv\2.\3.conv.\4"),
    (re.compile(r"^blocks\.(\d+)\.stack\.conv(\d)\.bn_(dw|pw)\.(\w+)$"), r"blocks.\1.stack.conv\2.\3.norm.\4"),
]


def _map_timm(key: str, backbone: Backbone) -> str | None:
    """Map timm's ``xception65`` (``XceptionAligned``) keys to ours; ``head.*`` is the classifier."""
    if key.startswith("head."):
        return None
    for pattern, repl in _TIMM_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def _build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> XceptionBackbone:
    return XceptionBackbone(spatial_dims, in_channels, output_stride=output_stride, **kwargs)  # type: ignore[arg-type]


def _register() -> None:
    from medseg.models.backbones.registry import BackboneInfo, register_backbone

    register_backbone(BackboneInfo(
        name="xception65", family="xception", builder=_build, spatial_dims=(2, 3),
        paper="Chen, Zhu, Papandreou, Schroff, Adam, 'Encoder-Decoder with Atrous Separable Convolution for Semantic "
              "Image Segmentation', ECCV 2018 (aligned Xception-65)",
        paper_params=39_900_000,
        source="timm model card huggingface.co/timm/xception65.tf_in1k: 'Params (M): 39.9' (with the 1000-class "
               "head; ported from the TensorFlow DeepLab checkpoint)",
        key_maps={"timm": _map_timm}, test_kwargs={"width": 0.125, "middle_blocks": 2},
    ))


_register()
