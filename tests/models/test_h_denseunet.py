"""H-DenseUNet at the paper's configuration: DenseUNet-167 (2D), the 3D DenseUNet, HFF; slices seen by the 2D part."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model, get_model_info
from medseg.models.dense.densenet import DENSENET121, DENSENET161, DenseNetEncoder
from medseg.models.dense.h_denseunet import HDenseUNet


def _paper() -> HDenseUNet:
    with torch.device("meta"):
        return create_model("h_denseunet", 3, 1, 3)


def test_2d_denseunet_167() -> None:
    model = _paper()
    enc = model.dense2d.encoder
    assert [len(b.layers) for b in enc.blocks] == [6, 12, 36, 24]
    assert enc.feature_channels == [96, 384, 768, 2112, 2208]
    assert [u.conv.conv.out_channels for u in model.dense2d.up] == [768, 384, 96, 96, 64]
    assert model.dense2d.up[0].project.in_channels == 2112 and model.dense2d.up[0].project.out_channels == 2208
    assert model.dense2d.up[-1].conv.dropout.p == 0.3
    assert enc.stem.conv.in_channels == 3  # three adjacent slices
    assert sum(isinstance(m, nn.Conv2d) for m in model.dense2d.modules()) == 167


def test_3d_denseunet_and_hff() -> None:
    model = _paper()
    enc = model.dense3d.encoder
    assert [len(b.layers) for b in enc.blocks] == [3, 4, 12, 8]
    assert enc.feature_channels == [96, 192, 224, 496, 504]
    assert enc.stem.conv.in_channels == 1 + 3  # the slab and the 2D scores
    assert enc.stem.conv.kernel_size == (7, 7, 7)
    assert [t[1].kernel_size for t in enc.transitions] == [(1, 2, 2)] * 3  # in-plane pooling
    assert [u.conv.conv.out_channels for u in model.dense3d.up] == [504, 224, 192, 96, 64]
    assert [u.scale for u in model.dense3d.up] == [(1, 2, 2)] * 3 + [(2, 2, 2)] * 2
    assert model.hff.conv.kernel_size == (3, 3, 3) and model.hff.dropout.p == 0.3
    assert model.classifier.in_channels == 64 and model.classifier.out_channels == 3
    assert count_parameters(model) == 65_616_094
    assert get_model_info("h_denseunet").paper.params is None


def test_adjacent_slices() -> None:
    x = torch.arange(2 * 4, dtype=torch.float32).reshape(1, 2, 4, 1, 1).expand(1, 2, 4, 2, 2)
    s = HDenseUNet.adjacent_slices(x)
    assert s.shape == (4, 6, 2, 2)
    # image d, channel 3c + j = slice d - 1 + j of channel c, edges repeated
    assert s[:, :3, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert s[:, 3:, 0, 0].tolist() == [[4, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 7]]


def test_slab_shapes_and_divisor() -> None:
    kwargs = dict(get_model_info("h_denseunet").test_kwargs[3])
    model = create_model("h_denseunet", 3, 1, 3, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 12, 32, 64)).shape == (1, 3, 12, 32, 64)
    with pytest.raises(ModelError, match="divisible"):
        model(torch.randn(1, 1, 10, 32, 32))
    with pytest.raises(ModelError, match="supports 3D only"):
        create_model("h_denseunet", 2, 1, 3)


def test_densenet_encoder_matches_torchvision_counts() -> None:
    with torch.device("meta"):
        e161 = DenseNetEncoder(2, 3, **DENSENET161)
        e121 = DenseNetEncoder(2, 3, **DENSENET121)
    # torchvision densenet161().features / densenet121().features
    assert count_parameters(e161) == 26_472_000
    assert count_parameters(e121) == 6_953_856
    assert e161.feature_strides == [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32)]
    enc = DenseNetEncoder(3, 1, block_config=(1, 1), growth_rate=2, init_features=4, transition_strides=(1, 2, 2))
    feats = enc(torch.randn(1, 1, 8, 16, 16))
    assert [tuple(f.shape[2:]) for f in feats] == [(4, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert [f.shape[1] for f in feats] == enc.feature_channels
