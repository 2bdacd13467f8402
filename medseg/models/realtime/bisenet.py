"""BiSeNet, the bilateral segmentation network (Yu et al., 2018), 2D and 3D.

Paper: C. Yu, J. Wang, C. Peng, C. Gao, G. Yu, N. Sang, "BiSeNet: Bilateral Segmentation Network for Real-time
Semantic Segmentation", ECCV 2018 (arXiv:1808.00897), Section 3 and Fig. 2; the authors' PyTorch code
(github.com/ycszen/TorchSeg, ``model/bisenet/cityscapes.bisenet.X39/network.py``, ``...R18/network.py``,
``furnace/seg_opr/seg_oprs.py``), whose layer widths we follow.

Layout: a spatial path of three strided convolutions (Fig. 2a; the code: 7x7 with stride 2 and 64 channels, two 3x3
with stride 2 and 64 channels, then a 1x1 convolution to 128 channels; BN and ReLU each) keeps 1/8 of the resolution.
The context path is a fast-downsampling backbone, Xception39 (:mod:`medseg.models.backbones.xception39`) or
ResNet-18 (``context_path="resnet18"``), with a global average pooling on its last map (1x1 convolution to 128
channels, BN, ReLU) added to the attention-refined last map. Attention refinement modules (ARM, Fig. 2b) refine the
1/32 and 1/16 maps: in the code a 3x3 convolution to 128 channels (BN, ReLU), then a channel attention (global average
pooling, 1x1 convolution, BN, sigmoid) that multiplies it. The 1/32 stage (plus global context) is upsampled to 1/16,
refined by a 3x3 convolution (BN, ReLU), added to the 1/16 ARM output, upsampled to 1/8 and refined again. The feature
fusion module (FFM, Fig. 2c) concatenates the spatial and context features (256 channels), applies a 1x1 convolution
(BN, ReLU) and re-weights it by an attention vector (global pooling, 1x1 convolution, ReLU, 1x1 convolution, sigmoid):
``y = f + f * a``. The head (3x3 convolution to 64 channels, BN, ReLU, 1x1 convolution to the classes) works at 1/8;
the scores are upsampled to the input.

Auxiliary loss (the loss function of Section 3): two auxiliary heads (3x3 convolution to 128 channels with
Xception39, 256 with ResNet-18, BN, ReLU, 1x1 convolution) supervise the two refined context maps (1/16 and 1/8 in
the code), weighted by ``alpha = 1``. With ``deep_supervision=True`` the model returns ``[main, aux_16, aux_8]`` in
training mode, each upsampled to the input (``deep_supervision_scales`` ``[1, 1, 1]``) with ``loss_weights = (1.0,
1.0, 1.0)``.

Dims: 2D and 3D (no layer is tied to RGB images; the spatial path's 7x7 kernel becomes 7x7x7); inputs divisible by 32.

Parameter figure: the authors' code counts 1,842,289 parameters for the Xception39 model with its two auxiliary heads
(3 input channels, 19 Cityscapes classes; 1,541,963 without them) and 13,494,777 for the ResNet-18 model (256-channel
auxiliary heads; 13,194,489 with the 128-channel heads of its speed configuration). We count the same. The comparison
table of the paper, as quoted elsewhere, lists 5.8M (Xception39) and 49.0M (ResNet-18) parameters, which no
configuration of the released code reaches; we could not read the table itself and record the code's figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, make_conv
from medseg.models.natural.classic._modules import build_backbone, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["AttentionRefinement", "BiSeNet", "BiSeNetHead", "FeatureFusion", "SpatialPath"]

_CONTEXT_PATHS = ("xception39", "resnet18")


class SpatialPath(nn.Sequential):
    """BiSeNet's spatial path: 7x7/2, 3x3/2, 3x3/2 convolutions (64 channels) and a 1x1 convolution (Fig. 2a).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, out_channels, *spatial / 8)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        inner_channels: Channels of the three strided convolutions (64).
        out_channels: Output channels (128).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, inner_channels: int = 64, out_channels: int = 128,
                 norm: NormSpec = "batch") -> None:
        super().__init__(
            ConvNormActD(spatial_dims, in_channels, inner_channels, 7, 2, norm=norm),
            ConvNormActD(spatial_dims, inner_channels, inner_channels, 3, 2, norm=norm),
            ConvNormActD(spatial_dims, inner_channels, inner_channels, 3, 2, norm=norm),
            ConvNormActD(spatial_dims, inner_channels, out_channels, 1, norm=norm),
        )


class AttentionRefinement(nn.Module):
    """Attention refinement module (Fig. 2b; the code's version with a 3x3 convolution first).

    ``f = relu(bn(conv3x3(x)))``, ``y = f * sigmoid(bn(conv1x1(gap(f))))``.
    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (128).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.conv = ConvNormActD(spatial_dims, in_channels, out_channels, 3, norm=norm)
        self.attention = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                                       ConvNormActD(spatial_dims, out_channels, out_channels, 1, norm=norm, act=None),
                                       nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refine ``x`` by its channel attention."""
        f = self.conv(x)
        return f * self.attention(f)


class FeatureFusion(nn.Module):
    """Feature fusion module (Fig. 2c): concatenation, 1x1 convolution, attention re-weighting ``f + f * a``.

    Shapes: ``(B, C_s, *spatial)`` and ``(B, C_c, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_s + C_c.
        out_channels: C_out (256).
        reduction: Channel reduction inside the attention (1 in the code).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, reduction: int = 1,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        self.conv = ConvNormActD(spatial_dims, in_channels, out_channels, 1, norm=norm)
        mid = out_channels // reduction
        self.attention = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                                       ConvNormActD(spatial_dims, out_channels, mid, 1, norm=None),
                                       ConvNormActD(spatial_dims, mid, out_channels, 1, norm=None, act=None),
                                       nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Fuse the spatial-path and context-path features."""
        f = self.conv(torch.cat([spatial, context], dim=1))
        return f + f * self.attention(f)


class BiSeNetHead(nn.Sequential):
    """3x3 convolution (BN, ReLU) and a 1x1 convolution to the classes (the main and the auxiliary heads).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, num_classes, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, num_classes: int,
                 norm: NormSpec = "batch") -> None:
        super().__init__(ConvNormActD(spatial_dims, in_channels, channels, 3, norm=norm),
                         make_conv(spatial_dims, channels, num_classes, 1))


@register_model(
    "bisenet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"deep_supervision": True}, params=1_842_289,
        source="authors' code github.com/ycszen/TorchSeg model/bisenet/cityscapes.bisenet.X39/network.py (Xception39 "
               "context path, 19 classes, with the two auxiliary heads); the paper's table is quoted as 5.8M",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"backbone_kwargs": {"widths": (4, 8, 16), "layers": (1, 1, 1)}, "spatial_channels": (8, 16),
                 "context_channels": 16, "head_channels": 8, "aux_channels": 8},
)
class BiSeNet(SegmentationModel):
    """BiSeNet (Yu et al., ECCV 2018): spatial path, context path with ARMs and global context, FFM, aux heads.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (spatial sizes divisible by 32); with
    ``deep_supervision=True`` in training mode a list ``[main, aux_16, aux_8]`` of three such tensors.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        context_path: ``"xception39"`` (paper's BiSeNet1) or ``"resnet18"`` (BiSeNet2).
        pretrained_backbone: Local weights of the context path's backbone.
        backbone_kwargs: Further backbone options (e.g. a narrower Xception39).
        spatial_channels: (inner, output) channels of the spatial path (64, 128).
        context_channels: Channels of the ARMs, the global context and the refinements (128).
        head_channels: Channels of the main head's 3x3 convolution (64).
        aux_channels: Channels of the auxiliary heads' 3x3 convolution; ``None``: 128 (Xception39) or 256
            (ResNet-18), as in the authors' code.
        norm: Normalisation of the head layers.
        deep_supervision: Build the auxiliary heads and return ``[main, aux_16, aux_8]`` in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        context_path: str = "xception39",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        spatial_channels: tuple[int, int] = (64, 128),
        context_channels: int = 128,
        head_channels: int = 64,
        aux_channels: int | None = None,
        norm: NormSpec = "batch",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if context_path not in _CONTEXT_PATHS:
            raise ModelError(f"{self.model_name}: context_path must be one of {_CONTEXT_PATHS}, got {context_path!r}")
        self.backbone = build_backbone(context_path, spatial_dims, in_channels, 32, pretrained_backbone,
                                       backbone_kwargs, self.model_name)
        self.input_divisor = (32,) * spatial_dims
        c = context_channels
        c16, c32 = self.backbone.out_channels[-2:]
        self.spatial_path = SpatialPath(spatial_dims, in_channels, *spatial_channels, norm=norm)
        self.global_context = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                                            ConvNormActD(spatial_dims, c32, c, 1, norm=norm))
        self.arm32 = AttentionRefinement(spatial_dims, c32, c, norm)
        self.arm16 = AttentionRefinement(spatial_dims, c16, c, norm)
        self.refine32 = ConvNormActD(spatial_dims, c, c, 3, norm=norm)
        self.refine16 = ConvNormActD(spatial_dims, c, c, 3, norm=norm)
        fused = spatial_channels[1] + c
        self.ffm = FeatureFusion(spatial_dims, fused, fused, 1, norm)
        self.head = BiSeNetHead(spatial_dims, fused, head_channels, out_channels, norm)
        self.deep_supervision = deep_supervision
        self.aux16: nn.Module | None = None
        self.aux8: nn.Module | None = None
        if deep_supervision:
            aux = aux_channels or (128 if context_path == "xception39" else 256)
            self.aux16 = BiSeNetHead(spatial_dims, c, aux, out_channels, norm)
            self.aux8 = BiSeNetHead(spatial_dims, c, aux, out_channels, norm)
            self.deep_supervision_scales = [(1,) * spatial_dims] * 3
            self.loss_weights = (1.0, 1.0, 1.0)  # the paper's alpha = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        spatial = self.spatial_path(x)
        feats = self.backbone(x)
        f16, f32 = feats[-2], feats[-1]
        h = self.arm32(f32) + self.global_context(f32)  # the 1x1 global context broadcasts
        r16 = self.refine32(resize(h, f16.shape[2:]))
        h = self.arm16(f16) + r16
        r8 = self.refine16(resize(h, spatial.shape[2:]))
        main = resize(self.head(self.ffm(spatial, r8)), size)
        if self.training and self.aux16 is not None and self.aux8 is not None:
            return [main, resize(self.aux16(r16), size), resize(self.aux8(r8), size)]
        return main
