"""Dense V-Net at the paper's configuration: three dense feature stacks, skips, spatial prior, batch-wise dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model
from medseg.models.dense.dense_vnet import BatchwiseSpatialDropout


def _paper() -> nn.Module:
    torch.manual_seed(0)
    return create_model("dense_vnet", 3, 1, 9)


def test_stacks_and_channels() -> None:
    model = _paper()
    assert [len(s.layers) for s in model.stacks] == [5, 10, 10]
    # Stack inputs: image + 24 initial features, then 24 and 24; growth 4, 8, 16.
    assert [s.out_channels for s in model.stacks] == [1 + 24 + 5 * 4, 24 + 10 * 8, 24 + 10 * 16]
    assert [c.conv.out_channels for c in model.skip_convs] == [12, 24, 24]
    assert [c.conv.stride for c in model.down_convs] == [(2, 2, 2), (2, 2, 2)]
    assert model.initial_conv.conv.kernel_size == (5, 5, 5) and model.initial_conv.conv.stride == (2, 2, 2)
    assert model.classifier.in_channels == 1 + 12 + 24 + 24 and model.classifier.out_channels == 9
    assert model.prior.shape == (1, 9, 12, 12, 12)
    # Batch-wise dropout on every stack layer but the last.
    for stack in model.stacks:
        drops = [any(isinstance(m, BatchwiseSpatialDropout) for m in layer.modules()) for layer in stack.layers]
        assert drops == [True] * (len(drops) - 1) + [False]
    assert count_parameters(model) == 894_066


def test_paper_configuration_runs() -> None:
    model = _paper().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 24, 16, 32))
    assert out.shape == (1, 9, 24, 16, 32)
    with pytest.raises(ModelError, match="divisible by 8"):
        model(torch.randn(1, 1, 24, 16, 30))


def test_batchwise_spatial_dropout() -> None:
    torch.manual_seed(0)
    drop = BatchwiseSpatialDropout(0.5).train()
    y = drop(torch.ones(3, 8, 4, 4, 4))
    kept = y[0].flatten(1).amax(dim=1) > 0
    assert int(kept.sum()) == 4
    for b in range(3):  # the same channels for every sample and every voxel, scaled by 1 / p_keep
        assert torch.equal(y[b], y[0])
    assert torch.allclose(y[0][kept], torch.full_like(y[0][kept], 2.0))
    x = torch.randn(2, 8, 3, 3, 3)
    assert torch.equal(drop.eval()(x), x)


def test_3d_only() -> None:
    with pytest.raises(ModelError, match="supports 3D only"):
        create_model("dense_vnet", 2, 1, 2)
