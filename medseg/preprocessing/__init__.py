"""Preprocessing exactly as planned (nnU-Net v2; Isensee et al., Nature Methods 2021), shared with inference.

:func:`preprocess_case` does one case, :func:`preprocess_dataset` builds the on-disk cache.
"""

from medseg.preprocessing.cache import (
    CACHE_VERSION,
    cache_is_valid,
    load_cached_case,
    plans_digest,
    preprocess_dataset,
)
from medseg.preprocessing.plans_view import Configuration, ModelEntry, configuration_of, label_names
from medseg.preprocessing.preprocess import (
    OUTSIDE_LABEL,
    bounding_box,
    class_locations,
    nonzero_mask,
    normalize_channel,
    preprocess_case,
    target_spacing,
)
from medseg.preprocessing.resampling import (
    compute_new_shape,
    resample_channel,
    resample_image,
    resample_labels,
    separate_z_axis,
)

__all__ = [
    "CACHE_VERSION",
    "OUTSIDE_LABEL",
    "Configuration",
    "ModelEntry",
    "bounding_box",
    "cache_is_valid",
    "class_locations",
    "compute_new_shape",
    "configuration_of",
    "label_names",
    "load_cached_case",
    "nonzero_mask",
    "normalize_channel",
    "plans_digest",
    "preprocess_case",
    "preprocess_dataset",
    "resample_channel",
    "resample_image",
    "resample_labels",
    "separate_z_axis",
    "target_spacing",
]
