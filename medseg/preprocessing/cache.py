"""The on-disk cache of preprocessed cases, shared by every fold and run of a configuration.

Layout (``cache_dir`` defaults to ``preprocessed/`` next to ``plans.json`` in ``medseg train``)::

    <cache_dir>/<data_identifier>/
        cache.json            written last: cache_version, configuration, plans_digest, inputs_digest, cases
        <case>.npy            float32 (C, *planned_spatial): the preprocessed image (memory-mapped by the loader)
        <case>_seg.npy        int16 (1, *planned_spatial): labels, -1 = background outside the nonzero mask
        <case>_fg.npz         one int32 array (k, 3) per foreground label value: sampled voxel coordinates
        <case>.json           properties from :func:`~medseg.preprocessing.preprocess_case`
        <case>_instances.json instance datasets: {"classes": {object id: class}} of the objects in <case>_seg.npy

In an instance dataset ``<case>_seg.npy`` holds the object ids (resampled like labels, each id through its own
channel), and the foreground locations are those of each class's objects.

A cache built with ``labels=False`` (the unlabelled target images of domain adaptation) holds every case of its
manifest without ``_seg.npy`` and ``_fg.npz``; its ``cache.json`` says ``"labels": false``.

``plans_digest`` is a SHA-256 over what preprocessing depends on (the configuration's spacing, transpose,
normalisation and resampling, the channels and labels, the cache version); ``inputs_digest`` is
:func:`medseg.planning.fingerprint.inputs_digest` of the manifest (case ids, file paths, sizes, modification
times). When either differs, or a case file is missing, the folder is emptied and rebuilt; otherwise it is reused.
Every file is written to a temporary name and renamed into place, so an interrupted build never leaves a truncated
file that looks complete (``cache.json`` is absent until all cases are done).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from medseg.preprocessing.plans_view import configuration_of, label_names, plain
from medseg.preprocessing.preprocess import class_locations, preprocess_case
from medseg.utils.files import atomic_json, atomic_write

#: Version of the cache layout; a change rebuilds every cache.
CACHE_VERSION = 1

ProgressCallback = Callable[[int, int, str], None]


def plans_digest(plans: Mapping[str, Any], configuration: str) -> str:
    """SHA-256 over the plans entries preprocessing depends on (see the module docstring)."""
    cfg = configuration_of(plans, configuration)
    relevant = {
        "cache_version": CACHE_VERSION,
        "spacing": plain(cfg.spacing),
        "transpose_forward": plain(cfg.transpose_forward),
        "normalization": plain(cfg.normalization),
        "resampling": plain(cfg.resampling) or None,
        "spatial_dims": cfg.spatial_dims,
        "channels": plain(cfg.channels) or None,
        "labels": plain(cfg.labels) or None,
    }
    if cfg.is_instance:
        relevant["task"] = cfg.task
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _load_case(image_paths: list[str], label_path: str | None) -> tuple[Any, Any]:
    import torch
    from monai.data import MetaTensor

    from medseg.errors import PlanningError
    from medseg.io import check_finite, load_image
    from medseg.io.align import label_on_grid

    images = [load_image(p) for p in image_paths]
    for image, path in zip(images, image_paths, strict=True):
        check_finite(image, path)
    if len(images) == 1:
        image = images[0]
    else:
        image = MetaTensor(torch.cat([i.as_tensor() for i in images], dim=0), meta=dict(images[0].meta))
    label = None
    if label_path is not None:
        label, _ = label_on_grid(load_image(label_path), images[0], label_path, PlanningError)
    return image, label


def preprocess_to_files(
    case_id: str,
    image_paths: list[str],
    label_path: str | None,
    plans: Mapping[str, Any],
    configuration: str,
    folder: str,
    instance_classes: Mapping[int, int] | None = None,
) -> str:
    """Preprocess one case from its files and write its cache files into ``folder`` (runs in a worker).

    ``instance_classes`` (instance datasets): the case's object id → class table, ``None`` for the one foreground
    class.
    """
    image, label = _load_case(image_paths, label_path)
    data, seg, properties = preprocess_case(image, plans, configuration, label)
    out = Path(folder)
    atomic_write(out / f"{case_id}.npy", lambda h: np.save(h, data))
    if seg is not None:
        atomic_write(out / f"{case_id}_seg.npy", lambda h: np.save(h, seg))
        values = [v for v in sorted(label_names(plans)) if v > 0]
        located = seg
        if configuration_of(plans, configuration).is_instance:
            from medseg.data.instances import class_lookup, class_map

            ids = np.unique(seg[seg > 0])
            lookup = class_lookup(ids, instance_classes, values[0])
            classes = {str(int(k)): int(lookup[int(k)]) for k in ids}
            atomic_json(out / f"{case_id}_instances.json", {"classes": classes}, indent=1)
            located = class_map(seg, instance_classes, values[0])
        locs = {str(k): v for k, v in class_locations(located, values).items()}
        atomic_write(out / f"{case_id}_fg.npz", lambda h: np.savez(h, **locs))
    atomic_json(out / f"{case_id}.json", properties, indent=1, allow_nan=True)
    return case_id


def _case_files(folder: Path, case_id: str, labelled: bool = True, instance: bool = False) -> list[Path]:
    endings = (".npy", "_seg.npy", "_fg.npz", ".json") if labelled else (".npy", ".json")
    endings = (*endings, *(("_instances.json",) if instance and labelled else ()))
    return [folder / f"{case_id}{s}" for s in endings]


def cache_is_valid(folder: Path, expected: Mapping[str, Any]) -> bool:
    """Whether ``folder/cache.json`` matches ``expected`` and every case's files exist."""
    try:
        stored = json.loads((folder / "cache.json").read_text())
    except (OSError, ValueError):
        return False
    if any(stored.get(k) != v for k, v in expected.items()):
        return False
    labelled = bool(expected.get("labels", True))
    instance = expected.get("task") == "instance"
    return all(p.is_file() for c in expected["cases"] for p in _case_files(folder, c, labelled, instance))


def preprocess_dataset(
    manifest: Any,
    plans: Mapping[str, Any],
    configuration: str,
    out_dir: str | os.PathLike[str],
    workers: int = 1,
    progress: ProgressCallback | None = None,
    labels: bool = True,
) -> Path:
    """Preprocess every labelled case of ``manifest`` into the cache, or reuse a valid cache.

    Args:
        manifest: A :class:`medseg.data.Manifest`.
        plans: Loaded plans.
        configuration: Configuration name.
        out_dir: Cache root; the cases go to ``out_dir/<data_identifier>``.
        workers: Worker processes (1: in this process).
        progress: Called after each case with (done, total, case id).
        labels: ``False``: every case of the manifest, images only (labels, where present, are not read).

    Returns:
        The folder holding the cached cases.
    """
    from medseg.planning.fingerprint import inputs_digest

    cfg = configuration_of(plans, configuration)
    folder = Path(out_dir) / cfg.data_identifier
    cases = manifest.labelled_cases if labels else list(manifest.cases)
    expected = {
        "cache_version": CACHE_VERSION,
        "configuration": configuration,
        "plans_digest": plans_digest(plans, configuration),
        "inputs_digest": inputs_digest(manifest),
        "cases": [c.id for c in cases],
        **({"task": cfg.task} if cfg.is_instance else {}),
    }
    if not labels:
        expected["labels"] = False
    if cache_is_valid(folder, expected):
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    jobs = [
        (c.id, [str(p) for p in manifest.image_paths(c)], str(manifest.label_path(c)) if labels else None,
         dict(plans), configuration, str(folder), c.class_table)
        for c in cases
    ]
    done = 0
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            preprocess_to_files(*job)
            done += 1
            if progress:
                progress(done, len(jobs), job[0])
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(preprocess_to_files, *job) for job in jobs]
            for future in as_completed(futures):
                case_id = future.result()
                done += 1
                if progress:
                    progress(done, len(jobs), case_id)
    atomic_json(folder / "cache.json", expected, indent=1)
    return folder


def load_cached_case(folder: str | os.PathLike[str], case_id: str, mmap: bool = True) -> dict[str, Any]:
    """Open one cached case: ``data``, ``seg`` (memory-mapped by default), ``locations``, ``properties``.

    A case cached without labels has ``seg`` ``None`` and no ``locations``. Instance datasets add
    ``instance_classes``: object id → class of the objects in ``seg``.
    """
    folder = Path(folder)
    mode = "r" if mmap else None
    locations: dict[int, np.ndarray] = {}
    seg = None
    if (folder / f"{case_id}_seg.npy").is_file():
        with np.load(folder / f"{case_id}_fg.npz") as npz:
            locations = {int(k): npz[k] for k in npz.files}
        seg = np.load(folder / f"{case_id}_seg.npy", mmap_mode=mode)
    extra = {}
    instances = folder / f"{case_id}_instances.json"
    if instances.is_file():
        extra["instance_classes"] = {int(k): int(v) for k, v in json.loads(instances.read_text())["classes"].items()}
    return {
        **extra,
        "id": case_id,
        "data": np.load(folder / f"{case_id}.npy", mmap_mode=mode),
        "seg": seg,
        "locations": locations,
        "properties": json.loads((folder / f"{case_id}.json").read_text()),
    }
