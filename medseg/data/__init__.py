"""Datasets: JSON manifests (a superset of the MSD ``dataset.json``), importers, and whole-dataset checks.

See ``data_manifests/README.md`` for the manifest format.
"""

from medseg.data.check import CheckReport, Problem, ProgressCallback, check_case, check_dataset
from medseg.data.importers import (
    ImportResult,
    detect_format,
    import_dataset,
    import_msd,
    import_nnunet_raw,
    is_junk,
)
from medseg.data.manifest import (
    FORMAT_VERSION,
    Case,
    Channel,
    Manifest,
    Split,
    case_id_from_path,
    load_manifest,
    manifest_from_dict,
    normalize_modality,
    save_manifest,
)

__all__ = [
    "FORMAT_VERSION",
    "Case",
    "Channel",
    "CheckReport",
    "ImportResult",
    "Manifest",
    "Problem",
    "ProgressCallback",
    "Split",
    "case_id_from_path",
    "check_case",
    "check_dataset",
    "detect_format",
    "import_dataset",
    "import_msd",
    "import_nnunet_raw",
    "is_junk",
    "load_manifest",
    "manifest_from_dict",
    "normalize_modality",
    "save_manifest",
]
