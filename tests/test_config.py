"""Configuration dataclasses: YAML in, --set overrides, type checks, and a lossless round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from medseg.config import from_dict, load_config, parse_overrides, save_config, to_dict
from medseg.errors import ConfigError


@dataclass
class Optimizer:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-2
    momentum: float = 0.99
    nesterov: bool = True


@dataclass
class Recipe:
    epochs: int = 1000
    patch_size: tuple[int, int, int] = (128, 128, 128)
    optimizer: Optimizer = field(default_factory=Optimizer)
    out: Path | None = None
    folds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])


def test_yaml_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("epochs: 50\noptimizer:\n  name: adamw\n  lr: 0.001\n")
    cfg = load_config(Recipe, tmp_path / "r.yaml", ["optimizer.lr=3e-4", "patch_size=[64, 64, 32]", "out=runs/a"])
    assert cfg.epochs == 50 and cfg.optimizer.name == "adamw" and cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.patch_size == (64, 64, 32) and cfg.out == Path("runs/a") and cfg.optimizer.nesterov is True


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(Recipe, None, ["epochs=7", "folds=[1]"])
    path = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Recipe, path) == cfg
    assert to_dict(cfg)["patch_size"] == [128, 128, 128]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (["epoch=3"], "unknown key epoch"),
        (["optimizer.beta=3"], "unknown key optimizer.beta"),
        (["epochs=many"], "epochs: expected an integer, got 'many'"),
        (["optimizer.name=adam"], "optimizer.name: 'adam' is not one of 'sgd', 'adamw'"),
        (["patch_size=[1, 2]"], "patch_size: expected 3 values, got 2"),
        (["optimizer.nesterov=maybe"], "optimizer.nesterov: expected true or false"),
        (["noequals"], "is not of the form key=value"),
    ],
)
def test_bad_values_are_one_line_errors(overrides: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(Recipe, None, overrides)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("epochs: 5\noptimizer: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_config(Recipe, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Recipe, tmp_path / "list.yaml")


def test_parse_overrides_nested() -> None:
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    assert from_dict(Optimizer, {"lr": 1}).lr == 1.0
