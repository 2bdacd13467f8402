"""The trainer's adversarial methods, built from its settings.

Luc et al.'s adversarial training and output-space domain adaptation (:mod:`medseg.training.adversarial`,
:mod:`medseg.training.domain_adaptation`).

:func:`build_hooks` returns the :class:`~medseg.training.adversarial.AdversarialHook` objects a
:class:`~medseg.training.trainer.FoldTrainer` calls around each optimiser step (none when both methods are off).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import TrainingError
from medseg.training.adversarial import AdversarialHook, AdversarialTraining

if TYPE_CHECKING:
    from medseg.training.trainer import FoldTrainer


def build_hooks(trainer: FoldTrainer) -> list[AdversarialHook]:
    """The adversarial methods ``trainer.config`` enables, ready to train."""
    config = trainer.config
    hooks: list[AdversarialHook] = []
    dims = len(trainer.patch)
    image_channels = trainer.cfg.model.in_channels
    if config.adversarial.enabled:
        a = config.adversarial
        hooks.append(AdversarialTraining(dims, image_channels, trainer.num_classes, trainer.patch, trainer.device,
                                         weight=a.weight, mode=a.input, real_labels=a.real_labels, tau=a.tau,
                                         features=a.features, lr=a.lr, distributed=trainer.info.distributed))
    if config.domain_adaptation.target_manifest:
        hooks.append(_domain_adaptation(trainer))
    return hooks


def target_cache(trainer: FoldTrainer) -> tuple[Path, list[str]]:
    """Preprocess the target manifest's images with the run's plans (rank 0; others wait): folder and case ids."""
    from medseg.data import load_manifest
    from medseg.preprocessing import preprocess_dataset
    from medseg.training.distributed import barrier

    path = Path(str(trainer.config.domain_adaptation.target_manifest))
    if not path.is_file():
        raise TrainingError("no such target manifest file", path)
    manifest = load_manifest(path)
    if not manifest.cases:
        raise TrainingError("the target manifest has no cases", path)
    if manifest.num_channels != trainer.cfg.num_channels:
        raise TrainingError(f"the target images have {manifest.num_channels} channel(s), the plans "
                            f"{trainer.cfg.num_channels}", path)
    root = trainer.cache_folder.parent / "target"
    if trainer.info.is_main:
        preprocess_dataset(manifest, trainer.plans, trainer.configuration, root,
                           trainer.config.preprocess_workers, labels=False)
    barrier(trainer.info)
    return root / trainer.cfg.data_identifier, [c.id for c in manifest.cases]


def _domain_adaptation(trainer: FoldTrainer) -> AdversarialHook:
    from medseg.preprocessing.coordinates import coordinate_channel_count
    from medseg.training.data import BatchDataset
    from medseg.training.domain_adaptation import TARGET_STREAM, DomainAdaptation, output_shapes
    from medseg.training.trainer import build_model

    config = trainer.config
    d = config.domain_adaptation
    folder, ids = target_cache(trainer)
    dataset = BatchDataset(folder, ids, trainer.patch, trainer.global_batch, trainer.sample_offset,
                           trainer.local_batch, config.iterations_per_epoch, config.seed, TARGET_STREAM,
                           config.augmentation, oversample_foreground=0.0, coordinates=config.coordinates,
                           coordinate_scale=config.coordinate_scale)

    def batches(epoch: int, iteration: int) -> dict[str, Any]:
        return dataset[epoch * config.iterations_per_epoch + iteration]

    channels = trainer.cfg.model.in_channels + coordinate_channel_count(config.coordinates)
    shapes = output_shapes(lambda: build_model(trainer.cfg, config), channels, trainer.patch)
    try:
        return DomainAdaptation(trainer.model, batches, len(trainer.patch), trainer.num_classes, shapes,
                                trainer.device, method=d.method, levels=d.levels, scales=d.scales,
                                weights=d.weights, features=d.features, lr=d.lr,
                                distributed=trainer.info.distributed)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
