"""DICOM series: discovery in folders, geometry checks, and reading as a RAS ``MetaTensor``.

Slices are grouped by SeriesInstanceUID and sorted by ImagePositionPatient projected on the slice normal
(``row × column`` direction cosines) — never by file name or InstanceNumber. RescaleSlope/RescaleIntercept are
applied per slice (CT comes out in Hounsfield units). Enhanced (multi-frame) CT/MR/PET files are read frame by
frame from their functional groups; multi-frame files without per-frame plane positions are rejected.

Geometry that cannot be represented faithfully by one affine raises :class:`~medseg.errors.GeometryError` instead
of producing a silently wrong volume:

- slices with different ImageOrientationPatient, PixelSpacing or matrix size (mixed orientations);
- two slices at the same position (several echoes, phases or acquisitions in one series);
- a gap more than 1.5× the typical slice distance (missing slices);
- any slice farther than ``max(0.01 mm, 1 % of the slice distance)`` from the regular grid (uneven spacing);
- slices that advance at an angle to the slice normal (gantry tilt).

Pixel data in the compressed transfer syntaxes of real archives (JPEG baseline/extended/lossless, JPEG-LS,
JPEG 2000) is decoded through pydicom's GDCM plugin (``pip install 'medseg[dicom]'``); RLE is decoded by pydicom.
Files in a folder that are not DICOM (no ``DICM`` preamble, nor a preamble-less start at group 0002/0008) are
ignored; DICOMDIR files and DICOM Segmentation
objects are skipped, so a SEG written next to its source series does not disturb re-reading that series.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomSeriesError, GeometryError, ImageReadError
from medseg.io.geometry import LPS_TO_RAS
from medseg.io.meta import ImageData, apply_rescale, image_data, make_image

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

ORIENTATION_ATOL = 1e-3
PIXEL_SPACING_ATOL_MM = 1e-3
MISSING_SLICE_FACTOR = 1.5
GRID_TOLERANCE_MM = 0.01
GRID_TOLERANCE_FRACTION = 0.01


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder: identifiers, a description, and the files holding its images."""

    series_instance_uid: str
    files: list[Path] = field(default_factory=list)
    study_instance_uid: str = ""
    patient_id: str = ""
    modality: str = ""
    series_description: str = ""
    series_number: str = ""
    frames: int = 0

    def summary(self) -> str:
        """One-line description: UID (or the folder of a series without one), description, modality, image count."""
        description = self.series_description or "no description"
        uid = self.series_instance_uid or f"(no SeriesInstanceUID, in {self.files[0].parent if self.files else '?'})"
        return f"{uid} ('{description}', {self.modality or '?'}, {self.frames} images)"


@dataclass
class _Slice:
    path: Path
    frame: int | None  # 0-based frame index for multi-frame files
    sop_instance_uid: str
    position: np.ndarray  # LPS mm
    row_dir: np.ndarray  # direction of increasing column index
    col_dir: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    matrix: tuple[int, int]  # (rows, columns)
    slope: float
    intercept: float
    thickness: float | None
    spacing_between: float | None


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (``DICM`` after the 128-byte preamble), or a preamble-less one at group 2 or 8."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, element = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
    return group in (0x0002, 0x0008) and element < 0x0100


def _read_header(path: Path, *, pixels: bool = False) -> Any:
    """Parse a DICOM file (headers only unless ``pixels``); a parse failure or a missing SOP class means corrupt."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels, force=True)
    except Exception as exc:
        raise ImageReadError(f"corrupt DICOM file: {' '.join(str(exc).split())[:200]}", path) from exc
    meta = getattr(ds, "file_meta", None)
    if "SOPClassUID" not in ds and (meta is None or "MediaStorageSOPClassUID" not in meta):
        raise ImageReadError("corrupt DICOM file: no SOPClassUID (truncated, or not a DICOM object)", path)
    return ds


def _walk_files(folder: Path) -> list[Path]:
    """Every file below ``folder``, sorted; symbolic links to folders are followed, each real folder once."""
    files: list[Path] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        files.extend(Path(root) / name for name in sorted(names) if os.path.isfile(os.path.join(root, name)))
    return files


def scan_dicom(path: str | Path) -> list[SeriesInfo]:
    """Find the image series in a DICOM file or folder (searched recursively).

    Args:
        path: A folder (every file below it is looked at) or a single DICOM file.

    Returns:
        The image series found, in the order of their first file; SEG objects, DICOMDIRs and files without pixel
        matrices (structured reports, RT structure sets…) are left out.

    Raises:
        ImageReadError: The path does not exist, or a file with a DICOM preamble cannot be parsed (corrupt).
        DicomSeriesError: No DICOM image series is found.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError("no such file or folder", path)
    candidates = _walk_files(path) if path.is_dir() else [path]
    series: dict[str, SeriesInfo] = {}
    skipped: dict[str, int] = {}
    n_dicom = 0
    for file in candidates:
        if not _is_dicom_file(file):
            continue
        n_dicom += 1
        ds = _read_header(file)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in (SEG_SOP_CLASS, DICOMDIR_SOP_CLASS) or "Rows" not in ds or "Columns" not in ds:
            kind = str(ds.get("Modality", "")) or ("DICOMDIR" if sop_class == DICOMDIR_SOP_CLASS else "non-image")
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
        key = uid or f"(no SeriesInstanceUID) {file.parent}"  # anonymised files: one series per folder
        info = series.get(key)
        if info is None:
            info = series[key] = SeriesInfo(
                series_instance_uid=uid,
                study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                patient_id=str(ds.get("PatientID", "")),
                modality=str(ds.get("Modality", "")),
                series_description=str(ds.get("SeriesDescription", "")).strip(),
                series_number=str(ds.get("SeriesNumber", "")),
            )
        info.files.append(file)
        info.frames += int(ds.get("NumberOfFrames", 1) or 1)
    if not series:
        if path.is_file() and n_dicom == 0:
            raise ImageReadError("not a DICOM file", path)
        if n_dicom == 0:
            raise DicomSeriesError("no DICOM files found in this folder", path)
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        raise DicomSeriesError(f"no DICOM image series here (found only: {found})", path)
    return list(series.values())


def choose_series(series: list[SeriesInfo], series_uid: str | None, path: str | Path) -> SeriesInfo:
    """Pick the series named by ``series_uid``, or the only one; otherwise raise listing every series."""
    if series_uid is not None:
        for info in series:
            if info.series_instance_uid == series_uid:
                return info
        listing = "; ".join(info.summary() for info in series)
        raise DicomSeriesError(f"no series with SeriesInstanceUID {series_uid}; found: {listing}", path)
    if len(series) == 1:
        return series[0]
    listing = "; ".join(info.summary() for info in series)
    raise DicomSeriesError(
        f"{len(series)} series found, choose one by SeriesInstanceUID (--series-uid): {listing}", path
    )


def read_dicom_series(path: str | Path, *, series_uid: str | None = None) -> Any:
    """Read one DICOM series (a folder, searched recursively, or a single file) as a ``(1, X, Y, Z)`` MetaTensor.

    Voxel index ``(i, j, k)`` is (column, row, slice), slices sorted along the normal; the affine is RAS.
    ``meta`` also holds ``series_instance_uid``, ``study_instance_uid``, ``frame_of_reference_uid``, ``patient_id``,
    ``modality``, ``series_description``, ``sop_instance_uids`` and ``frame_numbers`` (one per slice ``k``, frame
    numbers 1-based for multi-frame files, else None) and ``source_files``.

    Args:
        path: Folder or file.
        series_uid: SeriesInstanceUID to read when the folder holds several series.

    Raises:
        ImageReadError, DicomSeriesError, GeometryError: see the module docstring.
    """
    info = choose_series(scan_dicom(path), series_uid, path)
    return load_series(info, path)


def read_series_data(path: str | Path, *, series_uid: str | None = None) -> ImageData:
    """:func:`read_dicom_series` as :class:`~medseg.io.meta.ImageData` (numpy, no torch)."""
    return series_data(choose_series(scan_dicom(path), series_uid, path), path)


def _fg_value(frame_group: Any, shared: Any, sequence: str, keyword: str) -> Any:
    for group in (frame_group, shared):
        if group is not None and sequence in group and len(group[sequence].value) and keyword in group[sequence][0]:
            return group[sequence][0][keyword].value
    return None


def _slices_of(ds: Any, path: Path) -> list[_Slice]:
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    matrix = (int(ds.Rows), int(ds.Columns))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else None
        if not per_frame:
            sop = getattr(ds.get("SOPClassUID"), "name", str(ds.get("SOPClassUID", "")))
            raise GeometryError(
                f"multi-frame file ({n_frames} frames, {sop}) without per-frame plane positions is not supported", path
            )
        out = []
        for index, group in enumerate(per_frame):
            position = _fg_value(group, shared, "PlanePositionSequence", "ImagePositionPatient")
            orientation = _fg_value(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _fg_value(group, shared, "PixelMeasuresSequence", "PixelSpacing")
            if position is None or orientation is None or spacing is None:
                raise GeometryError(f"frame {index + 1} has no plane position, orientation or pixel spacing", path)
            slope = _fg_value(group, shared, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _fg_value(group, shared, "PixelValueTransformationSequence", "RescaleIntercept")
            thickness = _fg_value(group, shared, "PixelMeasuresSequence", "SliceThickness")
            between = _fg_value(group, shared, "PixelMeasuresSequence", "SpacingBetweenSlices")
            out.append(_make_slice(path, index, sop_uid, position, orientation, spacing, matrix, slope, intercept,
                                   thickness, between))
        return out
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
        raise GeometryError(
            f"{ds.get('Modality', '')} image without ImagePositionPatient/ImageOrientationPatient/PixelSpacing: "
            "not a cross-sectional series with patient geometry",
            path,
        )
    return [
        _make_slice(path, None, sop_uid, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, matrix,
                    ds.get("RescaleSlope"), ds.get("RescaleIntercept"), ds.get("SliceThickness"),
                    ds.get("SpacingBetweenSlices"))
    ]


def _make_slice(path: Path, frame: int | None, sop_uid: str, position: Any, orientation: Any, spacing: Any,
                matrix: tuple[int, int], slope: Any, intercept: Any, thickness: Any, between: Any) -> _Slice:
    try:
        iop = np.asarray([float(v) for v in orientation], dtype=np.float64)
        ipp = np.asarray([float(v) for v in position], dtype=np.float64)
        ps = tuple(float(v) for v in spacing)
        if iop.shape != (6,) or ipp.shape != (3,) or len(ps) != 2:
            raise ValueError("wrong number of values")
    except (TypeError, ValueError) as exc:
        problem = f"malformed ImagePositionPatient/ImageOrientationPatient/PixelSpacing ({exc})"
        raise GeometryError(problem, path) from exc
    return _Slice(
        path=path,
        frame=frame,
        sop_instance_uid=sop_uid,
        position=ipp,
        row_dir=iop[:3] / np.linalg.norm(iop[:3]),
        col_dir=iop[3:] / np.linalg.norm(iop[3:]),
        pixel_spacing=(ps[0], ps[1]),
        matrix=matrix,
        slope=1.0 if slope in (None, "") else float(slope),
        intercept=0.0 if intercept in (None, "") else float(intercept),
        thickness=None if thickness in (None, "") else float(thickness),
        spacing_between=None if between in (None, "") else float(between),
    )


def stack_geometry(slices: list[_Slice], where: str | Path) -> tuple[list[_Slice], np.ndarray]:
    """Sort slices along their normal, check the stack is a regular grid, and return it with its LPS affine.

    Raises:
        GeometryError: mixed orientations/pixel spacing/matrix sizes, duplicate positions, missing slices,
            uneven spacing or gantry tilt.
    """
    first = slices[0]
    orientations = {tuple(np.round(np.concatenate([s.row_dir, s.col_dir]), 3)) for s in slices}
    if any(
        not (np.allclose(s.row_dir, first.row_dir, atol=ORIENTATION_ATOL)
             and np.allclose(s.col_dir, first.col_dir, atol=ORIENTATION_ATOL))
        for s in slices
    ):
        raise GeometryError(f"mixed orientations: {len(orientations)} different ImageOrientationPatient values", where)
    if any(not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=PIXEL_SPACING_ATOL_MM) for s in slices):
        found = sorted({s.pixel_spacing for s in slices})
        raise GeometryError(f"slices have different PixelSpacing: {found}", where)
    if any(s.matrix != first.matrix for s in slices):
        raise GeometryError(f"slices have different sizes: {sorted({s.matrix for s in slices})}", where)
    normal = np.cross(first.row_dir, first.col_dir)
    distance = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(distance, kind="stable")
    slices = [slices[i] for i in order]
    distance = distance[order]
    positions = np.stack([s.position for s in slices])
    if len(slices) == 1:
        step_size = first.spacing_between or first.thickness or 1.0
        step = normal * step_size
    else:
        gaps = np.diff(distance)
        if gaps.min() < GRID_TOLERANCE_MM:
            n_dup = int((gaps < GRID_TOLERANCE_MM).sum()) + 1
            raise GeometryError(
                f"{n_dup} slices share a position: the series holds several volumes (echoes, phases, acquisitions or "
                "repeated slices); split it before use",
                where,
            )
        typical = float(np.median(gaps))
        worst = int(np.argmax(gaps))
        if gaps[worst] > MISSING_SLICE_FACTOR * typical:
            missing = round(gaps[worst] / typical) - 1
            raise GeometryError(
                f"missing slice(s): a gap of {gaps[worst]:.3g} mm between slices at {distance[worst]:.2f} and "
                f"{distance[worst + 1]:.2f} mm along the normal where slices are {typical:.3g} mm apart "
                f"(about {max(missing, 1)} missing)",
                where,
            )
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
        along = float(step @ normal)
        across = float(np.linalg.norm(step - along * normal))
        tolerance = max(GRID_TOLERANCE_MM, GRID_TOLERANCE_FRACTION * along)
        if across * (len(slices) - 1) > tolerance:
            angle = math.degrees(math.atan2(across, along))
            raise GeometryError(
                f"gantry tilt or sheared stack: slices advance at {angle:.2f} degrees to the slice normal; "
                "resample the series to an untilted grid (e.g. with the scanner's or PACS's reformat) before use",
                where,
            )
        predicted = positions[0] + np.arange(len(slices))[:, None] * step
        deviation = float(np.linalg.norm(positions - predicted, axis=1).max())
        if deviation > tolerance:
            raise GeometryError(
                f"uneven slice spacing: gaps range from {gaps.min():.4g} to {gaps.max():.4g} mm (a slice lies "
                f"{deviation:.3g} mm off the regular grid)",
                where,
            )
    affine = np.eye(4)
    affine[:3, 0] = first.row_dir * first.pixel_spacing[1]  # i: column index, along the row direction
    affine[:3, 1] = first.col_dir * first.pixel_spacing[0]  # j: row index, along the column direction
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return slices, affine


def _pixel_array(ds: Any, path: Path) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        array = ds.pixel_array
    except Exception as exc:
        text = " ".join(str(exc).split())
        if syntax is not None and syntax.is_compressed and ("plugin" in text.lower() or "decod" in text.lower()):
            raise ImageReadError(
                f"cannot decode {syntax.name} pixel data: install the DICOM decoders with pip install 'medseg[dicom]' "
                f"({text[:120]})",
                path,
            ) from exc
        raise ImageReadError(f"corrupt or truncated pixel data: {text[:200]}", path) from exc
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageReadError(f"colour images ({ds.get('PhotometricInterpretation')}) are not supported", path)
    return array


def load_series(info: SeriesInfo, where: str | Path | None = None) -> Any:
    """Read the pixels of a scanned series into a RAS ``MetaTensor`` of shape ``(1, columns, rows, slices)``."""
    return make_image(series_data(info, where))


def series_data(info: SeriesInfo, where: str | Path | None = None) -> ImageData:
    """Read the pixels of a scanned series as :class:`~medseg.io.meta.ImageData` ``(1, columns, rows, slices)``."""
    where = where if where is not None else (info.files[0].parent if info.files else "")
    headers: dict[Path, Any] = {}
    slices: list[_Slice] = []
    for file in info.files:
        ds = _read_header(file)
        headers[file] = ds
        slices.extend(_slices_of(ds, file))
    slices, affine_lps = stack_geometry(slices, where)
    frames: list[np.ndarray] = []
    cache: dict[Path, np.ndarray] = {}
    for s in slices:
        if s.path not in cache:
            # keep one file's pixels at a time
            cache = {s.path: _pixel_array(_read_header(s.path, pixels=True), s.path)}
        array = cache[s.path]
        frame = array if s.frame is None else array[s.frame]
        if frame.shape != s.matrix:
            raise ImageReadError(f"pixel data shape {frame.shape} does not match Rows×Columns {s.matrix}", s.path)
        frames.append(frame)
    raw = np.stack(frames)  # (k, rows, columns)
    if len({(s.slope, s.intercept) for s in slices}) == 1:
        data = apply_rescale(raw, slices[0].slope, slices[0].intercept)
    else:
        data = raw.astype(np.float32) * np.array([s.slope for s in slices], dtype=np.float32)[:, None, None]
        data += np.array([s.intercept for s in slices], dtype=np.float32)[:, None, None]
    data = np.transpose(data, (2, 1, 0))[None]  # (1, columns, rows, slices): a view, columns fastest in memory
    ds0 = headers[slices[0].path]
    meta = {
        "filename_or_obj": str(where),
        "format": "dicom",
        "series_instance_uid": info.series_instance_uid,
        "study_instance_uid": info.study_instance_uid,
        "frame_of_reference_uid": str(ds0.get("FrameOfReferenceUID", "")),
        "patient_id": info.patient_id,
        "modality": info.modality,
        "series_description": info.series_description,
        "sop_class_uid": str(ds0.get("SOPClassUID", "")),
        "sop_instance_uids": [s.sop_instance_uid for s in slices],
        "frame_numbers": [None if s.frame is None else s.frame + 1 for s in slices],
        "source_files": [str(s.path) for s in slices],
    }
    return image_data(data, LPS_TO_RAS @ affine_lps, meta)
