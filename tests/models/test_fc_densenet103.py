"""FC-DenseNet103 at the paper's configuration: Table 2's blocks, feature maps and depth (Jégou et al., 2017)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model, get_model_info


def _paper(name: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, 2, 3, 11)


def _n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def test_table2_blocks_and_feature_maps() -> None:
    model = _paper("fc_densenet103")
    assert model.layers_per_block == (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4)
    assert model.growth_rate == 16
    assert [len(b.layers) for b in model.down_blocks] == [4, 5, 7, 10, 12]
    assert len(model.bottleneck.layers) == 15
    assert [len(b.layers) for b in model.up_blocks] == [12, 10, 7, 5, 4]
    # Table 2's m, from the bottleneck on +16 as the authors' README corrects.
    assert model.block_channels() == [48, 112, 192, 304, 464, 656, 896, 1088, 816, 576, 384, 256]
    # Only the new maps of a block are upsampled: TU outputs 15*16, 12*16, 10*16, 7*16, 5*16 maps.
    assert [tu.conv.out_channels for tu in model.transitions_up] == [240, 192, 160, 112, 80]
    assert model.head.in_channels == 256


def test_depth_is_103_convolutions() -> None:
    assert _n_convs(_paper("fc_densenet103")) == 103


def test_parameter_count() -> None:
    assert count_parameters(_paper("fc_densenet103")) == 9_322_091
    assert get_model_info("fc_densenet103").paper.params == 9_400_000


def test_count_the_authors_way_rounds_to_the_papers_figure() -> None:
    # Network.summary in SimJeg/FC-DenseNet sums get_all_param_values, BN running mean and inverse std included.
    model = _paper("fc_densenet103")
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert count_parameters(model) + 2 * bn == 9_425_163  # 9.4M; the trainable 9,322,091 rounds to 9.3M


def test_transition_layers() -> None:
    model = _paper("fc_densenet103")
    td = model.transitions_down[0]
    assert td[0].conv.kernel_size == (1, 1) and td[0].conv.out_channels == 112
    assert isinstance(td[1], nn.MaxPool2d)
    assert model.transitions_up[0].conv.kernel_size == (3, 3) and model.transitions_up[0].conv.stride == (2, 2)
    layer = model.down_blocks[0].layers[0]
    assert [type(m).__name__ for m in layer] == ["BatchNorm2d", "ReLU", "Conv2d", "Dropout"]
    assert layer.dropout.p == 0.2


def test_3d_variant_and_divisor() -> None:
    model = create_model("fc_densenet103", 3, 1, 2, growth_rate=2, layers_per_block=(1, 1, 1), first_conv_channels=4)
    assert model.input_divisor == (2, 2, 2)
    out = model.eval()(torch.randn(1, 1, 8, 6, 4))
    assert out.shape == (1, 2, 8, 6, 4)
    with pytest.raises(ModelError, match="divisible by 2"):
        model(torch.randn(1, 1, 8, 6, 5))


def test_bad_layers_per_block() -> None:
    with pytest.raises(ModelError, match="odd number"):
        create_model("fc_densenet103", 2, 3, 2, layers_per_block=(4, 4))
