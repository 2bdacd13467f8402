"""The README's commands, run: every ``$ medseg …`` line of its console blocks in order in one sandbox folder, the
Python API example, and every option of every inline ``medseg …`` mention checked against that command's ``--help``.

Reduced mode: training runs with a tiny network and patch (:data:`REDUCED`). Commands on the real scans of
``../shared/data`` (the README shows their real output) skip when that folder is absent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from medseg.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED_DATA = ROOT.parent / "shared" / "data"

#: Names in the README's examples that stand for the real scans of ``../shared/data`` (staged by :func:`sandbox`).
SHARED_NAMES = ("prostatex_t2_series", "ct-3slice", "study/", "Task09_Spleen", "spinal_cord.json", "spleen.json")
#: Extra arguments per subcommand that keep the docs test fast (same command, smaller network and patch).
REDUCED = {
    "train": ["--set", "model_kwargs={features_per_stage: [4, 8, 16, 32]}", "--set", "patch_size=[32, 32, 32]",
              "--set", "val_iterations=1", "--set", "num_workers=0", "--set", "preprocess_workers=1"],
}
#: Shown output lines checked word for word (after collapsing whitespace): deterministic ones, not timings/scores.
CHECKED_PREFIXES = ("wrote ", "report: ", "next: ", "medseg: error: ", "checked ")


def _console_blocks(text: str) -> list[str]:
    return re.findall(r"```console\n(.*?)```", text, re.S)


def readme_commands() -> list[tuple[str, list[str]]]:
    """``(command, shown output lines)`` for every ``$ medseg …`` line of the README, in order."""
    commands: list[tuple[str, list[str]]] = []
    for block in _console_blocks(README.read_text()):
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:].strip(), []))
            elif commands:
                commands[-1][1].append(line)
    return commands


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _needs_shared(command: str) -> bool:
    return any(name in command for name in SHARED_NAMES)


def _stage_shared(root: Path) -> None:
    """The README's example inputs, made from ``../shared/data`` (symlinks; small manifests written here)."""
    data = SHARED_DATA
    (root / "prostatex_t2_series").symlink_to(data / "prostatex_t2_series")
    (root / "ct-3slice").symlink_to(data / "dcmqi_ct3slice" / "ct-3slice")
    study = root / "study"
    study.mkdir()
    for folder, prefix in ((data / "dcmqi_ct3slice" / "ct-3slice", "ct"), (data / "prostatex_t2_series", "mr")):
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            (study / f"{prefix}_{file.name}").symlink_to(file)
    task = root / "Task09_Spleen"
    for sub, name in (("imagesTr", "sub-spleen2_ct.nii.gz"), ("labelsTr", "sub-spleen2_ct_seg-manual.nii.gz")):
        (task / sub).mkdir(parents=True)
        (task / sub / "spleen_2.nii.gz").symlink_to(data / "ivadomed_msd_spleen" / name)
    (task / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"}, "numTraining": 1, "numTest": 0,
        "training": [{"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}], "test": [],
    }))
    (root / "sct_spine").symlink_to(data / "sct_spine")
    spine = "sct_spine/"
    (root / "spinal_cord.json").write_text(json.dumps({
        "format_version": 1, "name": "SpinalCord", "channels": [{"name": "MR", "modality": "MR"}],
        "labels": {"background": 0, "cord": 1},
        "cases": [
            {"id": "t2", "images": [spine + "t2_t2.nii.gz"], "label": spine + "t2_t2_seg-manual.nii.gz"},
            {"id": "t2s", "images": [spine + "t2s_t2s.nii.gz"], "label": spine + "t2s_t2s_seg.nii.gz"},
            {"id": "t2lev", "images": [spine + "t2_t2.nii.gz"], "label": spine + "t2_t2_seg-manual_labeled.nii.gz"},
            {"id": "t1wrong", "images": [spine + "t1_t1w.nii.gz"], "label": spine + "t2_t2_seg-manual.nii.gz"},
            {"id": "missing", "images": ["nope.nii.gz"]},
        ],
    }))
    (root / "patient_042").mkdir()
    (root / "patient_042" / "CT").symlink_to(data / "dcmqi_ct3slice" / "ct-3slice")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    for name in ("configs", "pipelines"):
        (root / name).symlink_to(ROOT / name)
    if SHARED_DATA.is_dir():
        _stage_shared(root)
    return root


def test_the_readme_shows_console_commands() -> None:
    commands = [c for c, _ in readme_commands()]
    assert len(commands) >= 12
    assert {shlex.split(c)[1] for c in commands} >= {"info", "convert", "dataset", "plan", "train", "predict",
                                                       "evaluate", "volumes"}


@pytest.mark.slow
def test_every_readme_command_runs(sandbox: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Each command exits as the README shows (an error exits 1) and prints its deterministic lines verbatim."""
    previous = Path.cwd()
    os.chdir(sandbox)
    skipped: list[str] = []
    try:
        for command, shown in readme_commands():
            words = shlex.split(command)
            assert words[0] == "medseg", command
            if _needs_shared(command) and not SHARED_DATA.is_dir():
                skipped.append(command)
                continue
            # a command that sizes its own network (the instance example) keeps its settings
            args = words[1:] + ([] if "model_kwargs" in command else REDUCED.get(words[1], []))
            code = main(args)
            out, err = capfd.readouterr()
            actual = _collapse(out + "\n" + err)
            shown_text = "\n".join(shown)
            failing = "medseg: error:" in shown_text or re.search(r"\d+ problems? in \d+ cases?", shown_text)
            assert code == (1 if failing else 0), f"{command}\n{out}\n{err}"
            for line in shown:
                if line.startswith(CHECKED_PREFIXES) or (words[1:3] == ["dataset", "check"] and ": " in line):
                    assert _collapse(line) in actual, f"{command}: README shows {line!r}, it printed:\n{out}{err}"
    finally:
        os.chdir(previous)
    if skipped:
        pytest.skip(f"{len(skipped)} README commands need ../shared/data: {skipped[0]} …")


@pytest.mark.slow
def test_python_api_example_runs(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip("the example reads a DICOM series and a manifest staged from ../shared/data")
    monkeypatch.chdir(sandbox)
    if not (sandbox / "spleen.json").exists():
        assert main(["dataset", "import", "Task09_Spleen", "-o", "spleen.json"]) == 0
    (code,) = re.findall(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert namespace["net"] is not None and (sandbox / "patient_042.nii.gz").exists()


def _inline_commands() -> list[list[str]]:
    """Every inline ``medseg …`` code span of the README, as words (placeholders and all)."""
    spans = re.findall(r"`(medseg [^`]+)`", README.read_text())
    return [shlex.split(span.replace("…", "")) for span in spans]


def _help(words: list[str]) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([*words, "--help"])
    assert code == 0, words
    return _collapse(buffer.getvalue())


def _command_of(words: list[str]) -> list[str] | None:
    """The subcommand words of an inline mention (``["dataset", "check"]``), or ``None`` for the bare program."""
    if len(words) < 2 or words[1].startswith("-"):
        return None
    return words[1:3] if words[1] == "dataset" and len(words) > 2 else words[1:2]


#: Options of ``medseg`` itself rather than of a subcommand.
GLOBAL_OPTIONS = ("--debug", "--version", "--help")


def test_inline_commands_and_their_options_exist() -> None:
    """Every inline mention names a real command, and every option a paragraph shows belongs to its command.

    ``medseg plan MANIFEST -o plans.json --gpu-memory-gb 8``: ``plan`` has ``--gpu-memory-gb``. A bare option span
    (`` `--lcc` ``) must be an option of a command the same paragraph mentions, or of those the last paragraph with
    a mention named.
    """
    helps: dict[str, str] = {}

    def help_of(command: list[str]) -> str:
        key = " ".join(command)
        if key not in helps:
            helps[key] = _help(command)
        return helps[key]

    text = README.read_text().split("## Python API")[0]
    def block_mentions(match: re.Match[str]) -> str:  # a console block counts as a mention of its commands
        return " ".join(f"`{line[2:]}`" for line in match.group(0).splitlines() if line.startswith("$ medseg"))

    text = re.sub(r"```.*?```", block_mentions, text, flags=re.S)
    current: list[list[str]] = []
    checked = 0
    for paragraph in re.split(r"\n\s*\n", text):
        mentioned = [c for c in (_command_of(shlex.split(s.replace("…", "").replace("[", "").replace("]", "")))
                                 for s in re.findall(r"`(medseg [^`]+)`", paragraph)) if c]
        context = mentioned + [c for c in current if c not in mentioned]
        if mentioned:
            current = mentioned
        for span in re.findall(r"`(medseg [^`]+)`", paragraph):
            words = shlex.split(span.replace("…", "").replace("[", "").replace("]", ""))
            command = _command_of(words)
            if command is None:
                continue
            for option in (w.split("=")[0] for w in words if w.startswith("--")):
                assert option in help_of(command) or option in GLOBAL_OPTIONS, f"`{span}`: no option {option}"
                checked += 1
        for option in re.findall(r"`(--[a-z][a-z0-9-]*)", paragraph):
            if option in GLOBAL_OPTIONS or not context:
                continue
            owners = [c for c in context if option in help_of(c)]
            assert owners, f"README paragraph on medseg {context[0][0]}: {option} is not an option of " + \
                ", ".join(" ".join(c) for c in context)
            checked += 1
    assert checked >= 15
