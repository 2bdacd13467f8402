"""UNETR: a ViT encoder with a convolutional U-Net decoder (Hatamizadeh et al., 2022), MONAI's implementation.

Paper: A. Hatamizadeh, Y. Tang, V. Nath, D. Yang, A. Myronenko, B. Landman, H. R. Roth, D. Xu, "UNETR:
Transformers for 3D Medical Image Segmentation", WACV 2022 (arXiv:2103.10504), Section 3 and Fig. 2.

We use ``monai.networks.nets.UNETR``: the paper's code is MONAI's (the paper links monai.io/research/unetr), so it
is the authors' own implementation: 16^3 patches, a 12-layer ViT (hidden size 768, MLP 3072, 12 heads), skip features
from layers 3, 6, 9 and 12 upsampled by deconvolution blocks, and a convolutional decoder starting at 16 features.
This wrapper adds medseg's constructor contract and input checks.

Paper configuration: 3D, 96x96x96 input, 1 input channel, 14 output channels (BTCV: 13 organs + background),
``feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12``. The registry records the paper's model-complexity
table (Table 5) as 92.58M parameters and 41.19 GFLOPs for a 96^3 input. We could not read the table itself; it is
quoted, rounded, in Project-MONAI/model-zoo issue #164 ("in UNETR paper in Table 5, the authors mentioned that the
number of params is 92.6M but the FLOPs are 41.19G, with the same input size of 96x96x96"). MONAI's implementation
counts 92,784,046 at this configuration (+0.22% from 92.58M, within the 2% tolerance), after dropping the
cross-attention LayerNorms MONAI's transformer blocks create but UNETR never uses (18,432 parameters that would
receive no gradient).

The input size is fixed at construction (``img_size``): the positional embedding has one entry per patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNETR as MonaiUNETR  # noqa: N811 - MONAI's class name
from monai.utils import optional_import
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import as_tuple
from medseg.models.registry import PaperConfig, register_model

__all__ = ["UNETR"]

PATCH = 16


def _require_einops(name: str) -> None:
    """MONAI's transformer blocks need the optional package einops; say so clearly when it is missing."""
    if not optional_import("einops")[1]:
        raise ModelError(f"{name}: MONAI's implementation needs the package 'einops' (pip install einops)")


@register_model(
    "unetr",
    family="transformer",
    spatial_dims=(2, 3),
    paper_title="UNETR: Transformers for 3D Medical Image Segmentation",
    paper_year=2022,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=14,
        kwargs={"img_size": 96, "feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12},
        params=92_580_000,
        source="WACV 2022, Table 5 (model complexity; UNETR: 92.58M parameters, 41.19 GFLOPs, 96^3 input; quoted "
               "as 92.6M in Project-MONAI/model-zoo#164)",
    ),
    divisor=PATCH,
    test_kwargs={
        3: {"img_size": 32, "feature_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
        2: {"img_size": 64, "feature_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
    },
)
class UNETR(SegmentationModel):
    """UNETR (Hatamizadeh et al., WACV 2022) via MONAI.

    Shapes: ``(B, in_channels, *img_size)`` to ``(B, out_channels, *img_size)``; the input must have exactly the
    ``img_size`` given at construction, a multiple of the 16-voxel patch along each axis.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels.
        out_channels: Output channels.
        img_size: Input spatial size, one int or one per axis (paper: 96).
        feature_size: Channels of the decoder's first level (paper: 16).
        hidden_size: ViT embedding size (paper: 768).
        mlp_dim: ViT MLP size (paper: 3072).
        num_heads: Attention heads (paper: 12).
        norm_name: Normalisation in the convolutional blocks (paper: instance).
        res_block: Residual convolutional blocks (paper: yes).
        dropout_rate: Dropout in the transformer.
        qkv_bias: Bias in the attention projections.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        img_size: int | Sequence[int] = 96,
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        norm_name: str = "instance",
        res_block: bool = True,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.img_size = as_tuple(img_size, spatial_dims)
        if any(s % PATCH for s in self.img_size):
            raise ModelError(f"{self.model_name}: img_size {self.img_size} must be a multiple of {PATCH} per axis")
        if hidden_size % num_heads:
            raise ModelError(f"{self.model_name}: hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        _require_einops(self.model_name)
        self.net = MonaiUNETR(
            in_channels=in_channels, out_channels=out_channels, img_size=self.img_size, feature_size=feature_size,
            hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, norm_name=norm_name, res_block=res_block,
            dropout_rate=dropout_rate, spatial_dims=spatial_dims, qkv_bias=qkv_bias,
        )
        for block in self.net.vit.blocks:  # MONAI builds a cross-attention norm that UNETR never uses
            if not getattr(block, "with_cross_attention", False) and hasattr(block, "norm_cross_attn"):
                block.norm_cross_attn = nn.Identity()
        self.input_divisor = (PATCH,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *img_size)``."""
        self.check_input(x)
        if tuple(x.shape[2:]) != self.img_size:
            raise ModelError(f"{self.model_name}: input spatial size {tuple(x.shape[2:])} differs from the img_size "
                             f"{self.img_size} the model was built for")
        return self.net(x)
