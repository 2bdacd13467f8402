"""Cross-validation splits: deterministic k-fold from a seed, or the manifest's own splits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import TrainingError


def kfold_splits(case_ids: Sequence[str], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """``n_folds`` train/val splits of ``case_ids``: a seeded permutation cut into near-equal validation parts.

    Like scikit-learn's ``KFold(shuffle=True)`` (which nnU-Net uses): every case is validated exactly once, the first
    ``len % n_folds`` folds get one case more. The ids are sorted first, so the result depends only on the set of
    ids and the seed. With fewer cases than folds, each case is its own fold.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]`` (nnU-Net's ``splits_final.json`` form), ids sorted within a fold.
    """
    ids = sorted(case_ids)
    if not ids:
        raise TrainingError("no labelled cases to split into folds")
    n_folds = min(n_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    sizes = [len(ids) // n_folds + (1 if f < len(ids) % n_folds else 0) for f in range(n_folds)]
    splits, start = [], 0
    for size in sizes:
        val = sorted(ids[i] for i in order[start : start + size])
        start += size
        train = [c for c in ids if c not in set(val)]
        splits.append({"train": train, "val": val})
    return splits


def resolve_splits(manifest: Any, n_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """The manifest's splits when it has any, else :func:`kfold_splits` of its labelled cases."""
    if manifest.splits:
        return [{"train": list(s.train), "val": list(s.val)} for s in manifest.splits]
    return kfold_splits([c.id for c in manifest.labelled_cases], n_folds, seed)
