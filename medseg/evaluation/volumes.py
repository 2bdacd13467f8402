"""Volume report: the volume of every label of every segmentation in a folder, in millilitres.

Inputs are label maps as :func:`medseg.io.load_image` reads them — NIfTI, NRRD, MetaImage and DICOM Segmentation
files (a SEG's values are its segment numbers, named by its SegmentLabels). A label's volume is its voxel count times
the voxel volume, ``|det(A)|`` of the affine's 3×3 part (mm³), divided by 1000 (mL). Every named label is reported
for every case, absent ones with volume 0, so an organ the model missed shows as 0 mL instead of vanishing from the
table. A file that cannot be read is recorded with its error and the rest go on.

Outputs (:func:`write_volume_report`): ``volumes.csv`` (one row per case × label), ``volumes.json`` (per case, per
label statistics over cases, failures) and ``volumes.html`` (self-contained tables, sortable per-case table).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import EvaluationError, MedsegError
from medseg.evaluation.evaluate import label_counts, list_case_files, read_label_map
from medseg.io.naming import SEGMENTATION_SUFFIXES, case_id_of
from medseg.io.naming import case_id as safe_case_id
from medseg.utils.files import atomic_write_many, read_json

#: Name of the label-name file ``medseg predict`` writes beside its outputs.
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class CaseVolumes:
    """The label volumes of one segmentation.

    Attributes:
        case_id: The file name without its image ending.
        path: The file.
        voxel_volume_mm3: Volume of one voxel.
        voxels: Label value → voxel count (foreground labels present in the file).
        names: Label value → name the file itself gives (DICOM SEG SegmentLabels), else empty.
        patient_id: PatientID of a DICOM SEG, else empty.
        description: SeriesDescription of a DICOM SEG (``medseg predict`` writes ``medseg <source series
            description>``), else empty.
    """

    case_id: str
    path: Path
    voxel_volume_mm3: float
    voxels: dict[int, int]
    names: dict[int, str] = field(default_factory=dict)
    patient_id: str = ""
    description: str = ""

    def volume_ml(self, label: int) -> float:
        """Volume of ``label`` in millilitres (0 when absent)."""
        return self.voxels.get(label, 0) * self.voxel_volume_mm3 / 1000.0


@dataclass
class VolumeReport:
    """Volumes of a folder of segmentations.

    Attributes:
        source: The folder or file measured.
        cases: Measured cases, in case-id order.
        labels: Label value → name of every reported foreground label.
        failed: ``(case id, error)`` for the files that could not be read.
    """

    source: Path
    cases: list[CaseVolumes]
    labels: dict[int, str]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per case × label.

        Keys: ``case_id``, ``patient_id``, ``description``, ``label``, ``name``, ``voxels``, ``volume_ml``.
        """
        return [
            {"case_id": c.case_id, "patient_id": c.patient_id, "description": c.description, "label": v,
             "name": name, "voxels": c.voxels.get(v, 0), "volume_ml": c.volume_ml(v)}
            for c in self.cases for v, name in self.labels.items()
        ]

    def statistics(self) -> dict[str, dict[str, float | int]]:
        """Per label name: cases, cases where present, mean, std, median, min and max volume in mL."""
        out: dict[str, dict[str, float | int]] = {}
        for value, name in self.labels.items():
            volumes = np.array([c.volume_ml(value) for c in self.cases], dtype=np.float64)
            if volumes.size == 0:
                out[name] = {"cases": 0, "present": 0}
                continue
            out[name] = {
                "cases": int(volumes.size), "present": int(np.count_nonzero(volumes)),
                "mean": float(volumes.mean()), "std": float(volumes.std()), "median": float(np.median(volumes)),
                "min": float(volumes.min()), "max": float(volumes.max()),
            }
        return out


def list_segmentations(path: str | Path) -> dict[str, Path]:
    """Segmentation files by case id: ``path`` itself, or the image and ``.dcm`` files directly in a folder.

    Raises:
        EvaluationError: Nothing to measure, or two files for one case id.
    """
    path = Path(path)
    if path.is_file():
        return {case_id_of(path, SEGMENTATION_SUFFIXES) or safe_case_id(path.stem): path}
    found = list_case_files(path, "segmentation", SEGMENTATION_SUFFIXES)
    if not found:
        raise EvaluationError("no segmentations found (NIfTI, NRRD, MetaImage or DICOM SEG files)", path)
    return found


def read_label_names(path: str | Path) -> dict[int, str]:
    """Label value → name from a ``labels.json`` (``{"1": "liver", …}``) as ``medseg predict`` writes it.

    Raises:
        EvaluationError: Not a JSON object of integer keys and string names.
    """
    data = read_json(path, "label-name file", EvaluationError)
    try:
        return {int(k): str(v) for k, v in dict(data).items()}
    except (ValueError, TypeError):
        raise EvaluationError('not a label-name file ({"1": "name", …}): keys must be label values', path) from None


def measure_case(case_id: str, path: str | Path) -> CaseVolumes:
    """Count the voxels of every foreground label of one segmentation.

    Raises:
        EvaluationError, ImageReadError: The file is not a readable label map.
    """
    array, image = read_label_map(path)
    affine = np.asarray(image.affine, dtype=np.float64)
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    if not math.isfinite(voxel) or voxel <= 0:
        raise EvaluationError("degenerate affine: the voxel volume is zero", path)
    voxels = label_counts(array)
    meta = image.meta
    names = {int(k): str(v) for k, v in dict(meta.get("segment_labels") or {}).items()}
    seg = meta.get("format") == "dicom-seg"
    return CaseVolumes(case_id, Path(path), voxel, voxels, names,
                       patient_id=str(meta.get("patient_id", "")) if seg else "",
                       description=str(meta.get("series_description", "")) if seg else "")


def measure_volumes(
    path: str | Path,
    label_names: Mapping[int, str] | None = None,
    *,
    on_case: Callable[[str, str], None] | None = None,
) -> VolumeReport:
    """Measure every segmentation of a folder (or one file); unreadable files are recorded, not fatal.

    Args:
        path: A folder of segmentations or one file.
        label_names: Label value → name. Default: ``labels.json`` in the folder when present, else the names the
            files give (DICOM SEG segment labels), else the values. Background (0) is never reported.
        on_case: Called as ``on_case(case_id, status)`` after each file (``done`` or the error).

    Raises:
        EvaluationError: Nothing to measure.
    """
    path = Path(path)
    files = list_segmentations(path)
    if label_names is None and path.is_dir() and (path / LABELS_FILE).is_file():
        label_names = read_label_names(path / LABELS_FILE)
    cases: list[CaseVolumes] = []
    failed: list[tuple[str, str]] = []
    for case_id, file in files.items():
        try:
            cases.append(measure_case(case_id, file))
            status = "done"
        except MedsegError as exc:
            failed.append((case_id, str(exc)))
            status = str(exc)
        if on_case is not None:
            on_case(case_id, status)
    labels: dict[int, str] = {int(v): str(n) for v, n in (label_names or {}).items() if int(v) > 0}
    for case in cases:
        for value in sorted(set(case.names) | set(case.voxels)):
            labels.setdefault(value, case.names.get(value, f"label_{value}"))
    return VolumeReport(path, cases, dict(sorted(labels.items())), failed)


def volumes_csv_text(report: VolumeReport) -> str:
    """``case_id,patient_id,description,label,name,voxels,volume_ml`` rows as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case_id", "patient_id", "description", "label", "name", "voxels",
                                                "volume_ml"], lineterminator="\n")
    writer.writeheader()
    for row in report.rows():
        writer.writerow({**row, "volume_ml": f"{row['volume_ml']:.4f}"})
    return buffer.getvalue()


def volumes_summary(report: VolumeReport) -> dict[str, Any]:
    """The report as JSON-ready data: labels, per-case volumes (mL) and voxel sizes, statistics, failures."""
    return {
        "source": str(report.source),
        "unit": "mL",
        "labels": {str(v): n for v, n in report.labels.items()},
        "cases": {
            c.case_id: {"file": str(c.path), "patient_id": c.patient_id, "description": c.description,
                        "voxel_volume_mm3": c.voxel_volume_mm3,
                        "volume_ml": {n: c.volume_ml(v) for v, n in report.labels.items()}}
            for c in report.cases
        },
        "statistics": report.statistics(),
        "failed": {case: error for case, error in report.failed},
    }


def _e(text: Any) -> str:
    from html import escape

    return escape(str(text), quote=True)


def render_volume_report(report: VolumeReport, *, title: str = "medseg volumes") -> str:
    """The report as one self-contained HTML page (tables only; nothing fetched)."""
    from medseg.evaluation.report import _CSS, _JS

    stats = report.statistics()
    head = "".join(f"<th>{_e(h)}</th>" for h in ("cases", "present", "mean", "std", "median", "min", "max"))
    summary_rows = []
    for name, s in stats.items():
        cells = [f"<td>{s['cases']}</td>", f"<td>{s['present']}</td>"]
        cells += [f"<td>{s[k]:.2f}</td>" if k in s else "<td></td>" for k in ("mean", "std", "median", "min", "max")]
        summary_rows.append(f"<tr><td class=t>{_e(name)}</td>{''.join(cells)}</tr>")
    label_heads = "".join(f"<th>{_e(n)} (mL)</th>" for n in report.labels.values())
    case_rows = []
    for c in report.cases:
        cells = "".join(f"<td data-v=\"{c.volume_ml(v)!r}\">{c.volume_ml(v):.2f}</td>" for v in report.labels)
        case_rows.append(f"<tr><td class=t>{_e(c.case_id)}</td><td class=t>{_e(c.patient_id)}</td>"
                         f"<td class=t>{_e(c.description)}</td>{cells}<td>{c.voxel_volume_mm3:.4g}</td></tr>")
    failed = ""
    if report.failed:
        items = "".join(f"<li><code>{_e(case)}</code>: {_e(error)}</li>" for case, error in report.failed)
        failed = f"<h2>Not measured</h2><ul>{items}</ul>"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class=meta>{len(report.cases)} segmentations × {len(report.labels)} labels · <code>{_e(report.source)}</code>
· {_e(when)}</p>
<h2>Summary (mL)</h2>
<table><thead><tr><th class=t>label</th>{head}</tr></thead><tbody>{''.join(summary_rows)}</tbody></table>
<p class=note>Volume = voxel count × voxel volume (from the image affine). Labels absent from a case count as
0 mL; “present” counts the cases where the label has at least one voxel.</p>
{failed}
<h2>All cases</h2>
<p class=meta>Click a column header to sort.</p>
<div class=scroll><table class=sortable><thead><tr><th class=t>case</th><th class=t>patient</th>
<th class=t>series</th>{label_heads}<th>voxel (mm³)</th></tr></thead>
<tbody>{''.join(case_rows)}</tbody></table></div>
<script>{_JS}</script>
</body></html>
"""


def write_volume_report(report: VolumeReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``volumes.csv``, ``volumes.json`` and ``volumes.html`` into ``out_dir`` as one; returns them by kind.

    All three are staged before any replaces its previous version (:func:`medseg.utils.files.atomic_write_many`).
    """
    out = Path(out_dir)
    contents = {
        "csv": (out / "volumes.csv", volumes_csv_text(report)),
        "json": (out / "volumes.json", json.dumps(volumes_summary(report), indent=2) + "\n"),
        "html": (out / "volumes.html", render_volume_report(report)),
    }
    atomic_write_many({path: text for path, text in contents.values()})
    return {kind: path for kind, (path, _) in contents.items()}
