"""Atomic files and checkpoints loadable with ``torch.load(path, weights_only=True)``.

Every file of a run folder is written to a temporary name in the same folder, flushed and fsynced, then renamed
over the target (``os.replace``), so a process killed at any moment leaves either the old or the new file, never a
truncated one. Temporary names start with ``.`` and end in ``.tmp<pid>``; :func:`remove_stale_temporaries` deletes
those a killed process left behind.

Checkpoints hold only tensors, plain containers, numbers and strings: RNG states are stored as uint8/int64 tensors
(no numpy objects, no pickled classes), so ``weights_only=True`` loads them.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Version of the checkpoint layout.
CHECKPOINT_VERSION = 1


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Write ``path`` through ``write(binary_handle)`` on a temporary file, fsync, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def atomic_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda h: h.write(text.encode()))


def atomic_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return atomic_text(path, json.dumps(data, indent=2) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> None:
    """Delete temporary files (``.NAME.tmpPID``) left in ``folder`` by a killed process."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(".*.tmp*"):
            path.unlink(missing_ok=True)


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
