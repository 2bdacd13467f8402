"""Full-Resolution Residual Networks FRRN A/B (Pohlen et al., CVPR 2017), 2D.

Paper: T. Pohlen, A. Hermans, M. Mathias, B. Leibe, "Full-Resolution Residual Networks for Semantic Segmentation in
Street Scenes", CVPR 2017 (arXiv:1611.08323), Section 3, Figure 3 (the FRRU) and Table 1 (FRRN A and B).

Two streams: a residual stream of 32 channels that stays at full resolution and is only changed by adding residuals,
and a pooling stream that goes through max pooling and unpooling. A full-resolution residual unit (FRRU) concatenates
its pooling-stream input with the residual stream max-pooled to the same resolution, applies two 3x3
convolutions with BN and ReLU (this is the unit's pooling-stream output) and adds, through a 1x1 convolution to 32
channels and nearest-neighbour upsampling, a residual to the full-resolution stream.

Table 1 layout: a 5x5 convolution with 48 channels (BN, ReLU), three residual units (RU, two 3x3 convolutions with BN),
a 1x1 convolution creating the 32-channel residual stream; encoder: max pooling then FRRUs (3 x 96 at 1/2, 4 x 192
at 1/4, 2 x 384 at 1/8, 2 x 384 at 1/16, and for FRRN B 2 x 384 at 1/32); decoder: bilinear unpooling then FRRUs
(FRRN B: 2 x 192 at 1/16; then 2 x 192 at 1/8, 2 x 192 at 1/4, 2 x 96 at 1/2); the pooling stream is unpooled to
full resolution, concatenated with the residual stream and passed through three RUs (the first maps 96 + 32 -> 48
channels, its skip a bias-free 1x1 projection) and a 1x1 classifier (with bias). The residual stream is created by a
1x1 convolution with BN; the FRRUs' 1x1 convolutions to the residual stream have a bias and no BN; all other
convolutions are followed by BN and have no bias. Layer details follow the authors' Theano/Lasagne builders
(github.com/TobyPDE/FRRN, ``FRRNABuilder``/``FRRNBBuilder``: ``add_frru``, ``add_ru``), with Table 1's 48 base
channels and 32 residual-stream channels (``lanes``).

Parameter figure: we count 24,755,699 for FRRN B and 17,746,803 for FRRN A (19 classes). Both equal, to the
parameter, the networks of the authors' builders (``dltools/architectures.py``, ``FRRNABuilder``/``FRRNBBuilder``
with ``base_channels=48, lanes=32, multiplier=2, num_classes=19`` as in their ``train_frrn_b.py``; counted layer by
layer with a scale and a shift per BN channel). We could not read a parameter figure in the paper's text (its tables
were not readable in any source available to us), so ``params`` is ``None``. 2D only.
"""

from __future__ import annotations

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_conv
from medseg.models.natural.refine._modules import upsample_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["FRRN", "FullResolutionResidualUnit", "ResidualUnit"]

# (number of FRRUs, pooling-stream channels, scale) of each encoder / decoder stage, Table 1.
_ENCODER = {"A": ((3, 96, 2), (4, 192, 4), (2, 384, 8), (2, 384, 16)),
            "B": ((3, 96, 2), (4, 192, 4), (2, 384, 8), (2, 384, 16), (2, 384, 32))}
_DECODER = {"A": ((2, 192, 8), (2, 192, 4), (2, 96, 2)),
            "B": ((2, 192, 16), (2, 192, 8), (2, 192, 4), (2, 96, 2))}


class ResidualUnit(nn.Module):
    """Residual unit (RU): ``skip(x) + BN(conv(relu(BN(conv(x)))))`` with two 3x3 convolutions, no final activation.

    The skip is the identity, or a bias-free 1x1 projection when the channels change (the authors' ``add_ru``).
    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, bias=False, norm=norm)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, bias=False, norm=norm, act=None)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else make_conv(spatial_dims, in_channels, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        return self.skip(x) + self.conv2(self.conv1(x))


class FullResolutionResidualUnit(nn.Module):
    """Full-resolution residual unit (FRRU), Pohlen et al., Figure 3.

    Shapes: pooling stream ``(B, C_in, *spatial / scale)`` and residual stream ``(B, 32, *spatial)`` to
    ``(B, C_out, *spatial / scale)`` and ``(B, 32, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in of the pooling stream.
        out_channels: C_out of the pooling stream.
        scale: Resolution ratio of the residual stream to the pooling stream.
        residual_channels: Channels of the residual stream (32).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: int,
                 residual_channels: int = 32, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.scale = scale
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=scale, stride=scale)
        self.conv1 = ConvNormAct(spatial_dims, in_channels + residual_channels, out_channels, 3, bias=False, norm=norm)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, bias=False, norm=norm)
        self.to_residual = make_conv(spatial_dims, out_channels, residual_channels, 1, bias=True)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the new pooling stream and the new residual stream."""
        y = self.conv2(self.conv1(torch.cat([y, self.pool(z)], dim=1)))
        r = nn.functional.interpolate(self.to_residual(y), scale_factor=self.scale, mode="nearest")
        return y, z + r


@register_model(
    "frrn",
    family="natural",
    spatial_dims=(2,),
    paper_title="Full-Resolution Residual Networks for Semantic Segmentation in Street Scenes",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"model": "B"}, params=None,
        source="CVPR 2017, Table 1 (FRRN B on Cityscapes, 19 classes); no parameter figure could be read in the "
               "paper (our count equals the authors' FRRNBBuilder: 24,755,699)",
    ),
    divisor=32,
    test_kwargs={"model": "A", "width": 0.125, "residual_channels": 8},
)
class FRRN(SegmentationModel):
    """FRRN A or B of Pohlen et al. (CVPR 2017): two-stream full-resolution residual network.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of 16 (A) or 32 (B).

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3).
        out_channels: Classes (19 on Cityscapes).
        model: ``"A"`` (4 pooling steps) or ``"B"`` (5; the paper's main model).
        width: Multiplier of the pooling-stream and RU widths (1 = the paper's 48/96/192/384); the residual stream
            keeps 32 channels.
        residual_channels: Channels of the residual stream (32).
        norm: Normalisation (batch norm in the paper).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        model: str = "B",
        width: float = 1.0,
        residual_channels: int = 32,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if model not in _ENCODER:
            raise ModelError(f"{self.model_name}: model must be 'A' or 'B', got {model!r}")

        def w(c: int) -> int:
            return max(1, round(c * width))

        base = w(48)
        self.stem = ConvNormAct(spatial_dims, in_channels, base, 5, bias=False, norm=norm)
        self.head_units = nn.Sequential(*[ResidualUnit(spatial_dims, base, base, norm) for _ in range(3)])
        self.split = ConvNormAct(spatial_dims, base, residual_channels, 1, bias=False, norm=norm, act=None)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        channels = base
        for stages, target in ((_ENCODER[model], self.encoder), (_DECODER[model], self.decoder)):
            for n, c, scale in stages:
                units = []
                for _ in range(n):
                    units.append(FullResolutionResidualUnit(spatial_dims, channels, w(c), scale, residual_channels,
                                                            norm))
                    channels = w(c)
                target.append(nn.ModuleList(units))
        self.tail_units = nn.Sequential(
            ResidualUnit(spatial_dims, channels + residual_channels, base, norm),
            *[ResidualUnit(spatial_dims, base, base, norm) for _ in range(2)],
        )
        self.classifier = make_conv(spatial_dims, base, out_channels, 1, bias=True)
        self.input_divisor = (2 ** len(_ENCODER[model]),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``."""
        self.check_input(x)
        y = self.head_units(self.stem(x))
        z = self.split(y)
        for stage in self.encoder:
            y = self.pool(y)
            for unit in stage:
                y, z = unit(y, z)
        for stage in self.decoder:
            y = upsample_to(y, [2 * s for s in y.shape[2:]])
            for unit in stage:
                y, z = unit(y, z)
        y = torch.cat([upsample_to(y, z.shape[2:]), z], dim=1)
        return self.classifier(self.tail_units(y))
