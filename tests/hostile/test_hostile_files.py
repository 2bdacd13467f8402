"""Hostile image files through ``medseg convert`` (and the loader every command shares): geometry checked on load,
one line naming the file, nothing written."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hostile_helpers import assert_no_temporaries, assert_one_line_error, raw_nifti, write_nifti

VOLUME = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)


def _convert_refused(cli, source: Path, tmp_path: Path, *words: str) -> str:
    out = tmp_path / "out.nii.gz"
    line = assert_one_line_error(cli("convert", source, out), 1, source, *words)
    assert not out.exists()
    assert_no_temporaries(tmp_path)
    return line


@pytest.mark.parametrize(("name", "pixdim", "words"), [
    ("zero_pixdim", (0, 0, 0), ("zero or negative",)),
    ("negative_pixdim", (1, -1, 1), ("zero or negative",)),
    ("nan_pixdim", (1, float("nan"), 1), ("NaN",)),
])
def test_bad_voxel_size_without_sform(cli, tmp_path: Path, name: str, pixdim, words) -> None:
    source = raw_nifti(tmp_path / f"{name}.nii", VOLUME, pixdim=pixdim)
    _convert_refused(cli, source, tmp_path, *words)


@pytest.mark.parametrize(("name", "srow", "words"), [
    ("singular", [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], ("singular",)),
    ("zero", [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], ("zero",)),
    ("nan", [[1, 0, 0, 0], [0, float("nan"), 0, 0], [0, 0, 1, 0]], ("NaN",)),
])
def test_unusable_sform(cli, tmp_path: Path, name: str, srow, words) -> None:
    source = raw_nifti(tmp_path / f"{name}.nii", VOLUME, srow=np.array(srow, dtype=float), sform_code=1)
    _convert_refused(cli, source, tmp_path, *words)


def test_sheared_invertible_affine_stays_valid(cli, tmp_path: Path) -> None:
    affine = np.eye(4)
    affine[0, 1] = 0.3
    source = write_nifti(tmp_path / "sheared.nii.gz", VOLUME, affine)
    result = cli("convert", source, tmp_path / "copy.nii.gz")
    assert result.code == 0, result.err
    assert np.allclose(nib.load(str(tmp_path / "copy.nii.gz")).affine, affine)


def test_nrrd_with_zero_spacing(cli, tmp_path: Path) -> None:
    source = tmp_path / "zero.nrrd"
    source.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 5 6\nspace: left-posterior-superior\n"
                       b"space directions: (1,0,0) (0,0,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw\n"
                       b"endian: little\n\n" + VOLUME.tobytes(order="F"))
    _convert_refused(cli, source, tmp_path)


def test_mha_with_parallel_axes(cli, tmp_path: Path) -> None:
    source = tmp_path / "parallel.mha"
    source.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_SHORT\n"
                       b"ElementSpacing = 1 1 1\nTransformMatrix = 1 0 0 1 0 0 0 0 1\nOffset = 0 0 0\n"
                       b"ElementByteOrderMSB = False\nElementDataFile = LOCAL\n" + VOLUME.tobytes(order="F"))
    _convert_refused(cli, source, tmp_path)


def test_truncated_gzip(cli, tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii.gz", VOLUME)
    source = tmp_path / "truncated.nii.gz"
    source.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _convert_refused(cli, source, tmp_path)


def test_not_gzip_although_named_so(cli, tmp_path: Path) -> None:
    source = tmp_path / "plain.nii.gz"
    source.write_bytes(b"this is not a gzip stream at all" * 20)
    _convert_refused(cli, source, tmp_path, "gzip")


def test_empty_file(cli, tmp_path: Path) -> None:
    source = tmp_path / "empty.nii.gz"
    source.write_bytes(b"")
    _convert_refused(cli, source, tmp_path)


def test_header_claims_more_voxels_than_the_file_holds(cli, tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    source = tmp_path / "huge.nii.gz"
    source.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1024))
    _convert_refused(cli, source, tmp_path)


def test_unknown_file_type(cli, tmp_path: Path) -> None:
    source = tmp_path / "scan.xyz"
    source.write_bytes(b"\0" * 64)
    _convert_refused(cli, source, tmp_path, ".xyz")


def test_missing_input(cli, tmp_path: Path) -> None:
    _convert_refused(cli, tmp_path / "nope.nii.gz", tmp_path, "no such file")


def test_output_is_a_folder(cli, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", VOLUME)
    (tmp_path / "taken.nii.gz").mkdir()
    result = cli("convert", source, tmp_path / "taken.nii.gz")
    assert_one_line_error(result, 1, tmp_path / "taken.nii.gz")
    assert_no_temporaries(tmp_path)


def test_output_with_an_unknown_ending(cli, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", VOLUME)
    assert_one_line_error(cli("convert", source, tmp_path / "out.xyz"), 1, "out.xyz")


def test_image_with_nan_voxels_is_named_in_predict_but_converts(cli, tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 1, 1] = np.nan
    source = write_nifti(tmp_path / "nan.nii.gz", data)
    assert cli("convert", source, tmp_path / "copy.nrrd").code == 0  # converting keeps the values as they are


def test_symlinked_series_folder_is_followed_and_a_link_loop_ends(cli, tmp_path: Path) -> None:
    from dicom_series import write_series

    real = tmp_path / "real" / "series"
    write_series(VOLUME.astype(np.int16), np.eye(4), real)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "linked").symlink_to(real, target_is_directory=True)
    (tree / "loop").symlink_to(tree, target_is_directory=True)
    result = cli("convert", tree, tmp_path / "out.nii.gz")
    assert result.code == 0, result.err
    assert nib.load(str(tmp_path / "out.nii.gz")).shape == VOLUME.shape


def test_itk_file_with_nan_spacing(cli, tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((6, 5, 4), np.int16))
    sitk.WriteImage(image, str(tmp_path / "ok.mha"))
    text = (tmp_path / "ok.mha").read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 nan 1")
    source = tmp_path / "nan_spacing.mha"
    source.write_bytes(text)
    _convert_refused(cli, source, tmp_path)
