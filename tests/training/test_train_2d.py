"""The 2D path end to end: pictures (PNG) with label PNGs in a manifest → 2d plans → 2D training → PNG predictions.

Real image: scikit-image's shipped ``coins`` photograph (303×384 greyscale), labelled with the classical recipe
(Otsu threshold, holes filled, specks removed); its four quadrants are four cases, three to train and one held out.
Generated image: discs on textured noise in RGB, to exercise colour channels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli.main import main
from medseg.io import load_image

FAST = ["--set", "optimizer=adamw",
        "--set", "lr=0.01", "--set", "num_workers=0", "--set", "preprocess_workers=1", "--set", "val_iterations=1",
        "--set", "augmentation.enabled=false", "--set", "progress=plain"]


def _write_png(array: np.ndarray, path: Path) -> None:
    """``array`` is ``(rows, columns[, channels])``, as pictures are stored."""
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=array.ndim == 3), str(path))


def _coins_cases(root: Path) -> dict[str, Any]:
    skimage_data = pytest.importorskip("skimage.data")
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    coins = skimage_data.coins()
    mask = ndimage.binary_fill_holes(coins > threshold_otsu(coins))
    mask = remove_small_objects(mask, 64)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    h, w = coins.shape[0] // 2, coins.shape[1] // 2
    cases = []
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        _write_png(coins[r * h:(r + 1) * h, c * w:(c + 1) * w], root / "images" / f"coins_{i}.png")
        _write_png(mask[r * h:(r + 1) * h, c * w:(c + 1) * w].astype(np.uint8), root / "labels" / f"coins_{i}.png")
        cases.append({"id": f"coins_{i}", "images": [f"images/coins_{i}.png"], "label": f"labels/coins_{i}.png"})
    manifest = {"format_version": 1, "name": "Coins", "channels": [{"name": "grey", "modality": "photo"}],
                "labels": {"background": 0, "coin": 1}, "cases": cases[:3]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    (root / "test.json").write_text(json.dumps({**manifest, "cases": cases[3:]}))
    return {"shape": (h, w)}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    return out + err


@pytest.mark.slow
def test_coins_photograph_trains_and_predicts_in_2d(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = _coins_cases(tmp_path / "coins")
    data = tmp_path / "coins"
    _run(["dataset", "check", str(data / "dataset.json")], capsys)
    out = _run(["plan", str(data / "dataset.json"), "-o", str(tmp_path / "plans.json")], capsys)
    plans = json.loads((tmp_path / "plans.json").read_text())
    assert list(plans["configurations"]) == ["2d"] and "single slice" in out
    assert plans["transpose_forward"][0] == 2  # the one-slice axis first: 2D windows in the picture's plane
    stages = len(plans["configurations"]["2d"]["model"]["kwargs"]["features_per_stage"])
    features = "[" + ", ".join(str(min(8 * 2**i, 64)) for i in range(stages)) + "]"
    _run(["train", str(tmp_path / "plans.json"), "--config", "2d", "--fold", "0", "--out", str(tmp_path / "run"),
          "--epochs", "4", "--iters-per-epoch", "25", "--manifest", str(data / "dataset.json"), *FAST,
          "--set", f"model_kwargs={{features_per_stage: {features}}}"], capsys)
    _run(["predict", "-i", str(data / "test.json"), "-o", str(tmp_path / "pred"), "-m", str(tmp_path / "run"),
          "--folds", "0", "--format", "png", "--device", "cpu"], capsys)
    predicted = load_image(tmp_path / "pred" / "coins_3.png")
    reference = load_image(data / "labels" / "coins_3.png")
    assert predicted.shape == reference.shape == (1, info["shape"][1], info["shape"][0], 1)
    np.testing.assert_allclose(predicted.affine.numpy(), reference.affine.numpy())
    p, r = predicted.numpy() == 1, reference.numpy() == 1
    dice = 2 * np.sum(p & r) / (np.sum(p) + np.sum(r))
    with capsys.disabled():
        print(f"held-out coins quadrant Dice: {dice:.4f}")
    assert dice >= 0.85
    out = _run(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(data / "test.json"), "-o",
                str(tmp_path / "report"), "--metrics", "dice", "--no-report"], capsys)
    assert "coin" in out


def test_rgb_pictures_plan_three_channels_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    cases = []
    for i in range(3):
        yy, xx = np.mgrid[:96, :128]
        label = ((yy - 30 - 10 * i) ** 2 + (xx - 60) ** 2 < 400).astype(np.uint8)
        rgb = rng.integers(0, 80, (96, 128, 3)).astype(np.uint8)
        rgb[label == 1] += np.array([150, 60, 20], dtype=np.uint8)
        _write_png(rgb, tmp_path / "img" / f"c{i}.png")
        _write_png(label, tmp_path / "img" / f"c{i}_seg.png")
        cases.append({"id": f"c{i}", "images": [f"img/c{i}.png"], "label": f"img/c{i}_seg.png"})
    manifest = {"format_version": 1, "name": "Discs", "labels": {"background": 0, "disc": 1}, "cases": cases,
                "channels": [{"name": n, "modality": "photo"} for n in ("R", "G", "B")]}
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    image = load_image(tmp_path / "img" / "c0.png")
    assert image.shape == (3, 128, 96, 1)  # colour components are channels, the picture one slice
    _run(["dataset", "check", str(tmp_path / "dataset.json")], capsys)
    _run(["plan", str(tmp_path / "dataset.json"), "-o", str(tmp_path / "plans.json")], capsys)
    cfg = json.loads((tmp_path / "plans.json").read_text())["configurations"]["2d"]
    assert cfg["model"]["in_channels"] == 3 and cfg["patch_size"] == [128, 96]
