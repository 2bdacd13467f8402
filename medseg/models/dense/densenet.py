"""DenseNet feature extractor (Huang et al., 2017), 2D or 3D, returning the features of every resolution.

Paper: G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993), Section 3 and Table 1 (DenseNet-BC: bottleneck layers and compression 0.5).

Layout (Table 1): a 7x7 convolution with stride 2 (``init_features`` maps), BN, ReLU, 3x3 max pooling with stride 2;
dense blocks of BN-ReLU-Conv(1x1, 4k)-BN-ReLU-Conv(3x3, k) layers (:class:`~medseg.models.blocks.DenseBlock` with
``bottleneck_factor=4``); between blocks a transition of BN, ReLU, 1x1 convolution to ``compression`` times the
channels and 2x2 average pooling; a final BN and ReLU. Convolutions have no bias.

DenseNet-161: ``block_config=(6, 12, 36, 24)``, ``growth_rate=48``, ``init_features=96`` (:data:`DENSENET161`);
DenseNet-121/169/201 use ``growth_rate=32``, ``init_features=64`` and blocks (6, 12, 24, 16) / (6, 12, 32, 32) /
(6, 12, 48, 32). The 2D DenseNet-161 feature extractor has 26,472,000 parameters, the count of torchvision's
``densenet161().features`` (28,681,000 parameters with the 1000-class classifier).

We write our own module because segmentation networks built on DenseNet (H-DenseUNet, FC-style decoders) need the
features of every resolution and, in 3D, anisotropic pooling; MONAI's ``DenseNet`` is a classifier whose
``features`` sequence exposes neither. The layers are the same as MONAI's and torchvision's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.blocks import ConvNormAct, DenseBlock, NormActConv, NormSpec, as_tuple, make_act, make_norm

__all__ = ["DENSENET121", "DENSENET161", "DENSENET169", "DENSENET201", "DenseNetEncoder"]

DENSENET121 = {"block_config": (6, 12, 24, 16), "growth_rate": 32, "init_features": 64}
DENSENET161 = {"block_config": (6, 12, 36, 24), "growth_rate": 48, "init_features": 96}
DENSENET169 = {"block_config": (6, 12, 32, 32), "growth_rate": 32, "init_features": 64}
DENSENET201 = {"block_config": (6, 12, 48, 32), "growth_rate": 32, "init_features": 64}


class DenseNetEncoder(nn.Module):
    """DenseNet-BC feature extractor returning one feature map per resolution.

    Shapes: ``(B, in_channels, *spatial)`` to a list of ``len(block_config) + 1`` maps: the stem's output
    (``init_features`` channels, ``spatial / 2``), each dense block's output before its transition
    (``spatial / 4``, ``/ 8``, ...), and the last block's output after the final BN-ReLU. :attr:`feature_channels`
    and :attr:`feature_strides` give their channels and strides (per axis).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        block_config: Layers of each dense block.
        growth_rate: Channels each layer adds (k).
        init_features: Channels of the stem convolution.
        bottleneck_factor: Width of the 1x1 bottleneck as a multiple of ``growth_rate`` (4 in DenseNet-BC).
        compression: Fraction of the channels a transition keeps (0.5 in DenseNet-BC).
        stem_stride: Stride of the stem convolution and of the max pooling, per axis.
        transition_strides: Pooling of each transition, one value or per axis (default 2); 3D networks on thin
            slabs pool in-plane only, e.g. ``(1, 2, 2)``.
        dropout: Dropout after each convolution of the dense layers and transitions (0 in DenseNet on ImageNet).
        norm: Normalisation (batch norm).
        block_dilations: Dilation of the 3x3 convolutions of each dense block (default 1); with a transition stride
            of 1 this turns the pooling of the later blocks into dilation, as DeepLab does (same parameters).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        block_config: Sequence[int] = DENSENET161["block_config"],
        growth_rate: int = 48,
        init_features: int = 96,
        bottleneck_factor: int = 4,
        compression: float = 0.5,
        stem_stride: int | Sequence[int] = 2,
        transition_strides: int | Sequence[int] | Sequence[Sequence[int]] = 2,
        dropout: float = 0.0,
        norm: NormSpec = "batch",
        block_dilations: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        blocks = tuple(int(n) for n in block_config)
        dilations = tuple(int(d) for d in block_dilations) if block_dilations is not None else (1,) * len(blocks)
        if len(dilations) != len(blocks) or min(dilations) < 1:
            raise ModelError(f"DenseNetEncoder: need {len(blocks)} positive block dilations, got {dilations}")
        if len(blocks) < 1 or min(blocks) < 1:
            raise ModelError(f"DenseNetEncoder: block_config needs positive layer counts, got {blocks}")
        if not 0 < compression <= 1:
            raise ModelError(f"DenseNetEncoder: compression must be in (0, 1], got {compression}")
        if isinstance(transition_strides, int) or (
            len(transition_strides) == spatial_dims and all(isinstance(s, int) for s in transition_strides)
        ):
            t_strides = [as_tuple(transition_strides, spatial_dims)] * (len(blocks) - 1)  # type: ignore[arg-type]
        else:
            t_strides = [as_tuple(s, spatial_dims) for s in transition_strides]  # type: ignore[arg-type]
        if len(t_strides) != len(blocks) - 1:
            raise ModelError(f"DenseNetEncoder: need {len(blocks) - 1} transition strides, got {len(t_strides)}")
        relu = ("relu", {"inplace": True})
        s = as_tuple(stem_stride, spatial_dims)
        self.stem = ConvNormAct(spatial_dims, in_channels, init_features, 7, s, bias=False, norm=norm, act=relu)
        self.stem_pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=s, padding=1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        channels = init_features
        self.feature_channels = [init_features]
        stride = s
        self.feature_strides = [stride]
        stride = tuple(a * b for a, b in zip(stride, s, strict=True))
        for i, n in enumerate(blocks):
            block = DenseBlock(spatial_dims, channels, growth_rate, n, bottleneck_factor=bottleneck_factor, norm=norm,
                               act=relu, dropout=dropout, bias=False)
            if dilations[i] > 1:  # same parameters, dilated 3x3 convolutions
                for layer in block.layers:
                    old = layer[1].conv
                    layer[1].conv = Conv[Conv.CONV, spatial_dims](
                        old.in_channels, old.out_channels, kernel_size=old.kernel_size,
                        padding=tuple(dilations[i] * (k // 2) for k in old.kernel_size),
                        dilation=dilations[i], bias=False)
            self.blocks.append(block)
            channels = block.out_channels
            if i < len(blocks) - 1:
                self.feature_channels.append(channels)
                self.feature_strides.append(stride)
                out = int(channels * compression)
                self.transitions.append(nn.Sequential(
                    NormActConv(spatial_dims, channels, out, 1, bias=False, norm=norm, act=relu, dropout=dropout),
                    Pool[Pool.AVG, spatial_dims](kernel_size=t_strides[i], stride=t_strides[i]),
                ))
                stride = tuple(a * b for a, b in zip(stride, t_strides[i], strict=True))
                channels = out
        self.final = nn.Sequential(make_norm(norm, spatial_dims, channels) or nn.Identity(), make_act(relu))
        self.feature_channels.append(channels)
        self.feature_strides.append(stride)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        x = self.stem(x)
        features = [x]
        x = self.stem_pool(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                features.append(x)
                x = self.transitions[i](x)
        features.append(self.final(x))
        return features
