"""Instances end to end on real photographs: check, plan, train, predict and evaluate through the command line.

Data: scikit-image's bundled ``coins`` photograph (every coin one object) and a crop of its bundled Hubble deep field
(every bright galaxy one object), each cut into quadrants; the last quadrant of each is held out
(:func:`medseg.data.instance_demo.make_instance_dataset`). A short training of one two-stage model (Mask R-CNN,
300 iterations) and one bottom-up model (CIA-Net, 200 iterations), both small, must reach a pooled panoptic quality
of at least 0.7 on the held-out quadrants, as ``medseg evaluate`` computes it on the predictions written by
``medseg predict``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medseg.cli.main import main

COMMON = ["--set", "patch_size=[128, 128]", "--set", "batch_size=2", "--set", "optimizer=adamw",
          "--set", "num_workers=0", "--set", "preprocess_workers=1", "--set", "val_iterations=1",
          "--set", "augmentation.enabled=false", "--set", "final_validation=false", "--set", "progress=plain"]

#: Per model: learning rate, network options (small variants), epochs of ITERATIONS iterations.
MODELS = {
    "mask_rcnn": ("0.002", "{backbone: resnet18, backbone_kwargs: {width: 0.25}, fpn_channels: 32, "
                  "representation: 128, mask_channels: 32, rpn_batch: 128, roi_batch: 64, "
                  "pre_nms_topk: [500, 300], post_nms_topk: [250, 300]}", 12),
    "cia_net": ("0.002", "{backbone: densenet121, backbone_kwargs: {growth_rate: 8, init_features: 16, "
                "block_config: [2, 2, 2, 2]}, channels: 32, min_size: 40}", 8),
}
ITERATIONS = 25


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    return out + err


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("skimage.data")
    from medseg.data.instance_demo import make_instance_dataset

    root = tmp_path_factory.mktemp("objects")
    make_instance_dataset(root / "data")
    return root


def test_the_demo_dataset_is_real_and_checked(objects: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["dataset", "check", str(objects / "data" / "dataset.json")], capsys)
    assert "checked 8 cases: no problems" in out
    manifest = json.loads((objects / "data" / "dataset.json").read_text())
    assert manifest["task"] == "instance" and manifest["splits"][0]["val"] == ["coins_3", "hubble_3"]
    from medseg.io import load_image

    coins = [np.asarray(load_image(objects / "data" / "labels" / f"coins_{i}.png").array) for i in range(4)]
    assert sum(len(np.unique(c)) - 1 for c in coins) >= 24  # every coin, some cut by the quadrants


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train with one thread, as the README's figures were measured, whatever the number of cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_short_training_reaches_pq_0_7_on_held_out_quadrants(objects: Path, model: str, one_thread: None,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = objects / "data"
    plans = objects / f"plans_{model}.json"
    _run(["plan", str(data / "dataset.json"), "-o", str(plans), "--model", model, "--fingerprint",
          str(objects / "fingerprint.json")], capsys)
    lr, kwargs, epochs = MODELS[model]
    run = objects / f"run_{model}"
    _run(["train", str(plans), "--config", "2d", "--fold", "0", "--out", str(run), "--epochs", str(epochs),
          "--iters-per-epoch", str(ITERATIONS), "--manifest", str(data / "dataset.json"), *COMMON,
          "--set", f"lr={lr}", "--set", f"model_kwargs={kwargs}"], capsys)
    pred = objects / f"pred_{model}"
    _run(["predict", "-i", str(data / "test.json"), "-o", str(pred), "-m", str(run), "--folds", "0",
          "--format", "png", "--device", "cpu", "--no-tta"], capsys)
    table = json.loads((pred / "coins_3_instances.json").read_text())
    assert table["instances"] and {"id", "class", "score", "volume_mm3", "centroid_mm"} <= set(table["instances"][0])
    _run(["evaluate", "--pred", str(pred), "--ref", str(data / "test.json"), "-o", str(objects / f"eval_{model}"),
          "--no-report"], capsys)
    summary = json.loads((objects / f"eval_{model}" / "summary.json").read_text())
    pooled = summary["pooled"]
    with capsys.disabled():
        print(f"\n{model}: held-out pooled PQ all {pooled['0']['PQ']:.3f}, coins {pooled['1']['PQ']:.3f}, "
              f"galaxies {pooled['2']['PQ']:.3f}; AJI {summary['mean']['0']['AJI']:.3f}")
    assert pooled["0"]["PQ"] >= 0.7, pooled
