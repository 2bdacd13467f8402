"""Training instance, panoptic and interactive models through the same trainer.

:class:`InstanceFoldTrainer` is :class:`~medseg.training.trainer.FoldTrainer` with its four hooks filled in for
instance datasets (plans with ``"task": "instance"``); the schedule, optimiser, checkpoints, resuming, DDP, the
run folder and the EMA-selected ``checkpoint_best.pt`` are the trainer's own.

- **batches** (:class:`InstanceBatchDataset`): the trainer's patches (same sampling, foreground oversampling per
  class, augmentation with nearest-neighbour label interpolation, so object ids survive), each with its case's object
  id → class table;
- **loss**: ``model(images, targets)`` returns the model's loss terms, each already weighted as its paper weights it
  (:mod:`medseg.models.instance.base`); their sum is minimised;
- **validation**: the same loss, and the pseudo-Dice of the class map the model's objects paint (each object's voxels
  set to its class), so the EMA and the best checkpoint work as for semantic models;
- **final validation**: every validation case predicted whole by :class:`~medseg.inference.instance.
  InstanceWindowPredictor` (what ``medseg predict`` runs), scored with panoptic quality, AJI and instance F1
  (:mod:`medseg.evaluation.instance`) into ``validation/summary.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medseg.errors import TrainingError
from medseg.training.data import BatchDataset
from medseg.training.trainer import _PRECISION, FoldTrainer, tp_fp_fn
from medseg.utils.files import atomic_json

__all__ = ["InstanceBatchDataset", "InstanceFoldTrainer", "class_lookup_tensor"]


def class_lookup_tensor(table: dict[int, int] | None, instances: torch.Tensor) -> torch.Tensor:
    """``lookup[id] = class`` for the ids of ``instances`` (ids without an entry: class 1)."""
    top = int(instances.max()) if instances.numel() else 0
    top = max(top, max(table) if table else 0)
    lookup = torch.ones(top + 1, dtype=torch.long)
    lookup[0] = 0
    for k, v in (table or {}).items():
        lookup[int(k)] = int(v)
    return lookup


class InstanceBatchDataset(BatchDataset):
    """:class:`~medseg.training.data.BatchDataset` batches with each sample's object id → class lookup.

    A batch adds ``classes``: one ``(max_id + 1,)`` lookup tensor per sample; ``target`` holds the object ids.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, iteration = divmod(int(index), self.iterations)
        samples = [self.sample(epoch, iteration, self.sample_offset + j) for j in range(self.local_batch)]
        classes = [class_lookup_tensor(self._case(s[2]).get("instance_classes"), s[1]) for s in samples]
        return {
            "data": torch.stack([s[0] for s in samples]),
            "target": torch.stack([s[1] for s in samples]).long(),
            "classes": classes,
            "keys": [s[2] for s in samples],
        }


class InstanceFoldTrainer(FoldTrainer):
    """Trains one fold of an instance dataset (see the module docstring)."""

    dataset_class = InstanceBatchDataset

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from medseg.models.instance.base import InstanceSegmentationModel

        if not isinstance(self.model, InstanceSegmentationModel):
            name = self.config.model or self.cfg.model.name
            raise TrainingError(f"model {name!r} gives one class per voxel, but the plans are for objects (an "
                                "instance dataset); choose an instance, panoptic or interactive model "
                                "(medseg models --family instance)")

    def _targets(self, batch: dict[str, Any]) -> list[Any]:
        from medseg.models.instance.base import InstanceTarget

        target = batch["target"].to(self.device, non_blocking=True)
        return [InstanceTarget(target[i, 0], batch["classes"][i].to(self.device)) for i in range(target.shape[0])]

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The sum of the model's loss terms on a batch."""
        data = batch["data"].to(self.device, non_blocking=True)
        losses = self.network(data, self._targets(batch))
        return sum(losses.values(), data.new_zeros(()))

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> tuple[float, torch.Tensor]:
        """Loss, and ``[tp, fp, fn]`` per class of the class map painted by the predicted objects."""
        from medseg.models.instance.targets import semantic_map

        data = batch["data"].to(self.device, non_blocking=True)
        targets = self._targets(batch)
        with self._autocast():
            losses = self.network(data, targets)
            loss = float(sum(float(v) for v in losses.values()))
            maps = self.model.instances(data.float())
        counts = torch.zeros(3, self.num_classes - 1, dtype=torch.float64)
        for found, target in zip(maps, targets, strict=True):
            lookup = torch.cat([torch.zeros(1, dtype=torch.long), found.classes.cpu()])
            painted = lookup[found.instances.cpu()]
            counts += tp_fp_fn(painted, semantic_map(target).cpu(), self.num_classes)
        return loss, counts

    def final_validation(self) -> dict[str, Any]:
        """Predict the validation cases whole; rank 0 writes ``validation/summary.json`` with PQ, AJI and F1."""
        from medseg.evaluation.instance import (
            aggregated_jaccard_index,
            match_objects,
            overlaps,
            panoptic_quality,
        )
        from medseg.inference.instance import InstanceWindowPredictor
        from medseg.preprocessing import load_cached_case
        from medseg.training.checkpoint import load_checkpoint
        from medseg.training.distributed import all_gather_objects, barrier

        final = self.run_dir / "checkpoint_final.pt"
        if final.is_file():
            self.model.load_state_dict(load_checkpoint(final, map_location=self.device)["model"])
        self.model.eval()
        dims = len(self.patch)
        predictor = InstanceWindowPredictor(
            [self.model], self.patch, step=1.0 - self.config.sw_overlap,  # type: ignore[list-item]
            mirror_axes=list(range(dims)) if self.config.val_mirroring else [], device=self.device,
            precision=_PRECISION[self.amp_dtype], batch_size=self.config.sw_batch_size)  # type: ignore[arg-type]
        names = self.cfg.label_names
        classes = [c for c in sorted(names) if c != 0]
        results = []
        for case_id in self.spec.val_ids[self.info.rank :: self.info.world_size]:
            case = load_cached_case(self.cache_folder, case_id, mmap=False)
            found = predictor.predict(case["data"])
            reference = np.clip(np.asarray(case["seg"][0]), 0, None)
            ref_sizes, pred_sizes, pairs = overlaps(reference, found.instances.numpy())
            ref_cls = {int(k): int(v) for k, v in case.get("instance_classes", {}).items()}
            pred_cls = {i + 1: int(c) for i, c in enumerate(found.classes.tolist())}
            entry: dict[str, Any] = {"case": case_id, "objects": {"reference": len(ref_sizes),
                                                                  "prediction": len(pred_sizes)}}
            everything = match_objects(ref_sizes, pred_sizes, pairs, ref_cls, pred_cls, None)
            pq, sq, rq = panoptic_quality(everything.tp, everything.fp, everything.fn, everything.iou_sum)
            entry["all"] = {"PQ": pq, "SQ": sq, "RQ": rq, "TP": everything.tp, "FP": everything.fp,
                            "FN": everything.fn, "iou_sum": everything.iou_sum,
                            "AJI": aggregated_jaccard_index(ref_sizes, pred_sizes, pairs)}
            for c in classes:
                m = match_objects(ref_sizes, pred_sizes, pairs, ref_cls, pred_cls, c)
                pq, sq, rq = panoptic_quality(m.tp, m.fp, m.fn, m.iou_sum)
                entry[names.get(c, str(c))] = {"PQ": pq, "SQ": sq, "RQ": rq, "TP": m.tp, "FP": m.fp, "FN": m.fn,
                                               "iou_sum": m.iou_sum}
            results.append(entry)
        gathered = all_gather_objects(results, self.info)
        cases = sorted((r for part in gathered for r in part), key=lambda r: r["case"])  # type: ignore[union-attr]
        pooled = {}
        for key in ["all", *[names.get(c, str(c)) for c in classes]]:
            tp = sum(c[key]["TP"] for c in cases)
            fp = sum(c[key]["FP"] for c in cases)
            fn = sum(c[key]["FN"] for c in cases)
            pq, sq, rq = panoptic_quality(tp, fp, fn, sum(c[key]["iou_sum"] for c in cases))
            pooled[key] = {"PQ": pq, "SQ": sq, "RQ": rq, "TP": tp, "FP": fp, "FN": fn}
        aji = [c["all"]["AJI"] for c in cases]
        summary = {
            "configuration": self.configuration,
            "fold": self.spec.fold,
            "task": "instance",
            "space": "preprocessed (plans spacing, cropped to nonzero)",
            "sliding_window": {"step": 1.0 - self.config.sw_overlap, "mirroring": self.config.val_mirroring,
                               "implementation": "medseg predict's"},
            "cases": cases,
            "pooled": pooled,
            "mean_aji": float(np.mean(aji)) if aji else None,
            "pooled_pq": pooled["all"]["PQ"],
        }
        if self.info.is_main:
            (self.run_dir / "validation").mkdir(parents=True, exist_ok=True)
            atomic_json(self.run_dir / "validation" / "summary.json", summary)
        barrier(self.info)
        return summary

