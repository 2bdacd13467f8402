"""Fast-SCNN (Poudel, Liwicki & Cipolla, 2019), 2D and 3D.

Paper: R. P. K. Poudel, S. Liwicki, R. Cipolla, "Fast-SCNN: Fast Semantic Segmentation Network", BMVC 2019
(arXiv:1902.04502), Section 3, Tables 1-2 and Fig. 1. No official code was released.

Layout (Table 1, 1024x2048 input):

* Learning to downsample: a 3x3 convolution with stride 2 (32 channels) and two depthwise separable convolutions
  with stride 2 (48, 64; depthwise 3x3 + BN, pointwise 1x1 + BN + ReLU, no nonlinearity in between): 1/8, 64
  channels. Its output feeds both the global feature extractor and, as the high-resolution branch, the fusion.
* Global feature extractor: MobileNetV2 bottleneck blocks ``(t, c, n, s)`` = (6, 64, 3, 2), (6, 96, 3, 2),
  (6, 128, 3, 1) (1/32; our MobileNetV2 backbone's inverted residual block, ReLU6), then a pyramid pooling module
  (PSPNet's: average pooling to 1, 2, 3, 6 bins, 1x1 convolutions to 128 / 4 channels, upsampled and concatenated
  with the input, a 1x1 convolution back to 128).
* Feature fusion module (Table 2): the low-resolution features upsampled x4, a depthwise 3x3 convolution dilated by
  4 and a 1x1 convolution; the 1/8 features through a 1x1 convolution; summed, ReLU (128 channels).
* Classifier: two depthwise separable convolutions (128) and a 1x1 convolution to the classes; the 1/8 scores are
  upsampled bilinearly to the input size.

The input must be a multiple of 32 per axis. 3D: the same layers from MONAI's factories (3D pyramid bins).

Parameter figure: the paper states 1.11 million parameters. Tables 1-2 built as above give 1,137,795 at
``in_channels=3, out_channels=19`` (learning to downsample 6,640, global feature extractor 1,066,112 of which the
pyramid pooling module 49,664, fusion 26,496, classifier 38,547): 2.5 % above the paper's figure, about the size of
all batch-norm scale and shift parameters (23,680); the paper does not say how it counted, and there is no official
code. We record no figure rather than fit the widths to it (``params=None``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.backbones.base import ConvNormActD, make_divisible
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv, resample_linear
from medseg.models.natural.classic._modules import PyramidPooling
from medseg.models.realtime.contextnet import DSConv, FeatureFusion, bottleneck_stages
from medseg.models.registry import PaperConfig, register_model

__all__ = ["GLOBAL_FEATURE_SETTINGS", "FastSCNN"]

#: Bottleneck stages of the global feature extractor, ``(t, c, n, s)`` as in Table 1.
GLOBAL_FEATURE_SETTINGS: tuple[tuple[int, int, int, int], ...] = ((6, 64, 3, 2), (6, 96, 3, 2), (6, 128, 3, 1))


@register_model(
    "fast_scnn",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="Fast-SCNN: Fast Semantic Segmentation Network",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, params=None,
        source="BMVC 2019 (arXiv:1902.04502), Tables 1-2 (Cityscapes, 19 classes); the paper's 1.11 M parameters "
               "are not reproduced by the tables as built (1,137,795, +2.5 %) and no official code exists, so no "
               "figure is recorded",
    ),
    divisor=32,
    test_kwargs={"width": 0.25},
)
class FastSCNN(SegmentationModel):
    """Fast-SCNN (Poudel et al., BMVC 2019): learning to downsample, global features with PPM, fusion, classifier.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        width: Width multiplier of every layer (channels rounded to multiples of 8; paper: 1).
        bins: Pyramid pooling bins (paper, after PSPNet: 1, 2, 3, 6).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        width: float = 1.0,
        bins: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.input_divisor = (32,) * spatial_dims
        dims = spatial_dims

        def w(c: int) -> int:
            return make_divisible(c * width)

        c1, c2, c3 = w(32), w(48), w(64)
        self.learning_to_downsample = nn.Sequential(ConvNormActD(dims, in_channels, c1, 3, 2), DSConv(dims, c1, c2, 2),
                                                    DSConv(dims, c2, c3, 2))
        stages, c_last = bottleneck_stages(dims, c3, [(t, w(c), n, s) for t, c, n, s in GLOBAL_FEATURE_SETTINGS])
        ppm = PyramidPooling(dims, c_last, bins, reduction=c_last // 4)
        self.global_features = nn.Sequential(stages, ppm, ConvNormActD(dims, ppm.out_channels, c_last, 1))
        self.fusion = FeatureFusion(dims, c3, c_last, c_last, factor=4)
        self.classifier = nn.Sequential(DSConv(dims, c_last, c_last), DSConv(dims, c_last, c_last),
                                        make_conv(dims, c_last, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        high = self.learning_to_downsample(x)
        y = self.fusion(high, self.global_features(high))
        return resample_linear(self.classifier(y), x.shape[2:])
