"""V-Net against the authors' Caffe network (github.com/faustomilletari/VNet, train_noPooling_ResNet_cinque.prototxt).

Structure facts below are read from the prototxt: per-stage 5x5x5 convolution counts, PReLU after each residual sum
(never on the last convolution before it), the input tiled to 16 channels as the first residual, and the head
5x5x5 conv -> PReLU -> 1x1x1 conv to the classes.
"""

from __future__ import annotations

import pytest
import torch
from testutils import assert_learns, coins_task, mni_task
from torch import nn

from medseg.models import count_parameters, create_model

# Prototxt: conv_in128_chan16 | conv_in64_chan32 | conv_in32_chan64{,_2} | conv_in16_chan128{,_2,_3} |
# conv_in8_chan256{,_2,_3}; right: conv_in16_chan128_right{,_2,_3} | conv_in32_chan64_right{,_2} |
# conv_in64_chan32_right | conv_in128_chan16_right.
LEFT_CONVS = [1, 1, 2, 3, 3]
RIGHT_CONVS = [3, 2, 1, 1]
LEFT_WIDTHS = [16, 32, 64, 128, 256]
RIGHT_WIDTHS = [256, 128, 64, 32]  # concatenation widths of the right stages


def _convs(stage: nn.Module) -> list[nn.Conv3d]:
    return [m for m in stage.convs.modules() if isinstance(m, nn.Conv3d)]


@pytest.fixture(scope="module")
def paper() -> nn.Module:
    with torch.device("meta"):
        return create_model("vnet", 3, 1, 2)


def test_stage_convolution_counts_and_widths(paper: nn.Module) -> None:
    assert [len(_convs(s)) for s in paper.down_stages] == LEFT_CONVS
    assert [len(_convs(s)) for s in paper.up_stages] == RIGHT_CONVS
    assert [_convs(s)[-1].out_channels for s in paper.down_stages] == LEFT_WIDTHS
    assert [_convs(s)[0].in_channels for s in paper.up_stages] == RIGHT_WIDTHS
    for stage in [*paper.down_stages, *paper.up_stages]:
        assert all(c.kernel_size == (5, 5, 5) and c.padding == (2, 2, 2) for c in _convs(stage))
    assert _convs(paper.down_stages[0])[0].in_channels == 1
    downs = [m.conv for m in paper.down_convs]
    assert [(d.in_channels, d.out_channels, d.kernel_size, d.stride) for d in downs] == [
        (w, 2 * w, (2, 2, 2), (2, 2, 2)) for w in LEFT_WIDTHS[:4]]
    ups = [u[0] for u in paper.up_convs]  # deconv_in8_chan128, ..._in16_chan64, ..._in32_chan32, ..._in64_chan16
    assert [(u.in_channels, u.out_channels) for u in ups] == [(256, 128), (256, 64), (128, 32), (64, 16)]
    assert all(isinstance(u[1], nn.PReLU) for u in paper.up_convs)
    assert all(isinstance(d.act, nn.PReLU) for d in paper.down_convs)


def test_prelu_follows_residual_sum(paper: nn.Module) -> None:
    for stage in [*paper.down_stages, *paper.up_stages]:
        layers = list(stage.convs)
        assert isinstance(stage.act, nn.PReLU) and stage.act.num_parameters == _convs(stage)[-1].out_channels
        assert not hasattr(layers[-1], "act"), "the last convolution of a stage feeds the sum directly"
        assert all(isinstance(layer.act, nn.PReLU) for layer in layers[:-1])


def test_residual_sum_then_prelu_numerically() -> None:
    """With all convolutions zeroed, a stage outputs PReLU(input); PReLU-before-sum would give the input itself."""
    torch.manual_seed(0)
    model = create_model("vnet", 3, 1, 2, base_features=4, kernel_size=3)
    stage = model.down_stages[2]
    for conv in _convs(stage):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    nn.init.constant_(stage.act.weight, 0.1)
    x = torch.randn(1, 16, 4, 4, 4)
    with torch.no_grad():
        assert torch.allclose(stage(x), torch.where(x > 0, x, 0.1 * x))


def test_input_is_tiled_to_sixteen_channels() -> None:
    """The input stage's residual is the 1-channel input copied to all 16 channels (Split + Concat in Caffe)."""
    model = create_model("vnet", 3, 1, 2).eval()
    conv = _convs(model.down_stages[0])[0]
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    nn.init.constant_(model.down_stages[0].act.weight, 1.0)  # identity PReLU
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        out = model.down_stages[0](x, x.repeat(1, model.repeat, 1, 1, 1))
    assert model.repeat == 16 and model.input_proj is None
    assert torch.equal(out, x.expand(1, 16, 16, 16, 16))


def test_head_layout(paper: nn.Module) -> None:
    first, last = paper.head[0], paper.head[1]
    assert (first.conv.in_channels, first.conv.out_channels, first.conv.kernel_size) == (32, 2, (5, 5, 5))
    assert isinstance(first.act, nn.PReLU) and first.act.num_parameters == 2
    assert isinstance(last, nn.Conv3d) and (last.in_channels, last.out_channels, last.kernel_size) == (2, 2, (1, 1, 1))
    assert last.bias is not None


def test_paper_count_is_the_prototxt_count(paper: nn.Module) -> None:
    """Sum over the prototxt's Convolution/Deconvolution layers (weights + biases) and per-channel PReLU layers."""
    convs = [(1, 16, 5)]  # conv_in128_chan16
    convs += [(w, w, 5) for n, w in zip(LEFT_CONVS[1:], LEFT_WIDTHS[1:], strict=True) for _ in range(n)]
    convs += [(w, 2 * w, 2) for w in LEFT_WIDTHS[:4]]  # down_pooling_*
    convs += [(256, 128, 2), (256, 64, 2), (128, 32, 2), (64, 16, 2)]  # deconv_*
    convs += [(w, w, 5) for n, w in zip(RIGHT_CONVS, RIGHT_WIDTHS, strict=True) for _ in range(n)]
    convs += [(32, 2, 5), (2, 2, 1)]  # conv_in128_chan2_right, conv_in128_chan2_2_right
    # PReLU: after each residual sum, between the convolutions of a stage, after each down/up convolution, head.
    prelus = sum(LEFT_WIDTHS) + sum((n - 1) * w for n, w in zip(LEFT_CONVS, LEFT_WIDTHS, strict=True))
    prelus += sum(RIGHT_WIDTHS) + sum((n - 1) * w for n, w in zip(RIGHT_CONVS, RIGHT_WIDTHS, strict=True))
    prelus += sum(2 * w for w in LEFT_WIDTHS[:4]) + (128 + 64 + 32 + 16) + 2
    total = sum(i * o * k**3 + o for i, o, k in convs) + prelus
    assert total == 61_982_682  # the figure of the prototxt's layer definitions
    assert count_parameters(paper) == total


def test_paper_configuration_runs() -> None:
    model = create_model("vnet", 3, 1, 2, base_features=2, kernel_size=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32, 16)).shape == (1, 2, 32, 32, 16)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vnet_learns(spatial_dims: int) -> None:
    torch.manual_seed(0)
    if spatial_dims == 2:
        x, y = coins_task(64)
        model = create_model("vnet", 2, 1, 2, base_features=4)
    else:
        x, y = mni_task(32)
        model = create_model("vnet", 3, 1, 2, base_features=4, kernel_size=3)
    assert_learns(model, x, y, steps=25)
