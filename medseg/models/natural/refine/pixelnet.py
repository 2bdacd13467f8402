"""PixelNet (Bansal et al., 2017): VGG-16 hypercolumns + an MLP, as dense 1x1 convolutions or on sampled pixels, 2D.

Paper: A. Bansal, X. Chen, B. Russell, A. Gupta, D. Ramanan, "PixelNet: Representation of the pixels, by the pixels,
and for the pixels", arXiv:1702.06506 (2017), Section 3 and Figure 2; layer configuration of the authors' Caffe model
``models/analysis/mlp/semantic_seg`` (github.com/aayushbansal/PixelNet).

Layout: VGG-16 (:mod:`medseg.models.backbones.vgg`) with ``fc6`` as a 7x7 convolution to 4096 channels on ``pool5``
and ``fc7`` as a 1x1 convolution to 4096 (ReLU and dropout 0.5 after each). The hypercolumn of a pixel concatenates
``conv1_2``, ``conv2_2``, ``conv3_3``, ``conv4_3``, ``conv5_3`` and ``fc7`` (64 + 128 + 256 + 512 + 512 + 4096 =
5568 channels), each bilinearly interpolated at the pixel; an MLP of two 4096-unit layers (ReLU, dropout 0.5) and a
linear classifier predicts the label.

Dense output (``forward``): the six maps are upsampled bilinearly to the input size and concatenated, and the MLP runs
as 1x1 convolutions, giving ``(B, out_channels, H, W)``. This is memory-heavy at full width (5568 channels at full
resolution). Sparse sampling (the paper's training scheme, "a few pixels per image"): :meth:`PixelNet.forward_sampled`
interpolates the hypercolumns at given pixel coordinates only and returns ``(B, out_channels, N)``; train with it
and a loss on the sampled labels, predict densely with ``forward``. ``fc6`` is padded ("same") so that ``fc7`` is a
dense 1/32 map for any input size (the authors' 224x224 training crops give a single ``fc7`` vector, "unpadded").

Paper configuration: VGG-16, PASCAL VOC / PASCAL-Context classes (21 in the released model); the paper gives no
parameter count, so none is recorded (we count 173,938,517: 14.7M convolutions, 119.5M ``fc6``/``fc7``, 39.7M MLP).
2D only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.vgg import VGGBackbone
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_conv
from medseg.models.natural.refine._modules import build_backbone, upsample_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PixelNet"]


@register_model(
    "pixelnet",
    family="natural",
    spatial_dims=(2,),
    paper_title="PixelNet: Representation of the pixels, by the pixels, and for the pixels",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21, kwargs={}, params=None,
        source="arXiv:1702.06506, Section 3 and Figure 2; authors' model models/analysis/mlp/semantic_seg (VGG-16, "
               "hypercolumn conv1_2..conv5_3 + fc7, MLP 4096-4096-21); the paper states no parameter count",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "fc_channels": 16, "mlp_channels": 16},
)
class PixelNet(SegmentationModel):
    """PixelNet of Bansal et al. (2017): VGG-16 hypercolumns classified by an MLP.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (``forward``), or with pixel coordinates
    ``(B, N, 2)`` to ``(B, out_channels, N)`` (``forward_sampled``); H and W multiples of 32.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3).
        out_channels: Classes (21 in the released model).
        backbone: ``"vgg16"`` (the paper's) or ``"vgg16_bn"``.
        pretrained_backbone: Local torchvision/timm VGG weights file (the convolutional part).
        backbone_kwargs: Extra backbone options.
        fc_channels: Width of ``fc6``/``fc7`` (4096).
        fc6_kernel: Kernel of ``fc6`` (7).
        mlp_channels: Width of the two MLP layers (4096).
        dropout: Dropout after ``fc6``, ``fc7`` and each MLP layer (0.5).
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
        fc6_kernel: int = 7,
        mlp_channels: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if not backbone.startswith("vgg16"):
            raise ModelError(f"{self.model_name}: backbone must be 'vgg16' or 'vgg16_bn', got {backbone!r}")
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=32,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        assert isinstance(self.backbone, VGGBackbone)
        relu = ("relu", {"inplace": True})
        self.fc = nn.Sequential(
            make_conv(spatial_dims, self.backbone.out_channels[4], fc_channels, fc6_kernel),
            make_act(relu), nn.Dropout(dropout),
            make_conv(spatial_dims, fc_channels, fc_channels, 1), make_act(relu), nn.Dropout(dropout),
        )
        hyper = sum(self.backbone.out_channels) + fc_channels
        self.hypercolumn_channels = hyper
        self.mlp = nn.Sequential(
            make_conv(spatial_dims, hyper, mlp_channels, 1), make_act(relu), nn.Dropout(dropout),
            make_conv(spatial_dims, mlp_channels, mlp_channels, 1), make_act(relu), nn.Dropout(dropout),
            make_conv(spatial_dims, mlp_channels, out_channels, 1),
        )
        self.input_divisor = (32,) * spatial_dims

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six hypercolumn sources: ``conv1_2``, ``conv2_2``, ``conv3_3``, ``conv4_3``, ``conv5_3``, ``fc7``."""
        self.check_input(x)
        maps = []
        for block, pool in zip(self.backbone.blocks, self.backbone.pools, strict=True):
            x = block(x)
            maps.append(x)
            x = pool(x)
        maps.append(self.fc(x))
        return maps

    #: Pixels whose hypercolumns are built at once by the dense evaluation-mode forward (memory: about
    #: ``chunk_pixels`` × 5,568 channels × 4 bytes ≈ 0.7 GB, instead of 12 GB for a whole 512×1024 image).
    chunk_pixels: int = 32768

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense logits ``(B, out_channels, H, W)``: the MLP as 1x1 convolutions on the upsampled hypercolumns.

        In training mode the hypercolumns of the whole input are built at once (the paper trains on sampled pixels,
        :meth:`forward_sampled`, or small crops). In evaluation mode they are built band of rows by band of rows by
        sampling each map at the pixel centres (``grid_sample``, bilinear, border: the same values as bilinear
        upsampling with ``align_corners=False``), so memory stays bounded by :attr:`chunk_pixels`.
        """
        size = x.shape[2:]
        maps = self.feature_maps(x)
        height, width = int(size[0]), int(size[1])
        if self.training or height * width <= self.chunk_pixels:
            return self.mlp(torch.cat([upsample_to(m, size) for m in maps], dim=1))
        rows = max(1, self.chunk_pixels // width)
        cols = (torch.arange(width, device=x.device, dtype=torch.float32) + 0.5) / width * 2 - 1
        bands = []
        for top in range(0, height, rows):
            r = (torch.arange(top, min(top + rows, height), device=x.device, dtype=torch.float32) + 0.5) / height
            gy, gx = torch.meshgrid(r * 2 - 1, cols, indexing="ij")
            grid = torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
            hyper = torch.cat([nn.functional.grid_sample(m, grid.to(m.dtype), mode="bilinear", padding_mode="border",
                                                         align_corners=False) for m in maps], dim=1)
            bands.append(self.mlp(hyper))
        return torch.cat(bands, dim=2)

    def forward_sampled(self, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Logits at sampled pixels (the paper's sparse training): ``points`` ``(B, N, 2)`` as (row, col) in pixels.

        Each map is bilinearly interpolated at the points (``align_corners=False`` pixel centres); returns
        ``(B, out_channels, N)``.
        """
        size = torch.tensor(x.shape[2:], dtype=points.dtype, device=points.device)
        grid = ((points + 0.5) / size * 2 - 1).flip(-1).unsqueeze(1)  # (B, 1, N, 2) as (x, y) in [-1, 1]
        cols = [nn.functional.grid_sample(m, grid.to(m.dtype), mode="bilinear", padding_mode="border",
                                          align_corners=False)
                for m in self.feature_maps(x)]
        return self.mlp(torch.cat(cols, dim=1)).squeeze(2)
