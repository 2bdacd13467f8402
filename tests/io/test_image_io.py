"""NIfTI / NRRD / MetaImage loading and saving: exact values, dtypes and geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from testutils import oblique_affine

from medseg.errors import ImageContentError, ImageReadError, ImageWriteError
from medseg.io import (
    check_finite,
    grid_differences,
    image_format,
    load_image,
    make_image,
    orientation_code,
    require_3d,
    save_image,
)

ENDINGS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"]


def _affine(img) -> np.ndarray:
    return np.asarray(img.meta["affine"], dtype=np.float64)


def test_load_mni152_meta(mni_t1_path: Path) -> None:
    img = load_image(mni_t1_path)
    ref = nib.load(str(mni_t1_path))
    assert tuple(img.shape) == (1, *ref.shape)
    assert img.dtype == torch.uint8 and img.meta["original_dtype"] == "|u1"
    np.testing.assert_array_equal(img[0].numpy(), np.asarray(ref.dataobj))
    np.testing.assert_allclose(_affine(img), ref.affine, atol=1e-6)
    assert img.meta["spacing"] == pytest.approx((1.0, 1.0, 1.0))
    assert img.meta["format"] == "nifti" and img.meta["filename_or_obj"] == str(mni_t1_path)
    assert orientation_code(img.meta["affine"]) == "RAS"


@pytest.mark.parametrize("ending", ENDINGS)
def test_round_trip_real_volume_every_format(tmp_path: Path, mni_crop, ending: str) -> None:
    data, affine = mni_crop
    oblique = oblique_affine((1.0, 1.2, 2.5), (12.0, -7.0, 25.0), tuple(affine[:3, 3]))
    for aff in (affine, oblique):
        first = tmp_path / f"a{ending}"
        save_image(make_image(data[None], aff), first)
        loaded = load_image(first)
        assert loaded.dtype == torch.int16
        np.testing.assert_array_equal(loaded[0].numpy(), data)
        np.testing.assert_allclose(_affine(loaded), aff, atol=1e-5)
        # and once more: save(load(x)) is exact
        second = tmp_path / f"b{ending}"
        save_image(loaded, second)
        again = load_image(second)
        np.testing.assert_array_equal(again.numpy(), loaded.numpy())
        np.testing.assert_allclose(_affine(again), _affine(loaded), atol=1e-5)
        assert grid_differences(again, loaded) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".medseg-write-")]


def test_nrrd_world_coordinates_match_simpleitk(tmp_path: Path, mni_crop) -> None:
    """Our RAS affine and SimpleITK's own LPS index-to-point mapping agree on every corner voxel."""
    data, _ = mni_crop
    aff = oblique_affine((0.9, 1.1, 3.0), (20.0, 5.0, -30.0), (-10.0, 40.0, 12.5))
    path = save_image(make_image(data[None], aff), tmp_path / "x.nrrd")
    image = sitk.ReadImage(str(path))
    ours = load_image(path)
    for index in [(0, 0, 0), (39, 0, 0), (0, 47, 0), (0, 0, 11), (39, 47, 11), (7, 13, 5)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = (_affine(ours) @ np.array([*index, 1.0]))[:3]
        np.testing.assert_allclose(ras, lps * np.array([-1, -1, 1]), atol=1e-5)
        assert ours[(0, *index)].item() == image[index]


def test_dtypes_preserved(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "uint16": rng.integers(0, 65535, (5, 6, 7)).astype(np.uint16),
        "uint8": rng.integers(0, 255, (5, 6, 7)).astype(np.uint8),
        "float32": rng.normal(size=(5, 6, 7)).astype(np.float32),
        "int32": rng.integers(-(2**30), 2**30, (5, 6, 7)).astype(np.int32),
    }
    for name, array in cases.items():
        for ending in (".nii.gz", ".nrrd", ".mha"):
            path = tmp_path / f"{name}{ending}"
            save_image(make_image(array[None], np.eye(4)), path)
            loaded = load_image(path)
            assert loaded.meta["original_dtype"] == array.dtype.str, (name, ending)
            np.testing.assert_array_equal(loaded[0].numpy(), array)
            save_image(loaded, tmp_path / f"again_{name}{ending}")
            if ending == ".nii.gz":
                assert nib.load(str(tmp_path / f"again_{name}{ending}")).get_data_dtype() == array.dtype


def test_int64_and_bool_labels_are_stored_compactly(tmp_path: Path) -> None:
    labels = torch.zeros((1, 4, 4, 4), dtype=torch.int64)
    labels[0, 1:3, 1:3, 1:3] = 2
    save_image(make_image(labels.numpy(), np.eye(4)), tmp_path / "l.nii.gz")
    assert nib.load(str(tmp_path / "l.nii.gz")).get_data_dtype() == np.uint8
    save_image(make_image((labels > 0).numpy(), np.eye(4)), tmp_path / "m.nii.gz")
    assert nib.load(str(tmp_path / "m.nii.gz")).get_data_dtype() == np.uint8


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    loaded = load_image(tmp_path / "ct.nii.gz")
    assert loaded.dtype == torch.int16  # integer slope and intercept stay integer
    np.testing.assert_array_equal(loaded[0].numpy(), raw * 2 - 1024)
    img.header.set_slope_inter(0.5, 0.25)
    nib.save(img, str(tmp_path / "pet.nii.gz"))
    loaded = load_image(tmp_path / "pet.nii.gz")
    assert loaded.dtype == torch.float32
    np.testing.assert_allclose(loaded[0].numpy(), raw * 0.5 + 0.25)


def test_4d_nifti_is_channel_first_and_round_trips(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(6, 5, 4, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(tmp_path / "mm.nii.gz"))
    img = load_image(tmp_path / "mm.nii.gz")
    assert tuple(img.shape) == (3, 6, 5, 4)
    np.testing.assert_array_equal(img[1].numpy(), data[..., 1])
    save_image(img, tmp_path / "back.nii.gz")
    assert nib.load(str(tmp_path / "back.nii.gz")).shape == (6, 5, 4, 3)
    save_image(img, tmp_path / "back.nrrd")
    np.testing.assert_array_equal(load_image(tmp_path / "back.nrrd").numpy(), img.numpy())
    with pytest.raises(ImageContentError, match="expected 1 channel"):
        require_3d(img, tmp_path / "mm.nii.gz")
    require_3d(img, channels=3)


def test_check_finite_counts_nan_and_inf() -> None:
    data = np.zeros((1, 3, 3, 3), dtype=np.float32)
    data[0, 0, 0, :2] = np.nan
    data[0, 1, 1, 1] = np.inf
    with pytest.raises(ImageContentError, match=r"x.nii.gz: 3 non-finite voxels \(2 NaN, 1 Inf\)"):
        check_finite(make_image(data, np.eye(4)), "x.nii.gz")
    check_finite(make_image(np.zeros((1, 2, 2, 2), np.float32), np.eye(4)))


def test_sheared_affine_cannot_go_to_nrrd(tmp_path: Path) -> None:
    affine = np.eye(4)
    affine[0, 1] = 0.3
    img = make_image(np.zeros((1, 4, 4, 4), np.int16), affine)
    with pytest.raises(ImageWriteError, match="shear"):
        save_image(img, tmp_path / "s.nrrd")
    save_image(img, tmp_path / "s.nii.gz")  # NIfTI stores any affine
    np.testing.assert_allclose(_affine(load_image(tmp_path / "s.nii.gz")), affine, atol=1e-6)


def test_grid_differences_names_each_difference() -> None:
    a = make_image(np.zeros((1, 4, 4, 4)), np.diag([1.0, 1.0, 2.0, 1.0]))
    b = make_image(np.zeros((1, 4, 4, 5)), np.diag([1.0, 1.0, 2.5, 1.0]))
    diffs = grid_differences(a, b)
    assert diffs[0] == "shape (4, 4, 4) vs (4, 4, 5)" and diffs[1].startswith("spacing") and len(diffs) == 2
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[:3, 3] = [0.0, 0.0, 0.01]
    assert grid_differences(a, make_image(np.zeros((1, 4, 4, 4)), shifted))[0].startswith("origin")
    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])
    assert grid_differences(a, make_image(np.zeros((1, 4, 4, 4)), flipped))[0].startswith("direction")
    tiny = np.diag([1.0, 1.0, 2.0, 1.0])
    tiny[:3, 3] = 1e-4
    assert grid_differences(a, make_image(np.zeros((1, 4, 4, 4)), tiny)) == []


def test_real_nrrd_labels_share_the_ct_grid(shared_data: Path) -> None:
    folder = shared_data / "dcmqi_ct3slice"
    ct = load_image(folder / "ct-3slice")
    for name in ("liver_seg.nrrd", "spine_seg.nrrd", "heart_seg.nrrd"):
        seg = load_image(folder / name)
        assert seg.meta["format"] == "nrrd"
        assert grid_differences(seg, ct) == [], name
        values = np.unique(seg.numpy())
        assert values[0] == 0 and len(values) == 2  # background and one structure


def test_real_nifti_ct_round_trip(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "ivadomed_msd_spleen" / "sub-spleen2_ct.nii.gz"
    img = load_image(src)
    assert tuple(img.shape) == (1, 164, 166, 26) and img.dtype == torch.float32
    for ending in (".nii.gz", ".mha", ".nrrd"):
        out = save_image(img, tmp_path / f"ct{ending}")
        back = load_image(out)
        np.testing.assert_array_equal(back.numpy(), img.numpy())
        np.testing.assert_allclose(_affine(back), _affine(img), atol=1e-5)


@pytest.mark.parametrize(
    ("content", "name", "problem"),
    [
        (b"this is not an image\n" * 30, "text.nii", "not a readable NIfTI file"),
        (b"plain text", "text.nii.gz", "not a readable NIfTI file"),
        (b"NRRD0004\ngarbage", "bad.nrrd", "not a readable NRRD file"),
        (b"", "empty.mha", "not a readable MHA file"),
    ],
)
def test_unreadable_files_give_one_line_errors(tmp_path: Path, content: bytes, name: str, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}") and "\n" not in message


def test_truncated_nifti(tmp_path: Path, mni_t1_path: Path) -> None:
    data = mni_t1_path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut.nii.gz: .*truncated"):
        load_image(tmp_path / "cut.nii.gz")
    raw = tmp_path / "raw.nii"
    nib.save(nib.load(str(mni_t1_path)), str(raw))
    raw.write_bytes(raw.read_bytes()[:100000])
    with pytest.raises(ImageReadError, match=r"raw.nii: cannot read the voxel data"):
        load_image(raw)


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file or folder"):
        load_image(tmp_path / "nothing.nii.gz")
    (tmp_path / "image.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageReadError, match="unsupported file type '.gif'"):
        load_image(tmp_path / "image.gif")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # a truncated picture
    with pytest.raises(ImageReadError, match="image.png: not a readable picture"):
        load_image(tmp_path / "image.png")
    with pytest.raises(ImageWriteError, match="unknown output format"):
        save_image(make_image(np.zeros((1, 2, 2, 2)), np.eye(4)), tmp_path / "out.gif")
    assert image_format(tmp_path) == "dicom" and image_format("x.nii.gz") == "nifti" and image_format("a.mhd") == "mhd"
