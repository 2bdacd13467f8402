"""SSMA: self-supervised model adaptation fusion of two AdapNet++ streams (Valada et al., IJCV 2019), 2D and 3D.

Paper: A. Valada, R. Mohan, W. Burgard, "Self-Supervised Model Adaptation for Multimodal Semantic Segmentation",
International Journal of Computer Vision 128, 2020 (online 2019; arXiv:1808.03833), Sections 3 (AdapNet++) and 4
(SSMA), Figs. 2, 6, 7; official TensorFlow code github.com/DeepSceneSeg/SSMA (``models/SSMA.py``,
``models/ssma_helper.py``, ``models/network_base.py``).

Layout. Two modality-specific AdapNet++ encoders ("experts"), each: BN of the input; 7x7 convolution with stride 2
(64), 3x3 max pooling with stride 2; a full pre-activation ResNet-50 (3, 4, 6, 3 bottleneck units; 256/512/1024/2048
channels; strides 1, 2, 2, 1) whose later units are *multiscale residual units* (the 3x3 convolution split in two
halves, one with dilation 2: unit 4 of block 2, units 3-6 of block 3; in block 4 both halves dilated), output stride
16; the efficient ASPP (eASPP): a 1x1 branch, three cascaded-atrous branches (1x1 to 64, two 3x3 with rate 3/6/12,
1x1 to 256), image pooling, concatenation and a 1x1 projection to 256; and two skip projections (1x1 to 24 with BN)
of blocks 1 and 2 (strides 4 and 8). The first unit of block 1 takes its shortcut from the output of its first 1x1
convolution, as the code.

SSMA block (Fig. 6; Eq. 1-2): the two streams' features are concatenated, a bottleneck of two 3x3 convolutions
(reduction by 16 for the eASPP outputs, 512 -> 32 -> 512; 48 -> 8 -> 48 for the skips; ReLU, then sigmoid) gives
element-wise weights that recalibrate the concatenation, which is projected (1x1 convolution and BN to 256 for the
eASPP outputs; 3x3 convolution to 24 for the skips). Decoder (AdapNet++'s, Fig. 7): a 4x4 transposed convolution
with stride 2 and BN; the fused stride-8 skip weighted channel-wise by a 1x1 convolution of the globally pooled
decoder features, concatenated, two 3x3 convolutions (256); again at stride 4; a 1x1 convolution to the classes and a
8x8 transposed convolution with stride 4 and BN to the input resolution. With ``deep_supervision=True`` the two
auxiliary heads of the code (1x1 convolution and BN on each upsampled decoder map, resized to the input) are returned
in training, weighted 0.6 and 0.5 (``SSMA._create_loss``).

Input channels: the two modalities are two channel groups of the input; ``modality_channels`` gives their sizes
(default: the first ``ceil(C/2)`` channels and the rest, e.g. RGB + a 3-channel depth colouring as in the paper).

Differences from the code, none with parameters: the code trains SSMA with the two experts frozen (pretrained
AdapNet++ models, ``expert_not_fixed=False``); here every weight is trainable (freeze ``expert1``/``expert2`` to
follow the paper's second stage). The dropout of block 4 is inactive in the frozen experts and not built.

Parameter figure: no total is printed for SSMA; the official code at its configuration (Cityscapes, 12 classes =
11 + void, two 3-channel modalities, no auxiliary heads) has 56,182,428 parameters (counted from the variable shapes:
each expert 25,562,918, fusion and decoder 5,056,592). We count the same.

Dims: 2D (the paper) and 3D (every layer has a 3D counterpart).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv, make_norm
from medseg.models.registry import PaperConfig, register_model

__all__ = ["SSMA", "AdapNetPPEncoder", "SSMABlock", "split_two_modalities"]


def split_two_modalities(model_name: str, in_channels: int, groups: Sequence[int] | None,
                         default: tuple[int, int]) -> tuple[int, int]:
    """Channels of the two modality groups: ``groups`` if given, else ``default``.

    Raises:
        ModelError: Not two positive groups summing to ``in_channels``.
    """
    g = tuple(int(c) for c in groups) if groups is not None else default
    if len(g) != 2 or min(g) < 1 or sum(g) != in_channels:
        raise ModelError(f"{model_name}: needs two modality groups of positive size that sum to in_channels="
                         f"{in_channels}, got {g} (set modality_channels)")
    return g[0], g[1]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=False)


class _SplitConv(nn.Module):
    """AdapNet++'s multiscale 3x3 convolution: two halves of the filters, with dilation ``rates[0]``/``rates[1]``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, rates: tuple[int, int]) -> None:
        super().__init__()
        half = out_channels // 2
        self.a = Conv[Conv.CONV, spatial_dims](in_channels, half, kernel_size=3, padding=rates[0], dilation=rates[0],
                                               bias=False)
        self.b = Conv[Conv.CONV, spatial_dims](in_channels, out_channels - half, kernel_size=3, padding=rates[1],
                                               dilation=rates[1], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the two halves."""
        return torch.cat([self.a(x), self.b(x)], dim=1)


class _Unit(nn.Module):
    """Full pre-activation bottleneck unit of AdapNet++ (``unit_0``/``unit_1``/``unit_3``/``unit_4`` of the code).

    ``pre``: BN-ReLU of the input (absent when the input is already activated); ``conv1`` 1x1 + BN + ReLU; ``conv2``
    3x3 (strided, or split multiscale) + BN + ReLU; ``conv3`` 1x1 without BN; plus the identity or a 1x1 projection.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, pre: bool = True,
                 projection: bool = False, split: tuple[int, int] | None = None,
                 shortcut_from_conv1: bool = False) -> None:
        super().__init__()
        mid = out_channels // 4
        self.pre = nn.Sequential(make_norm("batch", spatial_dims, in_channels), nn.ReLU()) if pre else None
        self.conv1 = ConvNormActD(spatial_dims, in_channels, mid, 1)
        if split is None:
            self.conv2 = ConvNormActD(spatial_dims, mid, mid, 3, stride)
        else:
            self.conv2 = nn.Sequential(_SplitConv(spatial_dims, mid, mid, split), make_norm("batch", spatial_dims, mid),
                                       nn.ReLU(inplace=True))
        self.conv3 = make_conv(spatial_dims, mid, out_channels, 1, bias=False)
        self.shortcut_from_conv1 = shortcut_from_conv1
        self.shortcut: nn.Module | None = None
        if projection:
            src = mid if shortcut_from_conv1 else in_channels
            self.shortcut = Conv[Conv.CONV, spatial_dims](src, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map the (un-activated) unit input to the (un-activated) unit output."""
        x_act = self.pre(x) if self.pre is not None else x
        h = self.conv1(x_act)
        out = self.conv3(self.conv2(h))
        if self.shortcut is None:
            return out + x
        return out + self.shortcut(h if self.shortcut_from_conv1 else x_act)


class _EASPP(nn.Module):
    """Efficient ASPP of AdapNet++ (Fig. 5): 1x1, three cascaded atrous branches, image pooling, 1x1 projection."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, mid: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.a = ConvNormActD(spatial_dims, in_channels, channels, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(ConvNormActD(spatial_dims, in_channels, mid, 1),
                          ConvNormActD(spatial_dims, mid, mid, 3, dilation=r),
                          ConvNormActD(spatial_dims, mid, mid, 3, dilation=r),
                          ConvNormActD(spatial_dims, mid, channels, 1))
            for r in rates
        )
        self.pool = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                                  ConvNormActD(spatial_dims, in_channels, channels, 1))
        self.project = ConvNormActD(spatial_dims, channels * (2 + len(rates)), channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the eASPP features (no final activation, as the code)."""
        parts = [self.a(x), *(b(x) for b in self.branches), self.pool(x).expand(-1, -1, *x.shape[2:])]
        return self.project(torch.cat(parts, dim=1))


class AdapNetPPEncoder(nn.Module):
    """AdapNet++ encoder with eASPP and the two skip projections (one SSMA expert).

    Shapes: ``(B, C_in, *spatial)`` to ``(skip_s4 (B, s, *spatial/4), skip_s8 (B, s, *spatial/8),
    easpp (B, a, *spatial/16))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        width: Multiplier of every channel count.
        easpp_rates: Rates of the cascaded atrous branches (3, 6, 12).
    """

    def __init__(self, spatial_dims: int, in_channels: int, width: float = 1.0,
                 easpp_rates: Sequence[int] = (3, 6, 12)) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(round(c * width), 1)

        filters = [w(256), w(512), w(1024), w(2048)]
        self.input_norm = make_norm("batch", spatial_dims, in_channels)
        self.conv1 = ConvNormActD(spatial_dims, in_channels, w(64), 7, 2)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        f1, f2, f3, f4 = filters
        self.block1 = nn.Sequential(
            _Unit(spatial_dims, w(64), f1, pre=False, projection=True, shortcut_from_conv1=True),
            *[_Unit(spatial_dims, f1, f1) for _ in range(2)],
        )
        self.block1_out = nn.Sequential(make_norm("batch", spatial_dims, f1), nn.ReLU())
        self.block2 = nn.Sequential(
            _Unit(spatial_dims, f1, f2, stride=2, pre=False, projection=True),
            *[_Unit(spatial_dims, f2, f2) for _ in range(2)],
            _Unit(spatial_dims, f2, f2, split=(1, 2)),
        )
        self.block2_out = nn.Sequential(make_norm("batch", spatial_dims, f2), nn.ReLU())
        self.block3 = nn.Sequential(
            _Unit(spatial_dims, f2, f3, stride=2, pre=False, projection=True),
            _Unit(spatial_dims, f3, f3),
            *[_Unit(spatial_dims, f3, f3, split=(1, 2)) for _ in range(4)],
        )
        self.block4 = nn.Sequential(
            _Unit(spatial_dims, f3, f4, projection=True, split=(2, 2)),
            *[_Unit(spatial_dims, f4, f4, split=(2, 2)) for _ in range(2)],
        )
        self.block4_out = nn.Sequential(make_norm("batch", spatial_dims, f4), nn.ReLU())
        self.skip1 = ConvNormActD(spatial_dims, f1, w(24), 1, act=None)
        self.skip2 = ConvNormActD(spatial_dims, f2, w(24), 1, act=None)
        self.easpp = _EASPP(spatial_dims, f4, w(256), w(64), easpp_rates)
        self.skip_channels = w(24)
        self.out_channels = w(256)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the stride-4 skip, the stride-8 skip and the eASPP output."""
        x = self.pool(self.conv1(self.input_norm(x)))
        b1 = self.block1_out(self.block1(x))
        b2 = self.block2_out(self.block2(b1))
        b4 = self.block4_out(self.block4(self.block3(b2)))
        return self.skip1(b1), self.skip2(b2), self.easpp(b4)


class SSMABlock(nn.Module):
    """SSMA fusion: ``cat(x1, x2) * sigmoid(conv(relu(conv(cat))))``, then a projection (Eq. 1-2, Fig. 6).

    Shapes: two ``(B, C, *spatial)`` to ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C of each stream.
        reduced: Bottleneck channels (``2C / eta``).
        out_channels: Channels of the projection.
        project: ``"conv1x1_bn"`` (eASPP fusion) or ``"conv3x3"`` (skip fusion, with bias).
    """

    def __init__(self, spatial_dims: int, channels: int, reduced: int, out_channels: int,
                 project: str = "conv1x1_bn") -> None:
        super().__init__()
        self.reduce = make_conv(spatial_dims, 2 * channels, reduced, 3)
        self.expand = make_conv(spatial_dims, reduced, 2 * channels, 3)
        if project == "conv1x1_bn":
            self.project: nn.Module = ConvNormActD(spatial_dims, 2 * channels, out_channels, 1, act=None)
        elif project == "conv3x3":
            self.project = make_conv(spatial_dims, 2 * channels, out_channels, 3)
        else:
            raise ModelError(f"SSMABlock: project must be 'conv1x1_bn' or 'conv3x3', got {project!r}")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Fuse the two streams."""
        x = torch.cat([x1, x2], dim=1)
        weights = torch.sigmoid(self.expand(torch.relu(self.reduce(x))))
        return self.project(x * weights)


class _DecoderStage(nn.Module):
    """Transposed convolution (k4, s2) + BN; the skip weighted by a 1x1 map of the pooled features; two 3x3."""

    def __init__(self, spatial_dims: int, channels: int, skip_channels: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            Conv[Conv.CONVTRANS, spatial_dims](channels, channels, kernel_size=4, stride=2, padding=1, bias=False),
            make_norm("batch", spatial_dims, channels),
        )
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.skip_weight = ConvNormActD(spatial_dims, channels, skip_channels, 1)
        self.convs = nn.Sequential(ConvNormActD(spatial_dims, channels + skip_channels, channels, 3),
                                   ConvNormActD(spatial_dims, channels, channels, 3))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the decoder output and the upsampled map (for the auxiliary head)."""
        up = self.up(x)
        side = self.skip_weight(self.pool(up)) * skip
        return self.convs(torch.cat([up, side], dim=1)), up


@register_model(
    "ssma",
    family="multimodal",
    spatial_dims=(2, 3),
    paper_title="Self-Supervised Model Adaptation for Multimodal Semantic Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=6, out_channels=12, kwargs={"modality_channels": (3, 3)}, params=56_182_428,
        source="no total in the paper; official code github.com/DeepSceneSeg/SSMA models/SSMA.py (num_classes 12, "
               "has_aux_loss False), ssma_helper.py and network_base.py, counted from the variable shapes",
    ),
    divisor=16,
    deep_supervision=True,
    test_kwargs={"width": 0.125},
)
class SSMA(SegmentationModel):
    """SSMA (Valada et al., IJCV 2019): two AdapNet++ encoders fused by SSMA blocks, AdapNet++ decoder.

    Shapes: ``(B, in_channels, *spatial)`` (two channel groups) to ``(B, out_channels, *spatial)``, each spatial size
    a multiple of 16; in training with ``deep_supervision=True`` a list of three such maps (main, auxiliary heads at
    the stride-4 and stride-8 decoder maps, resized to the input).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels of both modalities together (paper: 3 + 3).
        out_channels: Classes (paper, Cityscapes: 12).
        modality_channels: Channels of modality 1 and 2 (default: ``ceil(C/2)`` and the rest).
        width: Multiplier of every channel count (1 = the paper).
        easpp_rates: eASPP rates (3, 6, 12).
        deep_supervision: Build the auxiliary heads and return them in training.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        modality_channels: Sequence[int] | None = None,
        width: float = 1.0,
        easpp_rates: Sequence[int] = (3, 6, 12),
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.groups = split_two_modalities(self.model_name, in_channels, modality_channels,
                                           (in_channels - in_channels // 2, in_channels // 2))

        def w(c: int) -> int:
            return max(round(c * width), 1)

        self.expert1 = AdapNetPPEncoder(spatial_dims, self.groups[0], width, easpp_rates)
        self.expert2 = AdapNetPPEncoder(spatial_dims, self.groups[1], width, easpp_rates)
        a, s = self.expert1.out_channels, self.expert1.skip_channels
        dec = w(256)
        self.fuse = SSMABlock(spatial_dims, a, w(32), dec)
        self.fuse_skip8 = SSMABlock(spatial_dims, s, w(8), s, project="conv3x3")
        self.fuse_skip4 = SSMABlock(spatial_dims, s, w(8), s, project="conv3x3")
        self.stage1 = _DecoderStage(spatial_dims, dec, s)
        self.stage2 = _DecoderStage(spatial_dims, dec, s)
        self.classes = ConvNormActD(spatial_dims, dec, out_channels, 1)
        self.final = nn.Sequential(
            Conv[Conv.CONVTRANS, spatial_dims](out_channels, out_channels, kernel_size=8, stride=4, padding=2,
                                               bias=False),
            make_norm("batch", spatial_dims, out_channels),
        )
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.aux4 = ConvNormActD(spatial_dims, dec, out_channels, 1, act=None)
            self.aux8 = ConvNormActD(spatial_dims, dec, out_channels, 1, act=None)
            self.deep_supervision_scales = [(1,) * spatial_dims] * 3
            self.loss_weights = (1.0, 0.6, 0.5)
        self.input_divisor = (16,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x``; in training with ``deep_supervision=True`` also return the two auxiliary outputs."""
        self.check_input(x)
        x1, x2 = x.split(self.groups, dim=1)
        s4_1, s8_1, e1 = self.expert1(x1)
        s4_2, s8_2, e2 = self.expert2(x2)
        y, up8 = self.stage1(self.fuse(e1, e2), self.fuse_skip8(s8_1, s8_2))
        y, up4 = self.stage2(y, self.fuse_skip4(s4_1, s4_2))
        out = self.final(self.classes(y))
        if not (self.training and self.deep_supervision):
            return out
        size = x.shape[2:]
        return [out, _resize(self.aux4(up4), size), _resize(self.aux8(up8), size)]
