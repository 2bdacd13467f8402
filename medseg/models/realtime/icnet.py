"""ICNet, the image cascade network (Zhao et al., 2018), 2D and 3D.

Paper: H. Zhao, X. Qi, X. Shen, J. Shi, J. Jia, "ICNet for Real-Time Semantic Segmentation on High-Resolution
Images", ECCV 2018 (arXiv:1704.08545), Section 3 (the network and the cascade feature fusion unit); reference
Caffe model ``evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt`` (github.com/hszhao/ICNet), whose layers we
follow.

Layout: three branches on the image at full, 1/2 and 1/4 resolution. The compressed PSPNet50 of the release (all
kernels halved: a deep stem of three 3x3 convolutions with 32, 32, 64 channels, then bottleneck stages of 3, 4, 6, 3
blocks with 128, 256, 512, 1024 output channels; ``width=0.5`` of our ResNet-50) runs on the 1/2 image up to the
first block of ``res3`` (``conv3_1``, 1/16 of the input). Its output, downsampled by 2 (``conv3_1_sub4``, 1/32), feeds
the remaining blocks (``res3``-``res5``, the 3x3 convolutions of ``res4`` dilated by 2 and of ``res5`` by 4): the
low-resolution branch shares its first layers' weights and computation with the medium one. A pyramid pooling that
*sums* the features with their average-pooled and upsampled versions (bins 1, 2, 3, 6; no convolutions) and a 1x1
convolution to 256 channels (BN, ReLU) end it. The high-resolution branch is three 3x3 convolutions with stride 2 (32,
32, 64 channels; BN, ReLU) on the full image (1/8).

Cascade feature fusion (CFF): the lower-resolution map F1 is upsampled by 2 and goes through a 3x3
convolution with dilation 2 (128 channels, BN); the higher-resolution map F2 through a 1x1 projection (128 channels,
BN); the sum goes through ReLU. CFF(1/32 -> 1/16, with ``conv3_1``) then CFF(1/16 -> 1/8, with the high-resolution
branch); the result is upsampled by 2 and classified by a 1x1 convolution (1/4), then upsampled by 4 to the input.

Cascade label guidance (Section 3): in training, each CFF also classifies its upsampled F1 with a 1x1 convolution
(the 1/16 and 1/8 outputs), and the loss is ``L = lambda1 L(1/16) + lambda2 L(1/8) + lambda3 L(1/4)``. With
``deep_supervision=True`` the model returns ``[main, guide_8, guide_16]`` in training mode (the main scores at the input
resolution, the guidance scores at 1/8 and 1/16: ``deep_supervision_scales`` ``[1, 8, 16]``) and declares
``loss_weights = (1.0, 0.4, 0.4)`` (lambda3 = 1, lambda2 = lambda1 = 0.4, the weights of the maintained
reimplementations, mmsegmentation and GluonCV; hellochick's TensorFlow port of the release uses 0.16 for lambda1; we
could not read the paper's own sentence). In evaluation mode the model returns the main scores only.

Differences from the Caffe model that change no parameter: the stride of ``conv3_1`` sits on its 3x3 convolution
(torchvision's ResNet V1.5) instead of its first 1x1; resizing is (bi/tri)linear with ``align_corners=False`` to
exact sizes (the Caffe ``Interp`` layer on odd sizes 1025x2049); the pyramid pooling uses adaptive average pooling
instead of fixed kernels computed for 1025x2049 inputs.

Dims: 2D and 3D (every layer comes from MONAI's factories; nothing is tied to RGB images); the input must be
divisible by 32.

Parameter figure: 6,699,987 parameters, the count of the released ``icnet_cityscapes_bnnomerge.prototxt`` (3 input
channels, 19 classes: 6,671,443 convolution weights and biases plus 28,544 BN scales and shifts; the training-only
guidance classifiers add 7,334). The paper states none. Ours: 6,699,987 without the guidance classifiers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones import load_pretrained
from medseg.models.backbones.base import RELU, ConvNormActD
from medseg.models.backbones.resnet import ResNetBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, make_act, make_conv
from medseg.models.natural.classic._modules import build_backbone, resize, set_block_dilations
from medseg.models.natural.classic.pspnet import apply_deep_stem
from medseg.models.registry import PaperConfig, register_model

__all__ = ["CascadeFeatureFusion", "ICNet", "SumPyramidPooling"]


class SumPyramidPooling(nn.Module):
    """ICNet's pyramid pooling: the input plus its average-pooled (bins) and upsampled versions, no convolutions.

    The ``conv5_3_sum`` of the reference prototxt. Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        bins: Output sizes of the adaptive average poolings (1, 2, 3, 6).
    """

    def __init__(self, spatial_dims: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.pools = nn.ModuleList(Pool[Pool.ADAPTIVEAVG, spatial_dims](b) for b in self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` plus each pooled level resized to ``x``'s size."""
        out = x
        for pool in self.pools:
            out = out + resize(pool(x), x.shape[2:])
        return out


class CascadeFeatureFusion(nn.Module):
    """Cascade feature fusion unit (Zhao et al., 2018, Section 3) with its label-guidance classifier.

    ``F1`` (``(B, C1, *s)``) is upsampled to ``F2``'s size (``(B, C2, *2s)``), convolved (3x3, dilation 2, BN) and added
    to the projected ``F2`` (1x1, BN); ReLU. The classifier (1x1 convolution on the upsampled ``F1``) gives the
    guidance scores.

    Shapes: ``F1 (B, C1, *s)``, ``F2 (B, C2, *2s)`` to ``((B, C_out, *2s), scores (B, K, *2s) or None)``.

    Args:
        spatial_dims: 2 or 3.
        low_channels: C1.
        high_channels: C2.
        out_channels: C_out (128).
        num_classes: K for the guidance classifier; ``None`` builds none.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        low_channels: int,
        high_channels: int,
        out_channels: int,
        num_classes: int | None = None,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        self.low = ConvNormActD(spatial_dims, low_channels, out_channels, 3, dilation=2, norm=norm, act=None)
        self.high = ConvNormActD(spatial_dims, high_channels, out_channels, 1, norm=norm, act=None)
        self.act = make_act(RELU)
        self.classifier = make_conv(spatial_dims, low_channels, num_classes, 1) if num_classes else None

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fuse ``low`` (upsampled to ``high``'s size) with ``high``; return the map and the guidance scores."""
        up = resize(low, high.shape[2:])
        fused = self.act(self.low(up) + self.high(high))
        return fused, (self.classifier(up) if self.classifier is not None else None)


@register_model(
    "icnet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="ICNet for Real-Time Semantic Segmentation on High-Resolution Images",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={}, params=6_699_987,
        source="authors' Caffe model github.com/hszhao/ICNet evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt "
               "(Cityscapes, 19 classes; convolutions 6,671,443 + BN scale/shift 28,544); the paper states no count",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"width": 0.125, "branch_channels": (8, 8, 16), "cff_channels": 16},
)
class ICNet(SegmentationModel):
    """ICNet (Zhao et al., ECCV 2018): three resolution branches, cascade feature fusion, cascade label guidance.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (spatial sizes divisible by 32); with
    ``deep_supervision=True`` in training mode a list ``[main, guide_8, guide_16]`` (full, 1/8 and 1/16 resolution).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes (19 for Cityscapes).
        backbone: A ResNet backbone name (``"resnet50"``, the PSPNet50 of the paper).
        width: Width multiplier of the backbone (0.5: the released, compressed model; 1: uncompressed PSPNet50).
        pretrained_backbone: Local backbone weights (the deep stem's tensors do not fit and are skipped).
        backbone_kwargs: Further backbone options.
        bins: Pyramid pooling bins (1, 2, 3, 6).
        branch_channels: Channels of the high-resolution branch's three convolutions (32, 32, 64).
        cff_channels: Output channels of the CFF units (128).
        norm: Normalisation of the head layers.
        deep_supervision: Build the guidance classifiers and return the three outputs in training mode.
        guidance_weights: Loss weights (lambda2, lambda1) of the 1/8 and 1/16 guidance outputs.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet50",
        width: float = 0.5,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        bins: Sequence[int] = (1, 2, 3, 6),
        branch_channels: Sequence[int] = (32, 32, 64),
        cff_channels: int = 128,
        norm: NormSpec = "batch",
        deep_supervision: bool = False,
        guidance_weights: tuple[float, float] = (0.4, 0.4),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        kwargs = {"width": width, **dict(backbone_kwargs or {})}
        bb = build_backbone(backbone, spatial_dims, in_channels, 8, None, kwargs, self.model_name)
        if not isinstance(bb, ResNetBackbone):
            raise ModelError(f"{self.model_name}: the backbone must be a ResNet, got {backbone!r}")
        if len(branch_channels) != 3:
            raise ModelError(f"{self.model_name}: branch_channels needs 3 values, got {tuple(branch_channels)}")
        apply_deep_stem(bb)
        set_block_dilations(bb, "layer3", [2] * len(bb.layer3))
        set_block_dilations(bb, "layer4", [4] * len(bb.layer4))
        if pretrained_backbone is not None:
            load_pretrained(bb, pretrained_backbone, strict=False)
        self.backbone = bb
        self.input_divisor = (32,) * spatial_dims
        self.ppm = SumPyramidPooling(spatial_dims, bins)
        low = bb.out_channels[-1] // 4
        self.reduce = ConvNormActD(spatial_dims, bb.out_channels[-1], low, 1, norm=norm)
        c1, c2, c3 = branch_channels
        self.sub1 = nn.Sequential(
            ConvNormActD(spatial_dims, in_channels, c1, 3, 2, norm=norm),
            ConvNormActD(spatial_dims, c1, c2, 3, 2, norm=norm),
            ConvNormActD(spatial_dims, c2, c3, 3, 2, norm=norm),
        )
        k = out_channels if deep_supervision else None
        self.cff_24 = CascadeFeatureFusion(spatial_dims, low, bb.out_channels[2], cff_channels, k, norm)
        self.cff_12 = CascadeFeatureFusion(spatial_dims, cff_channels, c3, cff_channels, k, norm)
        self.classifier = make_conv(spatial_dims, cff_channels, out_channels, 1)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims, (8,) * spatial_dims, (16,) * spatial_dims]
            self.loss_weights = (1.0, float(guidance_weights[0]), float(guidance_weights[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        bb = self.backbone
        # medium branch (1/2 image) up to conv3_1 (1/16)
        h = bb.pool(bb.stem(resize(x, [s // 2 for s in size])))
        conv3_1 = bb.layer2[0](bb.layer1(h))
        # low branch: conv3_1 downsampled (1/32), shared weights of the remaining layers
        h = resize(conv3_1, [s // 32 for s in size])
        h = bb.layer4(bb.layer3(bb.layer2[1:](h)))
        h = self.reduce(self.ppm(h))
        # high branch (full image, 1/8)
        f24, guide_16 = self.cff_24(h, conv3_1)
        f124, guide_8 = self.cff_12(f24, self.sub1(x))
        main = self.classifier(resize(f124, [s // 4 for s in size]))
        main = resize(main, size)
        if self.training and self.deep_supervision:
            return [main, guide_8, guide_16]  # type: ignore[list-item]
        return main
