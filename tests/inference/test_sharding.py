"""Batch prediction sharded over processes: ``torchrun`` ranks and ``--num-parts``/``--part-id`` jobs write one output
folder and ledger, predict every case exactly once, and match one process voxel for voxel; a killed part is
completed by its next run, losing and duplicating nothing."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medseg.cli.main import main

N_CASES = 8


@pytest.fixture(scope="module")
def eight_cases(tmp_path_factory: pytest.TempPathFactory, mni_t1_path: Path) -> Path:
    """Eight real MRI cases: 32×40×28 crops of nilearn's MNI152 T1 at different places in the brain (2 mm)."""
    image = nib.load(str(mni_t1_path))
    data = np.asarray(image.dataobj)[::2, ::2, ::2].astype(np.int16)
    affine = image.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    folder = tmp_path_factory.mktemp("eight")
    rng = np.random.default_rng(0)
    for i in range(N_CASES):
        start = np.array([20, 25, 20]) + rng.integers(0, 12, 3)
        crop = data[start[0]:start[0] + 32, start[1]:start[1] + 40, start[2]:start[2] + 28]
        moved = affine.copy()
        moved[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        nib.save(nib.Nifti1Image(crop, moved), folder / f"subject_{i:02d}.nii.gz")
    return folder


def _args(inp: Path, out: Path, run: Path, *extra: str) -> list[str]:
    return ["predict", "-i", str(inp), "-o", str(out), "-m", str(run), "--device", "cpu", "--no-tta", "--progress",
            "plain", *extra]


def _cli(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue() + err.getvalue()


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def _ledger(folder: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        return db.execute("SELECT case_id, status, attempts, owner FROM cases ORDER BY case_id").fetchall()


@pytest.fixture(scope="module")
def reference(eight_cases: Path, untrained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("one_process")
    code, text = _cli(_args(eight_cases, out, untrained_run))
    assert code == 0, text
    outputs = _outputs(out)
    assert len(outputs) == N_CASES
    return outputs


def _assert_same(folder: Path, reference: dict[str, np.ndarray]) -> None:
    outputs = _outputs(folder)
    assert outputs.keys() == reference.keys()
    for name, labels in reference.items():
        np.testing.assert_array_equal(outputs[name], labels, err_msg=name)


def test_three_parts_as_separate_jobs_match_one_process(eight_cases: Path, untrained_run: Path,
                                                         reference: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "parts"
    jobs = [subprocess.Popen([sys.executable, "-m", "medseg", *_args(eight_cases, out, untrained_run, "--num-parts",
                                                                      "3", "--part-id", str(i))],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(3)]
    logs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], logs
    _assert_same(out, reference)
    rows = _ledger(out)
    assert len(rows) == N_CASES and all(r[1] == "done" and r[2] == 1 for r in rows)  # each case once
    assert sorted({r[3] for r in rows}) == ["0/3", "1/3", "2/3"]
    code, text = _cli(["predict", "--status", str(out)])
    assert code == 0
    assert [line.split()[:3] for line in text.splitlines()[1:4]] == [["0/3", "3", "3"], ["1/3", "3", "3"],
                                                                     ["2/3", "2", "2"]]


def test_torchrun_ranks_match_one_process(eight_cases: Path, untrained_run: Path, reference: dict[str, Any],
                                         tmp_path: Path) -> None:
    out = tmp_path / "torchrun"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "medseg", *_args(eight_cases, out, untrained_run)],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_same(out, reference)
    rows = _ledger(out)
    assert len(rows) == N_CASES and all(r[1] == "done" and r[2] == 1 for r in rows)
    assert sorted({r[3] for r in rows}) == ["0/2", "1/2"]


def test_a_part_killed_mid_batch_is_completed_by_its_next_run(eight_cases: Path, untrained_run: Path,
                                                              reference: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "medseg", *_args(eight_cases, out, untrained_run, "--num-parts", "2",
                                                        "--part-id", "0")]
    job = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert job.stdout is not None
    for line in job.stdout:  # kill -9 once the first case is written
        if line.startswith("[1/4]"):
            job.kill()
            break
    job.wait(timeout=60)
    other = subprocess.run([sys.executable, "-m", "medseg", *_args(eight_cases, out, untrained_run, "--num-parts",
                                                                   "2", "--part-id", "1")],
                           env=_env(), capture_output=True, text=True, timeout=600)
    assert other.returncode == 0, other.stdout + other.stderr
    before = {r[0]: r for r in _ledger(out)}
    assert sum(r[1] == "done" for r in before.values()) >= 5  # part 1's four and part 0's first
    code, text = _cli(["predict", "--status", str(out)])
    assert code == 0 and "0/2" in text
    again = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    _assert_same(out, reference)
    after = {r[0]: r for r in _ledger(out)}
    assert len(after) == N_CASES and all(r[1] == "done" for r in after.values())
    for case_id, row in after.items():  # finished cases were not redone; at most the one killed mid-case twice
        if before.get(case_id, (None, None))[1] == "done":
            assert row[2] == before[case_id][2]
        assert row[2] <= 2


def test_a_second_run_of_the_same_part_is_refused_but_other_parts_coexist(tmp_path: Path) -> None:
    from medseg.errors import OutputError
    from medseg.utils.files import FolderLock

    out = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom medseg.utils.files import FolderLock\n"
         "with FolderLock(sys.argv[1], 'medseg predict', part=(0, 2)):\n    print('held', flush=True)\n"
         "    time.sleep(120)", str(out)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with FolderLock(out, "medseg predict", part=(1, 2)):  # another part: fine
            pass
        with pytest.raises(OutputError, match=r"in use by medseg predict part 0/2 \(pid"), \
                FolderLock(out, "medseg predict", part=(0, 2)):
            pass
        with pytest.raises(OutputError, match=r"in use by medseg predict part 0/2"), \
                FolderLock(out, "medseg predict"):  # an unsharded run
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.parametrize(("args", "message"), [
    (["--num-parts", "2"], "go together"),
    (["--num-parts", "2", "--part-id", "2"], "does not exist"),
])
def test_part_options_are_checked(tmp_path: Path, untrained_run: Path, eight_cases: Path, args: list[str],
                                  message: str) -> None:
    code, text = _cli(_args(eight_cases, tmp_path / "out", untrained_run, *args))
    assert code == 1 and message in text
