"""DeconvNet (Noh, Hong & Han, 2015), 2D.

Paper: H. Noh, S. Hong, B. Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015
(arXiv:1505.04366), Section 3 (Fig. 2, Table 1); reference Caffe model ``DeconvNet`` (github.com/HyeonwooNoh/
DeconvNet).

Layout (Table 1): the convolution network is VGG-16's 13 convolutional layers with 2x2 max pooling (the pooling
"switch" variables, i.e. the argmax locations, are kept) and the two fully connected layers as convolutions: ``fc6``
7x7 with 4096 channels (unpadded, a 7x7 ``pool5`` map becomes 1x1) and ``fc7`` 1x1 with 4096 channels. The
deconvolution network mirrors it: ``deconv-fc6`` a 7x7 deconvolution 4096 -> 512 (1x1 back to 7x7), then per level an
unpooling with the switches of the matching pooling and 3x3 deconvolutions 512-512-512, 512-512-256, 256-256-128,
128-64, 64-64; a 1x1 convolution gives the class scores (21 for PASCAL VOC). "We add batch normalization at the output
of every convolutional and deconvolutional layer" (Section 4.1), each followed by ReLU.

Because ``fc6`` is unpadded and ``deconv-fc6`` undoes its size change, any ``pool5`` map of at least ``fc6_kernel``
per axis works: inputs of at least 224 per axis for the paper's 7x7 ``fc6`` (the paper's inputs are 224x224
proposals). The encoder is our ``vgg16_bn`` backbone (torchvision weights load into it) with index-returning pooling.
2D only, as in the zoo's key list (the 7x7x7 ``fc6`` of a 3D version would need 719M parameters).

Parameter figure: Section 3.2 of the paper, "the total number of parameters in our network is 252M" (the paper's
Table 1 network, 21 classes). We count 251,797,461 at ``in_channels=3, out_channels=21``, 0.08% below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_conv, make_norm
from medseg.models.natural.classic._modules import (
    FullyConvClassifier,
    MaxUnpool,
    build_backbone,
    max_pool_with_indices,
)
from medseg.models.natural.classic.segnet import block_channels
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DeconvNet", "DeconvNormAct"]


class DeconvNormAct(nn.Sequential):
    """Deconvolution (transposed convolution, stride 1), batch norm and ReLU: DeconvNet's decoder layer.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *(spatial + kernel_size - 1 - 2 * padding))``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: int = 1) -> None:
        super().__init__()
        self.add_module("deconv", Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels,
                                                                     kernel_size=kernel_size, padding=padding))
        self.add_module("norm", make_norm("batch", spatial_dims, out_channels))
        self.add_module("act", make_act(("relu", {"inplace": True})))


@register_model(
    "deconvnet",
    family="natural",
    spatial_dims=(2,),
    paper_title="Learning Deconvolution Network for Semantic Segmentation",
    paper_year=2015,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, params=252_000_000,
        source="ICCV 2015, Section 3.2 ('the total number of parameters in our network is 252M') and Table 1",
    ),
    divisor=1,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "fc_channels": 32, "fc6_kernel": 1},
)
class DeconvNet(SegmentationModel):
    """DeconvNet (Noh et al., ICCV 2015): VGG-16 with fc6/fc7 and a mirrored unpooling/deconvolution network.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; ``H, W >= 32 * fc6_kernel``.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels.
        out_channels: Classes (paper: 21).
        backbone: A VGG backbone name (``"vgg16_bn"``: VGG-16 with batch norm, as the paper).
        pretrained_backbone: Local torchvision weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.5}``).
        fc_channels: Channels of ``fc6``/``fc7`` (paper: 4096).
        fc6_kernel: Kernel of the unpadded ``fc6`` and of ``deconv-fc6`` (paper: 7).
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
        fc_channels: int = 4096,
        fc6_kernel: int = 7,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: DeconvNet is 2D only, got spatial_dims={spatial_dims}")
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 32, pretrained_backbone, backbone_kwargs,
                                      self.model_name)
        if not hasattr(self.encoder, "blocks"):
            raise ModelError(f"{self.model_name}: the encoder must be a VGG backbone, got {backbone!r}")
        self.fc6_kernel = fc6_kernel
        self.pool = max_pool_with_indices(spatial_dims)
        self.unpool = MaxUnpool(spatial_dims)
        widths = [block_channels(b) for b in self.encoder.blocks]
        top = widths[-1][-1]
        self.fc = FullyConvClassifier(spatial_dims, top, fc_channels, fc6_kernel, dropout=0.0, padding=0,
                                      norm="batch")
        self.deconv_fc6 = DeconvNormAct(spatial_dims, fc_channels, top, fc6_kernel, padding=0)
        self.decoder = nn.ModuleList()
        for level in range(len(widths) - 1, -1, -1):
            convs = widths[level]
            below = widths[level - 1][-1] if level > 0 else convs[0]
            outs = [convs[-1]] * (len(convs) - 1) + [below]
            layers, c = [], convs[-1]
            for o in outs:
                layers.append(DeconvNormAct(spatial_dims, c, o))
                c = o
            self.decoder.append(nn.Sequential(*layers))
        self.score = make_conv(spatial_dims, widths[0][0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        self.encoder.check_input(x)
        if min(x.shape[2:]) < 32 * self.fc6_kernel:
            raise ModelError(f"{self.model_name}: input spatial size {tuple(x.shape[2:])} is too small: the unpadded "
                             f"{self.fc6_kernel}x{self.fc6_kernel} fc6 needs at least {32 * self.fc6_kernel} per axis")
        stack = []
        for block in self.encoder.blocks:
            x = block(x)
            size = x.shape[2:]
            x, indices = self.pool(x)
            stack.append((indices, size))
        x = self.deconv_fc6(self.fc(x))
        for block in self.decoder:
            indices, size = stack.pop()
            x = block(self.unpool(x, indices, size))
        return self.score(x)
