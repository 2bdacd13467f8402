"""DICOM Segmentations read back as label maps on their source series' grid (voxel order and RAS affine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_series import write_series
from testutils import oblique_affine

from medseg.errors import ImageReadError
from medseg.inference.writers import read_dicom_seg_labels, write_dicom_seg
from medseg.io import load_image, save_image

pytest.importorskip("highdicom")

OBLIQUE = oblique_affine((0.8, 0.9, 2.0), (15.0, -10.0, 30.0), (-60.0, 25.0, 40.0))


def _labels_like(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    x, y, z = shape
    labels[x // 4: x // 2, y // 3: 2 * y // 3, 1: z - 1] = 1
    labels[x // 2 + 2: x - 2, 2: y // 2, z // 2:] = 2
    labels[0, 0, 0] = 2  # a corner voxel: any axis flip would move it
    return labels


def _roundtrip(series: Path, labels: np.ndarray, tmp_path: Path) -> tuple[object, object]:
    source = load_image(series)
    seg_path = write_dicom_seg(labels, source.meta["source_files"], tmp_path / "case.dcm", {1: "liver", 2: "spine"})
    return source, load_image(seg_path)


@pytest.mark.parametrize("affine", [np.diag([0.8, 0.9, 2.0, 1.0]), OBLIQUE], ids=["axial", "oblique"])
@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "descending-instances"])
def test_seg_reads_back_on_the_source_grid(mni_crop, tmp_path: Path, affine: np.ndarray, reverse: bool) -> None:
    data, _ = mni_crop
    affine = affine.copy()
    affine[:3, 3] = (-20.0, 15.0, 30.0)
    write_series(data, affine, tmp_path / "series", modality="MR", reverse_instance_numbers=reverse)
    labels = _labels_like(data.shape)
    source, seg = _roundtrip(tmp_path / "series", labels, tmp_path)
    assert seg.shape == source.shape and seg.meta["format"] == "dicom-seg"
    np.testing.assert_allclose(seg.affine.numpy(), source.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(seg.numpy()[0], labels)
    assert seg.meta["segment_labels"] == {1: "liver", 2: "spine"}
    assert seg.meta["referenced_series_uids"] == [source.meta["series_instance_uid"]]
    assert seg.meta["frame_of_reference_uid"] == source.meta["frame_of_reference_uid"]
    # highdicom's own alignment by source instance agrees with the geometric reading
    by_instance, _ = read_dicom_seg_labels(tmp_path / "case.dcm", source.meta["sop_instance_uids"])
    np.testing.assert_array_equal(by_instance, labels)


def test_seg_of_real_scans_matches_their_label_maps(shared_data: Path, tmp_path: Path) -> None:
    """GE CT (empty SpecificCharacterSet, as the scanner wrote it) with dcmqi's labels; oblique Siemens prostate MR."""
    ct_dir = shared_data / "dcmqi_ct3slice" / "ct-3slice"
    reference = load_image(shared_data / "dcmqi_ct3slice" / "liver_spine_seg.nrrd")
    source, seg = _roundtrip(ct_dir, reference.numpy()[0].astype(np.uint8), tmp_path)
    np.testing.assert_array_equal(seg.numpy()[0], reference.numpy()[0])
    np.testing.assert_allclose(seg.affine.numpy(), reference.affine.numpy(), atol=1e-4)
    # the SEG saves as NIfTI like any label map, with the same world coordinates
    out = save_image(seg, tmp_path / "case.nii.gz")
    np.testing.assert_allclose(load_image(out).affine.numpy(), source.affine.numpy(), atol=1e-4)

    mr_dir = shared_data / "prostatex_t2_series"
    mr = load_image(mr_dir)
    labels = _labels_like(tuple(mr.shape[1:]))
    _, seg = _roundtrip(mr_dir, labels, tmp_path / "mr")
    np.testing.assert_array_equal(seg.numpy()[0], labels)
    np.testing.assert_allclose(seg.affine.numpy(), mr.affine.numpy(), atol=1e-4)


def test_a_seg_beside_its_series_leaves_the_series_readable(mni_crop, tmp_path: Path) -> None:
    data, affine = mni_crop
    write_series(data, affine, tmp_path / "series", modality="MR")
    source = load_image(tmp_path / "series")
    write_dicom_seg(_labels_like(data.shape), source.meta["source_files"], tmp_path / "series" / "seg.dcm", {1: "a"})
    again = load_image(tmp_path / "series")
    np.testing.assert_array_equal(again.numpy(), source.numpy())


def test_corrupt_seg_names_the_file(mni_crop, tmp_path: Path) -> None:
    data, affine = mni_crop
    write_series(data, affine, tmp_path / "series", modality="MR")
    source = load_image(tmp_path / "series")
    path = write_dicom_seg(_labels_like(data.shape), source.meta["source_files"], tmp_path / "seg.dcm", {1: "a"})
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence  # frames without positions cannot be placed
    ds.save_as(tmp_path / "broken.dcm")
    with pytest.raises(ImageReadError, match="broken.dcm"):
        load_image(tmp_path / "broken.dcm")
