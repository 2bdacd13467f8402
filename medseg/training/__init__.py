"""Training with nnU-Net v2's recipe (Isensee et al., Nature Methods 2021): ``medseg train``.

See ``medseg/training/TRAINING.md`` for the run-folder layout, resuming, folds and DDP.
"""

from medseg.training.config import AugmentationConfig, TrainConfig
from medseg.training.splits import kfold_splits, resolve_splits
from medseg.training.trainer import FoldSpec, FoldTrainer, build_model, train

__all__ = [
    "AugmentationConfig",
    "FoldSpec",
    "FoldTrainer",
    "TrainConfig",
    "build_model",
    "kfold_splits",
    "resolve_splits",
    "train",
]
