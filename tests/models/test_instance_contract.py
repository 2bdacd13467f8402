"""The contract of the instance, panoptic and interactive models (``medseg.models.instance.base``), for every such
model and every dims it supports: loss terms with targets, gradients, the eval outputs, grouping or detections.

Their metadata and parameter figures are checked with every other model in ``test_contract.py``.
"""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ModelError
from medseg.models import create_model, get_model_info, list_models
from medseg.models.instance.base import Detections, InstanceMaps, InstanceSegmentationModel, InstanceTarget

SIZE = {2: 64, 3: 32}
NAMES = [n for n in list_models() if get_model_info(n).task != "semantic"]
CASES = [(n, d) for n in NAMES for d in get_model_info(n).spatial_dims]
IDS = [f"{n}-{d}d" for n, d in CASES]


def _model(name: str, dims: int) -> InstanceSegmentationModel:
    torch.manual_seed(0)
    model = create_model(name, dims, 2, 3, **get_model_info(name).test_kwargs[dims])
    assert isinstance(model, InstanceSegmentationModel)
    return model


def _batch(dims: int) -> tuple[torch.Tensor, list[InstanceTarget]]:
    s = SIZE[dims]
    x = torch.randn(2, 2, *[s] * dims)
    inst = torch.zeros(2, *[s] * dims, dtype=torch.long)
    a, b = s // 8, s // 2
    inst[0][tuple(slice(a, b) for _ in range(dims))] = 3
    inst[0][tuple(slice(b + 2, s - 2) for _ in range(dims))] = 7
    inst[1][tuple(slice(a + 2, s - a) for _ in range(dims))] = 1
    lookup = torch.tensor([0, 2, 0, 1, 0, 0, 0, 2])
    return x, [InstanceTarget(inst[0], lookup), InstanceTarget(inst[1], lookup)]


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_losses_gradients_and_outputs(name: str, dims: int) -> None:
    model = _model(name, dims)
    x, targets = _batch(dims)
    model.train()
    losses = model(x, targets)
    assert isinstance(losses, dict) and set(losses) == set(model.loss_terms), sorted(losses)
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        eval_losses = model(x, targets)  # the validation loss: computed in eval mode as well
        out = model(x)
    assert set(eval_losses) == set(model.loss_terms)
    if model.output_kind == "dense":
        assert isinstance(out, torch.Tensor)
        assert out.shape == (2, model.dense_channels, *x.shape[2:]) and torch.isfinite(out).all()
    else:
        assert isinstance(out, list) and len(out) == 2
        for det in out:
            assert isinstance(det, Detections)
            n = det.scores.shape[0]
            assert det.boxes.shape == (n, 2 * dims) and det.labels.shape == (n,)
            assert det.masks.shape == (n, *x.shape[2:]) and det.masks.dtype == torch.bool
            assert ((det.labels >= 1) & (det.labels < 3)).all() and ((det.scores >= 0) & (det.scores <= 1)).all()
    with torch.no_grad():
        maps = model.instances(x)
    assert len(maps) == 2
    for found in maps:
        assert isinstance(found, InstanceMaps) and found.instances.shape == x.shape[2:]
        n = int(found.instances.max())
        assert found.classes.shape == (n,) == found.scores.shape


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_targets_and_sizes_are_checked(name: str, dims: int) -> None:
    model = _model(name, dims).eval()
    x, targets = _batch(dims)
    with pytest.raises(ModelError, match="targets for a batch"):
        model(x, targets[:1])
    divisor = max(model.input_divisor)
    if divisor > 1:
        with pytest.raises(ModelError, match=str(divisor)), torch.no_grad():
            model(torch.randn(1, 2, *[SIZE[dims] + 1] * dims))


@pytest.mark.parametrize("name", NAMES)
def test_declares_targets_and_losses(name: str) -> None:
    info = get_model_info(name)
    assert info.task in ("instance", "panoptic", "interactive")
    assert issubclass(info.cls, InstanceSegmentationModel)
    assert info.cls.output_kind in ("dense", "detections")
    assert info.cls.target_kinds and info.cls.loss_terms
