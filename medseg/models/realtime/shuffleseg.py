"""ShuffleSeg, a ShuffleNet encoder with a skip-architecture decoder (Gamal et al., 2018), 2D and 3D.

Paper: M. Gamal, M. Siam, M. Abdel-Razek, "ShuffleSeg: Real-time Semantic Segmentation Network", arXiv:1803.03816,
2018, Section 2; the authors' TensorFlow code (github.com/MSiam/TFSegmentation: ``models/fcn8s_shufflenet.py``,
``models/encoders/shufflenet.py``, ``layers/convolution.py``, configuration
``config/experiments_config/fcn8s_shufflenet_train.yaml``), whose layers we follow.

Encoder: ShuffleNet v1 with 3 groups (Zhang et al., 2018; :mod:`medseg.models.backbones.shufflenet`): a 3x3
convolution with stride 2 (24 channels), max pooling, stages 2-4 of 4, 8, 4 units with 240, 480, 960 channels. The
authors' encoder differs from the ImageNet paper's in two details we reproduce by default (``backbone_kwargs``): every
convolution has a bias (``conv_bias=True``) and the bottleneck of a stride-2 unit is a quarter of the branch's output
channels (``downsample_bottleneck="branch"``).

Decoder: the skip architecture of FCN8s (the paper's best decoder, "SkipNet"): a 1x1 convolution scores stage 4
(1/32); a transposed convolution (kernel 4, stride 2, BN) upsamples the scores to 1/16, where they are added to the
1x1-convolution scores of stage 3 (BN); another transposed convolution (kernel 4, stride 2, BN) to 1/8, added to the
scores of stage 2 (1x1 convolution, BN); a last transposed convolution (kernel 16, stride 8) gives the full resolution.
Every convolution has a bias; the transposed convolutions start as bilinear interpolation (the code's
``get_deconv_filter``).

Dims: 2D and 3D (no layer is tied to RGB images; in 3D the transposed kernels are 4^3 and 16^3); inputs divisible by
32.

Parameter figure: the paper states none; the authors' code counts 1,014,682 parameters at its Cityscapes
configuration (3 input channels, 20 classes: 19 and the void class), as do we (865,602 in the encoder). With the
ImageNet paper's unit (``backbone_kwargs={"conv_bias": False, "downsample_bottleneck": "output"}``), whose weights the
authors' release loads, the count is 1,053,808.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, make_conv, make_norm
from medseg.models.natural.classic._modules import bilinear_kernel, build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["ShuffleSeg", "SkipUpsample"]

#: The authors' TensorFlow ShuffleNet (TFSegmentation) as options of our ShuffleNet v1 backbone.
TFSEGMENTATION_ENCODER: dict[str, Any] = {"groups": 3, "conv_bias": True, "downsample_bottleneck": "branch"}


class SkipUpsample(nn.Module):
    """Transposed convolution (kernel ``2f``, stride ``f``, bias) initialised to bilinear upsampling, optional BN.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial * factor)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        factor: Upsampling factor f.
        norm: Normalisation after it, or ``None``.
    """

    def __init__(self, spatial_dims: int, channels: int, factor: int, norm: NormSpec = None) -> None:
        super().__init__()
        self.deconv = Conv[Conv.CONVTRANS, spatial_dims](channels, channels, kernel_size=2 * factor, stride=factor,
                                                         padding=factor // 2)
        if self.deconv.weight.device.type != "meta":
            with torch.no_grad():
                self.deconv.weight.zero_()
                self.deconv.bias.zero_()  # type: ignore[union-attr]
                kernel = bilinear_kernel(factor, spatial_dims)
                for c in range(channels):
                    self.deconv.weight[c, c] = kernel
        self.norm = make_norm(norm, spatial_dims, channels) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` by the factor."""
        return self.norm(self.deconv(x))


class _Score(nn.Sequential):
    """1x1 convolution with bias to the classes, then BN (the decoder's ``score_feed`` layers)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, norm: NormSpec) -> None:
        super().__init__(make_conv(spatial_dims, in_channels, num_classes, 1),
                         make_norm(norm, spatial_dims, num_classes) or nn.Identity())


@register_model(
    "shuffleseg",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="ShuffleSeg: Real-time Semantic Segmentation Network",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=20, kwargs={}, params=1_014_682,
        source="authors' code github.com/MSiam/TFSegmentation models/fcn8s_shufflenet.py with "
               "models/encoders/shufflenet.py, fcn8s_shufflenet_train.yaml (num_groups 3, batch norm, 20 classes); "
               "the paper states no count",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"width": 0.25, "stem_channels": 12}},
)
class ShuffleSeg(SegmentationModel):
    """ShuffleSeg (Gamal et al., 2018): ShuffleNet v1 (g=3) encoder and the FCN8s-style skip decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (spatial sizes divisible by 32).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        backbone: Encoder backbone with stride-8, -16 and -32 levels (``"shufflenet_v1"``).
        pretrained_backbone: Local weights of the encoder.
        backbone_kwargs: Encoder options, over the authors' variant (``TFSEGMENTATION_ENCODER``) for ShuffleNet v1.
        norm: Normalisation after the skip scores and the first two upsamplings (batch norm in the authors' setting).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "shufflenet_v1",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        defaults = TFSEGMENTATION_ENCODER if backbone == "shufflenet_v1" else {}
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone,
                                      {**defaults, **dict(backbone_kwargs or {})}, self.model_name)
        strides = self.encoder.strides
        if strides[-3:] != [8, 16, 32]:
            raise ModelError(f"{self.model_name}: the encoder's last levels must have strides 8, 16, 32, got "
                             f"{strides}")
        self.input_divisor = (32,) * spatial_dims
        c8, c16, c32 = self.encoder.out_channels[-3:]
        k = out_channels
        self.score_fr = make_conv(spatial_dims, c32, k, 1)
        self.up2 = SkipUpsample(spatial_dims, k, 2, norm)
        self.score_feed1 = _Score(spatial_dims, c16, k, norm)
        self.up4 = SkipUpsample(spatial_dims, k, 2, norm)
        self.score_feed2 = _Score(spatial_dims, c8, k, norm)
        self.up8 = SkipUpsample(spatial_dims, k, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        f8, f16, f32 = self.encoder(x)[-3:]
        h = self.up2(self.score_fr(f32)) + self.score_feed1(f16)
        h = self.up4(h) + self.score_feed2(f8)
        return self.up8(h)
