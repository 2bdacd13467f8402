"""Export a medseg run to an nnU-Net v2 results folder that nnU-Net's own predictor accepts.

``medseg export-nnunet RUN -o FOLDER`` writes ``FOLDER/plans.json``, ``FOLDER/dataset.json`` and
``FOLDER/fold_K/checkpoint_final.pth`` for every fold of a run trained with medseg's ``nnunet`` or
``nnunet_resenc`` network: the plans in nnU-Net v2's form (``architecture`` with ``PlainConvUNet`` /
``ResidualEncoderUNet`` of ``dynamic_network_architectures``, ``normalization_schemes``, the
``resample_data_or_seg_to_shape`` resampling with the run's orders, ``transpose_forward`` for SimpleITK's ``z, y, x``
arrays), the weights under nnU-Net's state-dict keys (:func:`medseg.models.nnunet.state_dict.to_nnunet_state_dict`),
and the checkpoint entries ``nnUNetPredictor`` reads (``network_weights``, ``trainer_name``, ``init_args``,
``inference_allowed_mirroring_axes``). The patch written is the one the run trained with. Only nnU-Net's
building blocks can be exported: instance norm and leaky ReLU (or ReLU), convolutions with or without bias.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medseg.errors import InferenceError

__all__ = ["export_nnunet", "nnunet_plans_from_medseg"]

_SCHEMES = {"ct": "CTNormalization", "zscore": "ZScoreNormalization", "none": "NoNormalization",
            "rescale_to_0_1": "RescaleTo01Normalization", "rgb_to_0_1": "RGBTo01Normalization"}
_CLASSES = {"nnunet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "nnunet_resenc": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model) if type(model).__name__ == "SliceWise" else model


def _architecture(model: nn.Module, where: Path) -> dict[str, Any]:
    """nnU-Net's ``architecture`` entry for a medseg ``nnunet`` / ``nnunet_resenc`` network as built."""
    name = getattr(model, "model_name", type(model).__name__)
    if name not in _CLASSES:
        raise InferenceError(f"model {name!r} has no nnU-Net form; export takes runs of 'nnunet' or 'nnunet_resenc'",
                             where)
    dims = int(model.spatial_dims)  # type: ignore[union-attr]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm)]
    others = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm)
              and not isinstance(m, nn.modules.instancenorm._InstanceNorm)]
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU | nn.ReLU)]
    if not norms or others or not acts or len({type(a) for a in acts}) != 1:
        raise InferenceError(f"{name}: nnU-Net's networks use instance norm and one activation; this one does not",
                             where)
    act = acts[0]
    if isinstance(act, nn.LeakyReLU):
        nonlin, nonlin_kwargs = "torch.nn.LeakyReLU", {"inplace": True}  # nnU-Net's form; slope 0.01 by default
        if float(act.negative_slope) != 0.01:
            nonlin_kwargs = {"negative_slope": float(act.negative_slope), "inplace": True}
    else:
        nonlin, nonlin_kwargs = "torch.nn.ReLU", {"inplace": True}
    residual = name == "nnunet_resenc"
    encoder = model.encoder  # type: ignore[union-attr]
    decoder = model.decoder  # type: ignore[union-attr]
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))
    kwargs: dict[str, Any] = {
        "n_stages": len(encoder),
        "features_per_stage": [int(f) for f in model.features_per_stage],  # type: ignore[union-attr]
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [list(k) for k in model.kernel_sizes],  # type: ignore[union-attr]
        "strides": [list(s) for s in model.strides],  # type: ignore[union-attr]
    }
    if residual:
        kwargs["n_blocks_per_stage"] = [len(stage) for stage in encoder]
    else:
        kwargs["n_conv_per_stage"] = [len(stage) for stage in encoder]
    kwargs.update({
        "n_conv_per_stage_decoder": [len(stage) for stage in decoder.stages],
        "conv_bias": first_conv.bias is not None,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": float(norms[0].eps), "affine": bool(norms[0].affine)},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nonlin,
        "nonlin_kwargs": nonlin_kwargs,
    })
    return {"network_class_name": _CLASSES[name], "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def nnunet_plans_from_medseg(plans: Mapping[str, Any], configuration: str, model: nn.Module,
                             patch_size: Sequence[int], where: str | Path = "plans.json",
                             regions: Sequence[Sequence[int]] | None = None,
                             regions_class_order: Sequence[int] | None = None,
                             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """nnU-Net v2's ``plans.json`` and ``dataset.json`` for one configuration of medseg plans and its network.

    Args:
        plans: medseg plans.
        configuration: The configuration the run trained.
        model: The trained network (medseg ``nnunet`` / ``nnunet_resenc``; a 2D one may be wrapped slice-wise).
        patch_size: The patch the run trained with (written as the configuration's patch: nnU-Net's windows).
        where: Named in errors.
        regions: A region-based run's regions (label sets); ``dataset.json`` then declares them with
            ``regions_class_order``, as nnU-Net's region-based datasets do.
        regions_class_order: The class each region writes.

    Raises:
        InferenceError: The network or a preprocessing step has no nnU-Net equivalent.
    """
    from medseg.preprocessing import configuration_of

    where = Path(where)
    cfg = configuration_of(plans, configuration)
    if cfg.previous_stage:
        raise InferenceError("cascade stages are exported with their previous stage's run; export "
                             f"{cfg.previous_stage} and this run to sibling folders", where)
    forward = [2 - a for a in cfg.transpose_forward]  # medseg's x, y, z → SimpleITK's z, y, x
    backward = [forward.index(a) for a in range(3)]
    intensity = copy.deepcopy(dict(plans.get("foreground_intensity_properties_per_channel") or {}))
    schemes, use_mask = [], []
    for index, entry in enumerate(cfg.normalization):
        scheme = str(entry["scheme"])
        if scheme not in _SCHEMES:
            raise InferenceError(f"normalisation {scheme!r} has no nnU-Net equivalent", where)
        schemes.append(_SCHEMES[scheme])
        use_mask.append(bool(entry.get("use_mask_for_norm", False)))
        if scheme == "ct":
            stats = dict(intensity.get(str(index)) or {})
            stats.update(mean=float(entry["mean"]), std=float(entry["std"]), percentile_00_5=float(entry["clip_lower"]),
                         percentile_99_5=float(entry["clip_upper"]))
            for key in ("max", "min", "median"):
                stats.setdefault(key, stats["mean"])
            intensity[str(index)] = stats
    resampling = cfg.resampling
    force = resampling.get("force_separate_z")

    def orders(key: str, is_seg: bool, default: int) -> dict[str, Any]:
        entry = dict(resampling.get(key) or {})
        return {"is_seg": is_seg, "order": int(entry.get("order", default)), "order_z": int(entry.get("order_z", 0)),
                "force_separate_z": force}

    configuration_entry = {
        "data_identifier": cfg.data_identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": cfg.batch_size,
        "patch_size": [int(p) for p in patch_size],
        "median_image_size_in_voxels": [float(m) for m in cfg.median_image_size_in_voxels],
        "spacing": [float(s) for s in cfg.spacing],
        "normalization_schemes": schemes,
        "use_mask_for_norm": use_mask,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": orders("images", False, 3),
        "resampling_fn_seg_kwargs": orders("labels", True, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": orders("probabilities", False, 1),
        "architecture": _architecture(_unwrap(model), where),
        "batch_dice": cfg.batch_dice,
    }
    nn_plans = {
        "dataset_name": str(plans.get("dataset_name") or "medseg"),
        "plans_name": str(plans.get("plans_identifier") or "medsegPlans"),
        "original_median_spacing_after_transp": [float(s) for s in plans.get("original_median_spacing_after_transp")
                                                 or cfg.spacing],
        "original_median_shape_after_transp": [int(s) for s in plans.get("original_median_shape_after_transp")
                                               or cfg.median_image_size_in_voxels],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": forward,
        "transpose_backward": backward,
        "configurations": {configuration: configuration_entry},
        "experiment_planner_used": "medseg",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity,
    }
    names = cfg.label_names
    labels: dict[str, Any] = {("background" if value == 0 else names[value]): value for value in sorted(names)}
    if regions:
        labels = {"background": 0}
        for region in regions:
            labels["+".join(names.get(int(v), str(v)) for v in region)] = [int(v) for v in region]
    dataset = {
        "name": nn_plans["dataset_name"],
        "channel_names": {str(i): str(c.get("name", f"channel{i}")) if isinstance(c, Mapping) else str(c)
                          for i, c in enumerate(cfg.channels)},
        "labels": labels,
        "numTraining": int(plans.get("num_training_cases") or 0),
        "file_ending": ".nii.gz",
    }
    if regions:
        dataset["regions_class_order"] = [int(c) for c in regions_class_order or []]
    if dataset["channel_names"] == {}:
        dataset["channel_names"] = {str(i): str(e.get("name", f"channel{i}")) for i, e in enumerate(cfg.normalization)}
    return nn_plans, dataset


def export_nnunet(run: str | Path, out: str | Path, folds: Sequence[int | str] | None = None,
                  checkpoint: str = "final") -> list[Path]:
    """Write the nnU-Net v2 results folder ``out`` for the run folder ``run`` (see the module docstring).

    Args:
        run: Run folder of ``medseg train`` (or one ``fold_K`` of it).
        out: The results folder to write (created; existing files of the same names are replaced).
        folds: Folds to export (default: every fold folder).
        checkpoint: ``final``, ``best`` or ``latest``; written as ``checkpoint_final.pth`` (what nnU-Net loads by
            default).

    Returns:
        The files written.

    Raises:
        InferenceError: Not a run, a network or preprocessing without an nnU-Net form, folds trained differently.
    """
    import torch

    from medseg.inference.predictor import _fold_dirs, load_fold
    from medseg.models.nnunet.state_dict import to_nnunet_state_dict
    from medseg.utils.files import atomic_write_many

    run, out = Path(run), Path(out)
    fold_dirs = _fold_dirs(run, folds)
    files: dict[Path, bytes | str] = {}
    reference: tuple[Any, Any] | None = None
    import json

    for fold_dir in fold_dirs:
        fold = load_fold(fold_dir, checkpoint)
        model = _unwrap(fold.model)
        spatial = int(model.spatial_dims)  # type: ignore[union-attr]
        patch = fold.patch_size[1:] if spatial == 2 else fold.patch_size
        mirror = sorted({a - 1 for a in fold.mirror_axes} if spatial == 2 else set(fold.mirror_axes))
        from medseg.config import read_yaml

        settings = read_yaml(fold_dir / "config.yaml") if (fold_dir / "config.yaml").is_file() else {}
        nn_plans, dataset = nnunet_plans_from_medseg(fold.plans, fold.configuration, model, patch, fold_dir,
                                                     (settings or {}).get("regions"), fold.regions_class_order)
        if reference is None:
            reference = (nn_plans, dataset)
        elif reference != (nn_plans, dataset):
            raise InferenceError("the folds were trained with different plans or settings; export them to separate "
                                 "folders (--folds)", fold_dir)
        name = "all" if fold.fold == "all" else str(fold.fold if isinstance(fold.fold, str) else int(fold.fold))
        state = {
            "network_weights": to_nnunet_state_dict(model),
            "init_args": {"plans": nn_plans, "configuration": fold.configuration,
                          "fold": name if name == "all" else int(name), "dataset_json": dataset},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": tuple(mirror),
            "current_epoch": 0,
            "_best_ema": None,
            "exported_from": str(fold.checkpoint.resolve()),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        files[out / f"fold_{name}" / "checkpoint_final.pth"] = buffer.getvalue()
    if reference is None:
        raise InferenceError("no folds to export", run)
    files[out / "plans.json"] = json.dumps(reference[0], indent=2)
    files[out / "dataset.json"] = json.dumps(reference[1], indent=2)
    return atomic_write_many(files)
