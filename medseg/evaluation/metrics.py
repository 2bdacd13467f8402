"""Segmentation metrics on boolean masks with a voxel spacing in millimetres.

Pure numpy/scipy. Definitions and the rules for empty masks are in ``METRICS.md`` next to this file; in short:

- Overlap: ``Dice = 2|P∩R| / (|P|+|R|)``, ``IoU = |P∩R| / |P∪R|``.
- Surfaces are **border voxels**: foreground voxels with at least one 6-connected (face) neighbour in the background,
  voxels outside the array counting as background (``mask & ~binary_erosion(mask)``, as MONAI without subvoxels).
- ``d(P→R)`` is, for every border voxel of ``P``, the Euclidean distance in mm between its centre and the nearest
  border-voxel centre of ``R`` (and vice versa), from one exact distance transform per direction.
- ``HD = max(max d(P→R), max d(R→P))``; ``HD95 = max(P95 d(P→R), P95 d(R→P))`` (per-direction percentiles, then the
  larger: as MONAI and DeepMind's ``surface-distance``; ``pooling="pooled"`` gives medpy's percentile of both
  directions together); ``ASSD = (Σ d(P→R) + Σ d(R→P)) / (|∂P| + |∂R|)``;
  ``NSD(τ) = (#{d(P→R) ≤ τ} + #{d(R→P) ≤ τ}) / (|∂P| + |∂R|)``.
- Both masks empty: Dice = IoU = NSD = 1, distances 0. Exactly one empty: Dice = IoU = NSD = 0 and every distance is
  the **penalty**, the diagonal of the image extent in mm (:func:`empty_penalty_mm`), so misses stay in means.

Distances are computed on the bounding box of both masks padded by one background voxel, with one exact Euclidean
distance transform per direction (``distance_transform_edt(sampling=spacing)``), shared by all distance metrics. That
is exact, not an approximation: everything outside the box is background in both masks (so the border voxels are the
same), and the transform measures straight-line distances to the nearest border voxel, all of which lie in the box.
Boxes larger than :data:`EDT_MAX_VOXELS` (large organs) use a k-d tree over the border voxels instead: the same
nearest-centre distances, several times faster there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from medseg.evaluation.metric_table import METRICS

#: Metric names accepted by :func:`compute_metrics` (``nsd`` yields one value per tolerance), from :data:`METRICS`:
#: those of one prediction against one reference.
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS if not m.samples)
#: Metrics of a prediction's samples against several annotations (``ged``: :func:`generalised_energy_distance`),
#: computed by :func:`medseg.evaluation.evaluate.evaluate` from the sample files.
SAMPLE_METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS if m.samples)
#: Metrics that need surface distances.
SURFACE_METRICS: frozenset[str] = frozenset(m.name for m in METRICS if m.surface)
#: Column/key name of each scalar metric (nnU-Net spells ``Dice`` and ``IoU`` this way).
METRIC_KEYS: dict[str, str] = {m.name: m.key for m in METRICS if m.name != "nsd"}

#: Boxes up to this many voxels get their distances from a Euclidean distance transform, larger ones from a k-d tree
#: over the border voxels (identical values; see :func:`_nearest`).
EDT_MAX_VOXELS = 2_000_000

#: ``status`` values of one case × class.
STATUS_OK = "ok"
STATUS_BOTH_EMPTY = "both_empty"
STATUS_MISSED = "missed"  # reference present, prediction empty
STATUS_FALSE_POSITIVE = "false_positive"  # reference empty, prediction present

Pooling = Literal["max", "pooled"]


def nsd_key(tolerance_mm: float) -> str:
    """Column/key name of NSD at a tolerance, e.g. ``NSD_1mm``, ``NSD_0.5mm``."""
    return f"NSD_{float(tolerance_mm):g}mm"


def _as_mask(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def _check_pair(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None) -> tuple[float, ...]:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    if spacing is None:
        raise ValueError("spacing (mm per voxel along each axis) is required; pass (1, 1, 1) for voxel units")
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=np.float64), (pred.ndim,)))
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def empty_penalty_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Distance given to HD/HD95/ASSD when exactly one mask is empty: the diagonal of the image extent in mm.

    ``sqrt(Σ (shape_i · spacing_i)²)`` is larger than the distance between any two voxel centres of the grid, so a
    missed (or hallucinated) structure always scores worse than any prediction that overlaps the image at all, it is
    finite (so means include it), and it depends only on the grid (reproducible, comparable across methods).
    """
    extent = np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    return float(np.sqrt(np.sum(extent**2)))


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P∩R| / (|P|+|R|)``; 1 when both masks are empty, 0 when exactly one is."""
    pred, ref = _as_mask(pred), _as_mask(ref)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & ref)) / total


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|P∩R| / |P∪R|``; 1 when both masks are empty, 0 when exactly one is."""
    pred, ref = _as_mask(pred), _as_mask(ref)
    union = int(np.count_nonzero(pred | ref))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & ref)) / union


def union_box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box (slices) of the union of two masks, or ``None`` when both are empty."""
    found = ndimage.find_objects((_as_mask(pred) | _as_mask(ref)).view(np.uint8))
    return found[0] if found else None


def border(mask: np.ndarray) -> np.ndarray:
    """Border voxels of a mask: foreground with a face-neighbour (6-connectivity in 3D) in the background.

    Voxels outside the array count as background, so foreground on the array's edge is border.
    """
    mask = _as_mask(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


@dataclass(frozen=True)
class SurfaceDistances:
    """Border-to-border distances (mm) in both directions.

    Attributes:
        pred_to_ref: For each border voxel of the prediction, the distance to the nearest reference border voxel.
        ref_to_pred: For each border voxel of the reference, the distance to the nearest prediction border voxel.
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray

    @property
    def hausdorff(self) -> float:
        """Largest distance in either direction."""
        return float(max(self.pred_to_ref.max(), self.ref_to_pred.max()))

    def hausdorff_percentile(self, q: float = 95.0, pooling: Pooling = "max") -> float:
        """``q``-th percentile Hausdorff distance (linear interpolation between order statistics).

        Args:
            q: Percentile in [0, 100].
            pooling: ``"max"``: the larger of the two directions' percentiles (MONAI, DeepMind ``surface-distance``,
                medseg's HD95); ``"pooled"``: the percentile of both directions' distances together (medpy).
        """
        if pooling == "max":
            return float(max(np.percentile(self.pred_to_ref, q), np.percentile(self.ref_to_pred, q)))
        if pooling == "pooled":
            return float(np.percentile(np.concatenate([self.pred_to_ref, self.ref_to_pred]), q))
        raise ValueError(f"pooling must be 'max' or 'pooled', got {pooling!r}")

    @property
    def average_symmetric(self) -> float:
        """Mean of all border-voxel distances of both directions together (ASSD)."""
        n = self.pred_to_ref.size + self.ref_to_pred.size
        return float((self.pred_to_ref.sum() + self.ref_to_pred.sum()) / n)

    def surface_dice(self, tolerance_mm: float) -> float:
        """Fraction of border voxels of both masks within ``tolerance_mm`` of the other's border (NSD)."""
        n = self.pred_to_ref.size + self.ref_to_pred.size
        close = np.count_nonzero(self.pred_to_ref <= tolerance_mm) + np.count_nonzero(self.ref_to_pred <= tolerance_mm)
        return float(close / n)


def _nearest(source: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """For every ``True`` voxel of ``source``, the distance (mm) to the nearest ``True`` voxel centre of ``target``.

    Small boxes use an exact Euclidean distance transform; boxes over :data:`EDT_MAX_VOXELS` (large organs, where
    the transform of the whole box costs seconds) use a k-d tree over the border voxels, which gives the same
    exact nearest-centre distances in a fraction of the time and memory.
    """
    if source.size <= EDT_MAX_VOXELS:
        return ndimage.distance_transform_edt(~target, sampling=spacing)[source]
    from scipy.spatial import cKDTree

    scale = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(np.argwhere(target) * scale)
    distances, _ = tree.query(np.argwhere(source) * scale, k=1)
    return np.asarray(distances, dtype=np.float64)


def _distances_in_box(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> SurfaceDistances:
    """Surface distances of two non-empty masks already cropped to (at least) their union's bounding box."""
    pred = np.pad(pred, 1)  # one background voxel all round: borders and distances are then exact (module docs)
    ref = np.pad(ref, 1)
    border_pred, border_ref = border(pred), border(ref)
    return SurfaceDistances(
        pred_to_ref=_nearest(border_pred, border_ref, spacing), ref_to_pred=_nearest(border_ref, border_pred, spacing)
    )


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Border-to-border distances (mm) in both directions, computed on the masks' joint bounding box.

    Raises:
        ValueError: Either mask is empty (distances are undefined; the metric functions apply the empty rules).
    """
    pred, ref = _as_mask(pred), _as_mask(ref)
    spacing = _check_pair(pred, ref, spacing)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    box = union_box(pred, ref)
    assert box is not None
    return _distances_in_box(pred[box], ref[box], spacing)


def _distance_metric(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None, penalty_mm: float | None
) -> SurfaceDistances | float:
    """Distances, or the value every distance metric takes by the empty-mask rules."""
    pred, ref = _as_mask(pred), _as_mask(ref)
    spacing = _check_pair(pred, ref, spacing)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if not has_pred or not has_ref:
        return empty_penalty_mm(pred.shape, spacing) if penalty_mm is None else float(penalty_mm)
    box = union_box(pred, ref)
    assert box is not None
    return _distances_in_box(pred[box], ref[box], spacing)


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], *, penalty_mm: float | None = None) -> float:
    """Hausdorff distance (mm) between the borders; 0 when both empty, the penalty when exactly one is.

    Args:
        pred: Predicted mask.
        ref: Reference mask, same shape.
        spacing: Voxel size in mm along each array axis.
        penalty_mm: Value when exactly one mask is empty (default: :func:`empty_penalty_mm` of the array).
    """
    d = _distance_metric(pred, ref, spacing, penalty_mm)
    return d if isinstance(d, float) else d.hausdorff


def hausdorff95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    pooling: Pooling = "max",
    q: float = 95.0,
    penalty_mm: float | None = None,
) -> float:
    """95th-percentile Hausdorff distance (mm); see :meth:`SurfaceDistances.hausdorff_percentile` for ``pooling``.

    Args:
        pred: Predicted mask.
        ref: Reference mask, same shape.
        spacing: Voxel size in mm along each array axis.
        pooling: ``"max"`` (default, per-direction percentiles then the larger) or ``"pooled"`` (medpy).
        q: Percentile.
        penalty_mm: Value when exactly one mask is empty (default: :func:`empty_penalty_mm` of the array).
    """
    d = _distance_metric(pred, ref, spacing, penalty_mm)
    return d if isinstance(d, float) else d.hausdorff_percentile(q, pooling)


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], *, penalty_mm: float | None = None) -> float:
    """Average symmetric surface distance (mm): mean over the border voxels of both masks of their distances.

    Args:
        pred: Predicted mask.
        ref: Reference mask, same shape.
        spacing: Voxel size in mm along each array axis.
        penalty_mm: Value when exactly one mask is empty (default: :func:`empty_penalty_mm` of the array).
    """
    d = _distance_metric(pred, ref, spacing, penalty_mm)
    return d if isinstance(d, float) else d.average_symmetric


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice at ``tolerance_mm``; 1 when both masks are empty, 0 when exactly one is.

    Args:
        pred: Predicted mask.
        ref: Reference mask, same shape.
        spacing: Voxel size in mm along each array axis.
        tolerance_mm: Border voxels within this distance (inclusive) of the other border count as correct.
    """
    d = _distance_metric(pred, ref, spacing, penalty_mm=None)
    if isinstance(d, float):
        return 1.0 if d == 0.0 else 0.0
    return d.surface_dice(tolerance_mm)


def _check_metrics(metrics: Sequence[str], tolerances: Sequence[float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    chosen = tuple(dict.fromkeys(m.lower() for m in metrics))
    known = (*METRIC_NAMES, *SAMPLE_METRIC_NAMES)
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)} (known: {', '.join(known)})")
    tol = tuple(float(t) for t in tolerances)
    if "nsd" in chosen and (not tol or any(not np.isfinite(t) or t < 0 for t in tol)):
        raise ValueError(f"NSD needs one or more finite tolerances ≥ 0 mm, got {tol}")
    return chosen, tol if "nsd" in chosen else ()


def metric_keys(metrics: Sequence[str], nsd_tolerances_mm: Sequence[float] = (1.0,)) -> list[str]:
    """Result keys :func:`compute_metrics` produces for ``metrics`` (in this order), e.g. ``["Dice", "NSD_1mm"]``."""
    chosen, tol = _check_metrics(metrics, nsd_tolerances_mm)
    keys: list[str] = []
    for name in (*METRIC_NAMES, *SAMPLE_METRIC_NAMES):
        if name in chosen:
            keys.extend([nsd_key(t) for t in tol] if name == "nsd" else [METRIC_KEYS[name]])
    return keys


def metrics_in_box(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    n_voxels: int,
    penalty_mm: float,
    metrics: Sequence[str] = METRIC_NAMES,
    nsd_tolerances_mm: Sequence[float] = (1.0,),
) -> dict[str, float | int | str]:
    """All requested metrics of one class from masks cropped to a box holding both masks entirely.

    This is the building block of :func:`compute_metrics` and of label-map evaluation (which finds each class's
    box with one ``find_objects`` pass). Voxels outside the box must be background in both masks.

    Args:
        pred: Predicted mask, cropped.
        ref: Reference mask, cropped the same way.
        spacing: Voxel size in mm along each axis.
        n_voxels: Number of voxels of the whole (uncropped) image, for ``TN``.
        penalty_mm: Distance reported when exactly one mask is empty.
        metrics: Metric names from :data:`METRIC_NAMES`.
        nsd_tolerances_mm: NSD tolerances in mm.

    Returns:
        ``{"status", "TP", "FP", "FN", "TN", "n_pred", "n_ref", <metric keys>}``; see :func:`metric_keys`. Sample
        metrics (``ged``) are left to the caller, who has the samples.
    """
    pred, ref = _as_mask(pred), _as_mask(ref)
    spacing = _check_pair(pred, ref, spacing)
    chosen, tol = _check_metrics(metrics, nsd_tolerances_mm)
    tp = int(np.count_nonzero(pred & ref))
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    fp, fn = n_pred - tp, n_ref - tp
    if n_pred == 0 and n_ref == 0:
        status = STATUS_BOTH_EMPTY
    elif n_pred == 0:
        status = STATUS_MISSED
    elif n_ref == 0:
        status = STATUS_FALSE_POSITIVE
    else:
        status = STATUS_OK
    out: dict[str, float | int | str] = {
        "status": status,
        "TP": tp,
        "FP": fp,
        "FN": fn,
        "TN": int(n_voxels) - tp - fp - fn,
        "n_pred": n_pred,
        "n_ref": n_ref,
    }
    both_empty = status == STATUS_BOTH_EMPTY
    one_empty = status in (STATUS_MISSED, STATUS_FALSE_POSITIVE)
    if "dice" in chosen:
        out["Dice"] = 1.0 if both_empty else 2.0 * tp / (n_pred + n_ref)
    if "iou" in chosen:
        out["IoU"] = 1.0 if both_empty else tp / (tp + fp + fn)
    if not SURFACE_METRICS.intersection(chosen):
        return out
    distances: SurfaceDistances | None = None
    if status == STATUS_OK:
        distances = _distances_in_box(pred, ref, spacing)
    empty_distance = 0.0 if both_empty else float(penalty_mm)
    if "hd" in chosen:
        out["HD"] = empty_distance if distances is None else distances.hausdorff
    if "hd95" in chosen:
        out["HD95"] = empty_distance if distances is None else distances.hausdorff_percentile(95.0, "max")
    if "assd" in chosen:
        out["ASSD"] = empty_distance if distances is None else distances.average_symmetric
    for t in tol:
        if distances is None:
            out[nsd_key(t)] = 0.0 if one_empty else 1.0
        else:
            out[nsd_key(t)] = distances.surface_dice(t)
    return out


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    metrics: Sequence[str] = METRIC_NAMES,
    *,
    nsd_tolerances_mm: Sequence[float] = (1.0,),
    penalty_mm: float | None = None,
) -> dict[str, float | int | str]:
    """All requested metrics of one class, cropping once and computing one distance transform per direction.

    Args:
        pred: Predicted mask (any shape; non-zero is foreground).
        ref: Reference mask, same shape.
        spacing: Voxel size in mm along each array axis (``(1, 1, 1)`` for voxel units; never implicit).
        metrics: Names from :data:`METRIC_NAMES`.
        nsd_tolerances_mm: Tolerances for ``nsd``, one value (``NSD_<t>mm``) each.
        penalty_mm: Distance when exactly one mask is empty (default: :func:`empty_penalty_mm` of the array).

    Returns:
        ``status`` (``ok``, ``both_empty``, ``missed``, ``false_positive``), the confusion counts ``TP``, ``FP``,
        ``FN``, ``TN``, ``n_pred``, ``n_ref``, and one float per metric key (:func:`metric_keys`).

    Raises:
        ValueError: An unknown metric, or a sample metric (``ged``: :func:`generalised_energy_distance` takes the
            samples and the annotations).
    """
    samples = [m for m in metrics if m.lower() in SAMPLE_METRIC_NAMES]
    if samples:
        raise ValueError(f"{', '.join(samples)} scores samples against annotations, not one mask against one: use "
                         "generalised_energy_distance(samples, annotations)")
    pred, ref = _as_mask(pred), _as_mask(ref)
    spacing = _check_pair(pred, ref, spacing)
    penalty = empty_penalty_mm(pred.shape, spacing) if penalty_mm is None else float(penalty_mm)
    box = union_box(pred, ref)
    if box is None:
        box = tuple(slice(0, 0) for _ in pred.shape)
    return metrics_in_box(
        pred[box],
        ref[box],
        spacing,
        n_voxels=int(pred.size),
        penalty_mm=penalty,
        metrics=metrics,
        nsd_tolerances_mm=nsd_tolerances_mm,
    )


def iou_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - IoU(a, b)`` of two masks; 0 when both are empty (the empty-mask rule of ``METRICS.md``)."""
    a, b = _as_mask(a), _as_mask(b)
    union = int(np.count_nonzero(a | b))
    return 0.0 if union == 0 else 1.0 - int(np.count_nonzero(a & b)) / union


def energy_distance_terms(samples: Sequence[np.ndarray], annotations: Sequence[np.ndarray]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distance matrices ``d(Y_j, S_i)``, ``d(S_i, S_i')``, ``d(Y_j, Y_j')`` with ``d = 1 - IoU``.

    Args:
        samples: N predicted masks (one class), all of one shape.
        annotations: M reference masks of the same shape.

    Returns:
        ``(M, N)``, ``(N, N)`` and ``(M, M)`` float64 matrices (symmetric ones computed once per pair).

    Raises:
        ValueError: No samples or no annotations, or masks of different shapes.
    """
    s_masks = [_as_mask(m) for m in samples]
    y_masks = [_as_mask(m) for m in annotations]
    if not s_masks or not y_masks:
        raise ValueError(f"the energy distance needs samples and annotations, got {len(s_masks)} and {len(y_masks)}")
    shapes = {m.shape for m in (*s_masks, *y_masks)}
    if len(shapes) != 1:
        raise ValueError(f"samples and annotations have different shapes: {sorted(shapes)}")
    box = None
    for m in (*s_masks, *y_masks):
        box = _merge(box, union_box(m, m))
    if box is None:  # every mask empty: all distances 0
        return np.zeros((len(y_masks), len(s_masks))), np.zeros((len(s_masks),) * 2), np.zeros((len(y_masks),) * 2)
    s_masks = [m[box] for m in s_masks]
    y_masks = [m[box] for m in y_masks]

    def pairwise(first: list[np.ndarray], second: list[np.ndarray], symmetric: bool) -> np.ndarray:
        out = np.zeros((len(first), len(second)))
        for i, a in enumerate(first):
            for j in range(i if symmetric else 0, len(second)):
                out[i, j] = iou_distance(a, second[j])
                if symmetric:
                    out[j, i] = out[i, j]
        return out

    return pairwise(y_masks, s_masks, False), pairwise(s_masks, s_masks, True), pairwise(y_masks, y_masks, True)


def _merge(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def generalised_energy_distance(samples: Sequence[np.ndarray], annotations: Sequence[np.ndarray]) -> float:
    """Squared generalised energy distance ``D²_GED`` between predicted samples and reference annotations.

    ``D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with ``d = 1 - IoU`` (Kohl et al., *A Probabilistic U-Net
    for Segmentation of Ambiguous Images*, NeurIPS 2018, Eq. 5; the metric of the Hierarchical Probabilistic U-Net
    too). The expectations are means over all pairs, each sample and annotation paired with itself included (as the
    authors' evaluation code, ``SimonKohl/probabilistic_unet`` ``evaluation/eval_cityscapes.py``, computes them);
    two empty masks are at distance 0. 0 when the samples reproduce the annotations' distribution; larger is worse.

    Args:
        samples: N predicted masks of one class.
        annotations: M reference masks of that class (several raters).
    """
    d_ys, d_ss, d_yy = energy_distance_terms(samples, annotations)
    return float(2 * d_ys.mean() - d_ss.mean() - d_yy.mean())
