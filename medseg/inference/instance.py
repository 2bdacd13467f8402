"""Instance prediction: sliding windows for dense heads, merged window detections, objects from user points.

Three kinds of instance models (:mod:`medseg.models.instance.base`):

- **dense** (Panoptic-DeepLab, DeeperLab, CIA-Net, …): their dense output — semantic logits, centre heatmaps,
  offset vectors, contours — is stitched by :class:`~medseg.inference.sliding_window.SlidingWindowPredictor` (the
  gaussian-weighted running mean, like logits; a fold ensemble is averaged window by window, and mirroring
  test-time augmentation flips the vector components back) and grouped into objects once, on the whole volume: every
  object gets one id, whichever windows it spans.
- **detections** (Mask R-CNN, PANet, PointRend, Panoptic FPN, UPSNet, EfficientPS): each window yields boxes,
  scores, classes and masks. Windows overlap (step 0.5 of the patch), so an object near a window border is seen by
  two or more windows. A window keeps only the objects whose box centre lies in its *core* — the part of the window
  closer to it than to its neighbours (per axis, up to the middle of each overlap) — and the objects of all windows
  (and of every fold and mirrored pass) are pasted into the volume by decreasing score: each voxel goes to the first
  object that claims it, and an object left with less than half of its mask is dropped as a duplicate (the panoptic
  merging rule of Kirillov et al., CVPR 2019, Section 7). Ids are numbered 1..N in pasting order.
- **interactive** (DEXTR): no windows; each group of user points (extreme points or clicks, world millimetres) marks
  one object, which the model segments in a crop around the points.

A 2D model on a volume (the ``2d`` configuration) works slice by slice; its objects are found per slice (no linking
across slices) and numbered over the whole volume.

:func:`export_instances` maps an instance map from the preprocessed grid back to the input's grid (nearest
neighbour, the inverse of :func:`medseg.preprocessing.preprocess_case`'s crop, resampling and transpose).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import InferenceError
from medseg.inference.sliding_window import (
    Precision,
    SlidingWindowPredictor,
    SlidingWindowStats,
    autocast_dtype,
    compute_steps_for_sliding_window,
    mirror_combinations,
    pad_amounts,
    resolve_device,
)
from medseg.models.instance.base import InstanceMaps, InstanceSegmentationModel

__all__ = [
    "DenseEnsemble",
    "InstancePredictor",
    "InstanceWindowPredictor",
    "PointGroup",
    "export_instances",
    "instance_table",
    "load_points",
    "points_to_voxels",
    "window_cores",
]


class DenseEnsemble(nn.Module):
    """The mean dense output of several dense instance models over mirrored passes, as one network for the window.

    Mirrored outputs are flipped back with :meth:`~medseg.models.instance.base.InstanceSegmentationModel.mirror_dense`
    (vector components change sign), so the average is meaningful for offsets too.

    Args:
        models: Dense instance models of one architecture (a fold ensemble).
        mirror_axes: Spatial axes (0-based, the models' own) to mirror.
    """

    def __init__(self, models: Sequence[InstanceSegmentationModel], mirror_axes: Sequence[int] = ()) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.mirror_axes = [int(a) for a in mirror_axes]
        self.out_channels = int(models[0].dense_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *patch)`` → mean dense output ``(B, dense_channels, *patch)``."""
        total = None
        count = 0
        for model in self.members:
            for axes in mirror_combinations(self.mirror_axes):
                dims = [a + 2 for a in axes]
                out = model(torch.flip(x, dims) if dims else x).float()
                out = model.mirror_dense(out, list(axes)) if axes else out  # type: ignore[operator]
                total = out if total is None else total + out
                count += 1
        assert total is not None
        return total / count


def window_cores(starts: Sequence[int], patch: int, size: int) -> list[tuple[float, float]]:
    """Per window start along one axis, the half-open core ``[lo, hi)``: up to the middle of each overlap."""
    cores = []
    for i, s in enumerate(starts):
        lo = 0.0 if i == 0 else (starts[i - 1] + patch + s) / 2
        hi = float(size) if i == len(starts) - 1 else (s + patch + starts[i + 1]) / 2
        cores.append((lo, hi))
    return cores


@dataclass
class _Candidate:
    """An object found in one window, in volume coordinates: its mask inside its box, score and class."""

    lo: tuple[int, ...]
    mask: np.ndarray
    score: float
    label: int


def _paste(candidates: Sequence[_Candidate], shape: Sequence[int], overlap_threshold: float
           ) -> tuple[np.ndarray, list[int], list[float]]:
    """Paste candidates by decreasing score (see the module docstring); returns the map, classes and scores."""
    out = np.zeros([int(s) for s in shape], dtype=np.int32)
    classes: list[int] = []
    scores: list[float] = []
    for cand in sorted(candidates, key=lambda c: -c.score):
        region = tuple(slice(a, a + m) for a, m in zip(cand.lo, cand.mask.shape, strict=True))
        area = int(cand.mask.sum())
        if area == 0:
            continue
        view = out[region]
        free = cand.mask & (view == 0)
        if int(free.sum()) < overlap_threshold * area:
            continue
        classes.append(cand.label)
        scores.append(cand.score)
        view[free] = len(classes)
    return out, classes, scores


class InstanceWindowPredictor:
    """Instances of a preprocessed volume with one or more instance models (see the module docstring).

    Args:
        models: Instance models of one kind (a fold ensemble), 2D or 3D.
        patch_size: Window of the models (2D models: in-plane).
        step: Window step as a fraction of the patch.
        mirror_axes: Spatial axes of the models to mirror (test-time augmentation).
        device: Compute device.
        precision: Autocast precision.
        batch_size: Windows per forward pass.
        score_threshold: Detections below this score are not pasted (0.5).
        overlap_threshold: A detection keeping less than this fraction of its mask is dropped (0.5).
    """

    def __init__(self, models: Sequence[InstanceSegmentationModel], patch_size: Sequence[int], *, step: float = 0.5,
                 mirror_axes: Sequence[int] = (), device: str | torch.device = "auto", precision: Precision = "auto",
                 batch_size: int | None = None, score_threshold: float = 0.5, overlap_threshold: float = 0.5) -> None:
        if not models:
            raise InferenceError("no models to predict with")
        kinds = {m.output_kind for m in models}
        if len(kinds) != 1:
            raise InferenceError("an ensemble mixes dense and detection models")
        self.device = resolve_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        self.kind = kinds.pop()
        self.spatial_dims = int(models[0].spatial_dims)
        self.patch = [int(p) for p in patch_size]
        if len(self.patch) != self.spatial_dims:
            raise InferenceError(f"patch {self.patch} does not fit {self.spatial_dims}D models")
        self.step = float(step)
        self.mirror_axes = [int(a) for a in mirror_axes]
        self.precision = precision
        self.amp_dtype = autocast_dtype(precision, self.device)
        self.batch_size = batch_size
        self.score_threshold, self.overlap_threshold = score_threshold, overlap_threshold
        self.stats = SlidingWindowStats()

    # The volume ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, data: np.ndarray | torch.Tensor) -> InstanceMaps:
        """Objects of a preprocessed volume ``(C, *spatial)`` (a 2D model's volume: ``(C, D, H, W)``, slice by slice).

        Returns:
            The instance map ``(*spatial)`` (ids 1..N), each object's class and score (CPU tensors).
        """
        volume = torch.as_tensor(np.asarray(data), dtype=torch.float32)
        if volume.ndim == self.spatial_dims + 1:
            return self._predict_volume(volume)
        if self.spatial_dims == 2 and volume.ndim == 4:
            return self._slices(volume)
        raise InferenceError(f"a {self.spatial_dims}D model cannot predict a volume of shape {tuple(volume.shape)}")

    def _slices(self, volume: torch.Tensor) -> InstanceMaps:
        out = torch.zeros(volume.shape[1:], dtype=torch.long)
        classes: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        count = 0
        for d in range(volume.shape[1]):
            part = self._predict_volume(volume[:, d])
            ids = part.instances
            out[d] = torch.where(ids > 0, ids + count, torch.zeros_like(ids))
            count += len(part.classes)
            classes.append(part.classes)
            scores.append(part.scores)
        return InstanceMaps(out, torch.cat(classes).long(), torch.cat(scores).float())

    def _predict_volume(self, image: torch.Tensor) -> InstanceMaps:
        if self.kind == "dense":
            return self._dense(image)
        return self._detections(image)

    # Dense models ------------------------------------------------------------------------------------------------

    def _dense(self, image: torch.Tensor) -> InstanceMaps:
        ensemble = DenseEnsemble(self.models, self.mirror_axes)  # type: ignore[arg-type]
        window = SlidingWindowPredictor([ensemble], self.patch, step=self.step, device=self.device,
                                        precision=self.precision, stitch_device="cpu", stitch_dtype="fp32",
                                        batch_size=self.batch_size)
        dense = window.predict(image)
        self.stats = window.stats
        maps = self.models[0].group(dense[None].float())[0]
        return InstanceMaps(maps.instances.cpu(), maps.classes.cpu(), maps.scores.cpu())

    # Detection models ----------------------------------------------------------------------------------------------

    def _forward(self, model: nn.Module, x: torch.Tensor) -> list[Any]:
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                return list(model(x))
        return list(model(x))

    def _detections(self, image: torch.Tensor) -> InstanceMaps:
        from medseg.models.instance.ops import boxes_of_masks

        shape = list(image.shape[1:])
        pads = pad_amounts(shape, self.patch)
        flat: list[int] = []
        for before, after in reversed(pads):
            flat += [before, after]
        padded = torch.nn.functional.pad(image, flat) if any(flat) else image
        size = list(padded.shape[1:])
        steps = compute_steps_for_sliding_window(size, self.patch, self.step)
        cores = [window_cores(s, p, n) for s, p, n in zip(steps, self.patch, size, strict=True)]
        starts = list(itertools.product(*[list(enumerate(s)) for s in steps]))
        batch = self.batch_size or 2
        self.stats = SlidingWindowStats(windows=len(starts), batch_size=batch, stitch_device="cpu")
        offset = [b for b, _ in pads]
        candidates: list[_Candidate] = []
        combos = mirror_combinations(self.mirror_axes)
        for first in range(0, len(starts), batch):
            chunk = starts[first:first + batch]
            windows = torch.stack([padded[(slice(None), *[slice(s, s + p) for (_, s), p in zip(st, self.patch,
                                                                                              strict=True)])]
                                   for st in chunk]).to(self.device)
            for model in self.models:
                for axes in combos:
                    dims = [a + 2 for a in axes]
                    found = self._forward(model, torch.flip(windows, dims) if dims else windows)
                    self.stats.forward_passes += 1
                    for st, det in zip(chunk, found, strict=True):
                        masks = det.masks.bool()
                        if axes:
                            masks = torch.flip(masks, [a + 1 for a in axes])
                        keep = det.scores >= self.score_threshold
                        if not bool(keep.any()):
                            continue
                        masks, scores, labels = masks[keep].cpu(), det.scores[keep].cpu(), det.labels[keep].cpu()
                        boxes = boxes_of_masks(masks)
                        for k in range(masks.shape[0]):
                            cand = self._candidate(masks[k], boxes[k], float(scores[k]), int(labels[k]), st, cores,
                                                   offset, shape)
                            if cand is not None:
                                candidates.append(cand)
            self.stats.batches += 1
        instances, classes, scores = _paste(candidates, shape, self.overlap_threshold)
        return InstanceMaps(torch.from_numpy(instances).long(), torch.tensor(classes, dtype=torch.long),
                            torch.tensor(scores, dtype=torch.float32))

    def _candidate(self, mask: torch.Tensor, box: torch.Tensor, score: float, label: int,
                   start: Sequence[tuple[int, int]], cores: Sequence[Sequence[tuple[float, float]]],
                   offset: Sequence[int], shape: Sequence[int]) -> _Candidate | None:
        """An object of one window in volume coordinates, or ``None``.

        ``None`` when its box centre lies outside the window's core (a neighbouring window owns it) or nothing of it
        lies inside the unpadded volume.
        """
        d = self.spatial_dims
        lo = [math.floor(float(box[a])) for a in range(d)]
        hi = [math.ceil(float(box[a + d])) for a in range(d)]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            return None
        for a, (index, s) in enumerate(start):
            centre = s + 0.5 * (lo[a] + hi[a])
            core_lo, core_hi = cores[a][index]
            if not core_lo <= centre < core_hi:
                return None
        crop = mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].numpy()
        # window → padded volume → unpadded volume, clipped to the volume
        g_lo = [s + low - o for (_, s), low, o in zip(start, lo, offset, strict=True)]
        cut_lo = [max(0, -g) for g in g_lo]
        cut_hi = [min(m, n - g) for g, m, n in zip(g_lo, crop.shape, shape, strict=True)]
        if any(b <= a for a, b in zip(cut_lo, cut_hi, strict=True)):
            return None
        crop = crop[tuple(slice(a, b) for a, b in zip(cut_lo, cut_hi, strict=True))]
        return _Candidate(tuple(g + c for g, c in zip(g_lo, cut_lo, strict=True)), crop, score, label)


def export_instances(instances: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
    """An instance map on the preprocessed grid brought back to the input's grid (image axis order).

    The inverse of :func:`medseg.preprocessing.preprocess_case`: nearest-neighbour resampling from
    ``shape_after_resampling`` to ``shape_after_cropping_and_before_resampling``, pasted at
    ``bbox_used_for_cropping`` into the transposed input shape, transposed back.
    """
    from medseg.inference.resample import nearest_indices

    array = np.asarray(instances)
    before = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    for axis, n in enumerate(before):
        if array.shape[axis] != n:
            index = nearest_indices(array.shape[axis], n).numpy()
            array = np.take(array, index, axis=axis)
    forward = list(properties["transpose_forward"])
    full_shape = [int(properties["shape_before_cropping"][a]) for a in forward]
    out = np.zeros(full_shape, dtype=np.int32)
    box = properties["bbox_used_for_cropping"]
    out[tuple(slice(int(a), int(b)) for a, b in box)] = array
    return np.ascontiguousarray(out.transpose(list(properties["transpose_backward"])))


def points_to_voxels(points_mm: np.ndarray, affine: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
    """World points (RAS mm, ``(P, 3)``) as continuous voxel coordinates of the preprocessed grid (``(P, 3)``).

    The input's voxel index (the inverse of its affine), transposed as planned, shifted by the crop, scaled by the
    resampling (voxel centres aligned).
    """
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    homogeneous = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    voxels = (np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ homogeneous.T).T[:, :3]
    forward = list(properties["transpose_forward"])
    voxels = voxels[:, forward]
    start = np.array([int(b[0]) for b in properties["bbox_used_for_cropping"]], dtype=np.float64)
    voxels = voxels - start
    before = np.array(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    after = np.array(properties["shape_after_resampling"], dtype=np.float64)
    return (voxels + 0.5) * after / before - 0.5


def instance_table(instances: np.ndarray, classes: Sequence[int], scores: Sequence[float], affine: np.ndarray,
                   names: Mapping[int, str]) -> list[dict[str, Any]]:
    """One entry per object of a native instance map.

    Each entry: id, class, class name, score, voxels, volume (mm³) and centroid (RAS mm).
    """
    array = np.asarray(instances)
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    ids, counts = np.unique(array[array > 0], return_counts=True)
    out = []
    if ids.size:
        from scipy import ndimage

        centroids = ndimage.center_of_mass(np.ones_like(array, dtype=np.float32), array, ids)
    else:
        centroids = []
    for k, n, c in zip(ids.tolist(), counts.tolist(), centroids, strict=True):
        cls = int(classes[k - 1]) if k - 1 < len(classes) else 1
        world = affine @ np.array([*c, 1.0])
        out.append({"id": int(k), "class": cls, "class_name": names.get(cls, str(cls)),
                    "score": round(float(scores[k - 1]), 6) if k - 1 < len(scores) else None,
                    "voxels": int(n), "volume_mm3": round(n * voxel_mm3, 6),
                    "centroid_mm": [round(float(v), 4) for v in world[:3]]})
    return out


def relabel(instances: np.ndarray, classes: Sequence[int], scores: Sequence[float]
            ) -> tuple[np.ndarray, list[int], list[float]]:
    """Renumber the ids present to 1..N (in id order), dropping the classes and scores of vanished ids."""
    array = np.asarray(instances)
    ids = np.unique(array[array > 0])
    lookup = np.zeros(int(max(array.max(initial=0), len(classes))) + 1, dtype=np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lookup[array], [int(classes[i - 1]) for i in ids], [float(scores[i - 1]) for i in ids]



@dataclass(frozen=True)
class PointGroup:
    """The points that mark one object for an interactive model.

    Attributes:
        points_mm: ``(P, 3)`` world coordinates in RAS millimetres (medseg's world frame).
        label: The object's class (a label value), or ``None`` for the first foreground class.
    """

    points_mm: np.ndarray
    label: int | None = None


def load_points(path: str | Any, label_values: Mapping[str, int] | None = None) -> dict[str, list[PointGroup]]:
    """Read a points file of objects marked in world millimetres.

    The file: ``{"coordinates": "RAS" | "LPS", "cases": {case id: [{"points": [[x, y, z], …], "class": name or
    value}, …]}}``. Coordinates are world millimetres: RAS (medseg's and NIfTI's frame, the default) or LPS (DICOM's
    and ITK's; x and y are negated). A point may have two coordinates for a picture (z = 0). Each group is one object:
    extreme points (DEXTR's four in 2D, six in 3D) or any two or more clicks spanning it; ``class`` is optional.

    Raises:
        InferenceError: The file is unreadable or malformed (the message names the entry).
    """
    from medseg.utils.files import read_json

    data = read_json(path, "points file", InferenceError)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise InferenceError('a points file is an object {"cases": {case id: [{"points": [[x, y, z], ...]}]}}', path)
    frame = str(data.get("coordinates", "RAS")).upper()
    if frame not in ("RAS", "LPS"):
        raise InferenceError(f"'coordinates' must be RAS or LPS, not {data.get('coordinates')!r}", path)
    names = dict(label_values or {})
    out: dict[str, list[PointGroup]] = {}
    for case, groups in data["cases"].items():
        if not isinstance(groups, list) or not groups:
            raise InferenceError(f"case {case!r}: a non-empty list of objects, each {{\"points\": [[x, y, z], ...]}}",
                                 path)
        parsed = []
        for i, group in enumerate(groups):
            where = f"case {case!r}, object {i}"
            raw = group.get("points") if isinstance(group, dict) else None
            try:
                pts = np.array(raw, dtype=np.float64)
            except (TypeError, ValueError):
                pts = np.zeros((0, 0))
            if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] not in (2, 3) or not np.all(np.isfinite(pts)):
                raise InferenceError(f"{where}: 'points' must be two or more [x, y, z] (or [x, y]) numbers", path)
            if pts.shape[1] == 2:
                pts = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
            if frame == "LPS":
                pts = pts * np.array([-1.0, -1.0, 1.0])
            label = group.get("class")
            if label is not None:
                if isinstance(label, str) and label in names:
                    label = names[label]
                elif not (isinstance(label, int) and not isinstance(label, bool) and label in names.values()
                          and label != 0):
                    known = ", ".join(f"{n} ({v})" for n, v in names.items() if v != 0)
                    raise InferenceError(f"{where}: class {label!r} is not one of the model's classes ({known})", path)
            parsed.append(PointGroup(pts, label))
        out[str(case)] = parsed
    return out


class InstancePredictor:
    """Instance prediction of whole cases with trained folds.

    The batch interface of :class:`~medseg.inference.predictor.Predictor`: ``prepare``, ``predict_prepared``,
    ``label_names``.

    Args:
        folds: Loaded folds of one instance run (:func:`~medseg.inference.predictor.load_folds`).
        tta: Mirroring test-time augmentation over the axes training mirrored.
        step: Window step as a fraction of the patch.
        device: Compute device.
        precision: Autocast precision.
        batch_size: Windows per forward pass.
        points: Interactive models: case id → the point groups marking its objects (:func:`load_points`).
        score_threshold: Detections below this score are not kept (0.5).
    """

    def __init__(self, folds: Sequence[Any], *, tta: bool = True, step: float = 0.5, device: str = "auto",
                 precision: Precision = "auto", batch_size: int | None = None,
                 points: Mapping[str, Sequence[PointGroup]] | None = None, score_threshold: float = 0.5) -> None:
        from medseg.models import get_model_info
        from medseg.preprocessing import configuration_of

        if not folds:
            raise InferenceError("no folds to predict with")
        self.folds = list(folds)
        first = self.folds[0]
        self.plans, self.configuration = first.plans, first.configuration
        self.cfg = configuration_of(self.plans, self.configuration)
        self.device = resolve_device(device)
        models = [f.model for f in self.folds]
        self.interactive = get_model_info(models[0].model_name).task == "interactive"
        self.points = dict(points or {})
        if self.interactive and not self.points:
            raise InferenceError(f"{models[0].model_name} segments the objects that points mark: pass --points FILE")
        if not self.interactive and self.points:
            raise InferenceError(f"{models[0].model_name} finds objects by itself; --points is for interactive "
                                 "models (dextr)")
        self.models = [m.to(self.device).eval() for m in models]
        if not self.interactive:
            self.window = InstanceWindowPredictor(models, first.patch_size, step=step,
                                                  mirror_axes=first.mirror_axes if tta else (), device=self.device,
                                                  precision=precision, batch_size=batch_size,
                                                  score_threshold=score_threshold)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return self.cfg.num_classes

    @property
    def label_names(self) -> dict[int, str]:
        """Class value → name from the plans."""
        return self.cfg.label_names

    def prepare(self, case_id: str, image: Any) -> Any:
        """Check and preprocess a loaded image as the run's plans say."""
        from medseg.inference.predictor import prepare_case

        return prepare_case(self.plans, self.configuration, case_id, image)

    def predict_prepared(self, case: Any, *, probabilities: bool = False) -> Any:
        """Objects of a prepared case on the input's grid, with their table (probabilities are not produced)."""
        import time

        from medseg.inference.predictor import Prediction, output_meta
        from medseg.io import make_image

        seconds = dict(case.seconds)
        start = time.perf_counter()
        affine, keep = output_meta(case.image)
        found = self._interactive(case, affine) if self.interactive else self.window.predict(case.data)
        stats = SlidingWindowStats() if self.interactive else self.window.stats
        seconds["predict"] = time.perf_counter() - start
        start = time.perf_counter()
        native = export_instances(found.instances.numpy(), case.properties)
        native, classes, scores = relabel(native, found.classes.tolist(), found.scores.tolist())
        seconds["export"] = time.perf_counter() - start
        table = instance_table(native, classes, scores, affine, self.label_names)
        labels = make_image(native[None].astype(np.int32), affine, keep)
        return Prediction(labels=labels, probabilities=None, seconds=seconds, window_stats=stats, instances=table)

    @torch.no_grad()
    def _interactive(self, case: Any, affine: np.ndarray) -> InstanceMaps:
        groups = self.points.get(case.case_id)
        if not groups:
            raise InferenceError(f"the points file marks no object in case {case.case_id!r}")
        data = torch.as_tensor(np.asarray(case.data), dtype=torch.float32)
        instances = torch.zeros(data.shape[1:], dtype=torch.long)
        classes, scores = [], []
        default = min(c for c in self.label_names if c != 0) if len(self.label_names) > 1 else 1
        two_d = self.models[0].spatial_dims == 2
        for i, group in enumerate(groups):
            voxels = points_to_voxels(group.points_mm, affine, case.properties)
            if two_d:
                slices = np.unique(np.round(voxels[:, 0]).astype(int))
                if len(slices) != 1 or not 0 <= slices[0] < data.shape[1]:
                    raise InferenceError(f"case {case.case_id!r}, object {i}: a 2D model needs the points of an "
                                         "object on one slice of the image")
                image, target, pts = data[:, int(slices[0])], instances[int(slices[0])], voxels[:, 1:]
            else:
                image, target, pts = data, instances, voxels
            points = torch.as_tensor(pts, dtype=torch.float32)
            probs = torch.stack([m.segment(image.to(self.device), points.to(self.device)).float().cpu()
                                 for m in self.models]).mean(dim=0)
            mask = (probs > float(getattr(self.models[0], "threshold", 0.5))) & (target == 0)
            if not bool(mask.any()):
                continue
            classes.append(group.label if group.label is not None else default)
            scores.append(float(probs[mask].mean()))
            target[mask] = len(classes)
        return InstanceMaps(instances, torch.tensor(classes, dtype=torch.long), torch.tensor(scores))
