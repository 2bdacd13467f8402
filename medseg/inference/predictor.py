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
affine and shape. A run trained with coordinate channels gets them appended after preprocessing
(:mod:`medseg.preprocessing.coordinates`), and ``crf`` refines the stitched prediction with a fully connected CRF or
a ConvCRF before the resampling (:mod:`medseg.inference.crf`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import InferenceError
from medseg.inference.crf import CRFConfig
from medseg.inference.resample import export_segmentation
from medseg.inference.sliding_window import Precision, SlidingWindowPredictor, SlidingWindowStats, resolve_device
from medseg.inference.uncertainty import SampleAccumulator, SampleSummary

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
        ensemble: How several folds combine: ``probabilities`` (medseg: mean softmax) or ``logits`` (nnU-Net's
            ``nnUNetPredictor``: mean logits).
        regions_class_order: For region-based models (one sigmoid output per region, nnU-Net's
            ``regions_class_order``): the class each region writes, in order; ``None`` for softmax models.
        previous_stage_run: For a cascade stage: the previous stage's run (predicted first; its label map becomes
            extra input channels).
        coordinates: Coordinate channels the run was trained with (``none``, ``voxel`` or ``world``).
        coordinate_scale: Millimetres per unit of ``world`` coordinates.
    """

    run_dir: Path
    fold: int | str
    configuration: str
    plans: dict[str, Any]
    patch_size: list[int]
    mirror_axes: list[int]
    model: nn.Module
    checkpoint: Path
    ensemble: str = "probabilities"
    regions_class_order: list[int] | None = None
    previous_stage_run: Path | None = None
    coordinates: str = "none"
    coordinate_scale: float = 100.0


def _fold_dirs(run_dir: Path, folds: Sequence[int | str] | None) -> list[Path]:
    """The fold folders: the numbered ones (default; ``fold_all`` when there are none), or those of ``folds``."""
    if not run_dir.is_dir():
        raise InferenceError("no such run folder", run_dir)
    if (run_dir / "plans.json").is_file() and (run_dir / "config.yaml").is_file():
        return [run_dir]
    present = {p.name[5:]: p for p in run_dir.glob("fold_*") if p.is_dir()}
    numbered = sorted((k for k in present if k.isdigit()), key=int)
    if folds is None:
        keys = numbered or [k for k in ("all",) if k in present]
    else:
        keys = [str(f) for f in folds]
        missing = [k for k in keys if k not in present]
        if missing:
            raise InferenceError(f"no fold folder for fold(s) [{', '.join(missing)}]", run_dir)
    found = [present[k] for k in keys]
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
    from medseg.models.convcrf import create_run_model
    from medseg.preprocessing.coordinates import coordinate_channel_count

    entry = cfg.model.as_dict()
    regions = config.get("regions")
    if regions:  # region-based training: one sigmoid output per region
        entry["out_channels"] = len(regions)
    coordinates = str(config.get("coordinates") or "none")
    try:
        extra = coordinate_channel_count(coordinates)
    except ValueError as exc:
        raise InferenceError(str(exc), fold_dir / "config.yaml") from None
    model = create_run_model(entry, config.get("model") or state.get("model_name") or None,
                             config.get("model_kwargs") or {}, bool(config.get("deep_supervision", True)),
                             extra_in_channels=extra, crf_layer=config.get("crf_layer"))
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
    fold = state.get("fold", -1)
    return FoldModel(run_dir=fold_dir, fold=fold if fold == "all" else int(fold), configuration=configuration,
                     plans=plans,
                     patch_size=patch, mirror_axes=mirror_axes, model=model, checkpoint=path,
                     ensemble="logits" if regions else "probabilities",
                     regions_class_order=[int(c) for c in config.get("regions_class_order") or []] or None,
                     previous_stage_run=Path(config["previous_stage_run"]) if cfg.previous_stage and
                     config.get("previous_stage_run") else None,
                     coordinates=coordinates, coordinate_scale=float(config.get("coordinate_scale") or 100.0))


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
    coordinates = [fold.coordinates, fold.coordinate_scale] if fold.coordinates != "none" else "none"
    return json.dumps({"cfg": plain(preprocessing), "patch": fold.patch_size, "classes": cfg.num_classes,
                       "regions": fold.regions_class_order, "coordinates": coordinates}, sort_keys=True)


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


def _largest_mask(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label as connected

    components, n = connected(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def keep_largest_foreground(labels: np.ndarray) -> np.ndarray:
    """All foreground classes as one mask: voxels outside its largest 26-connected component become 0."""
    out = labels.copy()
    mask = labels > 0
    out[mask & ~_largest_mask(mask)] = 0
    return out


def apply_postprocessing(labels: np.ndarray, postprocessing: Mapping[str, Any] | None) -> np.ndarray:
    """Postprocessing chosen on cross-validation (``medseg select``).

    The largest component of all foreground (``largest_component_all_foreground``), then of each class listed in
    ``largest_component_classes``.
    """
    if not postprocessing:
        return labels
    if postprocessing.get("largest_component_all_foreground"):
        labels = keep_largest_foreground(labels)
    classes = [int(c) for c in postprocessing.get("largest_component_classes") or []]
    if classes:
        labels = largest_component_per_class(labels, classes)
    return labels


@dataclass
class PreparedCase:
    """A loaded and preprocessed case, ready for the device.

    Attributes:
        case_id: Case identifier.
        image: The input image (its meta/affine define the output grid).
        data: Preprocessed ``(C, *spatial)`` float32 data.
        properties: ``properties`` of :func:`medseg.preprocessing.preprocess_case`.
        seconds: Load and preprocessing time.
        seg: The preprocessed label map passed to :func:`prepare_case`, else ``None``.
    """

    case_id: str
    image: Any
    data: np.ndarray
    properties: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    seg: np.ndarray | None = None


def prepare_case(plans: dict[str, Any], configuration: str, case_id: str, image: Any,
                 label: np.ndarray | None = None) -> PreparedCase:
    """Check and preprocess a loaded image ``(C, X, Y, Z)`` as the plans' configuration says.

    ``label`` (a label map on the image's grid, e.g. a cascade's previous-stage prediction) is preprocessed with the
    image and kept as :attr:`PreparedCase.seg`.
    """
    from medseg.io import check_finite, require_3d
    from medseg.preprocessing import configuration_of, preprocess_case

    where = (getattr(image, "meta", {}) or {}).get("filename_or_obj")
    require_3d(image, where, channels=configuration_of(plans, configuration).num_channels)
    check_finite(image, where)
    start = time.perf_counter()
    data, seg, properties = preprocess_case(image, plans, configuration, label=label)
    return PreparedCase(case_id, image, data, properties, {"preprocess": time.perf_counter() - start}, seg)


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
        uncertainty: With samples (:class:`Predictor`'s ``samples``): their mean probability, entropy, mutual
            information and, when kept, per-sample label maps; ``labels`` is then the mean's argmax.
        instances: Instance predictions: one entry per object (id, class, score, voxels, volume, centroid), written
            as ``CASE_instances.json``; ``None`` for label maps of classes.
    """

    labels: Any
    probabilities: np.ndarray | None
    seconds: dict[str, float]
    window_stats: SlidingWindowStats
    uncertainty: SampleSummary | None = None
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
        samples: Draw this many predictions of stochastic networks per case (latent samples or dropout masks, see
            :mod:`medseg.inference.uncertainty`); 0: one deterministic prediction.
        sample_seed: Seed of the first draw (draw ``s`` uses ``sample_seed + s``).
        keep_samples: Keep each draw's label map (``Prediction.uncertainty.samples``).
        postprocessing: Postprocessing of an inference plan of ``medseg select`` (:func:`apply_postprocessing`).
        previous: For a cascade stage (``3d_cascade_fullres``): the predictor of its previous stage; its label map
            of the case, preprocessed with the image as nnU-Net does, is appended one-hot to the input.
        crf: CRF post-processing on the preprocessed grid (:class:`~medseg.inference.crf.CRFConfig`), or ``None``.
    """

    def __init__(self, folds: Sequence[FoldModel], *, tta: bool = True, step: float = 0.5,
                 device: str = "auto", precision: Precision = "auto", stitch_device: str = "auto",
                 stitch_dtype: str = "auto", lcc: bool = False, batch_size: int | None = None, samples: int = 0,
                 sample_seed: int = 0, keep_samples: bool = False, postprocessing: Mapping[str, Any] | None = None,
                 previous: Predictor | None = None, crf: CRFConfig | None = None) -> None:
        from medseg.preprocessing import configuration_of

        if not folds:
            raise InferenceError("no folds to predict with")
        if samples < 0:
            raise InferenceError(f"the number of samples must be 0 or more, not {samples}")
        if samples:
            from medseg.models.sampling import stochastic_kind

            deterministic = [f for f in folds if stochastic_kind(f.model) is None]
            if deterministic:
                raise InferenceError("--samples needs a stochastic network (a probabilistic model such as prob_unet "
                                     "or hprob_unet, or one with dropout layers); this run's network has no latent "
                                     "variables and no dropout", deterministic[0].run_dir)
        self.samples, self.sample_seed, self.keep_samples = int(samples), int(sample_seed), bool(keep_samples)
        self.folds = list(folds)
        first = self.folds[0]
        self.plans = first.plans
        self.configuration = first.configuration
        self.cfg = configuration_of(self.plans, self.configuration)
        self.device = resolve_device(device)
        self.lcc = lcc
        self.tta = tta
        self.postprocessing = dict(postprocessing or {})
        self.previous = previous
        if self.cfg.previous_stage and previous is None:
            raise InferenceError(f"{self.configuration} is a cascade stage: it needs its {self.cfg.previous_stage} "
                                 "run to predict first (recorded as previous_stage_run, or a sibling nnU-Net "
                                 "folder)", first.run_dir)
        self.regions_class_order = first.regions_class_order
        modes = {f.ensemble for f in self.folds}
        # nnU-Net's folds average logits; medseg's average probabilities; a mixed ensemble averages probabilities
        self.ensemble = modes.pop() if len(modes) == 1 else "probabilities"
        if self.regions_class_order is not None and self.ensemble != "logits":
            raise InferenceError("region-based models ensemble by their logits only (nnU-Net's rule)",
                                 first.run_dir)
        self.crf = crf
        if crf is not None and self.regions_class_order is not None:
            raise InferenceError("a CRF refines softmax outputs; region-based models have sigmoid outputs",
                                 first.run_dir)
        self.window = SlidingWindowPredictor(
            [f.model for f in self.folds], first.patch_size, step=step,
            mirror_axes=first.mirror_axes if tta else (), device=self.device, precision=precision,
            stitch_device=stitch_device, stitch_dtype=stitch_dtype,  # type: ignore[arg-type]
            batch_size=batch_size, ensemble=self.ensemble)  # type: ignore[arg-type]

    @property
    def num_classes(self) -> int:
        """Output classes (including background); for region-based models, the largest class a region writes + 1."""
        if self.regions_class_order is not None:
            return max(self.regions_class_order) + 1
        return self.cfg.num_classes

    @property
    def label_names(self) -> dict[int, str]:
        """Label value → name from the plans."""
        return self.cfg.label_names

    def prepare(self, case_id: str, image: Any) -> PreparedCase:
        """Check and preprocess a loaded image ``(C, X, Y, Z)`` as the run's plans say."""
        if self.previous is not None:  # the cascade: the previous stage's label map, preprocessed with the image
            start = time.perf_counter()
            earlier = self.previous.predict(image, case_id)  # checks the image as prepare_case does
            previous_seconds = time.perf_counter() - start
            prepared = prepare_case(self.plans, self.configuration, case_id, image,
                                    label=np.asarray(earlier.labels[0]))
            start = time.perf_counter()
            seg = prepared.seg[0]
            onehot = np.stack([(seg == c) for c in range(1, self.cfg.num_classes)]).astype(np.float32)
            prepared.data = np.concatenate([prepared.data, onehot])
            prepared.seconds["preprocess"] += time.perf_counter() - start
            prepared.seconds["previous_stage"] = previous_seconds
            return prepared
        prepared = prepare_case(self.plans, self.configuration, case_id, image)
        first = self.folds[0]
        if first.coordinates != "none":
            from medseg.preprocessing.coordinates import append_coordinates

            start = time.perf_counter()
            prepared.data = append_coordinates(prepared.data, prepared.properties, first.coordinates,
                                               first.coordinate_scale)
            prepared.seconds["preprocess"] += time.perf_counter() - start
        return prepared

    def predict_prepared(self, case: PreparedCase, *, probabilities: bool = False) -> Prediction:
        """Predict a prepared case and map it back to the input grid."""
        from medseg.io import make_image

        seconds = dict(case.seconds)
        if self.samples:
            summary = self._draw_samples(case, seconds)
            labels, native_probabilities = summary.labels, summary.mean_probabilities if probabilities else None
        else:
            summary = None
            exported = self._export(case, None, seconds, probabilities)
            labels, native_probabilities = exported.labels, exported.probabilities
        if self.lcc or self.postprocessing:
            start = time.perf_counter()
            labels = apply_postprocessing(labels, self.postprocessing)
            if self.lcc:
                labels = largest_component_per_class(labels)
            seconds["postprocess"] = time.perf_counter() - start
        affine, keep = output_meta(case.image)
        image = make_image(labels[None], affine, keep)
        if native_probabilities is not None:
            native_probabilities = native_probabilities.astype(np.float16, copy=False)
        return Prediction(labels=image, probabilities=native_probabilities, seconds=seconds,
                          window_stats=self.window.stats, uncertainty=summary)

    def _export(self, case: PreparedCase, sample: int | None, seconds: dict[str, float], probabilities: bool) -> Any:
        """One pass of the sliding window (draw ``sample``, or the deterministic one), exported to the native grid."""
        start = time.perf_counter()
        values = self.window.predict(case.data, sample=sample)
        if values.device.type == "cuda":
            torch.cuda.synchronize(values.device)
        seconds["predict"] = seconds.get("predict", 0.0) + time.perf_counter() - start
        kind = self.window.output_kind
        if self.crf is not None:  # on the preprocessed grid, before resampling
            from medseg.inference.crf import crf_refine

            start = time.perf_counter()
            image = torch.from_numpy(np.ascontiguousarray(case.data[: self.cfg.num_channels]))
            values = crf_refine(values.to(self.device), kind, image, case.properties["target_spacing"], self.crf)
            kind = "logits"
            if values.device.type == "cuda":
                torch.cuda.synchronize(values.device)
            seconds["crf"] = seconds.get("crf", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        resample_device = self.device if self.device.type == "cuda" else values.device
        exported = export_segmentation(values, case.properties, self.cfg.resampling,
                                       kind=kind, device=resample_device,
                                       probabilities=probabilities, regions_class_order=self.regions_class_order)
        del values
        seconds["export"] = seconds.get("export", 0.0) + time.perf_counter() - start
        return exported

    def _draw_samples(self, case: PreparedCase, seconds: dict[str, float]) -> SampleSummary:
        """``samples`` passes of the sliding window, each exported, folded into their summary."""
        accumulator = SampleAccumulator(self.keep_samples)
        for s in range(self.samples):
            exported = self._export(case, self.sample_seed + s, seconds, True)
            accumulator.add(exported.probabilities, exported.labels)
            del exported
        start = time.perf_counter()
        summary = accumulator.result()
        seconds["export"] += time.perf_counter() - start
        return summary

    def predict(self, image: Any, case_id: str = "case", *, probabilities: bool = False) -> Prediction:
        """Preprocess, predict and export one loaded image."""
        return self.predict_prepared(self.prepare(case_id, image), probabilities=probabilities)


class EnsemblePredictor:
    """Runs with different preprocessing (e.g. ``2d`` and ``3d_fullres``) as one predictor.

    For ``medseg select``'s pair ensembles: each run predicts with its own preprocessing and window, their
    probabilities are averaged on the input's native grid (nnU-Net's ``nnUNetv2_ensemble``), then argmax and the
    plan's postprocessing.

    Args:
        predictors: One :class:`Predictor` per run (same classes).
        postprocessing: The plan's postprocessing (:func:`apply_postprocessing`).
    """

    def __init__(self, predictors: Sequence[Predictor], postprocessing: Mapping[str, Any] | None = None) -> None:
        if not predictors:
            raise InferenceError("no runs to ensemble")
        self.predictors = list(predictors)
        first = self.predictors[0]
        if any(p.num_classes != first.num_classes for p in self.predictors):
            raise InferenceError("the runs of an ensemble must predict the same classes")
        self.device = first.device
        self.postprocessing = dict(postprocessing or {})

    @property
    def num_classes(self) -> int:
        """Output classes (including background)."""
        return self.predictors[0].num_classes

    @property
    def label_names(self) -> dict[int, str]:
        """Label value → name (the first run's)."""
        return self.predictors[0].label_names

    def prepare(self, case_id: str, image: Any) -> PreparedCase:
        """Preprocess the image once per run."""
        parts = [p.prepare(case_id, image) for p in self.predictors]
        seconds = {"preprocess": sum(part.seconds.get("preprocess", 0.0) for part in parts)}
        return PreparedCase(case_id, image, np.zeros(0, dtype=np.float32), {"parts": parts}, seconds)

    def predict_prepared(self, case: PreparedCase, *, probabilities: bool = False) -> Prediction:
        """Each run's native probabilities, averaged, then argmax and postprocessing."""
        parts = case.properties["parts"]
        results = [p.predict_prepared(part, probabilities=True) for p, part in zip(self.predictors, parts,
                                                                                     strict=True)]
        mean = np.mean([np.asarray(r.probabilities, dtype=np.float32) for r in results], axis=0)
        seconds = dict(case.seconds)
        for key in ("predict", "export"):
            seconds[key] = sum(r.seconds.get(key, 0.0) for r in results)
        start = time.perf_counter()
        labels = apply_postprocessing(mean.argmax(0).astype(np.uint8 if mean.shape[0] <= 256 else np.int16),
                                      self.postprocessing)
        seconds["postprocess"] = time.perf_counter() - start
        image = results[0].labels.clone()
        image[0] = torch.from_numpy(labels.astype(np.asarray(image[0]).dtype))
        return Prediction(labels=image, probabilities=mean.astype(np.float16) if probabilities else None,
                          seconds=seconds, window_stats=results[0].window_stats)

    def predict(self, image: Any, case_id: str = "case", *, probabilities: bool = False) -> Prediction:
        """Preprocess, predict and export one loaded image."""
        return self.predict_prepared(self.prepare(case_id, image), probabilities=probabilities)
