"""DICOM series reading: sorting, rescale, compressed syntaxes, multi-frame, and every geometry failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_series import SYNTAXES, read_with_simpleitk, write_series
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from testutils import oblique_affine

from medseg.errors import DicomSeriesError, GeometryError, ImageReadError
from medseg.io import load_image, save_image, scan_dicom

OBLIQUE = oblique_affine((0.8, 0.9, 2.0), (15.0, -10.0, 30.0), (-60.0, 25.0, 40.0))


def _affine(img) -> np.ndarray:
    return np.asarray(img.meta["affine"], dtype=np.float64)


@pytest.fixture(scope="module")
def hu_volume(mni_crop) -> np.ndarray:
    """Real anatomy with CT-like values: the MNI crop mapped to -1000..1550 'HU'."""
    data, _ = mni_crop
    return data.astype(np.int16) * 10 - 1000


def test_series_sorted_by_position_not_name_or_instance(tmp_path: Path, hu_volume, mni_crop) -> None:
    _, affine = mni_crop
    write_series(hu_volume, affine, tmp_path, intercept=-1024, shuffle=True, reverse_instance_numbers=True)
    img = load_image(tmp_path)
    assert tuple(img.shape) == (1, *hu_volume.shape)
    assert img.dtype == torch.int16 and img.meta["modality"] == "CT"
    np.testing.assert_array_equal(img[0].numpy(), hu_volume)
    np.testing.assert_allclose(_affine(img), affine, atol=1e-5)
    assert len(img.meta["sop_instance_uids"]) == hu_volume.shape[2]


@pytest.mark.parametrize("syntax", [None, *SYNTAXES])
def test_oblique_series_matches_simpleitk(tmp_path: Path, hu_volume, syntax: str | None) -> None:
    series = tmp_path / "series"
    write_series(hu_volume, OBLIQUE, series, intercept=-1024, syntax=syntax)
    if syntax is not None:
        assert pydicom.dcmread(next(series.iterdir())).file_meta.TransferSyntaxUID.is_compressed
    img = load_image(series)
    np.testing.assert_array_equal(img[0].numpy(), hu_volume)
    np.testing.assert_allclose(_affine(img), OBLIQUE, atol=1e-5)
    ref_array, ref_affine = read_with_simpleitk(series)
    np.testing.assert_array_equal(img[0].numpy(), ref_array)
    np.testing.assert_allclose(_affine(img), ref_affine, atol=1e-5)


def test_dicom_to_nifti_world_coordinates_equal_simpleitk_for_every_voxel(tmp_path: Path, hu_volume) -> None:
    from medseg.cli.main import main

    series = tmp_path / "series"
    write_series(hu_volume, OBLIQUE, series, intercept=-1024)
    assert main(["convert", str(series), str(tmp_path / "ct.nii.gz")]) == 0
    nifti = nib.load(str(tmp_path / "ct.nii.gz"))
    ref_array, ref_affine = read_with_simpleitk(series)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), ref_array)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in ref_array.shape], indexing="ij"), -1).reshape(-1, 3)
    index = np.concatenate([index, np.ones((len(index), 1))], axis=1)
    ours, theirs = index @ nifti.affine.T, index @ ref_affine.T
    assert np.abs(ours - theirs).max() < 1e-4  # mm, over every voxel


def test_rescale_slope_and_intercept(tmp_path: Path, hu_volume, mni_crop) -> None:
    _, affine = mni_crop
    write_series(hu_volume, affine, tmp_path / "a", slope=2.0, intercept=-1024)
    img = load_image(tmp_path / "a")
    assert img.dtype == torch.int16
    np.testing.assert_array_equal(img[0].numpy(), np.round((hu_volume + 1024) / 2) * 2 - 1024)
    write_series(hu_volume, affine, tmp_path / "b", slope=0.5, intercept=-1000.25)
    img = load_image(tmp_path / "b")
    assert img.dtype == torch.float32
    np.testing.assert_allclose(img[0].numpy(), np.round((hu_volume + 1000.25) / 0.5) * 0.5 - 1000.25)


def test_real_scanner_series_match_simpleitk(shared_data: Path) -> None:
    for folder in [
        shared_data / "prostatex_t2_series",  # oblique Siemens MR, a licence text file in the folder
        shared_data / "dcmqi_ct3slice" / "ct-3slice",  # GE CT, slices stored head to foot
    ]:
        img = load_image(folder)
        ref_array, ref_affine = read_with_simpleitk(folder)
        np.testing.assert_array_equal(img[0].numpy(), ref_array)
        np.testing.assert_allclose(_affine(img), ref_affine, atol=1e-4)
    ct = load_image(shared_data / "dcmqi_ct3slice" / "ct-3slice")
    assert ct.dtype == torch.int16 and float(ct.min()) < -1000  # Hounsfield units after rescale
    assert ct.meta["spacing"] == pytest.approx((0.810547, 0.810547, 1.0), abs=1e-5)


def test_pydicom_single_files() -> None:
    ct = load_image(get_testdata_file("CT_small.dcm"))
    assert tuple(ct.shape) == (1, 128, 128, 1) and ct.meta["modality"] == "CT"
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        mr = load_image(get_testdata_file(name))
        np.testing.assert_array_equal(mr.numpy(), load_image(get_testdata_file("MR_small.dcm")).numpy())


def test_dicom_tree_with_several_series(tmp_path: Path, hu_volume, mni_crop) -> None:
    _, affine = mni_crop
    write_series(hu_volume, affine, tmp_path / "study" / "s1", series_uid="1.2.826.0.1.1", description="AX T1")
    write_series(hu_volume[:, :, :5], OBLIQUE, tmp_path / "study" / "s2", series_uid="1.2.826.0.1.2",
                 description="OBL")
    (tmp_path / "study" / "notes.txt").write_text("not dicom")
    with pytest.raises(DicomSeriesError) as info:
        load_image(tmp_path / "study")
    message = str(info.value)
    assert "2 series found" in message and "\n" not in message
    assert "1.2.826.0.1.1 ('AX T1', CT, 12 images)" in message and "1.2.826.0.1.2 ('OBL', CT, 5 images)" in message
    img = load_image(tmp_path / "study", series_uid="1.2.826.0.1.2")
    np.testing.assert_allclose(_affine(img), OBLIQUE, atol=1e-5)
    with pytest.raises(DicomSeriesError, match="no series with SeriesInstanceUID 9.9"):
        load_image(tmp_path / "study", series_uid="9.9")
    assert [s.series_instance_uid for s in scan_dicom(tmp_path)] == ["1.2.826.0.1.1", "1.2.826.0.1.2"]


def test_pydicom_dicomdir_tree_lists_series() -> None:
    root = Path(get_testdata_file("DICOMDIR")).parent
    series = scan_dicom(root / "77654033")
    assert len(series) >= 2
    with pytest.raises(DicomSeriesError, match="series found"):
        load_image(root / "77654033")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"skip": (5,)}, r"missing slice\(s\): a gap of 4 mm .* slices are 2 mm apart \(about 1 missing\)"),
        ({"tilt_mm_per_slice": 0.35}, r"gantry tilt or sheared stack: slices advance at 9.93 degrees"),
    ],
)
def test_geometry_failures(tmp_path: Path, hu_volume, kwargs: dict, problem: str) -> None:
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    write_series(hu_volume, affine, tmp_path, **kwargs)
    with pytest.raises(GeometryError, match=problem):
        load_image(tmp_path)


def _edit_slice(folder: Path, index_from_bottom: int, **changes) -> None:
    files = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(files[index_from_bottom])
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(files[index_from_bottom])


def test_uneven_spacing_mixed_orientation_duplicates(tmp_path: Path, hu_volume) -> None:
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    cases = {
        "uneven": ({"ImagePositionPatient": [0.0, 0.0, 12.6]}, r"uneven slice spacing: gaps range from 1.4 to 2.6"),
        "mixed": ({"ImageOrientationPatient": [1, 0, 0, 0, 0.9, 0.43589]}, "mixed orientations: 2 different"),
        "duplicate": ({"ImagePositionPatient": [0.0, 0.0, 10.0]}, "2 slices share a position"),
        "spacing": ({"PixelSpacing": [0.5, 0.5]}, "slices have different PixelSpacing"),
    }
    for name, (changes, problem) in cases.items():
        folder = tmp_path / name
        write_series(hu_volume, affine, folder)
        _edit_slice(folder, 6, **changes)
        with pytest.raises(GeometryError, match=problem):
            load_image(folder)


def test_empty_nondicom_and_corrupt(tmp_path: Path, hu_volume) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match="empty: no DICOM files found in this folder"):
        load_image(tmp_path / "empty")
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "readme.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match="no DICOM files found"):
        load_image(only_text)
    folder = tmp_path / "corrupt"
    files = write_series(hu_volume, np.eye(4), folder)
    files[3].write_bytes(files[3].read_bytes()[:140])  # preamble and a broken element
    with pytest.raises(ImageReadError, match=rf"{files[3].name}: corrupt DICOM file"):
        load_image(folder)
    folder = tmp_path / "truncated_pixels"
    files = write_series(hu_volume, np.eye(4), folder)
    files[2].write_bytes(files[2].read_bytes()[:-500])
    with pytest.raises(ImageReadError, match=rf"{files[2].name}: corrupt or truncated pixel data"):
        load_image(folder)


def test_non_image_objects_are_skipped(tmp_path: Path, hu_volume) -> None:
    folder = tmp_path / "mixed"
    write_series(hu_volume, np.eye(4), folder)
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "rtstruct.dcm")
    assert tuple(load_image(folder).shape) == (1, *hu_volume.shape)
    only = tmp_path / "only_rt"
    only.mkdir()
    shutil.copy(get_testdata_file("rtstruct.dcm"), only / "rtstruct.dcm")
    with pytest.raises(DicomSeriesError, match="no DICOM image series here"):
        load_image(only)


def test_multiframe_without_plane_positions_is_rejected() -> None:
    with pytest.raises(GeometryError, match="multi-frame file .* without per-frame plane positions"):
        load_image(get_testdata_file("rtdose.dcm"))


def _enhanced_mr(volume: np.ndarray, affine_ras: np.ndarray, path: Path, order: list[int]) -> None:
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", generate_uid(), generate_uid()
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
    ds.NumberOfFrames = len(order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
    measures.SliceThickness = f"{spacing[2]:.6f}"
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in (*lps[:3, 0] / spacing[0], *lps[:3, 1] / spacing[1])]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        position = Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        group = Dataset()
        group.PlanePositionSequence = Sequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([volume[:, :, k].T for k in order]).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_mr(tmp_path: Path, mni_crop) -> None:
    data, _ = mni_crop
    order = [3, 0, 7, 1, 11, 2, 4, 10, 5, 9, 6, 8]  # frames stored out of spatial order
    _enhanced_mr(data, OBLIQUE, tmp_path / "enhanced.dcm", order)
    img = load_image(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(img[0].numpy(), data)
    np.testing.assert_allclose(_affine(img), OBLIQUE, atol=1e-5)
    assert img.meta["frame_numbers"] == [order.index(k) + 1 for k in range(12)]
    save_image(img, tmp_path / "enhanced.nii.gz")
    np.testing.assert_allclose(nib.load(str(tmp_path / "enhanced.nii.gz")).affine, OBLIQUE, atol=1e-5)
