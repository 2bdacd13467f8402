"""Patch sampling: nnU-Net's oversampling rule and bbox, determinism per (seed, epoch, iteration, sample) across
worker counts and ranks, and the augmentation pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.training.augment import Augmenter, initial_patch_size
from medseg.training.config import AugmentationConfig
from medseg.training.data import BatchDataset, bbox_for, force_foreground, make_loader, split_batch


def test_oversampling_rule_matches_nnunet() -> None:
    assert [force_foreground(j, 2, 0.33) for j in range(2)] == [False, True]
    assert [force_foreground(j, 3, 0.33) for j in range(3)] == [False, False, True]
    assert sum(force_foreground(j, 12, 0.33) for j in range(12)) == 4
    assert not any(force_foreground(j, 4, 0.0) for j in range(4))


def test_batch_split_over_ranks() -> None:
    assert split_batch(2, 2) == [1, 1]
    assert split_batch(5, 2) == [3, 2]
    assert split_batch(7, 3) == [3, 2, 2]
    with pytest.raises(ValueError):
        split_batch(1, 2)


def test_bbox_random_range_and_forced_centre() -> None:
    rng = np.random.default_rng(0)
    shape, patch, pad = (20, 20, 20), (16, 16, 16), (4, 4, 4)
    corners = np.array([bbox_for(shape, patch, pad, None, False, rng) for _ in range(500)])
    assert corners.min() == -2 and corners.max() == 6  # lbs = -pad // 2, ubs = shape + pad // 2 - patch
    locations = {1: np.array([[15, 3, 10]])}
    assert bbox_for(shape, patch, pad, locations, True, rng) == [7, -2, 2]  # voxel - patch // 2, at least lbs


def _write_case(folder: Path, case_id: str, shape: tuple[int, int, int], blob: tuple[slice, ...]) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), dtype=np.int16)
    seg[(0, *blob)] = 1
    np.save(folder / f"{case_id}.npy", data)
    np.save(folder / f"{case_id}_seg.npy", seg)
    np.savez(folder / f"{case_id}_fg.npz", **{"1": np.argwhere(seg[0] == 1).astype(np.int32)})
    (folder / f"{case_id}.json").write_text(json.dumps({"shape_after_resampling": list(shape)}))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    _write_case(tmp_path, "a", (40, 40, 40), (slice(30, 33), slice(5, 8), slice(20, 23)))
    _write_case(tmp_path, "b", (36, 44, 30), (slice(2, 4), slice(30, 33), slice(3, 5)))
    return tmp_path


def _dataset(cache: Path, augment: bool, batch: int = 3, offset: int = 0, local: int | None = None,
             seed: int = 7) -> BatchDataset:
    return BatchDataset(cache, ["a", "b"], [16, 16, 16], batch, offset, batch if local is None else local, 4, seed, 0,
                        AugmentationConfig(enabled=augment), oversample_foreground=0.33)


def test_forced_samples_hold_foreground(cache: Path) -> None:
    ds = _dataset(cache, augment=False, batch=3)
    forced = random = 0
    for index in range(40):
        batch = ds[index]
        assert batch["data"].shape == (3, 1, 16, 16, 16) and batch["target"].shape == (3, 1, 16, 16, 16)
        assert (batch["target"][2] > 0).any()  # the last third is forced
        forced += 1
        random += int((batch["target"][:2] > 0).any(dim=(1, 2, 3, 4)).sum())
    assert forced == 40 and random < 40  # the tiny blobs are rarely hit by chance


def test_batches_are_deterministic_across_workers_and_ranks(cache: Path) -> None:
    ds = _dataset(cache, augment=True)
    first = ds[5]
    assert torch.equal(first["data"], _dataset(cache, augment=True)[5]["data"])
    assert not torch.equal(first["data"], ds[6]["data"])  # another iteration / epoch
    assert not torch.equal(first["data"], _dataset(cache, augment=True, seed=8)[5]["data"])
    # two ranks (samples 0-1 and 2) together build the single-process batch
    rank0 = _dataset(cache, augment=True, offset=0, local=2)[5]
    rank1 = _dataset(cache, augment=True, offset=2, local=1)[5]
    assert torch.equal(torch.cat([rank0["data"], rank1["data"]]), first["data"])
    # the loader with 2 workers yields exactly what 0 workers yield, epoch by epoch
    loaders = [make_loader(_dataset(cache, augment=True), workers) for workers in (0, 2)]
    for epoch in (0, 3):
        got = []
        for loader, sampler in loaders:
            sampler.set_epoch(epoch)
            got.append([b["data"] for b in loader])
        assert len(got[0]) == 4
        for a, b in zip(*got, strict=True):
            assert torch.equal(a, b)
    assert torch.equal(got[0][1], ds[3 * 4 + 1]["data"])


def test_initial_patch_size_like_nnunet() -> None:
    assert initial_patch_size([128, 128, 128], math.radians(30)) == [205, 205, 205]
    assert initial_patch_size([32, 32, 32], math.radians(30)) == [51, 51, 51]
    assert initial_patch_size([10, 64, 64], math.pi, dummy_2d=True) == [10, 75, 75]


def test_augmentation_all_transforms_deterministic_and_shaped() -> None:
    config = AugmentationConfig(p_rotation=1, p_scaling=1, p_noise=1, p_blur=1, p_brightness=1, p_contrast=1,
                                p_lowres=1, p_gamma=1, p_gamma_inverted=1)
    aug = Augmenter([16, 16, 16], config)
    image = torch.randn(2, 26, 26, 26)
    seg = (torch.rand(1, 26, 26, 26) * 3).to(torch.int16)
    a = aug(image, seg, np.random.default_rng(4))
    b = aug(image, seg, np.random.default_rng(4))
    c = aug(image, seg, np.random.default_rng(5))
    assert a[0].shape == (2, 16, 16, 16) and a[1].shape == (1, 16, 16, 16) and a[1].dtype == torch.int16
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert set(a[1].unique().tolist()) <= {0, 1, 2}


def test_mirroring_only_flips() -> None:
    off = dict.fromkeys(("p_rotation", "p_scaling", "p_noise", "p_blur", "p_brightness", "p_contrast", "p_lowres",
                         "p_gamma", "p_gamma_inverted"), 0.0)
    aug = Augmenter([8, 8, 8], AugmentationConfig(**off, p_mirror=1.0))
    image = torch.randn(1, 8, 8, 8)
    seg = (image > 0).to(torch.int16)
    out, out_seg = aug(image, seg, np.random.default_rng(0))
    assert torch.equal(out, torch.flip(image, (1, 2, 3))) and torch.equal(out_seg, torch.flip(seg, (1, 2, 3)))
    plain = Augmenter([8, 8, 8], AugmentationConfig(enabled=False))
    cropped, _ = plain(torch.arange(1000.0).reshape(1, 10, 10, 10), torch.zeros(1, 10, 10, 10, dtype=torch.int16),
                       np.random.default_rng(0))
    assert torch.equal(cropped, torch.arange(1000.0).reshape(1, 10, 10, 10)[:, 1:9, 1:9, 1:9])
