"""LRR: Laplacian pyramid reconstruction and refinement (Ghiasi & Fowlkes, ECCV 2016) on VGG-16, 2D.

Paper: G. Ghiasi, C. C. Fowlkes, "Laplacian Pyramid Reconstruction and Refinement for Semantic Segmentation", ECCV
2016 (arXiv:1605.02264), Section 3 and Figures 2-3; configuration of the authors' MatConvNet code
(github.com/golnazghiasi/LRR, ``LRR4xTrainVGG16Pascal.m``, ``LRRAddMasking.m``).

Layout: VGG-16 with ``fc6`` (7x7, 4096) and ``fc7`` (1x1, 4096) as convolutions (ReLU, dropout 0.5). Four levels
read ``fc7`` (1/32), ``conv5_3`` (1/16), ``conv4_3`` (1/8) and ``conv3_3`` (1/4). At each level a 5x5 convolution
predicts, per class, the coefficients of 10 basis functions, and a class-wise transposed convolution (the learned
basis, 8x8 kernels, stride 4: "reconstruction by deconvolution") turns them into a class-score map 4x finer. The
pyramid is built coarse to fine: the coarser prediction is upsampled bilinearly x2 and the finer level's
reconstruction, multiplied by a boundary mask, is added (the Laplacian step). The boundary mask of a class is
``maxpool9(p) + maxpool9(-p)`` of the softmax probabilities ``p`` of the upsampled coarser prediction (dilation minus
erosion with a 9x9 window), so the finer levels only correct the scores near the coarser level's boundaries. The
finest prediction (from ``conv3_3``) is at full resolution.

Training supervises every level (the code's ``objective_32x/16x/8x/4x``): with ``deep_supervision=True`` training
returns ``[full (1/1), 8x level (1/2), 16x level (1/4), 32x level (1/8)]`` logits, the scales of
``deep_supervision_scales``. The code's additional dilation/erosion objectives at the 32x level (extra heads used
only as auxiliary losses) are not implemented.

Paper configuration: VGG-16, PASCAL VOC (21 classes); the paper gives no parameter count, so none is recorded (we
count 162,539,144). ``fc6`` is padded ("same") so that every level keeps its resolution. 2D only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.vgg import VGGBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_conv
from medseg.models.natural.refine._modules import build_backbone, upsample_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["LRR", "boundary_mask"]


def boundary_mask(logits: torch.Tensor, window: int = 9) -> torch.Tensor:
    """LRR's boundary mask: ``maxpool(p) - minpool(p)`` of the class probabilities over a ``window`` (stride 1).

    Shapes: ``(B, K, H, W)`` to the same, in ``[0, 1]``; zero inside regions where a class's probability is flat.
    """
    p = torch.softmax(logits, dim=1)
    pool = Pool[Pool.MAX, logits.dim() - 2](kernel_size=window, stride=1, padding=window // 2)
    return pool(p) + pool(-p)


@register_model(
    "lrr",
    family="natural",
    spatial_dims=(2,),
    paper_title="Laplacian Pyramid Reconstruction and Refinement for Semantic Segmentation",
    paper_year=2016,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={}, params=None,
        source="ECCV 2016, Section 3 and Figure 3 (LRR-4x on VGG-16, PASCAL VOC 21 classes); configuration of "
               "LRR4xTrainVGG16Pascal.m; the paper states no parameter count",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "fc_channels": 16, "num_basis": 2},
)
class LRR(SegmentationModel):
    """LRR-4x of Ghiasi & Fowlkes (ECCV 2016): class-wise basis reconstruction with Laplacian boundary refinement.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of 32.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3).
        out_channels: Classes K (21 for PASCAL VOC).
        backbone: ``"vgg16"`` (the paper's) or ``"vgg16_bn"``.
        pretrained_backbone: Local torchvision/timm VGG weights file (the convolutional part).
        backbone_kwargs: Extra backbone options.
        fc_channels: Width of ``fc6``/``fc7`` (4096).
        num_basis: Basis functions per class (10).
        coefficient_kernel: Kernel of the coefficient convolutions (5).
        mask_window: Window of the boundary mask's dilation/erosion (9).
        dropout: Dropout after ``fc6`` and ``fc7`` (0.5).
        deep_supervision: Return the four level outputs in training.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "vgg16",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        fc_channels: int = 4096,
        num_basis: int = 10,
        coefficient_kernel: int = 5,
        mask_window: int = 9,
        dropout: float = 0.5,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if not backbone.startswith("vgg16"):
            raise ModelError(f"{self.model_name}: backbone must be 'vgg16' or 'vgg16_bn', got {backbone!r}")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=32,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        assert isinstance(self.backbone, VGGBackbone)
        relu = ("relu", {"inplace": True})
        self.fc = nn.Sequential(
            make_conv(spatial_dims, self.backbone.out_channels[4], fc_channels, 7), make_act(relu),
            nn.Dropout(dropout),
            make_conv(spatial_dims, fc_channels, fc_channels, 1), make_act(relu), nn.Dropout(dropout),
        )
        k = out_channels
        level_channels = [fc_channels, *self.backbone.out_channels[4:1:-1]]  # fc7, conv5_3, conv4_3, conv3_3
        self.coefficients = nn.ModuleList(
            make_conv(spatial_dims, c, k * num_basis, coefficient_kernel) for c in level_channels
        )
        self.bases = nn.ModuleList(
            Conv[Conv.CONVTRANS, spatial_dims](k * num_basis, k, kernel_size=8, stride=4, padding=2, groups=k,
                                               bias=False)
            for _ in level_channels
        )
        self.mask_window = mask_window
        self.deep_supervision = deep_supervision
        self.deep_supervision_scales = [(s,) * spatial_dims for s in (1, 2, 4, 8)] if deep_supervision else []
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, out_channels, H, W)``; the four level outputs in training with deep supervision."""
        self.check_input(x)
        convs = []
        y = x
        for block, pool in zip(self.backbone.blocks, self.backbone.pools, strict=True):
            y = block(y)
            convs.append(y)
            y = pool(y)
        sources = [self.fc(y), convs[4], convs[3], convs[2]]  # 1/32, 1/16, 1/8, 1/4
        levels = []
        pred = self.bases[0](self.coefficients[0](sources[0]))  # 1/8
        levels.append(pred)
        for coef, basis, src in zip(self.coefficients[1:], self.bases[1:], sources[1:], strict=True):
            residual = basis(coef(src))  # 4x the source resolution
            pred = upsample_to(pred, residual.shape[2:])
            pred = pred + boundary_mask(pred, self.mask_window) * residual
            levels.append(pred)
        if self.deep_supervision and self.training:
            return levels[::-1]
        return levels[-1]
