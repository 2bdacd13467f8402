"""Components shared by the classic natural-image models (FCN to DeepLabv3+), one implementation each.

* :func:`build_backbone`: a backbone of :mod:`medseg.models.backbones` with the house options (``pretrained_backbone``
  loaded with :func:`medseg.models.backbones.load_pretrained`).
* :class:`FullyConvClassifier`: VGG's ``fc6``/``fc7`` as convolutions (FCN, DeepLab-LargeFOV, ParseNet, the
  dilated front-end, DeconvNet).
* :class:`BilinearUpsample`: a transposed convolution initialised (or fixed) to bilinear interpolation (FCN).
* :class:`MaxUnpool`: max unpooling with the encoder's pooling indices (SegNet, DeconvNet).
* :class:`L2Norm`: channel-wise L2 normalisation with a learned per-channel scale (ParseNet).
* :class:`ASPP`: DeepLabv3's atrous spatial pyramid pooling (1x1, atrous 3x3 branches, image pooling; separable
  branches for DeepLabv3+), and :class:`ASPPSum`: DeepLab v2's summed per-rate classifiers.
* :class:`PyramidPooling`: PSPNet's pyramid pooling module.
* :func:`set_multi_grid`: DeepLabv3's Multi-Grid unit rates in the last ResNet stage.
* :func:`resize`: (bi/tri)linear resizing of logits or features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones import Backbone, create_backbone
from medseg.models.backbones.base import RELU, ConvNormActD
from medseg.models.backbones.resnet import BasicBlock, Bottleneck
from medseg.models.backbones.xception import SeparableConv
from medseg.models.blocks import NormSpec, make_norm, resample_linear

__all__ = [
    "ASPP",
    "ASPPSum",
    "BilinearUpsample",
    "FullyConvClassifier",
    "L2Norm",
    "MaxUnpool",
    "PyramidPooling",
    "bilinear_kernel",
    "build_backbone",
    "resize",
    "set_block_dilations",
    "set_multi_grid",
]


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``x`` (``(B, C, *spatial)``) to ``size`` by (bi/tri)linear interpolation; a no-op when equal."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return resample_linear(x, size)


def build_backbone(
    name: str,
    spatial_dims: int,
    in_channels: int,
    output_stride: int | None,
    pretrained_backbone: str | None,
    backbone_kwargs: Mapping[str, Any] | None,
    model_name: str,
) -> Backbone:
    """Create backbone ``name`` (see :func:`medseg.models.backbones.create_backbone`) for the model ``model_name``.

    Raises:
        ModelError: Unknown backbone or option; the message names the model.
    """
    try:
        return create_backbone(name, spatial_dims, in_channels, output_stride=output_stride,
                               pretrained=pretrained_backbone, **dict(backbone_kwargs or {}))
    except ModelError as err:
        raise ModelError(f"{model_name}: {err}") from err


class FullyConvClassifier(nn.Sequential):
    """VGG-16's fully connected ``fc6`` and ``fc7`` cast as convolutions, each with ReLU and dropout.

    Long et al. (FCN, CVPR 2015, Section 3.1): ``fc6`` becomes a 7x7 convolution with 4096 channels and ``fc7`` a
    1x1 convolution with 4096 channels. DeepLab-LargeFOV (Chen et al., ICLR 2015, Section 3.1) subsamples them to a
    3x3 ``fc6`` with dilation 12 and 1024 channels; the dilated front-end (Yu & Koltun, ICLR 2016) keeps the 7x7
    ``fc6`` with dilation 4. Padding is "same" (``dilation * (kernel // 2)``) unless ``padding`` is given (DeconvNet
    uses the unpadded 7x7 ``fc6``).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, channels, *spatial')`` (``spatial' = spatial`` with "same" padding).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (512 after VGG's ``pool5``).
        channels: Channels of ``fc6`` and ``fc7``.
        kernel_size: Kernel of ``fc6``.
        dilation: Dilation of ``fc6``.
        dropout: Dropout probability after each ReLU (0.5 in the papers).
        padding: Padding of ``fc6``; ``None`` for "same".
        norm: Normalisation after each convolution (DeconvNet: batch norm), or ``None``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: int = 4096,
        kernel_size: int = 7,
        dilation: int = 1,
        dropout: float = 0.5,
        padding: int | None = None,
        norm: NormSpec = None,
    ) -> None:
        super().__init__()
        pad = dilation * (kernel_size // 2) if padding is None else padding
        self.add_module("fc6", Conv[Conv.CONV, spatial_dims](in_channels, channels, kernel_size=kernel_size,
                                                              padding=pad, dilation=dilation, bias=norm is None))
        if norm is not None:
            self.add_module("norm6", make_norm(norm, spatial_dims, channels))
        self.add_module("relu6", nn.ReLU(inplace=True))
        if dropout > 0:
            self.add_module("drop6", nn.Dropout(dropout))
        self.add_module("fc7", ConvNormActD(spatial_dims, channels, channels, 1, bias=norm is None, norm=norm,
                                            act=RELU))
        if dropout > 0:
            self.add_module("drop7", nn.Dropout(dropout))
        self.out_channels = channels


def bilinear_kernel(factor: int, spatial_dims: int) -> torch.Tensor:
    """The ``(2 * factor)**spatial_dims`` (bi/tri)linear interpolation kernel of a transposed convolution.

    FCN's ``upsample_filt`` (the reference ``surgery.py``): ``1 - |i - c| / f`` per axis with ``c = f - 0.5`` for a
    kernel of size ``2f``; the product over the axes.
    """
    size = 2 * factor
    center = factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * filt
    return kernel


class BilinearUpsample(nn.Module):
    """Channel-wise upsampling by ``factor`` with a transposed convolution initialised to bilinear interpolation.

    FCN (Long et al., CVPR 2015, Section 3.3 and 4.2): upsampling is a "backwards convolution" (deconvolution) with
    output stride ``f``, kernel ``2f`` and bilinear initialisation; "the final layer deconvolutional filters are fixed
    to bilinear interpolation, while intermediate upsampling layers are initialized to bilinear upsampling, and then
    learned". A learned layer is a full ``C -> C`` transposed convolution without bias (the Caffe ``Deconvolution``
    with ``bias_term: false``) whose initial weight is the bilinear kernel on the diagonal; a fixed one is a buffer
    applied per channel (no parameters). Padding ``f // 2`` makes the output exactly ``factor`` times the input.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *(spatial * factor))``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        factor: Upsampling factor (>= 2).
        learnable: Learned weights (``True``) or fixed bilinear interpolation.
    """

    def __init__(self, spatial_dims: int, channels: int, factor: int, learnable: bool = True) -> None:
        super().__init__()
        if factor < 2:
            raise ModelError(f"BilinearUpsample: factor must be >= 2, got {factor}")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.factor = factor
        self.learnable = learnable
        self.padding = factor // 2
        kernel = bilinear_kernel(factor, spatial_dims)
        if learnable:
            self.deconv = Conv[Conv.CONVTRANS, spatial_dims](channels, channels, kernel_size=2 * factor, stride=factor,
                                                             padding=factor // 2, bias=False)
            if self.deconv.weight.device.type != "meta":
                with torch.no_grad():
                    self.deconv.weight.zero_()
                    for c in range(channels):
                        self.deconv.weight[c, c] = kernel
        else:
            self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` by :attr:`factor`."""
        if self.learnable:
            return self.deconv(x)
        fn = nn.functional.conv_transpose2d if self.spatial_dims == 2 else nn.functional.conv_transpose3d
        return fn(x, self.kernel.to(x.dtype), stride=self.factor, padding=self.padding, groups=self.channels)


class MaxUnpool(nn.Module):
    """Max unpooling by ``size`` with the indices of the matching max pooling (SegNet, DeconvNet).

    Badrinarayanan et al. (SegNet, TPAMI 2017, Section 3): "the decoder upsamples its input feature map(s) using the
    memorized max-pooling indices from the corresponding encoder feature map(s)", a sparse map with the values at
    the remembered positions and zeros elsewhere. MONAI has no unpooling factory; this picks PyTorch's 2D/3D layer.

    Shapes: ``(B, C, *spatial)`` and indices of the same shape to ``(B, C, *output_size)``.

    Args:
        spatial_dims: 2 or 3.
        size: Kernel size = stride of the pooling.
    """

    def __init__(self, spatial_dims: int, size: int = 2) -> None:
        super().__init__()
        self.unpool = {2: nn.MaxUnpool2d, 3: nn.MaxUnpool3d}[spatial_dims](kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        """Place ``x`` at ``indices`` of a zero map of spatial size ``output_size``."""
        return self.unpool(x, indices, output_size=list(output_size))


def max_pool_with_indices(spatial_dims: int, size: int = 2) -> nn.Module:
    """Max pooling (kernel = stride = ``size``) that also returns the argmax indices (SegNet's encoder pooling)."""
    return Pool[Pool.MAX, spatial_dims](kernel_size=size, stride=size, return_indices=True)


__all__ += ["max_pool_with_indices"]


class L2Norm(nn.Module):
    """L2 normalisation over the channels with a learned per-channel scale (ParseNet, Liu et al., 2015, Eq. 1-4).

    ``y_i = gamma_i * x_i / ||x||_2`` at every location; ``gamma`` is learned ("we learn the scaling parameter
    gamma_i for each channel", Section 3.3). A global (``1 x ... x 1``) feature is normalised the same way.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        channels: C.
        scale: Initial value of every ``gamma_i``.
        eps: Guard against division by zero.
    """

    def __init__(self, channels: int, scale: float = 10.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` channel-wise and rescale it."""
        x = x / x.norm(p=2, dim=1, keepdim=True).clamp_min(self.eps)
        return x * self.weight.view(1, -1, *([1] * (x.dim() - 2)))


class ASPPSum(nn.Module):
    """DeepLab v2's ASPP for ResNet-101: one 3x3 atrous classifier per rate, the score maps summed.

    Chen et al., "DeepLab: ... Atrous Convolution, and Fully Connected CRFs", TPAMI 2018 (arXiv:1606.00915),
    Section 3.1 and Fig. 4 (ASPP-L, rates 6, 12, 18, 24): "the features extracted for each sampling rate are further
    processed in separate branches and fused"; for ResNet-101 each branch is a single 3x3 convolution with the rate
    producing the class scores (the reference ``fc1_c0``-``fc1_c3`` layers), and the branches are summed.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: Classes.
        rates: Atrous rates (paper: 6, 12, 18, 24).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            ConvNormActD(spatial_dims, in_channels, out_channels, 3, dilation=r, bias=True, norm=None, act=None)
            for r in self.rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum the per-rate class scores of ``x``."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class _ImagePooling(nn.Sequential):
    """Global average pooling, 1x1 convolution, BN, ReLU (ASPP's image-level features); upsampled in forward."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec) -> None:
        super().__init__(
            Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
            ConvNormActD(spatial_dims, in_channels, out_channels, 1, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` globally, project it and broadcast it back to the spatial size of ``x``."""
        return super().forward(x).expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLabv3 (and DeepLabv3+), 2D or 3D.

    Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587, Section 3.3:
    "ASPP consists of (a) one 1x1 convolution and three 3x3 convolutions with rates = (6, 12, 18) when output stride =
    16 (all with 256 filters and batch normalization), and (b) the image-level features"; the image-level features
    are global average pooling, a 1x1 convolution with 256 filters and BN, bilinearly upsampled. "The resulting
    features from all the branches are then concatenated and pass through another 1x1 convolution (also with 256
    filters and batch normalization)". DeepLabv3+ (Chen et al., ECCV 2018, Section 3.2) applies depthwise separable
    convolution to the atrous branches (``separable=True``: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU, as
    the reference TensorFlow code) and a dropout of 0.1 after the projection (the reference code keeps 0.9).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        channels: Filters of every branch and of the projection (256).
        rates: Atrous rates of the 3x3 branches ((6, 12, 18) at output stride 16; doubled at 8).
        separable: Depthwise separable atrous branches (DeepLabv3+ with Xception).
        dropout: Dropout after the projection (0.1 in the reference implementations).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.1,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = [ConvNormActD(spatial_dims, in_channels, channels, 1, norm=norm)]
        for r in self.rates:
            if separable:
                branches.append(SeparableConv(spatial_dims, in_channels, channels, dilation=r, act=True, norm=norm))
            else:
                branches.append(ConvNormActD(spatial_dims, in_channels, channels, 3, dilation=r, norm=norm))
        branches.append(_ImagePooling(spatial_dims, in_channels, channels, norm))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormActD(spatial_dims, channels * len(branches), channels, 1, norm=norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the branches of ``x`` and project them."""
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module (Zhao et al., CVPR 2017, Section 3.2 and Fig. 3), 2D or 3D.

    "The pyramid pooling module fuses features under four different pyramid scales" (bins 1x1, 2x2, 3x3, 6x6,
    average pooling); "we use 1x1 convolution layer after each pyramid level to reduce the dimension of context
    representation to 1/N of the original one"; the levels are bilinearly upsampled to the feature size and
    concatenated with the input features. Each 1x1 convolution is followed by BN and ReLU (the reference Caffe and
    PyTorch implementations).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_in + len(bins) * reduction, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (2048 for ResNet-101).
        bins: Output sizes of the adaptive average poolings (paper: 1, 2, 3, 6).
        reduction: Channels of each level (``C_in / len(bins)`` when ``None``).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6),
                 reduction: int | None = None, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.bins = tuple(bins)
        red = reduction or in_channels // len(self.bins)
        self.levels = nn.ModuleList(
            nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](b), ConvNormActD(spatial_dims, in_channels, red, 1,
                                                                                 norm=norm))
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * red

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``x`` with its upsampled pyramid levels."""
        size = x.shape[2:]
        return torch.cat([x, *(resize(level(x), size) for level in self.levels)], dim=1)


def set_block_dilations(backbone: Backbone, stage: str, rates: Sequence[int]) -> None:
    """Set the dilation (and "same" padding) of the 3x3 convolutions of each block of a ResNet ``stage``.

    Only the dilation and padding change; the weights are untouched. A bottleneck has one 3x3 convolution
    (``conv2``), a basic block two (``conv1``, ``conv2``).

    Raises:
        ModelError: The backbone has no such stage, a block is not a ResNet block, or ``rates`` does not give one rate
            per block.
    """
    layer = getattr(backbone, stage, None)
    if layer is None:
        raise ModelError(f"setting block dilations needs a ResNet backbone (with {stage}), got "
                         f"{backbone.backbone_name}")
    blocks = list(layer)
    if len(rates) != len(blocks):
        raise ModelError(f"{stage} has {len(blocks)} blocks; got {len(rates)} rates {tuple(rates)}")
    for block, d in zip(blocks, rates, strict=True):
        if isinstance(block, Bottleneck):
            convs = [block.conv2]
        elif isinstance(block, BasicBlock):
            convs = [block.conv1, block.conv2]
        else:
            raise ModelError(f"{stage}: unsupported block type {type(block).__name__}")
        for c in convs:
            c.conv.dilation = (int(d),) * backbone.spatial_dims
            c.conv.padding = (int(d),) * backbone.spatial_dims


def set_multi_grid(backbone: Backbone, grid: Sequence[int]) -> list[int]:
    """Set DeepLabv3's Multi-Grid unit rates in the last stage (``layer4``) of a ResNet backbone; returns the rates.

    Chen et al. (arXiv:1706.05587, Section 3.2): "we define as Multi_Grid = (r1, r2, r3) the unit rates for the three
    convolutional layers within block4. The final atrous rate for the convolutional layer is equal to the
    multiplication of the unit rate and the corresponding rate", e.g. rates 2 * (1, 2, 4) = (2, 4, 8) at output stride
    16. The rate of a stage is the dilation its stride was replaced by (1 at output stride 32, 2 at 16, 4 at 8).

    Raises:
        ModelError: The backbone is not a ResNet or the grid does not have one rate per block of ``layer4``.
    """
    rate = {32: 1, 16: 2, 8: 4}[backbone.output_stride]
    rates = [rate * int(unit) for unit in grid]
    set_block_dilations(backbone, "layer4", rates)
    return rates
