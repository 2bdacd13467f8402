"""3D U-Net (Çiçek et al., 2016).

Paper: Ö. Çiçek, A. Abdulkadir, S. S. Lienkamp, T. Brox, O. Ronneberger, "3D U-Net: Learning Dense Volumetric
Segmentation from Sparse Annotation", MICCAI 2016 (arXiv:1606.06650), Section 2 and Fig. 2.

Layout (Fig. 2): an analysis path of 4 resolution levels; each level has two 3x3x3 convolutions, each followed by
batch normalisation and ReLU, with 32/64, 64/128, 128/256 and 256/512 channels (the first convolution of a level
has half the channels of the second: "we double the number of channels already before max pooling"), and 2x2x2 max
pooling with stride 2 between levels. The synthesis path: a 2x2x2 up-convolution with stride 2 that keeps the
channels (512 -> 512, 256 -> 256, 128 -> 128), concatenation with the skip of the analysis path, and two 3x3x3
convolutions + BN + ReLU with 256, 128 and 64 channels; a final 1x1x1 convolution to the labels (3 in the paper).
The paper's convolutions are unpadded: a 132x132x116 input gives a 44x44x28 output.

We write our own implementation: MONAI has no network with this channel layout (its ``UNet``/``BasicUNet`` use
other channel schemes and no valid padding).

Paper configuration: ``in_channels=3, out_channels=3, padding="valid"`` (the paper's input has three channels,
Fig. 2). The paper states that "the architecture has 19069955 parameters in total". We count 19,075,523 for the
same layout: 3x3x3 convolutions with biases, up-convolutions with biases and affine BN. The paper's figure equals
our count minus the 2 x 2336 BN scale/shift parameters and the 896 up-convolution biases, i.e. the figure counts the
convolution weights and the 3x3x3 biases only (the authors' Caffe BatchNorm layer has no learnable parameters);
the 0.03% difference is inside the 2% tolerance of the contract tests.

The default ``padding="same"`` keeps the output the size of the input (same weights and count).
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    NormSpec,
    StackedConvNormAct,
    center_crop,
    check_valid_unet_input,
    make_conv,
    make_pool,
    make_transposed_conv,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["UNet3D"]


@register_model(
    "unet3d",
    family="unet",
    spatial_dims=(3,),
    paper_title="3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation",
    paper_year=2016,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=3,
        out_channels=3,
        kwargs={"padding": "valid"},
        params=19_069_955,
        source="MICCAI 2016, Section 2 ('The architecture has 19069955 parameters in total') and Fig. 2",
    ),
    divisor=8,
    test_kwargs={"base_features": 4},
)
class UNet3D(SegmentationModel):
    """3D U-Net of Çiçek et al. (MICCAI 2016).

    Shapes: ``(B, in_channels, D, H, W)`` to ``(B, out_channels, D, H, W)`` with ``padding="same"`` (each size a
    multiple of 8); with ``padding="valid"`` the output is smaller (132x132x116 -> 44x44x28 as in the paper).

    Args:
        spatial_dims: Must be 3.
        in_channels: Input channels (paper: 3).
        out_channels: Output channels (paper: 3 labels).
        base_features: Channels of the second convolution of the first level (paper: 64); level ``l`` has
            ``base_features * 2**l`` with the first convolution at half of that.
        padding: ``"same"`` (default) or ``"valid"`` (the paper's unpadded convolutions).
        norm: Normalisation after each convolution (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        base_features: int = 64,
        padding: str = "same",
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 3:
            raise ModelError(f"{self.model_name}: the 3D U-Net is 3D only, got spatial_dims={spatial_dims}")
        if padding not in ("same", "valid"):
            raise ModelError(f"{self.model_name}: padding must be 'same' or 'valid', got {padding!r}")
        if base_features < 2 or base_features % 2:
            raise ModelError(f"{self.model_name}: base_features must be an even integer >= 2, got {base_features}")
        self.padding = padding
        self.n_pool = 3
        act = ("relu", {"inplace": True})
        kw = {"padding": padding, "norm": norm, "act": act}
        widths = [base_features * 2**level for level in range(4)]  # 64, 128, 256, 512
        self.analysis = nn.ModuleList()
        channels = in_channels
        for w in widths:
            self.analysis.append(nn.Sequential(
                StackedConvNormAct(1, 3, channels, w // 2, 3, **kw),
                StackedConvNormAct(1, 3, w // 2, w, 3, **kw),
            ))
            channels = w
        self.pool = make_pool("max", 3, 2)
        self.upconvs = nn.ModuleList()
        self.synthesis = nn.ModuleList()
        for level in (2, 1, 0):
            below = widths[level + 1]
            self.upconvs.append(make_transposed_conv(3, below, below, 2))
            self.synthesis.append(StackedConvNormAct(2, 3, below + widths[level], widths[level], 3, **kw))
        self.head = make_conv(3, widths[0], out_channels, 1)
        self.input_divisor = (8, 8, 8)

    def check_input(self, x: torch.Tensor) -> None:
        """Check rank and channels, then the size rule of the padding mode (see the class docstring)."""
        if self.padding == "same":
            super().check_input(x)
        else:
            self.check_rank_and_channels(x)
            check_valid_unet_input(self.model_name, tuple(x.shape[2:]), self.n_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, D, H, W)``."""
        self.check_input(x)
        skips = []
        for i, level in enumerate(self.analysis):
            x = level(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for upconv, block in zip(self.upconvs, self.synthesis, strict=True):
            x = upconv(x)
            skip = skips.pop()
            if skip.shape[2:] != x.shape[2:]:
                skip = center_crop(skip, x.shape[2:])
            x = block(torch.cat((skip, x), dim=1))
        return self.head(x)
