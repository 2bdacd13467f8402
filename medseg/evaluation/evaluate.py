"""Evaluate a folder of predicted label maps against references: pairing, per-case metrics, ``metrics.csv``, summary.

References come from a folder (paired with predictions by case id: the file name without its image ending,
``case_001.nii.gz`` → ``case_001``) or from a dataset manifest (its labelled cases; label names and images come
from there too). Each case is evaluated in a worker process (``workers``); the result is one row per case × class
(see :mod:`medseg.evaluation.metrics` and ``METRICS.md`` for definitions and the empty-mask rules) and a summary
whose keys match nnU-Net v2's ``summary.json`` where they overlap (``metric_per_case``, ``mean``,
``foreground_mean``, and per-class ``Dice``, ``IoU``, ``TP``, ``FP``, ``FN``, ``TN``, ``n_pred``, ``n_ref``).

Samples: with ``ged`` among the metrics, each case's predicted samples (``PRED/samples/CASE``, one channel per draw,
from ``medseg predict --samples N --save-samples``) are scored against its reference annotations — the reference
and the case's file in every ``annotations`` folder (other raters) — with the squared generalised energy distance,
per class (:func:`medseg.evaluation.metrics.generalised_energy_distance`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from medseg.errors import EvaluationError
from medseg.evaluation.metric_table import metric_spec
from medseg.evaluation.metrics import (
    METRIC_NAMES,
    SAMPLE_METRIC_NAMES,
    STATUS_BOTH_EMPTY,
    STATUS_FALSE_POSITIVE,
    STATUS_MISSED,
    STATUS_OK,
    empty_penalty_mm,
    generalised_energy_distance,
    metric_keys,
    metrics_in_box,
)
from medseg.io.naming import DICOM_SUFFIX, LABEL_SUFFIXES, SAMPLES_FOLDER, SEGMENTATION_SUFFIXES, case_id_of
from medseg.io.naming import case_id as safe_case_id
from medseg.utils.files import atomic_json, atomic_text, atomic_write_many

#: What to do with references that have no prediction.
Missing = Literal["error", "empty", "skip"]
#: Confusion-count keys, as nnU-Net names them.
COUNT_KEYS: tuple[str, ...] = ("TP", "FP", "FN", "TN", "n_pred", "n_ref")
#: Percentiles reported in the summary statistics.
PERCENTILES: tuple[int, ...] = (5, 25, 75, 95)
#: How HD95 pools the two directions (see ``METRICS.md``).
HD95_POOLING = "max"


def _short(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def list_case_files(folder: str | Path, what: str = "folder", endings: Sequence[str] = LABEL_SUFFIXES
                    ) -> dict[str, Path]:
    """Image files (by ``endings``) directly in ``folder`` by case id (:func:`medseg.io.naming.case_id_of`).

    Hidden files, sub-folders and RT Structure Sets are ignored.

    Raises:
        EvaluationError: The folder is missing, or two files share a case id (``a.nii`` and ``a.nii.gz``, or
            ``a b.nii.gz`` and ``a_b.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{what} folder not found", folder)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        case_id = case_id_of(path, endings)
        if case_id is None or _is_structure_set(path):
            continue
        if case_id in found:
            raise EvaluationError(f"two files for case {case_id}: {found[case_id].name} and {path.name}", folder)
        found[case_id] = path
    return found


def _is_structure_set(path: Path) -> bool:
    """Whether a ``.dcm`` file is an RT Structure Set (contours, not a label map; written beside SEGs)."""
    if path.suffix.lower() != DICOM_SUFFIX:
        return False
    from medseg.io.rtstruct import is_rtstruct

    return is_rtstruct(path)


def referenced_series_uid(path: str | Path) -> str | None:
    """The SeriesInstanceUID a DICOM Segmentation file refers to, or ``None`` (not a SEG, or no reference)."""
    if Path(path).suffix.lower() != DICOM_SUFFIX:
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["ReferencedSeriesSequence"])
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) or None
    except Exception:  # not DICOM, or no reference: paired by case id only
        return None


def _series_uid_of(path: Path) -> str | None:
    """The SeriesInstanceUID of a DICOM series (folder or file) or the one a SEG refers to; ``None`` otherwise."""
    if path.is_file():
        return referenced_series_uid(path) or (_dicom_series_uid(path) if path.suffix.lower() == DICOM_SUFFIX
                                               else None)
    if path.is_dir():
        return _dicom_series_uid(path)
    return None


def _dicom_series_uid(path: Path) -> str | None:
    from medseg.errors import MedsegError
    from medseg.io import scan_dicom

    try:
        series = scan_dicom(path)
    except MedsegError:
        return None
    return series[0].series_instance_uid or None if len(series) == 1 else None


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate.

    Attributes:
        case_id: The case id.
        reference: Reference label map.
        prediction: Predicted label map, or ``None`` when it is missing and evaluated as empty (``missing="empty"``).
        image: Image for overlays (first channel is shown), when known.
        samples: The prediction's per-sample label maps (one channel per sample), for sample metrics (``ged``).
        annotations: Further reference annotations of the case (other raters), for sample metrics.
    """

    case_id: str
    reference: Path
    prediction: Path | None
    image: Path | None = None
    samples: Path | None = None
    annotations: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Pairing:
    """Predictions paired with references.

    Attributes:
        pairs: The cases to evaluate, in reference order.
        label_names: Label value → name from a manifest (foreground and background), or ``None`` for a folder.
        unpaired_predictions: Prediction case ids with no reference (not evaluated).
        missing_predictions: Reference case ids with no prediction (evaluated as empty or skipped, per ``missing``).
        missing: The rule applied to missing predictions.
    """

    pairs: list[CasePair]
    label_names: dict[int, str] | None
    unpaired_predictions: list[str]
    missing_predictions: list[str]
    missing: Missing = "error"


def _image_for(case_id: str, images: Mapping[str, Path]) -> Path | None:
    return images.get(case_id) or images.get(f"{case_id}_0000")


def pair_cases(
    pred_dir: str | Path,
    ref: str | Path,
    *,
    images_dir: str | Path | None = None,
    missing: Missing = "error",
) -> Pairing:
    """Pair predictions with references by case id.

    Args:
        pred_dir: Folder of predicted label maps (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, …).
        ref: Folder of reference label maps, or a manifest (``.json``; its labelled cases are the references and its
            images are used for overlays).
        images_dir: Folder of images for overlays, paired by case id (``case.nii.gz`` or nnU-Net's
            ``case_0000.nii.gz``); overrides the manifest's images.
        missing: References without a prediction: ``"error"`` (default) lists them in an error; ``"empty"``
            evaluates them as empty predictions (every present class a miss, kept in all means); ``"skip"`` leaves
            them out (listed in the summary).

    Raises:
        EvaluationError: Missing predictions (with ``missing="error"``), no pairs at all, duplicate case ids.
        ManifestError: A malformed manifest.
    """
    if missing not in ("error", "empty", "skip"):
        raise EvaluationError(f"missing must be 'error', 'empty' or 'skip', got {missing!r}")
    predictions = list_case_files(pred_dir, "prediction", SEGMENTATION_SUFFIXES)
    ref = Path(ref)
    label_names: dict[int, str] | None = None
    images: dict[str, Path] = {}
    if ref.is_file():
        from medseg.data import load_manifest

        manifest = load_manifest(ref)
        references: dict[str, Path] = {}
        for case in manifest.labelled_cases:
            label_path = manifest.label_path(case)
            assert label_path is not None
            references[safe_case_id(case.id)] = label_path
            images[safe_case_id(case.id)] = manifest.image_paths(case)[0]
        if not references:
            raise EvaluationError("the manifest has no labelled cases to use as references", ref)
        label_names = {int(v): str(k) for k, v in manifest.labels.items()}
    elif ref.is_dir():
        references = list_case_files(ref, "reference", SEGMENTATION_SUFFIXES)
    else:
        raise EvaluationError("reference folder or manifest not found", ref)
    if images_dir is not None:
        images = list_case_files(images_dir, "image")
    if not references:
        raise EvaluationError("no reference label maps (.nii.gz, .nii, .nrrd, .mha, DICOM SEG) found", ref)
    predictions = _pair_segs_by_series(predictions, references, images)

    absent = [c for c in references if c not in predictions]
    unpaired = [c for c in predictions if c not in references]
    if absent and missing == "error":
        raise EvaluationError(
            f"{len(absent)} of {len(references)} references have no prediction in {pred_dir}: {_short(absent)} "
            "(use --missing empty to count them as empty predictions, or --missing skip to leave them out)"
        )
    pairs = []
    for case_id, ref_path in references.items():
        pred_path = predictions.get(case_id)
        if pred_path is None and missing == "skip":
            continue
        pairs.append(CasePair(case_id, ref_path, pred_path, _image_for(case_id, images)))
    if not pairs:
        raise EvaluationError(f"no prediction in {pred_dir} has a reference (case ids: {_short(unpaired)})", ref)
    return Pairing(pairs, label_names, unpaired, absent, missing)


def attach_samples(pairing: Pairing, samples_dir: str | Path, annotation_dirs: Sequence[str | Path] = ()
                   ) -> Pairing:
    """The pairing with each case's samples (``samples_dir``) and further annotations (``annotation_dirs``).

    Files are paired by case id, as predictions are.

    Raises:
        EvaluationError: A case has no samples file, or an annotation folder has no file for a case.
    """
    samples = list_case_files(samples_dir, "samples", LABEL_SUFFIXES) if Path(samples_dir).is_dir() else {}
    folders = [(Path(d), list_case_files(d, "annotation", LABEL_SUFFIXES)) for d in annotation_dirs]
    absent = [p.case_id for p in pairing.pairs if p.case_id not in samples]
    if absent:
        raise EvaluationError(f"no samples for {len(absent)} of {len(pairing.pairs)} cases ({_short(absent)}): the "
                              "generalised energy distance scores the label maps of each draw, which `medseg predict "
                              "--samples N --save-samples` writes there", samples_dir)
    for folder, files in folders:
        lacking = [p.case_id for p in pairing.pairs if p.case_id not in files]
        if lacking:
            raise EvaluationError(f"no annotation for {len(lacking)} of {len(pairing.pairs)} cases: {_short(lacking)}",
                                  folder)
    pairs = [replace(p, samples=samples[p.case_id], annotations=tuple(files[p.case_id] for _, files in folders))
             for p in pairing.pairs]
    return replace(pairing, pairs=pairs)


def _pair_segs_by_series(predictions: dict[str, Path], references: Mapping[str, Path],
                         images: Mapping[str, Path]) -> dict[str, Path]:
    """Pair DICOM SEG predictions named by no reference's case id with the case of the series they refer to.

    A reference case is that series' case when its image is that DICOM series, or its reference is a SEG of it.
    """
    unmatched = {cid: p for cid, p in predictions.items()
                 if cid not in references and p.suffix.lower() == DICOM_SUFFIX}
    if not unmatched:
        return predictions
    by_series: dict[str, str] = {}
    for cid in references:
        for source in (images.get(cid), references[cid]):
            uid = _series_uid_of(Path(source)) if source is not None else None
            if uid:
                by_series.setdefault(uid, cid)
    paired = dict(predictions)
    for cid, path in unmatched.items():
        target = by_series.get(referenced_series_uid(path) or "")
        if target is not None and target not in paired:
            paired[target] = paired.pop(cid)
    return paired


def parse_labels(
    spec: str | Sequence[str | int] | None, names: Mapping[int, str] | None = None
) -> dict[int, str] | None:
    """Parse ``--labels``: values (``1,2``), names known from a manifest (``liver,spleen``) or ``name=value`` pairs.

    Returns:
        Label value → name, or ``None`` when ``spec`` is empty (evaluate every foreground label).

    Raises:
        EvaluationError: An unknown name, a negative or malformed value, or a repeated value.
    """
    if spec is None:
        return None
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        return None
    by_name = {v: k for k, v in (names or {}).items()}
    out: dict[int, str] = {}
    for item in items:
        name, sep, value_text = item.partition("=")
        if sep:
            name, value_text = name.strip(), value_text.strip()
        else:
            name, value_text = "", item
        if value_text.lstrip("+").isdigit():
            value = int(value_text)
            name = name or (names or {}).get(value, str(value))
        elif not sep and value_text in by_name:
            value, name = by_name[value_text], value_text
        else:
            known = f" (known names: {', '.join(by_name)})" if by_name else ""
            raise EvaluationError(f"--labels: {item!r} is not a label value, known name or name=value{known}")
        if value in out:
            raise EvaluationError(f"--labels: label {value} is listed twice")
        out[value] = name
    return out


# ---------------------------------------------------------------------------------------------------------------------
# One case (runs in a worker process)


@dataclass
class CaseResult:
    """Metrics of one case.

    Attributes:
        case_id: The case id.
        reference: Reference file.
        prediction: Prediction file, or ``None`` when evaluated as an empty prediction.
        image: Image file for overlays, if any.
        shape: Spatial shape of the reference grid.
        spacing: Reference voxel spacing in mm.
        penalty_mm: Distance reported when exactly one mask is empty (image diagonal).
        n_voxels: Voxels in the reference grid.
        resampled: Whether the prediction was resampled onto the reference grid.
        reoriented: Whether the prediction was stored in another axis order on the reference's world grid and was
            reoriented losslessly (:func:`medseg.io.align.match_grid`).
        metrics: Label value → result of :func:`medseg.evaluation.metrics.metrics_in_box` (and the sample metrics).
        n_samples: Samples scored by the sample metrics (0 without them).
        n_annotations: Annotations they were scored against (the reference and the further ones).
    """

    case_id: str
    reference: Path
    prediction: Path | None
    image: Path | None
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    penalty_mm: float
    n_voxels: int
    resampled: bool
    reoriented: bool = False
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    n_samples: int = 0
    n_annotations: int = 0

    @property
    def foreground_dice(self) -> float:
        """Mean Dice over this case's foreground classes (NaN without Dice)."""
        values = [m["Dice"] for v, m in self.metrics.items() if v != 0 and "Dice" in m]
        return float(np.mean(values)) if values else math.nan


@dataclass(frozen=True)
class _CaseTask:
    pair: CasePair
    labels: tuple[int, ...] | None
    metrics: tuple[str, ...]
    tolerances: tuple[float, ...]
    resample_to_ref: bool


def read_label_map(path: str | Path) -> tuple[np.ndarray, Any]:
    """Load a label map as a non-negative integer array ``(*spatial)`` and its image (for the geometry).

    Raises:
        EvaluationError: More than one channel, non-integer, non-finite or negative values.
        ImageReadError: The file cannot be read.
    """
    from medseg.io import load_image

    image = load_image(path)
    if image.shape[0] != 1:
        raise EvaluationError(f"a label map must have one channel, found {image.shape[0]}", path)
    array = np.asarray(image.array if hasattr(image, "array") else image)[0]
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise EvaluationError("label map holds NaN or infinite values", path)
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise EvaluationError("label map holds non-integer values (is it a probability map?)", path)
        array = rounded.astype(np.int32)
    if array.size and int(array.min()) < 0:
        raise EvaluationError(f"label map holds negative values (min {int(array.min())})", path)
    return array, image


def read_sample_maps(path: str | Path, ref_image: Any, resample: bool, case_id: str = "") -> np.ndarray:
    """Per-sample label maps (one channel per sample) as ``(N, *spatial)`` integers on the reference's grid.

    Raises:
        EvaluationError: Non-integer or negative values, or another grid (unless ``resample``: nearest neighbour).
    """
    from medseg.io import load_image
    from medseg.io.align import match_grid

    image = load_image(path)
    match = match_grid(image, ref_image)
    if match.image is not None:
        image = match.image
    elif not resample:
        raise EvaluationError(f"case {case_id}: the samples' grid differs from the reference's; reference vs samples: "
                              f"{'; '.join(match.differences)} (pass --resample-to-ref)", path)
    array = np.asarray(image.array if hasattr(image, "array") else image)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.all(np.isfinite(array)) or not np.array_equal(rounded, array):
            raise EvaluationError("samples hold non-integer values (label maps expected, one channel per sample)",
                                  path)
        array = rounded.astype(np.int32)
    if array.size and int(array.min()) < 0:
        raise EvaluationError(f"samples hold negative values (min {int(array.min())})", path)
    if match.image is None:
        shape = tuple(int(s) for s in ref_image.shape[1:])
        affine, ref_affine = np.asarray(image.meta["affine"]), np.asarray(ref_image.meta["affine"])
        array = np.stack([resample_nearest(a, affine, shape, ref_affine) for a in array])
    return array


def resample_nearest(
    array: np.ndarray, affine: np.ndarray, target_shape: Sequence[int], target_affine: np.ndarray
) -> np.ndarray:
    """Resample a label map onto another grid (nearest neighbour; outside the source is background).

    Args:
        array: Label map ``(*spatial)``.
        affine: Its 4×4 voxel-to-world affine.
        target_shape: Spatial shape of the target grid.
        target_affine: 4×4 affine of the target grid.
    """
    n = array.ndim
    target_to_source = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, np.float64)
    return ndimage.affine_transform(
        array,
        target_to_source[:n, :n],
        offset=target_to_source[:n, 3],
        output_shape=tuple(int(s) for s in target_shape),
        order=0,
        mode="constant",
        cval=0,
    )


#: Largest label value counted with a table indexed by value; larger values are counted by sorting instead, so a
#: label value of 2**30 costs no 8 GiB table.
_BINCOUNT_MAX = 65_535


def label_counts(array: np.ndarray) -> dict[int, int]:
    """Voxels per non-zero label value present in ``array`` (memory bounded by the array, whatever the values)."""
    flat = array.ravel()
    if flat.size == 0:
        return {}
    top = int(flat.max())
    if top <= _BINCOUNT_MAX:
        counts = np.bincount(flat.astype(np.int64, copy=False), minlength=1)
        values = np.flatnonzero(counts)
        return {int(v): int(counts[v]) for v in values if v > 0}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts, strict=True) if v > 0}


def on_reference_grid(pred: np.ndarray, pred_image: Any, ref_image: Any, resample: bool,
                      path: str | Path | None = None, case_id: str = "") -> tuple[np.ndarray, bool, bool]:
    """A predicted label map on the reference's grid: as it is, reoriented, or resampled.

    Reoriented losslessly when it is the same world grid in another axis order; resampled (nearest neighbour) only
    when ``resample`` allows it.

    Returns:
        The label map, whether it was resampled, whether it was reoriented.

    Raises:
        EvaluationError: The grids differ and ``resample`` is false; the message lists the reference first.
    """
    from medseg.io.align import match_grid

    match = match_grid(pred_image, ref_image)
    if match.image is not None:
        return (np.asarray(match.image)[0] if match.reoriented else pred), False, match.reoriented
    if not resample:
        raise EvaluationError(f"case {case_id}: the prediction's grid differs from the reference's; reference vs "
                              f"prediction: {'; '.join(match.differences)} (resample it, or pass --resample-to-ref)",
                              path)
    shape = tuple(int(s) for s in ref_image.shape[1:])
    affine = np.asarray(ref_image.meta["affine"])
    return resample_nearest(pred, np.asarray(pred_image.meta["affine"]), shape, affine), True, False


def _present_labels(array: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Non-zero label values present in a label map, each with its bounding box (one pass over the array).

    Large label values are first renumbered to their rank, so memory never grows with the values themselves.
    """
    if array.size and int(array.max()) > _BINCOUNT_MAX:
        values, ranks = np.unique(array, return_inverse=True)
        boxes = ndimage.find_objects(ranks.reshape(array.shape).astype(np.int32) + (1 if values[0] != 0 else 0))
        offset = 0 if values[0] == 0 else 1
        return {int(values[i - offset]): box for i, box in enumerate(boxes, start=1)
                if box is not None and values[i - offset] != 0}
    boxes = ndimage.find_objects(array)
    return {value: box for value, box in enumerate(boxes, start=1) if box is not None}


def _merge_boxes(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def evaluate_case(
    pair: CasePair,
    labels: Sequence[int] | None = None,
    metrics: Sequence[str] = METRIC_NAMES,
    nsd_tolerances_mm: Sequence[float] = (1.0, 2.0),
    *,
    resample_to_ref: bool = False,
) -> CaseResult:
    """Evaluate one case: load both label maps, check the grids, compute the metrics of every class.

    Args:
        pair: The files.
        labels: Label values to evaluate; ``None``: every non-zero value present in either map.
        metrics: Metric names.
        nsd_tolerances_mm: NSD tolerances.
        resample_to_ref: Resample a prediction on another grid onto the reference grid (nearest neighbour)
            instead of raising an error.

    Raises:
        EvaluationError: The grids differ (and ``resample_to_ref`` is false), or a label map is unusable.
    """
    ref, ref_image = read_label_map(pair.reference)
    resampled = reoriented = False
    if pair.prediction is None:
        pred = np.zeros(ref.shape, dtype=np.uint8)
    else:
        pred, pred_image = read_label_map(pair.prediction)
        pred, resampled, reoriented = on_reference_grid(pred, pred_image, ref_image, resample_to_ref,
                                                        pair.prediction, pair.case_id)
    spacing = tuple(float(s) for s in ref_image.meta["spacing"])[: ref.ndim]
    penalty = empty_penalty_mm(ref.shape, spacing)
    ref_boxes, pred_boxes = _present_labels(ref), _present_labels(pred)
    values = sorted(set(ref_boxes) | set(pred_boxes)) if labels is None else [int(v) for v in labels]
    sample_metrics = [m for m in metrics if m.lower() in SAMPLE_METRIC_NAMES]
    samples: np.ndarray | None = None
    annotations: list[np.ndarray] = []
    if sample_metrics:
        if pair.samples is None:
            raise EvaluationError(f"case {pair.case_id}: {', '.join(sample_metrics)} needs the prediction's samples",
                                  pair.prediction)
        samples = read_sample_maps(pair.samples, ref_image, resample_to_ref, pair.case_id)
        annotations = [ref]
        for path in pair.annotations:
            other, other_image = read_label_map(path)
            annotations.append(on_reference_grid(other, other_image, ref_image, resample_to_ref, path,
                                                 pair.case_id)[0])
        if labels is None:
            found = {v for array in (*samples, *annotations[1:]) for v in _present_labels(np.asarray(array))}
            values = sorted(set(values) | found)
    result = CaseResult(
        case_id=pair.case_id,
        reference=pair.reference,
        prediction=pair.prediction,
        image=pair.image,
        shape=tuple(int(s) for s in ref.shape),
        spacing=spacing,
        penalty_mm=penalty,
        n_voxels=int(ref.size),
        resampled=resampled,
        reoriented=reoriented,
        n_samples=0 if samples is None else len(samples),
        n_annotations=len(annotations),
    )
    for value in values:
        if value == 0:
            box: tuple[slice, ...] | None = tuple(slice(0, s) for s in ref.shape)
        else:
            box = _merge_boxes(ref_boxes.get(value), pred_boxes.get(value))
        if box is None:
            box = tuple(slice(0, 0) for _ in ref.shape)
        result.metrics[value] = metrics_in_box(
            pred[box] == value,
            ref[box] == value,
            spacing,
            n_voxels=result.n_voxels,
            penalty_mm=penalty,
            metrics=metrics,
            nsd_tolerances_mm=nsd_tolerances_mm,
        )
        if samples is not None:
            result.metrics[value]["GED"] = generalised_energy_distance([s == value for s in samples],
                                                                       [a == value for a in annotations])
    return result


def _run_task(task: _CaseTask) -> CaseResult:
    return evaluate_case(task.pair, task.labels, task.metrics, task.tolerances, resample_to_ref=task.resample_to_ref)


def _both_empty(case: CaseResult, metrics: Sequence[str], tolerances: Sequence[float]) -> dict[str, Any]:
    """The metrics of a class absent from a case (with sample metrics, absent from its samples and annotations too).

    Both masks empty by the rules of ``METRICS.md``, and GED 0.
    """
    empty = np.zeros((0,) * len(case.shape), dtype=bool)
    out = metrics_in_box(
        empty,
        empty,
        case.spacing,
        n_voxels=case.n_voxels,
        penalty_mm=case.penalty_mm,
        metrics=metrics,
        nsd_tolerances_mm=tolerances,
    )
    if "ged" in metrics:
        out["GED"] = 0.0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The whole evaluation


@dataclass
class EvaluationResult:
    """The result of :func:`evaluate`.

    Attributes:
        cases: One result per evaluated case, in reference order.
        labels: Evaluated label value → name.
        metrics: Metric names computed.
        nsd_tolerances_mm: NSD tolerances.
        metric_keys: Result keys of the metrics (``Dice``, ``HD95``, ``NSD_1mm``, …).
        pairing: How predictions were paired with references.
        resample_to_ref: Whether predictions on other grids were resampled.
        prediction_dir: The predictions folder.
        reference: The reference folder or manifest.
    """

    cases: list[CaseResult]
    labels: dict[int, str]
    metrics: tuple[str, ...]
    nsd_tolerances_mm: tuple[float, ...]
    metric_keys: list[str]
    pairing: Pairing
    resample_to_ref: bool
    prediction_dir: Path
    reference: Path

    def rows(self) -> list[dict[str, Any]]:
        """One row per case × class: ``case_id``, ``label``, ``label_name``, ``status``, metrics, counts, files."""
        rows = []
        for case in self.cases:
            for value, name in self.labels.items():
                m = case.metrics[value]
                row: dict[str, Any] = {"case_id": case.case_id, "label": value, "label_name": name}
                row["status"] = m["status"]
                row.update({k: m[k] for k in self.metric_keys})
                row.update({k: m[k] for k in COUNT_KEYS})
                row["prediction_file"] = "" if case.prediction is None else str(case.prediction)
                row["reference_file"] = str(case.reference)
                rows.append(row)
        return rows

    def values(self, label: int, key: str) -> np.ndarray:
        """One metric of one class over all cases (never NaN: empty masks follow the documented rules)."""
        return np.array([float(c.metrics[label][key]) for c in self.cases], dtype=np.float64)

    def foreground_values(self, key: str) -> np.ndarray:
        """Per case, the mean of a metric over the foreground classes."""
        fg = [v for v in self.labels if v != 0] or list(self.labels)
        return np.array([np.mean([float(c.metrics[v][key]) for v in fg]) for c in self.cases], dtype=np.float64)


def evaluate(
    pred: str | Path,
    ref: str | Path,
    *,
    labels: Mapping[int, str] | Sequence[int] | str | None = None,
    metrics: Sequence[str] = METRIC_NAMES,
    nsd_tolerances_mm: Sequence[float] = (1.0, 2.0),
    workers: int = 1,
    resample_to_ref: bool = False,
    missing: Missing = "error",
    images: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    annotations: Sequence[str | Path] = (),
    samples_dir: str | Path | None = None,
) -> EvaluationResult:
    """Evaluate every prediction in ``pred`` against its reference.

    Args:
        pred: Folder of predicted label maps.
        ref: Folder of reference label maps, or a dataset manifest.
        labels: Label values to evaluate: a value → name mapping, values, or a ``--labels`` text
            (:func:`parse_labels`: ``"1,2"``, ``"liver,spleen"``, ``"liver=1"``). Default: the manifest's foreground
            labels, or for a folder every non-zero value found in any reference or prediction.
        metrics: Metric names (:data:`~medseg.evaluation.metrics.METRIC_NAMES`).
        nsd_tolerances_mm: NSD tolerances in mm.
        workers: Worker processes (1: evaluate in this process).
        resample_to_ref: Resample predictions on another grid onto the reference grid (nearest neighbour).
        missing: References without a prediction: ``"error"``, ``"empty"`` or ``"skip"`` (:func:`pair_cases`).
        images: Folder of images for the report's overlays (default: the manifest's images).
        progress: Called as ``progress(done, total, case_id)`` after each case.
        annotations: Folders of further reference annotations (other raters), paired by case id; with ``ged`` the
            samples are scored against the reference and these.
        samples_dir: Folder of the per-sample label maps for ``ged`` (default: ``pred/samples``).

    Raises:
        EvaluationError: Pairing problems, grid mismatches, unusable label maps, unknown metrics, ``ged`` without
            samples, annotations without ``ged``.
    """
    try:
        keys = metric_keys(metrics, nsd_tolerances_mm)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    chosen = tuple(dict.fromkeys(m.lower() for m in metrics))
    tolerances = tuple(float(t) for t in nsd_tolerances_mm) if "nsd" in chosen else ()
    pairing = pair_cases(pred, ref, images_dir=images, missing=missing)
    if any(m in SAMPLE_METRIC_NAMES for m in chosen):
        pairing = attach_samples(pairing, samples_dir if samples_dir is not None else Path(pred) / SAMPLES_FOLDER,
                                 annotations)
    elif annotations:
        raise EvaluationError("further annotations are scored by the sample metric only: add ged to the metrics")
    if isinstance(labels, str):
        labels = parse_labels(labels, pairing.label_names)
    elif labels is not None and not isinstance(labels, Mapping):
        names = pairing.label_names or {}
        labels = {int(v): names.get(int(v), str(int(v))) for v in labels}
    if labels is None and pairing.label_names is not None:
        labels = {v: n for v, n in pairing.label_names.items() if v != 0}
    if labels is not None and not labels:
        raise EvaluationError("no labels to evaluate")
    values = None if labels is None else tuple(sorted(labels))
    tasks = [_CaseTask(p, values, chosen, tolerances, resample_to_ref) for p in pairing.pairs]
    results = _run_all(tasks, max(1, int(workers)), progress)

    if labels is None:
        found = sorted({v for r in results for v in r.metrics})
        if not found:
            raise EvaluationError("no foreground label in any reference or prediction; pass --labels", ref)
        labels = {v: str(v) for v in found}
    labels = dict(sorted(labels.items()))
    for r in results:
        for value in labels:
            if value not in r.metrics:
                r.metrics[value] = _both_empty(r, chosen, tolerances)
    return EvaluationResult(
        cases=results,
        labels=labels,
        metrics=chosen,
        nsd_tolerances_mm=tolerances,
        metric_keys=keys,
        pairing=pairing,
        resample_to_ref=resample_to_ref,
        prediction_dir=Path(pred),
        reference=Path(ref),
    )


def _run_all(
    tasks: list[_CaseTask], workers: int, progress: Callable[[int, int, str], None] | None
) -> list[CaseResult]:
    total = len(tasks)
    if workers == 1 or total == 1:
        results = []
        for i, task in enumerate(tasks, start=1):
            results.append(_run_task(task))
            if progress is not None:
                progress(i, total, task.pair.case_id)
        return results
    # fork on Linux, as torch's DataLoader does: workers start at once instead of importing torch again (seconds
    # each); they only read files and run numpy/scipy. Elsewhere (macOS, Windows) spawn, the safe default there.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    by_index: dict[int, CaseResult] = {}
    with ProcessPoolExecutor(max_workers=min(workers, total), mp_context=context) as pool:
        futures = {pool.submit(_run_task, task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                index = futures[future]
                by_index[index] = future.result()
                if progress is not None:
                    progress(len(by_index), total, tasks[index].pair.case_id)
    return [by_index[i] for i in range(total)]


def default_workers() -> int:
    """Default worker count: the CPUs available, at most 4 (each worker holds one case's two label maps)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


# ---------------------------------------------------------------------------------------------------------------------
# Outputs


def metrics_csv_text(result: EvaluationResult) -> str:
    """The text of ``metrics.csv``: one row per case × class (see :meth:`EvaluationResult.rows`)."""
    columns = ["case_id", "label", "label_name", "status", *result.metric_keys, *COUNT_KEYS]
    columns += ["prediction_file", "reference_file"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows():
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_metrics_csv(result: EvaluationResult, path: str | Path) -> Path:
    """Write ``metrics.csv`` atomically (:func:`metrics_csv_text`)."""
    return atomic_text(path, metrics_csv_text(result))


def statistics(values: np.ndarray) -> dict[str, float | int]:
    """``n``, ``mean``, ``std`` (population), ``median``, ``min``, ``max`` and percentiles ``p5``–``p95``."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"n": 0}
    out: dict[str, float | int] = {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }
    out.update({f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES})
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def summarize(result: EvaluationResult) -> dict[str, Any]:
    """The content of ``summary.json``.

    Keys shared with nnU-Net v2: ``metric_per_case`` (list of ``{"metrics": {label: {...}}, "prediction_file",
    "reference_file"}``), ``mean`` (``{label: {key: mean}}``, label values as strings) and ``foreground_mean``
    (``{key: mean of the per-class means}``). medseg adds ``case_id`` per case, ``labels`` (value → name),
    ``statistics`` and ``foreground_statistics`` (mean, std, median, min, max, p5, p25, p75, p95 of each metric),
    ``counts`` (per class: cases, ok, both_empty, missed, false_positive), the pairing lists and the definitions.
    Unlike nnU-Net, nothing is NaN: both-empty cases score Dice 1 and are in the means (``METRICS.md``).
    """
    keys = [*result.metric_keys, *COUNT_KEYS]
    per_case = []
    for case in result.cases:
        per_case.append(
            {
                "case_id": case.case_id,
                "metrics": {
                    str(v): {k: _json_value(case.metrics[v][k]) for k in ["status", *keys]} for v in result.labels
                },
                "prediction_file": None if case.prediction is None else str(case.prediction),
                "reference_file": str(case.reference),
                "spacing": list(case.spacing),
                "shape": list(case.shape),
                "penalty_mm": case.penalty_mm,
                "resampled": case.resampled,
                "reoriented": case.reoriented,
            }
        )
        if case.n_samples:
            per_case[-1].update(n_samples=case.n_samples, n_annotations=case.n_annotations)
    mean = {str(v): {k: float(result.values(v, k).mean()) for k in keys} for v in result.labels}
    fg = [v for v in result.labels if v != 0] or list(result.labels)
    foreground_mean = {k: float(np.mean([mean[str(v)][k] for v in fg])) for k in keys}
    stats = {str(v): {k: statistics(result.values(v, k)) for k in result.metric_keys} for v in result.labels}
    fg_stats = {k: statistics(result.foreground_values(k)) for k in result.metric_keys}
    counts = {}
    for v in result.labels:
        statuses = [c.metrics[v]["status"] for c in result.cases]
        counts[str(v)] = {
            "cases": len(statuses),
            STATUS_OK: statuses.count(STATUS_OK),
            STATUS_BOTH_EMPTY: statuses.count(STATUS_BOTH_EMPTY),
            STATUS_MISSED: statuses.count(STATUS_MISSED),
            STATUS_FALSE_POSITIVE: statuses.count(STATUS_FALSE_POSITIVE),
        }
    return {
        "metric_per_case": per_case,
        "mean": mean,
        "foreground_mean": foreground_mean,
        "labels": {str(v): n for v, n in result.labels.items()},
        "statistics": stats,
        "foreground_statistics": fg_stats,
        "counts": counts,
        "n_cases": len(result.cases),
        "unpaired_predictions": result.pairing.unpaired_predictions,
        "missing_predictions": result.pairing.missing_predictions,
        "settings": {
            "prediction_dir": str(result.prediction_dir),
            "reference": str(result.reference),
            "metrics": list(result.metrics),
            "nsd_tolerances_mm": list(result.nsd_tolerances_mm),
            "missing": result.pairing.missing,
            "resample_to_ref": result.resample_to_ref,
        },
        "metrics": {k: metric_spec(k).to_dict() for k in result.metric_keys},
        "definitions": {
            "surface": "border voxels (foreground with a face-neighbour in the background); distances between "
            "border-voxel centres in mm (exact Euclidean distance transform with the voxel spacing)",
            "HD95": "max of the two directed 95th percentiles (as MONAI); not medpy's pooled percentile",
            "ASSD": "mean of the border distances of both directions pooled together",
            "NSD": "fraction of both borders' voxels within the tolerance (inclusive) of the other border",
            "both_empty": "Dice = IoU = NSD = 1, distances 0; included in all means, counted in counts.both_empty",
            "one_empty": "Dice = IoU = NSD = 0, distances = penalty_mm (diagonal of the image extent); included in "
            "all means, counted in counts.missed (prediction empty) or counts.false_positive (reference empty)",
            "foreground": "foreground_mean: mean of the per-class means; foreground_statistics: statistics over "
            "cases of each case's mean over the foreground classes",
            "std": "population standard deviation",
            **({"GED": "squared generalised energy distance 2E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')], d = 1 - IoU of "
                       "the class (0 for two empty masks), over all pairs of the case's samples S and annotations Y "
                       "(the reference and the further annotations)"} if "GED" in result.metric_keys else {}),
        },
    }


def write_summary_json(result: EvaluationResult, path: str | Path) -> Path:
    """Write ``summary.json`` (:func:`summarize`) atomically."""
    return atomic_json(path, summarize(result))


def write_evaluation(result: EvaluationResult, out_dir: str | Path, *, report_html: str | None = None
                     ) -> dict[str, Path]:
    """Write ``metrics.csv``, ``summary.json`` and (when given) ``report.html`` into ``out_dir`` as one.

    Every file is staged before any replaces its previous version (:func:`medseg.utils.files.atomic_write_many`),
    so a failure (a full disk, a read-only folder) leaves the previous results complete and consistent.

    Returns:
        The files written, by kind (``csv``, ``json``, ``html``).
    """
    out = Path(out_dir)
    contents: dict[str, tuple[Path, str]] = {
        "csv": (out / "metrics.csv", metrics_csv_text(result)),
        "json": (out / "summary.json", json.dumps(summarize(result), indent=2, allow_nan=False) + "\n"),
    }
    if report_html is not None:
        contents["html"] = (out / "report.html", report_html)
    atomic_write_many({path: text for path, text in contents.values()})
    return {kind: path for kind, (path, _) in contents.items()}
