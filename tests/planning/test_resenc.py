"""nnU-Net's residual-encoder presets (ResEnc M / L / XL) in the planner.

Source of the expected values: MIC-DKFZ/nnUNet,
``nnunetv2/experiment_planning/experiment_planners/residual_unets/residual_encoder_unet_planners.py`` (read at
commits 64aeec90 and d730764d, identical in these values) and ``documentation/resenc_presets.md``. No published
ResEnc plans file (patch/batch for a known dataset) was found in the searchable corpora (``resenc_presets.md`` lists
Dice, VRAM and run time only), so the dataset tests check the rules: a larger preset gives a larger patch for a
large CT fingerprint, the batch stays at least 2, the batch follows the ResEnc formula without the 5% cap.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from medseg.cli.main import main
from medseg.errors import PlanningError
from medseg.models import create_model, get_model_info
from medseg.planning import (
    PRESETS,
    conv_feature_map_size,
    load_plans,
    plan_experiment,
    residual_encoder_feature_map_size,
    validate_plans,
)

RESENC = ("resenc_m", "resenc_l", "resenc_xl")
RESENC_KWARGS = {"kernel_sizes", "strides", "features_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder",
                 "deep_supervision"}


@pytest.fixture
def liver(make_fp):
    # a large CT fingerprint: 131 cases of 512×512×~430 at 0.77×0.77×1 mm (MSD Liver-like)
    rng = np.random.default_rng(0)
    shapes = [(512, 512, int(d)) for d in rng.integers(380, 480, size=131)]
    stats = {"mean": 99.0, "median": 101.0, "std": 39.0, "min": -1000.0, "max": 1200.0,
             "percentile_00_5": -17.0, "percentile_99_5": 201.0}
    return make_fp([(0.77, 0.77, 1.0)] * 131, shapes, channels=(("CT", "CT"),), labels=3, stats=stats)


@pytest.fixture
def hippocampus(uniform_fp):
    return uniform_fp(260, (1.0, 1.0, 1.0), (36, 50, 35), labels=3)


def test_preset_values_match_nnunet():
    # residual_encoder_unet_planners.py:
    #   ResEncUNetPlanner: UNet_blocks_per_stage_encoder = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6),
    #                      UNet_blocks_per_stage_decoder = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    #   nnUNetPlannerResEncM:  gpu_memory_target_in_gb = 8,  UNet_reference_val_corresp_GB = 8,
    #                          UNet_reference_val_3d = 680000000, UNet_reference_val_2d = 135000000,
    #                          max_dataset_covered = 1, plans_name 'nnUNetResEncUNetMPlans'
    #   nnUNetPlannerResEncL:  24, 24, 2100000000, 380000000, 1, 'nnUNetResEncUNetLPlans'
    #   nnUNetPlannerResEncXL: 40, 40, 3600000000, 560000000, 1, 'nnUNetResEncUNetXLPlans'
    # default_experiment_planner.py (inherited by the presets): UNet_reference_val_corresp_bs_2d = 12,
    #   UNet_reference_val_corresp_bs_3d = 2; the default planner: 560000000 / 85000000 at 8 GB, 5% cap.
    expected = {
        "resenc_m": (8.0, 8.0, 680_000_000, 135_000_000, "nnUNetPlannerResEncM", "medsegResEncMPlans"),
        "resenc_l": (24.0, 24.0, 2_100_000_000, 380_000_000, "nnUNetPlannerResEncL", "medsegResEncLPlans"),
        "resenc_xl": (40.0, 40.0, 3_600_000_000, 560_000_000, "nnUNetPlannerResEncXL", "medsegResEncXLPlans"),
    }
    for name, (gpu, ref_gb, ref3, ref2, planner, ident) in expected.items():
        p = PRESETS[name]
        assert (p.gpu_memory_gb, p.reference_gpu_memory_gb, p.reference_value_3d, p.reference_value_2d) == (
            gpu, ref_gb, ref3, ref2)
        assert (p.nnunet_planner, p.plans_identifier, p.model) == (planner, ident, "nnunet_resenc")
        assert p.blocks_per_stage_encoder == (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
        assert p.convs_per_stage_decoder == 1
        assert (p.reference_batch_size_3d, p.reference_batch_size_2d, p.max_dataset_covered) == (2, 12, 1.0)
        assert p.residual and not p.shrink_for_min_batch
    d = PRESETS["default"]
    assert (d.reference_value_3d, d.reference_value_2d, d.gpu_memory_gb, d.max_dataset_covered) == (
        560_000_000, 85_000_000, 8.0, 0.05)
    assert d.model == "nnunet" and d.plans_identifier == "medsegPlans" and not d.residual


def test_residual_feature_map_size_matches_nnunet_counts():
    # the __main__ block of residual_encoder_unet_planners.py prints compute_conv_feature_map_size of two networks
    # (num_classes=3, deep_supervision=True): 558319104 for 128³ and 129793792 for 512²
    s3 = [(1, 1, 1)] + [(2, 2, 2)] * 5
    assert residual_encoder_feature_map_size((128, 128, 128), s3, (32, 64, 128, 256, 320, 320), (1, 3, 4, 6, 6, 6),
                                             [1] * 5, 3, deep_supervision=True) == 558_319_104
    s2 = [(1, 1)] + [(2, 2)] * 6
    assert residual_encoder_feature_map_size((512, 512), s2, (32, 64, 128, 256, 512, 512, 512),
                                             (1, 3, 4, 6, 6, 6, 6), [1] * 6, 3, deep_supervision=True) == 129_793_792
    # a residual encoder with one block per stage and no skip projections would count like two plain convs
    plain = conv_feature_map_size((64, 64), [(1, 1), (2, 2)], (32, 64), [2, 2], [1], 2)
    resenc = residual_encoder_feature_map_size((64, 64), [(1, 1), (2, 2)], (32, 64), [1, 1], [1], 2)
    assert resenc - plain == 32 * 64 * 64 + 64 * 32 * 32  # the stem and the strided block's skip projection


def test_residual_feature_map_size_counts_medseg_model_outputs():
    """The analytic count equals the conv outputs of medseg's ``nnunet_resenc`` (train mode, deep supervision)."""
    kwargs = {"kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2]],
              "features_per_stage": [4, 8, 16], "n_blocks_per_stage": [1, 3, 4], "n_conv_per_stage_decoder": [1, 1],
              "deep_supervision": True}
    model = create_model("nnunet_resenc", 3, 1, 3, **kwargs).train()
    counted = []

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        counted.append(output[0].numel())  # one sample

    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 1, 8, 16, 16))
    expected = residual_encoder_feature_map_size((8, 16, 16), kwargs["strides"], kwargs["features_per_stage"],
                                                 kwargs["n_blocks_per_stage"], [1, 1], 3, deep_supervision=True)
    assert sum(counted) == expected


def test_larger_presets_give_larger_patches(liver):
    plans = {p: plan_experiment(liver, preset=p, configs="3d_fullres") for p in ("default", *RESENC)}
    full = {p: plans[p]["configurations"]["3d_fullres"] for p in plans}
    voxels = {p: math.prod(full[p]["patch_size"]) for p in full}
    # ResEnc M is tuned to the default planner's budget: same patch here
    assert full["resenc_m"]["patch_size"] == full["default"]["patch_size"] == [128, 128, 128]
    assert voxels["resenc_m"] < voxels["resenc_l"] < voxels["resenc_xl"]
    for name in RESENC:
        cfg = full[name]
        assert cfg["batch_size"] >= 2
        assert cfg["vram_estimate"]["feature_map_elements"] <= cfg["vram_estimate"]["reference"]
        assert plans[name]["gpu_memory_gb"] == PRESETS[name].gpu_memory_gb
        assert plans[name]["preset"] == name and plans[name]["planner"].startswith(
            f"nnU-Net v2 {PRESETS[name].nnunet_planner} rules")
        validate_plans(plans[name])


def test_resenc_batch_is_uncapped_and_2d_fits_one_reference_batch(hippocampus, liver):
    for fp in (hippocampus, liver):
        default = plan_experiment(fp, configs="2d")["configurations"]["2d"]
        for name in RESENC:
            plans = plan_experiment(fp, preset=name, configs="2d,3d_fullres")
            n_voxels = len(fp["cases"]) * math.prod(plans["configurations"]["3d_fullres"][
                "median_image_size_in_voxels"])
            for cfg in plans["configurations"].values():
                est = cfg["vram_estimate"]["feature_map_elements"]
                ref = cfg["vram_estimate"]["reference"]
                ref_bs = 12 if cfg["spatial_dims"] == 2 else 2
                assert est <= ref  # ResEnc: ``while estimate > reference`` (not the default's batch-of-two rule)
                cap = round(n_voxels / math.prod(cfg["patch_size"]))  # max_dataset_covered = 1
                assert cfg["batch_size"] == max(min(round(ref / est * ref_bs), cap), 2)
        # the default planner caps hippocampus' 2d batch at 5% of the dataset; ResEnc M does not
        if fp is hippocampus:
            resenc_2d = plan_experiment(fp, preset="resenc_m", configs="2d")["configurations"]["2d"]
            assert default["batch_size"] == 366 and resenc_2d["batch_size"] > default["batch_size"]


def test_planned_model_kwargs_build_and_run(liver):
    accepted = set(get_model_info("nnunet_resenc").accepted_kwargs())
    for name in RESENC:
        cfg = plan_experiment(liver, preset=name, configs="3d_fullres")["configurations"]["3d_fullres"]
        entry = cfg["model"]
        n = cfg["topology"]["n_stages"]
        assert entry["name"] == "nnunet_resenc" and set(entry["kwargs"]) == RESENC_KWARGS <= accepted
        assert entry["kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6, 6][:n]
        assert entry["kwargs"]["n_conv_per_stage_decoder"] == [1] * (n - 1)
        assert cfg["topology"]["network"] == "residual_encoder_unet" and "n_conv_per_stage" not in cfg["topology"]
        # build the plan and run it on the smallest input it takes: the total stride per axis, twice along the
        # first axis (instance norm needs more than one bottleneck voxel)
        model = create_model(entry["name"], entry["spatial_dims"], entry["in_channels"], entry["out_channels"],
                             **entry["kwargs"]).eval()
        assert model.n_blocks_per_stage == entry["kwargs"]["n_blocks_per_stage"]
        shape = tuple(math.prod(s[a] for s in entry["kwargs"]["strides"]) * (2 if a == 0 else 1) for a in range(3))
        with torch.no_grad():
            out = model(torch.zeros(1, entry["in_channels"], *shape))
        assert out.shape == (1, 3, *shape)


def test_identifiers_and_gpu_memory_override(liver):
    m = plan_experiment(liver, preset="resenc_m")
    assert m["plans_identifier"] == "medsegResEncMPlans" and m["notes"] == []
    ids = {name: cfg["data_identifier"] for name, cfg in m["configurations"].items()}
    # nnU-Net's ResEncUNetPlanner.generate_data_identifier: 2d/3d_fullres reuse the default planner's data
    assert ids == {"2d": "medsegPlans_2d", "3d_fullres": "medsegPlans_3d_fullres",
                   "3d_lowres": "medsegResEncMPlans_3d_lowres", "3d_cascade_fullres": "medsegPlans_3d_fullres"}
    # an explicit target overrides the preset's and scales its reference; the plans identifier says so
    big = plan_experiment(liver, preset="resenc_m", gpu_memory_gb=24, configs="3d_fullres,3d_lowres")
    assert big["gpu_memory_gb"] == 24.0 and big["plans_identifier"] == "medsegResEncMPlans_24G"
    assert big["configurations"]["3d_fullres"]["vram_estimate"]["reference"] == 680_000_000 * 3
    assert big["configurations"]["3d_lowres"]["data_identifier"] == "medsegResEncMPlans_24G_3d_lowres"
    assert any("24 GB instead of the resenc_m preset's 8 GB" in note for note in big["notes"])
    same = plan_experiment(liver, preset="resenc_l", gpu_memory_gb=24.0, configs="3d_fullres")
    assert same["plans_identifier"] == "medsegResEncLPlans" and same["notes"] == []
    default = plan_experiment(liver, configs="3d_fullres")
    assert default["preset"] == "default" and default["plans_identifier"] == "medsegPlans"
    # 2d/3d_fullres data never depend on the target: one name (and cache) whatever the preset or memory
    assert big["configurations"]["3d_fullres"]["data_identifier"] == "medsegPlans_3d_fullres"
    other = plan_experiment(liver, gpu_memory_gb=12, configs="3d_fullres")
    assert other["plans_identifier"] == "medsegPlans_12G"
    assert other["configurations"]["3d_fullres"]["data_identifier"] == "medsegPlans_3d_fullres"
    assert default["configurations"]["3d_fullres"]["topology"]["network"] == "plain_conv_unet"


def test_preset_errors(liver):
    with pytest.raises(PlanningError, match="unknown preset 'resenc_s'"):
        plan_experiment(liver, preset="resenc_s")
    with pytest.raises(PlanningError, match="plans the residual-encoder U-Net 'nnunet_resenc', not 'nnunet'"):
        plan_experiment(liver, preset="resenc_l", model="nnunet")
    with pytest.raises(PlanningError, match="must be a positive number"):
        plan_experiment(liver, preset="resenc_l", gpu_memory_gb=0)
    # the default preset still plans any registry model for the plain U-Net's patch
    plans = plan_experiment(liver, model="nnunet_resenc", configs="3d_fullres")
    assert plans["configurations"]["3d_fullres"]["model"]["name"] == "nnunet_resenc"


def test_plan_command_with_preset(tmp_path, mni_dataset, capsys):
    out = tmp_path / "plans.json"
    base = ["plan", str(mni_dataset["manifest"]), "-o", str(out), "--workers", "1"]
    assert main([*base, "--preset", "resenc_l"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "preset resenc_l (medsegResEncLPlans), GPU memory target 24 GB" in text
    assert "residual blocks" in text and "nnunet_resenc" in text and "medsegPlans_3d_fullres" in text
    plans = load_plans(out)
    assert plans["preset"] == "resenc_l" and plans["gpu_memory_gb"] == 24.0
    full = plans["configurations"]["3d_fullres"]
    assert full["model"]["name"] == "nnunet_resenc" and set(full["model"]["kwargs"]) == RESENC_KWARGS
    assert main([*base, "--preset", "resenc_m", "--gpu-memory-gb", "12", "--configs", "3d_fullres"]) == 0
    capsys.readouterr()
    plans = json.loads(out.read_text())
    assert plans["gpu_memory_gb"] == 12.0 and plans["plans_identifier"] == "medsegResEncMPlans_12G"
    assert main([*base, "--preset", "resenc_xxl"]) == 1
    assert "medseg: error: unknown preset 'resenc_xxl'" in capsys.readouterr().err
    assert main([*base, "--preset", "resenc_m", "--model", "nnunet"]) == 1
    assert "not 'nnunet'" in capsys.readouterr().err
