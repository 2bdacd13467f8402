"""V-Net: fully convolutional network with residual stages and strided-convolution downsampling (Milletari 2016).

Paper: F. Milletari, N. Navab, S.-A. Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical
Image Segmentation", 3DV 2016 (arXiv:1606.04797), Section 2 and Fig. 2. The layout below follows the authors'
released Caffe network, github.com/faustomilletari/VNet, ``Prototxt/train_noPooling_ResNet_cinque.prototxt`` (the
network ``main.py`` trains; ``test_noPooling_ResNet_cinque.prototxt`` has the same layers), where it is more
specific than the figure.

Layout (prototxt): five resolution stages with 16, 32, 64, 128, 256 channels. Each stage learns a residual function:
its 5x5x5 convolutions (padded) run in sequence with a PReLU between two of them, their output is added
element-wise to the stage's input, and a PReLU follows the sum (the last convolution of a stage has no activation of
its own). Downsampling is a 2x2x2 convolution with stride 2 that doubles the channels, then PReLU.

- Input stage: one 5x5x5 convolution from the input to 16 channels; the residual is the input tiled to 16 channels
  (Caffe ``Split`` into 16 copies + ``Concat``), then PReLU.
- Left stages 2-4 and the bottom stage: 1, 2, 3, 3 convolutions (Fig. 2 draws 2, 3, 3, 3; the prototxt has one
  convolution fewer in stages 2 and 3).
- Right stages, lowest resolution first: a 2x2x2 transposed convolution with stride 2 (then PReLU) to half the
  stage's channels, concatenated with the left part's output of the same resolution (up-convolved features first),
  then 3, 2, 1, 1 convolutions on the concatenation (256, 128, 64, 32 channels) with the concatenation as residual
  (Fig. 2 draws 3, 3, 2, 1).
- Head: a 5x5x5 convolution from 32 channels to the classes, PReLU, and a 1x1x1 convolution classes to classes
  (Fig. 2 draws a single 1x1x1 convolution); the softmax over the 2 output channels is applied in the loss.

Every convolution has a bias and every PReLU one slope per channel (Caffe defaults: the prototxt sets neither
``bias_term`` nor ``channel_shared``). The network has no normalisation layer.

Paper configuration: 3D, 1 input channel, 2 output channels, 128x128x64 input. The paper states no parameter count;
counting the prototxt's layers (Convolution/Deconvolution weights and biases, per-channel PReLU slopes) gives
61,982,682 parameters, which the registry records; our network at that configuration has exactly 61,982,682.

Our options beyond the prototxt: ``base_features`` and ``kernel_size`` scale the widths and the 5x5x5 kernels;
``norm`` adds a normalisation after every stage and downsampling convolution (not after the transposed convolutions
or in the head). For an input of C channels where C divides 16 the input stage's residual repeats the input
``16 / C`` times (the prototxt's tiling for C = 1); otherwise it is a 1x1x1 projection without bias (our choice; the
authors only have 1-channel inputs). 2D use keeps the same layout with 5x5 kernels.

We write our own implementation: MONAI's ``VNet`` adds batch normalisation to every convolution and uses other
convolution counts and another head, so it matches neither the figure nor the prototxt.
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_act, make_conv, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["VNet"]

DOWN_CONVS = (1, 1, 2, 3, 3)  # 5x5x5 convolutions of the left stages 1-4 and the bottom stage (prototxt)
UP_CONVS = (3, 2, 1, 1)  # 5x5x5 convolutions of the right stages, lowest resolution first (prototxt)


class _ResidualStage(nn.Module):
    """``n`` 5x5x5 convolutions (PReLU between them), plus the stage input, then PReLU: ``(B, C, *s) -> (B, C, *s)``.

    ``residual(x)`` gives the term added to the convolutions' output (the stage input itself by default).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, n: int, kernel_size: int,
                 norm: NormSpec) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvNormAct(spatial_dims, in_channels if i == 0 else channels, channels, kernel_size, norm=norm,
                        act="prelu" if i < n - 1 else None)
            for i in range(n)
        ])
        self.act = make_act("prelu", channels)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.act(self.convs(x) + (x if residual is None else residual))


@register_model(
    "vnet",
    family="vnet",
    spatial_dims=(2, 3),
    paper_title="V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image Segmentation",
    paper_year=2016,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kwargs={},
        params=61_982_682,
        source=(
            "authors' Caffe network, github.com/faustomilletari/VNet Prototxt/train_noPooling_ResNet_cinque.prototxt "
            "(1 input channel, 2 classes, 128x128x64; counted from its layer definitions, biases and per-channel "
            "PReLU; the paper gives no count)"
        ),
    ),
    divisor=16,
    test_kwargs={3: {"base_features": 4, "kernel_size": 3}, 2: {"base_features": 4}},
)
class VNet(SegmentationModel):
    """V-Net of Milletari et al. (3DV 2016) as in the authors' Caffe prototxt, 3D as in the paper or 2D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 16.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (paper: 1).
        out_channels: Output channels (paper: 2).
        base_features: Channels of the first stage (paper: 16); stage ``s`` has ``base_features * 2**s``.
        kernel_size: Kernel of the stage convolutions and the head's first convolution (paper: 5).
        norm: Normalisation after each stage and downsampling convolution (paper: none).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        base_features: int = 16,
        kernel_size: int = 5,
        norm: NormSpec = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if base_features < 2 or base_features % 2:
            raise ModelError(f"{self.model_name}: base_features must be an even integer >= 2, got {base_features}")
        widths = [base_features * 2**s for s in range(5)]
        self.repeat = widths[0] // in_channels if widths[0] % in_channels == 0 else 0
        self.input_proj = None if self.repeat else make_conv(spatial_dims, in_channels, widths[0], 1, bias=False)
        self.down_stages = nn.ModuleList(
            _ResidualStage(spatial_dims, in_channels if s == 0 else widths[s], widths[s], DOWN_CONVS[s], kernel_size,
                           norm)
            for s in range(5)
        )
        self.down_convs = nn.ModuleList(
            ConvNormAct(spatial_dims, widths[s], widths[s + 1], 2, 2, padding=0, norm=norm, act="prelu")
            for s in range(4)
        )
        self.up_convs = nn.ModuleList()
        self.up_stages = nn.ModuleList()
        for i, s in enumerate(range(3, -1, -1)):  # s: resolution of the right stage
            stage_width = 2 * widths[s]  # concatenation of the up-convolved half and the left part's output
            below = widths[4] if i == 0 else 2 * widths[s + 1]
            self.up_convs.append(nn.Sequential(
                make_transposed_conv(spatial_dims, below, stage_width // 2, 2),
                make_act("prelu", stage_width // 2),
            ))
            self.up_stages.append(_ResidualStage(spatial_dims, stage_width, stage_width, UP_CONVS[i], kernel_size,
                                                 norm))
        self.head = nn.Sequential(
            ConvNormAct(spatial_dims, 2 * widths[0], out_channels, kernel_size, act="prelu"),
            make_conv(spatial_dims, out_channels, out_channels, 1),
        )
        self.input_divisor = (16,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        tiled = x.repeat(1, self.repeat, *([1] * self.spatial_dims)) if self.repeat else self.input_proj(x)
        x = self.down_stages[0](x, tiled)
        skips = [x]
        for down, stage in zip(self.down_convs, self.down_stages[1:], strict=True):
            x = stage(down(x))
            skips.append(x)
        x = skips.pop()
        for up, stage in zip(self.up_convs, self.up_stages, strict=True):
            x = stage(torch.cat((up(x), skips.pop()), dim=1))
        return self.head(x)
