"""Building blocks shared by the model zoo: one implementation of each.

Layers are chosen with MONAI's factories (``Conv[Conv.CONV, spatial_dims]``, ``Norm[...]``, ``Act[...]``,
``Pool[...]``), so every block works in 2D and 3D.

A normalisation or activation is given as a name or as ``(name, kwargs)``, e.g. ``"batch"`` or
``("instance", {"eps": 1e-5, "affine": True})``, ``("leakyrelu", {"negative_slope": 0.01})``; ``None`` means none.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from monai.networks.layers import Act, Conv, Norm, Pool
from torch import nn

from medseg.errors import ModelError

__all__ = [
    "ActSpec",
    "ConvNormAct",
    "NormSpec",
    "ResidualBlockD",
    "StackedConvNormAct",
    "as_tuple",
    "center_crop",
    "check_valid_unet_input",
    "make_act",
    "make_conv",
    "make_norm",
    "make_pool",
    "make_transposed_conv",
    "valid_unet_output_size",
]

NormSpec = Union[str, tuple[str, dict[str, Any]], None]  # noqa: UP007 - a runtime alias, readable on py3.10
ActSpec = Union[str, tuple[str, dict[str, Any]], None]  # noqa: UP007


def as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    """Return ``value`` as an ``n``-tuple (an int is repeated)."""
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"expected {n} values, got {out}")
    return out


def _split(spec: str | tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    name, kwargs = spec
    return name, dict(kwargs)


def make_norm(norm: NormSpec, spatial_dims: int, channels: int) -> nn.Module | None:
    """Normalisation layer for ``channels`` channels, or ``None`` (``norm=None``).

    ``"group"`` takes ``num_groups`` in its kwargs; every other kind takes the channel count first.
    """
    if norm is None:
        return None
    name, kwargs = _split(norm)
    if name.lower() == "group":
        return Norm[Norm.GROUP, spatial_dims](num_channels=channels, **kwargs)
    return Norm[name, spatial_dims](channels, **kwargs)


def make_act(act: ActSpec, channels: int | None = None) -> nn.Module | None:
    """Activation layer, or ``None``. A PReLU without ``num_parameters`` gets one slope per channel."""
    if act is None:
        return None
    name, kwargs = _split(act)
    if name.lower() == "prelu" and channels is not None:
        kwargs.setdefault("num_parameters", channels)
    return Act[name](**kwargs)


def make_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = "same",
    bias: bool = True,
) -> nn.Module:
    """Convolution; ``padding="same"`` pads ``kernel_size // 2`` per axis (odd kernels), ``"valid"`` pads 0."""
    k = as_tuple(kernel_size, spatial_dims)
    if padding == "same":
        pad: int | tuple[int, ...] = tuple(ki // 2 for ki in k)
    elif padding == "valid":
        pad = 0
    else:
        pad = padding if isinstance(padding, int) else tuple(padding)
    return Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, kernel_size=k, stride=as_tuple(stride, spatial_dims), padding=pad, bias=bias
    )


def make_transposed_conv(
    spatial_dims: int, in_channels: int, out_channels: int, stride: int | Sequence[int] = 2, bias: bool = True
) -> nn.Module:
    """Transposed convolution with kernel size = stride (the "up-convolution" of U-Net-like decoders)."""
    s = as_tuple(stride, spatial_dims)
    return Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=s, stride=s, bias=bias)


def make_pool(kind: str, spatial_dims: int, size: int | Sequence[int] = 2) -> nn.Module:
    """Max (``kind="max"``) or average (``"avg"``) pooling with kernel size = stride = ``size``."""
    s = as_tuple(size, spatial_dims)
    return Pool[kind, spatial_dims](kernel_size=s, stride=s)


class ConvNormAct(nn.Sequential):
    """Convolution, then (optional) dropout, normalisation and activation, in that order.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)`` (minus ``kernel - 1`` per axis when
    ``padding="valid"``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel size, one int or one per axis.
        stride: Stride, one int or one per axis.
        padding: ``"same"``, ``"valid"`` or explicit padding.
        bias: Whether the convolution has a bias.
        norm: Normalisation (see module docstring) or ``None``.
        act: Activation or ``None``.
        dropout: Dropout probability after the convolution (0 for none).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = "same",
        bias: bool = True,
        norm: NormSpec = None,
        act: ActSpec = ("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.add_module("conv", make_conv(spatial_dims, in_channels, out_channels, kernel_size, stride, padding, bias))
        if dropout > 0:
            self.add_module("dropout", nn.Dropout(dropout))  # element-wise, as in the papers' Caffe/Keras code
        norm_layer = make_norm(norm, spatial_dims, out_channels)
        if norm_layer is not None:
            self.add_module("norm", norm_layer)
        act_layer = make_act(act, out_channels)
        if act_layer is not None:
            self.add_module("act", act_layer)


class StackedConvNormAct(nn.Sequential):
    """``n`` :class:`ConvNormAct` blocks; the first maps C_in to C_out with ``stride``, the others keep C_out.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        n: Number of blocks (at least 1).
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel size of every block.
        stride: Stride of the first block.
        **kwargs: Further :class:`ConvNormAct` options (padding, bias, norm, act, dropout).
    """

    def __init__(
        self,
        n: int,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *[
                ConvNormAct(spatial_dims, in_channels if i == 0 else out_channels, out_channels, kernel_size,
                            stride if i == 0 else 1, **kwargs)
                for i in range(n)
            ]
        )


class ResidualBlockD(nn.Module):
    """Basic residual block in the ResNet-D form used by nnU-Net's residual encoder.

    Main path: conv-norm-act (with the stride), then conv-norm (no activation). Skip: identity, or average pooling
    with kernel = stride when strided, followed by a bias-free 1x1 conv + norm when the channels change (ResNet-D:
    He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019). The sum goes
    through the activation.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel of both main-path convolutions.
        stride: Stride of the first convolution (and of the skip pooling).
        bias: Bias of the main-path convolutions.
        norm: Normalisation.
        act: Activation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        bias: bool = True,
        norm: NormSpec = ("instance", {"eps": 1e-5, "affine": True}),
        act: ActSpec = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    ) -> None:
        super().__init__()
        s = as_tuple(stride, spatial_dims)
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, s, bias=bias, norm=norm, act=act)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, 1, bias=bias, norm=norm,
                                 act=None)
        skip: list[nn.Module] = []
        if any(si != 1 for si in s):
            skip.append(make_pool("avg", spatial_dims, s))
        if in_channels != out_channels:
            skip.append(ConvNormAct(spatial_dims, in_channels, out_channels, 1, 1, bias=False, norm=norm, act=None))
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()
        self.act = make_act(act, out_channels) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


def center_crop(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Crop the centre ``spatial`` region of ``x`` (``(B, C, *spatial_x)``), as U-Net's valid-padding skips do."""
    slices: list[slice] = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], spatial, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


def valid_unet_output_size(size: int, n_pool: int, n_conv: int = 2, kernel_size: int = 3) -> int | None:
    """Output size of one axis of a U-Net with unpadded ("valid") convolutions, or ``None`` if the size is invalid.

    Each level runs ``n_conv`` convolutions (each removes ``kernel_size - 1``); 2x max pooling needs an even size;
    each 2x up-convolution doubles the size. The size is valid when every pooled size is even and positive.
    """
    shrink = n_conv * (kernel_size - 1)
    s = size
    for _ in range(n_pool):
        s -= shrink
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= shrink
    if s <= 0:
        return None
    for _ in range(n_pool):
        s = 2 * s - shrink
        if s <= 0:
            return None
    return s


def check_valid_unet_input(name: str, spatial: Sequence[int], n_pool: int) -> tuple[int, ...]:
    """Output spatial size of a valid-padding U-Net for input ``spatial``.

    Raises:
        ModelError: An axis size does not fit (a pooled size would be odd or not positive); the message names the
            next valid size.
    """
    out = []
    for s in spatial:
        o = valid_unet_output_size(s, n_pool)
        if o is None:
            nxt = next(t for t in itertools.count(s) if valid_unet_output_size(t, n_pool))  # sizes recur every 2**n
            raise ModelError(f"{name}: input spatial size {tuple(spatial)} does not fit padding='valid' (every "
                             f"pooled size must be even: sizes must be {2**n_pool}*k + {_valid_offset(n_pool)}); "
                             f"the next valid size for {s} is {nxt}")
        out.append(o)
    return tuple(out)


def _valid_offset(n_pool: int, n_conv: int = 2, kernel_size: int = 3) -> int:
    shrink = n_conv * (kernel_size - 1)
    # the smallest valid input, reduced modulo 2**n_pool
    smallest = next(t for t in range(1, 2 ** (n_pool + 2) * shrink) if valid_unet_output_size(t, n_pool))
    return smallest % 2**n_pool


# ---------------------------------------------------------------------------------------------------------------------
# Dense connectivity (DenseNet family): pre-activation layers and the dense block.


class NormActConv(nn.Sequential):
    """Pre-activation layer: normalisation, activation, convolution, with optional dropout (DenseNet's ``H_l``).

    Huang et al., "Densely Connected Convolutional Networks", CVPR 2017: each layer is BN, ReLU, then convolution.
    Dropout goes after the convolution (FC-DenseNet: "BN, ReLU, 3x3 convolution and dropout") or, with
    ``dropout_before_conv=True``, between the activation and the convolution (HyperDenseNet's layers).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)`` (minus ``kernel - 1`` per axis when
    ``padding="valid"``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (the normalisation runs on the input channels).
        out_channels: C_out.
        kernel_size: Kernel size, one int or one per axis.
        stride: Stride, one int or one per axis.
        padding: ``"same"``, ``"valid"`` or explicit padding.
        bias: Whether the convolution has a bias.
        norm: Normalisation of the input, or ``None``.
        act: Activation after the normalisation, or ``None``.
        dropout: Element-wise dropout probability (0 for none).
        dropout_before_conv: Put the dropout before the convolution instead of after it.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = "same",
        bias: bool = True,
        norm: NormSpec = "batch",
        act: ActSpec = ("relu", {"inplace": True}),
        dropout: float = 0.0,
        dropout_before_conv: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = make_norm(norm, spatial_dims, in_channels)
        if norm_layer is not None:
            self.add_module("norm", norm_layer)
        act_layer = make_act(act, in_channels)
        if act_layer is not None:
            self.add_module("act", act_layer)
        if dropout > 0 and dropout_before_conv:
            self.add_module("dropout", nn.Dropout(dropout))
        self.add_module("conv", make_conv(spatial_dims, in_channels, out_channels, kernel_size, stride, padding, bias))
        if dropout > 0 and not dropout_before_conv:
            self.add_module("dropout", nn.Dropout(dropout))


class DenseBlock(nn.Module):
    """Dense block: layer ``i`` sees the concatenation of the block input and of the outputs of layers ``< i``.

    Huang et al., "Densely Connected Convolutional Networks", CVPR 2017: ``x_l = H_l([x_0, x_1, ..., x_(l-1)])``;
    each layer adds ``growth_rate`` channels. The default layer is :class:`NormActConv` (BN-ReLU-Conv); with
    ``bottleneck_factor`` set it is DenseNet-B's BN-ReLU-Conv(1x1, ``bottleneck_factor * growth_rate``)-BN-ReLU-Conv.
    A model whose layers differ (e.g. conv-norm-act with a special dropout) passes ``make_layer``; the dense
    connectivity stays this one implementation.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_in + n_layers * growth_rate, *spatial)``, or to
    ``(B, n_layers * growth_rate, *spatial)`` with ``return_only_new=True`` (FC-DenseNet's upsampling path).
    :attr:`out_channels` holds the output channel count.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        growth_rate: Channels each layer adds (k).
        n_layers: Number of layers.
        kernel_size: Kernel of the (last) convolution of each layer.
        bottleneck_factor: DenseNet-B bottleneck width as a multiple of ``growth_rate`` (``None``: no bottleneck).
        norm: Normalisation of the default layers.
        act: Activation of the default layers.
        dropout: Dropout of the default layers (after each convolution).
        bias: Bias of the default layers' convolutions.
        return_only_new: Return only the layers' new feature maps, not the block input.
        make_layer: Optional factory ``(in_channels, growth_rate) -> module`` replacing the default layer.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        growth_rate: int,
        n_layers: int,
        kernel_size: int | Sequence[int] = 3,
        bottleneck_factor: int | None = None,
        norm: NormSpec = "batch",
        act: ActSpec = ("relu", {"inplace": True}),
        dropout: float = 0.0,
        bias: bool = True,
        return_only_new: bool = False,
        make_layer: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 1 or growth_rate < 1:
            raise ModelError(f"DenseBlock needs n_layers >= 1 and growth_rate >= 1, got {n_layers} and {growth_rate}")
        self.return_only_new = return_only_new
        self.layers = nn.ModuleList()
        for i in range(n_layers):
            cin = in_channels + i * growth_rate
            if make_layer is not None:
                layer = make_layer(cin, growth_rate)
            elif bottleneck_factor:
                width = bottleneck_factor * growth_rate
                layer = nn.Sequential(
                    NormActConv(spatial_dims, cin, width, 1, bias=bias, norm=norm, act=act, dropout=dropout),
                    NormActConv(spatial_dims, width, growth_rate, kernel_size, bias=bias, norm=norm, act=act,
                                dropout=dropout),
                )
            else:
                layer = NormActConv(spatial_dims, cin, growth_rate, kernel_size, bias=bias, norm=norm, act=act,
                                    dropout=dropout)
            self.layers.append(layer)
        self.out_channels = n_layers * growth_rate + (0 if return_only_new else in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, out_channels, *spatial)``."""
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1) if len(features) > 1 else x))
        return torch.cat(features[1:] if self.return_only_new else features, dim=1)


__all__ += ["DenseBlock", "NormActConv"]


# --- Attention and squeeze-and-excitation blocks (attention_unet, scse_unet) ---------------------------------------

__all__ += ["ChannelSpatialSELayer", "GridAttentionGate", "SpatialSELayer", "resample_linear"]


def resample_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample ``x`` (``(B, C, *spatial)``) to ``size`` by (bi/tri)linear interpolation (``align_corners=False``)."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    return nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class SpatialSELayer(nn.Module):
    """Spatial squeeze and channel excitation ("sSE") of Roy, Navab & Wachinger (MICCAI 2018).

    A 1x1 convolution squeezes the channels to one map, a sigmoid turns it into spatial weights that rescale every
    channel: ``x * sigmoid(conv1x1(x))``. Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C.
    """

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        self.conv = make_conv(spatial_dims, in_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale ``x`` by its spatial excitation map."""
        return x * torch.sigmoid(self.conv(x))


class ChannelSpatialSELayer(nn.Module):
    """Concurrent spatial and channel squeeze & excitation ("scSE", Roy, Navab & Wachinger, MICCAI 2018).

    Paper: A. G. Roy, N. Navab, C. Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully
    Convolutional Networks", MICCAI 2018 (arXiv:1803.02579), Section 2.

    cSE: global average pooling, FC ``C -> C/r``, ReLU, FC ``C/r -> C``, sigmoid, channel-wise rescaling (MONAI's
    :class:`monai.networks.blocks.ChannelSELayer`, which is exactly this; the paper uses ``r = 2``). sSE:
    :class:`SpatialSELayer`. The two recalibrated maps are combined by element-wise addition (the paper's scSE); the
    journal extension (Roy et al., IEEE TMI 2019) also studies the element-wise maximum (``combine="max"``).

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C.
        reduction: Channel reduction ratio ``r`` of cSE (paper: 2).
        combine: ``"add"`` (paper) or ``"max"``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, reduction: int = 2, combine: str = "add") -> None:
        super().__init__()
        from monai.networks.blocks import ChannelSELayer

        if combine not in ("add", "max"):
            raise ModelError(f"scSE: combine must be 'add' or 'max', got {combine!r}")
        if reduction < 1 or in_channels // reduction < 1:
            raise ModelError(f"scSE: reduction must be in [1, {in_channels}] for {in_channels} channels, got "
                             f"{reduction}")
        self.combine = combine
        self.cse = ChannelSELayer(spatial_dims, in_channels, r=reduction)
        self.sse = SpatialSELayer(spatial_dims, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Recalibrate ``x`` channel-wise and spatially and combine the two."""
        if self.combine == "max":
            return torch.maximum(self.cse(x), self.sse(x))
        return self.cse(x) + self.sse(x)


class GridAttentionGate(nn.Module):
    """Additive grid attention gate of Attention U-Net (Oktay et al., MIDL 2018), 2D or 3D.

    Paper: O. Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018 (arXiv:1804.03999),
    Section 2 (Eq. 1-2, Fig. 2). ``q = psi^T relu(W_x^T x + W_g^T g + b_g) + b_psi``, ``alpha = sigmoid(q)``, output
    ``W(alpha * x)``. As in the authors' code: ``W_x`` is a bias-free convolution with kernel = stride =
    ``subsample`` that brings ``x`` to (about) the resolution of the coarser gating signal; ``W_g`` a 1x1 convolution
    with bias, whose output is resampled (linearly) to the size of ``W_x x``; ``psi`` a 1x1 convolution to one
    channel; the coefficients ``alpha`` are resampled to the resolution of ``x`` by (bi/tri)linear interpolation; the
    output transform ``W`` is a 1x1 convolution + normalisation.

    Shapes: ``x`` ``(B, C_x, *spatial)`` and ``g`` ``(B, C_g, *spatial_g)`` (any coarser size) to
    ``((B, C_x, *spatial), alpha (B, 1, *spatial))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_x, channels of the gated (skip) features.
        gating_channels: C_g, channels of the gating signal.
        inter_channels: Channels of the intermediate space (the authors use C_x).
        subsample: Kernel = stride of ``W_x`` (paper: 2).
        norm: Normalisation of the output transform (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        gating_channels: int,
        inter_channels: int | None = None,
        subsample: int | Sequence[int] = 2,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        inter = inter_channels or in_channels
        s = as_tuple(subsample, spatial_dims)
        self.theta = Conv[Conv.CONV, spatial_dims](in_channels, inter, kernel_size=s, stride=s, bias=False)
        self.phi = make_conv(spatial_dims, gating_channels, inter, 1)
        self.psi = make_conv(spatial_dims, inter, 1, 1)
        self.out = ConvNormAct(spatial_dims, in_channels, in_channels, 1, norm=norm, act=None)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate ``x`` with ``g``; return the gated features and the attention coefficients."""
        theta_x = self.theta(x)
        phi_g = resample_linear(self.phi(g), theta_x.shape[2:])
        alpha = torch.sigmoid(self.psi(torch.relu(theta_x + phi_g)))
        alpha = resample_linear(alpha, x.shape[2:])
        return self.out(alpha * x), alpha


# --- Factorised (per-axis) convolutions and channel shuffle (real-time family: ENet, ERFNet, LEDNet, ESPNetv2) ------

__all__ += ["axis_conv", "channel_shuffle"]


def axis_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    axis: int,
    dilation: int = 1,
    bias: bool = True,
    groups: int = 1,
) -> nn.Module:
    """A one-dimensional convolution along spatial ``axis``: kernel ``kernel_size`` there and 1 on the other axes.

    The factorised convolutions of ENet's asymmetric bottleneck (5x1 then 1x5), ERFNet's non-bottleneck-1D (3x1
    then 1x3) and LEDNet's SS-nbt are a chain of these, one per axis; in 3D the chain has three members. Padding is
    "same" along ``axis`` (``dilation * (kernel_size // 2)``), so the spatial size is kept.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.
    """
    kernel = [1] * spatial_dims
    kernel[axis] = kernel_size
    pad = [0] * spatial_dims
    pad[axis] = dilation * (kernel_size // 2)
    dil = [1] * spatial_dims
    dil[axis] = dilation
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=tuple(kernel), padding=tuple(pad),
                                         dilation=tuple(dil), bias=bias, groups=groups)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (Zhang et al., CVPR 2018) of ``(B, g*n, *spatial)`` with ``g`` groups.

    The channels are seen as ``(B, g, n, ...)``, transposed to ``(B, n, g, ...)`` and flattened back, so that each
    group of the next grouped layer sees every group of the previous one.
    """
    b, c = x.shape[:2]
    return x.reshape(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class PaddedAvgPool(nn.Module):
    """Average pooling over a zero-padded input: ``avg_pool(kernel, stride, padding)`` counting the padding.

    The same result as ``AvgPool{2,3}d(kernel_size, stride, padding)`` (``count_include_pad=True``), but the padding
    is applied first, so that inputs smaller than the kernel work in 3D too (PyTorch's ``avg_pool3d`` rejects them;
    ShuffleNet's and BiSeNet V2's 3x3 strided average poolings meet 2^3 maps in small volumes).

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *((spatial + 2 * padding - kernel_size) // stride + 1))``.

    Args:
        spatial_dims: 2 or 3.
        kernel_size: Pooling window.
        stride: Stride.
        padding: Zero padding on each side.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 3, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.spatial_dims = spatial_dims
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` (``(B, C, *spatial)``)."""
        if self.padding:
            x = nn.functional.pad(x, (self.padding,) * (2 * self.spatial_dims))
        return self.pool(x)


__all__ += ["PaddedAvgPool"]


# --- Planned topologies and CBAM attention (laddernet, fd_unet, csa_unet, sclerasegnet, recurrent_unet, ...) -------

__all__ += ["CBAM", "CBAMChannelGate", "CBAMSpatialGate"]


class CBAMChannelGate(nn.Module):
    """CBAM's channel attention: average- and max-pooled descriptors through one shared MLP, summed, sigmoid.

    Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018 (arXiv:1807.06521), Eq. 2: ``M_c =
    sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))`` with a hidden layer of ``C / reduction`` units (ReLU). Shapes:
    ``(B, C, *spatial)`` to the same (``x * M_c``).

    Args:
        channels: C.
        reduction: Reduction ratio r of the MLP (paper: 16; at least one hidden unit is kept).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The channel attention ``M_c`` of ``x``, shape ``(B, C, 1, ...)``."""
        flat = x.flatten(2)
        logits = self.mlp(flat.mean(-1)) + self.mlp(flat.amax(-1))
        return torch.sigmoid(logits).view(*x.shape[:2], *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale the channels of ``x``."""
        return x * self.weights(x)


class CBAMSpatialGate(nn.Module):
    """CBAM's spatial attention: channel-wise mean and max maps, a ``k``-wide convolution (+ BN), sigmoid.

    Woo et al. (ECCV 2018), Eq. 3: ``M_s = sigmoid(f^{7x7}([AvgPool(F); MaxPool(F)]))``; as in the authors' code the
    convolution has no bias and is followed by batch norm. Shapes: ``(B, C, *spatial)`` to the same
    (``x * M_s``).

    Args:
        spatial_dims: 2 or 3.
        kernel_size: Kernel of the convolution (paper: 7).
        norm: Normalisation after the convolution (authors' code: batch norm).
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.conv = ConvNormAct(spatial_dims, 2, 1, kernel_size, bias=False, norm=norm, act=None)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial attention ``M_s`` of ``x``, shape ``(B, 1, *spatial)``."""
        pooled = torch.cat((x.amax(1, keepdim=True), x.mean(1, keepdim=True)), dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale every position of ``x``."""
        return x * self.weights(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel attention, then spatial attention.

    ``F' = M_c(F) * F``, ``F'' = M_s(F') * F'`` (the paper's sequential channel-first arrangement, Section 3).
    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        reduction: Channel MLP reduction ratio (paper: 16).
        kernel_size: Spatial attention kernel (paper: 7).
        channel: Use the channel gate.
        spatial: Use the spatial gate.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 16, kernel_size: int = 7,
                 channel: bool = True, spatial: bool = True) -> None:
        super().__init__()
        if not (channel or spatial):
            raise ModelError("CBAM needs the channel gate, the spatial gate or both")
        self.channel = CBAMChannelGate(channels, reduction) if channel else None
        self.spatial = CBAMSpatialGate(spatial_dims, kernel_size) if spatial else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refine ``x`` by channel then spatial attention."""
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x
