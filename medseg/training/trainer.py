"""The training loop: nnU-Net v2's recipe (Isensee et al., Nature Methods 2021) on medseg's plans.

:func:`train` runs one or more folds; each fold writes a run folder (``TRAINING.md`` beside this module documents
it). Per epoch: the learning rate is set by the poly schedule, ``iterations_per_epoch`` augmented batches are
trained (deep-supervision loss, gradient clipping at 12, AMP on CUDA), ``val_iterations`` unaugmented batches of
the validation cases give the loss and the pseudo-Dice (TP/FP/FN summed over the epoch, one Dice per foreground
class), whose mean feeds the EMA ``0.9 · ema + 0.1 · dice``; a better EMA writes ``checkpoint_best.pt``. After
the last epoch the validation cases are predicted whole with a gaussian-weighted sliding window (step 0.5 of the
patch, mirroring TTA optional) and their Dice goes to ``validation/summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from medseg.config import read_yaml
from medseg.errors import MedsegError, TrainingError
from medseg.preprocessing.plans_view import Configuration
from medseg.training.checkpoint import (
    CHECKPOINT_VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from medseg.training.config import RUNTIME_KEYS, TrainConfig
from medseg.training.data import TRAIN_STREAM, VAL_STREAM, BatchDataset, make_loader, split_batch
from medseg.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    launcher_info,
    shutdown,
)
from medseg.training.loss import DeepSupervisionLoss, build_loss, model_objective
from medseg.training.progress import Progress, plot_progress
from medseg.utils.devices import resolve_device
from medseg.utils.files import atomic_json, atomic_text, read_json, remove_stale_temporaries

#: The sliding window's precision for the training's autocast dtype.
_PRECISION = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

FILES = ("config.yaml", "plans.json", "splits.json", "environment.json", "seed", "metrics.jsonl", "progress.png")


# Set-up helpers -----------------------------------------------------------------------------------------------------


def resolve_manifest(plans_path: Path, manifest: Path | None) -> Path:
    """``manifest``, else the one recorded in ``fingerprint.json`` next to the plans, else a clear error."""
    if manifest is not None:
        if not Path(manifest).is_file():
            raise TrainingError("no such manifest file", manifest)
        return Path(manifest)
    fingerprint = plans_path.parent / "fingerprint.json"
    if fingerprint.is_file():
        try:
            recorded = read_json(fingerprint, "fingerprint").get("manifest")
        except (MedsegError, AttributeError):
            recorded = None
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    raise TrainingError("cannot locate the dataset: pass --manifest PATH (no fingerprint.json beside the plans "
                        "records an existing manifest)", plans_path)


def build_model(cfg: Configuration, config: TrainConfig) -> nn.Module:
    """The plans' model (or ``config.model``) with ``config.model_kwargs`` and deep supervision as configured.

    Region-based training (``config.regions``) gives the network one output per region instead of one per label;
    coordinate channels (``config.coordinates``) widen its input; ``config.crf_layer`` puts a ConvCRF after it.
    """
    from medseg.config import to_dict
    from medseg.models.convcrf import create_run_model
    from medseg.preprocessing.coordinates import coordinate_channel_count

    entry = cfg.model.as_dict()
    if config.regions:
        entry["out_channels"] = len(config.regions)
    return create_run_model(entry, config.model, config.model_kwargs, config.deep_supervision,
                            extra_in_channels=coordinate_channel_count(config.coordinates),
                            crf_layer=to_dict(config.crf_layer))


def labels_from_regions(logits: torch.Tensor, regions_class_order: Sequence[int], threshold: float = 0.0
                        ) -> torch.Tensor:
    """Label map of region logits ``(R, *spatial)`` (nnU-Net's ``LabelManager``).

    Region ``r`` writes ``regions_class_order[r]`` where its sigmoid exceeds 0.5 (logit > 0), later regions over
    earlier ones.
    """
    labels = torch.zeros(logits.shape[1:], dtype=torch.int16, device=logits.device)
    for r, value in enumerate(regions_class_order):
        labels[logits[r] > threshold] = int(value)
    return labels


def region_tp_fp_fn(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per region ``[tp, fp, fn]`` (shape ``(3, R)``) of binary masks ``(B, R, *spatial)``, summed over the rest."""
    p, t = prediction.bool(), target.bool()
    axes = (0, *range(2, p.ndim))
    return torch.stack([(p & t).sum(axes), (p & ~t).sum(axes), (~p & t).sum(axes)]).double()


def _check_batch_norm_at_batch_one(cfg: Configuration, config: TrainConfig, patch: Sequence[int]) -> None:
    """Refuse, before any training, a network whose normalisation would see one value per channel at batch size 1.

    Batch normalisation in training needs more than one value per channel; with one sample per process, a branch
    that pools to 1×1(×1) (PSPNet's and DeepLab's image pooling, the deepest stage of a network on a small patch)
    has exactly one, and torch stops at the first step (instance normalisation likewise on any 1×1×1 map). A forward
    pass on the meta device (no memory, no arithmetic) at the training patch finds such a layer.

    Raises:
        TrainingError: The network cannot train with one sample per process; the message says what to change.
    """
    model_name = config.model or cfg.model.name
    try:
        with torch.device("meta"):
            probe = build_model(cfg, config)
    except (RuntimeError, NotImplementedError):  # a constructor that computes with tensors (MONAI's Swin UNETR)
        probe = build_model(cfg, config).to("meta")
    from medseg.preprocessing.coordinates import coordinate_channel_count

    channels = cfg.model.in_channels + coordinate_channel_count(config.coordinates)
    probe.train()
    try:
        probe(torch.empty(1, channels, *patch, device="meta"))
    except ValueError as exc:
        if "Expected more than 1 value per channel" in str(exc):
            raise TrainingError(f"model {model_name!r} uses batch normalisation on a 1×1 feature map (a pooling "
                                "branch), which cannot train with one sample per process; set batch_size to 2 or "
                                "more per process (--set batch_size=2), or choose a model with instance "
                                "normalisation") from None
    except MedsegError:  # the network's own check of what it can take (e.g. instance norm on 1×1×1 maps)
        raise
    except Exception:  # a network that cannot run on the meta device is not refused here
        return


def _normalised(data: Any) -> Any:
    return json.loads(json.dumps(data))


def _comparable_config(data: dict[str, Any]) -> dict[str, Any]:
    """The settings that must match to resume, with the defaults of settings a run's ``config.yaml`` predates."""
    from medseg.config import from_dict, to_dict

    with contextlib.suppress(MedsegError):
        data = to_dict(from_dict(TrainConfig, data))
    return {k: v for k, v in _normalised(data).items() if k not in RUNTIME_KEYS}


def poly_lr(initial: float, epoch: int, epochs: int, exponent: float) -> float:
    """nnU-Net's ``PolyLRScheduler``: ``initial · (1 - epoch / epochs) ** exponent``."""
    return initial * (1 - epoch / epochs) ** exponent


def tp_fp_fn(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per foreground class ``[tp, fp, fn]`` (shape ``(3, num_classes - 1)``) of label maps, summed over everything."""
    rows = []
    for c in range(1, num_classes):
        p, t = prediction == c, target == c
        rows.append(torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]))
    return torch.stack(rows, 1).double()


def dice_from_counts(counts: torch.Tensor) -> list[float]:
    """``2tp / (2tp + fp + fn)`` per class; NaN when the class is absent from both (nnU-Net's convention)."""
    tp, fp, fn = counts
    denominator = 2 * tp + fp + fn
    return [float(2 * a / d) if d > 0 else float("nan") for a, d in zip(tp.tolist(), denominator.tolist(),
                                                                         strict=True)]


# The trainer --------------------------------------------------------------------------------------------------------


@dataclass
class FoldSpec:
    """What one fold trains on and where it writes (``fold`` ``"all"``: every case, validated on every case)."""

    fold: int | str
    train_ids: list[str]
    val_ids: list[str]
    run_dir: Path


class FoldTrainer:
    """Trains one fold (see the module docstring); rank 0 writes the run folder.

    Other tasks subclass it through four hooks: :attr:`dataset_class` (the batches), :meth:`training_loss` (the loss
    of a batch), :meth:`validation_step` (loss and per-class counts of a validation batch) and
    :meth:`final_validation` (see :class:`medseg.training.instance.InstanceFoldTrainer`).
    """

    #: The batches of the training and validation cases.
    dataset_class: type[BatchDataset] = BatchDataset

    def __init__(self, plans: dict[str, Any], configuration: str, config: TrainConfig, spec: FoldSpec,
                 splits: list[dict[str, list[str]]], cache_folder: Path, info: DistInfo, device: torch.device,
                 stream: TextIO | None = None, previous: dict[str, str] | None = None) -> None:
        from medseg.preprocessing import configuration_of

        self.previous = dict(previous or {})  # cascade: case → previous-stage prediction on this stage's grid

        self.plans, self.configuration, self.config, self.spec = plans, configuration, config, spec
        self.splits, self.cache_folder, self.info, self.device = splits, cache_folder, info, device
        self.stream = stream
        self.cfg = configuration_of(plans, configuration)
        self.num_classes = self.cfg.num_classes
        self.regions = [list(r) for r in config.regions] if config.regions else None
        self.n_scores = len(self.regions) if self.regions else self.num_classes - 1
        self.patch = [int(p) for p in (config.patch_size or self.cfg.patch_size)]
        if len(self.patch) != self.cfg.spatial_dims:
            dims, planned = self.cfg.spatial_dims, list(self.cfg.patch_size)
            raise TrainingError(f"patch size {self.patch} (from the config or preset) does not fit the {dims}D "
                                f"configuration {configuration!r}: set one with {dims} entries, e.g. "
                                f"--set \"patch_size={planned}\"")
        self.global_batch = int(config.batch_size or self.cfg.batch_size)
        if self.global_batch < info.world_size:
            raise TrainingError(f"batch size {self.global_batch} is smaller than the {info.world_size} processes")
        sizes = split_batch(self.global_batch, info.world_size)
        self.local_batch = sizes[info.rank]
        self.sample_offset = sum(sizes[: info.rank])
        self.batch_dice = bool(self.cfg.batch_dice if config.batch_dice is None else config.batch_dice)

        torch.manual_seed(config.seed)
        self.model = build_model(self.cfg, config).to(device)
        divisor = getattr(self.model, "input_divisor", None)
        if divisor is not None and any(p % d for p, d in zip(self.patch, divisor, strict=True)):
            raise TrainingError(f"patch size {self.patch} is not a multiple of the model's input divisor "
                                f"{list(divisor)}")
        if self.local_batch == 1:
            _check_batch_norm_at_batch_one(self.cfg, config, self.patch)
        self.network: nn.Module = self.model
        if info.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.loss = DeepSupervisionLoss(build_loss(config.loss, self.batch_dice, self.regions,
                                                   config.relaxation_window),
                                        getattr(self.model, "loss_weights", ()))
        #: The model's own objective (``training_loss``), which replaces ``self.loss`` and takes the label as input.
        self.objective = model_objective(self.model)
        self.amp_dtype: torch.dtype | None = None
        if device.type == "cuda" and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(config.cudnn_benchmark)
        self.start_epoch = 0
        self.ema: float | None = None
        self.best_ema: float | None = None
        self.records: list[dict[str, Any]] = []
        from medseg.training.methods import build_hooks

        self.hooks = build_hooks(self)  # adversarial training, domain adaptation

    # Files --------------------------------------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """The fold's run folder."""
        return self.spec.run_dir

    def _config_dict(self) -> dict[str, Any]:
        from medseg.config import to_dict

        return _normalised(to_dict(self.config))

    def prepare_run_folder(self, resume: bool) -> None:
        """Check a resumed folder against this run, restore its checkpoint, and write the run's files (rank 0)."""
        import yaml

        run = self.run_dir
        latest = run / "checkpoint_latest.pt"
        final = run / "checkpoint_final.pt"
        has_state = latest.is_file() or final.is_file()
        if has_state and not resume:
            raise TrainingError("the run folder already holds a training run; pass --resume to continue it or "
                                "choose another --out", run)
        if has_state:
            stored_config = read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
            if _comparable_config(stored_config or {}) != _comparable_config(self._config_dict()):
                changed = sorted(k for k in set(_comparable_config(stored_config or {})) | set(
                    _comparable_config(self._config_dict()))
                    if _comparable_config(stored_config or {}).get(k) != _comparable_config(self._config_dict()).get(k))
                raise TrainingError(f"cannot resume: the configuration differs from the run's config.yaml "
                                    f"({', '.join(changed)})", run)
            stored_plans = read_json(run / "plans.json", "run's plans", TrainingError) \
                if (run / "plans.json").is_file() else None
            if stored_plans != _normalised(self.plans):
                raise TrainingError("cannot resume: the plans differ from the run's plans.json", run)
            stored_splits = read_json(run / "splits.json", "run's splits", TrainingError) \
                if (run / "splits.json").is_file() else None
            if stored_splits is not None and stored_splits != _normalised(self.splits):
                raise TrainingError("cannot resume: the splits differ from the run's splits.json", run)
            self.load_state(latest if latest.is_file() else final)
        barrier(self.info)
        if not self.info.is_main:
            return
        from medseg.utils.environment import environment_report

        run.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run)
        remove_stale_temporaries(run / "validation")
        atomic_text(run / "config.yaml", yaml.safe_dump(self._config_dict(), sort_keys=False))
        atomic_json(run / "plans.json", self.plans)
        atomic_json(run / "splits.json", self.splits)
        env = environment_report()
        env.update(world_size=self.info.world_size, device=str(self.device),
                   amp_dtype=None if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", ""))
        atomic_json(run / "environment.json", env)
        atomic_text(run / "seed", f"{self.config.seed}\n")
        metrics = run / "metrics.jsonl"
        kept = []
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("epoch", math.inf) < self.start_epoch:
                        kept.append(record)
        self.records = kept
        atomic_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def state(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue after ``epoch - 1`` (tensors and plain values only)."""
        return {
            "checkpoint_version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"name": "poly", "initial_lr": self.config.lr, "exponent": self.config.poly_exponent,
                          "max_epochs": self.config.epochs, "last_epoch": epoch - 1},
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "ema": self.ema,
            "best_ema": self.best_ema,
            "rng": rng_state(),
            "configuration": self.configuration,
            "fold": self.spec.fold,
            "model_name": self.config.model or self.cfg.model.name,
            "methods": {h.name: h.state_dict() for h in self.hooks},
        }

    def load_state(self, path: Path) -> None:
        """Restore model, optimiser, schedule position, grad scaler, EMA, best EMA and RNG states."""
        try:
            state = load_checkpoint(path, map_location=self.device)
        except Exception as exc:
            raise TrainingError(f"cannot read the checkpoint: {exc}", path) from exc
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])
        self.start_epoch = int(state["epoch"])
        self.ema, self.best_ema = state.get("ema"), state.get("best_ema")
        for hook in self.hooks:
            hook.load_state_dict(state["methods"][hook.name])
        set_rng_state(state["rng"])

    # Loop ---------------------------------------------------------------------------------------------------------

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _datasets(self) -> tuple[BatchDataset, BatchDataset]:
        c = self.config
        common = {"folder": self.cache_folder, "patch_size": self.patch, "global_batch": self.global_batch,
                  "sample_offset": self.sample_offset, "local_batch": self.local_batch, "seed": c.seed,
                  "oversample_foreground": c.oversample_foreground, "previous": self.previous,
                  "num_classes": self.num_classes, "coordinates": c.coordinates,
                  "coordinate_scale": c.coordinate_scale}
        train = self.dataset_class(case_ids=self.spec.train_ids, iterations=c.iterations_per_epoch,
                                   stream=TRAIN_STREAM, augmentation=c.augmentation, **common)
        from dataclasses import replace

        val = self.dataset_class(case_ids=self.spec.val_ids, iterations=c.val_iterations, stream=VAL_STREAM,
                                 augmentation=replace(c.augmentation, enabled=False), **common)
        return train, val

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a training batch (called inside the autocast context).

        The model's own objective or the configured loss, plus the generator terms of the training methods
        (adversarial training, domain adaptation).
        """
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        if self.objective is not None:
            output = self.network(data, target=target)
            loss = self.objective(output, target)
        else:
            output = self.network(data)
            loss = self.loss(output, target)
        for hook in self.hooks:
            loss = loss + hook.generator_loss(data, output, target)
        return loss

    def train_step(self, batch: dict[str, Any]) -> float:
        """One optimiser step on a batch; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.training_loss(batch)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for hook in self.hooks:
            hook.discriminator_step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> tuple[float, torch.Tensor]:
        """Loss and ``[tp, fp, fn]`` per foreground class (or region) of one validation batch (full resolution).

        A model with its own objective is scored with it on the label-conditioned pass, and its Dice counts come
        from the pass without the label (what prediction sees).
        """
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        with self._autocast():
            if self.objective is not None:
                loss = self.objective(self.network(data, target=target), target)
                output = self.network(data)
            else:
                output = self.network(data)
                if isinstance(output, (list, tuple)):
                    output = output[0]
                loss = self.loss(output, target)
        if self.regions:
            from medseg.training.loss import regions_to_masks

            return float(loss), region_tp_fp_fn(output > 0, regions_to_masks(target.long(), self.regions)).cpu()
        prediction = output.argmax(1, keepdim=True)
        return float(loss), tp_fp_fn(prediction, target, self.num_classes).cpu()

    def run(self, resume: bool) -> dict[str, Any]:
        """Train (or continue) this fold and run the final validation; returns the validation summary."""
        self.prepare_run_folder(resume)
        c = self.config
        if self.start_epoch < c.epochs:
            self._loop()
        elif self.info.is_main and not (self.run_dir / "checkpoint_final.pt").is_file():
            save_checkpoint(self.state(c.epochs), self.run_dir / "checkpoint_final.pt")
        barrier(self.info)
        summary: dict[str, Any] = {}
        if c.final_validation:
            summary = self.final_validation()
        return summary

    def _loop(self) -> None:
        c = self.config
        train_set, val_set = self._datasets()
        train_loader, train_sampler = make_loader(train_set, c.num_workers)
        val_workers = max(1, c.num_workers // 2) if c.num_workers > 0 else 0
        val_loader, val_sampler = make_loader(val_set, val_workers)
        progress = Progress(c.epochs, c.iterations_per_epoch, c.progress, self.info.is_main, self.stream)
        with progress:
            if self.start_epoch:
                progress.message(f"resuming fold {self.spec.fold} at epoch {self.start_epoch + 1}")
            if self.objective is not None:
                name = self.config.model or self.cfg.model.name
                progress.message(f"model {name} trains with its own objective (its training_loss, with the label as "
                                 f"input); the loss setting {c.loss!r} and deep supervision do not apply")
            for epoch in range(self.start_epoch, c.epochs):
                record = self._epoch(epoch, train_loader, train_sampler, val_loader, val_sampler, progress)
                progress.end_epoch(record)
        del train_loader, val_loader

    def _epoch(self, epoch: int, train_loader: Any, train_sampler: Any, val_loader: Any, val_sampler: Any,
               progress: Progress) -> dict[str, Any]:
        c = self.config
        lr = poly_lr(c.lr, epoch, c.epochs, c.poly_exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        progress.start_epoch(epoch)
        self.network.train()
        t_start = time.perf_counter()
        wait = 0.0
        losses = []
        train_sampler.set_epoch(epoch)
        for hook in self.hooks:
            hook.start_epoch(epoch)
        iterator = iter(train_loader)
        for i in range(c.iterations_per_epoch):
            t0 = time.perf_counter()
            batch = next(iterator)
            wait += time.perf_counter() - t0
            losses.append(self.train_step(batch))
            progress.step(i, losses[-1])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.perf_counter() - t_start

        self.network.eval()
        val_sampler.set_epoch(epoch)
        val_losses = []
        counts = torch.zeros(3, self.n_scores, dtype=torch.float64)
        for batch in val_loader:
            loss, batch_counts = self.validation_step(batch)
            val_losses.append(loss)
            counts += batch_counts
        totals = torch.tensor([sum(losses), len(losses), sum(val_losses), len(val_losses)], dtype=torch.float64)
        if self.info.distributed:
            totals = totals.to(self.device) if self.device.type == "cuda" else totals
            counts = counts.to(totals.device)
            all_reduce_sum(totals, self.info)
            all_reduce_sum(counts, self.info)
            totals, counts = totals.cpu(), counts.cpu()
        dice = dice_from_counts(counts)
        finite = [d for d in dice if not math.isnan(d)]
        mean_dice = float(np.mean(finite)) if finite else float("nan")
        if not math.isnan(mean_dice):
            self.ema = mean_dice if self.ema is None else c.ema_momentum * self.ema + (1 - c.ema_momentum) * mean_dice
        epoch_time = time.perf_counter() - t_start
        record = {
            "epoch": epoch,
            "train_loss": float(totals[0] / max(totals[1], 1)),
            "val_loss": float(totals[2] / max(totals[3], 1)),
            "pseudo_dice": [None if math.isnan(d) else d for d in dice],
            "mean_pseudo_dice": None if math.isnan(mean_dice) else mean_dice,
            "ema_dice": self.ema,
            "lr": lr,
            "epoch_time_s": epoch_time,
            "train_time_s": train_time,
            "data_wait_s": wait,
            "data_wait_fraction": wait / max(train_time, 1e-9),
            "iterations_per_s": c.iterations_per_epoch / max(train_time, 1e-9),
        }
        for hook in self.hooks:
            record.update(hook.epoch_metrics())
        improved = self.ema is not None and (self.best_ema is None or self.ema > self.best_ema)
        if improved:
            self.best_ema = self.ema
        if self.info.is_main:
            self._write_epoch(epoch, record, improved)
        barrier(self.info)
        shown = dict(record, pseudo_dice=[float("nan") if d is None else d for d in record["pseudo_dice"]],
                     ema_dice=float("nan") if self.ema is None else self.ema,
                     mean_pseudo_dice=mean_dice)
        return shown

    def _write_epoch(self, epoch: int, record: dict[str, Any], improved: bool) -> None:
        run = self.run_dir
        self.records.append(record)
        atomic_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        plot_progress([dict(r, mean_pseudo_dice=r["mean_pseudo_dice"] if r["mean_pseudo_dice"] is not None
                            else float("nan"), ema_dice=r["ema_dice"] if r["ema_dice"] is not None else float("nan"))
                       for r in self.records], run / "progress.png")
        done = epoch + 1
        state = None
        if improved:
            state = self.state(done)
            save_checkpoint(state, run / "checkpoint_best.pt")
        if done == self.config.epochs:
            state = state or self.state(done)
            save_checkpoint(state, run / "checkpoint_final.pt")
        if done % max(self.config.save_every, 1) == 0 or done == self.config.epochs:
            save_checkpoint(state or self.state(done), run / "checkpoint_latest.pt")

    # Final validation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_case(self, data: np.ndarray) -> np.ndarray:
        """Label map of a preprocessed case ``(C, *spatial)``: the predictor's own sliding window.

        :class:`~medseg.inference.sliding_window.SlidingWindowPredictor` (gaussian weighting, step ``1 -
        sw_overlap``, mirroring over every axis when ``val_mirroring``) — the code ``medseg predict`` runs, so the
        validation Dice is the Dice of what prediction would produce.
        """
        from medseg.inference.sliding_window import SlidingWindowPredictor
        from medseg.models.adapters import volume_windows

        # the 2d configuration predicts slice by slice: one-slice windows, mirrored over the in-plane axes
        model, patch, mirror_axes = volume_windows(self.model, self.patch, range(len(self.patch)))
        window = SlidingWindowPredictor([model], patch, step=1.0 - self.config.sw_overlap,
                                        mirror_axes=mirror_axes if self.config.val_mirroring else (),
                                        device=self.device, precision=_PRECISION[self.amp_dtype],
                                        batch_size=self.config.sw_batch_size)
        logits = window.predict(np.ascontiguousarray(data))
        if self.regions:
            return labels_from_regions(logits.float(), self.config.regions_class_order or []).cpu().numpy()
        return logits.argmax(0).cpu().numpy().astype(np.int16)

    def final_validation(self) -> dict[str, Any]:
        """Predict the fold's validation cases (spread over the ranks); rank 0 writes ``validation/summary.json``."""
        from medseg.preprocessing import load_cached_case
        from medseg.preprocessing.coordinates import append_coordinates

        final = self.run_dir / "checkpoint_final.pt"
        if final.is_file():
            self.model.load_state_dict(load_checkpoint(final, map_location=self.device)["model"])
        labels = self.cfg.label_names
        if self.regions:  # one score per region, named by its labels ("grey_matter+white_matter")
            names = {i: "+".join(labels.get(v, str(v)) for v in r) for i, r in enumerate(self.regions)}
        else:
            names = {c: labels.get(c, str(c)) for c in range(1, self.num_classes)}
        results = []
        next_cfg = None
        if self.cfg.next_stage and self.cfg.next_stage in (self.plans.get("configurations") or {}):
            from medseg.preprocessing import configuration_of

            next_cfg = configuration_of(self.plans, self.cfg.next_stage)
        for case_id in self.spec.val_ids[self.info.rank :: self.info.world_size]:
            case = load_cached_case(self.cache_folder, case_id, mmap=False)
            data = append_coordinates(case["data"], case["properties"], self.config.coordinates,
                                      self.config.coordinate_scale)
            if self.previous:
                from medseg.training.cascade import one_hot_foreground

                with np.load(self.previous[case_id]) as stored:
                    onehot = one_hot_foreground(stored["seg"], self.num_classes).numpy()
                data = np.concatenate([data, onehot.astype(data.dtype)])
            labels_np = self.predict_case(data)
            if next_cfg is not None:  # each rank writes the cases it validated
                from medseg.training.cascade import write_next_stage

                write_next_stage(self.run_dir, case_id, labels_np, case["properties"], next_cfg)
            prediction = torch.from_numpy(labels_np)
            reference = torch.from_numpy(case["seg"][0].astype(np.int16)).clamp(min=0)
            if self.regions:
                from medseg.training.loss import regions_to_masks

                counts = region_tp_fp_fn(regions_to_masks(prediction[None, None], self.regions),
                                         regions_to_masks(reference[None, None], self.regions))
            else:
                counts = tp_fp_fn(prediction, reference, self.num_classes)
            dice = dice_from_counts(counts)
            results.append({"case": case_id, "dice": {name: None if math.isnan(d) else d
                                                      for name, d in zip(names.values(), dice, strict=True)}})
        gathered = all_gather_objects(results, self.info)
        cases = sorted((r for part in gathered for r in part), key=lambda r: r["case"])  # type: ignore[union-attr]
        mean = {}
        for name in names.values():
            values = [r["dice"][name] for r in cases if r["dice"][name] is not None]
            mean[name] = float(np.mean(values)) if values else None
        finite = [v for v in mean.values() if v is not None]
        summary = {
            "configuration": self.configuration,
            "fold": self.spec.fold,
            "space": "preprocessed (plans spacing, cropped to nonzero)",
            "sliding_window": {"step": 1.0 - self.config.sw_overlap, "mode": "gaussian", "sigma_scale": 0.125,
                               "mirroring": self.config.val_mirroring, "implementation": "medseg predict's"},
            "cases": cases,
            "mean_dice": mean,
            "foreground_mean_dice": float(np.mean(finite)) if finite else None,
        }
        if self.info.is_main:
            (self.run_dir / "validation").mkdir(parents=True, exist_ok=True)
            atomic_json(self.run_dir / "validation" / "summary.json", summary)
        barrier(self.info)
        return summary


# Entry point --------------------------------------------------------------------------------------------------------


def train(
    plans_path: str | Path,
    configuration: str,
    folds: Sequence[int | str] | str,
    out_dir: str | Path,
    config: TrainConfig,
    manifest_path: str | Path | None = None,
    resume: bool = False,
    stream: TextIO | None = None,
) -> dict[int, dict[str, Any]]:
    """Train the folds ``folds`` of a configuration into ``out_dir/fold_K``.

    Fold semantics are nnU-Net's: ``0`` … ``4`` are the cross-validation folds (a model trained on the other folds'
    cases, validated on its own), ``"all"`` is one model trained on every labelled case (``out_dir/fold_all``,
    validated on its training cases, as nnU-Net's fold ``all``).

    Args:
        plans_path: ``plans.json``.
        configuration: Configuration name (``3d_fullres``, ``3d_lowres``, …).
        folds: Fold indices and/or ``"all"``.
        out_dir: Run folder root; fold ``K`` writes ``out_dir/fold_K``.
        config: Training settings.
        manifest_path: Dataset manifest; default: the one recorded in ``fingerprint.json`` beside the plans.
        resume: Continue from ``checkpoint_latest.pt`` where present (start fresh where absent).
        stream: Where plain progress lines go (stdout).

    Returns:
        Fold → final validation summary (empty without final validation).

    Raises:
        TrainingError: Missing dataset, unknown fold, a run folder that cannot be resumed, bad settings.
    """
    from medseg.data import load_manifest
    from medseg.planning import load_plans
    from medseg.preprocessing import configuration_of, preprocess_dataset
    from medseg.training.splits import resolve_splits

    plans_path = Path(plans_path)
    plans = _normalised(load_plans(plans_path))
    configuration_of(plans, configuration)
    manifest = load_manifest(resolve_manifest(plans_path, Path(manifest_path) if manifest_path else None))
    if not manifest.labelled_cases:
        raise TrainingError("the manifest has no labelled cases", manifest.source)
    splits = resolve_splits(manifest, config.num_folds, config.seed)
    every = sorted(c.id for c in manifest.labelled_cases)
    wanted: list[int | str] = ["all"] if folds == "all" else [f if f == "all" else int(f) for f in folds]
    for fold in wanted:
        if fold == "all":
            continue
        if not 0 <= int(fold) < len(splits):
            raise TrainingError(f"fold {fold} does not exist (there are {len(splits)} folds: 0–{len(splits) - 1})")
    known = {c.id for c in manifest.labelled_cases}
    for index in (int(f) for f in wanted if f != "all"):
        unknown = sorted((set(splits[index]["train"]) | set(splits[index]["val"])) - known)
        if unknown:
            raise TrainingError(f"split {index} names cases without labels in the manifest: {', '.join(unknown[:5])}")
        if not splits[index]["train"] or not splits[index]["val"]:
            raise TrainingError(f"split {index} has no training or no validation cases")

    trainer_class = FoldTrainer
    if configuration_of(plans, configuration).is_instance:
        from medseg.training.instance import InstanceFoldTrainer

        trainer_class = InstanceFoldTrainer
    info = launcher_info()
    device = resolve_device(config.device, info.local_rank, option="device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_distributed(info, device)
    try:
        cache_root = Path(config.cache_dir) if config.cache_dir else plans_path.parent / "preprocessed"
        if info.is_main:
            cache_folder = preprocess_dataset(manifest, plans, configuration, cache_root, config.preprocess_workers)
        barrier(info)
        cache_folder = cache_root / configuration_of(plans, configuration).data_identifier
        results = {}
        for fold in wanted:
            split = {"train": every, "val": every} if fold == "all" else splits[int(fold)]
            spec = FoldSpec(fold, list(split["train"]), list(split["val"]), Path(out_dir) / f"fold_{fold}")
            previous = None
            if configuration_of(plans, configuration).previous_stage:
                from medseg.training.cascade import previous_predictions

                previous = previous_predictions(config.previous_stage_run, sorted(set(spec.train_ids) |
                                                                                  set(spec.val_ids)),
                                                configuration, str(configuration_of(plans, configuration)
                                                                   .previous_stage))
            trainer = trainer_class(plans, configuration, config, spec, splits, cache_folder, info, device, stream,
                                    previous)
            results[fold] = trainer.run(resume)
        return results
    finally:
        shutdown(info)
