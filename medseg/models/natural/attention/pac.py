"""Pixel-adaptive convolution and PAC-FCN (Su et al., CVPR 2019), 2D.

Paper: H. Su, V. Jampani, D. Sun, O. Gallo, E. Learned-Miller, J. Kautz, "Pixel-Adaptive Convolutional Neural
Networks", CVPR 2019 (arXiv:1904.05373), Section 3 (the PAC layer, Eq. 3) and Section 5 (semantic segmentation).

The layer: :class:`~medseg.models.natural.attention._modules.PacConv2d` (pure torch, unfold-based) multiplies a
standard convolution's kernel, per output pixel, by a Gaussian ``K(f_i, f_j) = exp(-½ ||f_i - f_j||²)`` of guidance
features; with a constant guide it is the ordinary convolution.

The network (the segmentation experiments, Section 5.2, Table 4; the authors' ``FCN8sPac`` in
``task_semanticSegmentation/fcn8s.py``): *PAC-FCN*, FCN-8s on VGG-16 (PASCAL VOC, 21 classes) in which the last
convolution of blocks 3, 4 and 5 (``conv3_3``, ``conv4_3``, ``conv5_3``) is a 3x3 PAC guided by the ``conv2_2``
features (128 channels, resized to each block's resolution and scaled by ``1e-4``, so the adapting kernel starts
near 1 and the network starts as FCN-8s). The rest is FCN-8s with "same" padding: 3x3 convolutions with ReLU, 2x2 max
pooling, ``fc6`` as a 7x7 convolution (4096, padding 3) and ``fc7`` 1x1 (4096) with ReLU and dropout 0.5, score
layers on ``pool3``/``pool4``/``fc7``, two 2x learned upsamplings (4x4 transposed convolutions, stride 2, padding 1,
no bias) summed with the ``pool4`` and ``pool3`` scores, and a final bilinear 8x upsampling (no learned ``upscore8``
in the reference's PAC variant). The paper's other segmentation variant, the PAC-CRF on top of the FCN, is not
implemented here.

Parameter figure: the paper gives none for PAC-FCN, so none is recorded; at the paper configuration (VOC, 21 classes)
we count 134,376,863: VGG-16's convolutions 14,714,688 (the PAC layers have the same weights as the convolutions
they replace), ``fc6``/``fc7`` 119,545,856, score layers and the two learned upsamplings 116,319.
"""

from __future__ import annotations

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.natural.attention._modules import PacConv2d, conv1x1, dropout, resize_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PACFCN", "PacConv2d"]

_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@register_model(
    "pac",
    family="natural",
    spatial_dims=(2,),
    paper_title="Pixel-Adaptive Convolutional Neural Networks",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={}, params=None,
        source="CVPR 2019 (arXiv:1904.05373), Section 5.2 and Table 4 (PAC-FCN on FCN-8s/VGG-16, PASCAL VOC 21 "
               "classes; layer placement from the authors' FCN8sPac); the paper states no parameter count",
    ),
    divisor=32,
    test_kwargs={"width": 0.125, "fc_channels": 32},
)
class PACFCN(SegmentationModel):
    """PAC-FCN of Su et al. (CVPR 2019): FCN-8s (VGG-16) with pixel-adaptive ``conv3_3``, ``conv4_3``, ``conv5_3``.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of 32.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (paper: 3).
        out_channels: Classes (paper: 21).
        width: Multiplier of VGG-16's channels (1 = the paper's).
        fc_channels: Width of ``fc6``/``fc7`` (4096).
        guide_scale: Scale of the guidance features (1e-4 in the reference).
        drop: Dropout after ``fc6`` and ``fc7`` (0.5).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        width: float = 1.0,
        fc_channels: int = 4096,
        guide_scale: float = 1e-4,
        drop: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: PAC-FCN is 2D only, got spatial_dims={spatial_dims}")
        if width <= 0:
            raise ModelError(f"{self.model_name}: width must be positive, got {width}")
        self.guide_scale = guide_scale
        self.blocks = nn.ModuleList()
        self.pacs = nn.ModuleList()
        channels = in_channels
        widths = [[max(int(c * width), 1) for c in block] for block in _VGG16]
        for b, block in enumerate(widths):
            convs = block if b < 2 else block[:-1]
            layers: list[nn.Module] = []
            for c in convs:
                layers.append(ConvNormActD(2, channels, c, 3, bias=True, norm=None))
                channels = c
            self.blocks.append(nn.Sequential(*layers))
            if b >= 2:
                self.pacs.append(PacConv2d(channels, block[-1], 3))
                channels = block[-1]
        self.act = nn.ReLU(inplace=True)
        self.pool = Pool[Pool.MAX, 2](kernel_size=2, stride=2)
        self.fc = nn.Sequential(
            ConvNormActD(2, channels, fc_channels, 7, bias=True, norm=None), dropout(2, drop),
            ConvNormActD(2, fc_channels, fc_channels, 1, bias=True, norm=None), dropout(2, drop),
        )
        self.score_fr = conv1x1(2, fc_channels, out_channels)
        self.score_pool4 = conv1x1(2, widths[3][-1], out_channels)
        self.score_pool3 = conv1x1(2, widths[2][-1], out_channels)
        up = Conv[Conv.CONVTRANS, 2]
        self.upscore2 = up(out_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False)
        self.upscore_pool4 = up(out_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False)
        self.input_divisor = (32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        h = self.blocks[1](self.pool(self.blocks[0](x)))
        guide = h * self.guide_scale  # conv2_2 features
        pools = []
        h = self.pool(h)
        for block, pac in zip(self.blocks[2:], self.pacs, strict=True):
            h = block(h)
            h = self.pool(self.act(pac(h, resize_to(guide, h.shape[2:]))))
            pools.append(h)  # pool3, pool4, pool5
        score = self.upscore2(self.score_fr(self.fc(pools[2])))
        score = self.upscore_pool4(score + self.score_pool4(pools[1]))
        score = score + self.score_pool3(pools[0])
        return resize_to(score, x.shape[2:])
