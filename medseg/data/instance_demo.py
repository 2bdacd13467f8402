"""A real instance dataset from photographs scikit-image ships in its wheel (nothing is downloaded).

- ``coins``: the ``coins()`` photograph (303×384, ``skimage/data/coins.png``), every coin one object — scikit-image's
  own recipe (Sobel elevation map, watershed from dark and bright markers, holes filled, specks under 64 pixels
  dropped): 24 coins;
- ``hubble``: a 304×384 crop (rows 100-403, columns 300-683) of ``hubble_deep_field()`` (``skimage/data/
  hubble_deep_field.jpg``) in grey, every bright galaxy one object: brightness smoothed with a gaussian of σ = 2
  pixels, hysteresis thresholds 0.15 and 0.5 (each galaxy is the region above 0.15 around a peak above 0.5, so the
  faint galaxies of the field are background), components of at least 64 pixels (17 galaxies).

:func:`make_instance_dataset` cuts each photograph into its four quadrants (the cases, objects renumbered 1..N per
quadrant) and writes PNG images (``images/``), 16-bit PNG instance maps (``labels/``) and two instance manifests with
the classes ``coin`` (1) and ``galaxy`` (2) given per case in ``classes``: ``test.json`` holds quadrant ``held_out`` of
each photograph, ``dataset.json`` every case with one fixed split — the other quadrants train, the held-out ones
validate (they never train).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ManifestError

__all__ = ["SOURCES", "coins_instances", "hubble_instances", "make_instance_dataset", "quadrants"]

#: The photographs and the class of their objects.
SOURCES = {"coins": "coin", "hubble": "galaxy"}


def _skimage() -> Any:
    try:
        import skimage.data
    except ImportError:
        raise ManifestError("the instance demo reads scikit-image's bundled photographs: pip install "
                            "'medseg[demo]'") from None
    return skimage


def _label(mask: np.ndarray, min_size: int) -> np.ndarray:
    from scipy import ndimage

    instances, _ = ndimage.label(mask)
    sizes = np.bincount(instances.ravel())
    small = sizes < min_size
    small[0] = False
    instances[small[instances]] = 0
    return ndimage.label(instances > 0)[0].astype(np.int32)


def coins_instances() -> tuple[np.ndarray, np.ndarray]:
    """The coins photograph (uint8) and its instance map (int32, 24 coins)."""
    from scipy import ndimage

    skimage = _skimage()
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    coins = skimage.data.coins()
    markers = np.zeros(coins.shape, dtype=np.int32)
    markers[coins < 30] = 1
    markers[coins > 150] = 2
    region = ndimage.binary_fill_holes(watershed(sobel(coins), markers) == 2)
    return coins, _label(region, 64)


def hubble_instances() -> tuple[np.ndarray, np.ndarray]:
    """The grey 304×384 Hubble deep field crop (uint8) and its instance map (int32, one id per galaxy)."""
    skimage = _skimage()
    from skimage.color import rgb2gray
    from skimage.filters import apply_hysteresis_threshold, gaussian

    grey = rgb2gray(skimage.data.hubble_deep_field()[100:404, 300:684])
    bright = apply_hysteresis_threshold(gaussian(grey, 2.0), 0.15, 0.5)
    return (np.clip(grey, 0, 1) * 255).astype(np.uint8), _label(bright, 64)


def quadrants(image: np.ndarray, instances: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four quadrants (row-major) of an image and its instance map, objects renumbered 1..N per quadrant."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    out = []
    for r in range(2):
        for c in range(2):
            part = instances[r * h:(r + 1) * h, c * w:(c + 1) * w]
            ids = np.unique(part[part > 0])
            lookup = np.zeros(int(part.max()) + 1, dtype=np.int32)
            lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
            out.append((image[r * h:(r + 1) * h, c * w:(c + 1) * w], lookup[part]))
    return out


def _write_png(array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    from medseg.utils.files import atomic_write_via

    atomic_write_via(path, lambda target: sitk.WriteImage(sitk.GetImageFromArray(array), str(target)))


def make_instance_dataset(out: str | Path, held_out: int = 3, sources: tuple[str, ...] = ("coins", "hubble")
                          ) -> dict[str, Any]:
    """Write the quadrant cases and the two manifests into ``out`` (see the module docstring).

    Args:
        out: The folder.
        held_out: The quadrant of each photograph held out (0-3, row-major).
        sources: The photographs (``coins``, ``hubble``).

    Returns:
        ``{"train": manifest path, "test": manifest path, "labels": {case id: instance map}}``.
    """
    from medseg.data.manifest import dumps_manifest
    from medseg.utils.files import atomic_text

    makers = {"coins": coins_instances, "hubble": hubble_instances}
    root = Path(out)
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
                     "classes": {str(k): SOURCES[source] for k in range(1, int(inst.max()) + 1)}}
            (test if i == held_out else train).append(entry)
            labels[cid] = inst
    base: dict[str, Any] = {"format_version": 1, "name": "Coins and galaxies",
                            "description": "scikit-image's coins and Hubble deep field photographs, one object per "
                                           "coin or galaxy", "task": "instance",
                            "channels": [{"name": "grey", "modality": "photo"}],
                            "labels": {"background": 0, "coin": 1, "galaxy": 2}}
    split = [{"train": [c["id"] for c in train], "val": [c["id"] for c in test]}]
    paths = {"train": root / "dataset.json", "test": root / "test.json"}
    atomic_text(paths["train"], dumps_manifest({**base, "cases": train + test, "splits": split}))
    atomic_text(paths["test"], dumps_manifest({**base, "cases": test}))
    return {**paths, "labels": labels}
