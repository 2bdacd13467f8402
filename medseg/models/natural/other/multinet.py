"""MultiNet's segmentation decoder on its VGG-16 encoder (Teichmann et al., 2018), 2D and 3D.

Paper: M. Teichmann, M. Weber, M. Zöllner, R. Cipolla, R. Urtasun, "MultiNet: Real-time Joint Semantic Reasoning for
Autonomous Driving", IEEE Intelligent Vehicles Symposium 2018 (arXiv:1612.07695), Section 3 (encoder, Section 3.1;
segmentation decoder, Section 3.4); official TensorFlow code github.com/MarvinTeichmann/MultiNet, whose segmentation
branch is github.com/MarvinTeichmann/KittiSeg (``hypes/KittiSeg.json``, ``encoder/fcn8_vgg.py``,
``decoder/fcn.py``, with the VGG of github.com/MarvinTeichmann/tensorflow-fcn ``fcn8_vgg.py``).

Only the segmentation branch is built (the detection and classification decoders of MultiNet are other tasks).

Layout. Encoder: the 13 convolutions and 5 max poolings of VGG-16 (our ``vgg16`` backbone; torchvision weights load
into it) and VGG's fully connected layers as convolutions: ``fc6`` 7x7 with 4096 channels, ``fc7`` 1x1 with 4096, each
with ReLU and dropout 0.5 (``fcn_in: fc7``). The paper's text says the remaining fully connected layers become "1x1
convolutional layers"; the official code reshapes VGG's ``fc6`` into a 7x7 kernel, which we follow (``fc6_kernel``).
Decoder (FCN-8s like): a 1x1 ``score_fr`` convolution to the classes (stride 32); a transposed convolution (kernel 4,
stride 2, no bias, initialised to bilinear upsampling, learned) to stride 16, added to a 1x1 scoring of ``pool4``;
another such 2x upsampling, added to a 1x1 scoring of ``pool3``; a final learned transposed convolution with kernel 16
and stride 8 (bilinear initialisation) to the input resolution. Unlike FCN-8s, the scoring layers use He
initialisation (not zeros) and the final upsampling is learned, as in ``decoder/fcn.py``.

Parameter figure: no count is printed in the paper; the official code at its configuration (KittiSeg road
segmentation, 2 classes, RGB) has 134,271,430 parameters: VGG-16 convolutions 14,714,688, ``fc6`` 102,764,544,
``fc7`` 16,781,312, ``score_fr`` 8,194, ``score_feed2`` 1,026, ``score_feed4`` 514 and the three upsampling layers
64 + 64 + 1,024. We count the same.

Dims: 2D (the paper) and 3D (VGG-16 in 3D; use a smaller ``fc6_kernel``/``fc_channels`` there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.classic._modules import BilinearUpsample, FullyConvClassifier, build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["MultiNetSeg"]


@register_model(
    "multinet",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="MultiNet: Real-time Joint Semantic Reasoning for Autonomous Driving",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=2, params=134_271_430,
        source="no figure in the paper; official code github.com/MarvinTeichmann/KittiSeg (the segmentation branch of "
               "MarvinTeichmann/MultiNet): hypes/KittiSeg.json (fcn_in fc7, 2 classes), encoder/fcn8_vgg.py, "
               "decoder/fcn.py, counted from the variable shapes",
    ),
    divisor=32,
    test_kwargs={2: {"backbone_kwargs": {"width": 0.125}, "fc_channels": 32},
                 3: {"backbone_kwargs": {"width": 0.125}, "fc_channels": 32, "fc6_kernel": 3}},
)
class MultiNetSeg(SegmentationModel):
    """MultiNet's segmentation branch (Teichmann et al., IV 2018): VGG-16 + ``fc6``/``fc7``, FCN-8s-style decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 3).
        out_channels: Classes (paper: 2, road and background).
        backbone: A VGG backbone key (paper: ``"vgg16"``).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.125}``).
        fc_channels: Channels of ``fc6``/``fc7`` (paper: 4096).
        fc6_kernel: Kernel of ``fc6`` (official code: 7).
        dropout: Dropout after ``fc6`` and ``fc7`` during training (0.5).
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
        fc_channels: int = 4096,
        fc6_kernel: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                                      self.model_name)
        strides = list(self.encoder.strides)
        self.feed_levels = [strides.index(16), strides.index(8)]  # pool4 ("feed2"), pool3 ("feed4")
        self.fc = FullyConvClassifier(spatial_dims, self.encoder.out_channels[-1], fc_channels, fc6_kernel,
                                      dropout=dropout)
        self.score_fr = make_conv(spatial_dims, fc_channels, out_channels, 1)
        self.score_feeds = nn.ModuleList(
            make_conv(spatial_dims, self.encoder.out_channels[i], out_channels, 1) for i in self.feed_levels
        )
        self.upscore = nn.ModuleList(BilinearUpsample(spatial_dims, out_channels, 2) for _ in self.feed_levels)
        self.upscore_final = BilinearUpsample(spatial_dims, out_channels, 8)
        for conv in (self.score_fr, *self.score_feeds):
            if conv.weight.device.type != "meta":
                nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
                nn.init.zeros_(conv.bias)
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        features = self.encoder(x)
        score = self.score_fr(self.fc(features[-1]))
        for level, score_feed, up in zip(self.feed_levels, self.score_feeds, self.upscore, strict=True):
            score = up(score) + score_feed(features[level])
        return self.upscore_final(score)
