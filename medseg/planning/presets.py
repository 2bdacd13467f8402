"""Planner presets: nnU-Net v2's default planner and its residual-encoder presets ResEnc M / L / XL.

The ResEnc presets come from Isensee et al., "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image
Segmentation", MICCAI 2024 (arXiv:2404.09556), as implemented by ``nnUNetPlannerResEncM/L/XL`` in nnU-Net's
``nnunetv2/experiment_planning/experiment_planners/residual_unets/residual_encoder_unet_planners.py`` and described
in ``documentation/resenc_presets.md``. They plan the same way as the default planner, except that:

- the network is the residual-encoder U-Net (registry key ``nnunet_resenc``): 1, 3, 4, 6, 6, 6, ... residual blocks
  per encoder stage and one convolution per decoder stage; the memory estimate counts that network's feature maps;
- each has its own GPU memory target (8 / 24 / 40 GB) and feature-map reference for it;
- a patch is shrunk while the estimate exceeds the reference (the default planner: while the estimate for a batch of
  two exceeds it), and the batch size is not capped at 5% of the dataset's voxels;
- ``2d`` and ``3d_fullres`` reuse the default planner's preprocessed data (same data identifier).

This module holds only constants (also the fingerprint's sampling defaults), so the plans schema and the command
line's option defaults can import it without the planner or numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Foreground voxels sampled over the whole dataset for the fingerprint's intensity statistics.
DEFAULT_MAX_SAMPLES = 10_000_000
#: Seed of the intensity sampling (nnU-Net uses 1234).
DEFAULT_SEED = 1234

__all__ = [
    "DEFAULT_PLANS_IDENTIFIER",
    "DEFAULT_PRESET",
    "PLAIN_CONV_UNET",
    "PRESETS",
    "RESIDUAL_ENCODER_UNET",
    "Preset",
]

#: ``topology.network`` values.
PLAIN_CONV_UNET = "plain_conv_unet"
RESIDUAL_ENCODER_UNET = "residual_encoder_unet"
#: Plans identifier of the default planner (nnU-Net: ``nnUNetPlans``); ``2d``/``3d_fullres`` data use it always.
DEFAULT_PLANS_IDENTIFIER = "medsegPlans"
DEFAULT_PRESET = "default"

#: nnU-Net's ``UNet_blocks_per_stage_encoder`` of ``ResEncUNetPlanner`` (truncated to the number of stages).
_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
#: The default planner's ``UNet_blocks_per_stage_encoder`` / ``_decoder``: two convolutions per stage.
_PLAIN_CONVS = (2,) * 14


@dataclass(frozen=True)
class Preset:
    """The planner settings that differ between nnU-Net's default planner and the ResEnc presets.

    Attributes:
        name: medseg's preset name (``--preset``).
        nnunet_planner: The nnU-Net planner class it follows.
        plans_identifier: medseg's plans identifier (nnU-Net's ``plans_name`` with ``nnUNet`` → ``medseg``).
        network: ``topology.network``: :data:`PLAIN_CONV_UNET` or :data:`RESIDUAL_ENCODER_UNET`.
        model: Registry key of the model the plans name by default.
        gpu_memory_gb: Default GPU memory target (nnU-Net's ``gpu_memory_target_in_gb`` default).
        reference_gpu_memory_gb: Memory the references were set for (``UNet_reference_val_corresp_GB``).
        reference_value_3d: Feature-map elements allowed in 3D at that memory (``UNet_reference_val_3d``).
        reference_value_2d: The same in 2D (``UNet_reference_val_2d``).
        reference_batch_size_3d: Batch size the 3D reference holds (``UNet_reference_val_corresp_bs_3d``).
        reference_batch_size_2d: Batch size the 2D reference holds (``UNet_reference_val_corresp_bs_2d``).
        max_dataset_covered: Cap of a batch's voxels as a fraction of the dataset's (``max_dataset_covered``).
        blocks_per_stage_encoder: Convolutions (plain) or residual blocks (ResEnc) per encoder stage.
        convs_per_stage_decoder: Convolutions per decoder stage (``UNet_blocks_per_stage_decoder``).
        shrink_for_min_batch: Shrink the patch while a batch of two would not fit (default planner) rather than
            while one reference batch would not (ResEnc presets' ``while estimate > reference``).
    """

    name: str
    nnunet_planner: str
    plans_identifier: str
    network: str
    model: str
    gpu_memory_gb: float
    reference_gpu_memory_gb: float
    reference_value_3d: int
    reference_value_2d: int
    reference_batch_size_3d: int
    reference_batch_size_2d: int
    max_dataset_covered: float
    blocks_per_stage_encoder: tuple[int, ...]
    convs_per_stage_decoder: int
    shrink_for_min_batch: bool

    @property
    def residual(self) -> bool:
        """Whether the preset plans the residual-encoder U-Net."""
        return self.network == RESIDUAL_ENCODER_UNET


def _resenc(name: str, size: str, gpu_gb: float, ref_3d: int, ref_2d: int) -> Preset:
    return Preset(
        name=name,
        nnunet_planner=f"nnUNetPlannerResEnc{size}",
        plans_identifier=f"medsegResEnc{size}Plans",
        network=RESIDUAL_ENCODER_UNET,
        model="nnunet_resenc",
        gpu_memory_gb=gpu_gb,
        reference_gpu_memory_gb=gpu_gb,
        reference_value_3d=ref_3d,
        reference_value_2d=ref_2d,
        reference_batch_size_3d=2,
        reference_batch_size_2d=12,
        max_dataset_covered=1.0,
        blocks_per_stage_encoder=_RESENC_BLOCKS,
        convs_per_stage_decoder=1,
        shrink_for_min_batch=False,
    )


#: The presets by name. Values from nnU-Net's ``default_experiment_planner.py`` (default) and
#: ``residual_unets/residual_encoder_unet_planners.py`` (ResEnc; the batch references 2 / 12 are inherited).
PRESETS: dict[str, Preset] = {
    DEFAULT_PRESET: Preset(
        name=DEFAULT_PRESET,
        nnunet_planner="ExperimentPlanner",
        plans_identifier=DEFAULT_PLANS_IDENTIFIER,
        network=PLAIN_CONV_UNET,
        model="nnunet",
        gpu_memory_gb=8.0,
        reference_gpu_memory_gb=8.0,
        reference_value_3d=560_000_000,
        reference_value_2d=85_000_000,
        reference_batch_size_3d=2,
        reference_batch_size_2d=12,
        max_dataset_covered=0.05,
        blocks_per_stage_encoder=_PLAIN_CONVS,
        convs_per_stage_decoder=2,
        shrink_for_min_batch=True,
    ),
    "resenc_m": _resenc("resenc_m", "M", 8.0, 680_000_000, 135_000_000),
    "resenc_l": _resenc("resenc_l", "L", 24.0, 2_100_000_000, 380_000_000),
    "resenc_xl": _resenc("resenc_xl", "XL", 40.0, 3_600_000_000, 560_000_000),
}
