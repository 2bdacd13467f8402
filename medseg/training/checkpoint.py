"""Atomic files and checkpoints loadable with ``torch.load(path, weights_only=True)``.

Every file of a run folder is written through :func:`medseg.utils.files.atomic_write` (a temporary name in the
same folder, flushed, fsynced, renamed over the target), so a process killed at any moment leaves either the old or
the new file, never a truncated one; :func:`~medseg.utils.files.remove_stale_temporaries` deletes the temporaries a
killed process left behind.

Checkpoints hold only tensors, plain containers, numbers and strings: RNG states are stored as uint8/int64 tensors
(no numpy objects, no pickled classes), so ``weights_only=True`` loads them.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.utils.files import atomic_write

#: Version of the checkpoint layout.
CHECKPOINT_VERSION = 1


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``state`` atomically."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return atomic_write(path, lambda h: h.write(buffer.getvalue()))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``."""
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
