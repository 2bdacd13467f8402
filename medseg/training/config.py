"""Training settings: :class:`TrainConfig`, from YAML (the presets in ``medseg/presets/``) with ``--set`` overrides.

Defaults are nnU-Net v2's ``nnUNetTrainer`` (Isensee et al., Nature Methods 2021): 1000 epochs × 250 iterations,
50 validation iterations, SGD (Nesterov, momentum 0.99, lr 1e-2, weight decay 3e-5) with poly decay (exponent
0.9), gradient clipping at 12, Dice + cross-entropy with deep supervision, ⅓ foreground oversampling and the
augmentation pipeline of :class:`AugmentationConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medseg.training.method_config import AdversarialConfig, CRFLayerConfig, DomainAdaptationConfig

#: Settings that change how a run executes but not its results; they may differ when resuming.
RUNTIME_KEYS = ("device", "num_workers", "progress", "cache_dir", "preprocess_workers")


@dataclass
class AugmentationConfig:
    """nnU-Net v2's training augmentation (``nnUNetTrainer.get_training_transforms``), probabilities and ranges.

    Attributes:
        enabled: Apply the augmentation (validation batches never are).
        p_rotation: Probability of a rotation (angles uniform in ±``rotation_degrees`` about each axis in 3D).
        rotation_degrees: Rotation range; 180 for 2D and for "dummy 2D" (anisotropic patches).
        p_scaling: Probability of an isotropic scaling.
        scaling: Scale factor range.
        p_noise: Probability of additive gaussian noise; its standard deviation is drawn uniformly from
            ``noise_variance``.
        noise_variance: nnU-Net's name and range (0, 0.1); as in nnU-Net the drawn value is the standard deviation.
        p_blur: Probability of gaussian blurring; then per channel with ``p_blur_per_channel``.
        blur_sigma: Blur sigma range (drawn per axis).
        p_blur_per_channel: Per-channel probability once blurring is chosen.
        p_brightness: Probability of a multiplicative brightness change.
        brightness: Multiplier range.
        p_contrast: Probability of a contrast change (range preserved).
        contrast: Contrast factor range.
        p_lowres: Probability of simulating low resolution (down with nearest, up with linear).
        lowres_scale: Downsampling factor range.
        p_lowres_per_channel: Per-channel probability once chosen.
        p_gamma_inverted: Probability of a gamma change on the inverted image (statistics retained).
        p_gamma: Probability of a gamma change (statistics retained).
        gamma: Gamma range.
        mirror: Mirror along every spatial axis, each with probability ``p_mirror``.
        p_mirror: Per-axis mirroring probability.
    """

    enabled: bool = True
    p_rotation: float = 0.2
    rotation_degrees: float = 30.0
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_blur_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_scale: tuple[float, float] = (0.5, 1.0)
    p_lowres_per_channel: float = 0.5
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    mirror: bool = True
    p_mirror: float = 0.5


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.yaml`` in the run folder).

    Attributes:
        epochs: Epochs (nnU-Net: 1000).
        iterations_per_epoch: Training batches per epoch (250).
        val_iterations: Validation batches per epoch (50).
        optimizer: ``sgd`` (Nesterov) or ``adamw``.
        lr: Initial learning rate (1e-2; use about 1e-3 with AdamW).
        weight_decay: Weight decay (3e-5).
        momentum: SGD momentum (0.99).
        poly_exponent: Poly decay exponent: ``lr · (1 - epoch / epochs) ** exponent`` (0.9).
        grad_clip: Gradient-norm clipping (12; 0 disables).
        loss: ``dice_ce`` (nnU-Net), ``dice_focal``, ``generalised_dice``, ``focal_tversky``, ``dice_bce``
            (region-based; the loss whenever ``regions`` is set), or Zhu et al.'s boundary ``label_relaxation`` or
            its ``soft_label`` variant.
        relaxation_window: Neighbourhood (voxels per axis, odd) of ``label_relaxation`` and ``soft_label``.
        regions: Region-based training (nnU-Net's regions, e.g. BraTS ``[[1, 2, 3], [2, 3], [3]]``): one sigmoid
            output per region (a set of label values), Dice + BCE; ``None``: one softmax output per label.
        previous_stage_run: For a cascade stage (``3d_cascade_fullres``): the run folder of its previous stage
            (``3d_lowres``), whose folds' final validation wrote the predictions this stage trains on, and which
            ``medseg predict`` runs first.
        regions_class_order: With ``regions``: the label value each region writes when predicted, in order (later
            regions overwrite earlier ones), e.g. ``[1, 2, 3]``.
        deep_supervision: Weighted loss on every decoder resolution (when the model supports it).
        batch_dice: Dice over the whole batch; ``None`` takes the plans' ``batch_dice``.
        oversample_foreground: Fraction of each batch forced to contain foreground (last samples; 0.33).
        patch_size: Training patch; ``None`` takes the plans' patch.
        batch_size: Global batch (split over DDP ranks); ``None`` takes the plans' batch.
        model: Registry model; ``None`` takes the plans' model.
        model_kwargs: Overrides of the plans' model keyword arguments (e.g. ``features_per_stage``).
        augmentation: Augmentation settings.
        coordinates: ``none``, ``voxel`` or ``world``: normalised coordinates appended as three input channels
            (:mod:`medseg.preprocessing.coordinates`), also at prediction.
        coordinate_scale: Millimetres per unit of ``world`` coordinates.
        crf_layer: A trainable ConvCRF after the model (:class:`~medseg.training.method_config.CRFLayerConfig`).
        adversarial: Adversarial training (:class:`~medseg.training.method_config.AdversarialConfig`).
        domain_adaptation: Output-space adaptation to an unlabelled target
            (:class:`~medseg.training.method_config.DomainAdaptationConfig`).
        num_workers: Data-loading worker processes for training (validation uses half, at least 1 when > 0).
        seed: Seed of the weights, the splits, the patch sampling and the augmentation.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: Mixed precision on CUDA (bf16 when supported, else fp16 with a grad scaler).
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` on CUDA.
        ema_momentum: EMA of the pseudo-Dice: ``ema = m · ema + (1 - m) · dice`` (0.9).
        num_folds: Folds of the cross-validation when the manifest has no splits (5).
        final_validation: Predict the validation cases with a sliding window at the end.
        val_mirroring: Mirroring test-time augmentation in the final validation.
        sw_overlap: Sliding-window overlap (0.5).
        sw_batch_size: Windows per forward pass in the final validation.
        save_every: Write ``checkpoint_latest.pt`` every N epochs (1: resume loses at most one epoch).
        progress: ``auto`` (rich on a terminal, else one line per epoch), ``rich`` or ``plain``.
        cache_dir: Preprocessed-data cache; ``None``: ``preprocessed/`` next to the plans.
        preprocess_workers: Processes that build the cache.
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    loss: Literal["dice_ce", "dice_focal", "generalised_dice", "focal_tversky", "dice_bce", "label_relaxation",
                  "soft_label"] = "dice_ce"
    relaxation_window: int = 3
    regions: list[list[int]] | None = None
    regions_class_order: list[int] | None = None
    previous_stage_run: str | None = None
    deep_supervision: bool = True
    batch_dice: bool | None = None
    oversample_foreground: float = 0.33
    patch_size: list[int] | None = None
    batch_size: int | None = None
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    coordinates: Literal["none", "voxel", "world"] = "none"
    coordinate_scale: float = 100.0
    crf_layer: CRFLayerConfig = field(default_factory=CRFLayerConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    domain_adaptation: DomainAdaptationConfig = field(default_factory=DomainAdaptationConfig)
    num_workers: int = 8
    seed: int = 12345
    device: str = "auto"
    amp: bool = True
    cudnn_benchmark: bool = True
    ema_momentum: float = 0.9
    num_folds: int = 5
    final_validation: bool = True
    val_mirroring: bool = True
    sw_overlap: float = 0.5
    sw_batch_size: int = 2
    save_every: int = 1
    progress: Literal["auto", "rich", "plain"] = "auto"
    cache_dir: str | None = None
    preprocess_workers: int = 4

    def __post_init__(self) -> None:
        from medseg.errors import MedsegError
        from medseg.utils.devices import parse_device

        try:
            self.device = parse_device(self.device, "device")
        except MedsegError as exc:
            raise ValueError(exc.problem) from None
        if self.regions is not None or self.regions_class_order is not None:
            regions, order = self.regions or [], self.regions_class_order or []
            if not regions or len(order) != len(regions):
                raise ValueError(f"regions and regions_class_order need one entry per region, got {len(regions)} "
                                 f"regions and {len(order)} classes")
            if any(not r or any(int(v) <= 0 for v in r) for r in regions) or any(int(c) <= 0 for c in order):
                raise ValueError("each region is a non-empty list of foreground label values (> 0), and each "
                                 "region writes a foreground class")
        if self.relaxation_window < 1 or self.relaxation_window % 2 == 0:
            raise ValueError(f"relaxation_window must be a positive odd number, got {self.relaxation_window}")
        if not self.coordinate_scale > 0:
            raise ValueError(f"coordinate_scale must be positive, got {self.coordinate_scale}")
        if self.coordinates != "none" and self.previous_stage_run:
            raise ValueError("coordinate channels and a cascade's previous-stage input cannot be combined")
