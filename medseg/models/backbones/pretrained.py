"""Loading user-supplied pretrained weights in the torchvision or timm key layout, without either library.

The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no code is executed), or with the
``safetensors`` package for ``.safetensors`` files when it is installed. Checkpoints wrapped as ``{"state_dict": ...}``
or ``{"model": ...}`` and keys prefixed by ``module.`` (DataParallel) are unwrapped. Each backbone family provides
explicit key maps from the libraries' names to ours (see the family modules); the classifier head's keys are ignored.
Every mapped tensor's shape is checked.

2D weights can be inflated into a 3D backbone (``inflate=True``): each 2D kernel ``(O, I, k, k)`` becomes
``(O, I, d, k, k)`` by repeating it ``d`` times along depth and dividing by ``d`` (I3D, Carreira & Zisserman, "Quo
Vadis, Action Recognition?", CVPR 2017, Section 2.4), so that a depth-constant input gives the 2D response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medseg.errors import ModelError
from medseg.models.backbones.base import Backbone
from medseg.models.backbones.registry import KeyMap, get_backbone_info

__all__ = ["LoadReport", "load_pretrained", "map_state_dict", "read_state_dict"]

LAYOUTS = ("torchvision", "timm", "auto")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        layout: The key layout used.
        loaded: Our keys that received a tensor.
        missing: Our keys no tensor was given for (``num_batches_tracked`` buffers excepted).
        unexpected: File keys (after mapping) that match none of ours.
        mismatched: ``(our key, file shape, our shape)`` of tensors whose shapes differ.
        ignored: File keys deliberately skipped (the classifier head).
    """

    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file (unwrapping ``state_dict``/``model`` and ``module.`` prefixes).

    Raises:
        ModelError: The file is missing or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModelError(f"{path}: reading .safetensors needs the 'safetensors' package") from None
        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ModelError(f"{path}: cannot be read as a PyTorch state dict ({type(err).__name__}: {err})") from err
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[key[7:] if key.startswith("module.") else key] = value
    return out


def map_state_dict(
    state: Mapping[str, torch.Tensor], backbone: Backbone, key_map: KeyMap
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the keys of ``state`` to ours with ``key_map``; return the renamed dict and the ignored keys."""
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        ours = key_map(key, backbone)
        if ours is None:
            ignored.append(key)
        else:
            mapped[ours] = value
    return mapped, ignored


def _inflate(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    if value.dim() + 1 == target.dim() and value.dim() >= 3 and value.shape[:2] == target.shape[:2]:
        depth = target.shape[2]
        inflated = value.unsqueeze(2).repeat(1, 1, depth, *([1] * (value.dim() - 2))) / depth
        if inflated.shape == target.shape:
            return inflated
    return None


def _plan(
    state: Mapping[str, torch.Tensor], backbone: Backbone, layout: str, key_map: KeyMap, inflate: bool
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    ours = backbone.state_dict()
    mapped, ignored = map_state_dict(state, backbone, key_map)
    report = LoadReport(layout=layout, ignored=ignored)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in mapped.items():
        if key not in ours:
            report.unexpected.append(key)
            continue
        target = ours[key]
        if value.shape != target.shape:
            inflated = _inflate(value, target) if inflate else None
            if inflated is None:
                report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
                continue
            value = inflated
        to_load[key] = value.to(dtype=target.dtype)
        report.loaded.append(key)
    report.missing = [k for k in ours if k not in to_load and not k.endswith("num_batches_tracked")]
    return report, to_load


def _few(items: list, n: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def load_pretrained(
    backbone: Backbone,
    path: str | Path | Mapping[str, torch.Tensor],
    layout: str = "auto",
    *,
    strict: bool = True,
    inflate: bool = False,
) -> LoadReport:
    """Load torchvision- or timm-layout weights from a local file (or a state dict) into ``backbone``.

    Args:
        backbone: A registered backbone (its registry entry holds the key maps).
        path: The weights file, or an already loaded state dict.
        layout: ``"torchvision"``, ``"timm"`` or ``"auto"`` (the layout whose mapping loads the most tensors).
        strict: Raise on missing, unexpected or mis-shaped tensors; with ``False`` load what fits and report the rest.
        inflate: Inflate 2D kernels into a 3D backbone (see the module docstring).

    Returns:
        A :class:`LoadReport`.

    Raises:
        ModelError: Unknown layout, a layout this backbone has no map for, or (``strict``) keys or shapes that do not
            fit; the message lists them.
    """
    if layout not in LAYOUTS:
        raise ModelError(f"pretrained layout must be one of {LAYOUTS}, got {layout!r}")
    name = backbone.backbone_name
    maps = get_backbone_info(name).key_maps
    if not maps:
        raise ModelError(f"{name}: no pretrained key layout is mapped for this backbone")
    state = read_state_dict(path) if not isinstance(path, Mapping) else dict(path)
    if layout == "auto":
        plans = [(_plan(state, backbone, lay, km, inflate), lay) for lay, km in maps.items()]
        (report, to_load), _ = max(plans, key=lambda p: (len(p[0][0].loaded), -len(p[0][0].unexpected)))
    else:
        if layout not in maps:
            raise ModelError(f"{name}: no {layout!r} key layout is mapped (available: {', '.join(maps)})")
        report, to_load = _plan(state, backbone, layout, maps[layout], inflate)
    where = f"{path}: " if not isinstance(path, Mapping) else ""
    if strict and (report.missing or report.unexpected or report.mismatched):
        parts = []
        if report.missing:
            parts.append(f"missing keys: {_few(report.missing)}")
        if report.unexpected:
            parts.append(f"unexpected keys: {_few(report.unexpected)}")
        if report.mismatched:
            parts.append("shape mismatches: " + _few([f"{k} {a} vs ours {b}" for k, a, b in report.mismatched]))
        raise ModelError(f"{where}weights do not fit {name} in the {report.layout} layout ({'; '.join(parts)}); "
                         f"pass strict=False to load what fits")
    if not report.loaded:
        raise ModelError(f"{where}no tensor of the file fits {name} in the {report.layout} layout")
    backbone.load_state_dict(to_load, strict=False)
    return report
