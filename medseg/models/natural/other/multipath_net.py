"""Multi-path segmentation network: one encoder path per modality, fused per level (Xue et al., 2020), 2D and 3D.

Identification. The seed lists "Multi-path segmentation network" without authors (between AdaptSegNet and LadderNet,
whose own title reads "Multi-path networks based on U-Net" and which has its own key). The paper taken here is the
one whose title names a multi-path segmentation network: Y. Xue, F. G. Farhat, O. Boukrina, A. M. Barrett,
J. R. Binder, U. W. Roshan, W. W. Graves, "A multi-path 2.5 dimensional convolutional neural network system for
segmenting stroke lesions in brain MRI images", NeuroImage: Clinical 25 (2020) 102118 (arXiv:1905.10835); official
PyTorch code github.com/xyzacademic/multipathbmp (``net.py``, class ``DTS``; ``train_2d.py --net ours``). This
identification is ours, not the seed's.

The paper's system runs nine such networks (three slice orientations x three intensity normalisations: the "paths")
on 2D slices and fuses their stacked outputs with a small 3D CNN (``Combine`` in ``net.py``). The orientations and
normalisations are data views, and the second stage is a separate network trained on the first stage's outputs; the
registered model is the per-path network, which is itself multi-path over the modalities (T1 and FLAIR).

Layout (``DTS``): one encoder per modality path (``conv0`` 3x3 convolution with BN, then five levels of 1, 3, 3, 3, 2
pre-activation units ReLU-3x3 convolution-BN with 32 channels, 2x2 average pooling between levels); at each level the
paths' features are fused by ReLU, a convolution across the modalities (a ``(2, 1, 1)`` 3D convolution over the
stacked paths in the code, which is a bias-free 1x1 convolution over their concatenation) and BN; a decoder of four
2x2 transposed convolutions (no bias), each added to the fused skip of its level and followed by two pre-activation
units and channel dropout 0.2, and a 1x1 classifier (no bias). Every convolution has 32 channels and no bias. The
official ``forward`` applies the first level's fusion layer at every level (``fuse0``) while building one per level;
here each level uses its own, which is the evident intent and has the same parameter count.

Input channels: by default each input channel is one modality path (``in_channels=2``: T1 and FLAIR as in the paper);
``modality_channels`` groups channels into paths instead (e.g. ``(3, 1)``).

Parameter figure: none in the paper; the official ``DTS()`` (2 modalities, 2 classes) has 324,672 parameters (counted
with torch): two encoders 111,712 each, fusion 10,560, decoder 90,688. We count the same.

Dims: 2D (the paper's slices) and 3D (the same network on volumes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv, make_norm
from medseg.models.registry import PaperConfig, register_model

__all__ = ["MultiPathNet", "PathEncoder", "split_modalities"]


def split_modalities(model_name: str, in_channels: int, groups: Sequence[int] | None) -> tuple[int, ...]:
    """Channels of each modality path: ``groups`` if given (must sum to ``in_channels``), else one per channel.

    Raises:
        ModelError: The groups do not add up to ``in_channels`` or a group is empty.
    """
    if groups is None:
        return (1,) * in_channels
    out = tuple(int(g) for g in groups)
    if not out or any(g < 1 for g in out) or sum(out) != in_channels:
        raise ModelError(f"{model_name}: modality_channels {tuple(groups)} must be positive and sum to in_channels="
                         f"{in_channels}")
    return out


class _PreActUnit(nn.Sequential):
    """ReLU, 3x3 convolution (no bias), BN (``conv_blocks`` of the official code)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__(nn.ReLU(), make_conv(spatial_dims, channels, channels, 3, bias=False),
                         make_norm("batch", spatial_dims, channels))


class PathEncoder(nn.Module):
    """One modality path: ``conv0`` + BN, then levels of pre-activation units with 2x2 average pooling between.

    Shapes: ``(B, C_in, *spatial)`` to one map per level ``(B, features, *spatial / 2**l)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: int, units: Sequence[int]) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(make_conv(spatial_dims, in_channels, features, 3, bias=False),
                                   make_norm("batch", spatial_dims, features))
        self.levels = nn.ModuleList(
            nn.Sequential(*[_PreActUnit(spatial_dims, features) for _ in range(n)]) for n in units
        )
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the (pre-activation) output of every level, highest resolution first."""
        x = self.conv0(x)
        outs = []
        for i, level in enumerate(self.levels):
            if i > 0:
                x = self.pool(x)
            x = level(x)
            outs.append(x)
        return outs


class _Fuse(nn.Sequential):
    """ReLU, bias-free 1x1 convolution across the concatenated paths, BN."""

    def __init__(self, spatial_dims: int, n_paths: int, features: int) -> None:
        super().__init__(nn.ReLU(), make_conv(spatial_dims, n_paths * features, features, 1, bias=False),
                         make_norm("batch", spatial_dims, features))


@register_model(
    "multipath_net",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="A multi-path 2.5 dimensional convolutional neural network system for segmenting stroke lesions in "
                "brain MRI images",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2, in_channels=2, out_channels=2, params=324_672,
        source="no figure in the paper; official code github.com/xyzacademic/multipathbmp net.py DTS() (T1 + FLAIR, "
               "2 classes), counted with torch",
    ),
    divisor=16,
    test_kwargs={"features": 8},
)
class MultiPathNet(SegmentationModel):
    """Multi-path network of Xue et al. (2020): an encoder per modality, level-wise fusion, one shared decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 16.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 2, T1 and FLAIR).
        out_channels: Classes (paper: 2).
        features: Channels of every layer (32).
        units: Pre-activation units per encoder level ((1, 3, 3, 3, 2)).
        modality_channels: Channels of each path (default: one path per input channel).
        dropout: Channel dropout after each decoder level (0.2).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: int = 32,
        units: Sequence[int] = (1, 3, 3, 3, 2),
        modality_channels: Sequence[int] | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.groups = split_modalities(self.model_name, in_channels, modality_channels)
        n_levels = len(units)
        self.paths = nn.ModuleList(PathEncoder(spatial_dims, g, features, units) for g in self.groups)
        self.fuse = nn.ModuleList(_Fuse(spatial_dims, len(self.groups), features) for _ in range(n_levels))
        drop = {2: nn.Dropout2d, 3: nn.Dropout3d}[spatial_dims]
        self.up = nn.ModuleList(
            Conv[Conv.CONVTRANS, spatial_dims](features, features, kernel_size=2, stride=2, bias=False)
            for _ in range(n_levels - 1)
        )
        self.decode = nn.ModuleList(
            nn.Sequential(_PreActUnit(spatial_dims, features), _PreActUnit(spatial_dims, features), drop(dropout))
            for _ in range(n_levels - 1)
        )
        self.classifier = make_conv(spatial_dims, features, out_channels, 1, bias=False)
        self.input_divisor = (2 ** (n_levels - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        per_path = [enc(part) for enc, part in zip(self.paths, x.split(self.groups, dim=1), strict=True)]
        fused = [fuse(torch.cat(level, dim=1)) for fuse, level in zip(self.fuse, zip(*per_path, strict=True),
                                                                        strict=True)]
        y = fused[-1]
        for up, decode, skip in zip(self.up, self.decode, reversed(fused[:-1]), strict=True):
            y = decode(up(y) + skip)
        return self.classifier(y)
