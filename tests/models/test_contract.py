"""The contract every registered model satisfies, checked for every model and every dims it supports.

Shapes and gradients are checked here for the semantic models (one class per voxel); the instance, panoptic and
interactive models have their own output contract, checked in ``test_instance_contract.py``. Metadata and the
paper's parameter figure are checked here for every model.
"""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import MedsegError, ModelError
from medseg.models import (
    SegmentationModel,
    count_parameters,
    create_model,
    get_model_info,
    list_models,
    paper_parameter_count,
)

BATCH = 2
IN_CHANNELS = 2
OUT_CHANNELS = 3
SIZE = {2: 64, 3: 32}

CASES = [(name, dims) for name in list_models(task="semantic") for dims in get_model_info(name).spatial_dims]
IDS = [f"{name}-{dims}d" for name, dims in CASES]


def _small(name: str, dims: int, **extra) -> SegmentationModel:
    torch.manual_seed(0)
    kwargs = {**get_model_info(name).test_kwargs[dims], **extra}
    return create_model(name, dims, IN_CHANNELS, OUT_CHANNELS, **kwargs)


def _input(dims: int, size: int | None = None) -> torch.Tensor:
    s = SIZE[dims] if size is None else size
    return torch.randn(BATCH, IN_CHANNELS, *([s] * dims))


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_forward_shape_gradients_and_modes(name: str, dims: int) -> None:
    model = _small(name, dims)
    assert isinstance(model, SegmentationModel)
    x = _input(dims)
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (BATCH, OUT_CHANNELS, *x.shape[2:])
    assert torch.isfinite(out).all()
    if hasattr(model, "training_loss"):  # trained with its own objective and the label (probabilistic U-Nets)
        target = torch.randint(0, OUT_CHANNELS, (BATCH, 1, *x.shape[2:]))
        loss = model.training_loss(model(x, target=target), target)
        assert loss.ndim == 0 and torch.isfinite(loss)
    else:
        loss = out.float().square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not missing, f"no gradient reaches: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out_eval = model(x)
    assert out_eval.shape == (BATCH, OUT_CHANNELS, *x.shape[2:])
    assert torch.isfinite(out_eval).all()


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_input_size_not_divisible(name: str, dims: int) -> None:
    model = _small(name, dims).eval()
    divisor = model.input_divisor
    bad_size = SIZE[dims] + 1
    if all(bad_size % d == 0 for d in divisor):
        pytest.skip("every size is accepted")
    x = _input(dims, bad_size)
    with pytest.raises(ModelError) as excinfo, torch.no_grad():
        model(x)
    assert isinstance(excinfo.value, MedsegError)
    assert str(max(divisor)) in str(excinfo.value)


DS_CASES = [(n, d) for n, d in CASES if get_model_info(n).deep_supervision]


@pytest.mark.parametrize(("name", "dims"), DS_CASES, ids=[f"{n}-{d}d" for n, d in DS_CASES])
def test_deep_supervision(name: str, dims: int) -> None:
    model = _small(name, dims, deep_supervision=True).train()
    x = _input(dims)
    outs = model(x)
    assert isinstance(outs, (list, tuple))
    scales = model.deep_supervision_scales
    assert len(outs) == len(scales) >= 2
    assert not model.loss_weights or len(model.loss_weights) == len(outs), "one loss weight per training output"
    assert scales[0] == (1,) * dims, "the first output is the full-resolution one"
    for out, scale in zip(outs, scales, strict=True):
        assert out.shape == (BATCH, OUT_CHANNELS, *(s // f for s, f in zip(x.shape[2:], scale, strict=True)))
        assert torch.isfinite(out).all()
    sum(o.float().square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches: {missing[:5]}"
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (BATCH, OUT_CHANNELS, *x.shape[2:])


PAPER_CASES = [n for n in list_models() if get_model_info(n).paper.params is not None]


@pytest.mark.parametrize("name", PAPER_CASES)
def test_parameter_count_matches_paper(name: str) -> None:
    info = get_model_info(name)
    ours = paper_parameter_count(name)
    assert math.isclose(ours, info.paper.params, rel_tol=0.02), f"{name}: {ours} vs paper {info.paper.params}"


@pytest.mark.parametrize("name", list_models())
def test_metadata_complete(name: str) -> None:
    info = get_model_info(name)
    assert info.family and info.paper_title and 1990 < info.paper_year < 2100
    assert info.paper.source
    assert info.paper.spatial_dims in info.spatial_dims
    assert set(info.paper.kwargs) <= set(info.accepted_kwargs())
    assert info.cls.__doc__ and info.summary
    assert paper_parameter_count(name) > 0
    model_doc = info.cls.__module__
    assert __import__(model_doc, fromlist=["_"]).__doc__, "every model file has a module docstring citing its paper"


def test_count_parameters_on_meta_device() -> None:
    with torch.device("meta"):
        model = create_model("unet3d", 3, 1, 2, base_features=4)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
