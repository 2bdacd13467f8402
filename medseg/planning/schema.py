"""Versions, validation, loading and saving of ``fingerprint.json`` and ``plans.json``.

Both files are plain JSON objects; ``medseg/planning/PLANS.md`` documents every key. Loading checks the version and
the structure and raises :class:`~medseg.errors.PlanningError` naming the file and the first problem, so a stale or
hand-edited file fails early with a clear message instead of deep inside training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.errors import PlanningError
from medseg.planning.presets import PLAIN_CONV_UNET, PRESETS, RESIDUAL_ENCODER_UNET
from medseg.utils.files import atomic_json, read_json

#: Version of the fingerprint format written by :func:`medseg.planning.compute_fingerprint`.
FINGERPRINT_VERSION = 1
#: Version of the plans format written by :func:`medseg.planning.plan_experiment`.
PLANS_VERSION = 1

#: Configurations the planner can make (nnU-Net's names); ``3d_cascade_fullres`` comes with ``3d_lowres``.
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
CASCADE = "3d_cascade_fullres"

#: Per-channel foreground intensity statistics (nnU-Net's key names).
INTENSITY_KEYS = ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")

_FINGERPRINT_KEYS = (
    "fingerprint_version",
    "channels",
    "labels",
    "cases",
    "median_relative_size_after_cropping",
    "foreground_intensity_properties_per_channel",
)
_CASE_KEYS = ("id", "spacing", "shape_after_crop")
_PLANS_KEYS = (
    "plans_version",
    "medseg_version",
    "dataset_name",
    "gpu_memory_gb",
    "channels",
    "labels",
    "transpose_forward",
    "transpose_backward",
    "foreground_intensity_properties_per_channel",
    "configurations",
)
_CONFIG_KEYS = (
    "data_identifier",
    "spatial_dims",
    "spacing",
    "transpose_forward",
    "transpose_backward",
    "median_image_size_in_voxels",
    "patch_size",
    "batch_size",
    "batch_dice",
    "num_input_channels",
    "num_classes",
    "normalization",
    "resampling",
    "topology",
    "model",
)
_TOPOLOGY_KEYS = (
    "n_stages",
    "kernel_sizes",
    "strides",
    "features_per_stage",
    "n_conv_per_stage_decoder",
)
#: Per encoder stage: convolutions (plain-conv U-Net) or residual blocks (residual-encoder U-Net); one is required.
_ENCODER_KEYS = ("n_conv_per_stage", "n_blocks_per_stage")


def _fail(problem: str, where: str | os.PathLike[str] | None) -> PlanningError:
    return PlanningError(problem, where)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int_list(value: Any, length: int | None = None, minimum: int = 0) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    )


def _check_version(data: Mapping[str, Any], key: str, current: int, what: str, where: Any) -> None:
    version = data.get(key)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(f"not a medseg {what} file: '{key}' is missing or not an integer", where)
    if version > current:
        raise _fail(f"{what} version {version} was written by a newer medseg (this one reads up to {current}); "
                    "update medseg", where)
    if version < current:
        raise _fail(f"{what} version {version} is outdated (current: {current}); compute it again", where)


def validate_fingerprint(data: Any, where: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check that ``data`` is a fingerprint this medseg can plan from.

    Args:
        data: The parsed JSON object.
        where: File name for error messages.

    Returns:
        ``data`` itself.

    Raises:
        PlanningError: Wrong version, a missing key, or a value of the wrong type or size.
    """
    if not isinstance(data, dict):
        raise _fail("a fingerprint must be a JSON object", where)
    _check_version(data, "fingerprint_version", FINGERPRINT_VERSION, "fingerprint", where)
    missing = [k for k in _FINGERPRINT_KEYS if k not in data]
    if missing:
        raise _fail(f"fingerprint lacks {', '.join(repr(k) for k in missing)}", where)
    channels = data["channels"]
    if not isinstance(channels, list) or not channels or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("modality"), str) for c in channels
    ):
        raise _fail("'channels' must be a non-empty list of {name, modality} objects", where)
    labels = data["labels"]
    if not isinstance(labels, dict) or not labels or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels.values()
    ):
        raise _fail("'labels' must be a non-empty object of name → integer value", where)
    cases = data["cases"]
    if not isinstance(cases, list) or not cases:
        raise _fail("'cases' must be a non-empty list", where)
    dims = None
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or any(k not in case for k in _CASE_KEYS):
            raise _fail(f"case {i} must be an object with {', '.join(_CASE_KEYS)}", where)
        spacing, shape = case["spacing"], case["shape_after_crop"]
        if not isinstance(spacing, list) or not spacing or not all(_is_number(s) and s > 0 for s in spacing):
            raise _fail(f"case {case['id']!r}: 'spacing' must be a list of positive numbers", where)
        if not _is_int_list(shape, len(spacing), minimum=1):
            raise _fail(f"case {case['id']!r}: 'shape_after_crop' must be {len(spacing)} positive integers", where)
        if dims is None:
            dims = len(spacing)
        elif len(spacing) != dims:
            raise _fail(f"case {case['id']!r} has {len(spacing)} axes, the first case {dims}", where)
    if dims != 3:
        raise _fail(f"images must be 3D (found {dims} axes); 2D images are stored as one-slice volumes", where)
    rel = data["median_relative_size_after_cropping"]
    if not _is_number(rel) or not 0 < rel <= 1:
        raise _fail("'median_relative_size_after_cropping' must be a number in (0, 1]", where)
    props = data["foreground_intensity_properties_per_channel"]
    if not isinstance(props, dict):
        raise _fail("'foreground_intensity_properties_per_channel' must be an object keyed by channel index", where)
    for key, stats in props.items():
        if not key.isdigit() or int(key) >= len(channels):
            raise _fail(f"intensity properties for unknown channel {key!r}", where)
        if not isinstance(stats, dict) or any(k not in stats for k in INTENSITY_KEYS):
            raise _fail(f"intensity properties of channel {key} need {', '.join(INTENSITY_KEYS)}", where)
        if any(stats[k] is not None and not _is_number(stats[k]) for k in INTENSITY_KEYS):
            raise _fail(f"intensity properties of channel {key} must be numbers (or null when no foreground)", where)
    return data


def validate_plans(data: Any, where: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check that ``data`` is a plans object of the current version with consistent configurations.

    Args:
        data: The parsed JSON object.
        where: File name for error messages.

    Returns:
        ``data`` itself.

    Raises:
        PlanningError: Wrong version, a missing key, or inconsistent values (e.g. a patch size that is not a multiple
            of the network's total stride, list lengths that disagree with the number of stages).
    """
    if not isinstance(data, dict):
        raise _fail("plans must be a JSON object", where)
    _check_version(data, "plans_version", PLANS_VERSION, "plans", where)
    missing = [k for k in _PLANS_KEYS if k not in data]
    if missing:
        raise _fail(f"plans lack {', '.join(repr(k) for k in missing)}", where)
    if not _is_number(data["gpu_memory_gb"]) or data["gpu_memory_gb"] <= 0:
        raise _fail("'gpu_memory_gb' must be a positive number", where)
    if "preset" in data and data["preset"] not in PRESETS:
        raise _fail(f"'preset' must be one of {', '.join(PRESETS)}, got {data['preset']!r}", where)
    if "plans_identifier" in data and (not isinstance(data["plans_identifier"], str) or not data["plans_identifier"]):
        raise _fail("'plans_identifier' must be a non-empty string", where)
    for key in ("transpose_forward", "transpose_backward"):
        if not isinstance(data[key], list) or sorted(data[key]) != [0, 1, 2]:
            raise _fail(f"'{key}' must be a permutation of [0, 1, 2]", where)
    configs = data["configurations"]
    if not isinstance(configs, dict) or not configs:
        raise _fail("'configurations' must be a non-empty object", where)
    for name, cfg in configs.items():
        _validate_configuration(name, cfg, configs, len(data["channels"]), where)
    return data


def _validate_configuration(name: str, cfg: Any, configs: Mapping[str, Any], n_channels: int, where: Any) -> None:
    ctx = f"configuration {name!r}"
    if not isinstance(cfg, dict):
        raise _fail(f"{ctx} must be an object", where)
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise _fail(f"{ctx} lacks {', '.join(repr(k) for k in missing)}", where)
    dims = cfg["spatial_dims"]
    if dims not in (2, 3):
        raise _fail(f"{ctx}: 'spatial_dims' must be 2 or 3", where)
    if not isinstance(cfg["spacing"], list) or len(cfg["spacing"]) != dims or not all(
        _is_number(s) and s > 0 for s in cfg["spacing"]
    ):
        raise _fail(f"{ctx}: 'spacing' must be {dims} positive numbers", where)
    if not _is_int_list(cfg["patch_size"], dims, minimum=1):
        raise _fail(f"{ctx}: 'patch_size' must be {dims} positive integers", where)
    if not isinstance(cfg["batch_size"], int) or cfg["batch_size"] < 1:
        raise _fail(f"{ctx}: 'batch_size' must be a positive integer", where)
    norm = cfg["normalization"]
    if not isinstance(norm, list) or len(norm) != n_channels or not all(
        isinstance(n, dict) and isinstance(n.get("scheme"), str) for n in norm
    ):
        raise _fail(f"{ctx}: 'normalization' must have one {{scheme, ...}} object per channel ({n_channels})", where)
    topo = cfg["topology"]
    if not isinstance(topo, dict) or any(k not in topo for k in _TOPOLOGY_KEYS) or not any(
        k in topo for k in _ENCODER_KEYS
    ):
        raise _fail(f"{ctx}: 'topology' needs {', '.join(_TOPOLOGY_KEYS)} and {' or '.join(_ENCODER_KEYS)}", where)
    if "network" in topo and topo["network"] not in (PLAIN_CONV_UNET, RESIDUAL_ENCODER_UNET):
        raise _fail(f"{ctx}: 'topology.network' must be {PLAIN_CONV_UNET!r} or {RESIDUAL_ENCODER_UNET!r}", where)
    n = topo["n_stages"]
    if not isinstance(n, int) or n < 1:
        raise _fail(f"{ctx}: 'topology.n_stages' must be a positive integer", where)
    for key in ("kernel_sizes", "strides"):
        value = topo[key]
        if not isinstance(value, list) or len(value) != n or not all(_is_int_list(v, dims, minimum=1) for v in value):
            raise _fail(f"{ctx}: 'topology.{key}' must hold {n} lists of {dims} positive integers", where)
    if not _is_int_list(topo["features_per_stage"], n, minimum=1) or not all(
        _is_int_list(topo[k], n, minimum=1) for k in _ENCODER_KEYS if k in topo
    ):
        raise _fail(f"{ctx}: 'topology.features_per_stage' and 'n_conv_per_stage' (or 'n_blocks_per_stage') need "
                    f"{n} positive integers", where)
    if not _is_int_list(topo["n_conv_per_stage_decoder"], n - 1, minimum=1):
        raise _fail(f"{ctx}: 'topology.n_conv_per_stage_decoder' needs {n - 1} positive integers", where)
    for axis in range(dims):
        total = math.prod(s[axis] for s in topo["strides"])
        if cfg["patch_size"][axis] % total:
            raise _fail(f"{ctx}: patch size {cfg['patch_size']} is not a multiple of the total stride along axis "
                        f"{axis} ({total})", where)
    model = cfg["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not isinstance(
        model.get("kwargs"), dict
    ):
        raise _fail(f"{ctx}: 'model' must be an object with 'name' and 'kwargs'", where)
    for link in ("previous_stage", "next_stage"):
        if link in cfg and cfg[link] not in configs:
            raise _fail(f"{ctx}: '{link}' names {cfg[link]!r}, which is not a configuration here", where)


def _read_json(path: str | os.PathLike[str], what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise PlanningError(f"no such {what} file", path)
    return read_json(path, f"{what} file", PlanningError)


def write_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``data`` as indented JSON, atomically (:func:`medseg.utils.files.atomic_json`)."""
    return atomic_json(path, data)


def load_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``fingerprint.json`` (see :func:`validate_fingerprint`)."""
    return validate_fingerprint(_read_json(path, "fingerprint"), path)


def load_plans(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``plans.json`` (see :func:`validate_plans`)."""
    return validate_plans(_read_json(path, "plans"), path)


def save_fingerprint(fingerprint: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write a fingerprint."""
    validate_fingerprint(dict(fingerprint), path)
    return write_json(fingerprint, path)


def save_plans(plans: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write plans."""
    validate_plans(dict(plans), path)
    return write_json(plans, path)


def parse_configs(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parse a configuration list (``"2d,3d_fullres"`` or a sequence), checking each name.

    Raises:
        PlanningError: An unknown configuration name or an empty list.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [s.strip() for s in items if s.strip()]
    if not names:
        raise PlanningError(f"no configuration given; choose from {', '.join(CONFIGURATIONS)}")
    unknown = [n for n in names if n not in CONFIGURATIONS]
    if unknown:
        hint = " (it comes with 3d_lowres)" if CASCADE in unknown else ""
        raise PlanningError(f"unknown configuration {', '.join(map(repr, unknown))}{hint}; choose from "
                            f"{', '.join(CONFIGURATIONS)}")
    return tuple(dict.fromkeys(names))
