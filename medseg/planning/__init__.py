"""nnU-Net-style auto-configuration: a dataset fingerprint, then plans (Isensee et al., Nature Methods 2021).

:func:`compute_fingerprint` reads a dataset once and summarises it (spacings, cropped shapes, foreground intensity
statistics, class sizes); :func:`plan_experiment` turns that summary into training configurations (target spacing,
normalisation, resampling, network topology, patch and batch size) by nnU-Net v2's rules. Both results are plain
JSON data; ``medseg/planning/PLANS.md`` documents every key.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives; imported on first use, so that the command line's option defaults (presets,
#: sampling limits) do not pull in numpy and the image readers.
_WHERE = {
    "CASCADE": "medseg.planning.schema",
    "CONFIGURATIONS": "medseg.planning.schema",
    "DEFAULT_INSTANCE_MODEL": "medseg.planning.planner",
    "DEFAULT_MAX_SAMPLES": "medseg.planning.presets",
    "DEFAULT_MODEL": "medseg.planning.planner",
    "DEFAULT_PRESET": "medseg.planning.presets",
    "DEFAULT_SEED": "medseg.planning.presets",
    "FINGERPRINT_VERSION": "medseg.planning.schema",
    "PLANS_VERSION": "medseg.planning.schema",
    "PRESETS": "medseg.planning.presets",
    "Preset": "medseg.planning.presets",
    "compute_fingerprint": "medseg.planning.fingerprint",
    "conv_feature_map_size": "medseg.planning.planner",
    "data_identifier": "medseg.planning.planner",
    "fingerprint_matches": "medseg.planning.fingerprint",
    "is_fresh": "medseg.planning.fingerprint",
    "load_fingerprint": "medseg.planning.schema",
    "load_plans": "medseg.planning.schema",
    "normalization_scheme": "medseg.planning.planner",
    "parse_configs": "medseg.planning.schema",
    "plan_experiment": "medseg.planning.planner",
    "pool_and_conv_props": "medseg.planning.planner",
    "residual_encoder_feature_map_size": "medseg.planning.planner",
    "resolve_model": "medseg.planning.planner",
    "resolve_preset": "medseg.planning.planner",
    "save_fingerprint": "medseg.planning.schema",
    "save_plans": "medseg.planning.schema",
    "target_spacing": "medseg.planning.planner",
    "transpose_for": "medseg.planning.planner",
    "validate_fingerprint": "medseg.planning.schema",
    "validate_plans": "medseg.planning.schema",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'medseg.planning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_WHERE)


__all__ = [
    "CASCADE",
    "CONFIGURATIONS",
    "DEFAULT_INSTANCE_MODEL",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_MODEL",
    "DEFAULT_PRESET",
    "DEFAULT_SEED",
    "FINGERPRINT_VERSION",
    "PLANS_VERSION",
    "PRESETS",
    "Preset",
    "compute_fingerprint",
    "conv_feature_map_size",
    "data_identifier",
    "fingerprint_matches",
    "is_fresh",
    "load_fingerprint",
    "load_plans",
    "normalization_scheme",
    "parse_configs",
    "plan_experiment",
    "pool_and_conv_props",
    "residual_encoder_feature_map_size",
    "resolve_model",
    "resolve_preset",
    "save_fingerprint",
    "save_plans",
    "target_spacing",
    "transpose_for",
    "validate_fingerprint",
    "validate_plans",
]
