"""ESPNet and ESPNet-C (Mehta, Rastegari, Caspi, Shapiro & Hajishirzi, 2018), 2D and 3D.

Paper: S. Mehta, M. Rastegari, A. Caspi, L. Shapiro, H. Hajishirzi, "ESPNet: Efficient Spatial Pyramid of Dilated
Convolutions for Semantic Segmentation", ECCV 2018 (arXiv:1803.06815), Section 3 (ESP module; the path from
ESPNet-A to ESPNet); the authors' PyTorch code (github.com/sacmehta/ESPNet, ``train/Model.py``).

Layout:

* ESP module: reduce (1x1 convolution to ``d = M / K`` channels), split and transform (``K = 5`` parallel
  3x3 convolutions dilated by ``2^(k-1)``, k = 1..5), hierarchical feature fusion (HFF: the outputs of the dilated
  branches are summed cumulatively, smallest dilation first, before concatenation, which removes gridding artefacts),
  merge (concatenation to ``M`` channels), residual connection, BN and PReLU. The strided ESP module reduces with a
  3x3 convolution with stride 2 and has no residual. When ``M < 5`` (a decoder module with fewer than 5 classes) we
  use ``K = M`` branches so that every branch keeps at least one channel (the authors' code assumes ``M >= 5``).
* ESPNet-C: a 3x3 convolution with stride 2 (16 channels, BN, PReLU); the input image, average-pooled to
  1/2 and 1/4, is concatenated at the end of levels 1 and 2 ("input reinforcement"); a strided ESP module to 64 and
  ``alpha_2`` ESP modules (the level's first and last features concatenated); a strided ESP module to 128 and
  ``alpha_3`` ESP modules (concatenated to 256); a 1x1 convolution to the classes at 1/8, upsampled bilinearly.
* ESPNet: ESPNet-C's 1/8 class scores (BN) are upsampled by a 2x2 transposed convolution ("RUM"),
  concatenated with a 1x1 projection of the level-2 features to the classes, fused by BN + PReLU and an ESP module
  (``2C -> C``, no residual), upsampled again (transposed convolution, BN, PReLU), concatenated with the level-1
  features, fused by a 3x3 convolution (BN, PReLU) and upsampled by a last 2x2 transposed convolution to full size.

Paper configuration: ``alpha_2 = 2``, ``alpha_3 = 8`` (the authors' default; Cityscapes with 20 classes, 19 + void).
The input must be a multiple of 8 per axis. 3D from MONAI's factories (dilated 3x3x3 convolutions).

Parameter figure: the paper's tables could not be read here (secondary sources quote 0.36 M for ESPNet; the authors'
README: "the same number of parameters as ENet"), so the authors' code is the reference: their
``ESPNet(classes=20, p=2, q=8)`` has 365,109 parameters and ``ESPNet_Encoder(classes=20, p=2, q=8)`` (ESPNet-C)
349,449; we count exactly these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_norm, resample_linear
from medseg.models.realtime.cgnet import InputInjection, NormPReLU, conv_bn_prelu
from medseg.models.realtime.enet import BN_EPS3
from medseg.models.registry import PaperConfig, register_model

__all__ = ["ESPModule", "ESPNet"]


class ESPModule(nn.Module):
    """Efficient spatial pyramid module: reduce, split, dilated transform, HFF, merge, (residual), BN-PReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``, or ``*spatial / 2`` with ``stride=2``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (``M``).
        stride: 2 for the strided module (3x3 strided reduction, no residual).
        residual: Add the input when the shapes match (the decoder's module has none).
        branches: Number ``K`` of dilated branches (paper: 5; fewer when ``C_out < K``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 residual: bool = True, branches: int = 5) -> None:
        super().__init__()
        k = min(branches, out_channels)
        n = out_channels // k
        n1 = out_channels - (k - 1) * n
        conv = Conv[Conv.CONV, spatial_dims]
        ks = 3 if stride == 2 else 1
        self.reduce = conv(in_channels, n, kernel_size=ks, stride=stride, padding=ks // 2, bias=False)
        self.dilations = tuple(2**i for i in range(k))
        self.branches = nn.ModuleList(
            conv(n, n1 if i == 0 else n, kernel_size=3, padding=d, dilation=d, bias=False)
            for i, d in enumerate(self.dilations))
        self.residual = residual and stride == 1 and in_channels == out_channels
        self.out = NormPReLU(spatial_dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        y = self.reduce(x)
        outs = [self.branches[0](y)]
        fused: torch.Tensor | None = None
        for branch in self.branches[1:]:
            fused = branch(y) if fused is None else fused + branch(y)  # hierarchical feature fusion
            outs.append(fused)
        merged = torch.cat(outs, dim=1)
        return self.out(x + merged if self.residual else merged)


@register_model(
    "espnet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=20, params=365_109,
        source="official code github.com/sacmehta/ESPNet train/Model.py, ESPNet(classes=20, p=2, q=8) (the "
               "training default; Cityscapes 19 + void): 365,109; paper Section 3",
    ),
    divisor=8,
    test_kwargs={"channels": (8, 20, 40), "alpha": (1, 1)},
)
class ESPNet(SegmentationModel):
    """ESPNet (Mehta et al., ECCV 2018): ESP modules with hierarchical feature fusion; ESPNet-C without decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (also injected at 1/2 and 1/4).
        out_channels: Classes.
        channels: Widths of levels 1-3 (paper: 16, 64, 128; levels 2 and 3 at least 5).
        alpha: ESP modules at levels 2 and 3 (``alpha_2``, ``alpha_3``; paper: 2, 8).
        decoder: ESPNet with its light-weight decoder (``True``) or ESPNet-C (``False``: 1/8 scores upsampled
            bilinearly).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 64, 128),
        alpha: Sequence[int] = (2, 8),
        decoder: bool = True,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        c0, c1, c2 = (int(c) for c in channels)
        a2, a3 = (int(a) for a in alpha)
        if a2 < 1 or a3 < 1:
            raise ModelError(f"{self.model_name}: alpha must be at least 1 per level, got {tuple(alpha)}")
        self.input_divisor = (8,) * spatial_dims
        dims = spatial_dims
        self.level1 = conv_bn_prelu(dims, in_channels, c0, 3, 2)
        self.inject1 = InputInjection(dims, 1)
        self.inject2 = InputInjection(dims, 2)
        self.merge1 = NormPReLU(dims, c0 + in_channels)
        self.down2 = ESPModule(dims, c0 + in_channels, c1, stride=2)
        self.level2 = nn.Sequential(*[ESPModule(dims, c1, c1) for _ in range(a2)])
        self.merge2 = NormPReLU(dims, 2 * c1 + in_channels)
        self.down3 = ESPModule(dims, 2 * c1 + in_channels, c2, stride=2)
        self.level3 = nn.Sequential(*[ESPModule(dims, c2, c2) for _ in range(a3)])
        self.merge3 = NormPReLU(dims, 2 * c2)
        conv = Conv[Conv.CONV, dims]
        self.classifier = conv(2 * c2, out_channels, kernel_size=1, bias=False)
        self.decoder = decoder
        if decoder:
            k = out_channels
            up = Conv[Conv.CONVTRANS, dims]
            self.norm3 = make_norm(BN_EPS3, dims, k)
            self.up3 = up(k, k, kernel_size=2, stride=2, bias=False)
            self.project2 = conv(2 * c1 + in_channels, k, kernel_size=1, bias=False)
            self.fuse2 = nn.Sequential(NormPReLU(dims, 2 * k), ESPModule(dims, 2 * k, k, residual=False))
            self.up2 = nn.Sequential(up(k, k, kernel_size=2, stride=2, bias=False), NormPReLU(dims, k))
            self.fuse1 = conv_bn_prelu(dims, c0 + in_channels + k, k, 3)
            self.up1 = up(k, k, kernel_size=2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        out1 = self.merge1(torch.cat([self.level1(x), self.inject1(x)], dim=1))
        first2 = self.down2(out1)
        out2 = self.merge2(torch.cat([self.level2(first2), first2, self.inject2(x)], dim=1))
        first3 = self.down3(out2)
        out3 = self.merge3(torch.cat([first3, self.level3(first3)], dim=1))
        scores = self.classifier(out3)
        if not self.decoder:
            return resample_linear(scores, x.shape[2:])
        y = self.up3(self.norm3(scores))
        y = self.up2(self.fuse2(torch.cat([self.project2(out2), y], dim=1)))
        return self.up1(self.fuse1(torch.cat([y, out1], dim=1)))
