"""``medseg fingerprint`` and ``medseg plan`` end to end on a tiny real dataset, in-process."""

from __future__ import annotations

import json
import os

from medseg.cli.main import main
from medseg.planning import load_fingerprint, load_plans


def test_fingerprint_command(tmp_path, mni_dataset, capsys):
    out = tmp_path / "fp.json"
    assert main(["fingerprint", str(mni_dataset["manifest"]), "-o", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "fingerprint of mni_tiny (3 labelled cases)" in text
    assert "median spacing" in text and f"wrote {out}" in text
    assert load_fingerprint(out)["num_cases"] == 3


def test_plan_command_computes_then_reuses_the_fingerprint(tmp_path, mni_dataset, capsys):
    out = tmp_path / "plans" / "plans.json"
    args = ["plan", str(mni_dataset["manifest"]), "-o", str(out), "--workers", "1", "--gpu-memory-gb", "8"]
    assert main(args) == 0
    text = capsys.readouterr().out
    fp_path = out.parent / "fingerprint.json"
    assert f"wrote {fp_path}" in text and f"wrote {out}" in text
    for row in ("3d_fullres", "2d", "patch size", "batch size", "poolings per axis", "normalisation", "T1: zscore"):
        assert row in text, row
    plans = load_plans(out)
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}
    assert plans["dataset_name"] == "mni_tiny"
    assert plans["configurations"]["3d_fullres"]["model"]["name"] == "nnunet"
    # second run: the fingerprint is newer than the manifest and matches it, so it is reused
    assert main(args) == 0
    assert f"using fingerprint {fp_path}" in capsys.readouterr().out
    # a manifest edited after the fingerprint makes it stale
    stamp = fp_path.stat().st_mtime
    os.utime(mni_dataset["manifest"], (stamp + 10, stamp + 10))
    assert main(args) == 0
    assert f"wrote {fp_path}" in capsys.readouterr().out


def test_plan_command_options_and_errors(tmp_path, mni_dataset, capsys):
    fp = tmp_path / "elsewhere.json"
    out = tmp_path / "plans.json"
    base = ["plan", str(mni_dataset["manifest"]), "-o", str(out), "--fingerprint", str(fp), "--workers", "1"]
    assert main([*base, "--configs", "3d_fullres", "--model", "nnunet", "--gpu-memory-gb", "24"]) == 0
    capsys.readouterr()
    plans = json.loads(out.read_text())
    assert fp.is_file() and set(plans["configurations"]) == {"3d_fullres"} and plans["gpu_memory_gb"] == 24.0
    assert main([*base, "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "medseg: error: unknown model 'nope'; choose one of:" in err and "nnunet" in err
    assert main([*base, "--configs", "3d_fullres,4d"]) == 1
    assert "unknown configuration '4d'" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.json"), "-o", str(out)]) == 1
    assert "medseg: error:" in capsys.readouterr().err
