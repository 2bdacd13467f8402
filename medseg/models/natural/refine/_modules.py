"""Components shared by the refine group (RefineNet, Light-Weight RefineNet, GCN, DFN, FPN, OCRNet, ...).

One implementation each, built with MONAI's layer factories so that every block works in 2D and 3D (the models that
are 2D-only say so themselves):

* :func:`build_backbone`: a backbone of :mod:`medseg.models.backbones` by name, plus ``resnet152`` (He et al., 2016,
  Table 1: bottleneck blocks (3, 8, 36, 3)), which the backbone registry lacks and which GCN and Light-Weight
  RefineNet use; it is composed from :class:`~medseg.models.backbones.resnet.ResNetBackbone`.
* :class:`ResidualConvUnit` (RefineNet's RCU), :class:`ChainedResidualPooling` (RefineNet's CRP; the light-weight
  variant uses 1x1 instead of 3x3 convolutions) and :class:`RefineNetBlock` (one RefineNet / Light-Weight RefineNet
  block), Lin et al., CVPR 2017, Figure 3, and Nekrasov et al., BMVC 2018, Figure 2.
* :class:`GlobalConvBlock` and :class:`BoundaryRefinement` of Peng et al., CVPR 2017, Figure 2.
* :class:`RefinementResidualBlock` and :class:`ChannelAttentionBlock` of Yu et al. (DFN), CVPR 2018, Figure 2.
* :func:`upsample_to` (bi/trilinear resampling to a given size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones import Backbone, create_backbone, list_backbones, load_pretrained
from medseg.models.backbones.base import ConvNormActD
from medseg.models.backbones.resnet import ResNetBackbone
from medseg.models.blocks import make_act, make_conv, resample_linear

__all__ = [
    "BoundaryRefinement",
    "ChainedResidualPooling",
    "ChannelAttentionBlock",
    "GlobalConvBlock",
    "RefineNetBlock",
    "RefinementResidualBlock",
    "ResidualConvUnit",
    "build_backbone",
    "upsample_to",
]

RESNET152_LAYERS = (3, 8, 36, 3)


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample ``x`` (``(B, C, *spatial)``) to ``size`` (bi/trilinear, ``align_corners=False``); no-op if equal."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return resample_linear(x, size)


def build_backbone(
    name: str,
    spatial_dims: int,
    in_channels: int,
    *,
    output_stride: int | None = None,
    pretrained: str | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """Build backbone ``name`` (any registered backbone, or ``"resnet152"``), loading ``pretrained`` if given.

    ``resnet152`` is :class:`ResNetBackbone` with ``layers=(3, 8, 36, 3)`` (He et al., 2016, Table 1); its weights load
    with the ResNet key maps of the registry (torchvision/timm layouts of ``resnet152``).

    Raises:
        ModelError: Unknown backbone name, or weights that do not fit.
    """
    kwargs = dict(backbone_kwargs or {})
    if name == "resnet152":
        backbone = ResNetBackbone(spatial_dims, in_channels, layers=RESNET152_LAYERS, block="bottleneck",
                                  output_stride=32 if output_stride is None else output_stride, **kwargs)
        backbone.registry_name = "resnet101"  # the key maps of the ResNet family (depth-independent)
        if pretrained is not None:
            load_pretrained(backbone, pretrained)
        return backbone
    if name not in list_backbones():
        raise ModelError(f"unknown backbone {name!r}; choose one of: {', '.join([*list_backbones(), 'resnet152'])}")
    return create_backbone(name, spatial_dims, in_channels, output_stride=output_stride, pretrained=pretrained,
                           **kwargs)


class ResidualConvUnit(nn.Module):
    """RefineNet's residual convolution unit (RCU): ``x + conv(relu(conv(relu(x))))``, no batch norm.

    Lin et al., CVPR 2017, Figure 3(b). As in the authors' code, only the first convolution of each unit has a bias.
    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        n_convs: Convolutions per unit (2).
    """

    def __init__(self, spatial_dims: int, channels: int, n_convs: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            make_conv(spatial_dims, channels, channels, 3, bias=(i == 0)) for i in range(n_convs)
        )
        self.act = make_act(("relu", {"inplace": False}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *spatial)`` to the same."""
        y = x
        for conv in self.convs:
            y = conv(self.act(y))
        return x + y


class ChainedResidualPooling(nn.Module):
    """Chained residual pooling (CRP): a chain of (max pooling 5, stride 1; convolution) blocks summed onto the input.

    Lin et al., CVPR 2017, Section 3.2 and Figure 3(d); the light-weight variant (Nekrasov et al., BMVC 2018, Figure
    2(f)) uses 1x1 instead of 3x3 convolutions. Each block pools the previous block's output; every block's output
    is added to the running sum (``x = x + top``), as in both authors' code. Convolutions have no bias.
    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        n_blocks: Pooling blocks in the chain (4 in the released RefineNet/Light-Weight RefineNet models).
        kernel_size: Convolution kernel (3 for RefineNet, 1 for Light-Weight RefineNet).
    """

    def __init__(self, spatial_dims: int, channels: int, n_blocks: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=5, stride=1, padding=2)
        self.convs = nn.ModuleList(
            make_conv(spatial_dims, channels, channels, kernel_size, bias=False) for _ in range(n_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *spatial)`` to the same."""
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = x + top
        return x


class GlobalConvBlock(nn.Module):
    """Global convolutional network block (GCN) of Peng et al., CVPR 2017, Figure 2(b): a separable large kernel.

    Two branches summed: ``(k x 1)`` then ``(1 x k)``, and ``(1 x k)`` then ``(k x 1)`` convolutions, with no
    normalisation or activation in between ("no ReLU after convolution layers"). 2D only.
    Shapes: ``(B, C_in, H, W)`` to ``(B, C_out, H, W)``.

    Args:
        in_channels: C_in.
        out_channels: C_out (the number of classes in the paper).
        kernel_size: k (15 in the paper's final model).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 15) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ModelError(f"GCN: kernel_size must be odd, got {kernel_size}")
        k = kernel_size
        self.left = nn.Sequential(make_conv(2, in_channels, out_channels, (k, 1)),
                                  make_conv(2, out_channels, out_channels, (1, k)))
        self.right = nn.Sequential(make_conv(2, in_channels, out_channels, (1, k)),
                                   make_conv(2, out_channels, out_channels, (k, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, H, W)`` to ``(B, C_out, H, W)``."""
        return self.left(x) + self.right(x)


class BoundaryRefinement(nn.Module):
    """Boundary refinement (BR) of Peng et al., CVPR 2017, Figure 2(c): ``x + conv3x3(relu(conv3x3(x)))``.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv1 = make_conv(spatial_dims, channels, channels, 3)
        self.act = make_act(("relu", {"inplace": True}))
        self.conv2 = make_conv(spatial_dims, channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *spatial)`` to the same."""
        return x + self.conv2(self.act(self.conv1(x)))


class RefinementResidualBlock(nn.Module):
    """Refinement residual block (RRB) of DFN (Yu et al., CVPR 2018, Figure 2(b)).

    A 1x1 convolution unifies the channels; then a residual branch conv3x3-BN-ReLU-conv3x3 is added and the sum goes
    through ReLU (no ReLU with ``final_act=False``, as in the prediction heads of the authors' TorchSeg code).
    Convolutions have no bias. Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        final_act: ReLU after the sum.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, final_act: bool = True) -> None:
        super().__init__()
        self.conv1x1 = make_conv(spatial_dims, in_channels, out_channels, 1, bias=False)
        self.branch = nn.Sequential(
            ConvNormActD(spatial_dims, out_channels, out_channels, 3),
            make_conv(spatial_dims, out_channels, out_channels, 3, bias=False),
        )
        self.act = make_act(("relu", {"inplace": True})) if final_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        x = self.conv1x1(x)
        return self.act(x + self.branch(x))


class ChannelAttentionBlock(nn.Module):
    """Channel attention block (CAB) of DFN (Yu et al., CVPR 2018, Figure 2(c)).

    The low- and high-stage features are concatenated and globally pooled; 1x1 convolution, ReLU, 1x1 convolution and
    a sigmoid give one weight per channel; the output is ``high + weight * low``.
    Shapes: two ``(B, C, *spatial)`` maps to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc1 = Conv[Conv.CONV, spatial_dims](2 * channels, channels, kernel_size=1)
        self.act = make_act(("relu", {"inplace": True}))
        self.fc2 = Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Weight ``low`` by the attention vector and add ``high``."""
        w = torch.sigmoid(self.fc2(self.act(self.fc1(self.pool(torch.cat([low, high], dim=1))))))
        return high + w * low


class RefineNetBlock(nn.Module):
    """One RefineNet block (Lin et al., CVPR 2017, Figure 3(a)) or its light-weight form (Nekrasov et al., BMVC 2018).

    Path of the authors' code for the ResNet models: the backbone map is reduced to ``features`` channels by a
    convolution (no bias); RefineNet runs two RCUs on it (adaptive convolution; the light-weight form has none).
    Multi-resolution fusion: when a lower-resolution path exists, this path gets one more convolution and the
    (already convolved) lower-resolution path, upsampled, is added; ReLU; chained residual pooling; RefineNet runs
    ``n_output_rcu`` RCUs (3 in the released models; the paper's Figure 3 draws one); finally an optional convolution
    to ``out_features`` channels prepares the output for the next, higher-resolution block. The convolutions are 3x3
    in RefineNet and 1x1 in the light-weight form.

    Shapes: ``(B, in_channels, *spatial)`` (and the lower path ``(B, features, *spatial / s)``) to
    ``(B, out_features or features, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Channels of the backbone map.
        features: Width of the block (512 for the 1/32 block, 256 for the others).
        out_features: Channels of the output convolution, or ``None`` for none (the last block).
        fuse: Whether a lower-resolution path is fused in (every block but the first).
        light: Light-weight form (1x1 convolutions, no RCUs).
        n_crp: Pooling blocks of the CRP.
        n_adapt_rcu: RCUs of the adaptive convolution.
        n_output_rcu: RCUs after the CRP.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: int,
        out_features: int | None,
        fuse: bool,
        light: bool = False,
        n_crp: int = 4,
        n_adapt_rcu: int = 2,
        n_output_rcu: int = 3,
    ) -> None:
        super().__init__()
        k = 1 if light else 3
        self.dimred = make_conv(spatial_dims, in_channels, features, k, bias=False)
        self.adapt = nn.Sequential(*[] if light else [ResidualConvUnit(spatial_dims, features)
                                                      for _ in range(n_adapt_rcu)])
        self.fuse_conv = make_conv(spatial_dims, features, features, k, bias=False) if fuse else None
        self.act = make_act(("relu", {"inplace": False}))
        self.crp = ChainedResidualPooling(spatial_dims, features, n_crp, k)
        self.output_rcu = nn.Sequential(*[] if light else [ResidualConvUnit(spatial_dims, features)
                                                           for _ in range(n_output_rcu)])
        self.out_conv = None if out_features is None else make_conv(spatial_dims, features, out_features, k,
                                                                    bias=False)

    def forward(self, x: torch.Tensor, lower: torch.Tensor | None = None) -> torch.Tensor:
        """Refine backbone map ``x``, fusing the upsampled ``lower`` path when given."""
        x = self.adapt(self.dimred(x))
        if self.fuse_conv is not None:
            if lower is None:
                raise ModelError("RefineNetBlock: this block fuses a lower-resolution path, none was given")
            x = self.fuse_conv(x) + upsample_to(lower, x.shape[2:])
        x = self.output_rcu(self.crp(self.act(x)))
        return x if self.out_conv is None else self.out_conv(x)
