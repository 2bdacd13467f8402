"""Inference: ``medseg predict`` — nnU-Net-style sliding window, torch export to the native grid, batch runs.

- :mod:`~medseg.inference.sliding_window`: gaussian sliding window, mirroring TTA, memory-bounded stitching.
- :mod:`~medseg.inference.resample`: torch resampling of logits back to the native grid (separate-z rule).
- :mod:`~medseg.inference.predictor`: load trained folds, predict a case on its exact input grid.
- :mod:`~medseg.inference.uncertainty`: samples of stochastic networks (``--samples``) to mean probability, entropy,
  mutual information and per-sample label maps.
- :mod:`~medseg.inference.writers`: NIfTI/NRRD labels, ``.npz`` probabilities, DICOM Segmentation.
- :mod:`~medseg.inference.ledger`, :mod:`~medseg.inference.batch`: resumable batch runs over many scans.

Inference never imports :mod:`medseg.training`.
"""

from medseg.inference.batch import BatchSummary, CaseInput, discover_cases, run_batch
from medseg.inference.ledger import Ledger
from medseg.inference.predictor import FoldModel, Prediction, Predictor, load_folds
from medseg.inference.resample import export_segmentation, resample_to_shape
from medseg.inference.sliding_window import (
    SlidingWindowPredictor,
    compute_gaussian,
    compute_steps_for_sliding_window,
)

__all__ = [
    "BatchSummary",
    "CaseInput",
    "FoldModel",
    "Ledger",
    "Prediction",
    "Predictor",
    "SlidingWindowPredictor",
    "compute_gaussian",
    "compute_steps_for_sliding_window",
    "discover_cases",
    "export_segmentation",
    "load_folds",
    "resample_to_shape",
    "run_batch",
]
