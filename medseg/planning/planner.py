"""Experiment planning: nnU-Net v2's rules turning a dataset fingerprint into training configurations.

:func:`plan_experiment` is a pure function of a fingerprint (see :mod:`medseg.planning.fingerprint`): no files, no
GPU, no model code needed, so it can be tested with hand-written fingerprints. It follows nnU-Net v2's
``ExperimentPlanner`` (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18, 203-211, 2021; ``nnunetv2/experiment_planning/experiment_planners``):

- target spacing: the median spacing, except that an axis more than 3x coarser than the others with more than 3x
  fewer voxels takes its 10th-percentile spacing (never finer than the other axes);
- the coarsest axis is transposed to the front (the 2D configuration works on the two other axes), in nnU-Net's
  axis order (:func:`transpose_for`);
- topology (``get_pool_and_conv_props``): an axis is pooled while its feature map stays at least 8 voxels and its
  current spacing is within 2x of the finest; its kernel is 1 until its spacing is within 2x of the finest;
- patch size: an initial patch shaped like ``1/spacing`` of 256^3 (3D) or 2048^2 (2D) voxels, clipped to the
  median image, shrunk along the axis with the largest patch/median ratio until the network's feature-map size (the
  VRAM estimate) fits the reference of 560e6 (3D) / 85e6 (2D) for 8 GB; the batch size fills the rest, at least 2,
  at most 5% of the dataset's voxels;
- ``3d_lowres`` when the full-resolution patch covers less than a quarter of the median image (spacing grown by 3%
  steps), dropped when it is not at least 2x smaller than full resolution; ``3d_cascade_fullres`` then refines it.

The ``preset`` argument switches to nnU-Net's residual-encoder presets ResEnc M / L / XL (Isensee et al., "nnU-Net
Revisited", MICCAI 2024; ``nnUNetPlannerResEncM/L/XL``): the residual-encoder U-Net's feature-map count as the
estimate, the presets' GPU memory targets and references, and no 5% batch cap (see :mod:`medseg.planning.presets`).

All arrays in a configuration (spacing, median size, patch size, kernel sizes, strides) are in the *transposed* axis
order; ``transpose_forward`` maps it from the image's own (stored) axis order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import PlanningError
from medseg.planning.presets import DEFAULT_PLANS_IDENTIFIER, DEFAULT_PRESET, PRESETS, Preset
from medseg.planning.schema import CASCADE, CONFIGURATIONS, PLANS_VERSION, parse_configs, validate_fingerprint

#: An axis is anisotropic when its spacing is more than this many times the others' (nnU-Net's ``ANISO_THRESHOLD``).
ANISOTROPY_THRESHOLD = 3.0
#: Base features of the first stage, doubled per stage.
BASE_FEATURES = 32
#: Feature cap per stage in 3D / 2D.
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512
#: Smallest edge of the bottleneck feature map (an axis is pooled only while it is at least twice this).
FEATUREMAP_MIN_EDGE_LENGTH = 4
#: Convolutions per encoder / decoder stage.
CONVS_PER_STAGE = 2
#: Feature-map-size references of the default planner (nnU-Net's ``UNet_reference_val_3d/2d``), valid for 8 GB and
#: the batch sizes below; the presets' own values are in :data:`medseg.planning.presets.PRESETS`.
REFERENCE_VALUE_3D = PRESETS[DEFAULT_PRESET].reference_value_3d
REFERENCE_VALUE_2D = PRESETS[DEFAULT_PRESET].reference_value_2d
REFERENCE_GPU_MEMORY_GB = PRESETS[DEFAULT_PRESET].reference_gpu_memory_gb
REFERENCE_BATCH_SIZE_3D = PRESETS[DEFAULT_PRESET].reference_batch_size_3d
REFERENCE_BATCH_SIZE_2D = PRESETS[DEFAULT_PRESET].reference_batch_size_2d
MIN_BATCH_SIZE = 2
#: A batch of the default planner covers at most this fraction of the dataset's voxels.
MAX_DATASET_COVERED = PRESETS[DEFAULT_PRESET].max_dataset_covered
#: ``3d_lowres`` is made when the fullres patch covers less than this fraction of the median image.
LOWRES_CREATION_THRESHOLD = 0.25
#: Spacing growth per step while searching the ``3d_lowres`` spacing.
LOWRES_SPACING_STEP = 1.03
#: ``3d_lowres`` is dropped when the median image has fewer than this factor fewer voxels than at full resolution.
LOWRES_MIN_SIZE_RATIO = 2.0
#: The median relative size after cropping below which z-score normalisation is restricted to the nonzero mask.
NONZERO_MASK_THRESHOLD = 0.75
#: Default model (registry key of the dynamic plain-conv U-Net).
DEFAULT_MODEL = "nnunet"
#: The model instance datasets (``"task": "instance"`` manifests) are planned with when no ``--model`` is given.
DEFAULT_INSTANCE_MODEL = "mask_rcnn"

#: nnU-Net's normalisation schemes, chosen from a channel's modality or name (case-insensitive); others: z-score.
_SCHEME_BY_NAME = {
    "ct": "ct",
    "nonorm": "none",
    "zscore": "zscore",
    "rescale_0_1": "rescale_to_0_1",
    "rescale_to_0_1": "rescale_to_0_1",
    "rgb_to_0_1": "rgb_to_0_1",
}
#: Schemes that leave voxels outside the nonzero mask at zero when the mask is used (nnU-Net:
#: ``leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true``).
_MASKABLE_SCHEMES = ("zscore",)


@dataclass(frozen=True)
class Topology:
    """The result of nnU-Net's ``get_pool_and_conv_props`` for one patch size.

    Attributes:
        num_pool_per_axis: How often each axis is downsampled.
        strides: Per stage, the stride along each axis (the first stage's is all ones).
        kernel_sizes: Per stage, the convolution kernel size along each axis.
        patch_size: The patch size padded up to a multiple of ``divisor``.
        divisor: ``2 ** num_pool_per_axis``.
    """

    num_pool_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisor: tuple[int, ...]


def _pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> tuple[int, ...]:
    """Round each size up to a multiple of its divisor (sizes already a multiple stay; fractions round up)."""
    out = []
    for size, div in zip(shape, divisor, strict=True):
        remainder = size % div
        out.append(int(size if remainder == 0 else size + div - remainder))
    return tuple(out)


def pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[float],
    min_feature_map_size: int = FEATUREMAP_MIN_EDGE_LENGTH,
    max_numpool: int = 999_999,
) -> Topology:
    """Pooling and kernel sizes per stage, as nnU-Net v2's ``get_pool_and_conv_props``.

    Stages are added while at least one axis can be pooled. An axis can be pooled when its feature map is at least
    ``2 * min_feature_map_size`` and its current spacing is less than 2x the finest current spacing among the
    poolable axes; a single remaining axis needs ``3 * min_feature_map_size``. Pooling doubles an axis's spacing and
    halves (rounding up) its size. An axis's kernel is 1 until its current spacing is within 2x of the finest, then
    3 for good. The bottleneck stage always has 3s.

    Args:
        spacing: Voxel spacing per axis (mm).
        patch_size: Patch size per axis (may be fractional; it is padded up).
        min_feature_map_size: Smallest bottleneck edge (nnU-Net: 4).
        max_numpool: Maximum number of poolings per axis.

    Returns:
        The :class:`Topology`.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    num_pool = [0] * dim
    kernel = [1] * dim
    while True:
        axes = [a for a in range(dim) if current_size[a] >= 2 * min_feature_map_size]
        if not axes:
            break
        finest = min(current_spacing[a] for a in axes)
        axes = [a for a in axes if current_spacing[a] / finest < 2 and num_pool[a] < max_numpool]
        if not axes or (len(axes) == 1 and current_size[axes[0]] < 3 * min_feature_map_size):
            break
        finest_all = min(current_spacing)
        for a in range(dim):
            if kernel[a] != 3 and current_spacing[a] / finest_all < 2:
                kernel[a] = 3
        stride = [1] * dim
        for a in axes:
            stride[a] = 2
            num_pool[a] += 1
            current_spacing[a] *= 2
            current_size[a] = math.ceil(current_size[a] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisor = tuple(2**p for p in num_pool)
    return Topology(tuple(num_pool), tuple(strides), tuple(kernels), _pad_to_multiple(patch_size, divisor), divisor)


def features_per_stage(n_stages: int, spatial_dims: int) -> tuple[int, ...]:
    """``min(32 * 2**s, cap)`` per stage; the cap is 320 in 3D and 512 in 2D."""
    cap = MAX_FEATURES_3D if spatial_dims == 3 else MAX_FEATURES_2D
    return tuple(min(cap, BASE_FEATURES * 2**s) for s in range(n_stages))


def conv_feature_map_size(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    n_conv_per_stage: Sequence[int],
    n_conv_per_stage_decoder: Sequence[int],
    num_classes: int,
    deep_supervision: bool = False,
) -> int:
    """Number of feature-map elements a plain-conv U-Net computes for one patch: nnU-Net's VRAM estimate.

    Computed analytically as ``PlainConvUNet.compute_conv_feature_map_size`` of ``dynamic_network_architectures``
    counts them (nnU-Net builds the network to call it; the reference values of the planner are tied to this count):
    every encoder convolution's output; per decoder stage its convolutions' outputs plus the transposed
    convolution's output (all at the skip's resolution and features); and the segmentation output of the last stage
    (of every stage with deep supervision, which the planner does not use). Sizes are floor-divided by the strides.

    Args:
        patch_size: Input patch size.
        strides: Stride per stage.
        features: Features per stage.
        n_conv_per_stage: Convolutions per encoder stage.
        n_conv_per_stage_decoder: Convolutions per decoder stage (lowest resolution first).
        num_classes: Output channels.
        deep_supervision: Count every decoder stage's segmentation output.

    Returns:
        The number of elements.
    """
    n = len(strides)
    size = [int(s) for s in patch_size]
    sizes: list[list[int]] = []
    total = 0
    for s in range(n):
        size = [a // b for a, b in zip(size, strides[s], strict=True)]
        sizes.append(size)
        total += n_conv_per_stage[s] * features[s] * math.prod(size)
    for s in range(n - 1):
        level = n - 2 - s  # the decoder runs from the lowest resolution up
        voxels = math.prod(sizes[level])
        total += (n_conv_per_stage_decoder[s] + 1) * features[level] * voxels
        if deep_supervision or s == n - 2:
            total += num_classes * voxels
    return int(total)


def residual_encoder_feature_map_size(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    n_blocks_per_stage: Sequence[int],
    n_conv_per_stage_decoder: Sequence[int],
    num_classes: int,
    deep_supervision: bool = False,
) -> int:
    """Number of feature-map elements of nnU-Net's residual-encoder U-Net for one patch: the ResEnc VRAM estimate.

    Counted analytically as ``ResidualEncoderUNet.compute_conv_feature_map_size`` of ``dynamic_network_architectures``
    does (``ResidualEncoder`` + ``UNetDecoder``): the stem convolution's output (``features[0]`` at the input size);
    per residual block (``BasicBlockD``) its two convolutions' outputs, plus the skip projection's output when the
    block changes the channels or the size (the first block of every strided stage); the decoder as in
    :func:`conv_feature_map_size`. Sizes are floor-divided by the strides.

    Args:
        patch_size: Input patch size.
        strides: Stride per stage (the first block of a stage carries it).
        features: Features per stage.
        n_blocks_per_stage: Residual blocks per encoder stage.
        n_conv_per_stage_decoder: Convolutions per decoder stage (lowest resolution first).
        num_classes: Output channels.
        deep_supervision: Count every decoder stage's segmentation output (the planner does not).

    Returns:
        The number of elements.
    """
    n = len(strides)
    size = [int(s) for s in patch_size]
    total = features[0] * math.prod(size)  # the stem keeps the input size
    channels = features[0]
    for s in range(n):
        after = [a // b for a, b in zip(size, strides[s], strict=True)]
        voxels = math.prod(after)
        total += 2 * features[s] * voxels * n_blocks_per_stage[s]
        if channels != features[s] or after != size:
            total += features[s] * voxels  # ResNet-D skip: (avg pool +) 1x1 conv of the first block
        size, channels = after, features[s]
    # the decoder is the plain U-Net's; subtract the plain encoder it would count (no encoder convolutions)
    decoder = conv_feature_map_size(patch_size, strides, features, [0] * n, n_conv_per_stage_decoder, num_classes,
                                    deep_supervision)
    return int(total + decoder)


@dataclass
class _Configuration:
    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    topology: Topology
    features: tuple[int, ...]
    estimate: int
    reference: float


class _Planner:
    """Holds the dataset-wide inputs of :func:`plan_experiment` and plans one configuration at a time."""

    def __init__(self, num_classes: int, gpu_memory_gb: float, preset: Preset) -> None:
        self.num_classes = num_classes
        self.gpu_memory_gb = gpu_memory_gb
        self.preset = preset
        self._cache: dict[tuple[Any, ...], int] = {}

    def _estimate(self, patch: Sequence[int], topo: Topology, features: Sequence[int]) -> int:
        key = (tuple(patch), topo.strides)
        if key not in self._cache:
            n = len(topo.strides)
            encoder = list(self.preset.blocks_per_stage_encoder[:n])
            decoder = [self.preset.convs_per_stage_decoder] * (n - 1)
            count = residual_encoder_feature_map_size if self.preset.residual else conv_feature_map_size
            self._cache[key] = count(patch, topo.strides, features, encoder, decoder, self.num_classes)
        return self._cache[key]

    def configure(
        self, spacing: Sequence[float], median_shape: Sequence[float], n_voxels_dataset: float
    ) -> _Configuration:
        """Patch size, topology and batch size for one spacing (nnU-Net's ``get_plans_for_configuration``)."""
        dims = len(spacing)
        spacing_arr = np.asarray(spacing, dtype=np.float64)
        if np.any(spacing_arr <= 0):
            raise PlanningError(f"spacing must be positive, got {list(spacing)}")
        inv = 1.0 / spacing_arr
        edge = 256 if dims == 3 else 2048
        scale = (edge**dims / float(np.prod(inv))) ** (1.0 / dims)
        initial = [min(float(round(float(i * scale))), float(m)) for i, m in zip(inv, median_shape, strict=True)]
        topo = pool_and_conv_props(spacing, initial)
        patch = list(topo.patch_size)
        features = features_per_stage(len(topo.strides), dims)
        estimate = self._estimate(patch, topo, features)

        preset = self.preset
        reference = (preset.reference_value_3d if dims == 3 else preset.reference_value_2d) * (
            self.gpu_memory_gb / preset.reference_gpu_memory_gb
        )
        ref_bs = preset.reference_batch_size_3d if dims == 3 else preset.reference_batch_size_2d
        # default planner: the reference holds ref_bs patches and at least MIN_BATCH_SIZE (2) must fit;
        # ResEnc presets: one reference batch must fit (``while estimate > reference``)
        needed = MIN_BATCH_SIZE / ref_bs if preset.shrink_for_min_batch else 1.0
        median = np.asarray(median_shape, dtype=np.float64)
        while estimate * needed > reference:
            ratios = np.asarray(patch, dtype=np.float64) / median
            axis = int(np.argsort(ratios, kind="stable")[-1])
            # step down by the divisor the smaller patch would have, so no valid size is skipped
            trial = list(patch)
            trial[axis] -= topo.divisor[axis]
            step = pool_and_conv_props(spacing, trial).divisor[axis]
            patch[axis] -= step
            topo = pool_and_conv_props(spacing, patch)
            patch = list(topo.patch_size)
            features = features_per_stage(len(topo.strides), dims)
            estimate = self._estimate(patch, topo, features)

        batch = round(reference / estimate * ref_bs)
        cap = round(n_voxels_dataset * preset.max_dataset_covered / float(np.prod(patch, dtype=np.float64)))
        batch = max(min(batch, cap), MIN_BATCH_SIZE)
        return _Configuration(
            spacing=tuple(float(s) for s in spacing),
            median_shape=tuple(float(m) for m in median_shape),
            patch_size=tuple(int(p) for p in patch),
            batch_size=int(batch),
            topology=topo,
            features=tuple(features),
            estimate=int(estimate),
            reference=float(reference),
        )


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Full-resolution target spacing: the median, with nnU-Net's rule for one much coarser axis.

    When the axis with the largest median spacing is more than 3x coarser than every other axis *and* has more than
    3x fewer (median) voxels than every other axis, it takes the 10th percentile of its spacings instead; that value
    is raised to just above the other axes' largest spacing when it would be finer.

    Args:
        spacings: ``(n_cases, 3)`` spacings.
        shapes: ``(n_cases, 3)`` shapes after cropping.

    Returns:
        The target spacing per axis (image axis order).
    """
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    other_spacing = max(float(target[a]) for a in others)
    other_size = min(float(target_size[a]) for a in others)
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * other_spacing
    aniso_voxels = target_size[worst] * ANISOTROPY_THRESHOLD < other_size
    if aniso_spacing and aniso_voxels:
        value = float(np.percentile(spacings[:, worst], 10))
        if value < other_spacing:
            value = max(other_spacing, value) + 1e-5
        target[worst] = value
    return target


def transpose_for(spacing: Sequence[float], shapes: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """``transpose_forward`` (coarsest axis first) and its inverse ``transpose_backward``, as nnU-Net transposes.

    nnU-Net's rule applied to SimpleITK's ``z, y, x`` arrays (medseg's stored ``x, y, z`` order reversed): the
    coarsest axis first — of equally coarse axes the last stored one (z of a NIfTI) — then the others in decreasing
    stored order. The transposed arrays are thus exactly nnU-Net's: the ``2d`` configuration of 3 mm isotropic BraTS
    runs on axial slices as nnU-Net's does, and patch sizes list their axes in nnU-Net's order.

    An axis along which every case is a single slice (2D pictures loaded as ``(C, X, Y, 1)``) goes first whatever
    its spacing, as nnU-Net's fake 999 mm spacing of 2D images puts it: the ``2d`` configuration then runs in the
    plane of the pictures.
    """
    if shapes is not None and len(shapes):
        flat = [a for a in range(len(spacing)) if np.all(np.asarray(shapes)[:, a] == 1)]
        if flat:
            forward = [flat[0]] + [a for a in range(len(spacing)) if a != flat[0]]
            return forward, [forward.index(a) for a in range(len(spacing))]
    # nnU-Net works on SimpleITK's arrays, whose axes are medseg's (the stored order) reversed: its np.argmax of the
    # spacing, then its remaining axes in increasing order, are here the last coarsest axis, then the others in
    # decreasing order; so medseg's transposed arrays are nnU-Net's (isotropic data are sliced along z, as there)
    values = np.asarray(spacing, dtype=np.float64)
    worst = len(values) - 1 - int(np.argmax(values[::-1]))
    forward = [worst] + [a for a in reversed(range(len(spacing))) if a != worst]
    backward = [forward.index(a) for a in range(len(spacing))]
    return forward, backward


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """Shape after resampling from ``spacing`` to ``new_spacing`` (nnU-Net's ``compute_new_shape``)."""
    return [round(float(s) / float(n) * float(k)) for s, n, k in zip(spacing, new_spacing, shape, strict=True)]


def normalization_scheme(name: str, modality: str) -> str:
    """nnU-Net's normalisation scheme for a channel: ``ct`` for CT, else z-score unless named after a scheme.

    nnU-Net chooses by the channel's name in ``dataset.json`` (``CT``, ``noNorm``, ``zscore``, ``rescale_to_0_1``,
    ``rgb_to_0_1``, case-insensitive; anything else is z-score). medseg looks at the manifest's modality first, then
    the channel name.
    """
    for text in (modality, name):
        scheme = _SCHEME_BY_NAME.get(str(text).strip().casefold())
        if scheme is not None:
            return scheme
    return "zscore"


def _normalization(fingerprint: Mapping[str, Any]) -> list[dict[str, Any]]:
    use_mask = float(fingerprint["median_relative_size_after_cropping"]) < NONZERO_MASK_THRESHOLD
    props = fingerprint["foreground_intensity_properties_per_channel"]
    out = []
    for index, channel in enumerate(fingerprint["channels"]):
        scheme = normalization_scheme(channel["name"], channel["modality"])
        entry: dict[str, Any] = {
            "channel": index,
            "name": channel["name"],
            "modality": channel["modality"],
            "scheme": scheme,
            "use_mask_for_norm": bool(use_mask and scheme in _MASKABLE_SCHEMES),
        }
        if scheme == "ct":
            stats = props.get(str(index))
            if not stats or any(stats.get(k) is None for k in ("mean", "std", "percentile_00_5", "percentile_99_5")):
                raise PlanningError(f"channel {channel['name']!r} is CT but the fingerprint has no foreground "
                                    "intensities for it (are the labels empty?)")
            entry.update(
                clip_lower=float(stats["percentile_00_5"]),
                clip_upper=float(stats["percentile_99_5"]),
                mean=float(stats["mean"]),
                std=float(stats["std"]),
            )
        out.append(entry)
    return out


def _resampling(spacing: Sequence[float]) -> dict[str, Any]:
    anisotropy = max(spacing) / min(spacing)
    return {
        "images": {"order": 3, "order_z": 0},
        "labels": {"order": 1, "order_z": 0, "one_hot": True},
        "probabilities": {"order": 1, "order_z": 0},
        "separate_z_anisotropy_threshold": ANISOTROPY_THRESHOLD,
        "force_separate_z": None,
        "separate_z_at_target_spacing": bool(anisotropy > ANISOTROPY_THRESHOLD),
    }


def _topology_kwargs(cfg: _Configuration, preset: Preset) -> dict[str, Any]:
    n = len(cfg.topology.strides)
    encoder_key = "n_blocks_per_stage" if preset.residual else "n_conv_per_stage"
    return {
        "kernel_sizes": [list(k) for k in cfg.topology.kernel_sizes],
        "strides": [list(s) for s in cfg.topology.strides],
        "features_per_stage": list(cfg.features),
        encoder_key: list(preset.blocks_per_stage_encoder[:n]),
        "n_conv_per_stage_decoder": [preset.convs_per_stage_decoder] * (n - 1),
    }


def resolve_model(model: str, spatial_dims: Iterable[int], task: str = "semantic") -> tuple[str, set[str] | None]:
    """Check ``model`` against the model registry and return it with the keyword options it accepts.

    The registry is imported here, not at module import, so that planning works without it. When it cannot be
    imported, only the default ``nnunet`` is allowed and its options are not checked (``None``).

    Args:
        model: Registry key.
        spatial_dims: The dims the planned configurations need.
        task: ``"semantic"`` (the model must take the planned topology) or ``"instance"`` (an instance, panoptic or
            interactive model; its own layout is kept).

    Raises:
        PlanningError: Unknown model, a model of the other task, a semantic model that cannot take the planned
            topology (``kernel_sizes`` and ``strides``), or one that does not support the configurations' spatial
            dimensions.
    """
    try:
        from medseg import models as registry
    except Exception as exc:
        if model == DEFAULT_MODEL:
            return model, None
        raise PlanningError(f"cannot check model {model!r}: the model registry failed to import ({exc})") from None
    from medseg.errors import ModelError

    names = registry.list_models()
    if model not in names:
        raise PlanningError(f"unknown model {model!r}; choose one of: {', '.join(sorted(names))}")
    try:
        info = registry.get_model_info(model)
    except ModelError as exc:
        raise PlanningError(str(exc)) from None
    accepted = set(info.accepted_kwargs())
    if task == "instance" and info.task == "semantic":
        fitting = [n for n in sorted(names) if registry.get_model_info(n).task != "semantic"]
        raise PlanningError(f"model {model!r} gives one class per voxel, but the dataset's label maps hold objects "
                            f"(\"task\": \"instance\"); choose one of: {', '.join(fitting)}")
    if task != "instance" and info.task != "semantic":
        raise PlanningError(f"model {model!r} finds objects ({info.task}); the dataset's label maps hold one class per "
                            "voxel (its manifest has no \"task\": \"instance\")")
    if task != "instance" and not {"kernel_sizes", "strides"} <= accepted:
        fitting = [
            n for n in sorted(names) if {"kernel_sizes", "strides"} <= set(registry.get_model_info(n).accepted_kwargs())
        ]
        raise PlanningError(f"model {model!r} cannot take a planned topology (no kernel_sizes/strides options); "
                            f"models that can: {', '.join(fitting)}")
    missing_dims = sorted(set(spatial_dims) - set(info.spatial_dims))
    if missing_dims:
        raise PlanningError(f"model {model!r} supports {'/'.join(f'{d}D' for d in info.spatial_dims)} only, not "
                            f"{'/'.join(f'{d}D' for d in missing_dims)}; choose configurations with --configs")
    return model, accepted


def _model_entry(
    model: str, accepted: set[str] | None, cfg: _Configuration, in_channels: int, num_classes: int, preset: Preset
) -> dict[str, Any]:
    kwargs = _topology_kwargs(cfg, preset)
    kwargs["deep_supervision"] = True
    if accepted is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return {
        "name": model,
        "spatial_dims": len(cfg.spacing),
        "in_channels": in_channels,
        "out_channels": num_classes,
        "kwargs": kwargs,
    }


def _configuration_entry(
    name: str,
    cfg: _Configuration,
    *,
    transpose: tuple[list[int], list[int]],
    normalization: list[dict[str, Any]],
    resampling_spacing: Sequence[float],
    batch_dice: bool,
    in_channels: int,
    num_classes: int,
    model: str,
    accepted: set[str] | None,
    preset: Preset,
    plans_identifier: str,
) -> dict[str, Any]:
    topo = cfg.topology
    return {
        "data_identifier": data_identifier(name, preset, plans_identifier),
        "spatial_dims": len(cfg.spacing),
        "spacing": [float(s) for s in cfg.spacing],
        "transpose_forward": list(transpose[0]),
        "transpose_backward": list(transpose[1]),
        "median_image_size_in_voxels": [float(m) for m in cfg.median_shape],
        "patch_size": list(cfg.patch_size),
        "batch_size": cfg.batch_size,
        "batch_dice": batch_dice,
        "num_input_channels": in_channels,
        "num_classes": num_classes,
        "normalization": copy.deepcopy(normalization),
        "resampling": _resampling(resampling_spacing),
        "topology": {
            "network": preset.network,
            "n_stages": len(topo.strides),
            **_topology_kwargs(cfg, preset),
            "num_pool_per_axis": list(topo.num_pool_per_axis),
            "shape_must_be_divisible_by": list(topo.divisor),
            "conv_bias": True,
            "norm": {"name": "instance", "eps": 1e-5, "affine": True},
            "nonlin": {"name": "leaky_relu", "negative_slope": 0.01},
        },
        "vram_estimate": {"feature_map_elements": cfg.estimate, "reference": cfg.reference},
        "model": _model_entry(model, accepted, cfg, in_channels, num_classes, preset),
    }


def data_identifier(configuration: str, preset: Preset, plans_identifier: str) -> str:
    """The preprocessed-data name of a configuration, as nnU-Net's ``generate_data_identifier``.

    ``<plans_identifier>_<configuration>``, except for ``2d`` and ``3d_fullres``, whose data depend on neither the
    preset nor the memory target: they keep the default planner's name (``medsegPlans_2d``,
    ``medsegPlans_3d_fullres``) and share its data, as nnU-Net's ResEnc planners do.
    """
    if configuration in ("2d", "3d_fullres"):
        return f"{DEFAULT_PLANS_IDENTIFIER}_{configuration}"
    return f"{plans_identifier}_{configuration}"


def resolve_preset(preset: str, gpu_memory_gb: float | None, model: str | None) -> tuple[Preset, float, str, str]:
    """The preset, the GPU memory target, the model and the plans identifier for :func:`plan_experiment`.

    The preset's target is the default; an explicit ``gpu_memory_gb`` overrides it and scales the preset's references
    (nnU-Net: ``-gpu_memory_target`` with ``-pl nnUNetPlannerResEncM``). A target other than the preset's own gets
    its own plans identifier (``medsegResEncMPlans_80G``; nnU-Net asks for ``-overwrite_plans_name`` then), so its
    ``3d_lowres`` data do not share a name with the standard preset's.

    Raises:
        PlanningError: Unknown preset, a non-positive target, or a ResEnc preset with a model other than
            ``nnunet_resenc``.
    """
    if preset not in PRESETS:
        raise PlanningError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    if gpu_memory_gb is None:
        gpu_memory_gb = chosen.gpu_memory_gb
    if isinstance(gpu_memory_gb, bool) or not isinstance(gpu_memory_gb, (int, float)) or not math.isfinite(
        gpu_memory_gb
    ) or gpu_memory_gb <= 0:
        raise PlanningError(f"--gpu-memory-gb must be a positive number, got {gpu_memory_gb!r}")
    if model is None:
        model = chosen.model
    elif chosen.residual and model != chosen.model:
        raise PlanningError(f"preset {preset!r} plans the residual-encoder U-Net {chosen.model!r}, not {model!r}; "
                            f"leave out --model or use --preset {DEFAULT_PRESET}")
    identifier = chosen.plans_identifier
    if float(gpu_memory_gb) != chosen.gpu_memory_gb:
        identifier = f"{identifier}_{float(gpu_memory_gb):g}G"
    return chosen, float(gpu_memory_gb), model, identifier


def plan_experiment(
    fingerprint: Mapping[str, Any],
    *,
    gpu_memory_gb: float | None = None,
    configs: Sequence[str] | str = CONFIGURATIONS,
    model: str | None = None,
    dataset_name: str | None = None,
    preset: str = DEFAULT_PRESET,
) -> dict[str, Any]:
    """Plan the training configurations for a dataset fingerprint, as nnU-Net v2's planners do.

    Args:
        fingerprint: A fingerprint (from :func:`medseg.planning.compute_fingerprint`, a loaded ``fingerprint.json``
            or a hand-written object with the keys :func:`~medseg.planning.schema.validate_fingerprint` requires).
        gpu_memory_gb: GPU memory target; the feature-map reference scales with it (nnU-Net's
            ``gpu_memory_target_in_gb``), so more memory gives a bigger patch or batch. ``None``: the preset's
            target (default 8, ResEnc M 8, L 24, XL 40).
        configs: Configurations to include: any of ``2d``, ``3d_fullres``, ``3d_lowres`` (``3d_lowres`` also adds
            ``3d_cascade_fullres`` when ``3d_fullres`` is included; ``3d_lowres`` appears only when nnU-Net would
            make it).
        model: Registry key of the model the plans name; ``None``: the preset's (``nnunet``, the dynamic U-Net,
            for ``default``; ``nnunet_resenc`` for the ResEnc presets, which accept no other). With the default
            preset any model that accepts the topology (``kernel_sizes`` and ``strides``) may be named.
        dataset_name: Name written into the plans (default: the fingerprint's ``dataset_name``).
        preset: ``default`` (nnU-Net's ``ExperimentPlanner``) or ``resenc_m`` / ``resenc_l`` / ``resenc_xl``
            (``nnUNetPlannerResEncM/L/XL``).

    Returns:
        The plans: a plain JSON-serialisable dict (see ``medseg/planning/PLANS.md``).

    Raises:
        PlanningError: A malformed fingerprint, an unknown configuration, preset or model, a model the preset
            cannot plan, or a non-positive memory target.
    """
    from medseg import __version__

    validate_fingerprint(dict(fingerprint), "fingerprint")
    wanted = parse_configs(configs)
    task = str(fingerprint.get("task", "semantic"))
    if task not in ("semantic", "instance"):
        raise PlanningError(f"the fingerprint's task {task!r} is neither 'semantic' nor 'instance'")
    if task == "instance" and model is None and preset == DEFAULT_PRESET:
        model = DEFAULT_INSTANCE_MODEL
    chosen, gpu_memory_gb, model, plans_identifier = resolve_preset(preset, gpu_memory_gb, model)

    cases = fingerprint["cases"]
    spacings = np.asarray([c["spacing"] for c in cases], dtype=np.float64)
    shapes = np.asarray([c["shape_after_crop"] for c in cases], dtype=np.float64)
    n_cases = len(cases)
    in_channels = len(fingerprint["channels"])
    num_classes = len(fingerprint["labels"])

    fullres_spacing = target_spacing(spacings, shapes)
    forward, backward = transpose_for(fullres_spacing, shapes)
    spacing_t = fullres_spacing[forward]
    new_shapes = [resampled_shape(c["shape_after_crop"], c["spacing"], fullres_spacing) for c in cases]
    median_t = np.median(np.asarray(new_shapes, dtype=np.float64), axis=0)[forward]
    n_voxels_dataset = float(np.prod(median_t, dtype=np.float64)) * n_cases
    is_3d = median_t[0] != 1

    dims_needed = {2} if "2d" in wanted else set()
    if is_3d and ({"3d_fullres", "3d_lowres"} & set(wanted)):
        dims_needed.add(3)
    model, accepted = resolve_model(model, dims_needed, task)

    planner = _Planner(num_classes, gpu_memory_gb, chosen)
    normalization = _normalization(fingerprint)
    common = {
        "transpose": (forward, backward),
        "normalization": normalization,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "model": model,
        "accepted": accepted,
        "preset": chosen,
        "plans_identifier": plans_identifier,
    }
    configurations: dict[str, Any] = {}
    notes: list[str] = []
    if gpu_memory_gb != chosen.gpu_memory_gb:
        notes.append(f"GPU memory target {gpu_memory_gb:g} GB instead of the {chosen.name} preset's "
                     f"{chosen.gpu_memory_gb:g} GB: references scaled, plans identifier {plans_identifier}")

    fullres = lowres = None
    if is_3d and ({"3d_fullres", "3d_lowres"} & set(wanted)):
        fullres = planner.configure(spacing_t, median_t, n_voxels_dataset)
        # searched even when not asked for: whether it exists decides 3d_fullres's batch_dice (as in nnU-Net)
        lowres = _plan_lowres(planner, fullres, median_t, n_cases, notes)
    elif not is_3d and ({"3d_fullres", "3d_lowres"} & set(wanted)):
        notes.append("the median image is a single slice: no 3D configuration")

    if "2d" in wanted:
        cfg2d = planner.configure(spacing_t[1:], median_t[1:], n_voxels_dataset)
        entry = _configuration_entry(
            "2d", cfg2d, resampling_spacing=spacing_t, batch_dice=True, **common  # type: ignore[arg-type]
        )
        configurations["2d"] = entry
    if lowres is not None and "3d_lowres" in wanted:
        configurations["3d_lowres"] = _configuration_entry(
            "3d_lowres", lowres, resampling_spacing=lowres.spacing, batch_dice=False, **common  # type: ignore[arg-type]
        )
    if fullres is not None and "3d_fullres" in wanted:
        configurations["3d_fullres"] = _configuration_entry(
            "3d_fullres",
            fullres,
            resampling_spacing=fullres.spacing,
            batch_dice=lowres is not None,
            **common,  # type: ignore[arg-type]
        )
        if "3d_lowres" in configurations:
            cascade = copy.deepcopy(configurations["3d_fullres"])
            cascade["inherits_from"] = "3d_fullres"
            cascade["previous_stage"] = "3d_lowres"
            # the cascade's network also sees the one-hot low-resolution prediction of every foreground class
            cascade["num_input_channels"] = in_channels + num_classes - 1
            cascade["model"]["in_channels"] = in_channels + num_classes - 1
            configurations[CASCADE] = cascade
            configurations["3d_lowres"]["next_stage"] = CASCADE

    if task == "instance":
        _fit_instance_patches(configurations, model, notes)
    median_spacing = np.median(spacings, axis=0)[forward]
    median_shape = np.median(shapes, axis=0)[forward]
    return {
        **({"task": task} if task != "semantic" else {}),
        "plans_version": PLANS_VERSION,
        "medseg_version": __version__,
        "planner": _PLANNER_TEXT[chosen.residual].format(chosen.nnunet_planner),
        "preset": chosen.name,
        "plans_identifier": plans_identifier,
        "dataset_name": dataset_name if dataset_name is not None else fingerprint.get("dataset_name", ""),
        "gpu_memory_gb": float(gpu_memory_gb),
        "num_training_cases": n_cases,
        "channels": [dict(c) for c in fingerprint["channels"]],
        "labels": dict(fingerprint["labels"]),
        "full_resolution_spacing": [float(s) for s in fullres_spacing],
        "original_median_spacing_after_transp": [float(s) for s in median_spacing],
        "original_median_shape_after_transp": [round(float(s)) for s in median_shape],
        "transpose_forward": forward,
        "transpose_backward": backward,
        "foreground_intensity_properties_per_channel": copy.deepcopy(
            dict(fingerprint["foreground_intensity_properties_per_channel"])
        ),
        "notes": notes,
        "configurations": configurations,
    }


def _fit_instance_patches(configurations: dict[str, Any], model: str, notes: list[str]) -> None:
    """Round each configuration's patch up to a multiple of the instance model's input divisor."""
    from medseg.models import get_model_info

    info = get_model_info(model)
    for name, entry in configurations.items():
        dims = int(entry["spatial_dims"])
        divisor = int(info.divisor.get(dims, 1))
        patch = [int(-(-p // divisor) * divisor) for p in entry["patch_size"]]
        if patch != list(entry["patch_size"]):
            notes.append(f"{name}: patch {entry['patch_size']} rounded up to {patch}, a multiple of {model}'s input "
                         f"divisor {divisor}")
            entry["patch_size"] = patch


_PLANNER_TEXT = {
    False: "nnU-Net v2 {} rules (Isensee et al., Nature Methods 2021)",
    True: "nnU-Net v2 {} rules (Isensee et al., nnU-Net Revisited, MICCAI 2024)",
}


def _plan_lowres(
    planner: _Planner, fullres: _Configuration, median_t: np.ndarray, n_cases: int, notes: list[str]
) -> _Configuration | None:
    """nnU-Net's search for ``3d_lowres``: coarsen the spacing by 3% steps until the patch covers 1/4 of the image."""
    full_spacing = np.asarray(fullres.spacing, dtype=np.float64)
    median_voxels = float(np.prod(median_t, dtype=np.float64))
    patch_voxels = float(np.prod(fullres.patch_size, dtype=np.float64))
    if patch_voxels / median_voxels >= LOWRES_CREATION_THRESHOLD:
        notes.append("3d_lowres not needed: the 3d_fullres patch covers at least a quarter of the median image")
        return None
    spacing = full_spacing.copy()
    lowres: _Configuration | None = None
    while patch_voxels / median_voxels < LOWRES_CREATION_THRESHOLD:
        coarse = spacing.max() / spacing > 2
        # grow the fine axes first until they are within 2x of the coarsest, then all axes together
        if np.any(coarse):
            spacing[coarse] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        shape = full_spacing / spacing * median_t
        median_voxels = float(np.prod(shape, dtype=np.float64))
        lowres = planner.configure(spacing.copy(), [round(float(s)) for s in shape], median_voxels * n_cases)
        patch_voxels = float(np.prod(lowres.patch_size, dtype=np.float64))
    if float(np.prod(median_t, dtype=np.float64)) / median_voxels < LOWRES_MIN_SIZE_RATIO:
        notes.append("3d_lowres dropped: its images would not be at least 2x smaller than at full resolution")
        return None
    return lowres
