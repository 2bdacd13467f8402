"""The methods as options of `medseg train` and `medseg predict`, together, with any model: run folders record them,
`--resume` restores the discriminators exactly, prediction rebuilds the network and appends the coordinates, the CRF
settings are part of a batch's identity, and `medseg models --methods` lists the seed rows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medseg.cli.main import main
from medseg.config import load_config
from medseg.errors import TrainingError
from medseg.training import TrainConfig, train
from medseg.training.trainer import FoldTrainer

README = Path(__file__).resolve().parents[2] / "README.md"

#: Every method at once on a tiny run.
ALL_METHODS = ["loss=label_relaxation", "coordinates=world", "crf_layer.enabled=true", "crf_layer.window=3",
               "crf_layer.iterations=2", "adversarial.enabled=true", "adversarial.features=4"]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    return out + err


def test_models_lists_the_methods_and_their_seed_rows(capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(_run(["models", "--methods", "--json"], capsys))
    seeds = {n for r in rows for n in r["seed_rows"]}
    assert {8, 15, 21, 40, 54, 62, 73, 90, 103, 134} <= seeds
    assert {r["key"] for r in rows} >= {"dense_crf", "convcrf", "adversarial", "domain_adaptation",
                                         "label_relaxation", "coordinates", "cascade"}
    table = _run(["models", "--methods"], capsys)
    assert "domain_adaptation" in table and "--crf dense" in table


def test_readme_methods_table_is_the_catalogue() -> None:
    from medseg.cli.models import method_rows, methods_markdown

    block = re.search(r"<!-- methods-table -->\n(.*?)\n<!-- /methods-table -->", README.read_text(), re.S)
    assert block, "README.md lost its methods-table markers"
    assert block.group(1).strip() == methods_markdown(method_rows()), "regenerate: medseg models --methods --markdown"


def _config(dataset: dict[str, Any], tmp_path: Path, extra: list[str], epochs: int = 2) -> TrainConfig:
    return load_config(TrainConfig, None, [*dataset["tiny"], f"epochs={epochs}", "iterations_per_epoch=2",
                                           "preprocess_workers=1", f"cache_dir={tmp_path / 'cache'}", *extra])


def test_all_methods_train_together_and_predict(mni_dataset_plans: dict[str, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dataset = mni_dataset_plans
    config = _config(dataset, tmp_path, ALL_METHODS)
    train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "run", config, manifest_path=dataset["manifest"],
          stream=open(tmp_path / "train.log", "w"))  # noqa: SIM115
    fold = tmp_path / "run" / "fold_0"
    stored = yaml.safe_load((fold / "config.yaml").read_text())
    assert stored["coordinates"] == "world" and stored["crf_layer"]["enabled"] and stored["adversarial"]["enabled"]
    state = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert set(state["methods"]) == {"adversarial"} and any(k.startswith("crf.") for k in state["model"])
    record = json.loads((fold / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= record["adversarial_disc_accuracy"] <= 1

    image = str(Path(dataset["root"]) / "mni_t1.nii.gz")
    out = _run(["predict", "-i", image, "-o", str(tmp_path / "pred"), "-m", str(tmp_path / "run"), "--device", "cpu",
                "--no-tta", "--crf", "dense", "--crf-set", "iterations=2"], capsys)
    assert "1 predicted" in out and (tmp_path / "pred" / "mni_t1.nii.gz").is_file()
    again = _run(["predict", "-i", image, "-o", str(tmp_path / "pred"), "-m", str(tmp_path / "run"), "--device",
                  "cpu", "--no-tta", "--crf", "dense", "--crf-set", "iterations=2"], capsys)
    assert "1 already done" in again
    changed = _run(["predict", "-i", image, "-o", str(tmp_path / "pred"), "-m", str(tmp_path / "run"), "--device",
                    "cpu", "--no-tta", "--crf", "conv", "--crf-set", "window=3"], capsys)
    assert "1 predicted" in changed  # another CRF is another result


def test_bad_crf_options_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for options, message in ((["--crf", "bilateral"], "--crf must be one of dense, conv"),
                             (["--crf", "dense", "--crf-set", "window=4"], "window must be a positive odd number")):
        code = main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path), *options])
        _, err = capsys.readouterr()
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_resume_restores_the_discriminators_exactly(mni_dataset_plans: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = mni_dataset_plans
    settings = ["adversarial.enabled=true", "adversarial.features=4", "augmentation.enabled=true"]
    config = _config(dataset, tmp_path, settings, epochs=3)
    train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "whole", config, manifest_path=dataset["manifest"],
          stream=open(tmp_path / "a.log", "w"))  # noqa: SIM115

    original = FoldTrainer._epoch

    def stop_after_first(self: FoldTrainer, epoch: int, *args: Any) -> dict[str, Any]:
        record = original(self, epoch, *args)
        if epoch == 0:
            raise KeyboardInterrupt
        return record

    monkeypatch.setattr(FoldTrainer, "_epoch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "cut", config, manifest_path=dataset["manifest"],
              stream=open(tmp_path / "b.log", "w"))  # noqa: SIM115
    monkeypatch.setattr(FoldTrainer, "_epoch", original)
    train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "cut", config, manifest_path=dataset["manifest"],
          resume=True, stream=open(tmp_path / "c.log", "w"))  # noqa: SIM115
    a = torch.load(tmp_path / "whole/fold_0/checkpoint_final.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "cut/fold_0/checkpoint_final.pt", map_location="cpu", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    discriminators = a["methods"]["adversarial"]["discriminators"]
    for key in discriminators:
        assert torch.equal(discriminators[key], b["methods"]["adversarial"]["discriminators"][key]), key


def test_runs_from_before_the_methods_still_resume(mni_dataset_plans: dict[str, Any], tmp_path: Path) -> None:
    dataset = mni_dataset_plans
    config = _config(dataset, tmp_path, [], epochs=1)
    train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "run", config, manifest_path=dataset["manifest"],
          stream=open(tmp_path / "a.log", "w"))  # noqa: SIM115
    path = tmp_path / "run" / "fold_0" / "config.yaml"
    stored = yaml.safe_load(path.read_text())
    for key in ("coordinates", "coordinate_scale", "crf_layer", "adversarial", "domain_adaptation",
                "relaxation_window"):
        del stored[key]
    path.write_text(yaml.safe_dump(stored))
    train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "run", config, manifest_path=dataset["manifest"],
          resume=True, stream=open(tmp_path / "b.log", "w"))  # noqa: SIM115
    with pytest.raises(TrainingError, match=r"configuration differs .*\(coordinates\)"):
        train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "run",
              _config(dataset, tmp_path, ["coordinates=voxel"], epochs=1), manifest_path=dataset["manifest"],
              resume=True)


def test_target_manifest_problems_are_named(mni_dataset_plans: dict[str, Any], tmp_path: Path) -> None:
    dataset = mni_dataset_plans
    missing = _config(dataset, tmp_path, [f"domain_adaptation.target_manifest={tmp_path / 'nope.json'}"])
    with pytest.raises(TrainingError, match="no such target manifest"):
        train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "a", missing, manifest_path=dataset["manifest"])
    two_channels = json.loads(Path(dataset["manifest"]).read_text())
    two_channels["channels"] = [{"name": "T1", "modality": "MR"}, {"name": "T2", "modality": "MR"}]
    import shutil

    for case in two_channels["cases"]:
        first = Path(dataset["root"]) / case["images"][0]
        second = tmp_path / f"{case['id']}_second.nii.gz"  # a manifest may not name one file twice in a case
        shutil.copyfile(first, second)
        case["images"] = [str(first), str(second)]
    (tmp_path / "two.json").write_text(json.dumps(two_channels))
    mismatch = _config(dataset, tmp_path, [f"domain_adaptation.target_manifest={tmp_path / 'two.json'}"])
    with pytest.raises(TrainingError, match="2 channel"):
        train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "b", mismatch, manifest_path=dataset["manifest"])
    levels = _config(dataset, tmp_path, [f"domain_adaptation.target_manifest={dataset['manifest']}",
                                         "domain_adaptation.levels=9"])
    with pytest.raises(TrainingError, match="levels is 9"):
        train(dataset["plans_path"], "3d_fullres", [0], tmp_path / "c", levels, manifest_path=dataset["manifest"])
