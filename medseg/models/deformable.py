"""Deformable convolution in plain PyTorch, 2D and 3D (bilinear / trilinear sampling at learned offsets).

Paper: J. Dai, H. Qi, Y. Xiong, Y. Li, G. Zhang, H. Hu, Y. Wei, "Deformable Convolutional Networks", ICCV 2017
(arXiv:1703.06211), Section 2.1: the regular sampling grid ``R`` of a convolution is augmented with offsets,
``y(p0) = sum_{pn in R} w(pn) * x(p0 + pn + dp_n)``, where the offsets ``dp_n`` come from a convolution over the same
input (same kernel, stride, dilation and padding, ``2N`` output channels in 2D, ``N = |R|``), initialised to zero,
and the fractional positions are read by bilinear interpolation (zero outside the input). The modulated form of
Deformable ConvNets v2 (X. Zhu, H. Hu, S. Lin, J. Dai, "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019, arXiv:1811.11168, Section 3.1) also learns a sigmoid weight ``dm_n`` per sampling point
(``modulated=True``).

Implementation: for each of the ``N`` kernel points, :func:`torch.nn.functional.grid_sample` reads the input at that
point's shifted position of every output location (2D: bilinear; 3D: trilinear, ``3N`` offset channels) and a 1x1
convolution with that point's slice of the weight adds its contribution to the output. The working memory is one
sampled map the size of the output per point, not all ``N`` at once (27 times the input in 3D, which at 3D
resolutions runs out of memory). The layer has exactly the parameters of a regular convolution (kept as a regular
convolution's weight, ``conv``) plus its offset (and mask) convolution. No torchvision, no compiled extension.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.blocks import ActSpec, NormSpec, as_tuple, make_act, make_norm

__all__ = ["DeformConv", "DeformConvNormAct"]


class DeformConv(nn.Module):
    """Deformable convolution (Dai et al., ICCV 2017), optionally modulated (DCNv2), 2D or 3D.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial_out)`` with ``spatial_out`` as for a regular
    convolution of the same kernel, stride, padding and dilation (``spatial`` for the default "same" padding and
    stride 1). With zero offsets (the initial state) and no modulation the layer equals a regular zero-padded
    convolution.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel size, one int or one per axis.
        stride: Stride, one int or one per axis.
        padding: Zero padding per axis; ``None`` pads ``dilation * (kernel - 1) // 2`` ("same" for odd kernels).
        dilation: Dilation of the regular grid, one int or one per axis.
        bias: Whether the convolution has a bias (the offset convolution always has one).
        modulated: Also learn a sigmoid weight per sampling point (DCNv2).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        modulated: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ModelError(f"DeformConv: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        d = spatial_dims
        self.spatial_dims = d
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = as_tuple(kernel_size, d)
        self.stride = as_tuple(stride, d)
        self.dilation = as_tuple(dilation, d)
        self.padding = (tuple(dl * (k - 1) // 2 for dl, k in zip(self.dilation, self.kernel_size, strict=True))
                        if padding is None else as_tuple(padding, d))
        n_points = math.prod(self.kernel_size)
        self.n_points = n_points
        conv = Conv[Conv.CONV, d]
        geometry = {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                    "dilation": self.dilation}
        self.offset = conv(in_channels, d * n_points, bias=True, **geometry)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.mask: nn.Module | None = None
        if modulated:
            self.mask = conv(in_channels, n_points, bias=True, **geometry)
            nn.init.zeros_(self.mask.weight)
            nn.init.zeros_(self.mask.bias)
        # the weights of a regular k x k (x k) convolution; kernel point n is weight[:, :, n] of the flattened kernel
        self.conv = conv(in_channels, out_channels, kernel_size=self.kernel_size, bias=bias)
        grid = [
            [dl * i - p for i, dl, p in zip(idx, self.dilation, self.padding, strict=True)]
            for idx in itertools.product(*(range(k) for k in self.kernel_size))
        ]
        self.register_buffer("kernel_grid", torch.tensor(grid, dtype=torch.float32), persistent=False)  # (N, d)

    @property
    def weight(self) -> torch.Tensor:
        """The convolution weight ``(C_out, C_in, *kernel_size)``, laid out as a regular convolution's."""
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample ``x`` at the regular grid plus the learned offsets and convolve."""
        d, n = self.spatial_dims, self.n_points
        offsets = self.offset(x)  # (B, d*N, *out)
        b = x.shape[0]
        out_size = tuple(offsets.shape[2:])
        offsets = offsets.view(b, n, d, *out_size)
        axes = [torch.arange(o, device=x.device, dtype=offsets.dtype) * s
                for o, s in zip(out_size, self.stride, strict=True)]
        origin = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # (d, *out)
        tail = (1,) * d
        positions = origin.view(1, 1, d, *out_size) + self.kernel_grid.to(offsets).view(1, n, d, *tail) + offsets
        # grid_sample (align_corners=False): index i of an axis of length L sits at (2i + 1) / L - 1
        lengths = torch.tensor(x.shape[2:], device=x.device, dtype=offsets.dtype).view(1, 1, d, *tail)
        grid = ((2 * positions + 1) / lengths - 1).flip(2).movedim(2, -1)  # (B, N, *out, d), last dim x, y(, z)
        mask = torch.sigmoid(self.mask(x)) if self.mask is not None else None  # (B, N, *out)
        weight = self.conv.weight.flatten(2)  # (C_out, C_in, N)
        conv = F.conv2d if d == 2 else F.conv3d
        out: torch.Tensor | None = None
        for point in range(n):  # one point at a time: memory of one sampled map, not N
            samples = F.grid_sample(x, grid[:, point], mode="bilinear", padding_mode="zeros", align_corners=False)
            if mask is not None:
                samples = samples * mask[:, point : point + 1]
            term = conv(samples, weight[:, :, point].reshape(*weight.shape[:2], *tail))
            out = term if out is None else out.add_(term)
        assert out is not None
        if self.conv.bias is not None:
            out.add_(self.conv.bias.view(1, -1, *tail))
        return out


class DeformConvNormAct(nn.Sequential):
    """Deformable convolution, then (optional) normalisation and activation; submodules ``conv``, ``norm``, ``act``.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial_out)`` (see :class:`DeformConv`).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel size.
        stride: Stride.
        bias: Whether the deformable convolution has a bias.
        norm: Normalisation or ``None``.
        act: Activation or ``None``.
        modulated: DCNv2 modulation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        bias: bool = True,
        norm: NormSpec = "batch",
        act: ActSpec = ("relu", {"inplace": True}),
        modulated: bool = False,
    ) -> None:
        super().__init__()
        self.add_module("conv", DeformConv(spatial_dims, in_channels, out_channels, kernel_size, stride, bias=bias,
                                           modulated=modulated))
        norm_layer = make_norm(norm, spatial_dims, out_channels)
        if norm_layer is not None:
            self.add_module("norm", norm_layer)
        act_layer = make_act(act, out_channels)
        if act_layer is not None:
            self.add_module("act", act_layer)
