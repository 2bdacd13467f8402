"""Layers shared by the attention group (DANet, CCNet, PSANet, CPNet, PAC, ...): one implementation each.

* :func:`resize_to` / :func:`interp_mode`: bilinear (2D) or trilinear (3D) resizing of logits and features.
* :class:`SegHead`: the FCN head "3x3 conv-BN-ReLU, dropout, 1x1 conv" used as the auxiliary head on ResNet's
  ``layer3`` (PSPNet, CCNet, PSANet, CPNet) and as the classifier of DANet's branches.
* :class:`PositionAttention` and :class:`ChannelAttention`: DANet's position and channel attention modules (Fu et al.,
  CVPR 2019, Section 3.2-3.3), 2D and 3D.
* :class:`CrissCrossAttention`: CCNet's criss-cross attention (Huang et al., ICCV 2019, Section 3.2) in pure torch,
  2D and its 3D generalisation (each voxel attends to the voxels on the three axis-aligned lines through it).
* :func:`psa_mask`: PSANet's over-completed attention map to the ``(HW, HW)`` collect / distribute matrices (Zhao et
  al., ECCV 2018, Section 3.2), the pure-torch counterpart of the reference ``psa_mask`` CUDA op.
* :class:`PacConv2d`: the pixel-adaptive convolution (Su et al., CVPR 2019, Eq. 3) with a Gaussian adapting kernel,
  unfold-based.
* :func:`build_backbone`: :func:`~medseg.models.backbones.create_backbone` with the model's name in its errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Dropout
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones import Backbone, create_backbone
from medseg.models.backbones.base import ConvNormActD

__all__ = [
    "ChannelAttention",
    "CrissCrossAttention",
    "PacConv2d",
    "PositionAttention",
    "SegHead",
    "build_backbone",
    "conv1x1",
    "criss_cross_mask",
    "dropout",
    "interp_mode",
    "pac_kernel",
    "psa_mask",
    "resize_to",
]


def interp_mode(spatial_dims: int) -> str:
    """``"bilinear"`` in 2D, ``"trilinear"`` in 3D."""
    return "bilinear" if spatial_dims == 2 else "trilinear"


def resize_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Resize ``(B, C, *spatial)`` to ``(B, C, *size)`` with (bi/tri)linear interpolation (identity when equal)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=list(size), mode=interp_mode(x.dim() - 2), align_corners=align_corners)


def build_backbone(
    model_name: str,
    backbone: str,
    spatial_dims: int,
    in_channels: int,
    output_stride: int | None,
    pretrained: str | None,
    backbone_kwargs: Mapping[str, Any] | None,
) -> Backbone:
    """``create_backbone`` with the model's name prefixed to its errors.

    Raises:
        ModelError: Unknown backbone, unsupported dims/stride, or weights that do not fit.
    """
    try:
        return create_backbone(backbone, spatial_dims, in_channels, output_stride=output_stride,
                               pretrained=pretrained, **dict(backbone_kwargs or {}))
    except ModelError as err:
        raise ModelError(f"{model_name}: {err}") from err


def conv1x1(spatial_dims: int, in_channels: int, out_channels: int, bias: bool = True) -> nn.Module:
    """A 1x1(x1) convolution from MONAI's factory."""
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=bias)


def dropout(spatial_dims: int, p: float) -> nn.Module:
    """Channel dropout (``Dropout2d``/``Dropout3d``), as in the reference heads."""
    return Dropout[Dropout.DROPOUT, spatial_dims](p)


class SegHead(nn.Sequential):
    """FCN head: 3x3 convolution-BN-ReLU, channel dropout, 1x1 convolution with bias to the classes.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        mid_channels: Channels of the 3x3 convolution (0 skips it: dropout and the 1x1 classifier only).
        out_channels: Classes.
        drop: Dropout probability (0.1 in the reference heads).
    """

    def __init__(self, spatial_dims: int, in_channels: int, mid_channels: int, out_channels: int,
                 drop: float = 0.1) -> None:
        super().__init__()
        if mid_channels:
            self.add_module("conv", ConvNormActD(spatial_dims, in_channels, mid_channels, 3))
            in_channels = mid_channels
        self.add_module("drop", dropout(spatial_dims, drop))
        self.add_module("cls", conv1x1(spatial_dims, in_channels, out_channels))


class PositionAttention(nn.Module):
    """DANet's position attention module (Fu et al., CVPR 2019, Section 3.2, Fig. 2A).

    ``S = softmax(Bᵀ C)`` over all ``N`` positions with ``B, C`` 1x1 projections to ``C/8`` channels; the output is
    ``gamma · (D S) + X`` with ``D`` a 1x1 projection of ``X`` and ``gamma`` initialised to 0. The ``N x N`` affinity
    costs ``O(N²)`` memory: 4 GiB in float32 for a 64³ feature map of one volume, so keep 3D inputs small.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        reduction: Channel reduction of the query/key projections (8 in the paper).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = conv1x1(spatial_dims, channels, inner)
        self.key = conv1x1(spatial_dims, channels, inner)
        self.value = conv1x1(spatial_dims, channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all positions of ``x`` (``(B, C, *spatial)``)."""
        q = self.query(x).flatten(2)  # (B, C', N)
        k = self.key(x).flatten(2)
        v = self.value(x).flatten(2)  # (B, C, N)
        attention = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, N_i, N_j)
        out = torch.bmm(v, attention.transpose(1, 2)).view_as(x)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """DANet's channel attention module (Fu et al., CVPR 2019, Section 3.3, Fig. 2B).

    ``X = softmax(max(A Aᵀ) - A Aᵀ)`` over the ``C x C`` channel affinities (the reference code's "energy_new"), output
    ``beta · (X A) + A`` with ``beta`` initialised to 0; no parameters besides ``beta``.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the channels of ``x`` (``(B, C, *spatial)``)."""
        a = x.flatten(2)  # (B, C, N)
        energy = torch.bmm(a, a.transpose(1, 2))
        energy = energy.amax(dim=-1, keepdim=True).expand_as(energy) - energy
        attention = torch.softmax(energy, dim=-1)
        out = torch.bmm(attention, a).view_as(x)
        return self.beta * out + x


def criss_cross_mask(spatial: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(N, N)`` matrix: ``True`` where two positions lie on one axis-aligned line (share all but one index).

    The support of criss-cross attention: in 2D the row and the column through a pixel, in 3D the three lines through
    a voxel (the position itself included). For brute-force checks of :class:`CrissCrossAttention`.
    """
    grids = torch.meshgrid(*[torch.arange(s, device=device) for s in spatial], indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], dim=1)  # (N, d)
    same = (coords[:, None, :] == coords[None, :, :]).sum(-1)
    return same >= len(spatial) - 1


class CrissCrossAttention(nn.Module):
    """Criss-cross attention (Huang et al., "CCNet", ICCV 2019, Section 3.2, Fig. 3), 2D and 3D, in pure torch.

    Each position ``u`` attends to the positions on the axis-aligned lines through it: its row and column in 2D
    (``H + W - 1`` positions), the three lines through the voxel in 3D (``D + H + W - 2``). Affinities
    ``d = Q_u · K_v`` are normalised by one softmax over that set (the position itself counted once, as the reference
    code does by masking it in all axes but the last), and the output is ``gamma · Σ_v A_uv V_v + H_u`` with 1x1
    projections ``Q, K`` (``C/8`` channels), ``V`` (``C``) and ``gamma`` initialised to 0. Memory is
    ``O(N · (H + W))`` instead of the non-local block's ``O(N²)``.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        reduction: Channel reduction of the query/key projections (8 in the reference code).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.spatial_dims = spatial_dims
        self.query = conv1x1(spatial_dims, channels, inner)
        self.key = conv1x1(spatial_dims, channels, inner)
        self.value = conv1x1(spatial_dims, channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Criss-cross aggregation of ``v`` (``(B, C, *spatial)``) with queries/keys ``q, k`` (``(B, C', *spatial)``).

        Returns ``Σ_v A_uv V_v`` of shape ``(B, C, *spatial)`` (no residual, no ``gamma``).
        """
        d = q.dim() - 2
        energies, lengths = [], []
        for axis in range(d):
            # (B, *others, L, C'): the line along ``axis`` as the second-to-last dim.
            qa = q.movedim(1, -1).movedim(1 + axis, -2)
            ka = k.movedim(1, -1).movedim(1 + axis, -2)
            e = torch.matmul(qa, ka.transpose(-1, -2))  # (B, *others, L, L')
            if axis < d - 1:
                eye = torch.eye(e.shape[-1], dtype=torch.bool, device=e.device)
                e = e.masked_fill(eye, float("-inf"))
            energies.append(e.movedim(-2, 1 + axis))  # (B, *spatial, L')
            lengths.append(e.shape[-1])
        attention = torch.softmax(torch.cat(energies, dim=-1), dim=-1)
        out = torch.zeros_like(v)
        for axis, att in enumerate(torch.split(attention, lengths, dim=-1)):
            va = v.movedim(1, -1).movedim(1 + axis, -2)  # (B, *others, L', C)
            oa = torch.matmul(att.movedim(1 + axis, -2), va)  # (B, *others, L, C)
            out = out + oa.movedim(-2, 1 + axis).movedim(-1, 1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass over ``x`` (``(B, C, *spatial)``)."""
        return self.gamma * self.attend(self.query(x), self.key(x), self.value(x)) + x


def psa_mask(over_complete: torch.Tensor, mode: str, mask_size: Sequence[int]) -> torch.Tensor:
    """PSANet's point-wise attention matrices from the over-completed maps (Zhao et al., ECCV 2018, Section 3.2).

    The map predicted at position ``i`` has ``Hm x Wm`` channels centred on ``i``; the entry for position ``j`` is
    channel ``(h_j - h_i + Hm//2, w_j - w_i + Wm//2)`` when that lies inside the mask and 0 otherwise (the reference
    ``psa_mask`` op; with ``Hm = 2H - 1, Wm = 2W - 1`` every pair is covered).

    Args:
        over_complete: ``(B, Hm * Wm, H, W)``.
        mode: ``"collect"``: ``A[b, j, i]`` is the weight with which position ``i`` collects from ``j`` (the map at
            ``i``); ``"distribute"``: ``A[b, i, j]`` is the share position ``i`` distributes to ``j`` (the map at
            ``i``). Either way the aggregated feature is ``X (B, C, N) @ A (B, N, N)``, the reduction over the
            first ``N`` axis (the softmax axis).
        mask_size: ``(Hm, Wm)``, both odd.

    Returns:
        ``(B, H * W, H * W)``.
    """
    b, m, h, w = over_complete.shape
    hm, wm = mask_size
    if m != hm * wm:
        raise ModelError(f"psa_mask: expected {hm * wm} = {hm}x{wm} channels, got {m}")
    device = over_complete.device
    hi = torch.arange(h, device=device).repeat_interleave(w)  # position i -> (hi, wi)
    wi = torch.arange(w, device=device).repeat(h)
    dh = hi[None, :] - hi[:, None] + hm // 2  # [i, j]
    dw = wi[None, :] - wi[:, None] + wm // 2
    valid = (dh >= 0) & (dh < hm) & (dw >= 0) & (dw < wm)
    index = (dh.clamp(0, hm - 1) * wm + dw.clamp(0, wm - 1)).expand(b, -1, -1)
    maps = over_complete.flatten(2).transpose(1, 2)  # (B, N_i, M)
    gathered = torch.gather(maps, 2, index) * valid  # (B, N_i, N_j): map at i, entry for j
    if mode == "collect":
        return gathered.transpose(1, 2)
    if mode == "distribute":
        return gathered
    raise ModelError(f"psa_mask: mode must be 'collect' or 'distribute', got {mode!r}")


def pac_kernel(guide: torch.Tensor, kernel_size: int, dilation: int = 1, stride: int = 1) -> torch.Tensor:
    """Gaussian adapting kernel ``K_ij = exp(-½ ||f_i - f_j||²)`` of the PAC layer (Su et al., CVPR 2019, Eq. 3).

    Args:
        guide: Guidance features ``f`` of shape ``(B, C_f, H, W)``.
        kernel_size: Odd window size k of the convolution it adapts ("same" zero padding ``dilation * (k // 2)``).
        dilation: Dilation of the window.
        stride: Stride of the window.

    Returns:
        ``(B, k², L)`` with ``L`` the output positions (zero-padded neighbours get ``exp(-½ ||f_i||²)``; their input
        values are zero, so they contribute nothing).
    """
    b, cf = guide.shape[:2]
    neighbours = F.unfold(guide, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2), stride=stride)
    neighbours = neighbours.view(b, cf, kernel_size * kernel_size, -1)
    centre_index = (kernel_size * kernel_size) // 2
    centre = neighbours[:, :, centre_index:centre_index + 1]
    return torch.exp(-0.5 * (neighbours - centre).square().sum(1))


class PacConv2d(nn.Module):
    """Pixel-adaptive convolution (Su et al., "Pixel-Adaptive Convolutional Neural Networks", CVPR 2019, Eq. 3).

    ``v'_i = Σ_j K(f_i, f_j) W[p_i - p_j] v_j + b`` over the ``k x k`` window of ``i``: a standard convolution whose
    kernel is multiplied, per output position, by a fixed-form Gaussian of the guidance features ``f``
    (:func:`pac_kernel`). With a constant guide ``K ≡ 1`` and the layer is an ordinary convolution with the same
    weights (the same parameters: ``C_out·C_in·k² + C_out``). Pure torch (``F.unfold``), no CUDA extension.

    Shapes: ``x (B, C_in, H, W)`` and ``guide (B, C_f, H, W)`` to ``(B, C_out, H', W')`` as ``nn.Conv2d`` would.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Odd kernel size k.
        stride: Stride.
        dilation: Dilation (zero padding ``dilation * (k // 2)``: "same" size at stride 1).
        bias: Learnable bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ModelError(f"PacConv2d: kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding = dilation * (kernel_size // 2)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s default initialisation."""
        if self.weight.is_meta:
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with the kernel adapted by ``guide`` (same spatial size as ``x``)."""
        if guide.shape[2:] != x.shape[2:]:
            raise ModelError(f"PacConv2d: guide {tuple(guide.shape)} and input {tuple(x.shape)} differ in size")
        b, c, h, w = x.shape
        k2 = self.kernel_size**2
        kernel = pac_kernel(guide, self.kernel_size, self.dilation, self.stride)  # (B, k², L)
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = (cols.view(b, c, k2, -1) * kernel.unsqueeze(1)).view(b, c * k2, -1)
        out = torch.matmul(self.weight.view(self.out_channels, -1), cols)  # (B, C_out, L)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        oh = (h + 2 * self.padding - self.dilation * (self.kernel_size - 1) - 1) // self.stride + 1
        ow = (w + 2 * self.padding - self.dilation * (self.kernel_size - 1) - 1) // self.stride + 1
        return out.view(b, self.out_channels, oh, ow)

