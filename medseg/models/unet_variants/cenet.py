"""CE-Net: context encoder network with dense atrous convolution and residual multi-kernel pooling (Gu et al., 2019).

Paper: Z. Gu, J. Cheng, H. Fu, K. Zhou, H. Hao, Y. Zhao, T. Zhang, S. Gao, J. Liu, "CE-Net: Context Encoder Network
for 2D Medical Image Segmentation", IEEE Transactions on Medical Imaging 38(10), 2019 (arXiv:1903.02740), Section II,
Fig. 2-4; official code: github.com/Guzaiwang/CE-Net (``src/lib/models/networks/cenet.py``, class ``CE_Net_``).

Layout: the feature encoder is ResNet-34 (ImageNet-pretrained) without its average pooling and classifier: the 7x7
stem (stride 2), max pooling and the four residual stages (64, 128, 256, 512 channels; strides 4 to 32). The context
extractor has two blocks on the last stage:

* DAC (dense atrous convolution, Fig. 3): four cascaded branches of atrous convolutions with rates 1; 3; 1, 3; and
  1, 3, 5 (receptive fields 3, 7, 9, 19); the three convolutions with rates 1, 3 and 5 are each one layer reused by
  every branch that contains it, and each branch but the first ends in one shared 1x1 convolution; every branch
  output passes a ReLU and the block returns the input plus the four branches.
* RMP (residual multi-kernel pooling, Fig. 4): max pooling with kernels (= strides) 2, 3, 5 and 6, one shared 1x1
  convolution reducing each pooled map to a single channel, bilinear upsampling to the input size, and the four
  maps concatenated with the input (512 + 4 channels).

The feature decoder (LinkNet-style, Fig. 2) has four blocks of 1x1 convolution (C -> C/4), 3x3 transposed
convolution (stride 2) and 1x1 convolution to the width of the next encoder stage, each followed by BN + ReLU; the
encoder stage is *added* to each block's output. The head is a 4x4 transposed convolution (stride 2) to 32 channels,
ReLU, a 3x3 convolution + ReLU and a 3x3 convolution to the classes (the code's sigmoid is left to the loss).

We write our own implementation: the encoder is our ``resnet34`` backbone (torchvision weights load into it from a
local file; the stem takes ``in_channels``), DAC and RMP are :class:`DenseAtrousBlock` and
:class:`ResidualMultiKernelPooling`. The design is not inherently 2D, so the same layout runs in 3D. RMP's pooling
kernels need a last-stage map of at least 6 per axis (inputs of 192 and more, the paper uses 448x448); for smaller
maps a kernel is clipped to the map size (global pooling), which leaves the paper's sizes unchanged.

Paper configuration (the official DRIVE model): 2D, RGB input, one output channel. We count 29,003,093 parameters,
the count of the official ``CE_Net_(num_classes=1)`` (counted with PyTorch in a scratch folder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import conv_nd
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_conv, make_norm, resample_linear
from medseg.models.natural.classic._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["CENet", "CENetDecoderBlock", "DenseAtrousBlock", "ResidualMultiKernelPooling"]

RELU = ("relu", {"inplace": True})


class DenseAtrousBlock(nn.Module):
    """CE-Net's dense atrous convolution (DAC) block (Gu et al., TMI 2019, Fig. 3).

    ``y = x + relu(a1(x)) + relu(c(a3(x))) + relu(c(a3(a1(x)))) + relu(c(a5(a3(a1(x)))))`` with 3x3 convolutions
    ``a_r`` of atrous rate ``r`` and one 1x1 convolution ``c``, all with bias. Shapes: ``(B, C, *spatial)`` to the
    same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        rates: The three atrous rates (paper: 1, 3, 5).
    """

    def __init__(self, spatial_dims: int, channels: int, rates: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        if len(self.rates) != 3:
            raise ModelError(f"DAC block needs three atrous rates, got {self.rates}")
        self.atrous = nn.ModuleList(conv_nd(spatial_dims, channels, channels, 3, dilation=r, bias=True)
                                    for r in self.rates)
        self.conv1x1 = make_conv(spatial_dims, channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the four cascaded atrous branches to ``x``."""
        a1, a3, a5 = self.atrous
        b1 = a1(x)
        b13 = a3(b1)
        return (x + torch.relu(b1) + torch.relu(self.conv1x1(a3(x))) + torch.relu(self.conv1x1(b13))
                + torch.relu(self.conv1x1(a5(b13))))


class ResidualMultiKernelPooling(nn.Module):
    """CE-Net's residual multi-kernel pooling (RMP) block (Gu et al., TMI 2019, Fig. 4).

    Max pooling with each kernel (= stride), one shared 1x1 convolution to a single channel, bilinear upsampling to
    the input size; the maps are concatenated before the input. A kernel larger than the map is clipped to the map
    (global pooling). Shapes: ``(B, C, *spatial)`` to ``(B, C + len(kernels), *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        kernels: Pooling kernels (paper: 2, 3, 5, 6).
    """

    def __init__(self, spatial_dims: int, channels: int, kernels: Sequence[int] = (2, 3, 5, 6)) -> None:
        super().__init__()
        self.kernels = tuple(int(k) for k in kernels)
        self.conv = make_conv(spatial_dims, channels, 1, 1)
        self.pool = nn.functional.max_pool2d if spatial_dims == 2 else nn.functional.max_pool3d
        self.out_channels = channels + len(self.kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the upsampled multi-kernel poolings and ``x``."""
        size = x.shape[2:]
        maps = []
        for k in self.kernels:
            kernel = tuple(min(k, s) for s in size)
            maps.append(resample_linear(self.conv(self.pool(x, kernel, kernel)), size))
        return torch.cat((*maps, x), dim=1)


class CENetDecoderBlock(nn.Sequential):
    """CE-Net's decoder block: 1x1 conv (C -> C/4), 3x3 transposed conv (stride 2), 1x1 conv, each + BN + ReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *2 spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        mid = in_channels // 4
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, mid, 1, norm="batch", act=RELU),
            Conv[Conv.CONVTRANS, spatial_dims](mid, mid, kernel_size=3, stride=2, padding=1, output_padding=1),
            make_norm("batch", spatial_dims, mid),
            nn.ReLU(inplace=True),
            ConvNormAct(spatial_dims, mid, out_channels, 1, norm="batch", act=RELU),
        )


@register_model(
    "cenet",
    family="unet_variants",
    spatial_dims=(2, 3),
    paper_title="CE-Net: Context Encoder Network for 2D Medical Image Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        params=29_003_093,
        source="official code Guzaiwang/CE-Net src/lib/models/networks/cenet.py, CE_Net_(num_classes=1) with its "
               "ResNet-34 encoder (no figure in the paper's text we could read)",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"width": 0.125}},
)
class CENet(SegmentationModel):
    """CE-Net of Gu et al. (IEEE TMI 2019): ResNet-34 encoder, DAC + RMP context extractor, LinkNet decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 32.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (paper: RGB).
        out_channels: Classes (paper: 1 for vessels / optic disc, 12 for OCT layers).
        backbone: A basic-block ResNet backbone (paper: ``"resnet34"``).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        dac_rates: Atrous rates of the DAC block (paper: 1, 3, 5).
        rmp_kernels: Pooling kernels of the RMP block (paper: 2, 3, 5, 6).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet34",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        dac_rates: Sequence[int] = (1, 3, 5),
        rmp_kernels: Sequence[int] = (2, 3, 5, 6),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                                      self.model_name)
        if not hasattr(self.encoder, "layer4") or self.encoder.block.expansion != 1:
            raise ModelError(f"{self.model_name}: the encoder must be a basic-block ResNet, got {backbone!r}")
        ch = self.encoder.out_channels  # stem, layer1..layer4
        self.dac = DenseAtrousBlock(spatial_dims, ch[4], dac_rates)
        self.rmp = ResidualMultiKernelPooling(spatial_dims, ch[4], rmp_kernels)
        self.decoder = nn.ModuleList([
            CENetDecoderBlock(spatial_dims, self.rmp.out_channels, ch[3]),
            CENetDecoderBlock(spatial_dims, ch[3], ch[2]),
            CENetDecoderBlock(spatial_dims, ch[2], ch[1]),
            CENetDecoderBlock(spatial_dims, ch[1], ch[1]),
        ])
        head = max(ch[1] // 2, 1)
        self.final_up = Conv[Conv.CONVTRANS, spatial_dims](ch[1], head, kernel_size=4, stride=2, padding=1)
        self.final_conv = ConvNormAct(spatial_dims, head, head, 3, act=RELU)
        self.head = make_conv(spatial_dims, head, out_channels, 3)
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        enc = self.encoder
        x = enc.pool(enc.stem(x))
        e1 = enc.layer1(x)
        e2 = enc.layer2(e1)
        e3 = enc.layer3(e2)
        e4 = self.rmp(self.dac(enc.layer4(e3)))
        d = self.decoder[0](e4) + e3
        d = self.decoder[1](d) + e2
        d = self.decoder[2](d) + e1
        d = self.decoder[3](d)
        return self.head(self.final_conv(torch.relu(self.final_up(d))))
