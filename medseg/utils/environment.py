"""What medseg runs on: library versions and compute devices, for ``medseg info`` and every run folder."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from medseg import __version__

LIBRARIES = ("torch", "monai", "numpy", "scipy", "nibabel", "SimpleITK", "pydicom", "python-gdcm", "highdicom")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_list() -> list[dict[str, Any]]:
    """List the devices torch can use: always the CPU, then each CUDA device with its name and memory."""
    import torch

    devices: list[dict[str, Any]] = [
        {"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "device": f"cuda:{i}",
                    "name": props.name,
                    "memory_gb": props.total_memory / 2**30,
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append({"device": "mps", "name": "Apple Metal"})
    return devices


def environment_report() -> dict[str, Any]:
    """Versions of medseg, Python and its libraries, plus the devices; recorded in every run folder."""
    return {
        "medseg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "devices": device_list(),
    }
