"""ShuffleNet v1 (Zhang et al., 2018) and ShuffleNet v2 (Ma et al., 2018) backbones, 2D or 3D.

ShuffleNet v1: X. Zhang, X. Zhou, M. Lin, J. Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices", CVPR 2018 (arXiv:1707.01083), Section 3 and Table 1. A 3x3 convolution with stride 2 (24
channels), 3x3 max pooling with stride 2, then stages 2-4 of 4, 8, 4 ShuffleNet units (Fig. 2): a 1x1 group
convolution to a bottleneck of a quarter of the unit's output channels (BN, ReLU), a channel shuffle, a 3x3
depthwise convolution (BN), a 1x1 group convolution (BN); identity shortcut and ReLU after the sum, or, in the first
(stride-2) unit of a stage, a 3x3 average pooling shortcut with stride 2 and concatenation (the branch produces the
missing channels). Stage 2's first 1x1 convolution is not grouped ("the number of input channels is relatively
small"). Output channels with ``g`` groups (Table 1): g=1: 144/288/576, g=2: 200/400/800, g=3: 240/480/960, g=4:
272/544/1088, g=8: 384/768/1536; "ShuffleNet s x" multiplies them by ``s``. The authors' PyTorch release
(github.com/megvii-model/ShuffleNet-Series, ``ShuffleNetV1/``) fixes the stem widths of the released multipliers
(g=3: 12/24/24/48 for 0.5x/1.0x/1.5x/2.0x; g=8: 16/24/24/48), shuffles with its own channel order (a reshape to
``(C / g, g)`` and a transpose, the inverse of the paper's ``(g, C / g)``; both are a fixed permutation) and ends with a
bias-free 1000-way linear classifier. It also shuffles after the depthwise convolution rather than before it
(equivalent up to a permutation of the depthwise filters). We follow it so that its weights load (layout
``"megvii"``).

Two options reproduce the TensorFlow ShuffleNet of ShuffleSeg's authors (github.com/MSiam/TFSegmentation,
``models/encoders/shufflenet.py`` and ``layers/convolution.py``): ``conv_bias=True`` (every convolution has a bias)
and ``downsample_bottleneck="branch"`` (the bottleneck of a stride-2 unit is a quarter of the *branch's* output
channels, ``(C_out - C_in) / 4``, instead of a quarter of the unit's output, ``C_out / 4``).

ShuffleNet v2: N. Ma, X. Zhang, H.-T. Zheng, J. Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018 (arXiv:1807.11164), Section 4 (Fig. 3c-d) and Table 5. A 3x3 convolution with stride
2 (24 channels), 3x3 max pooling with stride 2, stages 2-4 of 4, 8, 4 units, a 1x1 convolution (1024 channels; 2048
at 2.0x). A basic unit splits the channels in two halves; one half passes unchanged, the other goes through a 1x1
convolution (BN, ReLU), a 3x3 depthwise convolution (BN) and a 1x1 convolution (BN, ReLU); the halves are
concatenated and shuffled (2 groups). The downsampling unit has no split: a left branch (3x3 depthwise convolution
with stride 2, BN, 1x1 convolution, BN, ReLU) and the right branch (with the depthwise convolution strided) each give
half of the output channels. Stage channels (Table 5): 0.5x: 48/96/192, 1.0x: 116/232/464, 1.5x: 176/352/704, 2.0x:
244/488/976. We follow torchvision's module layout (``torchvision/models/shufflenetv2.py``: the chunk-concatenate-
shuffle order, both downsampling branches with half of the output channels) so that its ImageNet weights load
(layout ``"torchvision"``).

Levels (both): the stem convolution (stride 2), the max pooling (stride 4), stages 2, 3 and 4 (strides 8, 16, 32;
ShuffleNet v2's last level is the 1x1 convolution after stage 4). With ``output_stride`` 16 or 8 the depthwise
convolutions of the last stages are dilated instead of strided (DeepLabv3, Chen et al., 2017); ShuffleNet v1's
average-pooling shortcut then keeps stride 1.

Parameter figures (ImageNet classifiers included): ShuffleNet v1 1.0x g=3 1,864,728 (the authors' PyTorch release at
that configuration, whose README table rounds it to 1.9M; the 0.5x/1.5x/2.0x g=3 models count 717,324 / 3,441,168 /
5,449,776 and 1.0x g=8 2,433,768). ShuffleNet v2 1.0x 2,278,604 (torchvision ``ShuffleNet_V2_X1_0_Weights``
``num_params``; the authors' README: 2.3M; their code counts 2,278,760 with its different downsampling branch
widths); 0.5x 1,366,792, 1.5x 3,503,624, 2.0x 7,393,996 (torchvision; authors' README 1.4M / 3.5M / 7.4M).
"""

from __future__ import annotations

import re

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import RELU, Backbone, ConvNormActD, stage_schedule
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.blocks import NormSpec, PaddedAvgPool, channel_shuffle, make_act

__all__ = [
    "SHUFFLENET_V1_CHANNELS",
    "SHUFFLENET_V2_CHANNELS",
    "ShuffleNetV1Backbone",
    "ShuffleNetV1Unit",
    "ShuffleNetV2Backbone",
    "ShuffleNetV2Unit",
    "channel_shuffle",
]

#: Stage 2-4 output channels of ShuffleNet v1 1x per number of groups (Zhang et al., 2018, Table 1).
SHUFFLENET_V1_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536),
}
#: Stem widths of the authors' released ShuffleNet v1 models, per (groups, multiplier).
_V1_STEM: dict[tuple[int, float], int] = {
    (3, 0.5): 12, (3, 1.0): 24, (3, 1.5): 24, (3, 2.0): 48, (8, 0.5): 16, (8, 1.0): 24, (8, 1.5): 24, (8, 2.0): 48,
}
#: Stage 2-4 and last-convolution channels of ShuffleNet v2 per multiplier (Ma et al., 2018, Table 5).
SHUFFLENET_V2_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048),
}
_REPEATS = (4, 8, 4)


class ShuffleNetV1Unit(nn.Module):
    """ShuffleNet v1 unit (Zhang et al., 2018, Fig. 2b-c): grouped 1x1, depthwise 3x3, shuffle, grouped 1x1.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``. A ``downsample`` unit concatenates the
    average-pooled input with its branch (``C_out - C_in`` channels); the others add the identity.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        groups: Groups of the 1x1 convolutions.
        stride: Stride of the depthwise convolution and of the pooling shortcut.
        dilation: Dilation of the depthwise convolution.
        downsample: The concatenating (first) unit of a stage.
        group_first: Group the first 1x1 convolution (not in stage 2's first unit).
        bottleneck: Bottleneck channels.
        bias: Bias of the convolutions.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        groups: int,
        stride: int,
        dilation: int,
        downsample: bool,
        group_first: bool,
        bottleneck: int,
        bias: bool = False,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        branch_out = out_channels - in_channels if downsample else out_channels
        if branch_out < 1 or bottleneck % groups or branch_out % groups or (group_first and in_channels % groups):
            raise ModelError(f"ShuffleNet v1 unit {in_channels}->{out_channels} (bottleneck {bottleneck}) does not "
                             f"divide into {groups} groups")
        self.groups = groups
        self.downsample = downsample
        self.pw1 = ConvNormActD(spatial_dims, in_channels, bottleneck, 1, groups=groups if group_first else 1,
                                bias=bias, norm=norm)
        self.dw = ConvNormActD(spatial_dims, bottleneck, bottleneck, 3, stride, dilation, groups=bottleneck, bias=bias,
                               norm=norm, act=None)
        self.pw2 = ConvNormActD(spatial_dims, bottleneck, branch_out, 1, groups=groups, bias=bias, norm=norm, act=None)
        self.pool = PaddedAvgPool(spatial_dims, 3, stride, 1) if downsample else None
        self.act = make_act(RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        out = self.dw(self.pw1(x))
        if self.groups > 1:  # the authors' code: after the depthwise convolution, order (C / g, g) -> (g, C / g)
            out = channel_shuffle(out, out.shape[1] // self.groups)
        out = self.pw2(out)
        if self.pool is not None:
            return torch.cat([self.pool(x), self.act(out)], dim=1)
        return self.act(x + out)


class ShuffleNetV1Backbone(Backbone):
    """ShuffleNet v1 encoder (Zhang et al., 2018): stem, max pooling, three stages of ShuffleNet units.

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])`` with strides
    ``(2, 4, 8, 16, 32)`` at ``output_stride=32``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        output_stride: 8, 16 or 32.
        groups: Groups of the 1x1 convolutions (1, 2, 3, 4 or 8; paper's default 3).
        width: Multiplier "s" of the stage channels (0.5, 1.0, 1.5, 2.0 in the release; any value that keeps the
            channels divisible).
        stem_channels: Stem width; ``None`` takes the released models' (24 at 1.0x).
        conv_bias: Biases on every convolution (TFSegmentation's variant; the paper's has none).
        downsample_bottleneck: ``"output"`` (a quarter of the unit's output, the paper's) or ``"branch"`` (a quarter
            of the branch's output, TFSegmentation's) for the stride-2 units.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        output_stride: int = 32,
        groups: int = 3,
        width: float = 1.0,
        stem_channels: int | None = None,
        conv_bias: bool = False,
        downsample_bottleneck: str = "output",
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        if groups not in SHUFFLENET_V1_CHANNELS:
            raise ModelError(f"shufflenet_v1: groups must be one of {sorted(SHUFFLENET_V1_CHANNELS)}, got {groups!r}")
        if downsample_bottleneck not in ("output", "branch"):
            raise ModelError(f"shufflenet_v1: downsample_bottleneck must be 'output' or 'branch', got "
                             f"{downsample_bottleneck!r}")
        stem = stem_channels or _V1_STEM.get((groups, float(width)), max(groups, round(24 * width)))
        channels = [int(c * width) for c in SHUFFLENET_V1_CHANNELS[groups]]
        self.groups = groups
        self.stem = ConvNormActD(spatial_dims, in_channels, stem, 3, 2, bias=conv_bias, norm=norm)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.out_channels, self.strides = [stem, stem], [2, 4]
        schedule = stage_schedule((2, 2, 2), output_stride, start_stride=4)
        units: list[nn.Module] = []
        self._taps: list[int] = []
        cin, total = stem, 4
        for s, (cout, n, (stride, first_dilation, dilation)) in enumerate(zip(channels, _REPEATS, schedule,
                                                                              strict=True)):
            for j in range(n):
                first = j == 0
                mid = (cout - cin) // 4 if first and downsample_bottleneck == "branch" else cout // 4
                units.append(ShuffleNetV1Unit(spatial_dims, cin, cout, groups, stride if first else 1,
                                              first_dilation if first else dilation, downsample=first,
                                              group_first=not (s == 0 and first), bottleneck=mid, bias=conv_bias,
                                              norm=norm))
                cin = cout
            total *= stride
            self._taps.append(len(units) - 1)
            self.out_channels.append(cout)
            self.strides.append(total)
        self.features = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x = self.stem(x)
        out = [x]
        x = self.pool(x)
        out.append(x)
        for i, unit in enumerate(self.features):
            x = unit(x)
            if i in self._taps:
                out.append(x)
        return out

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The authors' classifier: a bias-free linear layer on the pooled last map."""
        return nn.Linear(self.out_channels[-1], num_classes, bias=False)


_MEGVII_BRANCH = {"branch_main_1.0": "pw1.conv", "branch_main_1.1": "pw1.norm", "branch_main_1.3": "dw.conv",
                  "branch_main_1.4": "dw.norm", "branch_main_2.0": "pw2.conv", "branch_main_2.1": "pw2.norm"}
_MEGVII_UNIT = re.compile(r"^features\.(\d+)\.(branch_main_[12]\.\d)\.(\w+)$")


def _map_megvii_v1(key: str, backbone: Backbone) -> str | None:
    """Map the authors' ``ShuffleNetV1/network.py`` keys (``first_conv``, ``features.N.branch_main_*``) to ours."""
    if key.startswith("classifier."):
        return None
    if key.startswith("first_conv.0."):
        return "stem.conv." + key[len("first_conv.0."):]
    if key.startswith("first_conv.1."):
        return "stem.norm." + key[len("first_conv.1."):]
    if (m := _MEGVII_UNIT.match(key)) and m[2] in _MEGVII_BRANCH:
        return f"features.{m[1]}.{_MEGVII_BRANCH[m[2]]}.{m[3]}"
    return key


class ShuffleNetV2Unit(nn.Module):
    """ShuffleNet v2 unit (Ma et al., 2018, Fig. 3c-d): channel split (or two branches when strided), shuffle.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``; ``C_in == C_out`` for a basic unit.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (even).
        stride: Stride of the depthwise convolutions (a downsampling unit when ``downsample``).
        dilation: Dilation of the depthwise convolutions.
        downsample: The two-branch (first) unit of a stage.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int,
        dilation: int,
        downsample: bool,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        half = out_channels // 2
        if out_channels % 2 or (not downsample and in_channels != out_channels):
            raise ModelError(f"ShuffleNet v2 unit {in_channels}->{out_channels}: a basic unit keeps an even width")
        self.downsample = downsample
        self.branch1: nn.Module | None = None
        if downsample:
            self.branch1 = nn.Sequential(
                ConvNormActD(spatial_dims, in_channels, in_channels, 3, stride, dilation, groups=in_channels,
                             norm=norm, act=None),
                ConvNormActD(spatial_dims, in_channels, half, 1, norm=norm),
            )
        cin = in_channels if downsample else half
        self.branch2 = nn.Sequential(
            ConvNormActD(spatial_dims, cin, half, 1, norm=norm),
            ConvNormActD(spatial_dims, half, half, 3, stride, dilation, groups=half, norm=norm, act=None),
            ConvNormActD(spatial_dims, half, half, 1, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Backbone(Backbone):
    """ShuffleNet v2 encoder (Ma et al., 2018): stem, max pooling, three stages, a last 1x1 convolution.

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])`` with strides
    ``(2, 4, 8, 16, 32)`` at ``output_stride=32``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        output_stride: 8, 16 or 32.
        width: Multiplier: 0.5, 1.0, 1.5 or 2.0 (Table 5).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        output_stride: int = 32,
        width: float = 1.0,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        if float(width) not in SHUFFLENET_V2_CHANNELS:
            raise ModelError(f"shufflenet_v2: width must be one of {sorted(SHUFFLENET_V2_CHANNELS)}, got {width!r}")
        *stages, last = SHUFFLENET_V2_CHANNELS[float(width)]
        self.stem = ConvNormActD(spatial_dims, in_channels, 24, 3, 2, norm=norm)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.out_channels, self.strides = [24, 24], [2, 4]
        schedule = stage_schedule((2, 2, 2), output_stride, start_stride=4)
        cin, total = 24, 4
        for i, (cout, n, (stride, first_dilation, dilation)) in enumerate(zip(stages, _REPEATS, schedule,
                                                                              strict=True)):
            units = [ShuffleNetV2Unit(spatial_dims, cin if j == 0 else cout, cout, stride if j == 0 else 1,
                                      first_dilation if j == 0 else dilation, downsample=j == 0, norm=norm)
                     for j in range(n)]
            self.add_module(f"stage{i + 2}", nn.Sequential(*units))
            cin = cout
            total *= stride
            if i < 2:
                self.out_channels.append(cout)
                self.strides.append(total)
        self.conv5 = ConvNormActD(spatial_dims, cin, last, 1, norm=norm)
        self.out_channels.append(last)
        self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x = self.stem(x)
        out = [x]
        x = self.pool(x)
        out.append(x)
        x = self.stage2(x)
        out.append(x)
        x = self.stage3(x)
        out.append(x)
        out.append(self.conv5(self.stage4(x)))
        return out

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The ``fc`` of torchvision's model: a linear layer on the pooled last map."""
        return nn.Linear(self.out_channels[-1], num_classes)


_TV_BRANCH1 = {"0": "0.conv", "1": "0.norm", "2": "1.conv", "3": "1.norm"}
_TV_BRANCH2 = {"0": "0.conv", "1": "0.norm", "3": "1.conv", "4": "1.norm", "5": "2.conv", "6": "2.norm"}
_TV_UNIT = re.compile(r"^(stage[234]\.\d+)\.branch([12])\.(\d)\.(\w+)$")


def _map_torchvision_v2(key: str, backbone: Backbone) -> str | None:
    """Map torchvision's ``shufflenet_v2_x*`` keys (``conv1``, ``stageN.i.branchK.j``, ``conv5``) to ours."""
    if key.startswith("fc."):
        return None
    for theirs, ours in (("conv1.0.", "stem.conv."), ("conv1.1.", "stem.norm."), ("conv5.0.", "conv5.conv."),
                         ("conv5.1.", "conv5.norm.")):
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    if m := _TV_UNIT.match(key):
        table = _TV_BRANCH1 if m[2] == "1" else _TV_BRANCH2
        if m[3] in table:
            return f"{m[1]}.branch{m[2]}.{table[m[3]]}.{m[4]}"
    return key


def _build_v1(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> Backbone:
    return ShuffleNetV1Backbone(spatial_dims, in_channels, output_stride=output_stride, **kwargs)  # type: ignore[arg-type]


def _build_v2(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> Backbone:
    return ShuffleNetV2Backbone(spatial_dims, in_channels, output_stride=output_stride, **kwargs)  # type: ignore[arg-type]


register_backbone(BackboneInfo(
    name="shufflenet_v1", family="shufflenet", builder=_build_v1, spatial_dims=(2, 3),
    paper="Zhang, Zhou, Lin, Sun, 'ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile "
          "Devices', CVPR 2018 (ShuffleNet 1x, g=3)",
    paper_params=1_864_728,
    source="authors' code github.com/megvii-model/ShuffleNet-Series ShuffleNetV1/network.py, model_size='1.0x', "
           "group=3, 1000 classes (their README table: 1.9M)",
    key_maps={"megvii": _map_megvii_v1}, test_kwargs={"width": 0.25, "stem_channels": 6},
))
register_backbone(BackboneInfo(
    name="shufflenet_v2", family="shufflenet", builder=_build_v2, spatial_dims=(2, 3),
    paper="Ma, Zhang, Zheng, Sun, 'ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design', "
          "ECCV 2018 (ShuffleNet v2 1x)",
    paper_params=2_278_604,
    source="torchvision torchvision/models/shufflenetv2.py, ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1 meta "
           "num_params (authors' README, github.com/megvii-model/ShuffleNet-Series ShuffleNetV2: 2.3M)",
    key_maps={"torchvision": _map_torchvision_v2}, test_kwargs={"width": 0.5},
))
