"""Instance manifests (task, per-case classes), their checks, and planning and caching of object maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.data import check_dataset, load_manifest, manifest_from_dict, save_manifest
from medseg.data.instances import class_map
from medseg.errors import ManifestError

BASE = {"format_version": 1, "task": "instance", "channels": [{"name": "CT", "modality": "CT"}],
        "labels": {"background": 0, "nodule": 1, "cyst": 2}}


def _manifest(cases: list[dict], **extra) -> dict:
    return {**BASE, **extra, "cases": cases}


def test_instance_manifest_classes_round_trip(tmp_path: Path) -> None:
    data = _manifest([{"id": "a", "images": ["a.nii.gz"], "label": "a_seg.nii.gz",
                       "classes": {"1": "nodule", "3": 2, "2": "cyst"}},
                      {"id": "b", "images": ["b.nii.gz"]}])
    m = manifest_from_dict(data, root=tmp_path)
    assert m.is_instance and m.task == "instance" and m.foreground_classes == [1, 2]
    assert m.case("a").class_table == {1: 1, 2: 2, 3: 2}
    path = save_manifest(m, tmp_path / "saved.json")
    again = load_manifest(path)
    assert again.task == "instance" and again.case("a").class_table == {1: 1, 2: 2, 3: 2}
    assert json.loads(path.read_text())["cases"][0]["classes"] == {"1": 1, "2": 2, "3": 2}
    semantic = manifest_from_dict({**BASE, "task": "semantic", "cases": [{"id": "a", "images": ["a.nii"]}]},
                                  root=tmp_path)
    assert "task" not in semantic.to_dict()  # semantic manifests are written as before


@pytest.mark.parametrize(("change", "message"), [
    ({"task": "panoptic"}, "'task' must be one of"),
    ({"cases": [{"id": "a", "images": ["a.nii"], "label": "l.nii", "classes": {"0": "nodule"}}]}, "not an object id"),
    ({"cases": [{"id": "a", "images": ["a.nii"], "label": "l.nii", "classes": {"1": "polyp"}}]},
     "is not a declared class"),
    ({"cases": [{"id": "a", "images": ["a.nii"], "label": "l.nii", "classes": {"1": 0}}]}, "background class"),
    ({"cases": [{"id": "a", "images": ["a.nii"], "label": "l.nii"}]}, "every labelled case needs 'classes'"),
    ({"cases": [{"id": "a", "images": ["a.nii"], "label": "l.nii", "classes": {"40000": 1}}]}, "above 32767"),
])
def test_instance_manifest_errors(tmp_path: Path, change: dict, message: str) -> None:
    data = {**_manifest([{"id": "a", "images": ["a.nii"], "label": "l.nii", "classes": {"1": 1}}]), **change}
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict(data, root=tmp_path)


def test_classes_need_an_instance_manifest(tmp_path: Path) -> None:
    data = {**BASE, "task": "semantic", "cases": [{"id": "a", "images": ["a.nii"], "label": "l", "classes": {"1": 1}}]}
    with pytest.raises(ManifestError, match='add "task": "instance"'):
        manifest_from_dict(data, root=tmp_path)


def test_class_map() -> None:
    inst = np.array([[0, 1, 1], [2, 2, -1], [5, 0, 0]])
    assert class_map(inst, {1: 2, 2: 1}, 1).tolist() == [[0, 2, 2], [1, 1, -1], [1, 0, 0]]


def test_dataset_check_reports_instance_problems(tmp_path: Path, write_nifti, image_data,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(tmp_path / "img.nii.gz", image_data(0))
    label = np.zeros((16, 16, 8), dtype=np.int32)
    label[2:5, 2:5, 1:3] = 1
    label[8:12, 8:12, 2:6] = 2
    label[1:3, 12:15, 5:7] = 5  # no class in the table
    write_nifti(tmp_path / "lab.nii.gz", label)
    big = label.copy()
    big[0, 0, 0] = 40000
    write_nifti(tmp_path / "big.nii.gz", big)
    cases = [{"id": "good", "images": ["img.nii.gz"], "label": "lab.nii.gz",
              "classes": {"1": "nodule", "2": "cyst", "5": "cyst"}},
             {"id": "bad", "images": ["img.nii.gz"], "label": "lab.nii.gz",
              "classes": {"1": "nodule", "2": "cyst", "7": "cyst"}},
             {"id": "huge", "images": ["img.nii.gz"], "label": "big.nii.gz",
              "classes": {"1": "nodule", "2": "cyst", "5": "cyst"}}]
    (tmp_path / "dataset.json").write_text(json.dumps(_manifest(cases)))
    report = check_dataset(tmp_path / "dataset.json")
    messages = {p.case_id: [] for p in report.problems}
    for p in report.problems:
        messages[p.case_id].append(p.message)
    assert "good" not in messages
    assert any("objects without a class in the case's 'classes': 5" in m for m in messages["bad"])
    assert any("empty instances" in m and "7" in m for m in messages["bad"])
    assert any("above 32767" in m and "40000" in m for m in messages["huge"])
    assert main(["dataset", "check", str(tmp_path / "dataset.json")]) == 1
    out = capsys.readouterr().out
    assert "bad: " in out and "empty instances" in out and "good: " not in out


def test_plan_and_cache_an_instance_dataset(tmp_path: Path, write_nifti, image_data,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from medseg.planning import load_plans
    from medseg.preprocessing import load_cached_case, preprocess_dataset

    cases = []
    rng = np.random.default_rng(0)
    for i in range(2):
        image = image_data(i) * 0.1 + 100
        label = np.zeros((16, 16, 8), dtype=np.int32)
        label[2:6, 2:6, 2:5] = 3
        label[9:14, 8:13, 1:6] = 4
        image[label > 0] += 300 + rng.normal(0, 5, size=int((label > 0).sum()))
        write_nifti(tmp_path / f"img{i}.nii.gz", image)
        write_nifti(tmp_path / f"lab{i}.nii.gz", label)
        cases.append({"id": f"c{i}", "images": [f"img{i}.nii.gz"], "label": f"lab{i}.nii.gz",
                      "classes": {"3": "nodule", "4": "cyst"}})
    (tmp_path / "dataset.json").write_text(json.dumps(_manifest(cases)))
    assert main(["plan", str(tmp_path / "dataset.json"), "-o", str(tmp_path / "plans.json"),
                 "--configs", "3d_fullres", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "mask_rcnn" in out
    plans = load_plans(tmp_path / "plans.json")
    cfg = plans["configurations"]["3d_fullres"]
    assert plans["task"] == "instance" and cfg["model"]["name"] == "mask_rcnn"
    assert all(p % 32 == 0 for p in cfg["patch_size"]) and cfg["model"]["kwargs"] == {}
    fingerprint = json.loads((tmp_path / "fingerprint.json").read_text())
    assert fingerprint["task"] == "instance"
    assert fingerprint["class_voxel_counts"]["1"] == 2 * 48 and fingerprint["class_voxel_counts"]["2"] == 2 * 125
    folder = preprocess_dataset(load_manifest(tmp_path / "dataset.json"), plans, "3d_fullres", tmp_path / "cache")
    case = load_cached_case(folder, "c0")
    assert case["instance_classes"] == {3: 1, 4: 2}
    assert set(np.unique(case["seg"]).tolist()) <= {-1, 0, 3, 4}
    assert len(case["locations"][1]) == 48 and len(case["locations"][2]) == 125
    from medseg.errors import PlanningError
    from medseg.planning import plan_experiment

    with pytest.raises(PlanningError, match="one class per voxel"):
        plan_experiment(fingerprint, model="nnunet", configs="3d_fullres")
