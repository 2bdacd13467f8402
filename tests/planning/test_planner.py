"""The planner against nnU-Net's known decisions, from hand-written fingerprints.

Sources of nnU-Net's numbers:
- Hippocampus (MSD Task004): median 36×50×35 at 1 mm → 3d_fullres patch 40×56×40, batch 9, 3 poolings per axis,
  all kernels 3×3×3 (plans printed by F. Isensee in MIC-DKFZ/nnUNet issue #148; the same figures are in
  ../shared/REFERENCE.md, "Known plans"). The 2d configuration (patch 56×40) follows from the same rules on the two
  in-plane axes; its batch (366) is nnU-Net's 2D reference batch scaled to the small patch, capped at 5% of the
  dataset's voxels.
- Liver (MSD Task003): median 482×512×512 at 1×0.77×0.77 mm → 3d_fullres 128×128×128 with 5 poolings per axis and
  a 3d_lowres stage of 128×128×128 at ~2.5×1.9×1.9 mm (nnU-Net v1 plans quoted in MIC-DKFZ/nnUNet issue #856:
  lowres spacing 2.47×1.90×1.90, fullres 128³; batch 2 per REFERENCE.md; v2's 1.03 spacing step replaces v1's
  1.01, hence 2.50 here).
- Prostate (MSD Task005, 0.625×0.625×3.6 mm, ~20 slices): no published plans file was found in the searchable
  corpora; the expected values are derived by hand from nnU-Net v2's rules (network_topology.py,
  default_experiment_planner.py): out-of-plane axis first, kernel 1 along it for the first two stages, no pooling
  along it until the in-plane spacing has been doubled twice (0.625 → 2.5 mm, within 2× of 3.6 mm).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import PlanningError
from medseg.planning import (
    conv_feature_map_size,
    normalization_scheme,
    plan_experiment,
    pool_and_conv_props,
    target_spacing,
    transpose_for,
    validate_plans,
)

STAT_KEYS = ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")


@pytest.fixture
def hippocampus(uniform_fp):
    # 260 training cases, 3 labels (background, anterior, posterior), one MR channel; nnU-Net's median 36×50×35
    # (SimpleITK's z, y, x) is 35×50×36 in the stored x, y, z order medseg reads
    return uniform_fp(260, (1.0, 1.0, 1.0), (35, 50, 36), labels=3)


@pytest.fixture
def liver(make_fp):
    # 131 CT cases of 512×512×~430 at 0.77×0.77×1 mm (x, y, z as stored in NIfTI), labels liver + tumour
    rng = np.random.default_rng(0)
    depths = rng.integers(380, 480, size=131)
    shapes = [(512, 512, int(d)) for d in depths]
    stats = {"mean": 99.0, "median": 101.0, "std": 39.0, "min": -1000.0, "max": 1200.0,
             "percentile_00_5": -17.0, "percentile_99_5": 201.0}
    return make_fp([(0.77, 0.77, 1.0)] * 131, shapes, channels=(("CT", "CT"),), labels=3, stats=stats)


@pytest.fixture
def prostate(make_fp):
    # 32 T2/ADC cases of 320×319×20 at 0.625×0.625×3.6 mm, two cases at 4 mm
    spacings = [(0.625, 0.625, 4.0 if i in (5, 17) else 3.6) for i in range(32)]
    return make_fp(spacings, [(320, 319, 20)] * 32, channels=(("T2", "MR"), ("ADC", "MR")), labels=3)


def test_hippocampus_matches_nnunet(hippocampus):
    plans = plan_experiment(hippocampus)
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}  # no lowres: the patch covers the whole image
    full = plans["configurations"]["3d_fullres"]
    assert full["patch_size"] == [40, 56, 40]
    assert full["batch_size"] == 9
    assert full["spacing"] == [1.0, 1.0, 1.0]
    assert full["median_image_size_in_voxels"] == [36.0, 50.0, 35.0]
    assert full["topology"]["num_pool_per_axis"] == [3, 3, 3]
    assert full["topology"]["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert full["topology"]["kernel_sizes"] == [[3, 3, 3]] * 4
    assert full["topology"]["features_per_stage"] == [32, 64, 128, 256]
    assert full["batch_dice"] is False
    two_d = plans["configurations"]["2d"]
    assert two_d["patch_size"] == [56, 40]
    assert two_d["batch_size"] == 366
    assert two_d["spacing"] == [1.0, 1.0]
    assert two_d["topology"]["features_per_stage"] == [32, 64, 128, 256]
    assert plans["transpose_forward"] == [2, 1, 0]  # nnU-Net's arrays: z first, then y, x
    validate_plans(plans)


def test_liver_matches_nnunet(liver):
    plans = plan_experiment(liver)
    cfgs = plans["configurations"]
    assert set(cfgs) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    assert plans["transpose_forward"] == [2, 1, 0]  # the 1 mm axis goes first, then y, x as in nnU-Net
    assert plans["transpose_backward"] == [2, 1, 0]
    full = cfgs["3d_fullres"]
    assert full["spacing"] == pytest.approx([1.0, 0.77, 0.77])
    assert full["patch_size"] == [128, 128, 128]
    assert full["batch_size"] == 2
    assert full["topology"]["num_pool_per_axis"] == [5, 5, 5]
    assert full["topology"]["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    low = cfgs["3d_lowres"]
    assert low["patch_size"] == [128, 128, 128]
    assert low["batch_size"] == 2
    # every axis coarsened by the same 1.03^k factor, to about 2.5 × 1.9 × 1.9 mm
    factor = low["spacing"][0] / full["spacing"][0]
    assert low["spacing"] == pytest.approx([s * factor for s in full["spacing"]])
    assert 2.3 < factor < 2.7
    k = math.log(factor) / math.log(1.03)
    assert k == pytest.approx(round(k), abs=1e-6)
    assert math.prod(low["median_image_size_in_voxels"]) * 4 < math.prod(full["median_image_size_in_voxels"])
    # cascade links, as nnU-Net's plans have them
    assert low["next_stage"] == "3d_cascade_fullres"
    cascade = cfgs["3d_cascade_fullres"]
    assert cascade["previous_stage"] == "3d_lowres"
    assert cascade["inherits_from"] == "3d_fullres"
    assert cascade["patch_size"] == full["patch_size"]
    assert cascade["num_input_channels"] == 1 + 2  # image + one-hot lowres prediction of the 2 foreground classes
    assert full["batch_dice"] is True and low["batch_dice"] is False
    two_d = cfgs["2d"]
    assert two_d["patch_size"] == [512, 512]
    assert two_d["batch_size"] == 12
    # CT normalisation: clip to the foreground 0.5/99.5 percentiles, z-score with the foreground mean/std
    norm = full["normalization"][0]
    assert norm["scheme"] == "ct"
    assert (norm["clip_lower"], norm["clip_upper"], norm["mean"], norm["std"]) == (-17.0, 201.0, 99.0, 39.0)
    assert norm["use_mask_for_norm"] is False
    validate_plans(plans)


def test_prostate_anisotropic_decisions(prostate):
    plans = plan_experiment(prostate)
    assert plans["transpose_forward"] == [2, 1, 0]
    assert plans["transpose_backward"] == [2, 1, 0]
    full = plans["configurations"]["3d_fullres"]
    # 10th percentile of the out-of-plane spacings (3.6), not the median
    assert full["spacing"] == pytest.approx([3.6, 0.625, 0.625])
    assert full["median_image_size_in_voxels"] == [20.0, 319.0, 320.0]  # nnU-Net's z, y, x
    topo = full["topology"]
    # out-of-plane axis: kernel 1 and no pooling for the first two stages (in-plane spacing 0.625 → 1.25 → 2.5 mm)
    assert topo["kernel_sizes"][:2] == [[1, 3, 3], [1, 3, 3]]
    assert all(k == [3, 3, 3] for k in topo["kernel_sizes"][2:])
    assert topo["strides"][:3] == [[1, 1, 1], [1, 2, 2], [1, 2, 2]]
    assert topo["strides"][3:5] == [[2, 2, 2], [2, 2, 2]]
    assert topo["num_pool_per_axis"] == [2, 6, 6]
    assert full["patch_size"] == [20, 256, 320]
    assert full["batch_size"] == 2
    assert "3d_lowres" not in plans["configurations"]
    # resampling: images cubic, labels linear on one-hot; out-of-plane apart (order 0): > 3× anisotropic
    res = full["resampling"]
    assert res["images"] == {"order": 3, "order_z": 0}
    assert res["labels"] == {"order": 1, "order_z": 0, "one_hot": True}
    assert res["separate_z_anisotropy_threshold"] == 3.0
    assert res["separate_z_at_target_spacing"] is True
    assert [n["scheme"] for n in full["normalization"]] == ["zscore", "zscore"]
    assert plans["configurations"]["2d"]["spacing"] == [0.625, 0.625]


def test_target_spacing_anisotropy_rule():
    # a 5 mm axis with few slices takes its 10th percentile (here 2.5 mm), not the median
    spacings = np.array([(0.7, 0.7, 5.0)] * 18 + [(0.7, 0.7, 2.5)] * 2)
    shapes = np.array([(512, 512, 40)] * 20)
    target = target_spacing(spacings, shapes)
    expected_z = np.percentile(spacings[:, 2], 10)
    assert target == pytest.approx([0.7, 0.7, expected_z])
    assert expected_z < 5.0
    # ...but never finer than the other axes' largest spacing
    spacings = np.array([(0.8, 0.7, 5.0)] * 16 + [(0.8, 0.7, 0.5)] * 4)
    target = target_spacing(spacings, shapes)
    assert target[2] == pytest.approx(0.8 + 1e-5)
    # spacing anisotropy without voxel anisotropy (many slices): the median stays
    spacings = np.array([(1.0, 1.0, 4.0)] * 18 + [(1.0, 1.0, 2.0)] * 2)
    shapes = np.array([(100, 100, 100)] * 20)
    assert target_spacing(spacings, shapes) == pytest.approx([1.0, 1.0, 4.0])
    # voxel anisotropy without spacing anisotropy (2.9× is not > 3×): median
    spacings = np.array([(1.0, 1.0, 2.9)] * 18 + [(1.0, 1.0, 1.0)] * 2)
    shapes = np.array([(300, 300, 20)] * 20)
    assert target_spacing(spacings, shapes) == pytest.approx([1.0, 1.0, 2.9])


def test_transpose_puts_coarsest_axis_first():
    assert transpose_for([0.7, 3.0, 0.7]) == ([1, 2, 0], [2, 0, 1])
    assert transpose_for([0.7, 0.7, 3.0]) == ([2, 1, 0], [2, 1, 0])
    # isotropic: nnU-Net's argmax over its z, y, x arrays picks z (the last stored axis): 2D slices are axial
    assert transpose_for([1.0, 1.0, 1.0]) == ([2, 1, 0], [2, 1, 0])
    assert transpose_for([3.0, 3.0, 3.0])[0][0] == 2


def test_normalization_per_modality_and_nonzero_rule(uniform_fp):
    assert normalization_scheme("CT", "CT") == "ct"
    assert normalization_scheme("T2", "MR") == "zscore"
    assert normalization_scheme("noNorm", "MR") == "none"
    assert normalization_scheme("x", "rescale_to_0_1") == "rescale_to_0_1"
    assert normalization_scheme("PET", "PET") == "zscore"
    channels = (("CT", "CT"), ("T1", "MR"))
    # cropping removed more than 25% of the median image: the MR channel is z-scored inside the nonzero mask
    cropped = plan_experiment(uniform_fp(10, (1, 1, 1), (64, 64, 64), channels=channels, relative_size=0.6),
                              configs="3d_fullres")
    norm = cropped["configurations"]["3d_fullres"]["normalization"]
    assert [(n["scheme"], n["use_mask_for_norm"]) for n in norm] == [("ct", False), ("zscore", True)]
    assert norm[0]["clip_lower"] == 1.0 and norm[0]["clip_upper"] == 1.0
    # 80% kept: no mask
    kept = plan_experiment(uniform_fp(10, (1, 1, 1), (64, 64, 64), channels=channels, relative_size=0.8),
                           configs="3d_fullres")
    norm = kept["configurations"]["3d_fullres"]["normalization"]
    assert [(n["scheme"], n["use_mask_for_norm"]) for n in norm] == [("ct", False), ("zscore", False)]
    # exactly 3/4 is not "less than 3/4"
    edge = plan_experiment(uniform_fp(10, (1, 1, 1), (64, 64, 64), relative_size=0.75), configs="3d_fullres")
    assert edge["configurations"]["3d_fullres"]["normalization"][0]["use_mask_for_norm"] is False


def test_ct_without_foreground_statistics_is_an_error(uniform_fp):
    fp = uniform_fp(4, (1, 1, 1), (64, 64, 64), channels=(("CT", "CT"),))
    fp["foreground_intensity_properties_per_channel"]["0"] = {k: None for k in STAT_KEYS}
    with pytest.raises(PlanningError, match="no foreground intensities"):
        plan_experiment(fp)


def test_pool_and_conv_props_rules():
    # isotropic: pools while the axis is >= 8, then pads the patch to a multiple of 2**pools
    topo = pool_and_conv_props((1.0, 1.0, 1.0), (36, 50, 35))
    assert topo.num_pool_per_axis == (3, 3, 3)
    assert topo.patch_size == (40, 56, 40)
    # an axis of 7 voxels is never pooled; one of 10 only while another axis pools with it
    topo = pool_and_conv_props((1.0, 1.0, 1.0), (7, 64, 10))
    assert topo.num_pool_per_axis == (0, 3, 1)
    # a 4× coarser axis: kernel 1 until the others have pooled twice (its spacing is then within 2×)
    topo = pool_and_conv_props((4.0, 1.0, 1.0), (32, 128, 128))
    assert topo.kernel_sizes[:2] == ((1, 3, 3), (1, 3, 3))
    assert topo.kernel_sizes[2] == (3, 3, 3)
    assert topo.strides[1:3] == ((1, 2, 2), (1, 2, 2))
    assert topo.strides[3] == (2, 2, 2)
    # kernel sizes have one more entry than poolings (the bottleneck)
    assert len(topo.kernel_sizes) == len(topo.strides)


def test_conv_feature_map_size_by_hand():
    # encoder: 2 convs × 4 feats × 8×8 + 2 × 8 × 4×4; decoder: (2 convs + transposed conv) × 4 × 8×8 + 3 classes × 8×8
    size = conv_feature_map_size((8, 8), [(1, 1), (2, 2)], [4, 8], [2, 2], [2], num_classes=3)
    assert size == 2 * 4 * 64 + 2 * 8 * 16 + 3 * 4 * 64 + 3 * 64
    with_ds = conv_feature_map_size((8, 8, 8), [(1, 1, 1), (2, 2, 2), (2, 2, 2)], [4, 8, 16], [2, 2, 2], [2, 2], 2,
                                    deep_supervision=True)
    without = conv_feature_map_size((8, 8, 8), [(1, 1, 1), (2, 2, 2), (2, 2, 2)], [4, 8, 16], [2, 2, 2], [2, 2], 2)
    assert with_ds - without == 2 * 4 * 4 * 4  # the extra segmentation output at the 4³ stage


def test_more_gpu_memory_gives_a_bigger_patch(liver, hippocampus):
    small = plan_experiment(liver, gpu_memory_gb=8, configs="3d_fullres")["configurations"]["3d_fullres"]
    big = plan_experiment(liver, gpu_memory_gb=24, configs="3d_fullres")["configurations"]["3d_fullres"]
    assert math.prod(big["patch_size"]) > math.prod(small["patch_size"])
    assert all(b >= s for b, s in zip(big["patch_size"], small["patch_size"], strict=True))
    assert big["vram_estimate"]["reference"] == pytest.approx(3 * small["vram_estimate"]["reference"])
    tiny = plan_experiment(liver, gpu_memory_gb=4, configs="3d_fullres")["configurations"]["3d_fullres"]
    assert math.prod(tiny["patch_size"]) < math.prod(small["patch_size"])
    assert tiny["batch_size"] == 2  # never below 2
    # hippocampus: the patch already covers the image; the batch is capped at 5% of the dataset's voxels
    hip = plan_experiment(hippocampus, gpu_memory_gb=24, configs="3d_fullres")["configurations"]["3d_fullres"]
    assert hip["patch_size"] == [40, 56, 40]
    assert hip["batch_size"] == round(36 * 50 * 35 * 260 * 0.05 / (40 * 56 * 40))


def test_configs_selection_and_errors(hippocampus, liver):
    only_2d = plan_experiment(liver, configs=["2d"])
    assert set(only_2d["configurations"]) == {"2d"}
    no_low = plan_experiment(liver, configs="2d,3d_fullres")
    assert set(no_low["configurations"]) == {"2d", "3d_fullres"}
    assert no_low["configurations"]["3d_fullres"]["batch_dice"] is True  # as nnU-Net: a lowres stage exists
    low_only = plan_experiment(liver, configs="3d_lowres")
    assert set(low_only["configurations"]) == {"3d_lowres"}
    assert "next_stage" not in low_only["configurations"]["3d_lowres"]
    with pytest.raises(PlanningError, match="unknown configuration '3d'"):
        plan_experiment(hippocampus, configs="3d")
    with pytest.raises(PlanningError, match="comes with 3d_lowres"):
        plan_experiment(hippocampus, configs="3d_cascade_fullres")
    with pytest.raises(PlanningError, match="positive"):
        plan_experiment(hippocampus, gpu_memory_gb=0)


def test_model_entry_and_registry(hippocampus):
    import torch

    from medseg.models import create_model

    plans = plan_experiment(hippocampus, model="nnunet")
    entry = plans["configurations"]["3d_fullres"]["model"]
    topo = plans["configurations"]["3d_fullres"]["topology"]
    assert entry["name"] == "nnunet"
    assert (entry["spatial_dims"], entry["in_channels"], entry["out_channels"]) == (3, 1, 3)
    for key in ("kernel_sizes", "strides", "features_per_stage", "n_conv_per_stage", "n_conv_per_stage_decoder"):
        assert entry["kwargs"][key] == topo[key]
    assert entry["kwargs"]["deep_supervision"] is True
    net = create_model(entry["name"], entry["spatial_dims"], entry["in_channels"], entry["out_channels"],
                       **entry["kwargs"]).eval()
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *patch))
    assert tuple(out.shape) == (1, 3, *patch)
    # another zoo model that takes the topology gets only the options it accepts
    resenc = plan_experiment(hippocampus, model="nnunet_resenc")["configurations"]["2d"]["model"]
    assert resenc["name"] == "nnunet_resenc"
    assert "n_conv_per_stage" not in resenc["kwargs"] and "strides" in resenc["kwargs"]
    with pytest.raises(PlanningError, match=r"unknown model 'nope'; choose one of: .*nnunet"):
        plan_experiment(hippocampus, model="nope")


def test_planning_is_pure_and_json(hippocampus):
    import json

    first = plan_experiment(hippocampus)
    assert json.loads(json.dumps(first)) == first
    assert plan_experiment(hippocampus) == first
    assert first["plans_version"] == 1 and first["gpu_memory_gb"] == 8.0
    assert first["channels"] == [{"name": "MR", "modality": "MR"}]
    assert first["labels"] == {"background": 0, "class1": 1, "class2": 2}
