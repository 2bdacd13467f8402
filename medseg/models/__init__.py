"""The model zoo: a registry of segmentation networks that follow one constructor contract.

Every model is built as ``create_model(name, spatial_dims, in_channels, out_channels, **options)`` and maps
``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``. :func:`list_models` lists the names and
:func:`get_model_info` gives each model's paper, supported dims, smallest input divisor, deep-supervision support and
the paper's own parameter figure.

Adding an architecture: write ``medseg/models/<family>/<name>.py`` with a :func:`register_model`-decorated
:class:`SegmentationModel` subclass and add one import line below.
"""

from medseg.models import instance as _instance  # noqa: F401
from medseg.models import interactive as _interactive  # noqa: F401
from medseg.models import natural as _natural  # noqa: F401
from medseg.models import panoptic as _panoptic  # noqa: F401
from medseg.models.attention import ahcnet as _attention_ahcnet  # noqa: F401
from medseg.models.attention import attention_unet as _attention_attention_unet  # noqa: F401
from medseg.models.attention import csa_unet as _attention_csa_unet  # noqa: F401
from medseg.models.attention import focal_tversky as _attention_focal_tversky  # noqa: F401
from medseg.models.attention import lwbna_unet as _attention_lwbna_unet  # noqa: F401
from medseg.models.attention import ra_unet as _attention_ra_unet  # noqa: F401
from medseg.models.attention import sclerasegnet as _attention_sclerasegnet  # noqa: F401
from medseg.models.base import SegmentationModel

# Importing a model module registers its models (one line per architecture).
from medseg.models.dense import dense_vnet as _dense_dense_vnet  # noqa: F401
from medseg.models.dense import drinet as _dense_drinet  # noqa: F401
from medseg.models.dense import fc_densenet as _dense_fc_densenet  # noqa: F401
from medseg.models.dense import fd_unet as _dense_fd_unet  # noqa: F401
from medseg.models.dense import h_denseunet as _dense_h_denseunet  # noqa: F401
from medseg.models.dense import hyperdensenet as _dense_hyperdensenet  # noqa: F401
from medseg.models.dense import mdu_net as _dense_mdu_net  # noqa: F401
from medseg.models.dense import stacked_dense_unet as _dense_stacked_dense_unet  # noqa: F401
from medseg.models.monai_wrappers import segresnet as _monai_segresnet  # noqa: F401
from medseg.models.monai_wrappers import swin_unetr as _monai_swin_unetr  # noqa: F401
from medseg.models.monai_wrappers import unetr as _monai_unetr  # noqa: F401
from medseg.models.multimodal import acnet as _multimodal_acnet  # noqa: F401
from medseg.models.multimodal import dense_multipath_unet as _multimodal_dense_multipath_unet  # noqa: F401
from medseg.models.multimodal import ivd_net as _multimodal_ivd_net  # noqa: F401
from medseg.models.multimodal import ssma as _multimodal_ssma  # noqa: F401
from medseg.models.multires import multiresunet as _multires_multiresunet  # noqa: F401
from medseg.models.nnunet import dynamic_unet as _nnunet_dynamic_unet  # noqa: F401
from medseg.models.nnunet import resenc_unet as _nnunet_resenc_unet  # noqa: F401
from medseg.models.probabilistic import hprob_unet as _probabilistic_hprob_unet  # noqa: F401
from medseg.models.probabilistic import prob_unet as _probabilistic_prob_unet  # noqa: F401
from medseg.models.realtime import bisenet as _realtime_bisenet  # noqa: F401
from medseg.models.realtime import bisenetv2 as _realtime_bisenetv2  # noqa: F401
from medseg.models.realtime import cgnet as _realtime_cgnet  # noqa: F401
from medseg.models.realtime import contextnet as _realtime_contextnet  # noqa: F401
from medseg.models.realtime import enet as _realtime_enet  # noqa: F401
from medseg.models.realtime import erfnet as _realtime_erfnet  # noqa: F401
from medseg.models.realtime import espnet as _realtime_espnet  # noqa: F401
from medseg.models.realtime import espnetv2 as _realtime_espnetv2  # noqa: F401
from medseg.models.realtime import fast_scnn as _realtime_fast_scnn  # noqa: F401
from medseg.models.realtime import icnet as _realtime_icnet  # noqa: F401
from medseg.models.realtime import lednet as _realtime_lednet  # noqa: F401
from medseg.models.realtime import liteseg as _realtime_liteseg  # noqa: F401
from medseg.models.realtime import shuffleseg as _realtime_shuffleseg  # noqa: F401
from medseg.models.realtime import swiftnet as _realtime_swiftnet  # noqa: F401
from medseg.models.recurrent import birnn_unet as _recurrent_birnn_unet  # noqa: F401
from medseg.models.recurrent import r2unet as _recurrent_r2unet  # noqa: F401
from medseg.models.recurrent import recurrent_unet as _recurrent_recurrent_unet  # noqa: F401
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
from medseg.models.residual import resunet_a as _residual_resunet_a  # noqa: F401
from medseg.models.reversible import rev_unet as _reversible_rev_unet  # noqa: F401
from medseg.models.se import scse_unet as _se_scse_unet  # noqa: F401
from medseg.models.transformer import hrformer as _transformer_hrformer  # noqa: F401
from medseg.models.transformer import setr as _transformer_setr  # noqa: F401
from medseg.models.transformer import transunet as _transformer_transunet  # noqa: F401
from medseg.models.unet import bridged_unet as _unet_bridged_unet  # noqa: F401
from medseg.models.unet import dunet as _unet_dunet  # noqa: F401
from medseg.models.unet import mnet as _unet_mnet  # noqa: F401
from medseg.models.unet import sunet as _unet_sunet  # noqa: F401
from medseg.models.unet import unet as _unet_unet  # noqa: F401
from medseg.models.unet import unet3d as _unet_unet3d  # noqa: F401
from medseg.models.unet import unetpp as _unet_unetpp  # noqa: F401
from medseg.models.unet_variants import cenet as _unet_variants_cenet  # noqa: F401
from medseg.models.unet_variants import framelet_unet as _unet_variants_framelet_unet  # noqa: F401
from medseg.models.unet_variants import improved_unet as _unet_variants_improved_unet  # noqa: F401
from medseg.models.unet_variants import laddernet as _unet_variants_laddernet  # noqa: F401
from medseg.models.unet_variants import mfp_unet as _unet_variants_mfp_unet  # noqa: F401
from medseg.models.unet_variants import unetplus as _unet_variants_unetplus  # noqa: F401
from medseg.models.unet_variants import wnet as _unet_variants_wnet  # noqa: F401
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
