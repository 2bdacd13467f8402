"""DeepLabv3+ (Chen et al., 2018): encoder-decoder with atrous separable convolution, 2D and 3D.

Paper: L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam, "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation", ECCV 2018 (arXiv:1802.02611), Sections 3.1-3.2, Fig. 2 and 4; reference TensorFlow code
``research/deeplab`` (``model.py``, ``core/xception.py``).

Encoder: the modified aligned Xception-65 (our ``xception65`` backbone) at output stride 16 (8 for denser
evaluation) with DeepLabv3's ASPP (1x1, three 3x3 atrous branches with rates 6, 12, 18 — doubled at output stride 8 —
and image pooling, 256 filters, BN; projection 1x1 256 with BN and dropout 0.1). "We apply the depthwise separable
convolution to both ASPP and decoder modules" (Section 3.2) for Xception: each atrous branch and each decoder 3x3
convolution is depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU. With a ResNet backbone (the paper's ResNet-101
variant) they are ordinary 3x3 convolutions with BN and ReLU (``separable=False``, the default for non-Xception
backbones).

Decoder (Section 3.1, Fig. 2): "the encoder features are first bilinearly upsampled by a factor of 4 and then
concatenated with the corresponding low-level features from the network backbone that have the same spatial
resolution"; "we apply another 1x1 convolution on the low-level features to reduce the number of channels" to 48
(with BN and ReLU); "after the concatenation, we apply a few 3x3 convolutions to refine the features" (two with 256
filters), then the 1x1 logits are bilinearly upsampled by 4. The low-level features are Xception's
``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise`` (stride 4, 256 channels: the output of the
second separable convolution of the second entry-flow module, before its ReLU; the TensorFlow ``decoder_end_points``)
and ResNet's ``layer1`` output (stride 4, 256 channels for ResNet-101; TensorFlow's ``block1/unit_2`` conv3).

Parameter figure: the paper reports computation (multiply-adds), not parameters; ``params`` is ``None``. Our count
at ``in_channels=3, out_channels=21`` is 41,055,413 with Xception-65 and 59,344,309 with ResNet-101.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.backbones.xception import SeparableConv, XceptionBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import ASPP, build_backbone, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DeepLabV3Plus"]


@register_model(
    "deeplabv3plus",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, params=None,
        source="ECCV 2018, Sections 3.1-3.2 and Fig. 2/4 (Xception-65, output stride 16, separable ASPP and decoder, "
               "48 low-level channels, two 3x3 256 convolutions), VOC 21 classes; no parameter count stated",
    ),
    divisor=1,
    test_kwargs={"backbone_kwargs": {"width": 0.125, "middle_blocks": 1}, "aspp_channels": 16,
                 "low_level_channels": 8, "decoder_channels": 16},
)
class DeepLabV3Plus(SegmentationModel):
    """DeepLabv3+ (Chen et al., ECCV 2018): Xception-65 + ASPP encoder, decoder fusing stride-4 low-level features.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (any size; the logits are resized).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes (paper: 21).
        backbone: Backbone name (paper: ``"xception65"``; ``"resnet101"`` for the ResNet variant).
        output_stride: 16 (paper's training) or 8; the ASPP rates are doubled at 8.
        pretrained_backbone: Local timm/torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        separable: Depthwise separable ASPP and decoder convolutions (``None``: only for Xception, as the paper).
        rates: ASPP rates at output stride 16 (paper: 6, 12, 18).
        aspp_channels: Filters of ASPP (paper: 256).
        low_level_channels: Channels of the 1x1 projection of the low-level features (paper: 48).
        decoder_channels: Filters of the two 3x3 decoder convolutions (paper: 256).
        dropout: Dropout after the ASPP projection (0.1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "xception65",
        output_stride: int = 16,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        separable: bool | None = None,
        rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if output_stride not in (8, 16):
            raise ModelError(f"{self.model_name}: output_stride must be 8 or 16, got {output_stride!r}")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride, pretrained_backbone,
                                       backbone_kwargs, self.model_name)
        is_xception = isinstance(self.backbone, XceptionBackbone)
        self.separable = is_xception if separable is None else separable
        self._low: torch.Tensor | None = None
        if is_xception:
            tap = self.backbone.blocks[1].stack.conv2
            low_in = tap.pw.conv.out_channels
            tap.register_forward_hook(self._keep_low_level)
            self.low_level_index: int | None = None
        else:
            if 4 not in self.backbone.strides:
                raise ModelError(f"{self.model_name}: backbone {backbone!r} has no stride-4 level")
            self.low_level_index = self.backbone.strides.index(4)
            low_in = self.backbone.out_channels[self.low_level_index]
        scale = 16 // output_stride
        self.aspp = ASPP(spatial_dims, self.backbone.out_channels[-1], aspp_channels, [r * scale for r in rates],
                         separable=self.separable, dropout=dropout)
        self.project = ConvNormActD(spatial_dims, low_in, low_level_channels, 1)
        c = aspp_channels + low_level_channels
        convs: list[nn.Module] = []
        for _ in range(2):
            convs.append(SeparableConv(spatial_dims, c, decoder_channels, act=True, norm="batch") if self.separable
                         else ConvNormActD(spatial_dims, c, decoder_channels, 3))
            c = decoder_channels
        self.decoder = nn.Sequential(*convs)
        self.classifier = make_conv(spatial_dims, decoder_channels, out_channels, 1)

    def _keep_low_level(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        # a copy: the module's next layer is an in-place ReLU
        self._low = output.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        self._low = None
        features = self.backbone(x)
        low = features[self.low_level_index] if self.low_level_index is not None else self._low
        self._low = None
        if low is None:
            raise ModelError(f"{self.model_name}: the low-level features were not captured")
        low = self.project(low)
        high = resize(self.aspp(features[-1]), low.shape[2:])
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        return resize(logits, x.shape[2:])
