"""Versioned schema: validation of loaded fingerprint and plans files, with clear errors."""

from __future__ import annotations

import copy
import json

import pytest

from medseg.errors import PlanningError
from medseg.planning import (
    PLANS_VERSION,
    load_fingerprint,
    load_plans,
    plan_experiment,
    save_fingerprint,
    save_plans,
    validate_fingerprint,
)


@pytest.fixture
def plans(uniform_fp):
    return plan_experiment(uniform_fp(20, (0.7, 0.7, 3.0), (256, 256, 40), labels=3))


def test_roundtrip(tmp_path, plans, uniform_fp):
    path = save_plans(plans, tmp_path / "sub" / "plans.json")
    assert load_plans(path) == plans
    fp = uniform_fp(3, (1, 1, 1), (32, 32, 32))
    assert load_fingerprint(save_fingerprint(fp, tmp_path / "fp.json")) == fp


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.update(plans_version=PLANS_VERSION + 1), "written by a newer medseg"),
        (lambda p: p.update(plans_version=0), "outdated"),
        (lambda p: p.pop("plans_version"), "not a medseg plans file"),
        (lambda p: p.pop("configurations"), "lack 'configurations'"),
        (lambda p: p.update(transpose_forward=[0, 0, 1]), "permutation"),
        (lambda p: p["configurations"]["3d_fullres"].update(patch_size=[20, 161, 160]), "not a multiple"),
        (lambda p: p["configurations"]["3d_fullres"]["topology"]["strides"].pop(), "topology.strides"),
        (lambda p: p["configurations"]["2d"].update(batch_size=0), "batch_size"),
        (lambda p: p["configurations"]["2d"]["normalization"].append({"scheme": "ct"}), "one {scheme"),
        (lambda p: p["configurations"]["2d"].update(next_stage="3d_nothing"), "not a configuration here"),
        (lambda p: p["configurations"]["2d"].pop("model"), "lacks 'model'"),
    ],
)
def test_bad_plans_are_rejected(tmp_path, plans, edit, message):
    bad = copy.deepcopy(plans)
    edit(bad)
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(PlanningError, match=message) as info:
        load_plans(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(PlanningError, match="no such plans file"):
        load_plans(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PlanningError, match="not valid JSON"):
        load_fingerprint(tmp_path / "broken.json")


def test_bad_fingerprints(uniform_fp, make_fp):
    fp = uniform_fp(2, (1, 1, 1), (32, 32, 32))
    with pytest.raises(PlanningError, match="must be 3D"):
        validate_fingerprint(make_fp([(1, 1)], [(32, 32)]))
    broken = copy.deepcopy(fp)
    broken["cases"][1]["spacing"] = [1, 0, 1]
    with pytest.raises(PlanningError, match="positive numbers"):
        validate_fingerprint(broken)
    broken = copy.deepcopy(fp)
    broken["median_relative_size_after_cropping"] = 1.5
    with pytest.raises(PlanningError, match=r"in \(0, 1\]"):
        validate_fingerprint(broken)
    broken = copy.deepcopy(fp)
    del broken["foreground_intensity_properties_per_channel"]["0"]["std"]
    with pytest.raises(PlanningError, match="need mean"):
        plan_experiment(broken)
