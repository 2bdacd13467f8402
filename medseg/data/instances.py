"""Instance label maps: object ids, their classes, and what ``dataset check`` verifies about them.

In an instance manifest (``"task": "instance"``) a label map holds 0 for background and one positive id per object
(NIfTI, NRRD, MetaImage, PNG or TIFF; ids need not be contiguous, at most :data:`MAX_INSTANCE_ID`). The class of each
object comes from the case's ``classes`` table (object id → a ``labels`` value); without a table every object has
the manifest's one foreground class.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medseg.data.manifest import MAX_INSTANCE_ID, Case, Manifest

__all__ = ["MAX_INSTANCE_ID", "class_lookup", "class_map", "instance_problems"]

_SHOWN = 10


def class_lookup(ids: np.ndarray, table: Mapping[int, int] | None, default: int) -> np.ndarray:
    """A lookup array ``lookup[id] = class`` for the ids ``ids`` (0 → 0); ids without an entry get ``default``."""
    top = int(max(int(np.max(ids)) if ids.size else 0, max(table or {0: 0})))
    lookup = np.full(top + 1, default, dtype=np.int64)
    lookup[0] = 0
    for k, v in (table or {}).items():
        lookup[int(k)] = int(v)
    return lookup


def class_map(instances: np.ndarray, table: Mapping[int, int] | None, default: int) -> np.ndarray:
    """The class of every voxel of an instance map (negative values, such as -1 outside the image, are kept)."""
    inst = np.asarray(instances).astype(np.int64)
    lookup = class_lookup(np.unique(inst[inst > 0]), table, default)
    out = np.where(inst > 0, lookup[np.clip(inst, 0, len(lookup) - 1)], inst)
    return out.astype(np.int64)


def _ids(values: list[int]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    return shown + (f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else "")


def instance_problems(values: np.ndarray, counts: np.ndarray, manifest: Manifest, case: Case) -> list[str]:
    """What is wrong with an instance label map, from its distinct integer values and their voxel counts.

    Problems: negative ids, ids above :data:`MAX_INSTANCE_ID`, objects in the map without a class in the case's
    table, table entries whose object has no voxel (an empty instance).
    """
    problems = []
    present = {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}
    negative = sorted(v for v in present if v < 0)
    if negative:
        problems.append(f"instance label holds negative values ({_ids(negative)}); object ids are 0 (background) "
                        "or positive")
    too_big = sorted(v for v in present if v > MAX_INSTANCE_ID)
    if too_big:
        problems.append(f"object ids above {MAX_INSTANCE_ID} ({_ids(too_big)}); renumber the objects from 1")
    objects = sorted(v for v in present if v > 0)
    table = case.class_table
    if table is not None:
        unclassed = [v for v in objects if v not in table]
        if unclassed:
            problems.append(f"objects without a class in the case's 'classes': {_ids(unclassed)}")
        empty = sorted(k for k in table if k not in present)
        if empty:
            problems.append(f"empty instances: 'classes' lists object(s) {_ids(empty)} that have no voxel in the "
                            "label map")
    return problems
