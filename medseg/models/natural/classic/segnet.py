"""SegNet (Badrinarayanan, Kendall & Cipolla, 2017), 2D and 3D.

Paper: V. Badrinarayanan, A. Kendall, R. Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
Segmentation", IEEE TPAMI 39(12), 2017 (arXiv:1511.00561), Section 3 and Fig. 2; reference Caffe model
``segnet_train.prototxt`` (github.com/alexgkendall/SegNet-Tutorial).

Layout: the encoder is the 13 convolutional layers of VGG-16 with batch norm and ReLU ("we remove the fully connected
layers"), each block followed by 2x2 max pooling with stride 2 whose argmax locations are stored; "the decoder
upsamples its input feature map(s) using the memorized max-pooling indices from the corresponding encoder feature
map(s)" (max unpooling, no learned upsampling), followed by trainable 3x3 convolutions with BN and ReLU that mirror
the encoder: per level 512-512-512, 512-512-256, 256-256-128, 128-64, 64-K, where the last convolution (K classes,
no BN/ReLU) feeds the soft-max classifier.

The encoder is our ``vgg16_bn`` backbone (its convolution blocks, torchvision weights load into it); its pooling is
replaced by pooling that returns indices. Max unpooling restores the exact pre-pooling size, so any input size of at
least 32 per axis works (odd sizes included).

Parameter figure: Table 6 of the paper lists SegNet with "29.5" million parameters (the CamVid model, 11 classes).
We count 29,449,355 at ``in_channels=3, out_channels=11`` (encoder 14,723,136 with BN, decoder 14,726,219), 0.2%
below the figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.natural.classic._modules import MaxUnpool, build_backbone, max_pool_with_indices
from medseg.models.registry import PaperConfig, register_model

__all__ = ["SegNet", "block_channels"]


def block_channels(block: nn.Sequential) -> list[int]:
    """Output channels of each convolution of a VGG block (a sequence of ``ConvNormActD``)."""
    return [layer.conv.out_channels for layer in block]


@register_model(
    "segnet",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=11, params=29_500_000,
        source="IEEE TPAMI 2017, Table 6 (SegNet: 29.5 million parameters; CamVid, 11 classes), Section 3, Fig. 2",
    ),
    divisor=1,
    test_kwargs={"backbone_kwargs": {"width": 0.125}},
)
class SegNet(SegmentationModel):
    """SegNet (Badrinarayanan et al., TPAMI 2017): VGG-16 encoder, decoder upsampling with the pooling indices.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size at least 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes (paper: 11 for CamVid).
        backbone: A VGG backbone name (paper: ``"vgg16_bn"``, VGG-16 with batch norm).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "vgg16_bn",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                                      self.model_name)
        if not hasattr(self.encoder, "blocks"):
            raise ModelError(f"{self.model_name}: the encoder must be a VGG backbone, got {backbone!r}")
        self.pool = max_pool_with_indices(spatial_dims)
        self.unpool = MaxUnpool(spatial_dims)
        widths = [block_channels(b) for b in self.encoder.blocks]
        self.decoder = nn.ModuleList()
        for level in range(len(widths) - 1, -1, -1):
            convs = widths[level]
            below = widths[level - 1][-1] if level > 0 else out_channels
            outs = [convs[-1]] * (len(convs) - 1) + [below]
            layers = []
            c = convs[-1]
            for j, o in enumerate(outs):
                last = level == 0 and j == len(outs) - 1
                layers.append(ConvNormActD(spatial_dims, c, o, 3, bias=True, norm=None if last else "batch",
                                           act=None if last else ("relu", {"inplace": True})))
                c = o
            self.decoder.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        self.encoder.check_input(x)
        stack = []
        for block in self.encoder.blocks:
            x = block(x)
            size = x.shape[2:]
            x, indices = self.pool(x)
            stack.append((indices, size))
        for block in self.decoder:
            indices, size = stack.pop()
            x = block(self.unpool(x, indices, size))
        return x
