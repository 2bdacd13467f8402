"""LadderNet: a chain of U-Nets joined level by level, built of shared-weight residual blocks (Zhuang, 2018).

Paper: J. Zhuang, "LadderNet: Multi-path networks based on U-Net for medical image segmentation", arXiv:1810.07810
(2018), Section 2 and Fig. 1-2; official code: github.com/juntang-zhuang/LadderNet (``src/LadderNetv65.py``,
``LadderNetv6(layers=4, filters=10, num_classes=2, inplanes=1)`` as trained by ``src/retinaNN_training.py``).

Layout: a LadderNet is ``n_unets`` U-Nets in a row (the paper's and the code's network: two). Every level of every
U-Net is one shared-weight residual block (Fig. 2): the *same* 3x3 convolution is applied twice, ``y =
relu(x + W * drop(relu(W * x)))`` with channel dropout (p = 0.25) between the two applications, so a block costs one
convolution's parameters. The first U-Net starts with a 3x3 convolution + ReLU; its encoder downsamples with
strided 3x3 convolutions + ReLU (width doubling per level) and its decoder upsamples with 3x3 transposed
convolutions (stride 2, output padding 1) whose output is *added* to the encoder feature of the level (no
concatenation). Each later U-Net starts with a residual block on the previous U-Net's finest decoder output and, at
every encoder level, adds the previous U-Net's decoder output of that level before the block: the skip connections
"between every pair of adjacent decoder and encoder branches" that make the ladder. A 1x1 convolution maps the last
U-Net's finest decoder output to the classes (the code's log-softmax is left to the loss).

We write our own implementation from the paper and the official code (PyTorch, 2D); the same layout runs in 3D.
Topology: ``features_per_stage`` (one width per level, the paper's ``filters * 2**i``) and ``strides`` (the
downsampling into each level, first entry 1, as nnU-Net's planner writes it) can be planned.

Paper configuration (the official training script): 2D, 1 input channel (green-channel patches), 2 classes, 5 levels
of 10, 20, 40, 80, 160 channels (``layers=4, filters=10``), two U-Nets. We count 1,381,652 parameters, the count of
the official ``LadderNetv6`` at that configuration (counted with PyTorch in a scratch folder).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Dropout
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["LadderNet", "LadderUNet", "SharedResidualBlock"]


class SharedResidualBlock(nn.Module):
    """LadderNet's residual block whose two 3x3 convolutions share one set of weights (Zhuang, 2018, Fig. 2).

    ``y = relu(x + W * drop(relu(W * x)))``; the dropout drops whole channels. Shapes: ``(B, C, *spatial)`` to the
    same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        dropout: Channel dropout between the two applications (paper code: 0.25).
    """

    def __init__(self, spatial_dims: int, channels: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv = make_conv(spatial_dims, channels, channels, 3)
        self.drop = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the shared convolution twice with a residual connection."""
        out = self.drop(torch.relu(self.conv(x)))
        return torch.relu(self.conv(out) + x)


class LadderUNet(nn.Module):
    """One U-Net of the ladder: residual blocks per level, strided-conv down, transposed-conv up, additive skips.

    Shapes: ``(B, C_0, *spatial)`` (the first U-Net: its stem output) or the previous U-Net's decoder outputs to the
    list of decoder outputs ``[bottom, level L-1, ..., level 0]`` (coarsest first).

    Args:
        spatial_dims: 2 or 3.
        features: Width of each level.
        pools: Per-axis downsampling into levels ``1..L``.
        dropout: Dropout of the residual blocks.
        first: The first U-Net (no input block, no rungs from a previous U-Net).
    """

    def __init__(self, spatial_dims: int, features: Sequence[int], pools: Sequence[tuple[int, ...]], dropout: float,
                 first: bool) -> None:
        super().__init__()
        n = len(features) - 1
        self.first = first
        self.inblock = None if first else SharedResidualBlock(spatial_dims, features[0], dropout)
        self.down_blocks = nn.ModuleList(SharedResidualBlock(spatial_dims, features[i], dropout) for i in range(n))
        self.down_convs = nn.ModuleList(
            Conv[Conv.CONV, spatial_dims](features[i], features[i + 1], kernel_size=3, stride=pools[i], padding=1)
            for i in range(n)
        )
        self.bottom = SharedResidualBlock(spatial_dims, features[n], dropout)
        self.up_convs = nn.ModuleList(
            Conv[Conv.CONVTRANS, spatial_dims](features[i + 1], features[i], kernel_size=3, stride=pools[i],
                                                padding=1, output_padding=tuple(s - 1 for s in pools[i]))
            for i in range(n - 1, -1, -1)
        )
        self.up_blocks = nn.ModuleList(SharedResidualBlock(spatial_dims, features[i], dropout)
                                       for i in range(n - 1, -1, -1))

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the U-Net; a later U-Net takes the previous one's decoder outputs (coarsest first)."""
        rungs: list[torch.Tensor] = []
        if self.first:
            out = x  # type: ignore[assignment]
        else:
            rungs = list(x)  # [bottom, level n-1, ..., level 0]
            out = self.inblock(rungs[-1])  # type: ignore[misc]
        skips = []
        for i, (block, down) in enumerate(zip(self.down_blocks, self.down_convs, strict=True)):
            if rungs:
                out = out + rungs[-1 - i]
            out = block(out)
            skips.append(out)
            out = torch.relu(down(out))
        out = self.bottom(out)
        outs = [out]
        for up, block in zip(self.up_convs, self.up_blocks, strict=True):
            out = block(up(out) + skips.pop())
            outs.append(out)
        return outs


@register_model(
    "laddernet",
    family="unet_variants",
    spatial_dims=(2, 3),
    paper_title="LadderNet: Multi-path networks based on U-Net for medical image segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        kwargs={"features_per_stage": (10, 20, 40, 80, 160), "n_unets": 2},
        params=1_381_652,
        source="official code juntang-zhuang/LadderNet src/LadderNetv65.py, LadderNetv6(layers=4, filters=10, "
               "num_classes=2, inplanes=1) as in src/retinaNN_training.py (no figure in the paper's text we could "
               "read)",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 16, 32)}, 3: {"features_per_stage": (4, 8, 16)}},
)
class LadderNet(SegmentationModel):
    """LadderNet of Zhuang (2018): U-Nets chained level by level, shared-weight residual blocks, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides per axis (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Classes.
        features_per_stage: Width of each level (paper code: ``filters * 2**i`` with ``filters=10``, 5 levels).
        strides: Downsampling into each level (first entry 1); default 2 per axis.
        n_unets: Number of U-Nets in the ladder (paper: 2).
        dropout: Channel dropout inside the residual blocks (paper code: 0.25).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (10, 20, 40, 80, 160),
        strides: Sequence[int | Sequence[int]] | None = None,
        n_unets: int = 2,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides)
        features, pools, divisor = plan.features, plan.pools, plan.divisor
        if n_unets < 1:
            raise ModelError(f"{self.model_name}: n_unets must be >= 1, got {n_unets}")
        self.features = features
        self.stem = make_conv(spatial_dims, in_channels, features[0], 3)
        self.unets = nn.ModuleList(LadderUNet(spatial_dims, features, pools, dropout, first=i == 0)
                                   for i in range(n_unets))
        self.head = make_conv(spatial_dims, features[0], out_channels, 1)
        self.input_divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        outs: torch.Tensor | list[torch.Tensor] = torch.relu(self.stem(x))
        for unet in self.unets:
            outs = unet(outs)
        return self.head(outs[-1])  # type: ignore[index]
