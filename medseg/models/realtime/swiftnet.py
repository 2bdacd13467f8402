"""SwiftNet, ImageNet-pretrained ResNet-18 with ladder-style upsampling (Oršić et al., 2019), 2D and 3D.

Paper: M. Oršić, I. Krešo, P. Bevandić, S. Šegvić, "In Defense of Pre-trained ImageNet Architectures for Real-time
Semantic Segmentation of Road-driving Images", CVPR 2019 (arXiv:1903.08469), Section 3; the pyramid
variant as in M. Oršić, S. Šegvić, "Efficient semantic segmentation with pyramidal fusion", Pattern Recognition 2021.
Layers as in the authors' code (github.com/orsic/swiftnet: ``models/resnet/resnet_single_scale.py``,
``models/resnet/resnet_pyramid.py``, ``models/util.py``, ``models/semseg.py``; configurations
``configs/rn18_single_scale.py`` and ``configs/rn18_pyramid.py``).

Single scale (``variant="single"``, SwiftNetRN-18): the ResNet-18 encoder; the output of each stage *before* its
last ReLU is a lateral skip (the code's blocks return both). Spatial pyramid pooling on the 1/32 map: a
BN-ReLU-1x1 convolution to 128 channels, three levels of average pooling onto grids of 8, 4, 2 rows (columns by the
aspect ratio), each BN-ReLU-1x1 convolution to 42 channels and upsampled, concatenated with the input (254 channels)
and fused by a BN-ReLU-1x1 convolution to 128. Three upsampling modules climb to 1/4: the skip goes through
a BN-ReLU-1x1 convolution to 128 channels, the coarser map is bilinearly upsampled and added, and a BN-ReLU-3x3
convolution blends the sum. A BN-ReLU-1x1 convolution (with bias) scores the 1/4 map; the scores are upsampled to the
input.

Pyramid (``variant="pyramid"``, interleaved pyramid fusion): the image and its downsampled copies (1/2, 1/4;
``pyramid_levels=3``) go through the *same* encoder weights, with separate batch-norm statistics and affine
parameters per level (the stem's and the blocks' BNs; the projection shortcuts' BNs are shared, as in the code). Each
stage's pre-activation is projected by a 1x1 convolution (no BN, no bias) to 128 channels; projections of the same
absolute resolution (e.g. level 0's ``layer2`` and level 1's ``layer1``, both 1/8) are summed. There is no pyramid
pooling: the coarsest map (1/128 with three levels) is upsampled through ``pyramid_levels + 2`` blending modules
(upsample, add the summed projections, BN-ReLU-3x3 convolution) to 1/4 and scored as above. The downsampled images
are (bi/tri)linear here (the code uses bicubic, which has no 3D form).

Dims: 2D and 3D (ResNet-18 and every layer come from MONAI's factories); inputs divisible by 32 (single) or by
``32 * 2 ** (pyramid_levels - 1)`` (pyramid). The per-level BNs copy the backbone's BNs after any pretrained weights
are loaded (the code loads the ImageNet statistics into every level).

Parameter figures: the authors' code counts 11,797,071 parameters for the single-scale model with 19 classes (the
paper's SwiftNetRN-18 figure, 11.8M), and 12,056,275 for the three-level pyramid model (its encoder has 15,616 more
parameters for the per-level BNs); ours are the same. ``params`` records the single-scale count.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import conv_nd
from medseg.models.backbones.resnet import BasicBlock, Bottleneck, ResNetBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, make_norm
from medseg.models.natural.classic._modules import build_backbone, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["BNReLUConv", "LevelNorm", "SwiftNet", "SwiftSPP", "SwiftUpsample"]

_VARIANTS = ("single", "pyramid")


class BNReLUConv(nn.Sequential):
    """Pre-activation unit: normalisation, ReLU, convolution (the code's ``_BNReluConv``).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel size (1 or 3).
        bias: Bias of the convolution.
        norm: Normalisation (before the ReLU).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 bias: bool = False, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.add_module("norm", make_norm(norm, spatial_dims, in_channels) or nn.Identity())
        self.add_module("act", nn.ReLU())
        self.add_module("conv", conv_nd(spatial_dims, in_channels, out_channels, kernel_size, bias=bias))


class LevelNorm(nn.Module):
    """One normalisation layer per pyramid level; :attr:`level` selects the one applied.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        norm: The layer to copy (its current state is copied into every level).
        levels: Number of pyramid levels.
    """

    def __init__(self, norm: nn.Module, levels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList([norm, *(copy.deepcopy(norm) for _ in range(levels - 1))])
        self.level = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` with the current level's layer."""
        return self.norms[self.level](x)


class SwiftSPP(nn.Module):
    """SwiftNet's spatial pyramid pooling: bottleneck, pooled levels on aspect-ratio grids, fusion.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (512).
        channels: Bottleneck and output channels (128).
        grids: Rows of the pooling grids (8, 4, 2); the other axes scale with the aspect ratio.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 128, grids: Sequence[int] = (8, 4, 2),
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        self.grids = tuple(grids)
        level = channels // len(self.grids)
        self.bottleneck = BNReLUConv(spatial_dims, in_channels, channels, 1, norm=norm)
        self.levels = nn.ModuleList(BNReLUConv(spatial_dims, channels, level, 1, norm=norm) for _ in self.grids)
        self.fuse = BNReLUConv(spatial_dims, channels + len(self.grids) * level, channels, 1, norm=norm)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` on the grids, concatenate and fuse."""
        x = self.bottleneck(x)
        size = x.shape[2:]
        pool = nn.functional.adaptive_avg_pool2d if self.spatial_dims == 2 else nn.functional.adaptive_avg_pool3d
        out = [x]
        for g, level in zip(self.grids, self.levels, strict=True):
            grid = [g] + [max(1, round(s / size[0] * g)) for s in size[1:]]
            out.append(resize(level(pool(x, grid)), size))
        return self.fuse(torch.cat(out, dim=1))


class SwiftUpsample(nn.Module):
    """SwiftNet's upsampling module: optional skip bottleneck, upsample, add, BN-ReLU-3x3 blend.

    Shapes: ``x (B, C, *s)`` and ``skip (B, C_skip, *s')`` to ``(B, C, *s')``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        skip_channels: C_skip for a BN-ReLU-1x1 bottleneck on the skip; ``None``: the skip already has C channels.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, skip_channels: int | None = None,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        self.bottleneck = BNReLUConv(spatial_dims, skip_channels, channels, 1, norm=norm) if skip_channels else None
        self.blend = BNReLUConv(spatial_dims, channels, channels, 3, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to ``skip``'s size, add the (projected) skip and blend."""
        if self.bottleneck is not None:
            skip = self.bottleneck(skip)
        return self.blend(resize(x, skip.shape[2:]) + skip)


def _preactivation(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of a ResNet block before its last ReLU."""
    if isinstance(block, Bottleneck):
        out = block.conv3(block.conv2(block.conv1(x)))
    elif isinstance(block, BasicBlock):
        out = block.conv2(block.conv1(x))
    else:
        raise ModelError(f"swiftnet: unsupported block type {type(block).__name__}")
    if block.residual:
        out = out + (x if block.downsample is None else block.downsample(x))
    return out


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a ResNet stage; return its output and its last block's pre-activation (the skip)."""
    for block in list(stage)[:-1]:
        x = block(x)
    pre = _preactivation(stage[-1], x)
    return torch.relu(pre), pre


@register_model(
    "swiftnet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="In Defense of Pre-trained ImageNet Architectures for Real-time Semantic Segmentation of "
                "Road-driving Images",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"variant": "single"}, params=11_797_071,
        source="authors' code github.com/orsic/swiftnet models/resnet/resnet_single_scale.py, models/semseg.py, "
               "configs/rn18_single_scale.py (SwiftNetRN-18, 19 classes; the paper's 11.8M)",
    ),
    divisor={2: 32, 3: 32},
    test_kwargs={2: {"variant": "pyramid", "pyramid_levels": 2, "backbone_kwargs": {"width": 0.125},
                     "num_features": 16},
                 3: {"variant": "single", "backbone_kwargs": {"width": 0.125}, "num_features": 16}},
)
class SwiftNet(SegmentationModel):
    """SwiftNet (Oršić et al., CVPR 2019): ResNet-18, lateral skips, light upsampling; single scale or pyramid.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (spatial sizes divisible by
    :attr:`input_divisor`: 32, or ``32 * 2 ** (pyramid_levels - 1)`` for the pyramid).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        variant: ``"single"`` (SPP on the 1/32 map) or ``"pyramid"`` (interleaved pyramid fusion).
        backbone: A ResNet backbone (``"resnet18"``).
        pretrained_backbone: Local backbone weights (torchvision/timm layout).
        backbone_kwargs: Further backbone options.
        num_features: Channels of the decoder (128).
        spp_grids: Pooling grids of the single-scale SPP (8, 4, 2).
        pyramid_levels: Image pyramid levels of the pyramid variant (3).
        norm: Normalisation of the decoder.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        variant: str = "single",
        backbone: str = "resnet18",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        num_features: int = 128,
        spp_grids: Sequence[int] = (8, 4, 2),
        pyramid_levels: int = 3,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if variant not in _VARIANTS:
            raise ModelError(f"{self.model_name}: variant must be one of {_VARIANTS}, got {variant!r}")
        if variant == "pyramid" and pyramid_levels < 2:
            raise ModelError(f"{self.model_name}: the pyramid needs at least 2 levels, got {pyramid_levels}")
        bb = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                            self.model_name)
        if not isinstance(bb, ResNetBackbone):
            raise ModelError(f"{self.model_name}: the backbone must be a ResNet, got {backbone!r}")
        self.backbone = bb
        self.variant = variant
        f = num_features
        stage_channels = bb.out_channels[1:]
        if variant == "single":
            self.levels = 1
            self.input_divisor = (32,) * spatial_dims
            self.spp = SwiftSPP(spatial_dims, stage_channels[-1], f, spp_grids, norm)
            self.upsample = nn.ModuleList(SwiftUpsample(spatial_dims, f, c, norm) for c in stage_channels[-2::-1])
        else:
            self.levels = pyramid_levels
            self.input_divisor = (32 * 2 ** (pyramid_levels - 1),) * spatial_dims
            self._level_norms = self._split_norms(pyramid_levels)
            self.projections = nn.ModuleList(conv_nd(spatial_dims, c, f, 1) for c in stage_channels[::-1])
            self.upsample = nn.ModuleList(SwiftUpsample(spatial_dims, f, None, norm)
                                          for _ in range(pyramid_levels + 2))
        self.logits = BNReLUConv(spatial_dims, f, out_channels, 1, bias=True, norm=norm)

    def _split_norms(self, levels: int) -> list[LevelNorm]:
        """Give the stem's and the blocks' normalisations one copy per pyramid level (shortcut BNs stay shared)."""
        bb = self.backbone
        units = [bb.stem]
        for i in range(1, 5):
            for block in getattr(bb, f"layer{i}"):
                units += [block.conv1, block.conv2] + ([block.conv3] if isinstance(block, Bottleneck) else [])
        out = []
        for unit in units:
            level_norm = LevelNorm(unit.norm, levels)
            unit.norm = level_norm
            out.append(level_norm)
        return out

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pre-activations of the four stages of ``x`` (``layer1``..``layer4``)."""
        bb = self.backbone
        h = bb.pool(bb.stem(x))
        skips = []
        for i in range(1, 5):
            h, pre = _run_stage(getattr(bb, f"layer{i}"), h)
            skips.append(pre)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        if self.variant == "single":
            skips = self._encode(x)
            h = self.spp(skips[-1])
            for up, skip in zip(self.upsample, skips[-2::-1], strict=True):
                h = up(h, skip)
        else:
            by_resolution: list[list[torch.Tensor]] = [[] for _ in range(self.levels + 3)]
            for level in range(self.levels):
                for norm in self._level_norms:
                    norm.level = level
                image = x if level == 0 else resize(x, [s // 2 ** level for s in size])
                for stage, pre in enumerate(self._encode(image)):
                    by_resolution[level + stage].append(self.projections[3 - stage](pre))
            for norm in self._level_norms:
                norm.level = 0
            h = by_resolution[-1][0]
            for up, maps in zip(self.upsample, by_resolution[-2::-1], strict=True):
                h = up(h, torch.stack(maps).sum(0))
        return resize(self.logits(h), size)

