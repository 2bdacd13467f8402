"""RT Structure Sets (RTSTRUCT): label maps as closed planar contours in patient coordinates, and back.

Radiotherapy planning systems read structures as contours, not masks. :func:`write_rtstruct` writes one ROI per
foreground label that holds voxels; for each slice of the source series it traces the label's boundary with
marching squares at level 0.5 (``contourpy``) on the slice's pixel grid, so every island becomes a contour and every
hole a contour inside it, and maps the points to patient coordinates (LPS, mm) through the series' geometry. Each
contour is ``CLOSED_PLANAR``, references the image it lies on (Contour Image Sequence), and the structure set
references the study, the series and every image of it (Referenced Frame of Reference Sequence). ROIs carry the
label's name, display colour and SNOMED CT type as RT ROI Identification Code (:mod:`medseg.io.segment_codes`);
anatomical structures are interpreted type ``ORGAN``.

Holes follow the even-odd rule that planning systems apply to the contours of one ROI on one slice (a point is
inside when an odd number of the slice's contours enclose it: an inner contour, wholly inside an outer one, cuts a
hole, and an island inside that hole is a third contour), and :func:`rasterize_rtstruct` reads them back that way: a
pixel is in the ROI when its centre is enclosed by an odd number of the ROI's contours on its slice.
Marching-squares contours at level 0.5 never pass through a pixel centre, so rasterising them back gives the label
map again, pixel for pixel (points are stored to 0.001 mm). Collinear points along straight runs are dropped, which
does not move the boundary. The file is written in Implicit VR Little Endian, whose 32-bit value lengths hold
contours of any length (an explicit VR DS value stops at 64 KiB).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ImageReadError, InferenceError
from medseg.io.dicom_derived import derived_uid, read_sources
from medseg.io.geometry import LPS_TO_RAS
from medseg.utils.files import atomic_write

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: The SOP class a structure set uses to reference its study (Detached Study Management, as PS3.3 C.8.8.5 asks).
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed boundary contours of a 2D mask, in pixel index coordinates.

    Args:
        mask: ``(X, Y)`` boolean slice (``X`` columns, ``Y`` rows, as a label map's slice ``[:, :, k]``).

    Returns:
        One ``(N, 2)`` array of ``(x, y)`` points per contour (not repeating the first point), outer boundaries of
        islands and boundaries of holes alike, collinear points dropped.
    """
    import contourpy

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    padded = np.pad(mask.T.astype(np.float64), 1)  # (rows, columns): contourpy's x runs along the columns
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    out = []
    for line in generator.lines(0.5):
        points = np.asarray(line, dtype=np.float64)[:-1] - 1.0  # closed lines repeat the first point; undo the pad
        points = _drop_collinear(points)
        if len(points) >= 3:
            out.append(points)
    return out


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Points of a closed polygon without those lying on the straight line between their neighbours."""
    if len(points) < 4:
        return points
    before = np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - before[:, 1]) - \
        (points[:, 1] - before[:, 1]) * (after[:, 0] - before[:, 0])
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def fill_contours(contours: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise closed contours by the even-odd rule: a pixel is set when its centre lies inside an odd number.

    Args:
        contours: ``(N, 2)`` arrays of ``(x, y)`` pixel coordinates.
        shape: ``(X, Y)`` of the slice.

    Returns:
        ``(X, Y)`` boolean mask.
    """
    out = np.zeros(shape, dtype=bool)
    xs_all = np.arange(shape[0])
    for contour in contours:
        points = np.asarray(contour, dtype=np.float64)
        if len(points) < 3:
            continue
        x0, y0 = points[:, 0], points[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        inside = np.zeros(shape, dtype=bool)
        low = max(0, int(np.ceil(y0.min())))
        high = min(shape[1] - 1, int(np.floor(y0.max())))
        for row in range(low, high + 1):
            crossing = (y0 <= row) != (y1 <= row)  # half-open: a vertex on the row counts once
            if not crossing.any():
                continue
            t = (row - y0[crossing]) / (y1[crossing] - y0[crossing])
            xs = np.sort(x0[crossing] + t * (x1[crossing] - x0[crossing]))
            for a, b in zip(xs[0::2], xs[1::2], strict=False):
                inside[(xs_all > a) & (xs_all < b), row] = True
        out ^= inside
    return out


def _coded(code: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning[:64]
    return item


def _image_reference(sop_class: str, sop_uid: str, frame: int | None) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _ds_text(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


#: (3006,0050) Contour Data.
_CONTOUR_DATA = 0x30060050


def _raw_ds(tag: int, values: np.ndarray) -> Any:
    """A DS element of many values, encoded once as text.

    pydicom's per-value checks take minutes for long contours; each value has at most 16 characters
    (``-123456.789``), as DS requires.
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    raw = "\\".join(_ds_text(float(v)) for v in values).encode("ascii")
    if len(raw) % 2:
        raw += b" "
    return RawDataElement(Tag(tag), "DS", len(raw), raw, 0, True, True)


def write_rtstruct(
    labels: np.ndarray,
    source_files: Sequence[str | Path],
    path: Path,
    label_names: Mapping[int, str],
    *,
    affine: np.ndarray,
    sop_instance_uids: Sequence[str],
    frame_numbers: Sequence[int | None] | None = None,
    descriptions: Mapping[int, Any] | None = None,
    series_description: str = "medseg structures",
    software_version: str = "",
    uid_seed: str | None = None,
) -> Path:
    """Write a label map of a DICOM series as an RT Structure Set, atomically (see the module docstring).

    Args:
        labels: ``(X, Y, Z)`` label map on the series' grid (slices in the order of ``source_files``).
        source_files: The source slice files, one per ``Z`` index.
        path: Output ``.dcm`` file.
        label_names: Label value → ROI name.
        affine: The series' RAS affine (voxel ``(x, y, z)`` → mm), as :func:`medseg.io.load_image` gives it.
        sop_instance_uids: SOPInstanceUID of each slice ``z``.
        frame_numbers: Frame number of each slice in a multi-frame file (``None`` for single-frame files).
        descriptions: Label value → :class:`~medseg.io.segment_codes.LabelDescription` (default: from the names).
        series_description: SeriesDescription of the structure set.
        software_version: SoftwareVersions.
        uid_seed: Makes the SeriesInstanceUID and SOPInstanceUID reproducible
            (:func:`medseg.io.dicom_derived.derived_uid`).

    Returns:
        The path written.

    Raises:
        InferenceError: The label map does not fit the series, or it is empty (nothing to write).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ImplicitVRLittleEndian

    from medseg.io.segment_codes import describe_labels

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != len(source_files) or len(sop_instance_uids) != len(source_files):
        raise InferenceError(f"a {labels.shape} label map does not match a series of {len(source_files)} slices",
                             path)
    frames = list(frame_numbers) if frame_numbers is not None else [None] * len(source_files)
    values = sorted(int(v) for v in np.unique(labels) if int(v) > 0)
    if not values:
        raise InferenceError("the prediction is empty: no structure to write", path)
    names = {v: str(label_names.get(v, f"label_{v}")) for v in values}
    coded = dict(descriptions or {})
    coded.update({v: d for v, d in describe_labels(names).items() if v not in coded})
    sources = read_sources(source_files, pixels=False)
    first = sources[0]
    sop_class = str(first.SOPClassUID)
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    now = _dt.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = derived_uid(uid_seed, "rtstruct-instance")
    meta.TransferSyntaxUID = ImplicitVRLittleEndian  # 32-bit lengths: long contours fit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    charset = first.get("SpecificCharacterSet")
    if charset:
        ds.SpecificCharacterSet = charset
    elif any(not n.isascii() for n in names.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID"):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg predict"
    ds.SoftwareVersions = software_version or "unknown"
    ds.SeriesDescription = series_description[:64]
    ds.SeriesInstanceUID = derived_uid(uid_seed, "rtstruct-series")
    ds.SeriesNumber = int(getattr(first, "SeriesNumber", 0) or 0) + 2000
    ds.SeriesDate = ds.InstanceCreationDate
    ds.SeriesTime = ds.InstanceCreationTime
    ds.InstanceNumber = 1
    ds.OperatorsName = ""
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = series_description[:64]
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime

    frame_of_reference = str(first.FrameOfReferenceUID)
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = str(first.SeriesInstanceUID)
    series_ref.ContourImageSequence = [_image_reference(sop_class, uid, frame)
                                       for uid, frame in zip(sop_instance_uids, frames, strict=True)]
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_REFERENCE_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study_ref.RTReferencedSeriesSequence = [series_ref]
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_of_reference
    frame_ref.RTReferencedStudySequence = [study_ref]
    ds.ReferencedFrameOfReferenceSequence = [frame_ref]

    rois, contours_seq, observations = [], [], []
    for number, value in enumerate(values, start=1):
        d = coded[value]
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = names[value][:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"medseg {software_version}".strip()[:64]
        rois.append(roi)

        items = []
        for k in range(labels.shape[2]):
            for contour in mask_contours(labels[:, :, k] == value):
                voxels = np.column_stack([contour, np.full(len(contour), float(k)), np.ones(len(contour))])
                points = (lps @ voxels.T)[:3].T
                item = Dataset()
                item.ContourImageSequence = [_image_reference(sop_class, sop_instance_uids[k], frames[k])]
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item.ContourNumber = len(items) + 1
                item[_CONTOUR_DATA] = _raw_ds(_CONTOUR_DATA, points.ravel())
                items.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(d.color)
        roi_contour.ContourSequence = items
        roi_contour.ReferencedROINumber = number
        contours_seq.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.ROIObservationLabel = names[value][:16]
        observation.RTROIInterpretedType = "ORGAN" if d.is_anatomy else ""
        observation.ROIInterpreter = ""
        observation.RTROIIdentificationCodeSequence = [_coded(d.type)]
        observations.append(observation)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours_seq
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"

    for roi_contour in contours_seq:  # written as they are: no re-parsing of the contour text (see _raw_ds)
        for item in roi_contour.ContourSequence:
            item.set_original_encoding(True, True, item._character_set)

    def produce(handle: Any) -> None:
        pydicom.dcmwrite(handle, ds, enforce_file_format=True)

    return atomic_write(path, produce)


def is_rtstruct(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file holding an RT Structure Set (read from its header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"], force=True)
    except Exception:
        return False
    return str(getattr(ds, "SOPClassUID", "")) == RTSTRUCT_SOP_CLASS


def rasterize_rtstruct(path: str | Path, image: Any) -> tuple[np.ndarray, dict[int, str]]:
    """Rasterise the ROIs of an RT Structure Set on the grid of its source series.

    Each contour is assigned to the slice its Contour Image Sequence references (or, without one, to the nearest
    slice plane), mapped to that slice's pixel coordinates and filled by the even-odd rule; ROI ``n`` (in the order
    of the Structure Set ROI Sequence) gets value ``n``, a later ROI overwriting an earlier one where they overlap.

    Args:
        path: The RTSTRUCT file.
        image: The source series as :func:`medseg.io.load_image` reads it (its affine and ``sop_instance_uids``).

    Returns:
        ``(X, Y, Z)`` label map and value → ROI name.

    Raises:
        ImageReadError: Not a readable RT Structure Set, or contours that are not closed planar.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise ImageReadError(f"corrupt DICOM file: {' '.join(str(exc).split())[:200]}", path) from exc
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise ImageReadError("not an RT Structure Set", path)
    shape = tuple(int(s) for s in image.shape[1:])
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(image.meta["affine"], dtype=np.float64)
    to_voxel = np.linalg.inv(lps)
    slice_of = {str(uid): k for k, uid in enumerate(image.meta.get("sop_instance_uids") or [])}
    numbers = {int(r.ROINumber): i + 1 for i, r in enumerate(ds.get("StructureSetROISequence", []))}
    names = {numbers[int(r.ROINumber)]: str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    out = np.zeros(shape, dtype=np.uint16 if len(numbers) > 255 else np.uint8)
    for roi in ds.get("ROIContourSequence", []):
        value = numbers.get(int(roi.ReferencedROINumber))
        if value is None:
            continue
        per_slice: dict[int, list[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", ""))
            if kind != "CLOSED_PLANAR":
                raise ImageReadError(f"ROI {names[value]!r}: {kind or 'untyped'} contours cannot be filled", path)
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            voxels = (to_voxel @ np.column_stack([points, np.ones(len(points))]).T)[:3].T
            referenced = [str(i.ReferencedSOPInstanceUID) for i in contour.get("ContourImageSequence", [])]
            k = slice_of.get(referenced[0]) if referenced else None
            if k is None:
                k = int(np.rint(voxels[:, 2].mean()))
            if 0 <= k < shape[2]:
                per_slice.setdefault(k, []).append(voxels[:, :2])
        for k, contours in per_slice.items():
            out[:, :, k][fill_contours(contours, shape[:2])] = value
    return out, names
