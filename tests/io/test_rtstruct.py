"""RT Structure Sets: contours with holes and islands, patient coordinates, references, and the label map back.

Real scans: the GE CT slices with dcmqi's liver/spine/heart maps, the Decathlon spleen CT (written as a DICOM series,
HU kept) with its manual mask, and the oblique ProstateX MR. dciodvfy (Debian's dicom3tools) checks the files where
it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_series import write_series

from medseg.io import load_image
from medseg.io.rtstruct import fill_contours, mask_contours, rasterize_rtstruct, write_rtstruct

pytest.importorskip("contourpy")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def _rings(shape: tuple[int, int]) -> np.ndarray:
    """Two islands; the first with a hole holding a third island; a one-pixel island; diagonal neighbours."""
    mask = np.zeros(shape, dtype=bool)
    mask[4:30, 5:33] = True
    mask[10:22, 12:26] = False  # hole
    mask[14:17, 17:20] = True  # island in the hole
    mask[40:52, 40:60] = True  # second island
    mask[58, 3] = True  # one pixel
    mask[34, 34] = mask[35, 35] = True  # touching only at a corner
    return mask


def test_contours_trace_holes_and_islands_and_fill_back_exactly() -> None:
    mask = _rings((64, 64))
    contours = mask_contours(mask)
    assert len(contours) == 7  # outer, hole, island in hole, second island, single pixel, two diagonal pixels
    np.testing.assert_array_equal(fill_contours(contours, mask.shape), mask)
    assert mask_contours(np.zeros((8, 8), bool)) == []
    square = np.zeros((10, 10), bool)
    square[2:6, 3:8] = True
    (outline,) = mask_contours(square)
    assert len(outline) == 8  # a rectangle with its corners cut: straight runs keep only their ends


def _write_and_read(labels: np.ndarray, series: Path, tmp_path: Path, names: dict[int, str]) -> tuple[Path, object]:
    source = load_image(series)
    path = write_rtstruct(labels, source.meta["source_files"], tmp_path / "rt.dcm", names,
                          affine=np.asarray(source.meta["affine"]), sop_instance_uids=source.meta["sop_instance_uids"],
                          uid_seed="test")
    return path, source


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        return []
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_rtstruct_of_real_ct_rasterises_back(shared_data: Path, tmp_path: Path) -> None:
    ct = shared_data / "dcmqi_ct3slice" / "ct-3slice"
    names = {1: "liver", 2: "spine", 3: "heart"}
    labels = np.zeros(load_image(ct).shape[1:], dtype=np.uint8)
    for value, name in names.items():
        labels[load_image(shared_data / "dcmqi_ct3slice" / f"{name}_seg.nrrd").numpy()[0] > 0] = value
    path, source = _write_and_read(labels, ct, tmp_path, names)
    back, read_names = rasterize_rtstruct(path, source)
    assert read_names == names
    for value in names:
        assert _dice(back == value, labels == value) >= 0.95
    np.testing.assert_array_equal(back, labels)  # in fact exact: contours never pass through a pixel centre

    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert ds.FrameOfReferenceUID == source.meta["frame_of_reference_uid"]
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.meta["series_instance_uid"]
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == source.meta["sop_instance_uids"]
    assert ds.StudyInstanceUID == source.meta["study_instance_uid"]
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "spine", "heart"]
    codes = [o.RTROIIdentificationCodeSequence[0] for o in ds.RTROIObservationsSequence]
    assert [(c.CodingSchemeDesignator, c.CodeValue) for c in codes] == [("SCT", "10200004"), ("SCT", "51282000"),
                                                                        ("SCT", "80891009")]
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    assert list(ds.ROIContourSequence[0].ROIDisplayColor) == [221, 130, 101]
    # every point lies on the plane of the slice its contour references (patient coordinates, mm)
    positions = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in source.meta["source_files"]}
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            image = positions[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            iop = np.array(image.ImageOrientationPatient, dtype=float)
            normal = np.cross(iop[:3], iop[3:])
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            np.testing.assert_allclose(points @ normal, np.dot(np.array(image.ImagePositionPatient, float), normal),
                                       atol=1e-2)
    assert _dciodvfy_errors(path) == []
    # reproducible: the same input and seed give the same UIDs
    again = pydicom.dcmread(_write_and_read(labels, ct, tmp_path / "again", names)[0])
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (ds.SOPInstanceUID, ds.SeriesInstanceUID)


def test_rtstruct_of_real_spleen_ct_and_oblique_mr(shared_data: Path, tmp_path: Path) -> None:
    spleen = shared_data / "ivadomed_msd_spleen"
    image, label = load_image(spleen / "sub-spleen2_ct.nii.gz"), load_image(spleen / "sub-spleen2_ct_seg-manual.nii.gz")
    write_series(image.numpy()[0], np.asarray(image.meta["affine"]), tmp_path / "spleen", modality="CT",
                 intercept=-1024.0, description="spleen ct")
    labels = (label.numpy()[0] > 0).astype(np.uint8)
    path, source = _write_and_read(labels, tmp_path / "spleen", tmp_path / "s", {1: "spleen"})
    back, _ = rasterize_rtstruct(path, source)
    assert labels.sum() > 1000 and _dice(back == 1, labels == 1) >= 0.95
    assert _dciodvfy_errors(path) == []

    mr_dir = shared_data / "prostatex_t2_series"
    mr = load_image(mr_dir)
    labels = np.zeros(mr.shape[1:], dtype=np.uint8)
    rng = np.random.default_rng(0)
    for k in range(3, 16):
        labels[:, :, k] = np.pad(_rings((64, 64)), 160)[:384, :384] * (1 + (k % 2))
    labels[rng.integers(0, 384, 40), rng.integers(0, 384, 40), 10] = 2  # scattered single voxels
    path, source = _write_and_read(labels, mr_dir, tmp_path / "mr", {1: "prostate", 2: "lesion"})
    back, _ = rasterize_rtstruct(path, source)
    np.testing.assert_array_equal(back, labels)  # oblique geometry: patient coordinates and back
    assert _dciodvfy_errors(path) == []
