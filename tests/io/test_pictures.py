"""2D pictures as one-slice images: PNG/TIFF round trips, colour channels, JPEG read-only, refused writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import ImageWriteError
from medseg.io import load_image, make_image, save_image


def _picture(array: np.ndarray, path: Path, spacing: tuple[float, float] = (1.0, 1.0)) -> Path:
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3)  # (rows, columns[, components])
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_greyscale_png_is_one_slice_with_columns_first(tmp_path: Path) -> None:
    rows = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    image = load_image(_picture(rows, tmp_path / "a.png", spacing=(0.5, 0.25)))
    assert image.shape == (1, 8, 6, 1) and image.dtype.is_floating_point is False
    np.testing.assert_array_equal(image.numpy()[0, :, :, 0], rows.T)  # voxel (i, j) = (column, row)
    assert tuple(image.meta["spacing"]) == pytest.approx((0.5, 0.25, 1.0))
    assert image.meta["format"] == "picture"


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_label_pictures_round_trip_exactly(tmp_path: Path, ending: str) -> None:
    labels = np.zeros((1, 30, 20, 1), dtype=np.uint8)
    labels[0, 5:15, 3:9] = 1
    labels[0, 20:, 10:] = 7
    source = load_image(_picture(np.zeros((20, 30), np.uint8), tmp_path / f"source{ending}"))
    path = save_image(make_image(labels, source.affine.numpy()), tmp_path / f"l{ending}")
    back = load_image(path)
    np.testing.assert_array_equal(back.numpy(), labels)
    np.testing.assert_allclose(back.affine.numpy(), source.affine.numpy(), atol=1e-5)  # a prediction of a picture


def test_colour_and_sixteen_bit_pictures(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255  # opaque: the alpha channel is dropped
    image = load_image(_picture(rgba, tmp_path / "c.png"))
    assert image.shape == (3, 5, 4, 1) and int(image[0].max()) == 200
    deep = make_image(np.full((1, 3, 2, 1), 40000, dtype=np.int32), np.eye(4))
    back = load_image(save_image(deep, tmp_path / "d.png"))
    assert int(back.max()) == 40000


def test_jpeg_reads_and_refused_writes_say_why(tmp_path: Path) -> None:
    photo = (np.random.default_rng(0).random((16, 12)) * 255).astype(np.uint8)
    assert load_image(_picture(photo, tmp_path / "p.jpg")).shape == (1, 12, 16, 1)
    one = make_image(np.zeros((1, 4, 4, 1), np.uint8), np.eye(4))
    with pytest.raises(ImageWriteError, match="unknown output format"):
        save_image(one, tmp_path / "p.jpg")  # lossy: never a label map
    with pytest.raises(ImageWriteError, match="one slice"):
        save_image(make_image(np.zeros((1, 4, 4, 3), np.uint8), np.eye(4)), tmp_path / "v.png")
    with pytest.raises(ImageWriteError, match="fractional"):
        save_image(make_image(np.full((1, 4, 4, 1), 0.5, np.float32), np.eye(4)), tmp_path / "f.png")
