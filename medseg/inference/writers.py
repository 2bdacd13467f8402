"""Writing predictions: label images (NIfTI/NRRD), probabilities (``.npz``) and DICOM Segmentations.

Every file goes through :func:`medseg.utils.files.atomic_write` (a temporary name in the destination folder, renamed
into place), so a killed process or a full disk leaves either no file or a complete one. Label images go through
:func:`medseg.io.save_image` (atomic too) with the input's affine, so they carry its exact geometry.

DICOM input can be written as a DICOM Segmentation (``highdicom.seg.Segmentation``, binary, one segment per
foreground label named from the manifest or the plans) that references the source series: its frames are the
source slices in the order of ``meta["source_files"]`` (sorted along the slice normal by :mod:`medseg.io.dicom`),
each frame's pixel rows/columns are the source image's rows/columns, so it reads back aligned slice for slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InferenceError
from medseg.utils.files import atomic_write

#: Output format → file ending.
FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "png": ".png", "dicom-seg": ".dcm"}
#: Label value → name of the outputs (``{"1": "liver", …}``), written beside them; ``medseg volumes`` reads it.
LABELS_FILE = "labels.json"


#: Patient/study attributes a SEG must carry (Type 2: present, possibly empty), copied from the source images.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "AccessionNumber", "StudyID")


def output_path(out_dir: Path, case_id: str, fmt: str) -> Path:
    """Where the label output of ``case_id`` goes."""
    if fmt not in FORMATS:
        raise InferenceError(f"unknown output format {fmt!r} (use {', '.join(FORMATS)})")
    return out_dir / f"{case_id}{FORMATS[fmt]}"


def instances_path(out_dir: Path, case_id: str) -> Path:
    """Where the object table of an instance prediction of ``case_id`` goes."""
    return out_dir / f"{case_id}_instances.json"


def write_instances(instances: Sequence[Mapping[str, Any]], path: Path, case_id: str) -> Path:
    """Write an instance prediction's object table (``{"case", "task", "instances": [...]}``) atomically.

    Each object: ``id`` (its value in the label map), ``class``, ``class_name``, ``score``, ``voxels``,
    ``volume_mm3`` and ``centroid_mm`` (RAS). ``medseg evaluate`` reads the classes from it.
    """
    from medseg.utils.files import atomic_json

    return atomic_json(path, {"case": case_id, "task": "instance", "instances": list(instances)})


def probabilities_path(out_dir: Path, case_id: str) -> Path:
    """Where the probabilities of ``case_id`` go."""
    return out_dir / f"{case_id}_probabilities.npz"


def dicom_seg_problem(meta: Mapping[str, Any]) -> str | None:
    """Why a DICOM series (the ``meta`` of its loaded image) cannot be referenced by a DICOM SEG, or ``None``.

    A SEG references its source by StudyInstanceUID, SeriesInstanceUID, SOPClassUID and each slice's
    SOPInstanceUID; anonymisation that empties them leaves nothing to reference.
    """
    missing = [name for name, key in (("StudyInstanceUID", "study_instance_uid"),
                                      ("SeriesInstanceUID", "series_instance_uid"),
                                      ("SOPClassUID", "sop_class_uid"))
               if not str(meta.get(key) or "").strip()]
    uids = list(meta.get("sop_instance_uids") or [])
    if not uids or any(not str(u).strip() for u in uids):
        missing.append("SOPInstanceUID")
    if not meta.get("source_files"):
        missing.append("source files")
    if missing:
        return (f"cannot be written as DICOM SEG: the source series has no {', '.join(missing)} (anonymised "
                "without new UIDs?)")
    return None


def write_labels(labels: Any, path: Path) -> Path:
    """Write a ``(1, *spatial)`` label ``MetaTensor`` as NIfTI or NRRD (by the ending), atomically."""
    from medseg.io import save_image

    return save_image(labels, path)


def write_probabilities(probabilities: np.ndarray, path: Path, label_names: Mapping[int, str] | None = None) -> Path:
    """Write ``(K, *spatial)`` probabilities (image axis order, float16) as a compressed ``.npz``.

    Keys: ``probabilities`` and ``labels`` (the names of the K classes, in order).
    """
    names = np.array([str((label_names or {}).get(k, k)) for k in range(probabilities.shape[0])])
    return atomic_write(path, lambda h: np.savez_compressed(h, probabilities=probabilities, labels=names))


def segment_numbering(label_names: Mapping[int, str], present_max: int) -> list[tuple[int, str]]:
    """Foreground ``(label value, name)`` pairs written as segments 1…N (values up to the model's classes)."""
    values = sorted({v for v in label_names if v > 0} | set(range(1, present_max + 1)))
    return [(v, str(label_names.get(v, f"label_{v}"))) for v in values]


def write_dicom_seg(
    labels: np.ndarray,
    source_files: Sequence[str | Path],
    path: Path,
    label_names: Mapping[int, str],
    *,
    num_classes: int | None = None,
    series_description: str = "medseg segmentation",
    software_version: str = "",
) -> Path:
    """Write a label map of a DICOM series as a binary DICOM Segmentation (highdicom), atomically.

    Args:
        labels: ``(X, Y, Z)`` label map on the series' grid: ``X`` columns, ``Y`` rows, ``Z`` the slices in the
            order of ``source_files``.
        source_files: The source slice files, one per ``Z`` index.
        path: Output ``.dcm`` file.
        label_names: Label value → segment label (background 0 is not written).
        num_classes: Classes of the model (segments 1…K-1 are described even when empty).
        series_description: SeriesDescription of the SEG.
        software_version: SoftwareVersions of the SEG.

    Returns:
        The path written.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != len(source_files):
        raise InferenceError(f"a {labels.shape} label map does not match a series of {len(source_files)} slices",
                             path)
    sources = [pydicom.dcmread(str(f)) for f in source_files]
    for ds in sources:  # archives often omit these Type 2 attributes; highdicom copies them (empty is valid)
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:  # empty means the default repertoire
            del ds.SpecificCharacterSet
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape[:2] != (cols, rows):
        raise InferenceError(f"label map {labels.shape[:2]} does not match the source matrix {cols}×{rows}", path)
    top = (num_classes - 1) if num_classes else int(labels.max())
    segments = segment_numbering(label_names, top)
    lookup = np.zeros(max(int(labels.max()), max((v for v, _ in segments), default=0)) + 1, dtype=np.uint16)
    for number, (value, _) in enumerate(segments, start=1):
        lookup[value] = number
    pixel_array = lookup[np.transpose(labels, (2, 1, 0))]  # (frames, rows, columns), segment numbers
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg", family=codes.cid7162.ArtificialIntelligence,
                                                   version=software_version or "unknown")
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=tissue,
            segmented_property_type=tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, (_, name) in enumerate(segments, start=1)
    ]
    if not descriptions:
        raise InferenceError("no foreground labels to write as segments", path)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array.astype(np.uint16 if len(segments) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg predict",
        software_versions=software_version or "unknown",
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=False,
    )
    return atomic_write(path, lambda h: seg.save_as(h, enforce_file_format=True))


def read_dicom_seg_labels(path: Path, source_sop_instance_uids: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
    """Read a SEG back as an ``(X, Y, Z)`` label map aligned with the given source instances (for checks).

    Returns:
        The label map (segment numbers) and segment number → segment label.
    """
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    numbers = list(seg.get_segment_numbers())
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(source_sop_instance_uids),
                                               segment_numbers=numbers, combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    names = {int(n): str(seg.get_segment_description(n).segment_label) for n in numbers}
    return np.transpose(np.asarray(pixels), (2, 1, 0)), names
