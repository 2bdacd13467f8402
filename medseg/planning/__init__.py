"""nnU-Net-style auto-configuration: a dataset fingerprint, then plans (Isensee et al., Nature Methods 2021).

:func:`compute_fingerprint` reads a dataset once and summarises it (spacings, cropped shapes, foreground intensity
statistics, class sizes); :func:`plan_experiment` turns that summary into training configurations (target spacing,
normalisation, resampling, network topology, patch and batch size) by nnU-Net v2's rules. Both results are plain
JSON data; ``medseg/planning/PLANS.md`` documents every key.
"""

from medseg.planning.fingerprint import (
    DEFAULT_MAX_SAMPLES,
    DEFAULT_SEED,
    compute_fingerprint,
    fingerprint_matches,
    is_fresh,
)
from medseg.planning.planner import (
    DEFAULT_INSTANCE_MODEL,
    DEFAULT_MODEL,
    conv_feature_map_size,
    data_identifier,
    normalization_scheme,
    plan_experiment,
    pool_and_conv_props,
    residual_encoder_feature_map_size,
    resolve_model,
    resolve_preset,
    target_spacing,
    transpose_for,
)
from medseg.planning.presets import DEFAULT_PRESET, PRESETS, Preset
from medseg.planning.schema import (
    CASCADE,
    CONFIGURATIONS,
    FINGERPRINT_VERSION,
    PLANS_VERSION,
    load_fingerprint,
    load_plans,
    parse_configs,
    save_fingerprint,
    save_plans,
    validate_fingerprint,
    validate_plans,
)

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
