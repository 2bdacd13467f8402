"""Segmentation-aware convolution with local attention masks, and its DeepLab network (Harley et al., 2017), 2D/3D.

Paper: A. W. Harley, K. G. Derpanis, I. Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention
Masks", ICCV 2017 (arXiv:1708.04607), Section 3; official Caffe code github.com/aharley/segaware
(``scripts/segaware/config/vgg/deploy.prototxt``: "every convolution layer in the VGG16 architecture is made
segmentation-aware", and the ``Im2dist`` layer of its Caffe fork).

The layer (Section 3.2-3.3). Every pixel ``i`` has an embedding ``e_i``; for each neighbour ``j`` in the kernel window
of a convolution the mask is ``m_ij = exp(-|lambda| * ||e_i - e_j||_1)`` (``Im2dist`` with the L1 norm, a learned
``Scale`` ``lambda`` per layer initialised to 0.05, ``AbsVal``, ``Exp`` with scale -1); the convolution multiplies
each input patch by its mask before applying the filter: ``y_i = sum_k t_k * x_(i+k) * m_(i,i+k) + b``, so that the
filter sees the "foreground" of the patch. The mask uses the layer's own kernel size and dilation. ``normalize=True``
divides the masked sum by ``sum_k m_(i,i+k)`` (normalised convolution); the official VGG network does not.

Embeddings (``deploy.prototxt``): a small VGG-like network on the image (``emb1_1``-``emb3_3``: 64, 64 | 128, 128 |
256, 256, 256 channels, 3x3 convolutions with ReLU, 3x3 max pooling with stride 2 after the first two blocks); the
input, ``emb1_2`` and the bilinearly upsampled ``emb2_2`` and ``emb3_3`` are concatenated and a 1x1 convolution
gives the 64-dimensional embedding map. It is bilinearly resized to the resolution of each masked layer. The
official code scales the raw RGB input by 1/255 in that concatenation; here the (already normalised) input is used
as is. The paper pretrains the embeddings with a metric-learning loss on label pairs (Section 3.1, ``DistLoss``);
that loss needs the label map and is not part of the network: here the embeddings learn through the masks only.

The network: DeepLab-LargeFOV (Chen et al., ICLR 2015) on VGG-16 with every convolution segmentation-aware:
``conv1_1``-``conv5_3`` (3x3; ``conv5`` dilated by 2), 3x3 max pooling with stride 2, 2, 2, 1, 1 (pad 1), a 3x3
average pooling with stride 1 (``pool5a``), ``fc6`` (3x3, dilation 12, 1024 channels, segmentation-aware), ``fc7``
(1x1, 1024), each with ReLU and dropout 0.5, the 1x1 classifier ``fc8`` and bilinear upsampling by 8. The official
code also builds a ResNet-101 variant with a segmentation-aware CRF (``config/res``); that CRF is not included.
The official network starts from DeepLab's ImageNet VGG-16 weights; no weight file layout is mapped here, and the
segmentation-aware convolutions are He-initialised so that the plain 16-layer network trains from scratch.

Parameter figure: none in the paper; the official ``config/vgg/deploy.prototxt`` (VOC, 21 classes, RGB) has
22,269,859 parameters (counted from its layer definitions: VGG-16 DeepLab-LargeFOV 20,505,429, the embedding network
1,764,416, the 14 mask scales). We count the same.

Dims: 2D (the paper) and 3D (the masks and convolutions are dimension-independent).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["EmbeddingNet", "SegAwareConv", "SegAwareDeepLab", "local_l1_distances"]

VGG16_CONFIG: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _window(spatial_dims: int, kernel_size: int, dilation: int) -> list[tuple[int, ...]]:
    """Offsets of a kernel window (row-major, centre at index ``len // 2``)."""
    r = kernel_size // 2
    steps = [d * dilation for d in range(-r, r + 1)]
    return list(itertools.product(steps, repeat=spatial_dims))


def _shift(xp: torch.Tensor, offset: tuple[int, ...], pad: int, spatial: Sequence[int]) -> torch.Tensor:
    """View of the zero-padded ``xp`` at ``x[i + offset]`` for every pixel ``i`` of the unpadded ``spatial`` size."""
    sl = tuple(slice(pad + o, pad + o + s) for o, s in zip(offset, spatial, strict=True))
    return xp[(slice(None), slice(None), *sl)]


def local_l1_distances(emb: torch.Tensor, kernel_size: int = 3, dilation: int = 1) -> torch.Tensor:
    """L1 distance between each pixel's embedding and each neighbour's in its window (Caffe ``Im2dist``, L1 norm).

    Shapes: ``(B, E, *spatial)`` to ``(B, K, *spatial)`` with ``K = kernel_size**d`` (window in row-major order).
    Neighbours outside the image have distance 0 (their input values are zero-padded, so they contribute nothing to
    the convolution).
    """
    dims = emb.dim() - 2
    pad = dilation * (kernel_size // 2)
    spatial = emb.shape[2:]
    ep = F.pad(emb, [pad] * (2 * dims))
    inside = F.pad(torch.ones_like(emb[:, :1]), [pad] * (2 * dims))
    dists = [(emb - _shift(ep, off, pad, spatial)).abs().sum(1, keepdim=True) * _shift(inside, off, pad, spatial)
             for off in _window(dims, kernel_size, dilation)]
    return torch.cat(dists, dim=1)


class SegAwareConv(nn.Module):
    """Segmentation-aware convolution: each input patch is multiplied by its local attention mask first.

    Shapes: ``x`` ``(B, C_in, *spatial)`` and ``emb`` ``(B, E, *spatial)`` to ``(B, C_out, *spatial)`` (stride 1,
    "same" padding).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Odd kernel size.
        dilation: Dilation of the convolution and of its mask window.
        bias: Whether the convolution has a bias.
        lambda_init: Initial mask scale ``lambda`` (0.05 in the official code).
        normalize: Divide by the sum of the mask (normalised convolution).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1, bias: bool = True, lambda_init: float = 0.05, normalize: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ModelError(f"SegAwareConv: kernel_size must be odd, got {kernel_size}")
        self.spatial_dims = spatial_dims
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.normalize = normalize
        self.conv = make_conv(spatial_dims, in_channels, out_channels, kernel_size, bias=bias)
        if self.conv.weight.device.type != "meta":  # He initialisation (no ImageNet weights are loaded here)
            nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
            if self.conv.bias is not None:
                nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.full((1,), float(lambda_init)))

    def mask(self, emb: torch.Tensor) -> torch.Tensor:
        """The local attention masks ``exp(-|lambda * d|)``: ``(B, K, *spatial)``."""
        return torch.exp(-(self.scale * local_l1_distances(emb, self.kernel_size, self.dilation)).abs())

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with masked patches; ``emb`` has the spatial size of ``x``.

        The mask depends on the pixel and the offset only, so ``sum_k t_k (x_(i+k) m_(i,k)) = sum_k m_(i,k) (t_k
        x_(i+k))``: each offset's filter tap is applied to the shifted input and weighted by its mask.
        """
        offsets = _window(self.spatial_dims, self.kernel_size, self.dilation)
        pad = self.dilation * (self.kernel_size // 2)
        spatial = x.shape[2:]
        mask = self.mask(emb)
        xp = F.pad(x, [pad] * (2 * self.spatial_dims))
        weight = self.conv.weight.flatten(2)  # (O, C, K), K in row-major window order
        out = sum(torch.einsum("bc...,oc->bo...", _shift(xp, off, pad, spatial), weight[:, :, k]) * mask[:, k:k + 1]
                  for k, off in enumerate(offsets))
        if self.normalize:
            out = out / mask.sum(1, keepdim=True).clamp_min(1e-6)
        if self.conv.bias is not None:
            out = out + self.conv.bias.view(1, -1, *([1] * self.spatial_dims))
        return out


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=True)  # Caffe's Interp


class EmbeddingNet(nn.Module):
    """The official embedding network: VGG-like layers, hypercolumn of the input and three depths, 1x1 to ``E``.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, embedding_dim, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, widths: Sequence[Sequence[int]] = ((64, 64), (128, 128),
                 (256, 256, 256)), embedding_dim: int = 64) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        c = in_channels
        for block in widths:
            layers: list[nn.Module] = []
            for w in block:
                layers += [make_conv(spatial_dims, c, w, 3), nn.ReLU(inplace=True)]
                c = w
            self.blocks.append(nn.Sequential(*layers))
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        hyper = in_channels + sum(block[-1] for block in widths)
        self.embed = make_conv(spatial_dims, hyper, embedding_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed every pixel of ``x``."""
        size = x.shape[2:]
        columns = [x]
        y = x
        for i, block in enumerate(self.blocks):
            if i > 0:
                y = self.pool(y)
            y = block(y)
            columns.append(_resize(y, size))
        return self.embed(torch.cat(columns, dim=1))


@register_model(
    "seg_aware_conv",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Segmentation-Aware Convolutional Networks Using Local Attention Masks",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, params=22_269_859,
        source="no figure in the paper; official code github.com/aharley/segaware scripts/segaware/config/vgg/"
               "deploy.prototxt (segaware-all-largeFOV, VOC 21 classes), counted from its layer definitions",
    ),
    divisor=8,
    test_kwargs={2: {"width": 0.125, "embedding_dim": 8, "fc_channels": 16},
                 3: {"width": 0.0625, "embedding_dim": 4, "fc_channels": 8}},
)
class SegAwareDeepLab(SegmentationModel):
    """DeepLab-LargeFOV with every convolution segmentation-aware (Harley et al., ICCV 2017).

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 3).
        out_channels: Classes (paper: 21).
        width: Multiplier of the VGG-16 and embedding-network widths.
        embedding_dim: Dimension of the embeddings (official: 64).
        fc_channels: Channels of ``fc6``/``fc7`` (DeepLab-LargeFOV: 1024).
        fc6_dilation: Dilation of ``fc6`` (12).
        dropout: Dropout after ``fc6`` and ``fc7`` (0.5).
        normalize: Normalised segmentation-aware convolutions (official network: ``False``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        width: float = 1.0,
        embedding_dim: int = 64,
        fc_channels: int = 1024,
        fc6_dilation: int = 12,
        dropout: float = 0.5,
        normalize: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)

        def w(c: int) -> int:
            return max(round(c * width), 1)

        self.embedding = EmbeddingNet(spatial_dims, in_channels, [[w(c) for c in b] for b in VGG16_CONFIG[:3]],
                                      embedding_dim)
        self.blocks = nn.ModuleList()
        self.pools = nn.ModuleList()
        c = in_channels
        for level, block in enumerate(VGG16_CONFIG):
            dilation = 2 if level == 4 else 1
            convs = nn.ModuleList()
            for out in block:
                convs.append(SegAwareConv(spatial_dims, c, w(out), 3, dilation, normalize=normalize))
                c = w(out)
            self.blocks.append(convs)
            stride = 2 if level < 3 else 1
            self.pools.append(Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=stride, padding=1))
        self.pool5a = Pool[Pool.AVG, spatial_dims](kernel_size=3, stride=1, padding=1)
        self.fc6 = SegAwareConv(spatial_dims, c, fc_channels, 3, fc6_dilation, normalize=normalize)
        self.fc7 = make_conv(spatial_dims, fc_channels, fc_channels, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc8 = make_conv(spatial_dims, fc_channels, out_channels, 1)
        self.input_divisor = (8,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        emb = self.embedding(x)
        y = x
        for convs, pool in zip(self.blocks, self.pools, strict=True):
            e = _resize(emb, y.shape[2:])
            for conv in convs:
                y = torch.relu(conv(y, e))
            y = pool(y)
        y = self.pool5a(y)
        y = self.drop(torch.relu(self.fc6(y, _resize(emb, y.shape[2:]))))
        y = self.drop(torch.relu(self.fc7(y)))
        return _resize_linear(self.fc8(y), size)


def _resize_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
