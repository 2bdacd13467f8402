"""HyperDenseNet at the paper's configuration: one path per modality, hyper-dense connections, 27^3 -> 9^3."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ModelError
from medseg.models import create_model


def test_hyper_dense_input_channels_match_the_authors_code() -> None:
    with torch.device("meta"):
        two = create_model("hyperdensenet", 3, 2, 4, padding="valid")
        three = create_model("hyperdensenet", 3, 3, 4, padding="valid")
    # josedolz/HyperDenseNet_pytorch: HyperDenseNet_2Mod conv2..conv9 and fully_1; HyperDenseNet (3 modalities).
    assert two.layer_input_channels() == [1, 50, 100, 150, 250, 350, 450, 600, 750, 1800]
    assert three.layer_input_channels() == [1, 75, 150, 225, 375, 525, 675, 900, 1125, 4050]
    assert [layers[-1].conv.out_channels for layers in zip(*two.paths, strict=True)] == [
        25, 25, 25, 50, 50, 50, 75, 75, 75
    ]
    assert [m.conv.out_channels for m in two.head] == [400, 200, 150, 4]
    assert len(two.paths) == 2


def test_valid_padding_gives_the_papers_output_size() -> None:
    model = create_model("hyperdensenet", 3, 2, 4, conv_channels=(2,) * 9, fc_channels=(4,), padding="valid").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 27, 27, 27)).shape == (1, 4, 9, 9, 9)
    with pytest.raises(ModelError, match="larger than 18"):
        model(torch.randn(1, 2, 18, 27, 27))


def test_paths_see_each_other() -> None:
    torch.manual_seed(0)
    model = create_model("hyperdensenet", 3, 2, 2, conv_channels=(2, 2), fc_channels=(4,)).eval()
    x = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    model.paths[0][1](torch.cat([model.paths[s][0](x[:, s : s + 1]) for s in (0, 1)], dim=1)).sum().backward()
    assert x.grad[:, 1].abs().sum() > 0, "path 0's second layer reads path 1's first layer"
