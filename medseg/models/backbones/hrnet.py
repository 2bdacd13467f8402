"""HRNetV2-W18/W48 backbones (Wang et al., 2019): parallel multi-resolution branches with repeated exchange, 2D/3D.

Paper: J. Wang, K. Sun, T. Cheng, B. Jiang, C. Deng, Y. Zhao, D. Liu, Y. Mu, M. Tan, X. Wang, W. Liu, B. Xiao, "Deep
High-Resolution Representation Learning for Visual Recognition", TPAMI 2020 (arXiv:1908.07919), Section 3 and
Figure 2; configuration of the reference code (HRNet-Image-Classification / timm ``hrnet_w18``/``hrnet_w48``).

Layout: a stem of two 3x3 convolutions with stride 2 (64 channels each, BN-ReLU); stage 1: four bottleneck blocks
(64 -> 256 channels); stages 2, 3, 4 with 2, 3, 4 parallel branches of C, 2C, 4C, 8C channels at strides 4, 8, 16, 32,
made of 1, 4 and 3 modules. A module runs four basic blocks on each branch and then exchanges information: every output
branch sums all input branches, brought to its resolution by a 1x1 convolution with BN and upsampling (from lower
resolutions) or by strided 3x3 convolutions with BN (from higher ones), followed by ReLU. A transition before each
stage adapts the channels and creates the new lowest-resolution branch with a strided 3x3 convolution.

HRNetV2's representation (Section 3, "HRNetV2") upsamples the lower-resolution branches to the highest resolution and
concatenates them (15C channels at stride 4): :meth:`HRNetBackbone.representation`. Upsampling is (bi/tri)linear, as
in HRNet-Semantic-Segmentation, so 3D works unchanged.

Levels: the first stem convolution (stride 2, 64 channels) and the four branches (strides 4, 8, 16, 32). The output
stride is 32 by design (the branches are the multi-resolution representation; no dilation option). Parameter figures:
the classification networks HRNet-W18-C 21.3M and HRNet-W48-C 77.5M (HRNet-Image-Classification README; OpenMMLab
pretrain docs 21.30M / 77.47M), counted with the classification head of the reference code
(:class:`HRNetClassificationHead`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from medseg.models.backbones.base import RELU, Backbone, ConvNormActD
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.backbones.resnet import BasicBlock, Bottleneck, map_resnet_block_key
from medseg.models.blocks import NormSpec, make_act, resample_linear

__all__ = ["HRNetBackbone", "HRNetClassificationHead", "HighResolutionModule"]


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks followed by the multi-resolution fusion (Wang et al., Figure 3).

    Shapes: a list of ``(B, channels[i], *spatial / 2**i)`` to a list of the same shapes.

    Args:
        spatial_dims: 2 or 3.
        channels: Channels of each branch.
        num_blocks: Basic blocks per branch.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: list[int], num_blocks: int = 4, norm: NormSpec = "batch") -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(spatial_dims, c, c, norm=norm) for _ in range(num_blocks)]) for c in channels
        )
        self.fuse_layers = nn.ModuleList()
        if n > 1:
            for i in range(n):
                row = nn.ModuleList()
                for j in range(n):
                    if j > i:
                        row.append(ConvNormActD(spatial_dims, channels[j], channels[i], 1, norm=norm, act=None))
                    elif j == i:
                        row.append(nn.Identity())
                    else:
                        row.append(nn.Sequential(*[
                            ConvNormActD(spatial_dims, channels[j], channels[i] if k == i - j - 1 else channels[j], 3,
                                         2, norm=norm, act=None if k == i - j - 1 else RELU)
                            for k in range(i - j)
                        ]))
                self.fuse_layers.append(row)
        self.act = make_act(RELU)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the branches on ``xs`` and fuse them; one output per branch, same shapes."""
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if len(xs) == 1:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j > i:
                    y = y + resample_linear(layer(xs[j]), xs[i].shape[2:])
                elif j < i:
                    y = y + layer(xs[j])
            out.append(self.act(y))
        return out


def _transition(spatial_dims: int, pre: list[int], cur: list[int], norm: NormSpec) -> nn.ModuleList:
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(nn.Identity() if c == pre[i] else ConvNormActD(spatial_dims, pre[i], c, 3, norm=norm))
        else:
            n = i + 1 - len(pre)
            layers.append(nn.Sequential(*[
                ConvNormActD(spatial_dims, pre[-1], c if k == n - 1 else pre[-1], 3, 2, norm=norm) for k in range(n)
            ]))
    return layers


class HRNetBackbone(Backbone):
    """HRNet encoder returning the stride-2 stem map and the four branches of the last stage.

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps: ``(B, 64, *spatial / 2)`` and ``(B, C * 2**i, *spatial /
    2**(i + 2))`` for ``i = 0..3``. :meth:`representation` turns the branches into HRNetV2's ``(B, 15C, *spatial / 4)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        width: C, the channels of the highest-resolution branch (18 or 48).
        modules: Modules of stages 2, 3, 4 (1, 4, 3).
        num_blocks: Basic blocks per branch in each module (4); stage 1 has as many bottlenecks.
        stem_width: Channels of the stem and of stage 1's bottlenecks (64; stage 1 outputs 4x as many).
        output_stride: Must be 32.
        norm: Normalisation.
    """

    allowed_output_strides = (32,)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        width: int = 18,
        modules: tuple[int, int, int] = (1, 4, 3),
        num_blocks: int = 4,
        stem_width: int = 64,
        output_stride: int = 32,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        self.conv1 = ConvNormActD(spatial_dims, in_channels, stem_width, 3, 2, norm=norm)
        self.conv2 = ConvNormActD(spatial_dims, stem_width, stem_width, 3, 2, norm=norm)
        layer1, c = [], stem_width
        for _ in range(num_blocks):
            layer1.append(Bottleneck(spatial_dims, c, stem_width, norm=norm))
            c = stem_width * Bottleneck.expansion
        self.layer1 = nn.Sequential(*layer1)
        pre = [c]
        for s, n_modules in enumerate(modules, start=2):
            cur = [width * 2**i for i in range(s)]
            self.add_module(f"transition{s - 1}", _transition(spatial_dims, pre, cur, norm))
            self.add_module(f"stage{s}", nn.Sequential(
                *[HighResolutionModule(spatial_dims, cur, num_blocks, norm) for _ in range(n_modules)]))
            pre = cur
        self.out_channels = [stem_width, *pre]
        self.strides = [2, 4, 8, 16, 32]
        self.representation_channels = sum(pre)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the stem map and the four branches of ``x`` (``(B, in_channels, *spatial)``)."""
        self.check_input(x)
        stem = self.conv1(x)
        x = self.layer1(self.conv2(stem))
        ys = [x]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            xs = [t(ys[i]) if i < len(ys) else t(ys[-1]) for i, t in enumerate(transition)]
            ys = getattr(self, f"stage{s}")(xs)
        return [stem, *ys]

    @staticmethod
    def representation(features: list[torch.Tensor]) -> torch.Tensor:
        """HRNetV2's output: the branches (``features[1:]``) upsampled to the first branch's size and concatenated."""
        branches = features[1:]
        size = branches[0].shape[2:]
        return torch.cat([branches[0], *[resample_linear(b, size) for b in branches[1:]]], dim=1)

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The ImageNet head of the reference code (:class:`HRNetClassificationHead`)."""
        return HRNetClassificationHead(self.spatial_dims, self.out_channels[1:], num_classes)


class HRNetClassificationHead(nn.Module):
    """HRNet's ImageNet head (Wang et al., Figure 10), used to count the reference classification network.

    Per-branch bottlenecks to 128/256/512/1024 channels, summed through strided 3x3 convolutions, a 1x1 convolution to
    2048 channels, global pooling and a linear classifier.

    Shapes: the four branches ``(B, C * 2**i, ...)`` to ``(B, num_classes)``.

    Args:
        spatial_dims: 2 or 3.
        channels: Channels of the four branches.
        num_classes: Classes.
    """

    def __init__(self, spatial_dims: int, channels: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        head = [32, 64, 128, 256]
        self.incre_modules = nn.ModuleList(Bottleneck(spatial_dims, c, h) for c, h in zip(channels, head, strict=True))
        self.downsamp_modules = nn.ModuleList(
            ConvNormActD(spatial_dims, head[i] * 4, head[i + 1] * 4, 3, 2, bias=True) for i in range(len(head) - 1)
        )
        self.final_layer = ConvNormActD(spatial_dims, head[-1] * 4, 2048, 1, bias=True)
        self.classifier = nn.Linear(2048, num_classes)

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        """Map the four branches to ``(B, num_classes)`` logits."""
        y = self.incre_modules[0](branches[0])
        for i in range(1, len(branches)):
            y = self.incre_modules[i](branches[i]) + self.downsamp_modules[i - 1](y)
        y = self.final_layer(y)
        return self.classifier(y.flatten(2).mean(-1))


_TOP = re.compile(r"^(conv|bn)([12])\.(\w+)$")
_TRANSITION = re.compile(r"^(transition\d\.\d+(?:\.\d+)?)\.([01])\.(\w+)$")
_FUSE = re.compile(r"^(stage\d\.\d+\.fuse_layers\.\d+\.\d+(?:\.\d+)?)\.([01])\.(\w+)$")
_HEAD = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.", "head.")


def _map_timm(key: str, backbone: Backbone) -> str | None:
    """Map timm's ``hrnet_w18``/``hrnet_w48`` (= HRNet-Image-Classification) keys to ours; the head is ignored."""
    if key.startswith(_HEAD):
        return None
    if m := _TOP.match(key):
        return f"conv{m[2]}.{'conv' if m[1] == 'conv' else 'norm'}.{m[3]}"
    for pattern in (_TRANSITION, _FUSE):
        if m := pattern.match(key):
            return f"{m[1]}.{'conv' if m[2] == '0' else 'norm'}.{m[3]}"
    return map_resnet_block_key(key) or key


def _builder(width: int):
    def build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> HRNetBackbone:
        opts = {"width": width, **kwargs}
        return HRNetBackbone(spatial_dims, in_channels, output_stride=output_stride, **opts)  # type: ignore[arg-type]

    return build


_PAPER = ("Wang, Sun, Cheng, Jiang, Deng, Zhao, Liu, Mu, Tan, Wang, Liu, Xiao, 'Deep High-Resolution Representation "
          "Learning for Visual Recognition', TPAMI 2020")
for _name, _width, _params, _fig in (
    ("hrnetv2_w18", 18, 21_300_000, "HRNet-W18-C 21.3M"),
    ("hrnetv2_w48", 48, 77_500_000, "HRNet-W48-C 77.5M"),
):
    register_backbone(BackboneInfo(
        name=_name, family="hrnet", builder=_builder(_width), spatial_dims=(2, 3), paper=_PAPER,
        paper_params=_params,
        source=f"HRNet-Image-Classification README ImageNet table ({_fig}), with the classification head; the "
               "segmentation variant's figure (HRNetV2 + 1x1 head) could not be verified and is not recorded",
        key_maps={"timm": _map_timm}, test_kwargs={"width": 4, "stem_width": 8, "modules": (1, 1, 1),
                                                   "num_blocks": 1},
    ))
