"""Swin UNETR: a Swin-Transformer encoder with a convolutional U-Net decoder (Hatamizadeh et al., 2022), via MONAI.

Paper: A. Hatamizadeh, V. Nath, Y. Tang, D. Yang, H. R. Roth, D. Xu, "Swin UNETR: Swin Transformers for Semantic
Segmentation of Brain Tumors in MRI Images", BrainLes (MICCAI workshop) 2021, LNCS 12962 (arXiv:2201.01266),
Section 3 and Fig. 2.

We use ``monai.networks.nets.SwinUNETR``, the authors' implementation (the paper's code is in MONAI): patch size 2,
window size 7, four stages with depths 2, 2, 2, 2 and 3, 6, 12, 24 heads, embedding size 48, patch merging between
stages, residual convolutional encoder blocks on each resolution and a deconvolution decoder. This wrapper adds
medseg's constructor contract and the input check.

Paper configuration: 3D, 4 input channels (T1, T1c, T2, FLAIR), 3 output channels (tumour sub-regions),
``feature_size=48``, 128x128x128 crops. We count 62,191,941 parameters for it.

Parameter figures: we did not find a parameter count in this paper, so the registry records ``None``. Asked for the
paper's count (Project-MONAI/research-contributions issue #58), the first author answered "The Swin UNETR model has
62M parameters. You can find this information in Table S.3" of Tang et al., "Self-Supervised Pre-Training of Swin
Transformers for 3D Medical Image Analysis", CVPR 2022 (arXiv:2111.14791), a different paper (BTCV: 1 input
channel, 14 classes; we count 62,187,296 there), and the authors' reference code lists 62.1M for this BraTS
configuration (research-contributions ``SwinUNETR/BRATS21/README.md``: feature size 48, "# params (M)" 62.1). Our
counts are 0.3% above 62M and 0.15% above 62.1M; we could not read Table S.3 itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
from monai.utils import optional_import

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.registry import PaperConfig, register_model

__all__ = ["SwinUNETR"]

DIVISOR = 32  # patch size 2, then four 2x patch-merging steps


def _require_einops(name: str) -> None:
    """MONAI's transformer blocks need the optional package einops; say so clearly when it is missing."""
    if not optional_import("einops")[1]:
        raise ModelError(f"{name}: MONAI's implementation needs the package 'einops' (pip install einops)")


@register_model(
    "swin_unetr",
    family="transformer",
    spatial_dims=(2, 3),
    paper_title="Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI Images",
    paper_year=2022,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        kwargs={"feature_size": 48},
        params=None,
        source="BrainLes 2021 (LNCS 12962, 2022), Section 3 and Fig. 2 (no parameter count found in the paper; the "
               "authors give 62M in Tang et al. CVPR 2022 Table S.3 and 62.1M in their BRATS21 README)",
    ),
    divisor=DIVISOR,
    test_kwargs={"feature_size": 12, "depths": (1, 1, 1, 1), "window_size": 4, "norm_name": "batch"},
)
class SwinUNETR(SegmentationModel):
    """Swin UNETR (Hatamizadeh et al., BrainLes 2021) via MONAI.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 32.
    With instance norm, training needs at least 64 voxels per axis (the bottleneck must hold more than one voxel).

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels.
        out_channels: Output channels.
        feature_size: Embedding size (paper: 48; a multiple of 12).
        depths: Swin blocks per stage (paper: 2, 2, 2, 2).
        num_heads: Attention heads per stage (paper: 3, 6, 12, 24).
        window_size: Attention window (paper: 7).
        norm_name: Normalisation of the convolutional blocks (paper: instance).
        drop_rate: Dropout rate.
        attn_drop_rate: Attention dropout rate.
        dropout_path_rate: Stochastic-depth rate.
        use_checkpoint: Gradient checkpointing (saves memory in training).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        norm_name: str = "instance",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if feature_size % 12:
            raise ModelError(f"{self.model_name}: feature_size must be a multiple of 12, got {feature_size}")
        self.norm_name = norm_name
        _require_einops(self.model_name)
        self.net = MonaiSwinUNETR(
            in_channels=in_channels, out_channels=out_channels, depths=tuple(depths), num_heads=tuple(num_heads),
            window_size=window_size, feature_size=feature_size, norm_name=norm_name, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, dropout_path_rate=dropout_path_rate, use_checkpoint=use_checkpoint,
            spatial_dims=spatial_dims,
        )
        self.input_divisor = (DIVISOR,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        if self.training and self.norm_name == "instance" and min(x.shape[2:]) < 2 * DIVISOR:
            raise ModelError(f"{self.model_name}: training with instance norm needs spatial sizes of at least "
                             f"{2 * DIVISOR} (a multiple of {DIVISOR}), got {tuple(x.shape[2:])}")
        return self.net(x)
