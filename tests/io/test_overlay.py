"""Three-plane pictures: radiological orientation, slices through each label's largest extent, readable size, and
reference/prediction colours that stay apart."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from medseg.io.overlay import (
    PREDICTION_COLOR,
    REFERENCE_COLOR,
    canonical,
    comparison_png,
    largest_slices,
    plane,
    write_preview,
)

pytest.importorskip("matplotlib")


def _pixels(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(io.BytesIO(png), format="png")[..., :3] * 255).round().astype(np.uint8)


def _has_color(pixels: np.ndarray, color: str, tolerance: int = 6) -> bool:
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tolerance).any())


def test_radiological_orientation_of_the_planes() -> None:
    volume = np.zeros((10, 12, 14))
    volume[9, 11, 13] = 1  # the patient's right (x+ in RAS), anterior (y+), superior (z+)
    lps_like = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored left-right and front-back flipped
    stored = volume[::-1, ::-1, :]
    canon, spacing = canonical(stored, lps_like)
    np.testing.assert_array_equal(canon, volume)
    assert spacing == (1.0, 1.0, 1.0)
    axial = plane(canon, "axial", 13)
    assert axial[0, 0] == 1  # anterior at the top, the patient's right on the left (radiological)
    coronal = plane(canon, "coronal", 11)
    assert coronal[0, 0] == 1  # superior at the top, the patient's right on the left
    sagittal = plane(canon, "sagittal", 9)
    assert sagittal[0, 0] == 1  # superior at the top, anterior on the left
    mask = np.zeros((6, 6, 6), bool)
    mask[1:3, 2:5, 4] = True
    mask[1, 2, 1] = True
    assert largest_slices(mask) == {"axial": 4, "coronal": 2, "sagittal": 1}


def test_preview_of_a_real_mr(shared_data: Path, tmp_path: Path) -> None:
    from medseg.io import load_image, make_image

    image = load_image(shared_data / "prostatex_t2_series")
    labels = np.zeros(image.shape[1:], dtype=np.uint8)
    labels[150:230, 150:230, 6:14] = 1
    labels[170:190, 200:215, 8:11] = 2
    label_image = make_image(labels[None], np.asarray(image.meta["affine"]), {"modality": "MR"})
    path = write_preview(image, label_image, tmp_path / "previews" / "case.png", {1: "prostate", 2: "lesion"},
                         title="case")
    pixels = _pixels(path.read_bytes())
    assert pixels.shape[1] >= 1000 and pixels.shape[0] >= 2 * 300  # two rows of three readable panels
    assert _has_color(pixels, "#e69e8c", 40)  # the prostate's colour (table: 230, 158, 140)


def test_comparison_colours_are_distinct() -> None:
    ref = np.zeros((40, 40, 20), np.uint8)
    ref[10:25, 10:25, 5:15] = 1
    pred = np.roll(ref, 6, axis=0)
    png, where = comparison_png(np.random.default_rng(0).normal(size=ref.shape), ref, pred, np.eye(4), [1])
    pixels = _pixels(png)
    assert pixels.shape[1] >= 1000
    assert _has_color(pixels, REFERENCE_COLOR) and _has_color(pixels, PREDICTION_COLOR)
    assert set(where) == {"axial", "coronal", "sagittal"}
