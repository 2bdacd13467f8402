"""Hostile configuration through ``medseg run`` and ``medseg train``: YAML bombs, deep nesting, variable cycles,
clean paths outside the lane, unknown presets and devices — refused in bounded time with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_helpers import assert_one_line_error

BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB


def _pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_alias_bomb_in_a_pipeline_is_refused(cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, BOMB)
    assert_one_line_error(cli("run", path), 1, path, "alias")


def test_alias_bomb_in_a_training_preset_is_refused(cli, tmp_path: Path) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text(BOMB.replace("a: &a", "x: &a"))
    plans = tmp_path / "plans.json"
    plans.write_text("{}")
    assert_one_line_error(cli("train", plans, "--preset", preset), 1, preset, "alias")


def test_alias_bomb_in_a_set_value_is_refused(cli, tmp_path: Path) -> None:
    value = "[" + BOMB.replace("\n", ", ").rstrip(", ") + "]"
    path = _pipeline(tmp_path, "vars:\n  x: 1\nsteps:\n  - run: [info]\n")
    line = assert_one_line_error(cli("run", path, "--set", f"x={{{value.strip('[]')}}}"), 1, "--set")
    assert len(line) < 600


def test_deeply_nested_yaml_is_refused(cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "steps: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(cli("run", path), 1, path, "nests too deeply")


def test_python_tags_are_refused(cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "steps: !!python/object/apply:os.system ['echo owned']\n")
    assert_one_line_error(cli("run", path), 1, path, "YAML")


def test_a_long_value_is_quoted_short(cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "vars:\n  x: 1\nsteps:\n  - run: [info]\n")
    result = cli("run", path, "--set", "x.y" + "=" + "z" * 50_000)
    line = assert_one_line_error(result, 1)
    assert len(line) < 600


@pytest.mark.parametrize("override", ["out=${out}/x", "a=${b}", "b=${a}/y"])
def test_variable_cycles_are_refused(cli, tmp_path: Path, override: str) -> None:
    path = _pipeline(tmp_path, "vars:\n  out: o\n  a: ${b}\n  b: b\nsteps:\n  - run: [info]\n")
    extra = ["--set", "b=${a}"] if override.startswith("a=") else []
    result = cli("run", path, "--set", override, *extra)
    line = assert_one_line_error(result, 1, path, "cycle")
    assert "→" in line


def test_exponential_variable_expansion_is_refused(cli, tmp_path: Path) -> None:
    chain = "".join(f"  v{i}: ${{v{i + 1}}}${{v{i + 1}}}\n" for i in range(40))
    path = _pipeline(tmp_path, f"vars:\n{chain}  v40: xxxxxxxx\nsteps:\n  - run: [info]\n")
    assert_one_line_error(cli("run", path), 1, path, "expands to more than")


def test_clean_outside_the_work_folder_is_refused_before_any_step(cli, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    work = tmp_path / "a" / "b" / "work"
    path = _pipeline(tmp_path, f"vars:\n  work: {work}\nsteps:\n  - name: s\n    run: [info]\n"
                               f"    outputs: ['${{work}}/x']\n    clean: ['${{work}}/../../../victim']\n")
    assert_one_line_error(cli("run", path), 1, path, "victim", "outside")
    assert (victim / "precious.txt").read_text() == "keep me"


def test_clean_through_a_symbolic_link_out_of_the_lane_is_refused(cli, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(victim, target_is_directory=True)
    path = _pipeline(tmp_path, f"vars:\n  work: {work}\nsteps:\n  - name: s\n    run: [info]\n"
                               f"    outputs: ['${{work}}/x']\n    clean: ['${{work}}/link']\n")
    assert_one_line_error(cli("run", path), 1, path, "outside")
    assert victim.is_dir()


def test_corrupt_pipeline_state_starts_afresh(cli, tmp_path: Path) -> None:
    out = tmp_path / "work" / "done.txt"
    path = _pipeline(tmp_path, f"vars:\n  work: {tmp_path / 'work'}\nsteps:\n  - name: s\n    run: [info]\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "pipeline_state.json").write_text('{"version": 1, "steps": {' * 3)
    result = cli("run", path)
    assert result.code == 0, result.err
    assert not out.exists()


def test_unknown_pipeline_variable(cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, "steps:\n  - run: [info, '${nope}']\n")
    assert_one_line_error(cli("run", path), 1, "nope")


@pytest.mark.parametrize(("args", "names"), [
    (["--preset", "no_such_preset"], ["no_such_preset", "cpu_small"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--set", "device=cuda:x"], ["device"]),
    (["--set", "epochs=many"], ["epochs"]),
    (["--fold", "zero"], ["--fold"]),
])
def test_bad_training_options_fail_at_once(cli, tmp_path: Path, args: list[str], names: list[str]) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text("{}")
    assert_one_line_error(cli("train", plans, *args), 1, *names)


def test_training_presets_ship_with_the_package(tmp_path: Path) -> None:
    from medseg.config import load_config
    from medseg.presets import PRESETS_DIR, list_presets, resolve_preset
    from medseg.training import TrainConfig

    assert {"cpu_small", "nnunet_default", "demo_cpu", "demo_cuda", "demo_smoke"} <= set(list_presets())
    assert resolve_preset("cpu_small").parent == PRESETS_DIR  # not the checkout's folder: works from anywhere
    own = tmp_path / "cpu_small"
    own.write_text("epochs: 7\n")
    assert resolve_preset(own) == own  # a file the user names wins over a shipped name
    assert load_config(TrainConfig, resolve_preset("cpu_small")).device == "cpu"


def test_hand_edited_plans_with_a_missing_entry(cli, tmp_path: Path, mni_dataset) -> None:
    import json

    plans = json.loads(Path(mni_dataset["plans"]).read_text())
    del plans["configurations"]["3d_fullres"]["patch_size"]
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    assert_one_line_error(cli("train", path, "--manifest", mni_dataset["manifest"], "--out", tmp_path / "run"), 1,
                          path, "patch_size")


@pytest.mark.parametrize(("model", "refused"), [("pspnet", True), ("deeplabv3plus", True), ("nnunet", False)])
def test_batch_norm_on_a_one_by_one_branch_is_refused_at_batch_size_one(mni_dataset, model: str,
                                                                         refused: bool) -> None:
    import json

    from medseg.errors import TrainingError
    from medseg.preprocessing import configuration_of
    from medseg.training import TrainConfig
    from medseg.training.trainer import _check_batch_norm_at_batch_one

    plans = json.loads(Path(mni_dataset["plans"]).read_text())
    cfg = configuration_of(plans, "3d_fullres")
    kwargs = {"backbone_kwargs": {"width": 0.125}} if model != "nnunet" else {}
    config = TrainConfig(model=model, model_kwargs=kwargs, batch_size=1, device="cpu")
    if refused:
        with pytest.raises(TrainingError, match=rf"'{model}'.*batch normalisation.*batch_size to 2"):
            _check_batch_norm_at_batch_one(cfg, config, [32, 32, 32])
    else:
        _check_batch_norm_at_batch_one(cfg, config, list(cfg.patch_size))


def test_gaussian_noise_sigma_is_nnunets_draw() -> None:
    import numpy as np

    from medseg.training.augment import noise_sigma
    from medseg.training.config import AugmentationConfig

    rng = np.random.default_rng(0)
    sigmas = np.array([noise_sigma(AugmentationConfig(), rng) for _ in range(2000)])
    assert sigmas.max() <= 0.1 and sigmas.max() > 0.09  # U(0, 0.1) used as the standard deviation, as nnU-Net does
    assert abs(sigmas.mean() - 0.05) < 0.005
