"""Small nnU-Net v2 results folders written the way nnU-Net v2 (2.8) writes them, without nnU-Net.

``plans.json`` has every key ``ExperimentPlanner.get_plans_for_configuration`` and ``plan_experiment`` write; the
checkpoint has the entries ``nnUNetTrainer.save_checkpoint`` writes (``network_weights``, ``optimizer_state``,
``grad_scaler_state``, ``logging`` with numpy float64 values as nnU-Net's logger stores them, ``_best_ema``,
``current_epoch``, ``init_args`` with a ``torch.device``, ``trainer_name``, ``inference_allowed_mirroring_axes``).
``network_weights`` carries exactly the keys ``dynamic_network_architectures``' ``PlainConvUNet`` /
``ResidualEncoderUNet`` ``state_dict()`` has (``ConvDropoutNormReLU``'s ``all_modules`` aliases and the decoder's
``decoder.encoder`` copy included), generated here from the architecture's rules, not from medseg's mapping.

:func:`reference_forward` evaluates such weights with torch's functional operations, following
``dynamic_network_architectures``' forward passes, as an independent check of medseg's network.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def arch_kwargs(dims: int, features: list[int], kernels: list[list[int]], strides: list[list[int]],
                residual: bool = False) -> dict[str, Any]:
    n = len(features)
    out: dict[str, Any] = {
        "n_stages": n,
        "features_per_stage": features,
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": kernels,
        "strides": strides,
    }
    if residual:
        out["n_blocks_per_stage"] = [1, 3, 4, 6, 6, 6][:n]
        out["n_conv_per_stage_decoder"] = [1] * (n - 1)
    else:
        out["n_conv_per_stage"] = [2] * n
        out["n_conv_per_stage_decoder"] = [2] * (n - 1)
    out.update({"conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}})
    return out


def configuration(dims: int, spacing: list[float], patch: list[int], kw: dict[str, Any], schemes: list[str],
                  use_mask: list[bool], residual: bool = False) -> dict[str, Any]:
    cls = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    return {
        "data_identifier": f"nnUNetPlans_{dims}d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch,
        "median_image_size_in_voxels": [float(p) * 2 for p in patch],
        "spacing": spacing,
        "normalization_schemes": schemes,
        "use_mask_for_norm": use_mask,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
                         "arch_kwargs": kw, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }


def plans(configurations: dict[str, Any], transpose_forward: list[int], intensity: dict[str, Any]) -> dict[str, Any]:
    backward = [transpose_forward.index(a) for a in range(3)]
    return {
        "dataset_name": "Dataset901_Test",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": transpose_forward,
        "transpose_backward": backward,
        "configurations": configurations,
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity,
    }


def _conv(generator: torch.Generator, cout: int, cin: int, kernel: list[int]) -> dict[str, torch.Tensor]:
    fan_in = cin * math.prod(kernel)
    return {"weight": torch.randn((cout, cin, *kernel), generator=generator) * math.sqrt(2.0 / fan_in),
            "bias": torch.randn(cout, generator=generator) * 0.1}


def _norm(generator: torch.Generator, c: int) -> dict[str, torch.Tensor]:
    return {"weight": 1 + 0.1 * torch.randn(c, generator=generator), "bias": 0.1 * torch.randn(c, generator=generator)}


def _cdnr(state: dict[str, torch.Tensor], prefix: str, conv: dict[str, torch.Tensor], norm: dict[str, torch.Tensor],
          ) -> None:
    """``ConvDropoutNormReLU``'s keys (no dropout): ``conv``, ``norm`` and their ``all_modules`` aliases."""
    for p, v in conv.items():
        state[f"{prefix}.conv.{p}"] = v
    for p, v in norm.items():
        state[f"{prefix}.norm.{p}"] = v
    for p, v in conv.items():
        state[f"{prefix}.all_modules.0.{p}"] = v
    for p, v in norm.items():
        state[f"{prefix}.all_modules.1.{p}"] = v


def network_weights(kw: dict[str, Any], in_channels: int, num_classes: int, seed: int = 0,
                    residual: bool = False, head_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random weights under ``PlainConvUNet`` / ``ResidualEncoderUNet``'s ``state_dict()`` keys."""
    g = torch.Generator().manual_seed(seed)
    features, kernels, strides = kw["features_per_stage"], kw["kernel_sizes"], kw["strides"]
    dims = len(kernels[0])
    encoder: dict[str, torch.Tensor] = {}
    cin = in_channels
    if residual:
        _cdnr(encoder, "encoder.stem.convs.0", _conv(g, features[0], cin, kernels[0]), _norm(g, features[0]))
        cin = features[0]
        for s, f in enumerate(features):
            for b in range(kw["n_blocks_per_stage"][s]):
                block = f"encoder.stages.{s}.blocks.{b}"
                c_in = cin if b == 0 else f
                stride = strides[s] if b == 0 else [1] * dims
                _cdnr(encoder, f"{block}.conv1", _conv(g, f, c_in, kernels[s]), _norm(g, f))
                _cdnr(encoder, f"{block}.conv2", _conv(g, f, f, kernels[s]), _norm(g, f))
                if c_in != f:
                    index = 1 if any(x != 1 for x in stride) else 0
                    conv = _conv(g, f, c_in, [1] * dims)
                    del conv["bias"]
                    _cdnr(encoder, f"{block}.skip.{index}", conv, _norm(g, f))
            cin = f
    else:
        for s, f in enumerate(features):
            for i in range(kw["n_conv_per_stage"][s]):
                _cdnr(encoder, f"encoder.stages.{s}.0.convs.{i}", _conv(g, f, cin if i == 0 else f, kernels[s]),
                      _norm(g, f))
            cin = f
    state = dict(encoder)
    for key, value in encoder.items():
        state[f"decoder.{key}"] = value
    n = len(features)
    for i, s in enumerate(range(n - 1, 0, -1)):
        below, skip = features[s], features[s - 1]
        fan = below * math.prod(strides[s])
        state[f"decoder.transpconvs.{i}.weight"] = torch.randn((below, skip, *strides[s]), generator=g) * math.sqrt(
            1.0 / fan)
        state[f"decoder.transpconvs.{i}.bias"] = torch.randn(skip, generator=g) * 0.1
        for j in range(kw["n_conv_per_stage_decoder"][i]):
            _cdnr(state, f"decoder.stages.{i}.convs.{j}", _conv(g, skip, 2 * skip if j == 0 else skip,
                                                                  kernels[s - 1]), _norm(g, skip))
    for i, s in enumerate(range(n - 1, 0, -1)):
        skip = features[s - 1]
        head = _conv(g, num_classes, skip, [1] * dims)
        state[f"decoder.seg_layers.{i}.weight"] = head["weight"] * head_scale
        state[f"decoder.seg_layers.{i}.bias"] = head["bias"]
    return state


def write_folder(folder: Path, nn_plans: dict[str, Any], dataset: dict[str, Any], configuration_name: str,
                 weights: dict[str, torch.Tensor], folds: tuple[str, ...] = ("0",),
                 mirror_axes: tuple[int, ...] | None = (0, 1, 2)) -> Path:
    """``plans.json``, ``dataset.json`` and ``fold_K/checkpoint_final.pth`` as nnU-Net writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(nn_plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    for k, fold in enumerate(folds):
        state = {
            "network_weights": {key: v + 0.01 * k for key, v in weights.items()},
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "nesterov": True,
                                                                "weight_decay": 3e-05, "params": [0, 1]}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)],
                        "dice_per_class_or_region": [[np.float64(0.5)]], "train_losses": [np.float64(-0.2)],
                        "val_losses": [np.float64(-0.3)], "lrs": [0.01], "epoch_start_timestamps": [1.0],
                        "epoch_end_timestamps": [2.0]},
            "_best_ema": np.float64(0.5),
            "current_epoch": 1,
            "init_args": {"plans": nn_plans, "configuration": configuration_name,
                          "fold": fold if fold == "all" else int(fold), "dataset_json": dataset,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": mirror_axes,
        }
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(state, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def reference_forward(state: dict[str, torch.Tensor], kw: dict[str, Any], x: torch.Tensor,
                      residual: bool = False) -> torch.Tensor:
    """``PlainConvUNet`` / ``ResidualEncoderUNet`` inference forward pass on nnU-Net's keys, functionally."""
    dims = x.ndim - 2
    conv = F.conv3d if dims == 3 else F.conv2d
    transp = F.conv_transpose3d if dims == 3 else F.conv_transpose2d

    def cdnr(h: torch.Tensor, prefix: str, stride: list[int], act: bool = True) -> torch.Tensor:
        w = state[f"{prefix}.conv.weight"]
        pad = [(k - 1) // 2 for k in w.shape[2:]]
        h = conv(h, w, state.get(f"{prefix}.conv.bias"), stride=stride, padding=pad)
        h = F.instance_norm(h, weight=state[f"{prefix}.norm.weight"], bias=state[f"{prefix}.norm.bias"], eps=1e-5)
        return F.leaky_relu(h, 0.01) if act else h

    skips = []
    h = x
    if residual:
        h = cdnr(h, "encoder.stem.convs.0", [1] * dims)
        for s in range(len(kw["features_per_stage"])):
            for b in range(kw["n_blocks_per_stage"][s]):
                block = f"encoder.stages.{s}.blocks.{b}"
                stride = kw["strides"][s] if b == 0 else [1] * dims
                out = cdnr(cdnr(h, f"{block}.conv1", stride), f"{block}.conv2", [1] * dims, act=False)
                res = h
                if any(v != 1 for v in stride):
                    res = (F.avg_pool3d if dims == 3 else F.avg_pool2d)(res, stride, stride)
                key = next((k for k in (f"{block}.skip.1", f"{block}.skip.0") if f"{k}.conv.weight" in state), None)
                if key is not None:
                    res = cdnr(res, key, [1] * dims, act=False)
                h = F.leaky_relu(out + res, 0.01)
            skips.append(h)
    else:
        for s in range(len(kw["features_per_stage"])):
            for i in range(kw["n_conv_per_stage"][s]):
                h = cdnr(h, f"encoder.stages.{s}.0.convs.{i}", kw["strides"][s] if i == 0 else [1] * dims)
            skips.append(h)
    h = skips[-1]
    n_dec = len(kw["features_per_stage"]) - 1
    for i in range(n_dec):
        s = n_dec - i
        h = transp(h, state[f"decoder.transpconvs.{i}.weight"], state[f"decoder.transpconvs.{i}.bias"],
                   stride=kw["strides"][s])
        h = torch.cat((h, skips[-(i + 2)]), 1)
        for j in range(kw["n_conv_per_stage_decoder"][i]):
            h = cdnr(h, f"decoder.stages.{i}.convs.{j}", [1] * dims)
    return conv(h, state[f"decoder.seg_layers.{n_dec - 1}.weight"], state[f"decoder.seg_layers.{n_dec - 1}.bias"])
