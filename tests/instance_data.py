"""Real instance datasets made in the tests from scikit-image's bundled photographs (nothing is downloaded).

- ``coins``: the ``coins()`` photograph (303×384, bundled as ``skimage/data/coins.png``), every coin one object —
  scikit-image's own recipe (Sobel elevation map, watershed from dark and bright markers, holes filled), 24 coins.
- ``hubble``: a 304×384 crop of the ``hubble_deep_field()`` photograph (bundled as
  ``skimage/data/hubble_deep_field.jpg``) in grey, every galaxy one object: gaussian-smoothed brightness above a
  threshold, components of at least 80 pixels.

:func:`write_instance_dataset` cuts each photograph into four quadrants (the cases) and writes PNG images, 16-bit PNG
instance label maps and an instance manifest with classes ``coin`` and ``galaxy`` (a ``classes`` table per case).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def coins_instances() -> tuple[np.ndarray, np.ndarray]:
    """The coins photograph (uint8) and its instance map (int32, 24 coins)."""
    skimage_data = pytest.importorskip("skimage.data")
    from scipy import ndimage
    from skimage.filters import sobel
    from skimage.measure import label
    from skimage.segmentation import watershed

    coins = skimage_data.coins()
    markers = np.zeros_like(coins, dtype=np.int32)
    markers[coins < 30] = 1
    markers[coins > 150] = 2
    region = watershed(sobel(coins), markers) == 2
    region = ndimage.binary_fill_holes(region)
    instances = label(region)
    sizes = np.bincount(instances.ravel())
    small = sizes < 64
    small[0] = False
    instances[small[instances]] = 0
    return coins, label(instances > 0).astype(np.int32)


def hubble_instances() -> tuple[np.ndarray, np.ndarray]:
    """A 304×384 grey crop of the Hubble deep field (uint8) and its instance map (int32, one id per galaxy)."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.color import rgb2gray
    from skimage.filters import gaussian
    from skimage.measure import label

    grey = rgb2gray(skimage_data.hubble_deep_field()[100:404, 300:684])
    smooth = gaussian(grey, 2.0)
    instances = label(smooth > 0.1)
    sizes = np.bincount(instances.ravel())
    small = sizes < 80
    small[0] = False
    instances[small[instances]] = 0
    return (np.clip(grey, 0, 1) * 255).astype(np.uint8), label(instances > 0).astype(np.int32)


def _write_png(array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def quadrants(image: np.ndarray, instances: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four quadrants (row-major) of an image and its instance map, objects renumbered 1..N per quadrant."""
    from skimage.segmentation import relabel_sequential

    h, w = image.shape[0] // 2, image.shape[1] // 2
    out = []
    for r in range(2):
        for c in range(2):
            part = instances[r * h:(r + 1) * h, c * w:(c + 1) * w]
            out.append((image[r * h:(r + 1) * h, c * w:(c + 1) * w], relabel_sequential(part)[0].astype(np.int32)))
    return out


def write_instance_dataset(root: Path, held_out: int = 3, sources: tuple[str, ...] = ("coins", "hubble")
                           ) -> dict[str, Any]:
    """Write quadrant cases of the photographs: ``dataset.json`` (training) and ``test.json`` (quadrant
    ``held_out`` of each photograph).

    Returns:
        ``{"train": [...], "test": [...], "labels": {case id: instance map}}``.
    """
    makers = {"coins": coins_instances, "hubble": hubble_instances}
    classes = {"coins": "coin", "hubble": "galaxy"}
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    train, test, labels = [], [], {}
    for source in sources:
        image, instances = makers[source]()
        for i, (img, inst) in enumerate(quadrants(image, instances)):
            cid = f"{source}_{i}"
            _write_png(img, root / "images" / f"{cid}.png")
            _write_png(inst.astype(np.uint16), root / "labels" / f"{cid}.png")
            entry = {"id": cid, "images": [f"images/{cid}.png"], "label": f"labels/{cid}.png",
                     "classes": {str(k): classes[source] for k in range(1, int(inst.max()) + 1)}}
            (test if i == held_out else train).append(entry)
            labels[cid] = inst
    base = {"format_version": 1, "name": "Coins and galaxies", "task": "instance",
            "channels": [{"name": "grey", "modality": "photo"}],
            "labels": {"background": 0, "coin": 1, "galaxy": 2}}
    (root / "dataset.json").write_text(json.dumps({**base, "cases": train}, indent=1))
    (root / "test.json").write_text(json.dumps({**base, "cases": test}, indent=1))
    return {"train": [c["id"] for c in train], "test": [c["id"] for c in test], "labels": labels}
