"""nnU-Net v2 results folders in medseg, and medseg runs exported to nnU-Net's form.

The folders are built by ``tests/nnunet_format.py`` exactly as nnU-Net v2 writes them. Where the separate virtual
environment with nnU-Net exists (``benchmarks/.nnunet-venv``, built by ``benchmarks/nnunet_interop.py``), nnU-Net's
own ``nnUNetPredictor`` predicts the same folder and the two label maps are compared; elsewhere those checks skip,
saying so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nnunet_format as fmt
import numpy as np
import pytest
import torch

from medseg.errors import InferenceError
from medseg.interop.nnunet import load_nnunet_checkpoint, load_nnunet_folds, medseg_plans_from_nnunet
from medseg.models import create_model_from_plans
from medseg.models.nnunet.state_dict import from_nnunet_state_dict, to_nnunet_state_dict
from medseg.preprocessing import configuration_of

REPO = Path(__file__).resolve().parents[2]
NNUNET_PYTHON = REPO / "benchmarks" / ".nnunet-venv" / "bin" / "python"

CT_DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "bright": 2},
              "numTraining": 1, "file_ending": ".nii.gz"}
CT_INTENSITY = {"0": {"max": 300.0, "mean": 60.0, "median": 55.0, "min": -100.0, "percentile_00_5": -50.0,
                      "percentile_99_5": 250.0, "std": 70.0}}


def _ct_folder(tmp: Path, residual: bool = False, folds: tuple[str, ...] = ("0",)) -> tuple[Path, dict]:
    kw = fmt.arch_kwargs(3, [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                         residual=residual)
    cfg = fmt.configuration(3, [5.0, 1.2, 1.2], [16, 64, 64], kw, ["CTNormalization"], [False], residual)
    plans = fmt.plans({"3d_fullres": cfg}, [0, 1, 2], CT_INTENSITY)
    weights = fmt.network_weights(kw, 1, 3, seed=3, residual=residual, head_scale=20.0)
    folder = fmt.write_folder(tmp / "Dataset901_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres", plans, CT_DATASET,
                              "3d_fullres", weights, folds=folds)
    return folder, kw


@pytest.mark.parametrize("residual", [False, True], ids=["PlainConvUNet", "ResidualEncoderUNet"])
def test_nnunet_weights_give_nnunets_forward_pass(tmp_path: Path, residual: bool) -> None:
    """nnU-Net's keys mapped onto medseg's network compute what nnU-Net's network computes."""
    folder, kw = _ct_folder(tmp_path, residual)
    nn_plans = json.loads((folder / "plans.json").read_text())
    plans = medseg_plans_from_nnunet(nn_plans, CT_DATASET, "3d_fullres", folder)
    cfg = configuration_of(plans, "3d_fullres")
    assert cfg.model.name == ("nnunet_resenc" if residual else "nnunet")
    state = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")["network_weights"]
    model = create_model_from_plans(cfg.model.as_dict(), deep_supervision=False).eval()
    model.load_state_dict(from_nnunet_state_dict(state, residual=residual))
    x = torch.randn(1, 1, 16, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        reference = fmt.reference_forward(state, kw, x, residual=residual)
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4), (ours - reference).abs().max()
    # and back: the exported dictionary has exactly nnU-Net's keys, shapes and values (a network built without
    # deep supervision has only the full-resolution head; the others are written as zeros)
    exported = to_nnunet_state_dict(model)
    assert set(exported) == set(state)
    last = f"decoder.seg_layers.{len(kw['features_per_stage']) - 2}."
    for key, value in state.items():
        assert exported[key].shape == value.shape, key
        if "seg_layers" not in key or key.startswith(last):
            assert torch.equal(exported[key], value), key
        else:
            assert not exported[key].any(), key


def test_2d_configuration_and_axis_order(tmp_path: Path) -> None:
    """A 2D plan and nnU-Net's transpose (SimpleITK's z, y, x arrays) map onto medseg's x, y, z order."""
    kw = fmt.arch_kwargs(2, [4, 8], [[3, 3], [3, 3]], [[1, 1], [2, 2]])
    cfg = fmt.configuration(2, [1.0, 1.0], [32, 32], kw, ["ZScoreNormalization"], [True])
    nn_plans = fmt.plans({"2d": cfg}, [2, 0, 1], {"0": {}})
    dataset = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "tissue": 1}, "file_ending": ".nii.gz"}
    plans = medseg_plans_from_nnunet(nn_plans, dataset, "2d", tmp_path)
    view = configuration_of(plans, "2d")
    # nnU-Net's transposed axis i is its array axis t[i], i.e. medseg axis 2 - t[i]
    assert list(view.transpose_forward) == [0, 2, 1]
    assert list(view.transpose_backward) == [0, 2, 1]
    assert view.normalization[0]["scheme"] == "zscore" and view.normalization[0]["use_mask_for_norm"] is True
    assert view.spatial_dims == 2 and view.label_names == {0: "background", 1: "tissue"}


def test_checkpoint_allow_list_refuses_other_objects(tmp_path: Path) -> None:
    """numpy numbers (nnU-Net's log) load with weights_only=True; any other object is refused, named."""
    folder, _ = _ct_folder(tmp_path)
    state = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert float(state["_best_ema"]) == 0.5
    bad = tmp_path / "bad.pth"
    torch.save({"network_weights": {}, "payload": Path("/etc/passwd")}, bad)
    with pytest.raises(InferenceError, match="does not unpickle"):
        load_nnunet_checkpoint(bad)


def test_unsupported_plans_are_refused_by_name(tmp_path: Path) -> None:
    folder, _ = _ct_folder(tmp_path)
    nn_plans = json.loads((folder / "plans.json").read_text())
    nn_plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["MyNormalization"]
    with pytest.raises(InferenceError, match="MyNormalization"):
        medseg_plans_from_nnunet(nn_plans, CT_DATASET, "3d_fullres", folder)
    nn_plans = json.loads((folder / "plans.json").read_text())
    nn_plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "my.Net"
    with pytest.raises(InferenceError, match="my.Net"):
        medseg_plans_from_nnunet(nn_plans, CT_DATASET, "3d_fullres", folder)


def test_regions_become_label_maps_in_class_order(tmp_path: Path) -> None:
    """Sigmoid per region; each region above 0.5 writes its class, later regions over earlier ones."""
    from medseg.inference.resample import export_segmentation

    logits = torch.tensor([[[[1.0, 1.0, -1.0, 2.0]]], [[[-1.0, 2.0, -1.0, 0.5]]]])  # 2 regions, (1, 1, 4)
    properties = {"shape_after_cropping_and_before_resampling": [1, 1, 4], "target_spacing": [1, 1, 1],
                  "spacing_after_transpose": [1, 1, 1], "bbox_used_for_cropping": [[0, 1], [0, 1], [0, 4]],
                  "shape_before_cropping": [1, 1, 4], "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}
    out = export_segmentation(logits, properties, regions_class_order=[1, 2], probabilities=True)
    assert out.labels.ravel().tolist() == [1, 2, 0, 2]
    assert np.allclose(out.probabilities[:, 0, 0, 0].astype(np.float32), torch.sigmoid(logits[:, 0, 0, 0]).numpy(),
                       atol=1e-3)
    # dataset.json regions: names per class value, the network has one output per region
    kw = fmt.arch_kwargs(3, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    cfg = fmt.configuration(3, [1.0, 1.0, 1.0], [16, 16, 16], kw, ["ZScoreNormalization"], [False])
    dataset = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "whole": [1, 2], "core": [2]},
               "regions_class_order": [1, 2], "file_ending": ".nii.gz"}
    plans = medseg_plans_from_nnunet(fmt.plans({"3d_fullres": cfg}, [0, 1, 2], {}), dataset, "3d_fullres", tmp_path)
    assert plans["labels"] == {"background": 0, "whole": 1, "core": 2}
    assert plans["nnunet"]["regions_class_order"] == [1, 2]
    assert configuration_of(plans, "3d_fullres").model.out_channels == 2


def _spleen(shared_data: Path) -> Path:
    path = shared_data / "ivadomed_msd_spleen"
    images = sorted(path.rglob("*.nii.gz"))
    image = next((p for p in images if "seg" not in p.name.lower() and "label" not in p.name.lower()), None)
    if image is None:
        pytest.skip("no spleen CT image in the shared data")
    return image


def _nnunet_predict(folder: Path, image: Path, out: Path, folds: str = "0") -> np.ndarray:
    """nnU-Net's own nnUNetPredictor on ``image`` (skips where the nnU-Net environment is absent)."""
    if not NNUNET_PYTHON.is_file() or subprocess.run([str(NNUNET_PYTHON), "-c", "import nnunetv2"],
                                                     capture_output=True).returncode != 0:
        pytest.skip(f"nnU-Net's environment is not built ({NNUNET_PYTHON}; `python benchmarks/nnunet_interop.py "
                    "--setup` builds it)")
    # nnU-Net's whole pipeline for one image, in one process (predict_from_files would spawn a preprocessing and an
    # export worker, each importing torch again): the folder's reader, DefaultPreprocessor, sliding window with
    # mirroring, fold ensemble and export_prediction_from_logits
    (out / "nnunet").mkdir(parents=True)
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor\n"
        "p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, "
        "perform_everything_on_device=False, device=torch.device('cpu'), allow_tqdm=False)\n"
        f"p.initialize_from_trained_model_folder({str(folder)!r}, use_folds={folds!r}.split(','), "
        "checkpoint_name='checkpoint_final.pth')\n"
        f"image, properties = p.plans_manager.image_reader_writer_class().read_images([{str(image)!r}])\n"
        f"p.predict_single_npy_array(image, properties, None, {str(out / 'nnunet' / 'case')!r}, False)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "nnUNet_raw": str(out), "nnUNet_preprocessed": str(out),
           "nnUNet_results": str(out)}
    done = subprocess.run([str(NNUNET_PYTHON), "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.asarray(nib.load(str(out / "nnunet" / "case.nii.gz")).dataobj)


def _agreement(a: np.ndarray, b: np.ndarray, classes: list[int]) -> tuple[float, dict[int, float]]:
    dice = {}
    for c in classes:
        x, y = a == c, b == c
        total = x.sum() + y.sum()
        dice[c] = 1.0 if total == 0 else float(2 * (x & y).sum() / total)
    return float((a == b).mean()), dice


def _medseg_predict(folder: Path, image: Path, out: Path, *extra: str) -> np.ndarray:
    cmd = [sys.executable, "-m", "medseg", "predict", "-i", str(image), "-o", str(out), "-m", str(folder),
           "--device", "cpu", "--progress", "plain", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    outputs = sorted(out.glob("*.nii.gz"))
    assert len(outputs) == 1, outputs
    return np.asarray(nib.load(str(outputs[0])).dataobj)


def test_predict_nnunet_folder_on_real_ct_agrees_with_nnunet(tmp_path: Path, shared_data: Path) -> None:
    """``medseg predict -m FOLDER`` on the spleen CT (CT clipping, separate-z resampling, mirroring, two folds):
    the input's grid and affine, dataset.json's names, and ≥ 99.5 % voxels / Dice ≥ 0.99 per class against
    nnUNetPredictor on the same folder."""
    # a 120 × 120 in-plane crop of the CT, every slice (the affine follows the crop): 2 × 2 × 3 windows per fold
    full = nib.load(str(_spleen(shared_data)))
    image = tmp_path / "spleen_ct.nii.gz"
    nib.save(full.slicer[30:150, 30:150, :], image)
    folder, _ = _ct_folder(tmp_path, folds=("0", "1"))
    ours = _medseg_predict(folder, image, tmp_path / "medseg")
    source = nib.load(str(image))
    written = nib.load(str(next((tmp_path / "medseg").glob("*.nii.gz"))))
    assert ours.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    labels = json.loads((tmp_path / "medseg" / "labels.json").read_text())
    assert labels == {"0": "background", "1": "organ", "2": "bright"}
    assert set(np.unique(ours)) <= {0, 1, 2} and len(np.unique(ours)) >= 2
    theirs = _nnunet_predict(folder, image, tmp_path / "nnunet", folds="0,1")
    identical, dice = _agreement(ours, theirs, [1, 2])
    assert identical >= 0.995, identical
    assert min(dice.values()) >= 0.99, dice


def _medseg_run(tmp_path: Path, folder: Path) -> Path:
    """A medseg run folder (config.yaml, plans.json, checkpoint_final.pt) holding the folder's network."""
    import yaml

    nn_plans = json.loads((folder / "plans.json").read_text())
    plans = medseg_plans_from_nnunet(nn_plans, CT_DATASET, "3d_fullres", folder)
    plans.pop("nnunet")
    cfg = configuration_of(plans, "3d_fullres")
    model = create_model_from_plans(cfg.model.as_dict(), deep_supervision=True)
    state = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")["network_weights"]
    model.load_state_dict(from_nnunet_state_dict(state, residual=False, deep_supervision=True))
    run = tmp_path / "run" / "fold_0"
    run.mkdir(parents=True)
    (run / "plans.json").write_text(json.dumps(plans))
    (run / "config.yaml").write_text(yaml.safe_dump({"configuration": "3d_fullres", "deep_supervision": True}))
    torch.save({"model": model.state_dict(), "configuration": "3d_fullres", "fold": 0, "model_name": "nnunet"},
               run / "checkpoint_final.pt")
    return run.parent


def test_export_nnunet_round_trip(tmp_path: Path, mni_t1_path: Path) -> None:
    """A medseg run exported with ``medseg export-nnunet`` predicts as the run does, in medseg and in nnU-Net."""
    folder, _ = _ct_folder(tmp_path / "source")
    run = _medseg_run(tmp_path, folder)
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "medseg", "export-nnunet", str(run), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and (out / "fold_0" / "checkpoint_final.pth").is_file()
    exported_plans = json.loads((out / "plans.json").read_text())
    original = json.loads((folder / "plans.json").read_text())
    assert exported_plans["transpose_forward"] == original["transpose_forward"]
    arch = exported_plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["arch_kwargs"] == original["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    state = torch.load(out / "fold_0" / "checkpoint_final.pth", weights_only=True)
    source_state = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert set(state["network_weights"]) == set(source_state)
    assert state["inference_allowed_mirroring_axes"] == (0, 1, 2)
    # a small real MRI crop predicted by the run and by its export: identical in medseg
    crop = tmp_path / "mri.nii.gz"
    img = nib.load(str(mni_t1_path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[60:140, 70:150, 70:100].astype(np.int16), img.affine), crop)
    from_run = _medseg_predict(run, crop, tmp_path / "p_run", "--no-tta")
    from_export = _medseg_predict(out, crop, tmp_path / "p_export", "--no-tta")
    assert np.array_equal(from_run, from_export)
    loaded = load_nnunet_folds(out)
    assert loaded[0].ensemble == "logits" and loaded[0].mirror_axes == [0, 1, 2]
    theirs = _nnunet_predict(out, crop, tmp_path / "nn_export")
    ours = _medseg_predict(out, crop, tmp_path / "p_export_tta")
    identical, dice = _agreement(ours, theirs, [1, 2])
    assert identical >= 0.995 and min(dice.values()) >= 0.99, (identical, dice)
