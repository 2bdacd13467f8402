"""Load trained folds and predict a case on its native grid.

A run folder of ``medseg train`` (``medseg/training/TRAINING.md``) holds ``fold_K/{config.yaml, plans.json,
checkpoint_final.pt, …}``. :func:`load_folds` rebuilds each fold's network exactly as the trainer did (the plans'
model and keyword arguments, ``config.yaml``'s ``model`` and ``model_kwargs`` overrides, deep-supervision heads as
trained) without importing the trainer, and loads the checkpoint with ``weights_only=True``.

:class:`Predictor` then runs nnU-Net v2's inference (``nnUNetPredictor``): preprocessing as in training
(:func:`medseg.preprocessing.preprocess_case` with the run's plans), gaussian sliding window with mirroring TTA over
the axes training mirrored (:mod:`medseg.inference.sliding_window`; a fold ensemble averages softmax
probabilities), torch resampling back to the native grid and argmax (:mod:`medseg.inference.resample`), optional
largest-connected-component filtering per class, and returns a label ``MetaTensor`` with the input's exact
affine and shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import InferenceError
from medseg.inference.resample import export_segmentation
from medseg.inference.sliding_window import Precision, SlidingWindowPredictor, SlidingWindowStats, resolve_device

CHECKPOINTS = {"final": "checkpoint_final.pt", "best": "checkpoint_best.pt", "latest": "checkpoint_latest.pt"}


@dataclass
class FoldModel:
    """One trained fold ready for inference.

    Attributes:
        run_dir: The fold folder.
        fold: Fold number (from the checkpoint).
        configuration: Plans configuration name.
        plans: The run's plans.
        patch_size: Training patch (``config.yaml`` override or the plans').
        mirror_axes: Axes training mirrored over (all spatial axes when mirroring augmentation was on, else none).
        model: The network with the checkpoint's weights, in eval mode on the CPU.
        checkpoint: The checkpoint file.
    """

    run_dir: Path
    fold: int
    configuration: str
    plans: dict[str, Any]
    patch_size: list[int]
    mirror_axes: list[int]
    model: nn.Module
    checkpoint: Path


def _fold_dirs(run_dir: Path, folds: Sequence[int] | None) -> list[Path]:
    if not run_dir.is_dir():
        raise InferenceError("no such run folder", run_dir)
    if (run_dir / "plans.json").is_file() and (run_dir / "config.yaml").is_file():
        return [run_dir]
    found = sorted((p for p in run_dir.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    if folds is not None:
        wanted = {int(f) for f in folds}
        missing = wanted - {int(p.name[5:]) for p in found}
        if missing:
            raise InferenceError(f"no fold folder for fold(s) {sorted(missing)}", run_dir)
        found = [p for p in found if int(p.name[5:]) in wanted]
    if not found:
        raise InferenceError("not a run folder of `medseg train` (no fold_K/ with plans.json and config.yaml)", run_dir)
    return found


def load_fold(fold_dir: Path, checkpoint: str = "final") -> FoldModel:
    """Rebuild and load one fold from its folder (``config.yaml``, ``plans.json``, the checkpoint)."""
    from medseg.config import read_yaml
    from medseg.errors import MedsegError
    from medseg.preprocessing import configuration_of
    from medseg.utils.files import read_json

    if checkpoint not in CHECKPOINTS:
        raise InferenceError(f"unknown checkpoint {checkpoint!r} (use {', '.join(CHECKPOINTS)})")
    path = fold_dir / CHECKPOINTS[checkpoint]
    if not path.is_file():
        raise InferenceError(f"no {path.name} (is training finished?)", fold_dir)
    try:
        plans = read_json(fold_dir / "plans.json", "run's plans", InferenceError)
        config = read_yaml(fold_dir / "config.yaml")
    except MedsegError as exc:
        raise InferenceError(exc.problem, exc.path or fold_dir) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InferenceError(f"cannot read the checkpoint: {' '.join(str(exc).split())[:200]}", path) from exc
    configuration = str(state.get("configuration", config.get("configuration", "3d_fullres")))
    cfg = configuration_of(plans, configuration)
    from medseg.models import create_model_from_plans

    model = create_model_from_plans(cfg.model.as_dict(), config.get("model") or state.get("model_name") or None,
                                    config.get("model_kwargs") or {}, bool(config.get("deep_supervision", True)))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise InferenceError(f"the checkpoint does not fit the network the plans describe: {exc}", path) from exc
    model.eval()
    patch = [int(p) for p in (config.get("patch_size") or cfg.patch_size)]
    augmentation = config.get("augmentation") or {}
    mirrored = bool(augmentation.get("enabled", True)) and bool(augmentation.get("mirror", True))
    mirror_axes = list(range(len(patch))) if mirrored else []
    from medseg.models.adapters import volume_windows
    from medseg.models.instance.base import InstanceSegmentationModel

    if not isinstance(model, InstanceSegmentationModel):  # instance models keep their own windows
        model, patch, mirror_axes = volume_windows(model, patch, mirror_axes)  # 2d: slice by slice
    model.eval()
    return FoldModel(run_dir=fold_dir, fold=int(state.get("fold", -1)), configuration=configuration, plans=plans,
                     patch_size=patch, mirror_axes=mirror_axes, model=model, checkpoint=path)


def load_folds(run_dirs: Sequence[str | Path], folds: Sequence[int] | None = None,
               checkpoint: str = "final") -> list[FoldModel]:
    """Load every selected fold of every run folder; they must share the preprocessing and the patch.

    Raises:
        InferenceError: Missing folders or checkpoints, or folds whose plans or patches differ.
    """
    loaded = [load_fold(d, checkpoint) for run in run_dirs for d in _fold_dirs(Path(run), folds)]
    first = loaded[0]
    for other in loaded[1:]:
        a = _preprocessing_key(first)
        if _preprocessing_key(other) != a:
            raise InferenceError(f"{other.run_dir} was trained with other plans, configuration or patch than "
                                 f"{first.run_dir}; an ensemble needs the same preprocessing", other.run_dir)
    return loaded


def _preprocessing_key(fold: FoldModel) -> str:
    from medseg.preprocessing import configuration_of
    from medseg.preprocessing.plans_view import plain

    cfg = configuration_of(fold.plans, fold.configuration)
    preprocessing = {"spacing": cfg.spacing, "transpose_forward": cfg.transpose_forward,
                     "transpose_backward": cfg.transpose_backward, "normalization": cfg.normalization,
                     "resampling": cfg.resampling}
    return json.dumps({"cfg": plain(preprocessing), "patch": fold.patch_size, "classes": cfg.num_classes},
                      sort_keys=True)


def largest_component_per_class(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Keep the largest 26-connected (3D) component of each foreground class; other voxels become 0."""
    from scipy.ndimage import label as connected

    out = labels.copy()
    values = [int(v) for v in np.unique(labels) if v != 0] if classes is None else [int(c) for c in classes]
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for value in values:
        mask = labels == value
        components, n = connected(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(sizes.argmax()))] = 0
    return out


@dataclass
class PreparedCase:
    """A loaded and preprocessed case, ready for the device.

    Attributes:
        case_id: Case identifier.
        image: The input image (its meta/affine define the output grid).
        data: Preprocessed ``(C, *spatial)`` float32 data.
        properties: ``properties`` of :func:`medseg.preprocessing.preprocess_case`.
        seconds: Load and preprocessing time.
    """

    case_id: str
    image: Any
    data: np.ndarray
    properties: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_case(plans: dict[str, Any], configuration: str, case_id: str, image: Any) -> PreparedCase:
    """Check and preprocess a loaded image ``(C, X, Y, Z)`` as the plans' configuration says."""
    from medseg.io import check_finite, require_3d
    from medseg.preprocessing import configuration_of, preprocess_case

    where = (getattr(image, "meta", {}) or {}).get("filename_or_obj")
    require_3d(image, where, channels=configuration_of(plans, configuration).num_channels)
    check_finite(image, where)
    start = time.perf_counter()
    data, _, properties = preprocess_case(image, plans, configuration)
    return PreparedCase(case_id, image, data, properties, {"preprocess": time.perf_counter() - start})


def output_meta(image: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The affine and the meta entries a prediction keeps from its input image."""
    meta = dict(getattr(image, "meta", {}) or {})
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
    keep = {k: meta[k] for k in ("filename_or_obj", "format", "series_instance_uid", "study_instance_uid",
                                 "sop_instance_uids", "source_files", "frame_of_reference_uid", "patient_id",
                                 "modality", "series_description") if k in meta}
    return affine, keep


@dataclass
class Prediction:
    """A label map on the input's grid, optional probabilities, and what the run took.

    Attributes:
        labels: ``(1, *native)`` uint8/int16 ``MetaTensor`` with the input's affine and meta.
        probabilities: ``(K, *native)`` float16 probabilities, or ``None``.
        seconds: Per stage: ``load``, ``preprocess``, ``predict``, ``export``, ``postprocess``.
        window_stats: What the sliding window did.
        instances: Instance predictions: one entry per object (id, class, score, voxels, volume, centroid), written
            as ``CASE_instances.json``; ``None`` for label maps of classes.
    """

    labels: Any
    probabilities: np.ndarray | None
    seconds: dict[str, float]
    window_stats: SlidingWindowStats
    instances: list[dict[str, Any]] | None = None


class Predictor:
    """Inference with one or more trained folds (see the module docstring).

    Args:
        folds: Loaded folds (:func:`load_folds`); several are averaged.
        tta: Mirroring test-time augmentation over the trained axes.
        step: Sliding-window step as a fraction of the patch.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: Autocast precision (see :class:`~medseg.inference.sliding_window.SlidingWindowPredictor`).
        stitch_device: ``auto``, ``cpu`` or ``cuda``.
        stitch_dtype: ``auto``, ``fp16`` or ``fp32``.
        lcc: Keep only the largest connected component of each class.
        batch_size: Windows per batch (default: automatic).
    """

    def __init__(self, folds: Sequence[FoldModel], *, tta: bool = True, step: float = 0.5,
                 device: str = "auto", precision: Precision = "auto", stitch_device: str = "auto",
                 stitch_dtype: str = "auto", lcc: bool = False, batch_size: int | None = None) -> None:
        from medseg.preprocessing import configuration_of

        if not folds:
            raise InferenceError("no folds to predict with")
        self.folds = list(folds)
        first = self.folds[0]
        self.plans = first.plans
        self.configuration = first.configuration
        self.cfg = configuration_of(self.plans, self.configuration)
        self.device = resolve_device(device)
        self.lcc = lcc
        self.tta = tta
        self.window = SlidingWindowPredictor(
            [f.model for f in self.folds], first.patch_size, step=step,
            mirror_axes=first.mirror_axes if tta else (), device=self.device, precision=precision,
            stitch_device=stitch_device, stitch_dtype=stitch_dtype,  # type: ignore[arg-type]
            batch_size=batch_size)

    @property
    def num_classes(self) -> int:
        """Output classes (including background)."""
        return self.cfg.num_classes

    @property
    def label_names(self) -> dict[int, str]:
        """Label value → name from the plans."""
        return self.cfg.label_names

    def prepare(self, case_id: str, image: Any) -> PreparedCase:
        """Check and preprocess a loaded image ``(C, X, Y, Z)`` as the run's plans say."""
        return prepare_case(self.plans, self.configuration, case_id, image)

    def predict_prepared(self, case: PreparedCase, *, probabilities: bool = False) -> Prediction:
        """Predict a prepared case and map it back to the input grid."""
        from medseg.io import make_image

        seconds = dict(case.seconds)
        start = time.perf_counter()
        values = self.window.predict(case.data)
        if values.device.type == "cuda":
            torch.cuda.synchronize(values.device)
        seconds["predict"] = time.perf_counter() - start
        start = time.perf_counter()
        resample_device = self.device if self.device.type == "cuda" else values.device
        exported = export_segmentation(values, case.properties, self.cfg.resampling,
                                       kind=self.window.output_kind, device=resample_device,
                                       probabilities=probabilities)
        del values
        seconds["export"] = time.perf_counter() - start
        labels = exported.labels
        if self.lcc:
            start = time.perf_counter()
            labels = largest_component_per_class(labels)
            seconds["postprocess"] = time.perf_counter() - start
        affine, keep = output_meta(case.image)
        image = make_image(labels[None], affine, keep)
        return Prediction(labels=image, probabilities=exported.probabilities, seconds=seconds,
                          window_stats=self.window.stats)

    def predict(self, image: Any, case_id: str = "case", *, probabilities: bool = False) -> Prediction:
        """Preprocess, predict and export one loaded image."""
        return self.predict_prepared(self.prepare(case_id, image), probabilities=probabilities)
