"""The contract of the instance, panoptic and interactive models: targets, losses and outputs.

These models do not map an image to one class per voxel; they find separate objects, each with a class. Every one
is a :class:`~medseg.models.base.SegmentationModel` (same constructor ``(spatial_dims, in_channels, out_channels,
*, ...)``, ``check_input``, ``input_divisor``), registered with ``task="instance"``, ``"panoptic"`` or
``"interactive"``; ``out_channels`` is the number of classes including background (one foreground class for
class-agnostic instances).

The one training interface. ``model(x, targets)`` with ``targets`` a list (one per image) of
:class:`InstanceTarget` — the instance label map (0 background, 1..N objects) and the class of each id — returns a
dict of scalar loss terms, already weighted as the paper weights them; the trainer sums them. Each model builds the
targets it needs from the instance maps itself (:attr:`InstanceSegmentationModel.target_kinds`: boxes and masks for
two-stage models, centre heatmaps and offsets for bottom-up ones, contours for CIA-Net, extreme-point heatmaps for
DEXTR) and names its loss terms (:attr:`InstanceSegmentationModel.loss_terms`). The losses do not depend on the
module's training flag, so the validation loss is computed in eval mode (normalisation with running statistics).

The two inference interfaces (:attr:`InstanceSegmentationModel.output_kind`):

- ``"dense"``: ``model(x)`` returns a dense tensor ``(B, dense_channels, *spatial)`` (e.g. semantic logits, a centre
  heatmap and offset vectors) that a sliding window can stitch like logits, and :meth:`group` turns a stitched tensor
  into instances. :attr:`vector_channels` names the channels holding a vector component along a spatial axis (they
  change sign when the input is mirrored along it).
- ``"detections"``: ``model(x)`` returns one :class:`Detections` per image (boxes, scores, classes and binary masks
  on the input grid); overlapping detections of neighbouring windows are merged by the caller.

:func:`detections_to_instances` turns detections into an instance map (Kirillov et al., "Panoptic Segmentation",
CVPR 2019, Section 7: instances pasted by decreasing confidence, each voxel to the first, and an instance dropped when
less than half of it is left).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel

__all__ = [
    "Detections",
    "InstanceMaps",
    "InstanceSegmentationModel",
    "InstanceTarget",
    "detections_to_instances",
    "relabel_sequential",
]


class InstanceTarget(NamedTuple):
    """The reference of one image.

    Attributes:
        instances: ``(*spatial)`` integer map: 0 background, ``k > 0`` the voxels of object ``k`` (ids need not be
            contiguous).
        classes: ``(max_id + 1,)`` integer lookup: ``classes[k]`` is the class (1..K-1) of object ``k``;
            ``classes[0] = 0``.
    """

    instances: torch.Tensor
    classes: torch.Tensor


class Detections(NamedTuple):
    """The objects a detection model finds in one image.

    Attributes:
        boxes: ``(N, 2D)`` boxes (see :mod:`medseg.models.instance.ops`).
        scores: ``(N,)`` confidences in [0, 1].
        labels: ``(N,)`` classes (1..K-1).
        masks: ``(N, *spatial)`` boolean masks on the input grid.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


class InstanceMaps(NamedTuple):
    """Instances of one image as a label map.

    Attributes:
        instances: ``(*spatial)`` int64 map: 0 background, objects ``1..N``.
        classes: ``(N,)`` class of object ``k`` at index ``k - 1``.
        scores: ``(N,)`` confidence of each object.
    """

    instances: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor


def relabel_sequential(instances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber the non-zero ids of ``instances`` to ``1..N`` in increasing order; returns the map and the old ids."""
    ids = torch.unique(instances)
    ids = ids[ids != 0]
    lookup = torch.zeros(int(instances.max()) + 1 if instances.numel() else 1, dtype=torch.long,
                         device=instances.device)
    lookup[ids] = torch.arange(1, len(ids) + 1, device=instances.device)
    return lookup[instances.long().clamp(min=0)], ids


def detections_to_instances(det: Detections, score_threshold: float = 0.5, overlap_threshold: float = 0.5
                            ) -> InstanceMaps:
    """An instance map of detections: pasted by decreasing score, each voxel to the first, small leftovers dropped.

    Args:
        det: The detections of one image.
        score_threshold: Detections below this confidence are ignored (Panoptic FPN's 0.5).
        overlap_threshold: A detection keeping less than this fraction of its mask after the better ones is dropped.
    """
    shape = det.masks.shape[1:]
    instances = torch.zeros(shape, dtype=torch.long, device=det.masks.device)
    classes: list[int] = []
    scores: list[float] = []
    order = torch.argsort(det.scores, descending=True)
    for i in order.tolist():
        score = float(det.scores[i])
        if score < score_threshold:
            break
        mask = det.masks[i].bool()
        area = int(mask.sum())
        if area == 0:
            continue
        free = mask & (instances == 0)
        if int(free.sum()) < overlap_threshold * area:
            continue
        classes.append(int(det.labels[i]))
        scores.append(score)
        instances[free] = len(classes)
    return InstanceMaps(instances, torch.tensor(classes, dtype=torch.long), torch.tensor(scores, dtype=torch.float32))


class InstanceSegmentationModel(SegmentationModel):
    """Base class of the instance, panoptic and interactive models (see the module docstring).

    Shapes: ``(B, in_channels, *spatial)`` to a loss dict (with targets), a dense ``(B, dense_channels, *spatial)``
    tensor or one :class:`Detections` per image (without).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes including background (2 for class-agnostic objects).
    """

    #: ``"dense"`` or ``"detections"``.
    output_kind: ClassVar[str] = "dense"
    #: What the model builds from the instance maps to train on (documentation and tests).
    target_kinds: ClassVar[tuple[str, ...]] = ()
    #: The keys of the loss dict.
    loss_terms: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if out_channels < 2:
            raise ModelError(f"{self.model_name}: out_channels counts the background too; it must be at least 2, "
                             f"got {out_channels}")
        #: Dense models: channels of the dense output.
        self.dense_channels: int = 0
        #: Dense models: output channel → spatial axis of the vector component it holds.
        self.vector_channels: dict[int, int] = {}

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return self.out_channels

    def check_targets(self, x: torch.Tensor, targets: Sequence[InstanceTarget]) -> None:
        """Check that there is one target per image, on the image's grid.

        Raises:
            ModelError: A count or shape mismatch.
        """
        if len(targets) != x.shape[0]:
            raise ModelError(f"{self.model_name}: {len(targets)} targets for a batch of {x.shape[0]} images")
        for t in targets:
            if tuple(t.instances.shape) != tuple(x.shape[2:]):
                raise ModelError(f"{self.model_name}: target of shape {tuple(t.instances.shape)} for images of "
                                 f"spatial shape {tuple(x.shape[2:])}")

    def group(self, dense: torch.Tensor, **options: Any) -> list[InstanceMaps]:
        """Dense models: the instances of a dense output ``(B, dense_channels, *spatial)``, one per image."""
        raise ModelError(f"{self.model_name} outputs detections, not a dense map to group")

    def mirror_dense(self, dense: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
        """Undo a mirroring of the input along spatial ``axes`` (0-based) on a dense output.

        Flip it back and negate the vector components along those axes.
        """
        out = torch.flip(dense, [a + 2 for a in axes])
        for channel, axis in self.vector_channels.items():
            if axis in axes:
                out[:, channel] = -out[:, channel]
        return out

    def instances(self, x: torch.Tensor, **options: Any) -> list[InstanceMaps]:
        """The instances of a batch of images (eval mode): dense outputs grouped, or detections pasted."""
        out = self(x)
        if self.output_kind == "dense":
            return self.group(out, **options)
        return [detections_to_instances(d, **options) for d in out]
