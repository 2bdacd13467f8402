"""Patch batches from the preprocessed cache, with nnU-Net's foreground oversampling and augmentation.

Determinism. Each sample is a pure function of ``(seed, stream, epoch, iteration, global sample index)``: its
case, patch position and augmentation come from a ``numpy.random.Generator`` seeded with that tuple. Hence the
batches do not depend on the number of loader workers, on which worker builds a batch, or on where a run was
interrupted: a resumed run draws exactly the batches an uninterrupted run would. Under DDP, rank ``r`` builds the
global samples ``offset_r … offset_r + b_r - 1`` of each batch, so the ranks together draw the same global batch
a single process would (each rank has its own seed offsets by construction).

Sampling (nnU-Net v2's ``nnUNetDataLoader``; Isensee et al., Nature Methods 2021): cases are drawn uniformly with
replacement. Sample ``j`` of a global batch of ``B`` is forced to contain foreground when
``j >= round(B · (1 - oversample_foreground))`` (with B = 2 and 0.33: the second sample). A forced sample picks
a foreground label present in the case uniformly, one of its stored voxel locations uniformly, and centres the patch
there (clipped to the lower bound); otherwise the patch corner is uniform over the positions that keep the patch
within the image padded by half the difference between the initial and the final patch. Out-of-image parts are
filled with 0 (image) and -1 (labels), and -1 becomes background (0) after augmentation.

2D configurations (nnU-Net's ``2d``: a 2D network on slices of the preprocessed volume, whose first axis is the
out-of-plane one) sample a one-slice 3D patch ``(1, H, W)`` by the same rules — the slice is uniform, or the slice of
the chosen foreground voxel — and drop the slice axis before the 2D augmentation. (nnU-Net's 2D loader first draws a
slice among those holding the class, then a voxel in it; drawing the voxel directly weights slices by their
foreground, a difference that matters only for the forced third of each batch.)

The :class:`BatchDataset` is map-style: index ``epoch · iterations + i`` is batch ``i`` of ``epoch``; the
:class:`EpochSampler` yields the indices of the current epoch, so ``torch.utils.data.DataLoader`` workers can stay
alive across epochs (``persistent_workers``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.training.augment import Augmenter, initial_patch_size, is_dummy_2d, rotation_range
from medseg.training.config import AugmentationConfig

TRAIN_STREAM = 0
VAL_STREAM = 1


def split_batch(global_batch: int, world_size: int) -> list[int]:
    """Per-rank batch sizes (nnU-Net's ``_set_batch_size_and_oversample``): as even as possible, first ranks larger."""
    if global_batch < world_size:
        raise ValueError(f"batch size {global_batch} is smaller than the number of processes {world_size}")
    base = global_batch // world_size
    return [base + 1 if base * world_size + i < global_batch else base for i in range(world_size)]


def force_foreground(sample: int, global_batch: int, fraction: float) -> bool:
    """nnU-Net's ``get_do_oversample``: sample ``sample`` is forced when it is in the last ``fraction`` of the batch."""
    return not sample < round(global_batch * (1 - fraction))


def bbox_for(
    shape: Sequence[int],
    patch: Sequence[int],
    need_to_pad: Sequence[int],
    locations: dict[int, np.ndarray] | None,
    force_fg: bool,
    rng: np.random.Generator,
) -> list[int]:
    """Lower corner of a patch (nnU-Net's ``get_bbox``); see the module docstring."""
    dims = len(shape)
    pad = [int(p) for p in need_to_pad]
    for d in range(dims):
        if pad[d] + shape[d] < patch[d]:
            pad[d] = patch[d] - shape[d]
    lbs = [-pad[d] // 2 for d in range(dims)]
    ubs = [shape[d] + pad[d] // 2 + pad[d] % 2 - patch[d] for d in range(dims)]
    if force_fg and locations:
        eligible = [k for k in sorted(locations) if len(locations[k]) > 0]
        if eligible:
            label = eligible[int(rng.integers(len(eligible)))]
            voxels = locations[label]
            voxel = voxels[int(rng.integers(len(voxels)))]
            return [max(lbs[d], int(voxel[d]) - patch[d] // 2) for d in range(dims)]
    return [int(rng.integers(lbs[d], ubs[d] + 1)) for d in range(dims)]


def crop_padded(array: np.ndarray, lower: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """``array[:, lower : lower + size]`` with out-of-range parts filled with ``fill``."""
    out = np.full((array.shape[0], *size), fill, dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for d, (lo, n) in enumerate(zip(lower, size, strict=True)):
        a, b = max(lo, 0), min(lo + n, array.shape[d + 1])
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


class BatchDataset(torch.utils.data.Dataset):
    """Batches of patches of cached cases (see the module docstring).

    Args:
        folder: Cache folder of the configuration.
        case_ids: Cases to sample from.
        patch_size: Final patch.
        global_batch: Batch size over all ranks.
        sample_offset: Global index of this rank's first sample.
        local_batch: Samples this rank builds per batch.
        iterations: Batches per epoch.
        seed: Run seed.
        stream: :data:`TRAIN_STREAM` or :data:`VAL_STREAM` (separate random streams).
        augmentation: Augmentation settings (``enabled=False`` for validation batches).
        oversample_foreground: Fraction of each global batch forced to contain foreground.
        previous: The cascade's previous-stage predictions (case → ``.npz`` on this stage's grid,
            :mod:`medseg.training.cascade`): cropped and spatially augmented with the labels, appended one-hot
            (labels 1…``num_classes - 1``) to the image, and augmented as nnU-Net does when ``augmentation`` is on.
        num_classes: Classes including background (with ``previous``).
        coordinates: ``none``, ``voxel`` or ``world``: coordinate channels appended to every patch
            (:mod:`medseg.preprocessing.coordinates`; spatial augmentation only).
        coordinate_scale: Millimetres per unit of ``world`` coordinates.
    """

    def __init__(
        self,
        folder: str | Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        global_batch: int,
        sample_offset: int,
        local_batch: int,
        iterations: int,
        seed: int,
        stream: int,
        augmentation: AugmentationConfig,
        oversample_foreground: float = 0.33,
        previous: dict[str, str] | None = None,
        num_classes: int = 0,
        coordinates: str = "none",
        coordinate_scale: float = 100.0,
    ) -> None:
        from medseg.preprocessing.coordinates import coordinate_channel_count

        self.folder = str(folder)
        self.previous = dict(previous or {})
        self.num_classes = num_classes
        self.augment_previous = augmentation.enabled
        self.case_ids = list(case_ids)
        self.patch_size = [int(p) for p in patch_size]
        self.global_batch = global_batch
        self.sample_offset = sample_offset
        self.local_batch = local_batch
        self.iterations = iterations
        self.seed = seed
        self.stream = stream
        self.oversample = oversample_foreground
        self.coordinates, self.coordinate_scale = coordinates, coordinate_scale
        self.coordinate_channels = coordinate_channel_count(coordinates)
        self.augmenter = Augmenter(self.patch_size, augmentation)
        if augmentation.enabled:
            self.initial_patch = initial_patch_size(self.patch_size, rotation_range(self.patch_size, augmentation),
                                                    dummy_2d=is_dummy_2d(self.patch_size))
        else:
            self.initial_patch = list(self.patch_size)
        self.need_to_pad = [i - p for i, p in zip(self.initial_patch, self.patch_size, strict=True)]
        self.slices = len(self.patch_size) == 2  # 2D patches are one-slice crops of the 3D volumes
        if self.slices:
            self.initial_patch, self.need_to_pad = [1, *self.initial_patch], [0, *self.need_to_pad]
        self._cases: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return 1 << 62  # indices are epoch · iterations + i, unbounded in the epoch

    def _case(self, case_id: str) -> dict[str, Any]:
        if case_id not in self._cases:
            from medseg.preprocessing import load_cached_case

            self._cases[case_id] = load_cached_case(self.folder, case_id)
        return self._cases[case_id]

    def sample(self, epoch: int, iteration: int, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Global sample ``index`` of batch ``iteration`` of ``epoch``: image, labels (-1 mapped to 0), case id.

        An unlabelled case (cached without labels, e.g. a domain-adaptation target) gets background labels.
        """
        rng = np.random.default_rng([self.seed, self.stream, epoch, iteration, index])
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        case = self._case(case_id)
        force = force_foreground(index, self.global_batch, self.oversample)
        lower = bbox_for(case["data"].shape[1:], self.initial_patch, self.need_to_pad, case["locations"], force, rng)
        image = torch.from_numpy(crop_padded(case["data"], lower, self.initial_patch, 0.0))
        if case["seg"] is None:  # an unlabelled case (domain adaptation's target manifest)
            seg_np = np.full((1, *self.initial_patch), -1, dtype=np.int16)
        else:
            seg_np = crop_padded(case["seg"], lower, self.initial_patch, -1)
        if self.previous:  # the previous stage's mask travels with the labels through the spatial augmentation
            prev = crop_padded(self._previous_seg(case_id, case["seg"].shape), lower, self.initial_patch, 0)
            seg_np = np.concatenate([seg_np, prev.astype(seg_np.dtype)])
        seg = torch.from_numpy(seg_np)
        if self.coordinate_channels:
            from medseg.preprocessing.coordinates import coordinate_channels

            coords = coordinate_channels(case["properties"], self.coordinates, lower, self.initial_patch,
                                         self.coordinate_scale)
            image = torch.cat([image, torch.from_numpy(coords)])
        if self.slices:
            image, seg = image[:, 0], seg[:, 0]
        image, seg = self.augmenter(image, seg, rng, spatial_only=self.coordinate_channels)
        if self.previous:
            from medseg.training.cascade import augment_previous, one_hot_foreground

            onehot = one_hot_foreground(seg[1:], self.num_classes)
            if self.augment_previous:
                onehot = augment_previous(onehot, rng)
            image, seg = torch.cat([image, onehot.to(image.dtype)]), seg[:1]
        seg = torch.where(seg < 0, torch.zeros_like(seg), seg)
        return image, seg, case_id

    def _previous_seg(self, case_id: str, shape: tuple[int, ...]) -> np.ndarray:
        key = f"previous:{case_id}"
        if key not in self._cases:
            with np.load(self.previous[case_id]) as stored:
                seg = np.asarray(stored["seg"], dtype=np.int16)
            if tuple(seg.shape) != tuple(shape):
                from medseg.errors import TrainingError

                raise TrainingError(f"the previous stage's prediction has shape {seg.shape[1:]}, this stage's case "
                                    f"{case_id} {tuple(shape[1:])} (was it written for other plans?)",
                                    self.previous[case_id])
            self._cases[key] = {"seg": seg}
        return self._cases[key]["seg"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, iteration = divmod(int(index), self.iterations)
        samples = [self.sample(epoch, iteration, self.sample_offset + j) for j in range(self.local_batch)]
        return {
            "data": torch.stack([s[0] for s in samples]),
            "target": torch.stack([s[1] for s in samples]).long(),
            "keys": [s[2] for s in samples],
        }


class EpochSampler(torch.utils.data.Sampler[int]):
    """Yields the batch indices ``epoch · iterations + i`` of the current epoch (set with :meth:`set_epoch`)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration over the sampler yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.iterations, (self.epoch + 1) * self.iterations))

    def __len__(self) -> int:
        return self.iterations


def make_loader(dataset: BatchDataset, workers: int) -> tuple[torch.utils.data.DataLoader, EpochSampler]:
    """A DataLoader over ``dataset`` for one epoch at a time (workers kept alive between epochs)."""
    sampler = EpochSampler(dataset.iterations)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {"persistent_workers": True, "prefetch_factor": 4}
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=workers, pin_memory=torch.cuda.is_available(),
        collate_fn=_identity, **kwargs,
    )
    return loader, sampler


def _identity(batch: Any) -> Any:
    return batch
