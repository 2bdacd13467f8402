"""Reading DICOM Segmentation objects (SEG) as label maps with their geometry.

A SEG stores one binary (or fractional) mask per segment, frame by frame, each frame with its own plane position in
the frame of reference of the source series. :func:`read_dicom_seg` rebuilds the regular 3D grid from those positions
(highdicom's ``Segmentation.get_volume``) and returns one ``(1, X, Y, Z)`` label map whose values are the segment
numbers, in medseg's convention: ``X`` columns, ``Y`` rows, ``Z`` slices in ascending order along the slice normal
(``row × column`` direction cosines), RAS+ affine in millimetres — the same voxel order and affine that
:func:`medseg.io.load_image` gives the source series, so a SEG written by ``medseg predict --format dicom-seg`` reads
back voxel for voxel on its source grid.

Refused with a one-line error: overlapping segments (one label map cannot hold them), frames that do not form one
regular stack, and SEGs of slide microscopy (no patient coordinate system). Reading needs highdicom (the ``dicom``
extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ImageReadError
from medseg.io.dicom import SEG_SOP_CLASS
from medseg.io.geometry import LPS_TO_RAS
from medseg.io.meta import ImageData, image_data, make_image


def is_dicom_seg(path: str | Path) -> bool:
    """Whether ``path`` is a single DICOM file holding a Segmentation object (read from its header only)."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"], force=True)
    except Exception:
        return False
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS


def _stack_affine(volume_affine: np.ndarray, shape_src: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """Reorder the ``(slice, row, column) → LPS`` affine of a highdicom volume to ``(column, row, slice) → LPS``.

    Returns:
        The reordered affine and whether the slice axis had to be reversed to ascend along ``row × column``.
    """
    affine = np.eye(4)
    affine[:3, 0] = volume_affine[:3, 2]
    affine[:3, 1] = volume_affine[:3, 1]
    affine[:3, 2] = volume_affine[:3, 0]
    affine[:3, 3] = volume_affine[:3, 3]
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if float(np.dot(normal, affine[:3, 2])) >= 0:
        return affine, False
    affine[:3, 3] = affine[:3, 3] + (shape_src[0] - 1) * affine[:3, 2]
    affine[:3, 2] = -affine[:3, 2]
    return affine, True


def read_dicom_seg(path: str | Path) -> Any:
    """Read a DICOM Segmentation as a ``(1, X, Y, Z)`` label-map ``MetaTensor`` (:func:`dicom_seg_data`)."""
    return make_image(dicom_seg_data(path))


def dicom_seg_data(path: str | Path) -> ImageData:
    """Read a DICOM Segmentation as a ``(1, X, Y, Z)`` label map of segment numbers (0 is background).

    ``meta`` holds the usual geometry keys (see :mod:`medseg.io.image`) and ``format`` ``dicom-seg``,
    ``segment_labels`` (segment number → SegmentLabel), ``series_instance_uid``, ``study_instance_uid``,
    ``frame_of_reference_uid``, ``patient_id``, ``series_description`` and ``referenced_series_uids`` (the source
    series).

    Raises:
        ImageReadError: Not a readable SEG, overlapping segments, frames that are not one regular stack, or
            highdicom missing.
    """
    path = Path(path)
    try:
        import highdicom as hd
    except ImportError as exc:
        raise ImageReadError("reading DICOM Segmentations needs highdicom: pip install 'medseg[dicom]'", path) from exc
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise ImageReadError(f"corrupt DICOM Segmentation: {' '.join(str(exc).split())[:200]}", path) from exc
    numbers = [int(n) for n in seg.get_segment_numbers()]
    if not numbers:
        raise ImageReadError("DICOM Segmentation without segments", path)
    try:
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "overlap" in text.lower():
            raise ImageReadError("segments overlap: they cannot be read as one label map", path) from exc
        raise ImageReadError(f"frames do not form one regular 3D stack: {text[:200]}", path) from exc
    if volume.coordinate_system is not None and str(volume.coordinate_system.name) != "PATIENT":
        raise ImageReadError("not a patient-space segmentation (slide microscopy SEGs are not supported)", path)
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ImageReadError(f"expected a 3D stack of frames, got an array of shape {array.shape}", path)
    affine_lps, reverse = _stack_affine(np.asarray(volume.affine, dtype=np.float64), array.shape)
    labels = np.transpose(array, (2, 1, 0))
    if reverse:
        labels = labels[:, :, ::-1]
    labels = np.ascontiguousarray(labels)
    narrowed = labels.astype(np.uint8) if max(numbers) < 256 else labels
    referenced = sorted({uid for _, uid, _ in seg.get_source_image_uids()})
    meta = {
        "filename_or_obj": str(path),
        "format": "dicom-seg",
        "segment_labels": {n: str(seg.get_segment_description(n).segment_label) for n in numbers},
        "series_instance_uid": str(getattr(seg, "SeriesInstanceUID", "")),
        "study_instance_uid": str(getattr(seg, "StudyInstanceUID", "")),
        "frame_of_reference_uid": str(getattr(seg, "FrameOfReferenceUID", "")),
        "patient_id": str(getattr(seg, "PatientID", "")),
        "series_description": str(getattr(seg, "SeriesDescription", "")),
        "referenced_series_uids": referenced,
    }
    return image_data(narrowed[None], LPS_TO_RAS @ affine_lps, meta)
