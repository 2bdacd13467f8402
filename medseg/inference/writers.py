"""Writing predictions: label images (NIfTI/NRRD), probabilities (``.npz``) and DICOM Segmentations.

Every file goes through :func:`medseg.utils.files.atomic_write` (a temporary name in the destination folder, renamed
into place), so a killed process or a full disk leaves either no file or a complete one. Label images go through
:func:`medseg.io.save_image` (atomic too) with the input's affine, so they carry its exact geometry.

DICOM input can be written as a DICOM Segmentation (``highdicom.seg.Segmentation``, binary, one segment per
foreground label that holds voxels, named from the manifest or the plans and coded by
:mod:`medseg.io.segment_codes`) that references the source series: its frames are the source slices in the order of
``meta["source_files"]`` (sorted along the slice normal by :mod:`medseg.io.dicom`), empty frames left out, each
frame's pixel rows/columns the source image's rows/columns, so it reads back aligned slice for slice. It can also be
written as an RT Structure Set (:mod:`medseg.io.rtstruct`) for radiotherapy planning systems.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InferenceError
from medseg.io.dicom_derived import derived_problem, derived_uid, read_sources
from medseg.io.naming import SAMPLES_FOLDER, UNCERTAINTY_FOLDER
from medseg.utils.files import atomic_write

#: Output format → file ending.
FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "png": ".png", "dicom-seg": ".dcm", "dicom-rtstruct": ".dcm"}
#: What the DICOM formats add to a case's file name, so that both fit in one folder.
DICOM_TAGS = {"dicom-seg": "_seg", "dicom-rtstruct": "_rtstruct"}
#: Label value → name of the outputs (``{"1": "liver", …}``), written beside them; ``medseg volumes`` reads it.
LABELS_FILE = "labels.json"


def output_path(out_dir: Path, case_id: str, fmt: str) -> Path:
    """Where the label output of ``case_id`` goes (``CASE.nii.gz``, ``CASE_seg.dcm``, ``CASE_rtstruct.dcm``…)."""
    if fmt not in FORMATS:
        raise InferenceError(f"unknown output format {fmt!r} (use {', '.join(FORMATS)})")
    return out_dir / f"{case_id}{DICOM_TAGS.get(fmt, '')}{FORMATS[fmt]}"


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
    """Why a DICOM series (the ``meta`` of its loaded image) cannot be referenced by a DICOM SEG, or ``None``."""
    return derived_problem(meta, "DICOM SEG")


def rtstruct_problem(meta: Mapping[str, Any]) -> str | None:
    """Why a DICOM series (the ``meta`` of its loaded image) cannot be referenced by an RTSTRUCT, or ``None``."""
    return derived_problem(meta, "RTSTRUCT")


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


def present_labels(labels: np.ndarray, label_names: Mapping[int, str]) -> list[tuple[int, str]]:
    """Foreground ``(label value, name)`` pairs of the labels that hold at least one voxel, by value.

    Labels without a name are named ``label_N``. These become segments (SEG) and ROIs (RTSTRUCT) 1…N in order:
    empty labels are left out.
    """
    values = sorted(int(v) for v in np.unique(labels) if int(v) > 0)
    return [(v, str(label_names.get(v, f"label_{v}"))) for v in values]


def write_dicom_seg(
    labels: np.ndarray,
    source_files: Sequence[str | Path],
    path: Path,
    label_names: Mapping[int, str],
    *,
    descriptions: Mapping[int, Any] | None = None,
    series_description: str = "medseg segmentation",
    software_version: str = "",
    uid_seed: str | None = None,
) -> Path:
    """Write a label map of a DICOM series as a binary DICOM Segmentation (highdicom), atomically.

    Each foreground label with voxels becomes one segment, coded as :mod:`medseg.io.segment_codes` describes it
    (SNOMED CT category and type, laterality modifier, display colour as CIE L*a*b*); empty labels and empty frames
    are left out.

    Args:
        labels: ``(X, Y, Z)`` label map on the series' grid: ``X`` columns, ``Y`` rows, ``Z`` the slices in the
            order of ``source_files``.
        source_files: The source slice files, one per ``Z`` index.
        path: Output ``.dcm`` file.
        label_names: Label value → segment label (background 0 is not written).
        descriptions: Label value → :class:`~medseg.io.segment_codes.LabelDescription` (default: from the names).
        series_description: SeriesDescription of the SEG.
        software_version: SoftwareVersions of the SEG.
        uid_seed: Makes the SeriesInstanceUID and SOPInstanceUID reproducible (see :func:`derived_uid`).

    Returns:
        The path written.

    Raises:
        InferenceError: The label map does not fit the series, or it is empty (nothing to write).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg.io.segment_codes import describe_labels

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != len(source_files):
        raise InferenceError(f"a {labels.shape} label map does not match a series of {len(source_files)} slices",
                             path)
    sources = read_sources(source_files)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape[:2] != (cols, rows):
        raise InferenceError(f"label map {labels.shape[:2]} does not match the source matrix {cols}×{rows}", path)
    segments = present_labels(labels, label_names)
    if not segments:
        raise InferenceError("the prediction is empty: no segment to write", path)
    coded = dict(descriptions or {})
    coded.update({v: d for v, d in describe_labels(dict(segments)).items() if v not in coded})
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    for number, (value, _) in enumerate(segments, start=1):
        lookup[value] = number
    pixel_array = lookup[np.transpose(labels, (2, 1, 0))]  # (frames, rows, columns), segment numbers
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg", family=codes.cid7162.ArtificialIntelligence,
                                                   version=software_version or "unknown")
    items = []
    for number, (value, name) in enumerate(segments, start=1):
        d = coded[value]
        item = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=hd.sr.CodedConcept(d.category.value, d.category.scheme, d.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(d.type.value, d.type.scheme, d.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*d.color))
        if d.modifier is not None:
            item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(d.modifier.value, d.modifier.scheme, d.modifier.meaning)]
        items.append(item)
    with warnings.catch_warnings():
        # highdicom warns about single-component patient names, quoting the name: no patient data in logs
        warnings.filterwarnings("ignore", message=".*intended person name.*", category=UserWarning)
        seg = _segmentation(hd, sources, pixel_array, segments, items, uid_seed, software_version,
                            series_description)
    return atomic_write(path, lambda h: seg.save_as(h, enforce_file_format=True))


def _segmentation(hd: Any, sources: list[Any], pixel_array: np.ndarray, segments: list[tuple[int, str]],
                  items: list[Any], uid_seed: str | None, software_version: str, series_description: str) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array.astype(np.uint16 if len(segments) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=items,
        series_instance_uid=derived_uid(uid_seed, "seg-series"),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=derived_uid(uid_seed, "seg-instance"),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg predict",
        software_versions=software_version or "unknown",
        device_serial_number="0",
        series_description=series_description,
        content_label="MEDSEG",
        content_description=f"medseg {len(segments)} segment(s)"[:64],
        omit_empty_frames=True,
    )


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


def uncertainty_paths(out_dir: Path, case_id: str, ending: str = ".nii.gz") -> dict[str, Path]:
    """Where the outputs of ``--samples`` for ``case_id`` go, by kind.

    ``mean_probabilities``, ``entropy`` and ``mutual_information`` in ``OUT/uncertainty/`` (``CASE_<kind>``) and
    ``samples`` (the per-sample label maps, one channel per sample) as ``OUT/samples/CASE``
    (:data:`medseg.io.naming.UNCERTAINTY_FOLDER`, :data:`~medseg.io.naming.SAMPLES_FOLDER`).
    """
    folder = out_dir / UNCERTAINTY_FOLDER
    paths = {kind: folder / f"{case_id}_{kind}{ending}" for kind in ("mean_probabilities", "entropy",
                                                                      "mutual_information")}
    paths["samples"] = out_dir / SAMPLES_FOLDER / f"{case_id}{ending}"
    return paths


def write_uncertainty(summary: Any, affine: np.ndarray, out_dir: Path, case_id: str, ending: str = ".nii.gz"
                      ) -> list[Path]:
    """Write a case's :class:`~medseg.inference.uncertainty.SampleSummary` with the label map's affine, atomically.

    The mean probabilities (one channel per class, float32), the entropy and the mutual information (float32, nats)
    and, when the summary kept them, the per-sample label maps (one channel per sample): NIfTI (``.nii.gz``) or
    NRRD (``.nrrd``) by ``ending``, each through :func:`medseg.io.save_image`.

    Returns:
        The paths written.
    """
    from medseg.io import save_image

    paths = uncertainty_paths(out_dir, case_id, ending)
    arrays = {"mean_probabilities": summary.mean_probabilities, "entropy": summary.entropy[None],
              "mutual_information": summary.mutual_information[None]}
    if summary.samples is not None:
        arrays["samples"] = summary.samples
    return [save_image(np.ascontiguousarray(array), paths[kind], affine=affine) for kind, array in arrays.items()]
