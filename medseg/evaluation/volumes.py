"""Volume report: the volume of every label of every segmentation in a folder, in millilitres.

Inputs are label maps as :func:`medseg.io.load_image` reads them — NIfTI, NRRD, MetaImage and DICOM Segmentation
files (a SEG's values are its segment numbers, named by its SegmentLabels). A label's volume is its voxel count times
the voxel volume, ``|det(A)|`` of the affine's 3×3 part (mm³), divided by 1000 (mL). Every named label is reported
for every case, absent ones with volume 0, so an organ the model missed shows as 0 mL instead of vanishing from the
table. A file that cannot be read is recorded with its error and the rest go on.

With images (``medseg volumes --image``, ``medseg predict --statistics``) each label also gets the statistics of the
image under its mask — mean, standard deviation, median, 5th and 95th percentile, minimum and maximum — per image
channel, in Hounsfield units for CT (DICOM CT series come out in HU, see :mod:`medseg.io.dicom`). Images are paired
with segmentations by :func:`pair_images`; a label map on another grid than its image (a DICOM SEG that leaves out
empty frames covers fewer slices) is brought onto the image's grid by nearest neighbour, which is exact for a
sub-grid.

Outputs (:func:`write_volume_report`): ``volumes.csv`` (one row per case × label, × channel with images),
``volumes.json`` (per case, per label statistics over cases, failures) and ``volumes.html`` (self-contained tables,
sortable per-case table).
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
from medseg.evaluation.evaluate import label_counts, list_case_files, read_label_map, resample_nearest
from medseg.io.naming import SEGMENTATION_SUFFIXES, case_id_of
from medseg.io.naming import case_id as safe_case_id
from medseg.utils.files import atomic_write_many, read_json

#: Name of the label-name file ``medseg predict`` writes beside its outputs.
LABELS_FILE = "labels.json"
#: Intensity statistics under each mask, in this order.
INTENSITY_KEYS = ("mean", "std", "median", "p5", "p95", "min", "max")
#: What the DICOM outputs of ``medseg predict`` add to a case's name (``STEM_seg.dcm``), stripped when pairing.
_OUTPUT_TAGS = ("_seg", "_rtstruct")


@dataclass(frozen=True)
class ImageSource:
    """The image a segmentation is measured on.

    Attributes:
        paths: One file per channel, or one DICOM file or folder.
        series_uid: The series to read from a DICOM folder holding several.
        channels: Channel names (manifest), else ``channel_N``.
        modality: ``CT`` gives Hounsfield units; empty when unknown.
    """

    paths: tuple[Path, ...]
    series_uid: str | None = None
    channels: tuple[str, ...] = ()
    modality: str = ""

    def load(self) -> Any:
        """The image ``(C, X, Y, Z)`` (channels stacked)."""
        from medseg.io import load_image

        images = [load_image(p, series_uid=self.series_uid) for p in self.paths]
        if len(images) == 1:
            return images[0]
        import torch
        from monai.data import MetaTensor

        shapes = {tuple(i.shape[1:]) for i in images}
        if len(shapes) != 1:
            raise EvaluationError(f"the channel images have different grids {sorted(shapes)}", self.paths[0])
        return MetaTensor(torch.cat([i.as_tensor().float() for i in images]), affine=images[0].affine,
                          meta=dict(images[0].meta))


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
        intensity: Label value → channel name → statistics of the image under the label (:data:`INTENSITY_KEYS`);
            empty without an image, and for labels absent from the case.
        unit: ``HU`` for CT images, else empty (the image's own units).
        image: The image measured, else empty.
    """

    case_id: str
    path: Path
    voxel_volume_mm3: float
    voxels: dict[int, int]
    names: dict[int, str] = field(default_factory=dict)
    patient_id: str = ""
    description: str = ""
    intensity: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    unit: str = ""
    image: str = ""

    def volume_ml(self, label: int) -> float:
        """Volume of ``label`` in millilitres (0 when absent)."""
        return self.voxels.get(label, 0) * self.voxel_volume_mm3 / 1000.0

    @property
    def channel_names(self) -> list[str]:
        """The image channels measured (from any label's statistics)."""
        for stats in self.intensity.values():
            return list(stats)
        return []


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

    @property
    def with_intensity(self) -> bool:
        """Whether any case was measured on an image."""
        return any(c.image for c in self.cases)

    def rows(self) -> list[dict[str, Any]]:
        """One row per case × label (× channel when measured on images).

        Keys: ``case_id``, ``patient_id``, ``description``, ``label``, ``name``, ``voxels``, ``volume_ml``; with
        images also ``channel``, ``unit`` and :data:`INTENSITY_KEYS` (empty where the label is absent).
        """
        out = []
        for c in self.cases:
            for v, name in self.labels.items():
                row = {"case_id": c.case_id, "patient_id": c.patient_id, "description": c.description, "label": v,
                       "name": name, "voxels": c.voxels.get(v, 0), "volume_ml": c.volume_ml(v)}
                if not self.with_intensity:
                    out.append(row)
                    continue
                channels = c.intensity.get(v) or {ch: {} for ch in c.channel_names}
                for channel, stats in (channels.items() or [("", {})]):
                    out.append({**row, "channel": channel, "unit": c.unit,
                                **{k: stats.get(k, "") for k in INTENSITY_KEYS}})
        return out

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


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """:data:`INTENSITY_KEYS` of a non-empty set of values (percentiles by linear interpolation)."""
    values = np.asarray(values, dtype=np.float64)
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(median), "p5": float(p5),
            "p95": float(p95), "min": float(values.min()), "max": float(values.max())}


def _intensities(array: np.ndarray, label_image: Any, source: ImageSource, path: Path,
                 labels: list[int]) -> tuple[dict[int, dict[str, dict[str, float]]], str]:
    """Statistics of the image under each label (the label map brought onto the image's grid when needed)."""
    from medseg.io.align import match_grid

    image = source.load()
    match = match_grid(label_image, image)
    if match.image is not None:
        on_grid = np.asarray(match.image)[0] if match.reoriented else array
    else:
        on_grid = resample_nearest(array, np.asarray(label_image.meta["affine"]), tuple(image.shape[1:]),
                                   np.asarray(image.meta["affine"]))
    data = np.asarray(image)
    if on_grid.shape != tuple(data.shape[1:]):
        raise EvaluationError("the label map cannot be brought onto the image's grid", path)
    names = list(source.channels) if len(source.channels) == data.shape[0] else \
        [f"channel_{i}" for i in range(data.shape[0])]
    if data.shape[0] == 1 and not source.channels:
        names = ["image"]
    modality = source.modality or str((getattr(image, "meta", {}) or {}).get("modality", "") or "")
    out: dict[int, dict[str, dict[str, float]]] = {}
    for value in labels:
        mask = on_grid == value
        if not mask.any():
            continue
        out[value] = {name: intensity_statistics(data[c][mask]) for c, name in enumerate(names)}
    return out, ("HU" if modality.upper() == "CT" else "")


def measure_case(case_id: str, path: str | Path, image: ImageSource | None = None) -> CaseVolumes:
    """Count the voxels of every foreground label of one segmentation (and measure the image under them).

    Args:
        case_id: The case id.
        path: The segmentation.
        image: The image to measure under each label, or ``None`` for volumes only.

    Raises:
        EvaluationError, ImageReadError: The file is not a readable label map, or the image is unreadable.
    """
    image_source = image
    array, image = read_label_map(path)
    affine = np.asarray(image.affine, dtype=np.float64)
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    if not math.isfinite(voxel) or voxel <= 0:
        raise EvaluationError("degenerate affine: the voxel volume is zero", path)
    voxels = label_counts(array)
    meta = image.meta
    names = {int(k): str(v) for k, v in dict(meta.get("segment_labels") or {}).items()}
    seg = meta.get("format") == "dicom-seg"
    intensity: dict[int, dict[str, dict[str, float]]] = {}
    unit = ""
    if image_source is not None:
        intensity, unit = _intensities(array, image, image_source, Path(path), sorted(voxels))
    return CaseVolumes(case_id, Path(path), voxel, voxels, names,
                       patient_id=str(meta.get("patient_id", "")) if seg else "",
                       description=str(meta.get("series_description", "")) if seg else "",
                       intensity=intensity, unit=unit,
                       image=";".join(str(p) for p in image_source.paths) if image_source is not None else "")


def measure_volumes(
    path: str | Path,
    label_names: Mapping[int, str] | None = None,
    *,
    on_case: Callable[[str, str], None] | None = None,
    images: Mapping[str, ImageSource] | None = None,
    files: Mapping[str, Path] | None = None,
) -> VolumeReport:
    """Measure every segmentation of a folder (or one file); unreadable files are recorded, not fatal.

    Args:
        path: A folder of segmentations or one file.
        label_names: Label value → name. Default: ``labels.json`` in the folder when present, else the names the
            files give (DICOM SEG segment labels), else the values. Background (0) is never reported. A DICOM SEG's
            segments are matched to these labels by name (a SEG numbers only the segments it holds).
        on_case: Called as ``on_case(case_id, status)`` after each file (``done`` or the error).
        images: Case id → image to measure under each label (:func:`pair_images`); cases without one get volumes
            only.
        files: Case id → segmentation, instead of listing ``path``.

    Raises:
        EvaluationError: Nothing to measure.
    """
    path = Path(path)
    files = dict(files) if files is not None else list_segmentations(path)
    if label_names is None and path.is_dir() and (path / LABELS_FILE).is_file():
        label_names = read_label_names(path / LABELS_FILE)
    by_name = {str(n): int(v) for v, n in (label_names or {}).items()}
    cases: list[CaseVolumes] = []
    failed: list[tuple[str, str]] = []
    for case_id, file in files.items():
        try:
            case = measure_case(case_id, file, (images or {}).get(case_id))
            if case.names and by_name:
                case = _renumbered(case, by_name)
            cases.append(case)
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


def _renumbered(case: CaseVolumes, by_name: Mapping[str, int]) -> CaseVolumes:
    """A SEG's measurements keyed by the label values its segment names have in ``by_name`` (others kept)."""
    mapping = {n: by_name.get(name, n) for n, name in case.names.items()}
    if all(k == v for k, v in mapping.items()) or len(set(mapping.values())) != len(mapping):
        return case
    from dataclasses import replace

    return replace(case, voxels={mapping.get(k, k): v for k, v in case.voxels.items()},
                   names={mapping[k]: v for k, v in case.names.items()},
                   intensity={mapping.get(k, k): v for k, v in case.intensity.items()})


def _output_case_id(case_id: str) -> str:
    """A segmentation's case id without what ``medseg predict`` adds to DICOM outputs (``_seg``, ``_rtstruct``)."""
    for tag in _OUTPUT_TAGS:
        if case_id.endswith(tag):
            return case_id[: -len(tag)]
    return case_id


def pair_images(segmentations: Mapping[str, Path], images: str | Path) -> tuple[dict[str, ImageSource], list[str]]:
    """Find the image of each segmentation.

    ``images`` may be

    - one image file or DICOM series (every segmentation is measured on it: use it with one segmentation);
    - a manifest (``.json``): by case id (its channels, names and modalities);
    - a folder of image files: by case id (``CASE.nii.gz`` or nnU-Net's ``CASE_0000.nii.gz``);
    - a DICOM tree: a DICOM SEG by the series it references, any other file by the name ``medseg predict`` gives
      the outputs of a series (:func:`medseg.io.dicom_derived.series_file_stem`) or by SeriesInstanceUID.

    ``_seg`` and ``_rtstruct`` at the end of a segmentation's case id are ignored for the match.

    Returns:
        Case id → image, and the case ids left without one.

    Raises:
        EvaluationError: ``images`` does not exist or holds no images.
    """
    from medseg.io.naming import READ_SUFFIXES, image_suffix

    images = Path(images)
    if not images.exists():
        raise EvaluationError("no such image file or folder", images)
    found: dict[str, ImageSource] = {}
    if images.is_file() and images.suffix.lower() == ".json":
        from medseg.data import load_manifest

        manifest = load_manifest(images)
        channels = tuple(c.name for c in manifest.channels)
        modality = manifest.channels[0].modality if manifest.channels else ""
        by_case = {safe_case_id(c.id): ImageSource(tuple(manifest.image_paths(c)), None, channels, modality)
                   for c in manifest.cases}
        for case_id in segmentations:
            source = by_case.get(_output_case_id(case_id))
            if source is not None:
                found[case_id] = source
    elif images.is_file() and image_suffix(images):
        found = {case_id: ImageSource((images,)) for case_id in segmentations}
    elif images.is_dir() and any(p.is_file() and image_suffix(p) for p in images.iterdir()):
        by_case = list_case_files(images, "image", READ_SUFFIXES)
        for case_id in segmentations:
            key = _output_case_id(case_id)
            file = by_case.get(key) or by_case.get(f"{key}_0000")
            if file is not None:
                found[case_id] = ImageSource((file,))
    else:
        found = _pair_dicom(segmentations, images)
    return found, [c for c in segmentations if c not in found]


def _pair_dicom(segmentations: Mapping[str, Path], root: Path) -> dict[str, ImageSource]:
    from medseg.evaluation.evaluate import referenced_series_uid
    from medseg.io import scan_dicom
    from medseg.io.dicom_derived import series_file_stem

    try:
        series = scan_dicom(root)
    except MedsegError as exc:
        raise EvaluationError(f"no images here: {exc.problem}", root) from None
    by_uid = {s.series_instance_uid: s for s in series if s.series_instance_uid}
    by_stem = {series_file_stem(s.patient_id, s.series_description, s.series_instance_uid, s.series_number): s
               for s in by_uid.values()}
    found: dict[str, ImageSource] = {}
    for case_id, file in segmentations.items():
        key = _output_case_id(case_id)
        info = by_uid.get(referenced_series_uid(file) or "") or by_stem.get(key) or by_uid.get(key)
        if info is None and len(series) == 1:
            info = series[0]
        if info is not None:
            folder = Path(info.files[0]).parent if len({Path(f).parent for f in info.files}) == 1 else root
            found[case_id] = ImageSource((folder,), info.series_instance_uid or None, (), info.modality)
    return found


def volumes_csv_text(report: VolumeReport) -> str:
    """The report's rows as CSV text.

    Columns ``case_id,patient_id,description,label,name,voxels,volume_ml``; with images also ``channel,unit`` and
    the intensity statistics.
    """
    buffer = io.StringIO()
    fields = ["case_id", "patient_id", "description", "label", "name", "voxels", "volume_ml"]
    if report.with_intensity:
        fields += ["channel", "unit", *INTENSITY_KEYS]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in report.rows():
        stats = {k: f"{row[k]:.4f}" for k in INTENSITY_KEYS if isinstance(row.get(k), float)}
        writer.writerow({**row, "volume_ml": f"{row['volume_ml']:.4f}", **stats})
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
                        "volume_ml": {n: c.volume_ml(v) for v, n in report.labels.items()},
                        **({"image": c.image, "intensity_unit": c.unit,
                            "intensity": {n: c.intensity[v] for v, n in report.labels.items() if v in c.intensity}}
                           if c.image else {})}
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
    intensity = _intensity_table(report)
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
{intensity}
{failed}
<h2>All cases</h2>
<p class=meta>Click a column header to sort.</p>
<div class=scroll><table class=sortable><thead><tr><th class=t>case</th><th class=t>patient</th>
<th class=t>series</th>{label_heads}<th>voxel (mm³)</th></tr></thead>
<tbody>{''.join(case_rows)}</tbody></table></div>
<script>{_JS}</script>
</body></html>
"""


def _intensity_table(report: VolumeReport) -> str:
    """The intensity statistics of every case × label × channel as a sortable HTML table (empty without images)."""
    if not report.with_intensity:
        return ""
    head = "".join(f"<th>{_e(k)}</th>" for k in INTENSITY_KEYS)
    rows = []
    for row in report.rows():
        if not isinstance(row.get("mean"), float):
            continue
        cells = "".join(f"<td data-v=\"{row[k]!r}\">{row[k]:.1f}</td>" for k in INTENSITY_KEYS)
        rows.append(f"<tr><td class=t>{_e(row['case_id'])}</td><td class=t>{_e(row['name'])}</td>"
                    f"<td class=t>{_e(row['channel'])}</td><td class=t>{_e(row['unit'])}</td>"
                    f"<td data-v=\"{row['volume_ml']!r}\">{row['volume_ml']:.2f}</td>{cells}</tr>")
    return (f"<h2>Intensity under each mask</h2><p class=note>Statistics of the image under each label (percentiles "
            f"p5/p95; Hounsfield units for CT, else the image's own units); absent labels are left out.</p>"
            f"<div class=scroll><table class=sortable><thead><tr><th class=t>case</th><th class=t>label</th>"
            f"<th class=t>channel</th><th class=t>unit</th><th>volume (mL)</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def write_volume_report(report: VolumeReport, out_dir: str | Path, name: str = "volumes") -> dict[str, Path]:
    """Write ``NAME.csv``, ``NAME.json`` and ``NAME.html`` into ``out_dir`` as one; returns them by kind.

    All three are staged before any replaces its previous version (:func:`medseg.utils.files.atomic_write_many`).
    """
    out = Path(out_dir)
    title = "medseg statistics" if report.with_intensity else "medseg volumes"
    contents = {
        "csv": (out / f"{name}.csv", volumes_csv_text(report)),
        "json": (out / f"{name}.json", json.dumps(volumes_summary(report), indent=2) + "\n"),
        "html": (out / f"{name}.html", render_volume_report(report, title=title)),
    }
    atomic_write_many({path: text for path, text in contents.values()})
    return {kind: path for kind, (path, _) in contents.items()}
