"""Multi-scale context aggregation by dilated convolutions (Yu & Koltun, 2016): front-end + context module, 2D/3D.

Paper: F. Yu, V. Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016 (arXiv:1511.07122),
Section 3 (context module, Table 1) and Section 4 (front-end); reference Caffe code github.com/fyu/dilation.

Front-end (Section 4): VGG-16 adapted to dense prediction: "we removed the last two pooling and striding layers
entirely", the convolutions after them are dilated by 2 (``conv5``) and 4 (``fc6``); ``fc6`` is the 7x7 fully
connected layer as a convolution with 4096 channels, ``fc7`` 1x1 with 4096 (ReLU, dropout 0.5), and a 1x1 layer gives
the C class scores at output stride 8.

Context module (Table 1): seven 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1 and a final 1x1 convolution,
"each followed by a pointwise truncation max(., 0)" except the final one, which outputs the C scores. The basic
module keeps C channels everywhere; the large one has 2C, 2C, 4C, 8C, 16C, 32C, 32C, C output channels. Identity
initialisation (Section 3, Eq. 4-5): basic layers start as identities, ``k(t, a) = 1[t = 0] 1[a = b]``; the layers of
the large module start at ``C / c_out`` where ``t = 0`` and ``floor(a C / c_in) = floor(b C / c_out)``, elsewhere
small Gaussian noise ``epsilon ~ N(0, sigma^2)`` with ``sigma << C / c_out``. The output is bilinearly upsampled to
the input size (8x). Padding is "same" (the reference code pads the input by reflection instead); inputs of any size
work.

Parameter figure: the paper gives the context module's size, not the whole network's: "the basic context module has
64C^2 parameters" (without biases; checked by the model tests), none for the whole network, so ``params`` is
``None``. At ``in_channels=3, out_channels=21`` with the large module our count is 134,346,581 for the front-end and
6,803,139 for the context module (141,149,720 in all), exactly the count of the authors' released VOC network
(github.com/fyu/dilation, ``models/dilation8_pascal_voc_deploy.prototxt``, counted layer by layer). The "140.8" (M)
listed for "Dilation10" in the HRNet-Semantic-Segmentation README is quoted there from another paper and is for
the authors' Cityscapes model (Dilation10, 19 classes), not a figure of this paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import FullyConvClassifier, build_backbone, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["ContextModule", "DilatedContextNet"]

_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
_LARGE = (2, 2, 4, 8, 16, 32, 32)


class ContextModule(nn.Module):
    """The context module of Yu & Koltun (ICLR 2016, Table 1), basic or large, with identity initialisation.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C, the number of classes.
        variant: ``"basic"`` or ``"large"``.
        init_sigma: Standard deviation of the noise of the large module's initialisation, relative to
            ``C / c_out``.
    """

    def __init__(self, spatial_dims: int, channels: int, variant: str = "large", init_sigma: float = 1e-3) -> None:
        super().__init__()
        if variant not in ("basic", "large"):
            raise ModelError(f"context module variant must be 'basic' or 'large', got {variant!r}")
        self.variant = variant
        widths = [channels * (m if variant == "large" else 1) for m in _LARGE]
        layers = []
        c = channels
        for w, d in zip(widths, _DILATIONS, strict=True):
            layers.append(ConvNormActD(spatial_dims, c, w, 3, dilation=d, bias=True, norm=None,
                                       act=("relu", {"inplace": True})))
            c = w
        self.layers = nn.Sequential(*layers)
        self.final = make_conv(spatial_dims, c, channels, 1)
        self.dilations = _DILATIONS
        self.reset_parameters(init_sigma)

    def convolutions(self) -> list[nn.Module]:
        """The eight convolutions of the module, in order."""
        return [layer.conv for layer in self.layers] + [self.final]

    def reset_parameters(self, init_sigma: float = 1e-3) -> None:
        """Identity initialisation (Eq. 4 for equal channel counts, Eq. 5 otherwise); biases zero."""
        convs = self.convolutions()
        if convs[0].weight.device.type == "meta":
            return
        classes = self.final.out_channels
        with torch.no_grad():
            for conv in convs:
                w = conv.weight  # (c_out, c_in, *k)
                c_out, c_in = w.shape[:2]
                value = classes / c_out
                w.normal_(0.0, init_sigma * value) if c_out != c_in else w.zero_()
                centre = tuple(k // 2 for k in w.shape[2:])
                for b in range(c_out):
                    for a in range(c_in):
                        if (a * classes) // c_in == (b * classes) // c_out:
                            w[(b, a, *centre)] = value
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregate multi-scale context of the score maps ``x``."""
        return self.final(self.layers(x))


@register_model(
    "dilated_context",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Multi-Scale Context Aggregation by Dilated Convolutions",
    paper_year=2016,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={"context": "large"}, params=None,
        source="ICLR 2016, Section 3 and Table 1 (context module; 'the basic context module has 64C^2 "
               "parameters'), Section 4 (front-end), VOC 2012, 21 classes; no figure for the whole network",
    ),
    divisor=1,
    test_kwargs={2: {"backbone_kwargs": {"width": 0.125}, "fc_channels": 32},
                 3: {"backbone_kwargs": {"width": 0.125}, "fc_channels": 32, "fc6_kernel": 3}},
)
class DilatedContextNet(SegmentationModel):
    """Yu & Koltun (ICLR 2016): dilated VGG-16 front-end at output stride 8 followed by the context module.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (any size; the scores are resized).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes C (paper: 21).
        backbone: A VGG backbone name (paper: ``"vgg16"``).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        context: ``"large"`` (the paper's VOC model), ``"basic"`` or ``None`` (front-end only).
        fc_channels: Channels of ``fc6``/``fc7`` (paper: 4096).
        fc6_kernel: Kernel of ``fc6`` (paper: 7; dilation 4).
        dropout: Dropout after ``fc6`` and ``fc7`` (0.5).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "vgg16",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        context: str | None = "large",
        fc_channels: int = 4096,
        fc6_kernel: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, 8, pretrained_backbone, backbone_kwargs,
                                       self.model_name)
        if not hasattr(self.backbone, "blocks") or len(self.backbone.blocks) != 5:
            raise ModelError(f"{self.model_name}: the front-end must be a VGG backbone, got {backbone!r}")
        self.fc = FullyConvClassifier(spatial_dims, self.backbone.out_channels[-1], fc_channels, fc6_kernel, 4,
                                      dropout)
        self.score = make_conv(spatial_dims, fc_channels, out_channels, 1)
        self.context = ContextModule(spatial_dims, out_channels, context) if context is not None else None

    def front_end(self, x: torch.Tensor) -> torch.Tensor:
        """The front-end's stride-8 class scores of ``x``: VGG-16 without its last two poolings, fc6, fc7, scores."""
        for i, block in enumerate(self.backbone.blocks):
            x = block(x)
            if i < 3:  # the last two poolings are removed entirely
                x = self.backbone.pools[i](x)
        return self.score(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        self.backbone.check_input(x)
        scores = self.front_end(x)
        if self.context is not None:
            scores = self.context(scores)
        return resize(scores, x.shape[2:])
