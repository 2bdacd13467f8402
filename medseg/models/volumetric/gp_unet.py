"""GP-Unet: lesion detection from weak, image-level labels with a 3D regression network (Dubost et al., 2017).

Paper: F. Dubost, G. Bortsova, H. Adams, A. Ikram, W. Niessen, M. Vernooij, M. de Bruijne, "GP-Unet: Lesion
Detection from Weak Labels with a 3D Regression Network", MICCAI 2017, LNCS 10435, 214-221 (arXiv:1705.07999).
Extended in F. Dubost et al., "Weakly supervised object detection with 2D and 3D regression neural networks",
Medical Image Analysis 65 (2020), arXiv:1906.01891.

What the paper's abstract states (the only part of the paper we could read): a regression network with a fully
convolutional architecture, trained with a single global label per image (the lesion count), combined with a global
pooling layer that aggregates the 3D output into a scalar indicating the count; on unseen images the network first
estimates the count, then the global pooling is removed to compute localisation maps of the size of the input image.
We regress the count without a final activation (the map and the count span the real numbers), as the authors'
related EPVS regression network does (Dubost et al., "3D regression neural network for the quantification of
enlarged perivascular spaces in brain MRI", Medical Image Analysis 2019, abstract).

How it maps onto the model contract: :meth:`GPUNet.forward` returns the pre-pooling map, one channel per class,
``(B, C, *spatial)`` at full resolution; :meth:`GPUNet.count` applies the global pooling and returns the image-level
output ``(B, C)`` the network is trained on (:meth:`GPUNet.global_pool` pools a map already computed). The global
pooling is average pooling by default (``pooling="mean"``), whose scale does not depend on the image size: the
image-level target is then a per-voxel rate (e.g. the count divided by the number of voxels, or a fraction), and the
map is its voxel-wise contribution. ``pooling="sum"`` makes the image-level output the sum of the map, so the map is
a density whose integral over any region is that region's count (train it with a small learning rate: each weight
step then moves the count by about the number of voxels times the step); ``"max"`` is the third option. Trained as a
segmentation network (cross-entropy on the map), the same map serves as logits.

Layout used here: a U-Net with padded 3x3x3 convolutions (bias, ReLU), two convolutions per level, 32, 64 and 128
filters, two 2x2x2 max poolings (few poolings keep the small lesions resolvable), nearest-neighbour up-sampling
followed by concatenation with the encoder features of the same level, and a 1x1x1 convolution to one map per class.
We could read only the abstract of the paper and found no official code, so the number of levels, the widths and the
kind of global pooling are our choice (the two-pooling U-Net of the paper's Figure 1 as we understand it) and no
parameter figure is recorded (``params=None``). Our count at the default configuration (3D, one input channel, one
map) is 1,411,585.

2D works the same way (the 2020 paper uses 2D and 3D variants). Each spatial size must be a multiple of 4.

Training from weak labels through ``medseg train``: with ``weak_target`` set, the model declares its own objective
(``training_loss``, which the trainer uses in place of the segmentation loss) — the mean squared error between the
globally pooled output of each foreground class and an image-level target of the training patch: its number of
connected components (``"count"``, the paper's lesion count; pair it with ``pooling="sum"``), whether the class is
present (``"presence"``; with ``pooling="max"``) or the fraction of its voxels (``"fraction"``; with the default mean
pooling). The image-level targets are computed from the dataset's label maps patch by patch, so the voxel labels
are never seen by the network, only their counts; prediction then writes the localisation map per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, StackedConvNormAct, make_conv, make_pool
from medseg.models.registry import PaperConfig, register_model

__all__ = ["GPUNet"]

RELU = ("relu", {"inplace": True})
POOLINGS = ("mean", "sum", "max")
WEAK_TARGETS = ("none", "count", "presence", "fraction")


@register_model(
    "gp_unet",
    family="volumetric",
    spatial_dims=(2, 3),
    paper_title="GP-Unet: Lesion Detection from Weak Labels with a 3D Regression Network",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        kwargs={},
        params=None,
        source="MICCAI 2017 (arXiv:1705.07999), abstract (global pooling of the full-size output to the lesion "
               "count); no parameter figure could be read and no official code was found: levels, widths and the "
               "kind of global pooling are ours",
    ),
    divisor=4,
    test_kwargs={"features": (16, 16, 16)},
)
class GPUNet(SegmentationModel):
    """GP-Unet (Dubost et al., MICCAI 2017): U-Net regression network whose globally pooled output is a count.

    Shapes: ``forward``: ``(B, in_channels, *spatial)`` to the localisation map ``(B, out_channels, *spatial)``
    (one map per class); :meth:`count`: ``(B, in_channels, *spatial)`` to ``(B, out_channels)``. Each spatial size
    must be a multiple of ``2 ** (len(features) - 1)``.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (paper: 1, MRI).
        out_channels: Maps / counts (paper: 1, the lesion count).
        features: Filters per level, highest resolution first (default 32, 64, 128: two poolings).
        pooling: Global pooling from the map to the image-level output: ``"mean"`` (default), ``"sum"`` or ``"max"``.
        norm: Normalisation after each convolution (default none).
        weak_target: ``"none"`` (train as a segmentation network), or the image-level label of each foreground class
            it is trained on (see the module docstring): ``"count"``, ``"presence"`` or ``"fraction"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (32, 64, 128),
        pooling: str = "mean",
        norm: NormSpec = None,
        weak_target: str = "none",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if weak_target not in WEAK_TARGETS:
            raise ModelError(f"{self.model_name}: weak_target must be one of {WEAK_TARGETS}, got {weak_target!r}")
        self.weak_target = weak_target
        if weak_target != "none":  # the trainer then trains with this objective (medseg.training.loss)
            self.training_loss = self.weak_loss
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ModelError(f"{self.model_name}: features needs at least two positive widths, got {features}")
        if pooling not in POOLINGS:
            raise ModelError(f"{self.model_name}: pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoder.append(StackedConvNormAct(2, spatial_dims, channels, width, 3, norm=norm, act=RELU))
            channels = width
        self.pool = make_pool("max", spatial_dims, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.decoder.append(StackedConvNormAct(2, spatial_dims, channels + width, width, 3, norm=norm, act=RELU))
            channels = width
        self.head = make_conv(spatial_dims, channels, out_channels, 1)
        self.input_divisor = (2 ** (len(features) - 1),) * spatial_dims

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """The localisation / regression map ``(B, out_channels, *spatial)`` of ``x`` (before global pooling).

        ``target`` (the trainer passes the labels to models with their own objective) is not used: the network sees
        the image only.
        """
        self.check_input(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        for i, stage in enumerate(self.decoder):
            x = stage(torch.cat([self.up(x), skips[-2 - i]], dim=1))
        return self.head(x)

    def global_pool(self, maps: torch.Tensor) -> torch.Tensor:
        """The global pooling layer: a map ``(B, C, *spatial)`` to the image-level count ``(B, C)``."""
        flat = maps.flatten(2)
        if self.pooling == "sum":
            return flat.sum(-1)
        if self.pooling == "mean":
            return flat.mean(-1)
        return flat.amax(-1)

    def count(self, x: torch.Tensor) -> torch.Tensor:
        """The image-level output the network is trained on (e.g. the lesion count): ``(B, out_channels)``."""
        return self.global_pool(self(x))

    def image_level_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Per item and foreground class of a label batch ``(B, 1, *spatial)``: the ``weak_target`` value ``(B, C-1)``.

        Counts are connected components (face-connected, as lesions are counted); label values below 0 (outside the
        cropped image) count as background.
        """
        from scipy import ndimage

        classes = range(1, self.out_channels)
        values = labels[:, 0].detach().cpu().numpy()
        out = torch.zeros(values.shape[0], len(classes), dtype=torch.float32)
        for b, item in enumerate(values):
            for j, c in enumerate(classes):
                mask = item == c
                if self.weak_target == "count":
                    out[b, j] = float(ndimage.label(mask)[1])
                elif self.weak_target == "presence":
                    out[b, j] = float(mask.any())
                else:
                    out[b, j] = float(mask.mean())
        return out.to(labels.device)

    def weak_loss(self, maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weak-label objective: MSE between the pooled foreground maps and their image-level targets."""
        if self.out_channels < 2:
            raise ModelError(f"{self.model_name}: weak training needs a background channel and at least one class "
                             f"(out_channels >= 2), got {self.out_channels}")
        predicted = self.global_pool(maps[:, 1:].float())
        return torch.nn.functional.mse_loss(predicted, self.image_level_targets(labels))
