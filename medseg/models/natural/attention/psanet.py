"""PSANet, the point-wise spatial attention network (Zhao et al., ECCV 2018), 2D.

Paper: H. Zhao, Y. Zhang, S. Liu, J. Shi, C. C. Loy, D. Lin, J. Jia, "PSANet: Point-wise Spatial Attention Network
for Scene Parsing", ECCV 2018, Sections 3.2-3.4 and Figs. 2-4.

Layout (Section 3.4, Fig. 4; the authors' ``PSA`` module in hszhao/semseg): a dilated ResNet (output stride 8; the
paper's main results use ResNet-101). The PSA module has two branches, *collect* and *distribute*; each reduces the
2048 channels to 512 with a 1x1 convolution-BN-ReLU, shrinks the map by 2 (``shrink_factor``; bilinear), and predicts
at every position ``i`` an *over-completed* attention map of ``(2H - 1) x (2W - 1)`` channels (1x1 conv-BN-ReLU, 1x1
conv), which covers every position ``j`` of the ``H x W`` map whatever ``i`` is (Section 3.3, Fig. 3). The map is
turned into the ``HW x HW`` attention (:func:`~medseg.models.natural.attention._modules.psa_mask`): in *collect*,
position ``i`` gathers ``Σ_j a^c_ij x_j`` with the weights predicted at ``i``; in *distribute* the weights predicted
at ``j`` say how much ``j`` sends to ``i`` (Eq. 7-8). The two aggregated maps are concatenated, projected back to
2048 channels (1x1 conv-BN-ReLU), resized to the feature size and concatenated with the input (4096 channels); a 3x3
convolution-BN-ReLU to 512, dropout 0.1 and a 1x1 convolution classify, and the logits are upsampled to the input.
The paper trains with an auxiliary FCN head on ``layer3`` (3x3 conv 1024 -> 256, BN, ReLU, dropout, 1x1; loss
weight 0.4): with ``deep_supervision=True`` the training forward returns ``[main, auxiliary]``.

The mask size fixes the parameters (the last attention convolution has ``Hm · Wm`` output channels): the reference
ADE20K model (473x473 crops: a 60x60 feature map, 30x30 after shrinking) uses 59x59. Inputs of another size work:
positions beyond the mask get a zero logit, as in the reference op (a mask of ``2 h - 1`` for a shrunk map of ``h``
covers all pairs). Softmax over the attention (``psa_softmax``) and normalisation factor 1 as in the reference.

Differences from the reference: its ResNet has a deep stem; we use our ResNet (torchvision layout). The shrunk map
is resized back to the feature size directly (the reference needs ``(size - 1) % 8 == 0`` inputs for its
``(h - 1) · 2 + 1`` resize). Parameter figure: the paper states none, so none is recorded; at the paper configuration
(ResNet-101, ADE20K 150 classes, mask 59x59, with the auxiliary head) we count 72,142,188 (of which the two
512 -> 3481 attention convolutions: 3,564,544).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.natural.attention._modules import SegHead, build_backbone, conv1x1, psa_mask, resize_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PSAModule", "PSANet"]


class PSAModule(nn.Module):
    """Bi-directional point-wise spatial attention (Fig. 4): collect and distribute branches.

    Shapes: ``(B, C, H, W)`` to ``(B, 2C, H, W)`` (the input concatenated with the attended features).

    Args:
        in_channels: C (2048).
        mid_channels: Width of the branches (512).
        mask_size: Over-completed mask ``(Hm, Wm)``, odd sizes.
        shrink_factor: Downsampling of the branches before the attention (2).
    """

    def __init__(self, in_channels: int, mid_channels: int, mask_size: Sequence[int], shrink_factor: int = 2) -> None:
        super().__init__()
        self.mask_size = (int(mask_size[0]), int(mask_size[1]))
        self.shrink_factor = shrink_factor
        masks = self.mask_size[0] * self.mask_size[1]
        for name in ("collect", "distribute"):
            self.add_module(f"reduce_{name}", ConvNormActD(2, in_channels, mid_channels, 1))
            self.add_module(f"attention_{name}", nn.Sequential(
                ConvNormActD(2, mid_channels, mid_channels, 1), conv1x1(2, mid_channels, masks, bias=False)))
        self.project = ConvNormActD(2, 2 * mid_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` (``(B, C, H, W)``) and concatenate the result to it."""
        h, w = x.shape[2:]
        small = ((h - 1) // self.shrink_factor + 1, (w - 1) // self.shrink_factor + 1)
        outs = []
        for name in ("collect", "distribute"):
            feat = getattr(self, f"reduce_{name}")(x)
            feat = resize_to(feat, small, align_corners=True)
            over = getattr(self, f"attention_{name}")(feat)
            attention = torch.softmax(psa_mask(over, name, self.mask_size), dim=1)  # (B, N, N)
            outs.append(torch.bmm(feat.flatten(2), attention).view_as(feat))
        y = resize_to(self.project(torch.cat(outs, dim=1)), (h, w), align_corners=True)
        return torch.cat((x, y), dim=1)


@register_model(
    "psanet",
    family="natural",
    spatial_dims=(2,),
    paper_title="PSANet: Point-wise Spatial Attention Network for Scene Parsing",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=150, kwargs={"deep_supervision": True, "mask_size": 59},
        params=None,
        source="ECCV 2018, Section 3.4 and 4.1 (dilated ResNet-101, bi-directional PSA, ADE20K 150 classes, "
               "473x473 crops; mask 59x59 from the authors' hszhao/semseg config); the paper states no parameter "
               "count",
    ),
    divisor=1,
    deep_supervision=True,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "mask_size": 7, "mid_channels": 16,
                 "head_channels": 16},
)
class PSANet(SegmentationModel):
    """PSANet of Zhao et al. (ECCV 2018): dilated ResNet + bi-directional point-wise spatial attention.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (any size). With ``deep_supervision=True`` in
    training mode: ``[main, auxiliary]`` logits of that shape.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (paper: 3).
        out_channels: Classes.
        backbone: Backbone key (paper: ``"resnet101"``).
        output_stride: Output stride (paper: 8).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Further backbone options.
        mask_size: Over-completed mask size ``Hm`` (or ``(Hm, Wm)``), odd: ``2 h - 1`` for a shrunk feature map of
            ``h`` (59 for 473x473 crops at output stride 8 and shrink 2).
        shrink_factor: Downsampling inside the PSA module (2).
        mid_channels: Width of the PSA branches (512).
        head_channels: Width of the classifier's 3x3 convolution (512; the auxiliary head uses half).
        deep_supervision: Build the auxiliary FCN head on ``layer3`` and return its logits in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        mask_size: int | Sequence[int] = 59,
        shrink_factor: int = 2,
        mid_channels: int = 512,
        head_channels: int = 512,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: PSANet is 2D only, got spatial_dims={spatial_dims}")
        mask = (mask_size, mask_size) if isinstance(mask_size, int) else tuple(mask_size)
        if len(mask) != 2 or any(m < 1 or m % 2 == 0 for m in mask):
            raise ModelError(f"{self.model_name}: mask_size must be odd and positive, got {mask_size!r}")
        self.encoder = build_backbone(self.model_name, backbone, 2, in_channels, output_stride, pretrained_backbone,
                                      backbone_kwargs)
        chs = self.encoder.out_channels
        self.psa = PSAModule(chs[-1], mid_channels, mask, shrink_factor)
        self.classifier = SegHead(2, 2 * chs[-1], head_channels, out_channels)
        self.deep_supervision = deep_supervision
        self.aux = SegHead(2, chs[-2], head_channels // 2, out_channels) if deep_supervision else None
        if deep_supervision:
            self.deep_supervision_scales = [(1, 1)] * 2
            self.loss_weights = (1.0, 0.4)  # the auxiliary FCN head's weight in the paper

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        feats = self.encoder(x)
        out = resize_to(self.classifier(self.psa(feats[-1])), x.shape[2:], align_corners=True)
        if self.aux is not None and self.training:
            return [out, resize_to(self.aux(feats[-2]), x.shape[2:], align_corners=True)]
        return out
