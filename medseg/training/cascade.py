"""The cascade's second stage: the low-resolution prediction as extra input channels (nnU-Net's rule).

nnU-Net v2's ``3d_cascade_fullres`` (Isensee et al., Nature Methods 2021) trains a full-resolution network whose input
is the image plus the one-hot encoding (foreground labels only) of the ``3d_lowres`` prediction upsampled to the
full-resolution grid. For training, every case's low-resolution prediction comes from the cross-validation of the
``3d_lowres`` folds (the fold that did not train on it), written by their final validation as
``predicted_next_stage/<case>.npz`` on the next stage's preprocessed grid (:func:`write_next_stage`). During
training the previous stage's mask is cropped and spatially augmented with the labels, then, as nnU-Net's
``MoveSegAsOneHotToData``, ``ApplyRandomBinaryOperatorTransform`` and
``RemoveRandomConnectedComponentFromOneHotEncodingTransform`` do:

- one-hot channels of the foreground labels are appended to the image;
- with probability 0.4 per sample, every label channel (in random order) goes through one of binary dilation,
  erosion, closing or opening with a ball of radius 1–8 voxels (voxels it adds are removed from the other channels,
  keeping the encoding one-hot);
- with probability 0.2 per sample, per label channel one random connected component covering at most 15 % of the
  patch is removed.

At inference (:class:`medseg.inference.predictor.Predictor` with ``previous``), the low-resolution run predicts the
case on its native grid, and that label map is preprocessed with the image (resampled with the plans' label rule)
and appended one-hot, as ``nnUNetPredictor`` does with ``folder_with_segs_from_prev_stage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import TrainingError

#: nnU-Net's probabilities and sizes of the previous-stage augmentation.
P_BINARY_OPERATOR = 0.4
STREL_SIZE = (1, 8)
P_REMOVE_COMPONENT = 0.2
MAX_COMPONENT_FRACTION = 0.15
NEXT_STAGE_FOLDER = "predicted_next_stage"


def one_hot_foreground(seg: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """``(1, *spatial)`` labels to ``(num_classes - 1, *spatial)`` float one-hot of labels 1…K-1 (-1 counts as 0)."""
    seg_t = torch.as_tensor(np.asarray(seg) if not isinstance(seg, torch.Tensor) else seg)
    return torch.stack([(seg_t[0] == c) for c in range(1, num_classes)]).float()


def _ball(radius: int, dims: int) -> np.ndarray:
    grid = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(dims))]
    return sum(g.astype(np.float64) ** 2 for g in grid) <= radius**2


def augment_previous(onehot: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """nnU-Net's previous-stage augmentation of one sample's one-hot channels ``(K-1, *spatial)`` (see module)."""
    from scipy import ndimage

    out = onehot.numpy().astype(bool)
    dims = out.ndim - 1
    if rng.random() < P_BINARY_OPERATOR:
        operators = (ndimage.binary_dilation, ndimage.binary_erosion, ndimage.binary_closing, ndimage.binary_opening)
        for c in rng.permutation(out.shape[0]):
            operator = operators[int(rng.integers(len(operators)))]
            structure = _ball(int(rng.integers(STREL_SIZE[0], STREL_SIZE[1] + 1)), dims)
            result = operator(out[c], structure=structure)
            added = result & ~out[c]
            out[c] = result
            for other in range(out.shape[0]):
                if other != c:
                    out[other][added] = False
    if rng.random() < P_REMOVE_COMPONENT:
        limit = MAX_COMPONENT_FRACTION * out[0].size
        for c in range(out.shape[0]):
            components, n = ndimage.label(out[c], structure=np.ones((3,) * dims, dtype=bool))
            if n == 0:
                continue
            sizes = np.bincount(components.ravel())[1:]
            small = [i + 1 for i, s in enumerate(sizes) if s <= limit]
            if small:
                out[c][components == small[int(rng.integers(len(small)))]] = False
    return torch.from_numpy(out.astype(np.float32))


def next_stage_shape(properties: Mapping[str, Any], next_cfg: Any) -> tuple[list[float], list[int]]:
    """Spacing and shape of the next stage's preprocessed grid of a case (from its cached properties)."""
    from medseg.preprocessing import compute_new_shape, target_spacing

    spacing_t = [float(s) for s in properties["spacing_after_transpose"]]
    spacing = target_spacing(next_cfg, spacing_t)
    shape = compute_new_shape(properties["shape_after_cropping_and_before_resampling"], spacing_t, spacing)
    return spacing, shape


def write_next_stage(run_dir: Path, case_id: str, labels: np.ndarray, properties: Mapping[str, Any],
                     next_cfg: Any) -> Path:
    """Save a low-resolution validation prediction on the next stage's preprocessed grid (nnU-Net's rule)."""
    import io

    from medseg.preprocessing import resample_labels
    from medseg.utils.files import atomic_write

    spacing, shape = next_stage_shape(properties, next_cfg)
    seg = resample_labels(labels[None].astype(np.int16), properties["target_spacing"], spacing, next_cfg.resampling,
                          shape)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, seg=seg.astype(np.int16))
    payload = buffer.getvalue()
    return atomic_write(run_dir / NEXT_STAGE_FOLDER / f"{case_id}.npz", lambda h: h.write(payload))


def previous_predictions(previous_run: str | Path | None, case_ids: list[str], configuration: str,
                         previous_stage: str) -> dict[str, str]:
    """Case → file of its previous-stage cross-validation prediction, for every case a cascade fold uses.

    Raises:
        TrainingError: No previous run given, or cases without a prediction (their ``3d_lowres`` folds are not
            trained yet), named.
    """
    if not previous_run:
        raise TrainingError(f"{configuration} trains on the {previous_stage} predictions: pass the {previous_stage} "
                            "run folder with --set previous_stage_run=PATH")
    root = Path(previous_run)
    found = {p.stem: str(p) for p in sorted(root.glob(f"fold_*/{NEXT_STAGE_FOLDER}/*.npz"))}
    missing = [c for c in case_ids if c not in found]
    if missing:
        raise TrainingError(f"no {previous_stage} cross-validation prediction for {len(missing)} case(s) "
                            f"({', '.join(missing[:5])}): train (with final validation) the {previous_stage} folds "
                            "that validate them", root)
    return {c: found[c] for c in case_ids}
