"""Compute devices: the one parser of ``--device`` values and the one resolver to a ``torch.device``.

Accepted everywhere (``predict``, ``train``, presets): ``auto`` (CUDA when present, else the CPU), ``cpu``,
``cuda`` (the first GPU, or the process's ``LOCAL_RANK`` GPU under torchrun), ``cuda:N`` and ``mps`` (Apple GPUs).
:func:`parse_device` checks the spelling without importing torch, so a typo fails at once;
:func:`resolve_device` checks that the device exists.
"""

from __future__ import annotations

import re
from typing import Any

from medseg.errors import MedsegError

__all__ = ["DEVICE_HELP", "parse_device", "resolve_device"]

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def parse_device(text: str, option: str = "--device") -> str:
    """Normalise and check a device name (no torch import).

    Raises:
        MedsegError: Not one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    """
    value = str(text).strip().lower()
    if not _DEVICE.match(value):
        raise MedsegError(f"{option} must be {DEVICE_HELP}, not {text!r}")
    return value


def resolve_device(text: str, local_rank: int = 0, option: str = "--device") -> Any:
    """The ``torch.device`` for a device name, checked against what this machine has.

    Args:
        text: A name :func:`parse_device` accepts.
        local_rank: The process's GPU index under torchrun (used for ``auto`` and ``cuda``).
        option: The option's name, for messages.

    Raises:
        MedsegError: The device is not present (no CUDA, a GPU index beyond the count, no MPS).
    """
    import torch

    value = parse_device(text, option)
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise MedsegError(f"{option} mps was asked for, but no Apple MPS device is available")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise MedsegError(f"{option} {value} was asked for, but CUDA is not available")
    count = torch.cuda.device_count()
    index = int(value.split(":")[1]) if ":" in value else local_rank % count
    if index >= count:
        raise MedsegError(f"{option} {value} was asked for, but this machine has {count} CUDA device(s) "
                          f"(cuda:0 … cuda:{count - 1})")
    return torch.device("cuda", index)
