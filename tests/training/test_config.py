"""Training settings: YAML round trip, presets, overrides, k-fold splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.config import load_config, save_config, to_dict
from medseg.errors import ConfigError, TrainingError
from medseg.presets import PRESETS_DIR, resolve_preset
from medseg.training import TrainConfig, kfold_splits


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = load_config(TrainConfig, None, ["optimizer=adamw", "augmentation.scaling=[0.8, 1.2]",
                                             "patch_size=[32, 32, 32]", "model_kwargs={features_per_stage: [4, 8]}"])
    path = save_config(config, tmp_path / "config.yaml")
    again = load_config(TrainConfig, path)
    assert again == config
    assert to_dict(again) == to_dict(config)


def test_presets_load() -> None:
    default = load_config(TrainConfig, resolve_preset("nnunet_default"))
    assert default == TrainConfig()
    assert resolve_preset("train_cpu_small.yaml") == resolve_preset("cpu_small") == PRESETS_DIR / "cpu_small.yaml"
    small = load_config(TrainConfig, resolve_preset("cpu_small"), ["epochs=3"])
    assert small.epochs == 3 and small.device == "cpu" and small.patch_size == [64, 64, 64]


def test_nnunet_defaults() -> None:
    c = TrainConfig()
    assert (c.epochs, c.iterations_per_epoch, c.val_iterations) == (1000, 250, 50)
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.poly_exponent, c.grad_clip) == (
        "sgd", 1e-2, 0.99, 3e-5, 0.9, 12.0)
    assert c.oversample_foreground == 0.33 and c.augmentation.scaling == (0.7, 1.4)


def test_bad_keys_fail_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, None, ["loss=dice_only"])
    assert "\n" not in str(info.value) and "loss" in str(info.value)
    with pytest.raises(ConfigError):
        load_config(TrainConfig, None, ["augmentation.p_rotaton=0.1"])


def test_kfold_is_deterministic_and_partitions() -> None:
    ids = [f"case{i:02d}" for i in range(13)]
    splits = kfold_splits(ids, 5, seed=1)
    assert splits == kfold_splits(list(reversed(ids)), 5, seed=1)
    assert splits != kfold_splits(ids, 5, seed=2)
    assert sorted(v for s in splits for v in s["val"]) == ids
    assert [len(s["val"]) for s in splits] == [3, 3, 3, 2, 2]
    for s in splits:
        assert sorted(s["train"] + s["val"]) == ids
    assert len(kfold_splits(ids[:3], 5)) == 3
    with pytest.raises(TrainingError):
        kfold_splits([], 5)
