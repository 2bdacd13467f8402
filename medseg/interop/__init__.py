"""Interoperability with other tools' trained models (nnU-Net v2 results folders, both ways)."""

from medseg.interop.nnunet import (
    NNUNET_SAFE_GLOBALS,
    is_nnunet_folder,
    load_nnunet_checkpoint,
    load_nnunet_folds,
    medseg_plans_from_nnunet,
    nnunet_folds,
)
from medseg.interop.nnunet_export import export_nnunet, nnunet_plans_from_medseg

__all__ = [
    "NNUNET_SAFE_GLOBALS",
    "export_nnunet",
    "is_nnunet_folder",
    "load_nnunet_checkpoint",
    "load_nnunet_folds",
    "medseg_plans_from_nnunet",
    "nnunet_folds",
    "nnunet_plans_from_medseg",
]
