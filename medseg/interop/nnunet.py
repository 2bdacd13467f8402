"""Run nnU-Net v2 results folders in medseg, unchanged.

An nnU-Net v2 results folder (``<Trainer>__<Plans>__<configuration>``; Isensee et al., Nature Methods 2021) holds
``plans.json``, ``dataset.json`` and ``fold_K/checkpoint_final.pth`` (or ``checkpoint_best.pth``). This module turns
it into medseg's :class:`~medseg.inference.predictor.FoldModel` objects, so that ``medseg predict -m FOLDER`` runs it
through medseg's own preprocessing, sliding window and export:

- **Axis order.** nnU-Net reads images with SimpleITK, whose arrays are the stored voxel order reversed
  (``z, y, x``); medseg keeps the stored order (``x, y, z``). nnU-Net's ``transpose_forward`` ``t`` therefore
  becomes ``2 - t`` per entry here; every transposed-order quantity (spacing, patch, kernels, strides) is the same.
- **Preprocessing** (nnU-Net's ``DefaultPreprocessor``): crop to nonzero, the plans' normalisation per channel
  (``CTNormalization`` with the ``foreground_intensity_properties_per_channel`` clip and statistics,
  ``ZScoreNormalization`` with ``use_mask_for_norm``, ``NoNormalization``, ``RescaleTo01Normalization``,
  ``RGBTo01Normalization``), ``resample_data_or_seg_to_shape`` with the plans' orders and ``force_separate_z``.
- **Network**: ``PlainConvUNet`` / ``ResidualEncoderUNet`` from the plans' ``architecture`` (or the pre-2.3
  ``UNet_class_name`` form, converted as nnU-Net's ``ConfigurationManager`` does), built as medseg's ``nnunet`` /
  ``nnunet_resenc`` and loaded through :func:`medseg.models.nnunet.state_dict.from_nnunet_state_dict`.
- **Inference**: mirroring over the checkpoint's ``inference_allowed_mirroring_axes`` (none when it holds
  ``None``), a fold ensemble averages **logits** as ``nnUNetPredictor`` does, labels and names from
  ``dataset.json``; region-based models (``regions_class_order``) get a sigmoid per region, and each region above
  0.5 writes its class in the plans' order, as nnU-Net's ``LabelManager`` does.
- **Checkpoints** load with ``torch.load(weights_only=True)``; the only globals allowed beyond torch's own are
  numpy's scalar reconstruction and numeric dtypes (:data:`NNUNET_SAFE_GLOBALS`), which nnU-Net's training log
  (``np.float64`` losses and Dice values) needs. Nothing else is unpickled.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InferenceError, MedsegError

__all__ = [
    "CHECKPOINT_FILES",
    "NNUNET_SAFE_GLOBALS",
    "is_nnunet_folder",
    "load_nnunet_checkpoint",
    "load_nnunet_folds",
    "medseg_plans_from_nnunet",
    "nnunet_folds",
]

#: medseg's ``--checkpoint`` names and nnU-Net's files.
CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth", "latest": "checkpoint_latest.pth"}

#: nnU-Net's normalisation classes and medseg's schemes.
NORMALIZATION_SCHEMES = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale_to_0_1",
    "RGBTo01Normalization": "rgb_to_0_1",
}
#: The resampling functions whose rules medseg's resampling implements.
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing")
#: Architecture classes and the medseg models they become.
ARCHITECTURES = {"PlainConvUNet": "nnunet", "ResidualEncoderUNet": "nnunet_resenc"}


def _numpy_safe_globals() -> list[Any]:
    """Numpy's scalar reconstruction and numeric dtype classes, under the names old and new numpy pickle them."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    entries: list[Any] = [np.dtype, (scalar, "numpy.core.multiarray.scalar"),
                          (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType",
                 "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType"):
        cls = getattr(dtypes, name, None)
        if cls is not None:
            entries.append(cls)
    return entries


#: The globals beyond torch's own that ``torch.load(weights_only=True)`` may unpickle in an nnU-Net checkpoint.
NNUNET_SAFE_GLOBALS: list[Any] = _numpy_safe_globals()


def load_nnunet_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with :data:`NNUNET_SAFE_GLOBALS` allowed, on the CPU.

    Raises:
        InferenceError: The file cannot be read, or it holds an object outside the allow-list (named).
    """
    import torch

    try:
        with torch.serialization.safe_globals(NNUNET_SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        marker = "Unsupported global: GLOBAL "
        if marker in text:
            name = text.split(marker, 1)[1].split(" ", 1)[0]
            raise InferenceError(f"the checkpoint holds a Python object medseg does not unpickle ({name}); only "
                                 "tensors, plain values and numpy numbers are read", path) from None
        raise InferenceError(f"cannot read the checkpoint: {text[:200]}", path) from None
    if not isinstance(state, dict) or "network_weights" not in state:
        raise InferenceError("not an nnU-Net checkpoint (no 'network_weights')", path)
    return state


def is_nnunet_folder(path: str | Path) -> bool:
    """Whether ``path`` is an nnU-Net results folder (or one of its ``fold_K`` folders)."""
    path = Path(path)
    if path.is_dir() and path.name.startswith("fold_") and not (path / "plans.json").is_file():
        path = path.parent
    return (path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()
            and not (path / "config.yaml").is_file())


def nnunet_folds(folder: Path, folds: Sequence[int | str] | None, checkpoint: str) -> list[Path]:
    """The ``fold_K`` folders to load (nnU-Net's rule: all numbered folds with the checkpoint, else ``fold_all``).

    Raises:
        InferenceError: A requested fold or checkpoint is missing.
    """
    name = CHECKPOINT_FILES[checkpoint]
    if folder.name.startswith("fold_") and not (folder / "plans.json").is_file():
        if not (folder / name).is_file():
            raise InferenceError(f"no {name}", folder)
        return [folder]
    present = {p.name[5:]: p for p in folder.glob("fold_*") if p.is_dir()}
    if folds is None:
        numbered = sorted((k for k in present if k.isdigit() and (present[k] / name).is_file()), key=int)
        chosen = numbered or [k for k in ("all",) if k in present and (present[k] / name).is_file()]
        if not chosen:
            raise InferenceError(f"no fold_K/{name} in the nnU-Net results folder", folder)
        return [present[k] for k in chosen]
    out = []
    for fold in folds:
        key = str(fold)
        if key not in present:
            raise InferenceError(f"no fold_{key} folder", folder)
        if not (present[key] / name).is_file():
            raise InferenceError(f"no {name} (is training finished? --checkpoint chooses another)", present[key])
        out.append(present[key])
    return out


def _resolved_configuration(plans: Mapping[str, Any], name: str, where: Path) -> dict[str, Any]:
    """nnU-Net's ``PlansManager.get_configuration``: ``inherits_from`` applied recursively."""
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        raise InferenceError(f"the plans have no configuration {name!r} (they have {', '.join(configurations)})",
                             where)
    seen: list[str] = []
    chain = [name]
    while "inherits_from" in (configurations.get(chain[-1]) or {}):
        parent = configurations[chain[-1]]["inherits_from"]
        if parent in seen or parent not in configurations:
            raise InferenceError(f"configuration {chain[-1]!r} inherits from {parent!r}, which the plans do not "
                                 "resolve", where)
        seen.append(parent)
        chain.append(parent)
    resolved: dict[str, Any] = {}
    for entry in reversed(chain):
        resolved.update(copy.deepcopy(configurations[entry]))
    return resolved


def _architecture(cfg: Mapping[str, Any], where: Path) -> dict[str, Any]:
    """The ``architecture`` entry, converted from the pre-2.3 plans form as nnU-Net's ``ConfigurationManager`` does."""
    if "architecture" in cfg:
        return copy.deepcopy(dict(cfg["architecture"]))
    try:
        unet = str(cfg["UNet_class_name"])
        n_stages = len(cfg["n_conv_per_stage_encoder"])
        key = "n_conv_per_stage" if unet == "PlainConvUNet" else "n_blocks_per_stage"
        dims = len(cfg["patch_size"])
        return {
            "network_class_name": unet,
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": [min(int(cfg["UNet_base_num_features"]) * 2**i,
                                           int(cfg["unet_max_num_features"])) for i in range(n_stages)],
                "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
                "kernel_sizes": cfg["conv_kernel_sizes"],
                "strides": cfg["pool_op_kernel_sizes"],
                key: cfg["n_conv_per_stage_encoder"],
                "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
        }
    except (KeyError, TypeError) as exc:
        raise InferenceError(f"the plans describe no network (no 'architecture', and the old form lacks {exc})",
                             where) from None


def _model_entry(arch: Mapping[str, Any], in_channels: int, out_channels: int, where: Path) -> dict[str, Any]:
    """Medseg's plans ``model`` entry for nnU-Net's architecture entry."""
    class_name = str(arch.get("network_class_name", "")).rsplit(".", 1)[-1]
    if class_name not in ARCHITECTURES:
        raise InferenceError(f"network {arch.get('network_class_name')!r} is not one medseg can build (it builds "
                             f"{' and '.join(ARCHITECTURES)})", where)
    kw = dict(arch.get("arch_kwargs") or {})
    conv = str(kw.get("conv_op", ""))
    dims = 3 if conv.endswith("Conv3d") else 2 if conv.endswith("Conv2d") else 0
    if not dims:
        raise InferenceError(f"unsupported conv_op {conv!r} (Conv2d or Conv3d)", where)
    norm = str(kw.get("norm_op") or "")
    if not norm.rsplit(".", 1)[-1].startswith("InstanceNorm"):
        raise InferenceError(f"unsupported norm_op {norm!r} (nnU-Net's instance norm)", where)
    nonlin = str(kw.get("nonlin") or "")
    nonlin_kwargs = dict(kw.get("nonlin_kwargs") or {})
    if nonlin.rsplit(".", 1)[-1] == "LeakyReLU":
        act: Any = ("leakyrelu", {"negative_slope": float(nonlin_kwargs.get("negative_slope", 0.01)),
                                  "inplace": True})
    elif nonlin.rsplit(".", 1)[-1] == "ReLU":
        act = ("relu", {"inplace": True})
    else:
        raise InferenceError(f"unsupported nonlin {nonlin!r} (LeakyReLU or ReLU)", where)
    if kw.get("nonlin_first"):
        raise InferenceError("nonlin_first networks are not supported", where)
    if kw.get("pool", "conv") != "conv" or kw.get("pool_type", "conv") != "conv":
        raise InferenceError("only strided-convolution downsampling (nnU-Net's default) is supported", where)
    if class_name == "ResidualEncoderUNet" and (kw.get("block") not in (None, "BasicBlockD") or
                                                kw.get("bottleneck_channels") or kw.get("stem_channels") or
                                                kw.get("squeeze_excitation")):
        raise InferenceError("only ResidualEncoderUNet with BasicBlockD blocks and the default stem is supported",
                             where)
    norm_kwargs = dict(kw.get("norm_op_kwargs") or {})
    kwargs: dict[str, Any] = {
        "kernel_sizes": [list(k) if isinstance(k, list | tuple) else [k] * dims for k in kw["kernel_sizes"]],
        "strides": [list(s) if isinstance(s, list | tuple) else [s] * dims for s in kw["strides"]],
        "features_per_stage": [int(f) for f in kw["features_per_stage"]],
        "n_conv_per_stage_decoder": kw["n_conv_per_stage_decoder"],
        "conv_bias": bool(kw.get("conv_bias", False)),
        "norm": ("instance", {"eps": float(norm_kwargs.get("eps", 1e-5)), "affine": bool(norm_kwargs.get("affine",
                                                                                                          False))}),
        "act": act,
    }
    if class_name == "PlainConvUNet":
        kwargs["n_conv_per_stage"] = kw["n_conv_per_stage"]
    else:
        kwargs["n_blocks_per_stage"] = kw["n_blocks_per_stage"]
    return {"name": ARCHITECTURES[class_name], "spatial_dims": dims, "in_channels": in_channels,
            "out_channels": out_channels, "kwargs": kwargs}


def _resampling(cfg: Mapping[str, Any], where: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"separate_z_anisotropy_threshold": 3.0}
    force: list[Any] = []
    for key, name in (("images", "data"), ("labels", "seg"), ("probabilities", "probabilities")):
        function = str(cfg.get(f"resampling_fn_{name}", ""))
        if function not in RESAMPLING_FUNCTIONS:
            raise InferenceError(f"resampling function {function!r} is not one medseg implements "
                                 f"({', '.join(RESAMPLING_FUNCTIONS)})", where)
        kwargs = dict(cfg.get(f"resampling_fn_{name}_kwargs") or {})
        out[key] = {"order": int(kwargs.get("order", 3 if key == "images" else 1)),
                    "order_z": int(kwargs.get("order_z", 0))}
        force.append(kwargs.get("force_separate_z"))
        if "separate_z_anisotropy_threshold" in kwargs:
            out["separate_z_anisotropy_threshold"] = float(kwargs["separate_z_anisotropy_threshold"])
    if len({repr(f) for f in force}) != 1:
        raise InferenceError(f"the plans force separate-z resampling differently for data, labels and "
                             f"probabilities ({force}); medseg applies one rule", where)
    out["force_separate_z"] = force[0]
    return out


def _labels(dataset: Mapping[str, Any], regions_class_order: Sequence[int] | None, where: Path
            ) -> tuple[dict[str, int], int, bool]:
    """Label name → value of the output label map, the network's output channels, and whether it has regions."""
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or "background" not in labels:
        raise InferenceError("dataset.json has no 'labels' with 'background'", where)
    entries = [(str(k), v) for k, v in labels.items() if k != "ignore"]
    has_regions = any(isinstance(v, list | tuple) and len(v) > 1 for _, v in entries)
    if not has_regions:
        values = {k: int(v[0] if isinstance(v, list | tuple) else v) for k, v in entries}
        if sorted(values.values()) != list(range(len(values))):
            raise InferenceError(f"dataset.json labels must be consecutive from 0 (nnU-Net's rule), got "
                                 f"{sorted(values.values())}", where)
        return values, len(values), False
    regions = [(k, v) for k, v in entries if not (v == 0 or (isinstance(v, list | tuple) and set(v) == {0}))]
    if regions_class_order is None or len(regions_class_order) != len(regions):
        raise InferenceError(f"a region-based dataset.json needs 'regions_class_order' with one entry per region "
                             f"({len(regions)}), got {regions_class_order}", where)
    names = {"background": 0}
    for (name, _), value in zip(regions, regions_class_order, strict=True):
        names[name] = int(value)
    return names, len(regions), True


def medseg_plans_from_nnunet(plans: Mapping[str, Any], dataset: Mapping[str, Any], configuration: str,
                             where: str | Path = "plans.json") -> dict[str, Any]:
    """Medseg plans (``medseg/planning/PLANS.md``'s form) with the one configuration of an nnU-Net v2 plans file.

    Args:
        plans: nnU-Net's ``plans.json``.
        dataset: nnU-Net's ``dataset.json`` (``channel_names``/``modality``, ``labels``, ``regions_class_order``).
        configuration: The configuration a checkpoint was trained with.
        where: The folder named in errors.

    Returns:
        Plans that :func:`medseg.preprocessing.configuration_of` reads; ``nnunet`` records the source.

    Raises:
        InferenceError: Something in the plans medseg cannot reproduce (a custom network, preprocessor, resampling
            or normalisation), named.
    """
    where = Path(where)
    cfg = _resolved_configuration(plans, configuration, where)
    try:
        channels = dataset.get("channel_names") or dataset.get("modality")
        channel_list = [{"name": str(v), "modality": str(v)} for _, v in sorted(channels.items(), key=lambda kv:
                                                                                  int(kv[0]))]
        nn_forward = [int(a) for a in plans["transpose_forward"]]
        preprocessor = str(cfg.get("preprocessor_name", "DefaultPreprocessor"))
        if preprocessor != "DefaultPreprocessor":
            raise InferenceError(f"preprocessor {preprocessor!r} is not nnU-Net's DefaultPreprocessor", where)
        schemes = list(cfg["normalization_schemes"])
        use_mask = list(cfg.get("use_mask_for_norm") or [False] * len(schemes))
        intensity = plans.get("foreground_intensity_properties_per_channel") or {}
        normalization = []
        for index, (scheme, masked) in enumerate(zip(schemes, use_mask, strict=True)):
            if scheme not in NORMALIZATION_SCHEMES:
                raise InferenceError(f"normalisation {scheme!r} is not one medseg implements "
                                     f"({', '.join(NORMALIZATION_SCHEMES)})", where)
            entry: dict[str, Any] = {"channel": index, "name": channel_list[index]["name"],
                                     "modality": channel_list[index]["modality"],
                                     "scheme": NORMALIZATION_SCHEMES[scheme], "use_mask_for_norm": bool(masked)}
            if scheme == "CTNormalization":
                stats = intensity[str(index)]
                entry.update(clip_lower=float(stats["percentile_00_5"]), clip_upper=float(stats["percentile_99_5"]),
                             mean=float(stats["mean"]), std=float(stats["std"]))
            normalization.append(entry)
        if len(normalization) != len(channel_list):
            raise InferenceError(f"the plans normalise {len(normalization)} channels, dataset.json names "
                                 f"{len(channel_list)}", where)
        labels, heads, has_regions = _labels(dataset, dataset.get("regions_class_order"), where)
        arch = _architecture(cfg, where)
        previous = cfg.get("previous_stage")
        in_channels = len(channel_list) + (len(labels) - 1 if previous else 0)
        model = _model_entry(arch, in_channels, heads, where)
        patch = [int(p) for p in cfg["patch_size"]]
        spacing = [float(s) for s in cfg["spacing"]]
        strides = model["kwargs"]["strides"]
        n_stages = len(strides)
        num_pool = [int(sum(1 for s in strides if s[a] > 1)) for a in range(len(patch))]
    except InferenceError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InferenceError(f"malformed nnU-Net plans or dataset.json ({exc!r} missing or wrong)", where) from None
    if len(nn_forward) != 3 or sorted(nn_forward) != [0, 1, 2]:
        raise InferenceError(f"transpose_forward {nn_forward} is not a permutation of 3 axes", where)
    forward = [2 - a for a in nn_forward]  # nnU-Net's arrays are z, y, x; medseg's x, y, z
    backward = [forward.index(a) for a in range(3)]
    entry = {
        "data_identifier": str(cfg.get("data_identifier", configuration)),
        "spatial_dims": len(patch),
        "spacing": spacing,
        "transpose_forward": forward,
        "transpose_backward": backward,
        "median_image_size_in_voxels": [float(m) for m in cfg.get("median_image_size_in_voxels") or []],
        "patch_size": patch,
        "batch_size": int(cfg.get("batch_size", 2)),
        "batch_dice": bool(cfg.get("batch_dice", False)),
        "normalization": normalization,
        "resampling": _resampling(cfg, where),
        "topology": {"n_stages": n_stages, "kernel_sizes": model["kwargs"]["kernel_sizes"], "strides": strides,
                     "features_per_stage": model["kwargs"]["features_per_stage"], "num_pool_per_axis": num_pool,
                     "n_conv_per_stage": model["kwargs"].get("n_conv_per_stage"),
                     "n_blocks_per_stage": model["kwargs"].get("n_blocks_per_stage")},
        "model": model,
        "previous_stage": previous,
        "next_stage": cfg.get("next_stage"),
    }
    return {
        "dataset_name": str(plans.get("dataset_name", "")),
        "plans_identifier": str(plans.get("plans_name", "")),
        "channels": channel_list,
        "labels": labels,
        "transpose_forward": forward,
        "transpose_backward": backward,
        "foreground_intensity_properties_per_channel": copy.deepcopy(dict(intensity)),
        "configurations": {configuration: entry},
        "nnunet": {"regions_class_order": [int(c) for c in dataset["regions_class_order"]] if has_regions else None,
                   "transpose_forward": nn_forward, "plans_name": plans.get("plans_name"),
                   "image_reader_writer": plans.get("image_reader_writer")},
    }


def _read(path: Path, what: str) -> dict[str, Any]:
    from medseg.utils.files import read_json

    try:
        data = read_json(path, what, InferenceError)
    except MedsegError as exc:
        raise InferenceError(exc.problem, exc.path or path) from None
    if not isinstance(data, dict):
        raise InferenceError(f"{what} must be a JSON object", path)
    return data


def load_nnunet_folds(folder: str | Path, folds: Sequence[int | str] | None = None,
                      checkpoint: str = "final") -> list[Any]:
    """Load the selected folds of an nnU-Net v2 results folder as medseg ``FoldModel`` objects.

    Args:
        folder: The results folder (``plans.json``, ``dataset.json``, ``fold_K/``) or one ``fold_K`` in it.
        folds: Fold numbers or ``"all"``; ``None``: nnU-Net's choice (every numbered fold holding the checkpoint,
            else ``fold_all``).
        checkpoint: ``final``, ``best`` or ``latest`` (``checkpoint_<name>.pth``).

    Returns:
        One :class:`~medseg.inference.predictor.FoldModel` per fold (``ensemble="logits"``, the checkpoint's
        mirroring axes, regions as the dataset declares).

    Raises:
        InferenceError: Missing files, an architecture or preprocessing medseg cannot reproduce, weights that do not
            fit the network the plans describe, or a checkpoint holding objects outside the allow-list.
    """
    from medseg.inference.predictor import FoldModel
    from medseg.models import create_model_from_plans
    from medseg.models.adapters import volume_windows
    from medseg.models.nnunet.state_dict import from_nnunet_state_dict
    from medseg.preprocessing import configuration_of

    folder = Path(folder)
    if checkpoint not in CHECKPOINT_FILES:
        raise InferenceError(f"unknown checkpoint {checkpoint!r} (use {', '.join(CHECKPOINT_FILES)})")
    root = folder.parent if folder.name.startswith("fold_") and not (folder / "plans.json").is_file() else folder
    nn_plans = _read(root / "plans.json", "nnU-Net plans")
    dataset = _read(root / "dataset.json", "nnU-Net dataset.json")
    loaded = []
    for fold_dir in nnunet_folds(folder, folds, checkpoint):
        path = fold_dir / CHECKPOINT_FILES[checkpoint]
        state = load_nnunet_checkpoint(path)
        init = state.get("init_args") or {}
        configuration = str(init.get("configuration") or root.name.rsplit("__", 1)[-1])
        plans = medseg_plans_from_nnunet(nn_plans, dataset, configuration, root)
        cfg = configuration_of(plans, configuration)
        model = create_model_from_plans(cfg.model.as_dict(), deep_supervision=False)
        residual = cfg.model.name == "nnunet_resenc"
        try:
            weights = from_nnunet_state_dict(state["network_weights"], residual=residual)
            model.load_state_dict(weights)
        except (RuntimeError, MedsegError) as exc:
            text = exc.problem if isinstance(exc, MedsegError) else " ".join(str(exc).split())[:300]
            raise InferenceError(f"the weights do not fit the network the plans describe: {text}", path) from None
        model.eval()
        axes = state.get("inference_allowed_mirroring_axes")
        mirror_axes = [] if axes is None else [int(a) for a in axes]
        patch = list(cfg.patch_size)
        model, patch, mirror_axes = volume_windows(model, patch, mirror_axes)
        model.eval()
        fold_name = fold_dir.name[5:]
        previous_run = None
        if cfg.previous_stage:  # nnU-Net's cascade: the previous stage is the sibling folder of the same trainer
            parts = root.name.split("__")
            previous_run = root.parent / "__".join([*parts[:-1], str(cfg.previous_stage)])
            if len(parts) < 3 or not is_nnunet_folder(previous_run):
                raise InferenceError(f"{configuration} is a cascade stage; its {cfg.previous_stage} results folder "
                                     f"{previous_run.name} is not beside it", root)
        loaded.append(FoldModel(run_dir=fold_dir, fold=int(fold_name) if fold_name.isdigit() else fold_name,
                                configuration=configuration, plans=plans, patch_size=patch, mirror_axes=mirror_axes,
                                model=model, checkpoint=path, ensemble="logits",
                                regions_class_order=plans["nnunet"]["regions_class_order"],
                                previous_stage_run=previous_run))
    first = loaded[0]
    for other in loaded[1:]:
        if other.configuration != first.configuration:
            raise InferenceError(f"{other.run_dir} was trained as {other.configuration}, {first.run_dir} as "
                                 f"{first.configuration}; one results folder holds one configuration", root)
    return loaded
