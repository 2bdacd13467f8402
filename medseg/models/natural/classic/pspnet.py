"""PSPNet, the pyramid scene parsing network (Zhao et al., 2017), 2D and 3D.

Paper: H. Zhao, J. Shi, X. Qi, X. Wang, J. Jia, "Pyramid Scene Parsing Network", CVPR 2017 (arXiv:1612.01105),
Sections 3.2-3.3, 4 and Fig. 3-4; reference Caffe model ``pspnet101_VOC2012.prototxt`` (github.com/hszhao/PSPNet)
and the authors' PyTorch code (github.com/hszhao/semseg).

Layout: a pretrained ResNet "with the dilated network strategy" (Section 3.2): output stride 8, the 3x3 convolutions
of ``res4`` dilated by 2 and of ``res5`` by 4 (all blocks, as the reference prototxt: ``conv4_1_3x3`` already has
dilation 2). The authors' ResNet replaces the 7x7 stem by three 3x3 convolutions (64 with stride 2, 64, 128; BN and
ReLU) before the max pooling (the deep stem, "ResNet-C" in later terminology; the prototxt's ``conv1_1_3x3_s2``,
``conv1_2_3x3``, ``conv1_3_3x3``), so ``res2`` starts from 128 channels (``deep_stem=True``, the default; torchvision
weights need ``deep_stem=False``). The pyramid pooling module (Fig. 3; bins 1, 2, 3, 6, each an average pooling,
1x1 convolution to 512 = 2048 / 4 channels with BN and ReLU, bilinear upsampling) is concatenated with the ``res5``
features (4096 channels); a 3x3 convolution with 512 channels, BN and ReLU, dropout 0.1 and a 1x1 convolution give
the class scores, bilinearly upsampled to the input.

Auxiliary loss (Section 3.3, Fig. 4): a second classifier on ``res4`` (``res4b22``: 3x3 convolution with 256
channels, BN, ReLU, dropout 0.1, 1x1 convolution) trained with weight 0.4. With ``deep_supervision=True`` the model
returns ``[main, aux]`` in training mode, both at the input resolution (``deep_supervision_scales`` = ``[1, 1]``),
and declares the paper's loss weights ``loss_weights = (1.0, 0.4)``, which the trainer applies. In evaluation mode,
or without the option (no auxiliary head is built), it
returns the main scores only. Our bottleneck strides its 3x3 convolution (torchvision), which changes no parameter.

Parameter figure: the paper gives none; ``params`` is ``None``. We count 68,073,706 at the paper's VOC configuration
(ResNet-101 with the deep stem, 21 classes, with the auxiliary head) — see the model tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones import load_pretrained
from medseg.models.backbones.base import ConvNormActD
from medseg.models.backbones.resnet import ResNetBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import PyramidPooling, build_backbone, resize, set_block_dilations
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PSPNet", "apply_deep_stem"]


def apply_deep_stem(backbone: ResNetBackbone) -> None:
    """Replace a ResNet's 7x7 stem by PSPNet's three 3x3 convolutions (w, w, 2w; stride 2 first) with BN and ReLU.

    The first block of ``layer1`` is rebuilt for its wider input (``2w`` channels); the backbone's level channels are
    updated.
    """
    dims = backbone.spatial_dims
    w = backbone.out_channels[0]
    backbone.stem = nn.Sequential(
        ConvNormActD(dims, backbone.in_channels, w, 3, 2),
        ConvNormActD(dims, w, w, 3),
        ConvNormActD(dims, w, 2 * w, 3),
    )
    first = backbone.layer1[0]
    planes = first.conv1.conv.out_channels
    backbone.layer1[0] = type(first)(dims, 2 * w, planes)
    backbone.out_channels[0] = 2 * w


class _Classifier(nn.Sequential):
    """3x3 convolution with BN and ReLU, dropout, 1x1 convolution to the classes (PSPNet's final and aux heads)."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            ConvNormActD(spatial_dims, in_channels, channels, 3),
            nn.Dropout(dropout),
            make_conv(spatial_dims, channels, out_channels, 1),
        )


@register_model(
    "pspnet",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Pyramid Scene Parsing Network",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={"deep_supervision": True}, params=None,
        source="CVPR 2017, Sections 3.2-3.3 and Fig. 3-4 (dilated ResNet-101, bins 1/2/3/6, auxiliary loss on res4), "
               "reference pspnet101_VOC2012.prototxt, VOC 21 classes; the paper states no parameter count",
    ),
    divisor=1,
    deep_supervision=True,
    test_kwargs={2: {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "head_channels": 16,
                     "aux_channels": 8},
                 3: {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "head_channels": 16,
                     "aux_channels": 8, "bins": (1, 2)}},
)
class PSPNet(SegmentationModel):
    """PSPNet (Zhao et al., CVPR 2017): dilated deep-stem ResNet-101, pyramid pooling (1, 2, 3, 6), auxiliary head.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (any size; the scores are resized);
    with ``deep_supervision=True`` in training mode a list ``[main, aux]`` of two such tensors.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes (paper: 21 for VOC, 19 for Cityscapes, 150 for ADE20K).
        backbone: A ResNet backbone name (paper: ``"resnet101"``; ``"resnet50"`` for ADE20K).
        output_stride: Output stride (paper: 8).
        pretrained_backbone: Local weights of the backbone (with the deep stem, tensors that do not fit are reported
            and skipped).
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        deep_stem: Three 3x3 stem convolutions instead of the 7x7 one (paper: yes).
        bins: Pyramid bins (paper: 1, 2, 3, 6).
        head_channels: Channels of the 3x3 convolution after pyramid pooling (paper: 512).
        aux_channels: Channels of the auxiliary head's 3x3 convolution (paper: 256).
        dropout: Dropout before each 1x1 classifier (0.1).
        deep_supervision: Build the auxiliary head on ``res4`` and return ``[main, aux]`` in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        deep_stem: bool = True,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        aux_channels: int = 256,
        dropout: float = 0.1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        bb = build_backbone(backbone, spatial_dims, in_channels, output_stride, None, backbone_kwargs,
                            self.model_name)
        if not isinstance(bb, ResNetBackbone):
            raise ModelError(f"{self.model_name}: the backbone must be a ResNet, got {backbone!r}")
        if deep_stem:
            apply_deep_stem(bb)
        dilation = 1
        for stage, stride in zip(("layer2", "layer3", "layer4"), (2, 2, 2), strict=True):
            if bb.strides[int(stage[-1])] == bb.strides[int(stage[-1]) - 1]:  # stride replaced by dilation
                dilation *= stride
                set_block_dilations(bb, stage, [dilation] * len(getattr(bb, stage)))
        if pretrained_backbone is not None:
            load_pretrained(bb, pretrained_backbone, strict=not deep_stem)
        self.backbone = bb
        self.ppm = PyramidPooling(spatial_dims, bb.out_channels[-1], bins)
        self.head = _Classifier(spatial_dims, self.ppm.out_channels, head_channels, out_channels, dropout)
        self.deep_supervision = deep_supervision
        self.aux: nn.Module | None = None
        if deep_supervision:
            self.aux = _Classifier(spatial_dims, bb.out_channels[-2], aux_channels, out_channels, dropout)
            self.deep_supervision_scales = [(1,) * spatial_dims, (1,) * spatial_dims]
            self.loss_weights = (1.0, 0.4)  # Section 3.3: "we set the weight of auxiliary loss to 0.4"

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        features = self.backbone(x)
        main = resize(self.head(self.ppm(features[-1])), x.shape[2:])
        if self.training and self.aux is not None:
            return [main, resize(self.aux(features[-2]), x.shape[2:])]
        return main
