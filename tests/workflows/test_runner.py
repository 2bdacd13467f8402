"""Pipelines: variables, step-by-step resumption, failures, and a real two-step pipeline through `medseg run`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.errors import ConfigError
from medseg.io import load_image, make_image, save_image
from medseg.workflows import PipelineError, load_pipeline, run_pipeline

PIPELINE = """
name: convert-twice
vars:
  work: {work}
  ending: nrrd
steps:
  - name: first
    run: [convert, "{source}", "${{work}}/a.${{ending}}"]
    inputs: ["{source}"]
    outputs: ["${{work}}/a.${{ending}}"]
  - name: second
    run: [convert, "${{work}}/a.${{ending}}", "${{work}}/b.nii.gz"]
    inputs: ["${{work}}/a.${{ending}}"]
    outputs: ["${{work}}/b.nii.gz"]
"""


@pytest.fixture
def pipeline_file(tmp_path: Path, mni_crop) -> Path:
    data, affine = mni_crop
    source = save_image(make_image(data[None], affine), tmp_path / "source.nii.gz")
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(work=tmp_path / "work", source=source))
    return path


def test_runs_then_skips_then_reruns_what_changed(pipeline_file: Path, tmp_path: Path, mni_crop) -> None:
    calls: list[list[str]] = []

    def execute(words):
        calls.append(list(words))
        return main(list(words))

    pipeline = load_pipeline(pipeline_file)
    assert [s.run[0] for s in pipeline.steps] == ["convert", "convert"]
    assert run_pipeline(pipeline, execute, echo=lambda _: None) == [
        ("first", "ran", pytest.approx(0, abs=60)), ("second", "ran", pytest.approx(0, abs=60))]
    np.testing.assert_array_equal(load_image(tmp_path / "work" / "b.nii.gz")[0].numpy(), mni_crop[0])
    statuses = [status for _, status, _ in run_pipeline(load_pipeline(pipeline_file), execute, echo=lambda _: None)]
    assert statuses == ["skipped", "skipped"] and len(calls) == 2
    # a changed input reruns its step and, through the rewritten output, the next one
    source = tmp_path / "source.nii.gz"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    statuses = [status for _, status, _ in run_pipeline(load_pipeline(pipeline_file), execute, echo=lambda _: None)]
    assert statuses == ["ran", "ran"]
    # a deleted output reruns only that step
    (tmp_path / "work" / "b.nii.gz").unlink()
    statuses = [status for _, status, _ in run_pipeline(load_pipeline(pipeline_file), execute, echo=lambda _: None)]
    assert statuses == ["skipped", "ran"]


def test_set_overrides_variables_and_changes_the_command(pipeline_file: Path, tmp_path: Path) -> None:
    pipeline = load_pipeline(pipeline_file, ["ending=mha"])
    assert pipeline.steps[0].run[-1].endswith("a.mha") and pipeline.variables["device"] in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="unknown variable 'endings'"):
        load_pipeline(pipeline_file, ["endings=mha"])
    assert load_pipeline(pipeline_file, ["device=cpu"]).variables["device"] == "cpu"  # built-ins are overridable


def test_failed_step_stops_and_resumes_there(pipeline_file: Path) -> None:
    attempts = {"n": 0}

    def flaky(words):
        attempts["n"] += 1
        return 1 if attempts["n"] == 2 else main(list(words))

    with pytest.raises(PipelineError, match="step 'second' failed with exit code 1"):
        run_pipeline(load_pipeline(pipeline_file), flaky, echo=lambda _: None)
    statuses = [status for _, status, _ in run_pipeline(load_pipeline(pipeline_file), flaky, echo=lambda _: None)]
    assert statuses == ["skipped", "ran"]


def test_malformed_pipelines(tmp_path: Path) -> None:
    cases = {
        "steps: []\n": "steps must be a non-empty list",
        "steps:\n  - name: a\n": "step a has no command",
        "steps:\n  - run: [info]\n    output: [x]\n": "unknown key 'output'",
        "steps:\n  - run: [convert, '${nope}', b]\n": r"unknown variable \$\{nope\}",
        "steps:\n  - {name: a, run: [info]}\n  - {name: a, run: [info]}\n": "two steps are named 'a'",
        "step: []\n": "unknown key 'step'",
    }
    for text, problem in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(PipelineError, match=problem):
            load_pipeline(path)


def test_medseg_run_cli(pipeline_file: Path, capsys) -> None:
    assert main(["run", str(pipeline_file)]) == 0
    out = capsys.readouterr().out
    assert "[1/2] first: medseg convert" in out and "2 steps ran" in out
    assert main(["run", str(pipeline_file)]) == 0
    assert "0 steps ran, 2 up to date" in capsys.readouterr().out
    assert main(["run", str(pipeline_file), "--step", "nope"]) == 1
    assert "no step named 'nope'" in capsys.readouterr().err


def test_shipped_pipelines_resolve() -> None:
    root = Path(__file__).resolve().parents[2] / "pipelines"
    files = sorted(root.glob("*.yaml"))
    assert files, "pipelines/ holds no pipeline"
    for path in files:
        pipeline = load_pipeline(path)
        assert pipeline.steps and all(step.run for step in pipeline.steps)


def test_clean_paths_go_only_when_inputs_changed(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("1")
    run_dir = tmp_path / "run"
    (tmp_path / "p.yaml").write_text(
        f"vars:\n  work: '{tmp_path}'\nsteps:\n  - name: s\n    run: [info]\n    inputs: ['{source}']\n"
        f"    outputs: ['{run_dir}/done']\n"
        f"    clean: ['{run_dir}']\n"
    )

    def make(words, fail=False):
        run_dir.mkdir(exist_ok=True)
        (run_dir / "partial").write_text("x")
        if fail:
            return 1
        (run_dir / "done").write_text("ok")
        return 0

    with pytest.raises(PipelineError):
        run_pipeline(load_pipeline(tmp_path / "p.yaml"), lambda w: make(w, fail=True), echo=lambda _: None)
    (run_dir / "keep").write_text("resume me")
    run_pipeline(load_pipeline(tmp_path / "p.yaml"), make, echo=lambda _: None)
    assert (run_dir / "keep").exists()  # same inputs: an interrupted step resumes in place
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    run_pipeline(load_pipeline(tmp_path / "p.yaml"), make, echo=lambda _: None)
    assert not (run_dir / "keep").exists() and (run_dir / "done").exists()  # new inputs: a fresh start


def test_ok_exit_codes_count_as_done_and_others_fail(pipeline_file: Path) -> None:
    text = pipeline_file.read_text().replace('    outputs: ["${work}/a.${ending}"]',
                                             '    outputs: ["${work}/a.${ending}"]\n    ok_exit_codes: [3]')
    pipeline_file.write_text(text)
    pipeline = load_pipeline(pipeline_file)
    assert pipeline.steps[0].ok_exit_codes == (0, 3) and pipeline.steps[1].ok_exit_codes == (0,)

    def execute(code: int):
        def run(words):
            save_image(make_image(np.zeros((1, 2, 2, 2), np.uint8), np.eye(4)), words[-1])
            return code
        return run

    lines: list[str] = []
    run_pipeline(pipeline, execute(3), only=["first"], echo=lines.append)
    assert any("exit code 3, accepted" in line for line in lines)
    with pytest.raises(PipelineError, match="exit code 3"):
        run_pipeline(pipeline, execute(3), only=["second"], echo=lambda _: None)
    pipeline_file.write_text(text.replace("ok_exit_codes: [3]", "ok_exit_codes: three"))
    with pytest.raises(PipelineError, match="ok_exit_codes must be a list of integers"):
        load_pipeline(pipeline_file)
