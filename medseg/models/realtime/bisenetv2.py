"""BiSeNet V2, the bilateral network with guided aggregation (Yu et al., 2021), 2D and 3D.

Paper: C. Yu, C. Gao, J. Wang, G. Yu, C. Shen, N. Sang, "BiSeNet V2: Bilateral Network with Guided Aggregation for
Real-time Semantic Segmentation", IJCV 2021 (arXiv:2004.02147), Section 4 (Table 1 and the figures of the stem, the
context embedding, the gather-and-expand layer, the aggregation layer and the segmentation head). The authors
released no code (github.com/yu-changqian/BiSeNet holds a README only); the network is built from the paper's text.

Detail branch (Table 1): three stages of 3x3 convolutions (BN, ReLU): S1 64 channels (stride 2, then 1), S2 64
(stride 2, 1, 1), S3 128 (stride 2, 1, 1): wide and shallow, 1/8 of the input.

Semantic branch (Table 1, ``lambda = 1/4`` of the detail channels): the stem block (a 3x3 convolution with stride 2
to 16 channels; one path a 1x1 convolution to 8 channels and a 3x3 convolution with stride 2 to 16, the other a 3x3
max pooling with stride 2; concatenated and fused by a 3x3 convolution to 16 channels; 1/4), then gather-and-expand
(GE) layers (expansion ratio ``e = 6``): S3 GE(32, stride 2), GE(32); S4 GE(64, stride 2), GE(64); S5 GE(128, stride
2) and three GE(128), then the context embedding block (CE: global average pooling, BN, a 1x1 convolution with BN
and ReLU, broadcast addition to the input, a 3x3 convolution). A GE layer: a 3x3 convolution (BN, ReLU) that gathers
the features, a 3x3 depthwise convolution expanding them ``e`` times (BN), a 1x1 projection (BN), the identity added
and ReLU; the strided GE layer has two depthwise convolutions (the first strided and expanding) and a shortcut of a
strided 3x3 depthwise convolution (BN) and a 1x1 convolution (BN).

Bilateral guided aggregation (BGA): the detail map gives a 3x3 depthwise convolution (BN) plus a 1x1 convolution
(full resolution) and a 3x3 convolution with stride 2 (BN) plus 3x3 average pooling with stride 2 (1/4 of it); the
semantic map gives a 3x3 convolution (BN) upsampled by 4 and a 3x3 depthwise convolution (BN) plus a 1x1 convolution,
both through a sigmoid. Each detail path is gated by the semantic path of its resolution; the low one is upsampled by
4, the two are summed and fused by a 3x3 convolution (BN, ReLU). The segmentation head (a 3x3 convolution with
``C_t`` channels, BN, ReLU, a 1x1 convolution to the classes) scores the 1/8 map; the result is upsampled to the
input.

Booster training: auxiliary segmentation heads on the stem (1/4), S3 (1/8), S4 (1/16) and S5 before the CE block
(1/32), only in training. With ``deep_supervision=True`` the model returns ``[main, aux_s2, aux_s3, aux_s4,
aux_s5]`` in training mode, each upsampled to the input (``deep_supervision_scales`` all 1) with ``loss_weights`` all
1 (the paper's ``alpha = 1`` for the auxiliary losses).

Choices where the paper leaves a width open: ``C_t`` is 1024 for the main head and 128 for the booster heads (the
widths of the widely used reimplementations, CoinCheung/BiSeNet and mmsegmentation's main head); the GE layer's first
3x3 convolution keeps the channels and the depthwise convolution expands them (``groups = C``, ``e`` filters each).

Dims: 2D and 3D (no layer is tied to RGB images); inputs divisible by 32.

Parameter figure: the paper's count could not be read and there is no official code, so ``params`` is ``None``. Ours
at the Cityscapes configuration (3 input channels, 19 classes): 3,358,627 without the booster heads (the unofficial
CoinCheung/BiSeNet reimplementation counts the same in its evaluation mode), 3,645,935 with them
(``paper_parameter_count`` builds the latter).
"""

from __future__ import annotations

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import RELU, ConvNormActD, conv_nd
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, PaddedAvgPool, make_act, make_conv, make_norm
from medseg.models.natural.classic._modules import resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["BiSeNetV2", "BilateralGuidedAggregation", "ContextEmbedding", "GatherExpand", "SegmentHead", "StemBlock"]


class StemBlock(nn.Module):
    """BiSeNet V2's stem block: 3x3/2 convolution, then a convolutional and a max-pooling path, fused (1/4).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C, *spatial / 4)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 16, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.conv = ConvNormActD(spatial_dims, in_channels, channels, 3, 2, norm=norm)
        self.left = nn.Sequential(ConvNormActD(spatial_dims, channels, channels // 2, 1, norm=norm),
                                  ConvNormActD(spatial_dims, channels // 2, channels, 3, 2, norm=norm))
        self.right = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.fuse = ConvNormActD(spatial_dims, 2 * channels, channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C, *spatial / 4)``."""
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-expand layer (stride 1; stride 2 adds a depthwise convolution and a shortcut).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (``C_in`` when ``stride == 1``).
        stride: 1 or 2.
        expansion: Expansion ratio e (6).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        mid = in_channels * expansion
        layers: list[nn.Module] = [
            ConvNormActD(spatial_dims, in_channels, in_channels, 3, norm=norm),
            ConvNormActD(spatial_dims, in_channels, mid, 3, stride, groups=in_channels, norm=norm, act=None),
        ]
        if stride > 1:
            layers.append(ConvNormActD(spatial_dims, mid, mid, 3, groups=mid, norm=norm, act=None))
        layers.append(ConvNormActD(spatial_dims, mid, out_channels, 1, norm=norm, act=None))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module | None = None
        if stride > 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                ConvNormActD(spatial_dims, in_channels, in_channels, 3, stride, groups=in_channels, norm=norm,
                             act=None),
                ConvNormActD(spatial_dims, in_channels, out_channels, 1, norm=norm, act=None),
            )
        self.act = make_act(RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        return self.act(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


class ContextEmbedding(nn.Module):
    """Context embedding block: global pooling, BN, 1x1 convolution (BN, ReLU), addition, 3x3 convolution.

    Shapes: ``(B, C, *spatial)`` to the same.
    """

    def __init__(self, spatial_dims: int, channels: int, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.norm = make_norm(norm, spatial_dims, channels) or nn.Identity()
        self.conv_gap = ConvNormActD(spatial_dims, channels, channels, 1, norm=norm)
        self.conv_last = ConvNormActD(spatial_dims, channels, channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the global context of ``x`` into it."""
        return self.conv_last(x + self.conv_gap(self.norm(self.pool(x))))


class BilateralGuidedAggregation(nn.Module):
    """Bilateral guided aggregation layer: each branch gates the other at its resolution.

    Shapes: detail ``(B, C, *s)`` and semantic ``(B, C, *s / 4)`` to ``(B, C, *s)``.
    """

    def __init__(self, spatial_dims: int, channels: int = 128, norm: NormSpec = "batch") -> None:
        super().__init__()
        c = channels
        self.detail_keep = nn.Sequential(ConvNormActD(spatial_dims, c, c, 3, groups=c, norm=norm, act=None),
                                         conv_nd(spatial_dims, c, c, 1))
        self.detail_down = nn.Sequential(ConvNormActD(spatial_dims, c, c, 3, 2, norm=norm, act=None),
                                         PaddedAvgPool(spatial_dims, 3, 2, 1))
        self.semantic_up = ConvNormActD(spatial_dims, c, c, 3, norm=norm, act=None)
        self.semantic_keep = nn.Sequential(ConvNormActD(spatial_dims, c, c, 3, groups=c, norm=norm, act=None),
                                           conv_nd(spatial_dims, c, c, 1))
        self.fuse = ConvNormActD(spatial_dims, c, c, 3, norm=norm)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """Aggregate the detail (high resolution) and semantic (1/4 of it) maps."""
        high = self.detail_keep(detail) * torch.sigmoid(resize(self.semantic_up(semantic), detail.shape[2:]))
        low = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.fuse(high + resize(low, detail.shape[2:]))


class SegmentHead(nn.Sequential):
    """Segmentation head: 3x3 convolution with ``C_t`` channels (BN, ReLU), 1x1 convolution to the classes.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, num_classes, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, num_classes: int,
                 norm: NormSpec = "batch") -> None:
        super().__init__(ConvNormActD(spatial_dims, in_channels, channels, 3, norm=norm),
                         make_conv(spatial_dims, channels, num_classes, 1))


@register_model(
    "bisenetv2",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic Segmentation",
    paper_year=2021,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"deep_supervision": True}, params=None,
        source="IJCV 2021, Section 4 and Table 1 (Cityscapes, 19 classes, booster heads); the paper's parameter count "
               "could not be read and the authors released no code: built from the paper's text",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"detail_channels": (8, 8, 16), "semantic_channels": (4, 8, 8, 16), "expansion": 2,
                 "head_channels": 16, "aux_channels": 8},
)
class BiSeNetV2(SegmentationModel):
    """BiSeNet V2 (Yu et al., IJCV 2021): detail branch, semantic branch, guided aggregation, booster heads.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (spatial sizes divisible by 32); with
    ``deep_supervision=True`` in training mode a list of five such tensors (main, then the stem, S3, S4, S5 heads).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        detail_channels: Channels of the detail branch's stages S1-S3 (64, 64, 128).
        semantic_channels: Channels of the stem and of S3-S5 (16, 32, 64, 128); S5 must match the detail branch.
        expansion: GE expansion ratio e (6).
        head_channels: ``C_t`` of the main head (1024).
        aux_channels: ``C_t`` of the booster heads (128).
        norm: Normalisation.
        deep_supervision: Build the booster heads and return their scores in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        detail_channels: tuple[int, int, int] = (64, 64, 128),
        semantic_channels: tuple[int, int, int, int] = (16, 32, 64, 128),
        expansion: int = 6,
        head_channels: int = 1024,
        aux_channels: int = 128,
        norm: NormSpec = "batch",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if detail_channels[-1] != semantic_channels[-1]:
            raise ModelError(f"{self.model_name}: the detail and semantic branches must end with the same width, got "
                             f"{detail_channels[-1]} and {semantic_channels[-1]}")
        self.input_divisor = (32,) * spatial_dims
        d1, d2, d3 = detail_channels
        cbr = ConvNormActD
        self.detail = nn.Sequential(
            nn.Sequential(cbr(spatial_dims, in_channels, d1, 3, 2, norm=norm), cbr(spatial_dims, d1, d1, 3, norm=norm)),
            nn.Sequential(cbr(spatial_dims, d1, d2, 3, 2, norm=norm), cbr(spatial_dims, d2, d2, 3, norm=norm),
                          cbr(spatial_dims, d2, d2, 3, norm=norm)),
            nn.Sequential(cbr(spatial_dims, d2, d3, 3, 2, norm=norm), cbr(spatial_dims, d3, d3, 3, norm=norm),
                          cbr(spatial_dims, d3, d3, 3, norm=norm)),
        )
        s2, s3, s4, s5 = semantic_channels
        e = expansion
        self.stem = StemBlock(spatial_dims, in_channels, s2, norm)
        self.s3 = nn.Sequential(GatherExpand(spatial_dims, s2, s3, 2, e, norm),
                                GatherExpand(spatial_dims, s3, s3, 1, e, norm))
        self.s4 = nn.Sequential(GatherExpand(spatial_dims, s3, s4, 2, e, norm),
                                GatherExpand(spatial_dims, s4, s4, 1, e, norm))
        self.s5 = nn.Sequential(GatherExpand(spatial_dims, s4, s5, 2, e, norm),
                                *(GatherExpand(spatial_dims, s5, s5, 1, e, norm) for _ in range(3)))
        self.ce = ContextEmbedding(spatial_dims, s5, norm)
        self.bga = BilateralGuidedAggregation(spatial_dims, d3, norm)
        self.head = SegmentHead(spatial_dims, d3, head_channels, out_channels, norm)
        self.deep_supervision = deep_supervision
        self.boosters: nn.ModuleList | None = None
        if deep_supervision:
            self.boosters = nn.ModuleList(SegmentHead(spatial_dims, c, aux_channels, out_channels, norm)
                                          for c in semantic_channels)
            self.deep_supervision_scales = [(1,) * spatial_dims] * 5
            self.loss_weights = (1.0,) * 5

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        detail = self.detail(x)
        f2 = self.stem(x)
        f3 = self.s3(f2)
        f4 = self.s4(f3)
        f5 = self.s5(f4)
        main = resize(self.head(self.bga(detail, self.ce(f5))), size)
        if self.training and self.boosters is not None:
            return [main, *(resize(head(f), size) for head, f in zip(self.boosters, (f2, f3, f4, f5), strict=True))]
        return main
