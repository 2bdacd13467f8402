"""SegResNet: the encoder-decoder of Myronenko's autoencoder-regularised brain-tumour network, via MONAI.

Paper: A. Myronenko, "3D MRI Brain Tumor Segmentation Using Autoencoder Regularization", BrainLes (MICCAI
workshop) 2018, LNCS 11384 (arXiv:1810.11654), Section 2 and Fig. 1 / Table 1.

We use ``monai.networks.nets.SegResNet`` (written by the paper's author): an initial 3x3x3 convolution to 32
filters, ResNet-like blocks (GroupNorm with 8 groups, ReLU, 3x3x3 convolution, twice, plus identity) with 1, 2, 2, 4
blocks per encoder level and strided-convolution downsampling, a decoder with one block per level, 1x1x1
convolution + trilinear upsampling, and a final 1x1x1 convolution. The paper's variational-autoencoder branch
regularises training only and is not part of the segmentation network (MONAI has it as ``SegResNetVAE``); we
register the segmentation network. This wrapper adds medseg's constructor contract and the input check.

Paper configuration: 3D, 4 input channels (T1, T1c, T2, FLAIR), 3 output channels, ``init_filters=32``,
160x192x128 crops. The paper states no parameter count, so the registry records ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SegResNet as MonaiSegResNet

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.registry import PaperConfig, register_model

__all__ = ["SegResNet"]


@register_model(
    "segresnet",
    family="resnet",
    spatial_dims=(2, 3),
    paper_title="3D MRI Brain Tumor Segmentation Using Autoencoder Regularization",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        kwargs={"init_filters": 32},
        params=None,
        source="BrainLes 2018 (LNCS 11384), Section 2, Fig. 1 and Table 1 (no parameter count given)",
    ),
    divisor=8,
    test_kwargs={"init_filters": 8},
)
class SegResNet(SegmentationModel):
    """SegResNet (Myronenko, BrainLes 2018) via MONAI, without the VAE regulariser.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(len(blocks_down) - 1)`` (8 by default).

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels.
        out_channels: Output channels.
        init_filters: Filters of the first level (paper: 32; a multiple of ``num_groups``).
        blocks_down: Residual blocks per encoder level (paper: 1, 2, 2, 4).
        blocks_up: Residual blocks per decoder level (paper: 1, 1, 1).
        num_groups: GroupNorm groups (paper: 8).
        dropout_prob: Dropout after the initial convolution (paper: 0.2 spatial dropout; ``None`` for none).
        upsample_mode: ``"nontrainable"`` (paper: trilinear), ``"deconv"`` or ``"pixelshuffle"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        num_groups: int = 8,
        dropout_prob: float | None = None,
        upsample_mode: str = "nontrainable",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if init_filters % num_groups:
            raise ModelError(f"{self.model_name}: init_filters {init_filters} must be a multiple of num_groups "
                             f"{num_groups}")
        if len(blocks_up) != len(blocks_down) - 1:
            raise ModelError(f"{self.model_name}: blocks_up needs {len(blocks_down) - 1} entries, got {len(blocks_up)}")
        self.net = MonaiSegResNet(
            spatial_dims=spatial_dims, init_filters=init_filters, in_channels=in_channels, out_channels=out_channels,
            dropout_prob=dropout_prob, norm=("GROUP", {"num_groups": num_groups}), blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up), upsample_mode=upsample_mode,
        )
        self.input_divisor = (2 ** (len(blocks_down) - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        return self.net(x)
