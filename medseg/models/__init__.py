"""The model zoo: a registry of segmentation networks that follow one constructor contract.

Every model is built as ``create_model(name, spatial_dims, in_channels, out_channels, **options)`` and maps
``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``. :func:`list_models` lists the names and
:func:`get_model_info` gives each model's paper, supported dims, smallest input divisor, deep-supervision support and
the paper's own parameter figure.

Adding an architecture: write ``medseg/models/<family>/<name>.py`` with a :func:`register_model`-decorated
:class:`SegmentationModel` subclass and add one import line below.
"""

from medseg.models import natural as _natural  # noqa: F401
from medseg.models.attention import attention_unet as _attention_attention_unet  # noqa: F401
from medseg.models.base import SegmentationModel

# Importing a model module registers its models (one line per architecture).
from medseg.models.dense import dense_vnet as _dense_dense_vnet  # noqa: F401
from medseg.models.dense import fc_densenet as _dense_fc_densenet  # noqa: F401
from medseg.models.dense import h_denseunet as _dense_h_denseunet  # noqa: F401
from medseg.models.dense import hyperdensenet as _dense_hyperdensenet  # noqa: F401
from medseg.models.monai_wrappers import segresnet as _monai_segresnet  # noqa: F401
from medseg.models.monai_wrappers import swin_unetr as _monai_swin_unetr  # noqa: F401
from medseg.models.monai_wrappers import unetr as _monai_unetr  # noqa: F401
from medseg.models.multires import multiresunet as _multires_multiresunet  # noqa: F401
from medseg.models.nnunet import dynamic_unet as _nnunet_dynamic_unet  # noqa: F401
from medseg.models.nnunet import resenc_unet as _nnunet_resenc_unet  # noqa: F401
from medseg.models.recurrent import r2unet as _recurrent_r2unet  # noqa: F401
from medseg.models.registry import (
    ModelInfo,
    PaperConfig,
    count_parameters,
    create_model,
    create_model_from_plans,
    get_model_info,
    list_families,
    list_models,
    paper_parameter_count,
    register_model,
)
from medseg.models.reversible import rev_unet as _reversible_rev_unet  # noqa: F401
from medseg.models.se import scse_unet as _se_scse_unet  # noqa: F401
from medseg.models.transformer import hrformer as _transformer_hrformer  # noqa: F401
from medseg.models.transformer import setr as _transformer_setr  # noqa: F401
from medseg.models.transformer import transunet as _transformer_transunet  # noqa: F401
from medseg.models.unet import unet as _unet_unet  # noqa: F401
from medseg.models.unet import unet3d as _unet_unet3d  # noqa: F401
from medseg.models.unet import unetpp as _unet_unetpp  # noqa: F401
from medseg.models.vnet import vnet as _vnet_vnet  # noqa: F401
from medseg.models.volumetric import anatomynet as _volumetric_anatomynet  # noqa: F401
from medseg.models.volumetric import dense_unet3d as _volumetric_dense_unet3d  # noqa: F401
from medseg.models.volumetric import gp_unet as _volumetric_gp_unet  # noqa: F401
from medseg.models.volumetric import ms_unet3d as _volumetric_ms_unet3d  # noqa: F401
from medseg.models.volumetric import roi_unet3d as _volumetric_roi_unet3d  # noqa: F401

__all__ = [
    "ModelInfo",
    "PaperConfig",
    "SegmentationModel",
    "count_parameters",
    "create_model",
    "create_model_from_plans",
    "get_model_info",
    "list_families",
    "list_models",
    "paper_parameter_count",
    "register_model",
]
