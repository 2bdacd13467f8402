"""ESPNetv2 segmentation network (Mehta, Rastegari, Shapiro & Hajishirzi, 2019), 2D and 3D.

Paper: S. Mehta, M. Rastegari, L. Shapiro, H. Hajishirzi, "ESPNetv2: A Light-weight, Power Efficient, and General
Purpose Convolutional Neural Network", CVPR 2019 (arXiv:1811.11431), Section 3 (EESP unit, strided EESP with
input reinforcement) and its semantic segmentation experiments; the authors' code of the published segmentation
models, github.com/sacmehta/EdgeNets (``model/segmentation/espnetv2.py``, ``model/classification/espnetv2.py``,
``nn_layers/eesp.py``, ``efficient_pyramid_pool.py``, ``efficient_pt.py``; the repository the paper names,
sacmehta/ESPNetv2, is marked obsolete and refers to EdgeNets for its segmentation models).

Layout:

* EESP unit: a group 1x1 convolution (``K = 4`` groups, BN, PReLU) reduces ``C`` to ``C / K``;
  ``K`` depthwise 3x3 convolutions dilated by 1..4 (receptive fields 3, 5, 7, 9, capped per level and sorted), their
  outputs summed hierarchically (HFF) and concatenated; BN, PReLU, a group 1x1 convolution (``K`` groups, BN), the
  residual and a PReLU.
* Strided EESP: the EESP unit with stride-2 depthwise convolutions and without the residual produces
  ``C_out - C_in`` channels, concatenated with a 3x3 average pooling (stride 2) of the input; the input image,
  average-pooled to that resolution, passes a 3x3 convolution (BN, PReLU) and a 1x1 convolution (BN) to ``C_out``
  channels and is added ("input reinforcement"); PReLU.
* Encoder (ESPNetv2 at width ``s = 2``, levels 1-4 of the ImageNet network): 3x3 convolution with stride 2 (32),
  strided EESP to 128, strided EESP to 256 and 3 EESP units, strided EESP to 512 and 7 EESP units (output stride
  16; receptive-field limits 13, 11, 9, 7 per level).
* Decoder (segmentation network): at each of the levels 1/16, 1/8, 1/4, 1/2 an efficient pyramid pooling module
  (1x1 projection to ``min(C / 2, 16)`` channels, depthwise 3x3 convolutions at the scales 2, 1.5, 1, 0.5, 0.1 of the
  feature map, BN-PReLU, channel shuffle, a grouped 3x3 and a 1x1 convolution to 64, 48, 32 and finally the classes);
  between them the output is upsampled x2 and added to the encoder feature of that level, projected by an
  "efficient point-wise convolution" (a grouped 3x3 convolution re-weighted by a global-pooling sigmoid gate),
  followed by BN-PReLU. The classes at 1/2 are upsampled bilinearly to the input size.

The input must be a multiple of 16 per axis. 3D: every layer has a 3D counterpart (depthwise dilated 3x3x3
convolutions, 3D adaptive pooling in the pyramid).

Parameter figure: no parameter figure for the segmentation network could be read from the paper, so the authors' code is
the reference; their model table (EdgeNets ``model/segmentation/model_zoo/README.md``) lists 0.79 M parameters and 2.7
GFLOPs for ``s = 2.0`` on Cityscapes at 1024x512. Their ``ESPNetv2Segmentation(s=2.0, classes=20, dataset='city')`` (19
classes + background) has 789,242 parameters. We count 788,762: the same layers without the three PReLUs (96 + 128 + 256
= 480 parameters) that their strided EESP units construct but never apply (0.06 % below the recorded figure).
``FlopCounterMode`` counts 5.40 GFLOPs (a multiply-add = 2) at 512x1024, i.e. 2.70 G multiply-adds, as the authors' 2.7
GFLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import channel_shuffle, make_act, make_norm
from medseg.models.realtime.lednet import resize_aligned
from medseg.models.registry import PaperConfig, register_model

__all__ = ["EESP", "ESPNetv2", "EfficientPWConv", "EfficientPyramidPool", "StridedEESP"]

#: Channels of levels 1-4 per width ``s`` (the authors' ``sc_ch_dict``; level 5 is not used for segmentation).
ESPNETV2_WIDTHS: dict[float, tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128), 1.0: (32, 64, 128, 256), 1.25: (32, 80, 160, 320), 1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
#: Receptive-field limits of the EESP units at levels 2, 3, 4 and 5.
RECEPTIVE_LIMITS: tuple[int, ...] = (13, 11, 9, 7)


def cbr(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
        groups: int = 1, act: bool = True) -> ConvNormActD:
    """Convolution without bias, BN and (optionally) a per-channel PReLU: ESPNetv2's ``CBR`` / ``CB``."""
    return ConvNormActD(spatial_dims, in_channels, out_channels, kernel_size, stride, groups=groups, bias=False,
                        norm="batch", act="prelu" if act else None)


class NormPReLU5(nn.Sequential):
    """BN (eps 1e-5) and a per-channel PReLU: ESPNetv2's ``BR``. Shapes: ``(B, C, *spatial)`` to the same."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__(make_norm("batch", spatial_dims, channels), make_act("prelu", channels))


class EESP(nn.Module):
    """Extremely efficient spatial pyramid unit: group reduce, depthwise dilated pyramid with HFF, merge.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (divisible by ``branches``).
        out_channels: C_out (divisible by ``branches``, and ``C_out / branches`` too).
        stride: Stride of the depthwise convolutions.
        branches: ``K``, the number of parallel depthwise branches and of groups (paper: 4).
        receptive_limit: Largest receptive field of a branch; larger ones fall back to 3 (dilation 1).
        strided_output: Return the merged features before the residual and the activation (the strided EESP of
            :class:`StridedEESP` concatenates them with the pooled input first).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, branches: int = 4,
                 receptive_limit: int = 7, strided_output: bool = False) -> None:
        super().__init__()
        n = out_channels // branches
        if n * branches != out_channels or in_channels % branches or n % branches:
            raise ModelError(f"EESP: in ({in_channels}), out ({out_channels}) and out / {branches} must be divisible "
                             f"by the {branches} branches")
        self.reduce = cbr(spatial_dims, in_channels, n, 1, groups=branches)
        sizes = sorted(3 + 2 * i if 3 + 2 * i <= receptive_limit else 3 for i in range(branches))
        self.dilations = tuple((k - 1) // 2 for k in sizes)
        conv = Conv[Conv.CONV, spatial_dims]
        self.branches = nn.ModuleList(conv(n, n, kernel_size=3, stride=stride, padding=d, dilation=d, groups=n,
                                           bias=False) for d in self.dilations)
        self.merge = nn.Sequential(NormPReLU5(spatial_dims, out_channels),
                                   cbr(spatial_dims, out_channels, out_channels, 1, groups=branches, act=False))
        self.strided_output = strided_output
        self.act = None if strided_output else make_act("prelu", out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        y = self.reduce(x)
        outs = [self.branches[0](y)]
        for branch in self.branches[1:]:
            outs.append(outs[-1] + branch(y))  # hierarchical feature fusion
        out = self.merge(torch.cat(outs, dim=1))
        if self.act is None:
            return out
        if out.shape == x.shape:
            out = out + x
        return self.act(out)


class StridedEESP(nn.Module):
    """Strided EESP with input reinforcement: ``[avgpool(x), EESP_s2(x)] + proj(pooled image)``, PReLU.

    Shapes: ``(B, C_in, *spatial)`` (and the image ``(B, C_img, *spatial_img)``) to ``(B, C_out, *spatial / 2)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        image_channels: Channels of the input image used for reinforcement.
        branches: EESP branches.
        receptive_limit: EESP receptive-field limit.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, image_channels: int,
                 branches: int = 4, receptive_limit: int = 9) -> None:
        super().__init__()
        self.eesp = EESP(spatial_dims, in_channels, out_channels - in_channels, 2, branches, receptive_limit,
                         strided_output=True)
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.reinforce = nn.Sequential(cbr(spatial_dims, image_channels, image_channels, 3),
                                       cbr(spatial_dims, image_channels, out_channels, 1, act=False))
        self.act = make_act("prelu", out_channels)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Downsample ``x`` by 2, reinforced by ``image`` average-pooled (3x3, stride 2) to the same size."""
        out = torch.cat([self.pool(x), self.eesp(x)], dim=1)
        while image.shape[2:] != out.shape[2:]:
            if any(i < o for i, o in zip(image.shape[2:], out.shape[2:], strict=True)):
                raise ModelError(f"ESPNetv2: cannot pool the image {tuple(image.shape)} to {tuple(out.shape)}")
            image = self.pool(image)
        return self.act(out + self.reinforce(image))


class EfficientPyramidPool(nn.Module):
    """Efficient pyramid pooling (EdgeNets ``EfficientPyrPool``): depthwise 3x3 convolutions at five scales.

    The features are projected (1x1, BN, PReLU) to ``proj`` channels; for each scale ``s`` (2, 1.5, 1, 0.5, 0.1) a
    depthwise 3x3 convolution runs at ``max(ceil(s * size), 5)`` per axis (bilinear resizing up, adaptive average
    pooling down, and back); the results are concatenated, BN-PReLU'd, channel-shuffled, merged by a grouped 3x3
    convolution (BN, PReLU) to ``proj`` channels and a 1x1 convolution to ``C_out`` (then BN-PReLU, except for the
    last module, whose 1x1 convolution has a bias instead).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.
    """

    scales: tuple[float, ...] = (2.0, 1.5, 1.0, 0.5, 0.1)

    def __init__(self, spatial_dims: int, in_channels: int, proj_channels: int, out_channels: int,
                 last: bool = False) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        p, k = proj_channels, len(self.scales)
        self.spatial_dims = spatial_dims
        self.project = cbr(spatial_dims, in_channels, p, 1)
        self.stages = nn.ModuleList(conv(p, p, kernel_size=3, padding=1, groups=p, bias=False) for _ in self.scales)
        self.merge_norm = NormPReLU5(spatial_dims, p * k)
        self.merge = nn.Sequential(cbr(spatial_dims, p * k, p, 3, groups=p),
                                   conv(p, out_channels, kernel_size=1, bias=last))
        self.out = nn.Identity() if last else NormPReLU5(spatial_dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        x = self.project(x)
        size = tuple(x.shape[2:])
        pool = nn.functional.adaptive_avg_pool2d if self.spatial_dims == 2 else nn.functional.adaptive_avg_pool3d
        outs = []
        for scale, stage in zip(self.scales, self.stages, strict=True):
            scaled = tuple(max(math.ceil(s * scale), 5) for s in size)
            if scale < 1.0:
                h = resize_aligned(stage(pool(x, scaled)), size)
            elif scale > 1.0:
                h = pool(stage(resize_aligned(x, scaled)), size)
            else:
                h = stage(x)
            outs.append(h)
        y = channel_shuffle(self.merge_norm(torch.cat(outs, dim=1)), len(self.scales))
        return self.out(self.merge(y))


class EfficientPWConv(nn.Module):
    """Efficient point-wise convolution (EdgeNets ``EfficientPWConv``): a gated grouped 3x3 convolution.

    A 3x3 convolution with ``gcd(C_in, C_out)`` groups (BN, PReLU) scaled by a global gate (average pooling, 1x1
    convolution, sigmoid).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                                  Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=False),
                                  nn.Sigmoid())
        self.expand = cbr(spatial_dims, in_channels, out_channels, 3, groups=math.gcd(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        return self.expand(x) * self.gate(x)


@register_model(
    "espnetv2",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="ESPNetv2: A Light-weight, Power Efficient, and General Purpose Convolutional Neural Network",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=20, kwargs={"scale": 2.0}, params=789_242,
        source="official code github.com/sacmehta/EdgeNets model/segmentation/espnetv2.py, "
               "ESPNetv2Segmentation(s=2.0, classes=20, dataset='city'): 789,242 including 480 unused PReLU "
               "parameters (model_zoo README: 0.79 M, 2.7 GFLOPs at 1024x512); paper Section 3 (EESP)",
    ),
    divisor=16,
    test_kwargs={"scale": 0.5, "repeats": (1, 1), "decoder_base": 4},
)
class ESPNetv2(SegmentationModel):
    """ESPNetv2 segmentation network (Mehta et al., CVPR 2019): EESP encoder, pyramid-pooling decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 16.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (also used for input reinforcement).
        out_channels: Classes.
        scale: Width ``s`` of the network (0.5, 1.0, 1.25, 1.5, 2.0; paper's segmentation network: 2.0).
        channels: Explicit widths of levels 1-4 instead of ``scale``.
        repeats: EESP units at levels 3 and 4 after the strided one (paper: 3, 7).
        decoder_base: Base width ``b`` of the decoder: 4b, 3b, 2b channels (paper: 16 for Cityscapes/VOC).
        branches: EESP branches ``K`` (paper: 4).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        scale: float = 2.0,
        channels: Sequence[int] | None = None,
        repeats: Sequence[int] = (3, 7),
        decoder_base: int = 16,
        branches: int = 4,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if channels is None:
            if scale not in ESPNETV2_WIDTHS:
                raise ModelError(f"{self.model_name}: scale must be one of {sorted(ESPNETV2_WIDTHS)}, got {scale!r}")
            channels = ESPNETV2_WIDTHS[scale]
        c1, c2, c3, c4 = (int(c) for c in channels)
        self.input_divisor = (16,) * spatial_dims
        dims, k, lim = spatial_dims, branches, RECEPTIVE_LIMITS
        self.level1 = cbr(dims, in_channels, c1, 3, 2)
        self.level2 = StridedEESP(dims, c1, c2, in_channels, k, lim[0])
        self.level3_0 = StridedEESP(dims, c2, c3, in_channels, k, lim[1])
        self.level3 = nn.Sequential(*[EESP(dims, c3, c3, 1, k, lim[2]) for _ in range(int(repeats[0]))])
        self.level4_0 = StridedEESP(dims, c3, c4, in_channels, k, lim[2])
        self.level4 = nn.Sequential(*[EESP(dims, c4, c4, 1, k, lim[3]) for _ in range(int(repeats[1]))])
        b = int(decoder_base)
        dec = (4 * b, 3 * b, 2 * b)
        proj = max(1, min(out_channels // 2, b))
        self.pyramid = nn.ModuleList([
            EfficientPyramidPool(dims, c4, proj, dec[0]), EfficientPyramidPool(dims, dec[0], proj, dec[1]),
            EfficientPyramidPool(dims, dec[1], proj, dec[2]),
            EfficientPyramidPool(dims, dec[2], proj, out_channels, last=True)])
        self.merge = nn.ModuleList([EfficientPWConv(dims, c3, dec[0]), EfficientPWConv(dims, c2, dec[1]),
                                    EfficientPWConv(dims, c1, dec[2])])
        self.merge_act = nn.ModuleList(NormPReLU5(dims, c) for c in dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        e1 = self.level1(x)
        e2 = self.level2(e1, x)
        e3 = self.level3(self.level3_0(e2, x))
        e4 = self.level4(self.level4_0(e3, x))
        y = self.pyramid[0](e4)
        for skip, merge, act, pyramid in zip((e3, e2, e1), self.merge, self.merge_act, self.pyramid[1:], strict=True):
            y = pyramid(act(merge(skip) + resize_aligned(y, skip.shape[2:])))
        return resize_aligned(y, x.shape[2:])
