"""Best configuration, pair ensembles and postprocessing chosen on cross-validation (``medseg select``).

nnU-Net v2's ``find_best_configuration`` (Isensee et al., Nature Methods 2021), on medseg runs:

1. **Cross-validation predictions.** Every numbered fold of every run predicts the validation cases of its own split
   (``splits.json``) on their native grid, with the run's preprocessing, sliding window and mirroring; the
   probabilities are kept (float16, ``OUT/cv/<run>/<case>.npz``) so that ensembles can be scored without predicting
   again. A folder already holding a case's probabilities for the same checkpoint is reused.
2. **Scores.** Dice per foreground class and case against the manifest's labels (NaN when both are empty, left out of
   the means, as nnU-Net); a candidate's score is the mean over classes of the per-class means over cases. The
   candidates are every run and every pair of runs (their probabilities averaged, then argmax), all on the same
   cases.
3. **The best candidate**: the highest score (ties: the earlier candidate, single runs before pairs).
4. **Postprocessing** (nnU-Net's ``determine_postprocessing``) on the best candidate's label maps: keep only the
   largest connected component of all foreground together when that raises the mean foreground Dice and lowers no
   class's Dice; then, with more than one class, keep the largest component of each class separately where that
   raises that class's Dice. 26-connectivity in 3D.
5. **The inference plan** ``OUT/inference_plan.json``: the runs and folds to ensemble, the postprocessing, and every
   candidate's scores. ``medseg predict -m OUT`` predicts with it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InferenceError, MedsegError
from medseg.inference.predictor import apply_postprocessing, keep_largest_foreground

__all__ = ["PLAN_FILE", "apply_postprocessing", "choose_postprocessing", "dice_scores", "keep_largest_foreground",
           "load_inference_plan", "select"]

PLAN_FILE = "inference_plan.json"
PLAN_KIND = "medseg inference plan"


def dice_scores(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[int]) -> dict[int, float]:
    """Dice per class; NaN when the class is in neither (nnU-Net's convention)."""
    out = {}
    for c in classes:
        p, r = prediction == c, reference == c
        total = int(p.sum()) + int(r.sum())
        out[int(c)] = float("nan") if total == 0 else 2.0 * int((p & r).sum()) / total
    return out


def _summary(per_case: Mapping[str, Mapping[int, float]], classes: Sequence[int]) -> dict[str, Any]:
    means = {}
    for c in classes:
        values = [d[c] for d in per_case.values() if not math.isnan(d[c])]
        means[c] = float(np.mean(values)) if values else float("nan")
    finite = [v for v in means.values() if not math.isnan(v)]
    return {"mean_dice": {str(c): (None if math.isnan(v) else v) for c, v in means.items()},
            "foreground_mean_dice": float(np.mean(finite)) if finite else None}


def _score(labels: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], classes: Sequence[int]
           ) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    per_case = {case: dice_scores(labels[case], references[case], classes) for case in references}
    return per_case, _summary(per_case, classes)


def choose_postprocessing(labels: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray],
                          classes: Sequence[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """nnU-Net's ``determine_postprocessing`` on cross-validation label maps (see the module docstring).

    Returns:
        The postprocessing (``largest_component_all_foreground``, ``largest_component_classes``) and the scores
        before and after each step.
    """
    _, baseline = _score(labels, references, classes)
    record: dict[str, Any] = {"before": baseline}
    chosen: dict[str, Any] = {"largest_component_all_foreground": False, "largest_component_classes": []}
    trial = {case: keep_largest_foreground(value) for case, value in labels.items()}
    _, after = _score(trial, references, classes)
    record["all_foreground"] = after
    better = (after["foreground_mean_dice"] or 0.0) > (baseline["foreground_mean_dice"] or 0.0)
    worse_class = any((after["mean_dice"][k] or 0.0) < (baseline["mean_dice"][k] or 0.0)
                      for k in baseline["mean_dice"])
    current, current_scores = labels, baseline
    if better and not worse_class:
        chosen["largest_component_all_foreground"] = True
        current, current_scores = trial, after
    if len(classes) > 1:
        from medseg.inference.predictor import largest_component_per_class

        for c in classes:
            trial = {case: largest_component_per_class(value, [c]) for case, value in current.items()}
            _, after = _score(trial, references, classes)
            record[f"class_{c}"] = after
            if (after["mean_dice"][str(c)] or 0.0) > (current_scores["mean_dice"][str(c)] or 0.0):
                chosen["largest_component_classes"].append(int(c))
                current, current_scores = trial, after
    record["after"] = current_scores
    return chosen, record


def load_inference_plan(path: str | Path) -> dict[str, Any]:
    """An inference plan written by :func:`select` (its folder or the JSON file).

    Raises:
        InferenceError: Not an inference plan, or a run it names is missing.
    """
    from medseg.utils.files import read_json

    path = Path(path)
    file = path / PLAN_FILE if path.is_dir() else path
    try:
        plan = read_json(file, "inference plan", InferenceError)
    except MedsegError as exc:
        raise InferenceError(exc.problem, exc.path or file) from None
    if not isinstance(plan, dict) or plan.get("kind") != PLAN_KIND or not plan.get("models"):
        raise InferenceError(f"not an inference plan of `medseg select` (no kind {PLAN_KIND!r} with models)", file)
    for model in plan["models"]:
        if not Path(model.get("run", "")).is_dir():
            raise InferenceError(f"the plan's run folder {model.get('run')!r} does not exist", file)
    return plan


def is_inference_plan(path: str | Path) -> bool:
    """Whether ``path`` is an inference plan folder or file of ``medseg select``."""
    path = Path(path)
    return (path / PLAN_FILE).is_file() or (path.is_file() and path.name.endswith(".json") and
                                            PLAN_KIND in path.read_text(errors="replace")[:400])


def _cv_probabilities(run: Path, out: Path, manifest: Any, folds: Sequence[int] | None, predictor_options:
                      Mapping[str, Any], log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Native-grid probabilities of every validation case of every numbered fold of ``run`` (cached in ``out``)."""
    from medseg.inference import Predictor, load_folds
    from medseg.utils.files import atomic_write, read_json

    fold_dirs = sorted((p for p in run.glob("fold_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    if folds is not None:
        fold_dirs = [p for p in fold_dirs if int(p.name[5:]) in set(folds)]
    if not fold_dirs:
        raise InferenceError("no cross-validation fold folders (fold_0 …) in the run", run)
    probabilities: dict[str, np.ndarray] = {}
    for fold_dir in fold_dirs:
        fold = int(fold_dir.name[5:])
        try:
            splits = read_json(fold_dir / "splits.json", "run's splits", InferenceError)
            val_ids = list(splits[fold]["val"])
        except (MedsegError, KeyError, IndexError, TypeError):
            raise InferenceError(f"no validation cases for fold {fold} in splits.json", fold_dir) from None
        model = load_folds([fold_dir])
        checkpoint = model[0].checkpoint
        stamp = f"{checkpoint.resolve()}:{checkpoint.stat().st_mtime_ns}"
        predictor = None
        for case_id in val_ids:
            cache = out / f"{case_id}.npz"
            if cache.is_file():
                with np.load(cache) as stored:
                    if str(stored["checkpoint"]) == stamp:
                        probabilities[case_id] = stored["probabilities"]
                        continue
            if predictor is None:
                predictor = Predictor(model, **predictor_options)
            from medseg.io import load_image

            paths = manifest.image_paths(case_id)
            images = [load_image(p) for p in paths]
            image = images[0]
            if len(images) > 1:
                import torch
                from monai.data import MetaTensor

                image = MetaTensor(torch.cat([i.as_tensor().float() for i in images]), affine=images[0].affine,
                                   meta=dict(images[0].meta))
            result = predictor.predict(image, case_id, probabilities=True)
            probs = np.asarray(result.probabilities, dtype=np.float16)
            probabilities[case_id] = probs
            import io

            buffer = io.BytesIO()
            np.savez_compressed(buffer, probabilities=probs, checkpoint=np.asarray(stamp))
            payload = buffer.getvalue()
            atomic_write(cache, lambda h, data=payload: h.write(data))
            log(f"{run.name} fold {fold}: {case_id}")
    return probabilities


def select(runs: Sequence[str | Path], manifest_path: str | Path, out: str | Path, *,
           folds: Sequence[int] | None = None, tta: bool = True, device: str = "auto",
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every run and pair of runs on cross-validation, choose the best and its postprocessing.

    Args:
        runs: Run folders of ``medseg train`` with numbered folds (``fold_0`` …) and their ``splits.json``.
        manifest_path: The dataset manifest the runs were trained on (validation cases and their labels).
        out: Folder of the inference plan and the cached cross-validation probabilities.
        folds: Folds to use (default: every numbered fold of each run; all runs must cover the same cases).
        tta: Mirroring when predicting the validation cases.
        device: Compute device.
        log: Progress lines.

    Returns:
        The inference plan (also written to ``out/inference_plan.json``).

    Raises:
        InferenceError: Runs without folds or splits, runs whose validation cases or classes differ.
    """
    from medseg.data import load_manifest
    from medseg.io import load_image
    from medseg.utils.files import FolderLock, atomic_json

    out = Path(out)
    manifest = load_manifest(manifest_path)
    names = [Path(r).resolve().name for r in runs]
    if len(set(names)) != len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    with FolderLock(out, "medseg select"):
        options = {"tta": tta, "device": device}
        probabilities = {name: _cv_probabilities(Path(run), out / "cv" / name, manifest, folds, options, log)
                         for name, run in zip(names, runs, strict=True)}
        cases = sorted(next(iter(probabilities.values())))
        for name, probs in probabilities.items():
            if sorted(probs) != cases:
                raise InferenceError(f"run {name} validates other cases than run {names[0]}; the runs must share "
                                     "their splits", out)
        classes = [v for v in sorted(manifest.label_names) if v != 0]
        references: dict[str, np.ndarray] = {}
        for case in cases:
            path = manifest.label_path(case)
            if path is None:
                raise InferenceError(f"case {case} has no label in the manifest", manifest_path)
            references[case] = np.asarray(load_image(path)[0].numpy()).astype(np.int16)
        candidates: list[tuple[str, list[str]]] = [(n, [n]) for n in names]
        candidates += [(f"{a}+{b}", [a, b]) for a, b in itertools.combinations(names, 2)]
        scores: dict[str, Any] = {}
        label_maps: dict[str, dict[str, np.ndarray]] = {}
        for name, members in candidates:
            maps = {}
            for case in cases:
                stack = [probabilities[m][case].astype(np.float32) for m in members]
                shapes = {s.shape for s in stack}
                if len(shapes) != 1:
                    raise InferenceError(f"case {case}: the runs predict different class counts {sorted(shapes)}",
                                         out)
                maps[case] = np.mean(stack, axis=0).argmax(0).astype(np.int16)
            per_case, summary = _score(maps, references, classes)
            scores[name] = {**summary, "members": members, "per_case": {
                case: {str(c): (None if math.isnan(v) else v) for c, v in d.items()} for case, d in per_case.items()}}
            label_maps[name] = maps
            log(f"{name}: foreground mean Dice {summary['foreground_mean_dice']}")
        best = max(candidates, key=lambda c: scores[c[0]]["foreground_mean_dice"] or -1.0)[0]
        postprocessing, pp_record = choose_postprocessing(label_maps[best], references, classes)
        runs_by_name = dict(zip(names, runs, strict=True))
        plan = {
            "kind": PLAN_KIND,
            "selected": best,
            "models": [{"run": str(Path(runs_by_name[m]).resolve()), "folds": sorted(
                int(p.name[5:]) for p in Path(runs_by_name[m]).glob("fold_*") if p.name[5:].isdigit()
                and (folds is None or int(p.name[5:]) in set(folds)))} for m in scores[best]["members"]],
            "postprocessing": postprocessing,
            "postprocessing_scores": pp_record,
            "cases": cases,
            "candidates": {k: {kk: vv for kk, vv in v.items() if kk != "per_case"} for k, v in scores.items()},
            "per_case": {k: v["per_case"] for k, v in scores.items()},
            "rule": "nnU-Net v2 find_best_configuration and determine_postprocessing",
        }
        atomic_json(out / PLAN_FILE, json.loads(json.dumps(plan)))
    return plan
