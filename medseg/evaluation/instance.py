"""Evaluating instance segmentations: panoptic quality, aggregated Jaccard index, instance F1, per-object volumes.

A reference and a prediction are instance label maps (0 background, one id per object) with a class per object:
the reference's from its manifest (``classes``, or the one foreground class), the prediction's from the
``<case>_instances.json`` that ``medseg predict`` writes beside it (without one, every predicted object has the
manifest's first foreground class).

Definitions (``METRICS.md``):

- **matching**: a reference object and a predicted object of the same class match when their IoU is above 0.5;
  objects of one map do not overlap, so each object matches at most one other (Kirillov et al., "Panoptic
  Segmentation", CVPR 2019, Theorem 1). Matches are TP, unmatched predictions FP, unmatched references FN.
- **PQ** = SQ × RQ with SQ = mean IoU of the matches and RQ = TP / (TP + FP/2 + FN/2); **F1** = 2TP / (2TP + FP +
  FN) (instance F1 at IoU 0.5, equal to RQ). Per case and class, and pooled over all cases (TP, FP, FN and the IoU
  sum added up first, as the PQ paper computes a dataset's PQ). The ``all`` row matches objects whatever their class.
- **AJI** (Kumar et al., "A Dataset and a Technique for Generalized Nuclear Segmentation for Computational
  Pathology", IEEE TMI 2017, Algorithm 1), classes ignored: every reference object adds its intersection and union
  with the predicted object of highest IoU with it to C and U (its own size to U when no prediction touches it), and
  every predicted object chosen by none adds its size to U; AJI = C / U.
- **empty**: no reference and no predicted object (of a class): PQ = SQ = RQ = F1 = AJI = 1 (status ``both_empty``);
  objects on one side only: 0 (``missed`` or ``false_positive``). Nothing is NaN and every case counts in the means.
- **volumes**: every object's voxels times the voxel volume in mm³ (a picture is one slice of 1 mm), in
  ``instances.csv`` with its class, its matched partner and their IoU.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import EvaluationError
from medseg.evaluation.metric_table import INSTANCE_METRICS, metric_spec
from medseg.evaluation.metrics import STATUS_BOTH_EMPTY, STATUS_FALSE_POSITIVE, STATUS_MISSED, STATUS_OK
from medseg.utils.files import atomic_write_many, read_json

__all__ = [
    "ALL_CLASSES",
    "InstanceCaseResult",
    "InstanceEvaluation",
    "Matching",
    "aggregated_jaccard_index",
    "evaluate_instance_case",
    "evaluate_instances",
    "match_objects",
    "overlaps",
    "panoptic_quality",
    "prediction_classes",
    "summarize_instances",
    "write_instance_evaluation",
]

#: The pseudo-class of the class-agnostic row.
ALL_CLASSES = 0
#: Counts of an instance evaluation row.
COUNT_KEYS = ("TP", "FP", "FN", "n_ref", "n_pred")
#: Metric keys of an instance evaluation row.
METRIC_KEYS = tuple(m.key for m in INSTANCE_METRICS)
#: Ending of the per-case object tables ``medseg predict`` writes.
INSTANCES_SUFFIX = "_instances.json"


def overlaps(reference: np.ndarray, prediction: np.ndarray) -> tuple[dict[int, int], dict[int, int],
                                                                         dict[tuple[int, int], int]]:
    """Voxels per reference object, per predicted object, and per overlapping (reference, prediction) pair."""
    ref = np.asarray(reference).astype(np.int64, copy=False).ravel()
    pred = np.asarray(prediction).astype(np.int64, copy=False).ravel()
    r_ids, r_counts = np.unique(ref[ref > 0], return_counts=True)
    p_ids, p_counts = np.unique(pred[pred > 0], return_counts=True)
    both = (ref > 0) & (pred > 0)
    pairs: dict[tuple[int, int], int] = {}
    if both.any():
        width = int(pred.max()) + 1
        codes, counts = np.unique(ref[both] * width + pred[both], return_counts=True)
        pairs = {(int(c // width), int(c % width)): int(n) for c, n in zip(codes, counts, strict=True)}
    return ({int(i): int(n) for i, n in zip(r_ids, r_counts, strict=True)},
            {int(i): int(n) for i, n in zip(p_ids, p_counts, strict=True)}, pairs)


@dataclass
class Matching:
    """Matched objects of one class (or of all classes) in one case.

    Attributes:
        pairs: ``(reference id, prediction id, IoU)`` of the matches (IoU > 0.5).
        n_ref: Reference objects.
        n_pred: Predicted objects.
    """

    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    n_ref: int = 0
    n_pred: int = 0

    @property
    def tp(self) -> int:
        """Matched pairs."""
        return len(self.pairs)

    @property
    def fp(self) -> int:
        """Unmatched predictions."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Unmatched references."""
        return self.n_ref - self.tp

    @property
    def iou_sum(self) -> float:
        """Sum of the matches' IoU."""
        return float(sum(p[2] for p in self.pairs))


def match_objects(ref_sizes: Mapping[int, int], pred_sizes: Mapping[int, int],
                  pairs: Mapping[tuple[int, int], int], ref_classes: Mapping[int, int],
                  pred_classes: Mapping[int, int], cls: int | None) -> Matching:
    """Match the objects of class ``cls`` (``None``: every object, classes ignored) at IoU > 0.5."""
    refs = [r for r in ref_sizes if cls is None or ref_classes.get(r) == cls]
    preds = {p for p in pred_sizes if cls is None or pred_classes.get(p) == cls}
    wanted = set(refs)
    matched = []
    for (r, p), inter in pairs.items():
        if r in wanted and p in preds:
            iou = inter / (ref_sizes[r] + pred_sizes[p] - inter)
            if iou > 0.5:
                matched.append((r, p, float(iou)))
    return Matching(sorted(matched), len(refs), len(preds))


def panoptic_quality(tp: int, fp: int, fn: int, iou_sum: float) -> tuple[float, float, float]:
    """``(PQ, SQ, RQ)`` of counts; 1 for all three when there is no object at all, SQ 0 without a match."""
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0
    sq = iou_sum / tp if tp else 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return sq * rq, sq, rq


def aggregated_jaccard_index(ref_sizes: Mapping[int, int], pred_sizes: Mapping[int, int],
                             pairs: Mapping[tuple[int, int], int]) -> float:
    """AJI over all objects (see the module docstring); 1 when both maps are empty."""
    if not ref_sizes and not pred_sizes:
        return 1.0
    best: dict[int, tuple[float, int, int]] = {}
    for (r, p), inter in pairs.items():
        union = ref_sizes[r] + pred_sizes[p] - inter
        iou = inter / union
        if r not in best or iou > best[r][0] or (iou == best[r][0] and p < best[r][1]):
            best[r] = (iou, p, inter)
    c = u = 0
    used: set[int] = set()
    for r, size in ref_sizes.items():
        if r in best:
            _, p, inter = best[r]
            c += inter
            u += size + pred_sizes[p] - inter
            used.add(p)
        else:
            u += size
    u += sum(size for p, size in pred_sizes.items() if p not in used)
    return c / u if u else 1.0


def _status(match: Matching) -> str:
    if match.n_ref == 0 and match.n_pred == 0:
        return STATUS_BOTH_EMPTY
    if match.n_pred == 0:
        return STATUS_MISSED
    if match.n_ref == 0:
        return STATUS_FALSE_POSITIVE
    return STATUS_OK


def _row(match: Matching, aji: float | None = None) -> dict[str, Any]:
    pq, sq, rq = panoptic_quality(match.tp, match.fp, match.fn, match.iou_sum)
    f1 = 1.0 if match.tp + match.fp + match.fn == 0 else 2 * match.tp / (2 * match.tp + match.fp + match.fn)
    row: dict[str, Any] = {"status": _status(match), "PQ": pq, "SQ": sq, "RQ": rq, "F1": f1,
                           "AJI": float("nan") if aji is None else aji}
    row.update(TP=match.tp, FP=match.fp, FN=match.fn, n_ref=match.n_ref, n_pred=match.n_pred, iou_sum=match.iou_sum)
    return row


@dataclass
class InstanceCaseResult:
    """Instance metrics of one case.

    Attributes:
        case_id: The case.
        reference: Reference instance map.
        prediction: Predicted instance map (``None``: evaluated as empty).
        image: Image for overlays.
        spacing: Reference voxel spacing (mm).
        rows: Class value (``ALL_CLASSES`` for the class-agnostic row) → metrics and counts.
        objects: One entry per reference and predicted object: side, id, class, voxels, volume, partner, IoU.
        resampled: The prediction was resampled onto the reference grid.
        reoriented: The prediction was reoriented losslessly.
    """

    case_id: str
    reference: Path
    prediction: Path | None
    image: Path | None
    spacing: tuple[float, ...]
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(default_factory=list)
    resampled: bool = False
    reoriented: bool = False


def prediction_classes(path: Path | None, ids: Sequence[int], default: int) -> dict[int, int]:
    """The classes of predicted objects from ``<case>_instances.json`` beside the prediction (else ``default``)."""
    classes = {int(i): default for i in ids}
    if path is None:
        return classes
    name = path.name
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff", ".nhdr"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    table = path.parent / f"{name}{INSTANCES_SUFFIX}"
    if table.is_file():
        data = read_json(table, "object table", EvaluationError)
        for entry in data.get("instances", []) if isinstance(data, dict) else []:
            try:
                classes[int(entry["id"])] = int(entry["class"])
            except (KeyError, TypeError, ValueError):
                raise EvaluationError("every entry of 'instances' needs an integer 'id' and 'class'", table) from None
    return classes


def evaluate_instance_case(pair: Any, ref_classes: Mapping[int, int] | None, class_values: Sequence[int], *,
                           resample_to_ref: bool = False) -> InstanceCaseResult:
    """Evaluate one case (``pair`` a :class:`~medseg.evaluation.evaluate.CasePair`).

    Args:
        pair: The files.
        ref_classes: Reference object id → class (``None``: every object has ``class_values[0]``).
        class_values: The foreground classes evaluated.
        resample_to_ref: Resample a prediction on another grid (nearest neighbour) instead of refusing it.
    """
    from medseg.evaluation.evaluate import on_reference_grid, read_label_map

    ref, ref_image = read_label_map(pair.reference)
    resampled = reoriented = False
    if pair.prediction is None:
        pred = np.zeros(ref.shape, dtype=np.int32)
    else:
        pred, pred_image = read_label_map(pair.prediction)
        pred, resampled, reoriented = on_reference_grid(pred, pred_image, ref_image, resample_to_ref,
                                                        pair.prediction, pair.case_id)
    spacing = tuple(float(s) for s in ref_image.meta["spacing"])[: ref.ndim]
    voxel_mm3 = float(np.prod(spacing))
    ref_sizes, pred_sizes, pairs = overlaps(ref, pred)
    default = int(class_values[0]) if class_values else 1
    r_cls = {r: int((ref_classes or {}).get(r, default)) for r in ref_sizes}
    p_cls = prediction_classes(pair.prediction, list(pred_sizes), default)
    result = InstanceCaseResult(pair.case_id, pair.reference, pair.prediction, pair.image, spacing,
                                resampled=resampled, reoriented=reoriented)
    everything = match_objects(ref_sizes, pred_sizes, pairs, r_cls, p_cls, None)
    result.rows[ALL_CLASSES] = _row(everything, aggregated_jaccard_index(ref_sizes, pred_sizes, pairs))
    partner: dict[tuple[str, int], tuple[int, float]] = {}
    for cls in class_values:
        match = match_objects(ref_sizes, pred_sizes, pairs, r_cls, p_cls, int(cls))
        result.rows[int(cls)] = _row(match)
        for r, p, iou in match.pairs:
            partner[("reference", r)] = (p, iou)
            partner[("prediction", p)] = (r, iou)
    for side, sizes, classes in (("reference", ref_sizes, r_cls), ("prediction", pred_sizes, p_cls)):
        for obj, size in sorted(sizes.items()):
            other, iou = partner.get((side, obj), (0, 0.0))
            result.objects.append({"case_id": pair.case_id, "side": side, "id": obj, "class": classes[obj],
                                   "voxels": size, "volume_mm3": size * voxel_mm3,
                                   "matched_id": other or "", "iou": iou if other else ""})
    return result


@dataclass
class InstanceEvaluation:
    """The result of :func:`evaluate_instances`.

    Attributes:
        cases: One result per case, in reference order.
        classes: Evaluated class value → name.
        pairing: How predictions were paired with references.
        prediction_dir: The predictions folder.
        reference: The reference folder or manifest.
        resample_to_ref: Whether predictions on other grids were resampled.
    """

    cases: list[InstanceCaseResult]
    classes: dict[int, str]
    pairing: Any
    prediction_dir: Path
    reference: Path
    resample_to_ref: bool = False

    @property
    def row_classes(self) -> dict[int, str]:
        """The rows of every case: each class, then ``all`` (objects matched whatever their class, and AJI)."""
        rows = dict(self.classes)
        rows[ALL_CLASSES] = "all"
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """One row per case × class (and the class-agnostic ``all`` row)."""
        out = []
        for case in self.cases:
            for value, name in self.row_classes.items():
                row = {"case_id": case.case_id, "class": value, "class_name": name, **case.rows[value]}
                row.pop("iou_sum")
                row["prediction_file"] = "" if case.prediction is None else str(case.prediction)
                row["reference_file"] = str(case.reference)
                out.append(row)
        return out

    def values(self, cls: int, key: str) -> np.ndarray:
        """One metric of one class over the cases."""
        return np.array([float(c.rows[cls][key]) for c in self.cases], dtype=np.float64)

    def pooled(self, cls: int) -> dict[str, Any]:
        """PQ, SQ, RQ and F1 of one class from the counts and IoU sums of all cases added up."""
        tp = sum(c.rows[cls]["TP"] for c in self.cases)
        fp = sum(c.rows[cls]["FP"] for c in self.cases)
        fn = sum(c.rows[cls]["FN"] for c in self.cases)
        iou = sum(c.rows[cls]["iou_sum"] for c in self.cases)
        pq, sq, rq = panoptic_quality(tp, fp, fn, iou)
        f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        return {"PQ": pq, "SQ": sq, "RQ": rq, "F1": f1, "TP": tp, "FP": fp, "FN": fn}


def evaluate_instances(
    pred: str | Path,
    ref: str | Path,
    *,
    resample_to_ref: bool = False,
    missing: str = "error",
    images: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> InstanceEvaluation:
    """Evaluate every predicted instance map in ``pred`` against its reference.

    Args:
        pred: Folder of predicted instance maps (with ``<case>_instances.json`` beside them for their classes).
        ref: An instance manifest, or a folder of reference instance maps whose objects are all of class 1.
        resample_to_ref: Resample predictions on another grid (nearest neighbour).
        missing: References without a prediction: ``"error"``, ``"empty"`` or ``"skip"``.
        images: Folder of images for the report's overlays (default: the manifest's).
        progress: Called as ``progress(done, total, case_id)``.

    Raises:
        EvaluationError: Pairing problems, grid mismatches, unusable maps.
    """
    from medseg.evaluation.evaluate import pair_cases
    from medseg.io.naming import case_id as safe_case_id

    pairing = pair_cases(pred, ref, images_dir=images, missing=missing)  # type: ignore[arg-type]
    ref_path = Path(ref)
    tables: dict[str, dict[int, int] | None] = {}
    if ref_path.is_file():
        from medseg.data import load_manifest

        manifest = load_manifest(ref_path)
        if not manifest.is_instance:
            raise EvaluationError("the manifest's label maps hold classes, not objects (no \"task\": \"instance\"); "
                                  "evaluate without --instances", ref_path)
        classes = {v: n for v, n in manifest.label_names.items() if v != 0}
        tables = {safe_case_id(c.id): c.class_table for c in manifest.labelled_cases}
    else:
        classes = {1: "object"}
    results = []
    for i, p in enumerate(pairing.pairs, start=1):
        results.append(evaluate_instance_case(p, tables.get(p.case_id), list(classes),
                                              resample_to_ref=resample_to_ref))
        if progress is not None:
            progress(i, len(pairing.pairs), p.case_id)
    return InstanceEvaluation(results, classes, pairing, Path(pred), ref_path, resample_to_ref)


def _json(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def summarize_instances(result: InstanceEvaluation) -> dict[str, Any]:
    """The content of ``summary.json`` of an instance evaluation.

    ``pooled``: per class, PQ/SQ/RQ/F1 from the counts of all cases (the PQ paper's dataset figure); ``mean`` and
    ``statistics``: per class, over cases; ``counts``: statuses per class; ``metric_per_case``; the definitions.
    """
    from medseg.evaluation.evaluate import statistics

    rows = result.row_classes
    per_case = [{"case_id": c.case_id,
                 "metrics": {str(v): {k: _json(c.rows[v][k]) for k in ("status", *METRIC_KEYS, *COUNT_KEYS)
                                      if not (k == "AJI" and v != ALL_CLASSES)} for v in rows},
                 "prediction_file": None if c.prediction is None else str(c.prediction),
                 "reference_file": str(c.reference), "spacing": list(c.spacing),
                 "resampled": c.resampled, "reoriented": c.reoriented} for c in result.cases]
    keys = {v: [k for k in METRIC_KEYS if k != "AJI" or v == ALL_CLASSES] for v in rows}
    counts = {}
    for v in rows:
        statuses = [c.rows[v]["status"] for c in result.cases]
        counts[str(v)] = {"cases": len(statuses), **{s: statuses.count(s) for s in (
            STATUS_OK, STATUS_BOTH_EMPTY, STATUS_MISSED, STATUS_FALSE_POSITIVE)}}
    objects = [o for c in result.cases for o in c.objects]
    volumes = {}
    for side in ("reference", "prediction"):
        values = np.array([o["volume_mm3"] for o in objects if o["side"] == side], dtype=np.float64)
        volumes[side] = {"objects": int(values.size), **statistics(values)}
    return {
        "task": "instance",
        "classes": {str(v): n for v, n in rows.items()},
        "pooled": {str(v): result.pooled(v) for v in rows},
        "mean": {str(v): {k: float(result.values(v, k).mean()) if result.cases else None for k in keys[v]}
                 for v in rows},
        "statistics": {str(v): {k: statistics(result.values(v, k)) for k in keys[v]} for v in rows},
        "counts": counts,
        "object_volumes_mm3": volumes,
        "n_cases": len(result.cases),
        "metric_per_case": per_case,
        "unpaired_predictions": result.pairing.unpaired_predictions,
        "missing_predictions": result.pairing.missing_predictions,
        "settings": {"prediction_dir": str(result.prediction_dir), "reference": str(result.reference),
                     "missing": result.pairing.missing, "resample_to_ref": result.resample_to_ref,
                     "match": "same class and IoU > 0.5"},
        "metrics": {k: metric_spec(k).to_dict() for k in METRIC_KEYS},
        "definitions": {
            "all": "class 0 ('all'): objects matched whatever their class; AJI is computed for it only",
            "pooled": "TP, FP, FN and the matches' IoU summed over all cases before PQ/SQ/RQ/F1 are computed",
            "both_empty": "no reference and no predicted object: PQ = SQ = RQ = F1 = AJI = 1, in every mean",
            "one_empty": "objects on one side only: 0 (missed: reference only; false_positive: prediction only)",
            "volume_mm3": "voxels × voxel volume; a picture counts as one slice of 1 mm",
        },
    }


def instance_metrics_csv_text(result: InstanceEvaluation) -> str:
    """``metrics.csv`` of an instance evaluation: one row per case × class (and ``all``)."""
    columns = ["case_id", "class", "class_name", "status", *METRIC_KEYS, *COUNT_KEYS, "prediction_file",
               "reference_file"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in result.rows():
        writer.writerow({k: ("" if isinstance(v, float) and v != v else f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buffer.getvalue()


def objects_csv_text(result: InstanceEvaluation) -> str:
    """``instances.csv``: one row per reference and predicted object (class, voxels, volume, partner, IoU)."""
    columns = ["case_id", "side", "id", "class", "class_name", "voxels", "volume_mm3", "matched_id", "iou"]
    names = result.classes
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for case in result.cases:
        for obj in case.objects:
            row = dict(obj, class_name=names.get(obj["class"], str(obj["class"])))
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_instance_evaluation(result: InstanceEvaluation, out_dir: str | Path, *, report_html: str | None = None
                              ) -> dict[str, Path]:
    """Write ``metrics.csv``, ``instances.csv``, ``summary.json`` (and ``report.html``) into ``out_dir`` as one."""
    out = Path(out_dir)
    contents = {
        "csv": (out / "metrics.csv", instance_metrics_csv_text(result)),
        "objects": (out / "instances.csv", objects_csv_text(result)),
        "json": (out / "summary.json", json.dumps(summarize_instances(result), indent=2, allow_nan=False) + "\n"),
    }
    if report_html is not None:
        contents["html"] = (out / "report.html", report_html)
    atomic_write_many({path: text for path, text in contents.values()})
    return {kind: path for kind, (path, _) in contents.items()}
