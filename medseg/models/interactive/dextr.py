"""DEXTR: object segmentation from extreme points (Maninis et al., CVPR 2018), 2D and 3D.

Paper: K.-K. Maninis, S. Caelles, J. Pont-Tuset, L. Van Gool, "Deep Extreme Cut: From Extreme Points to Object
Segmentation", CVPR 2018 (arXiv:1711.09081), Section 3 and Figure 2.

The user marks an object by its extreme points (left-most, right-most, top, bottom; six in 3D). The image is cropped
to the points' bounding box enlarged by ``relax`` voxels on every side (zero outside the image) and resized to
``crop_size``; a heatmap with a gaussian (σ = ``sigma``) at each point becomes an extra input channel; the network —
ResNet-101 at output stride 8 (dilations 2 and 4 in the last two stages, DeepLab-v2) with a pyramid scene parsing
head (pooling to 1, 2, 3, 6 bins, 1×1 convolutions to 512 with BN and ReLU, concatenation, a 1×1 convolution to
512 with BN and ReLU, a 1×1 convolution to one output) — predicts the object's mask in the crop, which is resized
back and pasted into the image. Training (the authors' ``train_pascal.py``): one crop per object, extreme points
taken from its mask and moved by up to ``jitter`` voxels, class-balanced binary cross-entropy (each class weighted
by the other's frequency in the crop; here averaged over the crop's voxels); the inference threshold is 0.8 (the
authors' ``demo.py``).

The model's own input channels are ``in_channels`` (the image); its network takes one more (the heatmap).
``model(x)`` without targets treats each window as one object's crop whose extreme points are the middles of the
window's faces; :meth:`DEXTR.segment` is the interactive use: an image, the points of one object, its mask
probabilities.

Paper configuration and parameter figure: the authors' code, scaelles/DEXTR-PyTorch ``networks/deeplab_resnet.py``
``resnet101(1, nInputChannels=4, classifier="psp")`` (as ``train_pascal.py`` builds it), built and counted:
48,800,385 parameters; ours: 48,800,385 (its BN scales and shifts are parameters there too, frozen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.blocks import make_conv
from medseg.models.instance.base import InstanceMaps, InstanceSegmentationModel, InstanceTarget
from medseg.models.instance.targets import extreme_points, gaussian_heatmap
from medseg.models.natural.classic._modules import PyramidPooling, resize
from medseg.models.natural.refine._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DEXTR", "balanced_bce"]


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DEXTR's class-balanced binary cross-entropy of one crop, averaged over its voxels.

    Foreground voxels weigh the background fraction and background voxels the foreground fraction.
    """
    y = (target >= 0.5).to(logits.dtype)
    n = y.numel()
    pos = y.sum()
    per_voxel = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    loss = (n - pos) / n * (per_voxel * y).sum() + pos / n * (per_voxel * (1 - y)).sum()
    return loss / n


@register_model(
    "dextr",
    family="interactive",
    task="interactive",
    spatial_dims=(2, 3),
    paper_title="Deep Extreme Cut: From Extreme Points to Object Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=2, kwargs={"backbone": "resnet101"}, params=48_800_385,
        source="authors' code, scaelles/DEXTR-PyTorch networks/deeplab_resnet.py resnet101(1, nInputChannels=4, "
               "classifier='psp') as train_pascal.py builds it (RGB + heatmap), built and counted",
    ),
    divisor=8,
    test_kwargs={2: {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "psp_channels": 16,
                     "crop_size": 32, "relax": 4, "sigma": 3.0},
                 3: {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "psp_channels": 8,
                     "crop_size": 16, "relax": 2, "sigma": 2.0}},
)
class DEXTR(InstanceSegmentationModel):
    """DEXTR: the mask of the object that extreme points mark (Maninis et al., CVPR 2018).

    Shapes: ``(B, in_channels, *spatial)`` (multiples of 8) to mask logits ``(B, 1, *spatial)``, or a loss dict with
    targets; :meth:`segment` maps an image ``(in_channels, *spatial)`` and points ``(P, D)`` to probabilities.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Image channels (the heatmap is added).
        out_channels: Classes including background (the class of a marked object comes from the user).
        backbone: A registered ResNet (``resnet101``).
        pretrained_backbone: Local torchvision/timm weights for the backbone (its first convolution gets the extra
            channel only when the shapes fit).
        backbone_kwargs: Extra backbone options.
        psp_channels: Width of the head (512).
        crop_size: Side of the network's input crop (512).
        relax: Voxels added around the points' box (50).
        sigma: Heatmap σ in crop voxels (10).
        jitter: Training: largest random move of an extreme point, voxels (5).
        max_objects: Training: largest number of objects (crops) per image per step.
        threshold: Inference probability threshold (0.8).
    """

    output_kind = "dense"
    target_kinds = ("extreme_points", "heatmap", "crops")
    loss_terms = ("mask",)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        psp_channels: int = 512,
        crop_size: int = 512,
        relax: int = 50,
        sigma: float = 10.0,
        jitter: int = 5,
        max_objects: int = 4,
        threshold: float = 0.8,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels + 1, output_stride=8,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        channels = self.backbone.out_channels[-1]
        self.psp = PyramidPooling(spatial_dims, channels)
        self.bottleneck = ConvNormActD(spatial_dims, self.psp.out_channels, psp_channels, 1)
        self.final = make_conv(spatial_dims, psp_channels, 1, 1)
        if crop_size % 8:
            raise ModelError(f"dextr: crop_size must be a multiple of 8, got {crop_size}")
        self.crop_size, self.relax, self.sigma = int(crop_size), int(relax), float(sigma)
        self.jitter, self.max_objects, self.threshold = int(jitter), int(max_objects), float(threshold)
        self.input_divisor = (8,) * spatial_dims
        self.dense_channels = 1

    # The network -------------------------------------------------------------------------------------------------

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, 1, *spatial)`` of crops with their heatmap ``(B, in_channels + 1, *spatial)``."""
        features = self.backbone(x)[-1]
        return resize(self.final(self.bottleneck(self.psp(features))), x.shape[2:])

    def heatmap(self, points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Gaussians at the points (crop coordinates, ``(P, D)``) on a crop of ``shape``."""
        return gaussian_heatmap(points, shape, self.sigma)

    def crop(self, image: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
        """The network input for the object marked by ``points`` in ``image``, and the crop's ``[lo, hi)``.

        ``image`` ``(C, *spatial)`` is cropped around ``points`` (``(P, D)``) enlarged by ``relax`` (zero outside the
        image), resized to ``crop_size`` and given the heatmap channel.
        """
        d = self.spatial_dims
        lo = [int(torch.floor(points[:, a].min())) - self.relax for a in range(d)]
        hi = [int(torch.ceil(points[:, a].max())) + 1 + self.relax for a in range(d)]
        pad = []
        for a in reversed(range(d)):
            pad += [max(0, -lo[a]), max(0, hi[a] - image.shape[1 + a])]
        padded = F.pad(image, pad) if any(pad) else image
        region = padded[(slice(None), *[slice(lo[a] + max(0, -lo[a]), hi[a] + max(0, -lo[a])) for a in range(d)])]
        size = [self.crop_size] * d
        mode = "bilinear" if d == 2 else "trilinear"
        crop = F.interpolate(region[None].float(), size=size, mode=mode, align_corners=True)[0]
        scale = torch.tensor([(self.crop_size - 1) / max(h - low - 1, 1) for low, h in zip(lo, hi, strict=True)],
                             device=points.device)
        heat = self.heatmap((points.float() - torch.tensor(lo, device=points.device)) * scale, size)
        return torch.cat([crop, heat[None].to(crop.dtype)]), lo, hi

    def paste(self, logits: torch.Tensor, lo: Sequence[int], hi: Sequence[int], shape: Sequence[int]
              ) -> torch.Tensor:
        """Crop logits ``(*crop)`` resized back to the crop's region, as probabilities on an image of ``shape``."""
        d = self.spatial_dims
        mode = "bilinear" if d == 2 else "trilinear"
        probs = torch.sigmoid(F.interpolate(logits[None, None].float(), size=[h - low for low, h in zip(lo, hi,
                                                                                                        strict=True)],
                                            mode=mode, align_corners=True)[0, 0])
        out = torch.zeros([int(s) for s in shape], dtype=probs.dtype, device=probs.device)
        src = tuple(slice(max(0, -low), min(h, int(s)) - low) for low, h, s in zip(lo, hi, shape, strict=True))
        dst = tuple(slice(max(0, low), min(h, int(s))) for low, h, s in zip(lo, hi, shape, strict=True))
        out[dst] = probs[src]
        return out

    # The contract -----------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, targets: Sequence[InstanceTarget] | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mask logits of windows taken as object crops, or with ``targets`` the loss of one crop per object."""
        self.check_input(x)
        if targets is None:
            shape = x.shape[2:]
            points = self._face_middles(shape, x.device)
            heat = self.heatmap(points, shape)[None, None].expand(x.shape[0], 1, *shape).to(x.dtype)
            return self.network(torch.cat([x, heat], dim=1))
        self.check_targets(x, targets)
        crops, masks = [], []
        for image, target in zip(x, targets, strict=True):
            ids = torch.unique(target.instances)
            ids = ids[ids > 0]
            if ids.numel() > self.max_objects:
                ids = ids[torch.randperm(ids.numel(), device=ids.device)[: self.max_objects]]
            for k in ids.tolist():
                mask = target.instances == k
                points = extreme_points(mask).float()
                if self.jitter:
                    points = points + torch.randint(-self.jitter, self.jitter + 1, points.shape,
                                                    device=points.device).float()
                crop, lo, hi = self.crop(image, points)
                crops.append(crop)
                masks.append(self._crop_mask(mask, lo, hi))
        if not crops:
            return {"mask": x.sum() * 0 + sum(p.sum() for p in self.parameters()) * 0}
        logits = self.network(torch.stack(crops))[:, 0]
        loss = torch.stack([balanced_bce(lg, m) for lg, m in zip(logits, masks, strict=True)]).mean()
        return {"mask": loss}

    def _crop_mask(self, mask: torch.Tensor, lo: Sequence[int], hi: Sequence[int]) -> torch.Tensor:
        d = self.spatial_dims
        pad = []
        for a in reversed(range(d)):
            pad += [max(0, -lo[a]), max(0, hi[a] - mask.shape[a])]
        padded = F.pad(mask.float(), pad) if any(pad) else mask.float()
        region = padded[tuple(slice(lo[a] + max(0, -lo[a]), hi[a] + max(0, -lo[a])) for a in range(d))]
        return F.interpolate(region[None, None], size=[self.crop_size] * d, mode="nearest")[0, 0]

    def _face_middles(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        d = len(shape)
        centre = [(s - 1) / 2 for s in shape]
        points = []
        for a in range(d):
            for value in (0.0, float(shape[a] - 1)):
                p = list(centre)
                p[a] = value
                points.append(p)
        return torch.tensor(points, device=device)

    @torch.no_grad()
    def segment(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Mask probabilities ``(*spatial)`` of the object the points mark in ``image``.

        Args:
            image: ``(in_channels, *spatial)``.
            points: ``(P, D)`` voxel coordinates, two or more spanning the object (extreme points, ideally).
        """
        if points.ndim != 2 or points.shape[1] != self.spatial_dims or points.shape[0] < 2:
            raise ModelError(f"dextr: points must be (P >= 2, {self.spatial_dims}) voxel coordinates, got "
                             f"{tuple(points.shape)}")
        crop, lo, hi = self.crop(image, points)
        logits = self.network(crop[None])[0, 0]
        return self.paste(logits, lo, hi, image.shape[1:])

    def group(self, dense: torch.Tensor, **options: Any) -> list[InstanceMaps]:
        """Each window's mask (probability above :attr:`threshold`) as one object of class 1."""
        out = []
        for d in dense:
            mask = torch.sigmoid(d[0]) > self.threshold
            scores = torch.sigmoid(d[0])[mask].mean().reshape(1) if bool(mask.any()) else torch.zeros(0)
            out.append(InstanceMaps(mask.long(), torch.ones(int(bool(mask.any())), dtype=torch.long), scores))
        return out
