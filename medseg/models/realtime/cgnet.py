"""CGNet (Wu, Tang, Zhang, Cao & Zhang, 2020), 2D and 3D.

Paper: T. Wu, S. Tang, R. Zhang, J. Cao, Y. Zhang, "CGNet: A Light-weight Context Guided Network for Semantic
Segmentation", IEEE Transactions on Image Processing 30:1169-1179, 2021 (online 2020; arXiv:1811.08201), Section 3
(CG block, CGNet architecture); the authors' PyTorch code (github.com/wutianyiRosun/CGNet, ``model/CGNet.py``).

Layout:

* Context guided (CG) block: a 1x1 convolution (BN, PReLU) reduces to ``C / 2`` channels; the local feature
  extractor ``f_loc`` (3x3 depthwise convolution) and the surrounding context extractor ``f_sur`` (3x3 depthwise
  convolution dilated by ``r``) run side by side and are concatenated into the joint feature ``f_joi`` (BN, PReLU);
  the global context extractor ``f_glo`` (global average pooling, two fully connected layers with reduction, sigmoid)
  re-weights its channels; a residual connection adds the input (global residual learning). The downsampling CG
  block starts with a 3x3 convolution with stride 2 to ``C`` channels, concatenates ``f_loc`` and ``f_sur`` to ``2C``
  (BN, PReLU), reduces them with a 1x1 convolution to ``C`` and re-weights with ``f_glo``; it has no residual.
* CGNet (CGNet_M3N21, the configuration of the Cityscapes results): stage 1 = three 3x3 convolutions (32 channels,
  the first with stride 2); the input image, average-pooled to the stage resolution, is concatenated before each
  downsampling ("input injection");
  stage 2 = a downsampling CG block to 64 channels and ``M - 1 = 2`` CG blocks (dilation 2, reduction 8); stage 3 = a
  downsampling CG block to 128 and ``N - 1 = 20`` CG blocks (dilation 4, reduction 16); the first and last features of
  each stage are concatenated (with BN and PReLU) before the next stage; a 1x1 convolution gives the class scores at
  1/8, bilinearly upsampled to the input size.

The input must be a multiple of 8 per axis. In 3D the depthwise, dilated and pooling layers are their 3D versions.

Parameter figure: the abstract gives "less than 0.5 M parameters" for CGNet (M3N21). We count 496,306 at
``in_channels=3, out_channels=19`` (Cityscapes), 0.7 % below 0.5 M and equal to the authors'
``Context_Guided_Network(classes=19, M=3, N=21)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Dropout, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_norm, resample_linear
from medseg.models.realtime.enet import BN_EPS3
from medseg.models.registry import PaperConfig, register_model

__all__ = ["CGBlock", "CGNet", "GlobalContext", "InputInjection", "NormPReLU"]


class NormPReLU(nn.Sequential):
    """BN (eps 1e-3) and a per-channel PReLU. Shapes: ``(B, C, *spatial)`` to the same."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__(make_norm(BN_EPS3, spatial_dims, channels), make_act("prelu", channels))


def conv_bn_prelu(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int,
                  stride: int = 1) -> ConvNormActD:
    """Convolution without bias, BN (eps 1e-3), PReLU: the ``CBR`` layer of CGNet and ESPNet."""
    return ConvNormActD(spatial_dims, in_channels, out_channels, kernel_size, stride, bias=False, norm=BN_EPS3,
                        act="prelu")


class GlobalContext(nn.Module):
    """CGNet's ``f_glo``: global average pooling, FC (``C -> C / r``), ReLU, FC, sigmoid; channel re-weighting.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)``.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by its learned global weight."""
        w = self.fc(x.flatten(2).mean(dim=2))
        return x * w.reshape(*w.shape, *([1] * (x.dim() - 2)))


class CGBlock(nn.Module):
    """Context guided block: local, surrounding, joint and global features, residual or downsampling.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``, or ``*spatial / 2`` with ``down=True``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        dilation: Dilation rate ``r`` of the surrounding context extractor.
        reduction: Reduction of ``f_glo``'s first fully connected layer.
        down: The downsampling variant (3x3 stride-2 convolution first, 1x1 reduction after the joint feature, no
            residual).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 2,
                 reduction: int = 16, down: bool = False) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        width = out_channels if down else out_channels // 2
        self.down = down
        self.residual = not down and in_channels == out_channels
        self.reduce_in = conv_bn_prelu(spatial_dims, in_channels, width, 3 if down else 1, 2 if down else 1)
        self.f_loc = conv(width, width, kernel_size=3, padding=1, groups=width, bias=False)
        self.f_sur = conv(width, width, kernel_size=3, padding=dilation, dilation=dilation, groups=width, bias=False)
        self.joint = NormPReLU(spatial_dims, 2 * width)
        self.reduce_out = conv(2 * width, out_channels, kernel_size=1, bias=False) if down else nn.Identity()
        self.f_glo = GlobalContext(out_channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial')``."""
        y = self.reduce_in(x)
        joint = self.reduce_out(self.joint(torch.cat([self.f_loc(y), self.f_sur(y)], dim=1)))
        out = self.f_glo(joint)
        return x + out if self.residual else out


class InputInjection(nn.Sequential):
    """The input image average-pooled ``times`` times (3x3, stride 2, padding 1): CGNet's and ESPNet's image pyramid.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial / 2**times)``.
    """

    def __init__(self, spatial_dims: int, times: int) -> None:
        super().__init__(*[Pool[Pool.AVG, spatial_dims](kernel_size=3, stride=2, padding=1) for _ in range(times)])


@register_model(
    "cgnet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="CGNet: A Light-weight Context Guided Network for Semantic Segmentation",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, params=500_000,
        source="IEEE TIP (arXiv:1811.08201), abstract: CGNet (M3N21) has less than 0.5 M parameters (Cityscapes, "
               "19 classes); layer details of github.com/wutianyiRosun/CGNet model/CGNet.py (496,306)",
    ),
    divisor=8,
    test_kwargs={"channels": (8, 16, 32), "blocks": (2, 2), "reductions": (4, 8)},
)
class CGNet(SegmentationModel):
    """CGNet (Wu et al., TIP 2020): context guided blocks in all stages, input injection, 1/8 classifier.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (injected again at 1/2 and 1/4).
        out_channels: Classes.
        channels: Widths of stages 1-3 (paper: 32, 64, 128).
        blocks: ``(M, N)``, CG blocks of stages 2 and 3 including the downsampling one (paper: 3, 21).
        dilations: Dilation of ``f_sur`` in stages 2 and 3 (paper: 2, 4).
        reductions: ``f_glo`` reductions in stages 2 and 3 (paper: 8, 16).
        dropout: Spatial dropout before the classifier (the authors' ``dropout_flag``: 0.1; off by default).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (3, 21),
        dilations: Sequence[int] = (2, 4),
        reductions: Sequence[int] = (8, 16),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        c1, c2, c3 = (int(c) for c in channels)
        m, n = (int(b) for b in blocks)
        if m < 2 or n < 2:
            raise ModelError(f"{self.model_name}: each of stages 2 and 3 needs at least 2 blocks (the downsampling one "
                             f"and a CG block whose output is concatenated), got blocks={tuple(blocks)}")
        self.input_divisor = (8,) * spatial_dims
        dims = spatial_dims
        self.stage1 = nn.Sequential(conv_bn_prelu(dims, in_channels, c1, 3, 2), conv_bn_prelu(dims, c1, c1, 3),
                                    conv_bn_prelu(dims, c1, c1, 3))
        self.inject1 = InputInjection(dims, 1)
        self.inject2 = InputInjection(dims, 2)
        self.merge1 = NormPReLU(dims, c1 + in_channels)
        self.down2 = CGBlock(dims, c1 + in_channels, c2, dilations[0], reductions[0], down=True)
        self.stage2 = nn.Sequential(*[CGBlock(dims, c2, c2, dilations[0], reductions[0]) for _ in range(m - 1)])
        self.merge2 = NormPReLU(dims, 2 * c2 + in_channels)
        self.down3 = CGBlock(dims, 2 * c2 + in_channels, c3, dilations[1], reductions[1], down=True)
        self.stage3 = nn.Sequential(*[CGBlock(dims, c3, c3, dilations[1], reductions[1]) for _ in range(n - 1)])
        self.merge3 = NormPReLU(dims, 2 * c3)
        self.dropout = Dropout[Dropout.DROPOUT, dims](dropout) if dropout > 0 else nn.Identity()
        self.classifier = Conv[Conv.CONV, dims](2 * c3, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        out1 = self.merge1(torch.cat([self.stage1(x), self.inject1(x)], dim=1))
        first2 = self.down2(out1)
        out2 = self.merge2(torch.cat([self.stage2(first2), first2, self.inject2(x)], dim=1))
        first3 = self.down3(out2)
        out3 = self.merge3(torch.cat([first3, self.stage3(first3)], dim=1))
        return resample_linear(self.classifier(self.dropout(out3)), x.shape[2:])
