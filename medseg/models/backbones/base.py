"""The backbone base class and the layers every backbone family shares.

A backbone is an encoder that returns feature maps at several resolutions: ``forward(x)`` maps
``(B, in_channels, *spatial)`` to a list of tensors ``(B, out_channels[i], *spatial / strides[i])``, highest resolution
first. :attr:`Backbone.out_channels` and :attr:`Backbone.strides` describe the levels, so decoders (FCN, DeepLab,
PSPNet, U-Net-style heads) can be built without running the network.

``output_stride`` (8, 16 or 32) follows DeepLab (Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv:1706.05587, Section 3.1): the striding of the last stages is replaced by dilation (atrous
convolution) so that the final feature map is ``spatial / output_stride``; the weights are unchanged, so a network
pretrained at output stride 32 is used at 8 or 16 as is. The first block of a stage whose stride is removed keeps the
previous dilation, the others use the new one (torchvision's ``replace_stride_with_dilation``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.blocks import ActSpec, NormSpec, make_act, make_norm

__all__ = ["RELU", "Backbone", "ConvNormActD", "StageSchedule", "conv_nd", "make_divisible", "stage_schedule"]

RELU: ActSpec = ("relu", {"inplace": True})


def conv_nd(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Module:
    """Convolution with "same" padding ``dilation * (kernel_size // 2)``, dilation and groups (MONAI's factory).

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *ceil(spatial / stride))``.
    """
    return Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
        dilation=dilation, groups=groups, bias=bias,
    )


class ConvNormActD(nn.Sequential):
    """Convolution (with dilation and groups), normalisation and activation; submodules ``conv``, ``norm``, ``act``.

    The dilated and grouped counterpart of :class:`medseg.models.blocks.ConvNormAct` (same submodule names), used by
    the backbones for atrous and depthwise convolutions.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *ceil(spatial / stride))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel size (odd).
        stride: Stride.
        dilation: Dilation (atrous rate).
        groups: Convolution groups (``in_channels`` for a depthwise convolution).
        bias: Whether the convolution has a bias.
        norm: Normalisation or ``None``.
        act: Activation or ``None``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: NormSpec = "batch",
        act: ActSpec = RELU,
    ) -> None:
        super().__init__()
        self.add_module("conv", conv_nd(spatial_dims, in_channels, out_channels, kernel_size, stride, dilation, groups,
                                        bias))
        norm_layer = make_norm(norm, spatial_dims, out_channels)
        if norm_layer is not None:
            self.add_module("norm", norm_layer)
        act_layer = make_act(act, out_channels)
        if act_layer is not None:
            self.add_module("act", act_layer)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value`` nor 10% below ``value``.

    The channel rounding of MobileNetV2 (Sandler et al., 2018; the ``_make_divisible`` of the reference code) used by
    the width multipliers of every backbone here.
    """
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


StageSchedule = list[tuple[int, int, int]]


def stage_schedule(strides: Sequence[int], output_stride: int, start_stride: int = 1) -> StageSchedule:
    """Per stage ``(stride, first_dilation, dilation)`` that caps the total stride at ``output_stride``.

    Once the accumulated stride would exceed ``output_stride``, a stage's stride becomes 1 and the dilation is
    multiplied by the nominal stride instead; the first block of that stage keeps the previous dilation.

    Args:
        strides: Nominal stride of each stage.
        output_stride: The largest total stride wanted.
        start_stride: Total stride before the first of these stages.
    """
    current, dilation, out = start_stride, 1, []
    for s in strides:
        previous = dilation
        if current * s > output_stride:
            dilation *= s
            s = 1
        else:
            current *= s
        out.append((s, previous, dilation))
    return out


class Backbone(nn.Module):
    """Base class of the backbones: an encoder returning a list of multi-scale feature maps.

    Subclasses fill :attr:`out_channels` and :attr:`strides` (one entry per returned level, strides per axis as one
    integer, highest resolution first) in their constructor.

    Args:
        spatial_dims: 2 or 3 (backbones that cannot be 3D set :attr:`supports_3d` to ``False``).
        in_channels: Input channels C_in.
        output_stride: Stride of the last feature map; one of :attr:`allowed_output_strides`.
    """

    registry_name: str = ""
    supports_3d: bool = True
    allowed_output_strides: tuple[int, ...] = (8, 16, 32)

    def __init__(self, spatial_dims: int, in_channels: int, output_stride: int = 32) -> None:
        super().__init__()
        name = self.backbone_name
        if spatial_dims not in (2, 3):
            raise ModelError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if spatial_dims == 3 and not self.supports_3d:
            raise ModelError(f"{name}: this backbone is 2D only (spatial_dims=3 is not supported)")
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ModelError(f"{name}: in_channels must be a positive integer, got {in_channels!r}")
        if output_stride not in self.allowed_output_strides:
            raise ModelError(f"{name}: output_stride must be one of {self.allowed_output_strides}, got "
                             f"{output_stride!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.out_channels: list[int] = []
        self.strides: list[int] = []

    @property
    def backbone_name(self) -> str:
        """Registry key of the backbone (the class name when it is not registered)."""
        return self.registry_name or type(self).__name__

    def check_input(self, x: torch.Tensor) -> None:
        """Check that ``x`` is ``(B, in_channels, *spatial)`` with ``spatial_dims`` spatial axes.

        Raises:
            ModelError: The rank or the channel count is wrong.
        """
        if x.dim() != 2 + self.spatial_dims:
            raise ModelError(f"{self.backbone_name}: expected a {2 + self.spatial_dims}-d input (B, C, *spatial), got "
                             f"shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ModelError(f"{self.backbone_name}: expected {self.in_channels} input channels, got shape "
                             f"{tuple(x.shape)}")

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The ImageNet classifier of the reference implementation, for parameter counting (no forward use).

        Subclasses return the layers torchvision/timm attach after the features (e.g. ResNet's ``fc``).
        """
        raise ModelError(f"{self.backbone_name}: no reference classifier head is defined")
