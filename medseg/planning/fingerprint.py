"""Dataset fingerprint: what nnU-Net's planner needs to know about a dataset, as plain JSON data.

For every labelled case (Isensee et al., Nature Methods 2021; nnU-Net v2's ``DatasetFingerprintExtractor``):

- the image is cropped to its nonzero region (voxels nonzero in any channel, holes filled; nnU-Net's
  ``crop_to_nonzero``); the fingerprint keeps the spacing, the shape before and after cropping, and the relative
  size after cropping;
- foreground intensities (voxels with a label > 0 inside the crop) are sampled per channel;
- voxels per label value are counted (over the whole label map).

Intensity sampling differs from nnU-Net's in one respect: nnU-Net draws the same number of voxels (with
replacement) from every case; medseg draws a uniform sample *without* replacement of at most ``max_samples``
foreground voxels of the whole dataset, so each case contributes in proportion to its foreground size. Each
foreground voxel gets a random key from a generator seeded by ``(seed, case index)``; the sample is the voxels with
the smallest keys over the dataset. The result is therefore the same for any number of workers and any completion
order, and when the dataset has no more than ``max_samples`` foreground voxels the statistics are exact.

Cases run in a process pool, one case at a time per worker; the parent keeps at most ``max_samples`` sampled voxels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import PlanningError
from medseg.planning.presets import DEFAULT_MAX_SAMPLES, DEFAULT_SEED
from medseg.planning.schema import FINGERPRINT_VERSION, INTENSITY_KEYS
from medseg.utils.files import state_digest

#: Called after each case with (cases done, cases in total, id of the case just analysed).
ProgressCallback = Callable[[int, int, str], None]


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel of ``image`` (``(C, *spatial)``), with holes filled (nnU-Net's rule)."""
    from scipy.ndimage import binary_fill_holes

    mask = np.zeros(image.shape[1:], dtype=bool)
    for channel in image:
        mask |= channel != 0
    return np.asarray(binary_fill_holes(mask), dtype=bool)


def bounding_box(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` per axis of the True voxels; the whole array when none is True."""
    if not mask.any():
        return [(0, s) for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box


def _load_case(image_paths: Sequence[str], label_path: str, multichannel: bool, n_channels: int) -> tuple[
    np.ndarray, np.ndarray, tuple[float, ...]
]:
    from medseg.io import check_finite, grid_differences, load_image
    from medseg.io.align import label_on_grid

    arrays = []
    first = None
    spacing: tuple[float, ...] | None = None
    shape = None
    for path in image_paths:
        image = load_image(path)
        if image.ndim != 4:
            raise PlanningError(f"expected a 3D image, got {image.ndim - 1} spatial axes", path)
        check_finite(image, path)
        if first is None:
            first = image
        array = image.numpy()
        if shape is None:
            shape, spacing = array.shape[1:], tuple(float(s) for s in image.meta["spacing"])
        elif differences := grid_differences(image, first):
            raise PlanningError(f"channel grid differs from the first channel's: {'; '.join(differences)}", path)
        arrays.append(array)
    data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    if data.shape[0] != n_channels:
        what = "file holds" if multichannel else "case has"
        raise PlanningError(f"the {what} {data.shape[0]} channels, the manifest declares {n_channels}",
                            image_paths[0])
    label_img = load_image(label_path)
    check_finite(label_img, label_path)
    if label_img.shape[0] != 1:
        raise PlanningError(f"the label holds {label_img.shape[0]} channels; expected one label map", label_path)
    label_img, _ = label_on_grid(label_img, first, label_path, PlanningError)
    label = label_img.numpy()
    assert spacing is not None
    return data, label[0], spacing


def analyze_case(
    index: int,
    case_id: str,
    image_paths: Sequence[str],
    label_path: str,
    label_values: Sequence[int],
    *,
    multichannel: bool = False,
    n_channels: int = 1,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = DEFAULT_SEED,
    instance_classes: Mapping[int, int] | None = None,
    instance_default: int | None = None,
) -> dict[str, Any]:
    """Fingerprint one case (runs in a worker process).

    Args:
        index: The case's position among the labelled cases (seeds its sampling).
        case_id: Case id (for messages).
        image_paths: One file per channel, or one multi-channel file.
        label_path: The label map.
        label_values: The manifest's label values.
        multichannel: Whether ``image_paths`` is one file holding all channels.
        n_channels: The number of channels the manifest declares.
        max_samples: The dataset-wide sample size (a case never needs to return more).
        seed: Sampling seed.
        instance_classes: Instance manifests: the case's object id → class table (``None``: every object is
            ``instance_default``).
        instance_default: Instance manifests: the class of objects without a table entry; ``None`` for semantic
            label maps. The object ids are turned into their classes before anything is counted.

    Returns:
        ``{"case": {...per-case fingerprint...}, "keys": float64[n], "values": float32[C, n]}``.
    """
    data, label, spacing = _load_case(image_paths, label_path, multichannel, n_channels)
    shape_before = tuple(int(s) for s in data.shape[1:])

    if not np.issubdtype(label.dtype, np.integer):
        rounded = np.rint(label)
        if not np.array_equal(rounded, label):
            raise PlanningError("label map holds non-integer values", label_path)
        label = rounded.astype(np.int64)
    if instance_default is not None:
        from medseg.data.instances import class_map

        label = class_map(label, instance_classes, instance_default)
    values, counts = np.unique(label, return_counts=True)
    unknown = sorted(set(int(v) for v in values) - set(int(v) for v in label_values))
    if unknown:
        raise PlanningError(f"label values {unknown} are not declared in the manifest's labels", label_path)
    class_counts = {str(int(v)): 0 for v in sorted(label_values)}
    class_counts.update({str(int(v)): int(c) for v, c in zip(values, counts, strict=True)})

    box = bounding_box(nonzero_mask(data))
    slicer = tuple(slice(a, b) for a, b in box)
    shape_after = tuple(b - a for a, b in box)
    foreground = label[slicer] > 0
    n_fg = int(foreground.sum())

    rng = np.random.default_rng([int(seed), int(index)])
    keys = rng.random(n_fg)
    keep = None
    if n_fg > max_samples:
        keep = np.argpartition(keys, max_samples - 1)[:max_samples]
        keys = keys[keep]
    samples = np.empty((data.shape[0], keys.size), dtype=np.float32)
    for c in range(data.shape[0]):
        fg_values = data[c][slicer][foreground]
        samples[c] = fg_values if keep is None else fg_values[keep]
    if not np.all(np.isfinite(samples)):
        raise PlanningError("the image has NaN or infinite values inside the labels", image_paths[0])
    del data, label, foreground

    case = {
        "id": case_id,
        "spacing": list(spacing),
        "shape_before_crop": list(shape_before),
        "shape_after_crop": [int(s) for s in shape_after],
        "crop_bbox": [list(b) for b in box],
        "relative_size_after_cropping": float(np.prod(shape_after, dtype=np.float64)
                                              / np.prod(shape_before, dtype=np.float64)),
        "foreground_voxels": n_fg,
        "class_voxel_counts": class_counts,
    }
    return {"case": case, "keys": keys, "values": samples}


def _merge(pool: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], limit: int) -> tuple[
    np.ndarray, np.ndarray
]:
    keys = np.concatenate([pool[0], new[0]])
    values = np.concatenate([pool[1], new[1]], axis=1)
    if keys.size > limit:
        keep = np.argpartition(keys, limit - 1)[:limit]
        keys, values = keys[keep], values[:, keep]
    return keys, values


def intensity_statistics(values: np.ndarray) -> dict[str, float | None]:
    """nnU-Net's per-channel statistics of sampled foreground intensities (all ``None`` when there are none)."""
    if values.size == 0:
        return {k: None for k in INTENSITY_KEYS}
    v = values.astype(np.float64)
    p005, median, p995 = np.percentile(v, (0.5, 50.0, 99.5))
    return {
        "mean": float(np.mean(v)),
        "median": float(median),
        "std": float(np.std(v)),
        "min": float(np.min(v)),
        "max": float(np.max(v)),
        "percentile_00_5": float(p005),
        "percentile_99_5": float(p995),
    }


def default_workers(n_cases: int) -> int:
    """Worker processes to use: the CPU count (at most 8), never more than the cases."""
    return max(1, min(8, os.cpu_count() or 1, n_cases))


def compute_fingerprint(
    manifest: Any,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Compute the fingerprint of a dataset's labelled cases.

    Args:
        manifest: A :class:`medseg.data.Manifest` or the path of a manifest file.
        workers: Worker processes (``None``: :func:`default_workers`; ``1`` runs in this process).
        progress: Called after each case with ``(done, total, case_id)``.
        max_samples: Foreground voxels sampled over the whole dataset for the intensity statistics.
        seed: Sampling seed.

    Returns:
        The fingerprint, plain JSON data (see ``medseg/planning/PLANS.md``).

    Raises:
        PlanningError: No labelled case, mismatching grids or channel counts, undeclared label values.
        ImageReadError: An image cannot be read.
    """
    from medseg import __version__
    from medseg.data import Manifest, load_manifest

    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if max_samples < 1:
        raise PlanningError(f"max_samples must be positive, got {max_samples}")
    cases = manifest.labelled_cases
    if not cases:
        raise PlanningError("the manifest has no labelled case to fingerprint", manifest.source or manifest.root)
    label_values = manifest.label_values
    jobs = []
    for index, case in enumerate(cases):
        label_path = manifest.label_path(case)
        assert label_path is not None
        jobs.append(
            (
                index,
                case.id,
                [str(p) for p in manifest.image_paths(case)],
                str(label_path),
                label_values,
                {
                    "multichannel": manifest.is_multichannel_file(case),
                    "n_channels": manifest.num_channels,
                    "max_samples": max_samples,
                    "seed": seed,
                    **({"instance_classes": case.class_table, "instance_default": manifest.foreground_classes[0]}
                       if manifest.is_instance else {}),
                },
            )
        )
    n_workers = default_workers(len(jobs)) if workers is None else max(1, min(int(workers), len(jobs)))

    results: dict[int, dict[str, Any]] = {}
    pool: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty((manifest.num_channels, 0), dtype=np.float32))

    def collect(index: int, result: dict[str, Any]) -> None:
        nonlocal pool
        pool = _merge(pool, (result["keys"], result["values"]), max_samples)
        results[index] = result["case"]
        if progress is not None:
            progress(len(results), len(jobs), result["case"]["id"])

    if n_workers == 1:
        for job in jobs:
            collect(job[0], analyze_case(*job[:5], **job[5]))
    else:
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn")) as executor:
            futures = {executor.submit(analyze_case, *job[:5], **job[5]): job[0] for job in jobs}
            try:
                for future in as_completed(futures):
                    collect(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    per_case = [results[i] for i in range(len(jobs))]
    keys, values = pool
    order = np.argsort(keys, kind="stable")  # a canonical order, independent of completion order
    values = values[:, order]
    total_fg = sum(c["foreground_voxels"] for c in per_case)
    class_totals = {str(v): sum(c["class_voxel_counts"][str(v)] for c in per_case) for v in label_values}
    task = {"task": manifest.task} if manifest.is_instance else {}
    return {
        **task,
        "fingerprint_version": FINGERPRINT_VERSION,
        "medseg_version": __version__,
        "dataset_name": manifest.name,
        "manifest": str(manifest.source) if manifest.source is not None else None,
        "inputs_digest": inputs_digest(manifest),
        "channels": [{"name": c.name, "modality": c.modality} for c in manifest.channels],
        "labels": dict(manifest.labels),
        "num_cases": len(per_case),
        "cases": per_case,
        "median_relative_size_after_cropping": float(np.median([c["relative_size_after_cropping"] for c in per_case])),
        "foreground_intensity_properties_per_channel": {
            str(c): intensity_statistics(values[c]) for c in range(manifest.num_channels)
        },
        "class_voxel_counts": class_totals,
        "intensity_sampling": {
            "max_samples": int(max_samples),
            "seed": int(seed),
            "foreground_voxels": int(total_fg),
            "sampled_voxels": int(values.shape[1]),
            "exact": bool(values.shape[1] == total_fg),
        },
    }


def inputs_digest(manifest: Any) -> str:
    """SHA-256 over the labelled cases' ids, resolved file paths, sizes and modification times.

    Any change to which files a case uses, or to the files themselves (a DICOM folder counts every file in it),
    changes the digest, so a stored fingerprint is reused only for exactly the data it describes.
    """
    digest = hashlib.sha256()
    for case in manifest.labelled_cases:
        paths = [*manifest.image_paths(case), manifest.label_path(case)]
        classes = "" if case.classes is None else f"classes {list(case.classes)}\n"  # instance manifests
        digest.update(state_digest(paths, extra=f"case {case.id}\n{classes}").encode())
    return digest.hexdigest()


def fingerprint_matches(fingerprint: Mapping[str, Any], manifest: Any) -> bool:
    """Whether ``fingerprint`` was computed from exactly the cases, files, channels and labels ``manifest`` has now."""
    try:
        ids = [c["id"] for c in fingerprint["cases"]]
        channels = [(c["name"], c["modality"]) for c in fingerprint["channels"]]
        labels = dict(fingerprint["labels"])
        digest = fingerprint["inputs_digest"]
    except (KeyError, TypeError):
        return False
    return (
        fingerprint.get("task", "semantic") == manifest.task
        and ids == [c.id for c in manifest.labelled_cases]
        and channels == [(c.name, c.modality) for c in manifest.channels]
        and labels == dict(manifest.labels)
        and digest == inputs_digest(manifest)
    )


def is_fresh(fingerprint_path: str | os.PathLike[str], manifest_path: str | os.PathLike[str]) -> bool:
    """Whether ``fingerprint_path`` exists and is not older than the manifest file."""
    fp, mf = Path(fingerprint_path), Path(manifest_path)
    return fp.is_file() and (not mf.is_file() or fp.stat().st_mtime >= mf.stat().st_mtime)
