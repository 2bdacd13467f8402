"""scSE: the block (MONAI cSE + our sSE, added) and its placement in the U-Net."""

from __future__ import annotations

import torch
from monai.networks.blocks import ChannelSELayer

from medseg.models import create_model
from medseg.models.blocks import ChannelSpatialSELayer, SpatialSELayer


def test_scse_is_sum_of_channel_and_spatial_excitation() -> None:
    torch.manual_seed(0)
    block = ChannelSpatialSELayer(3, 8, reduction=2)
    assert isinstance(block.cse, ChannelSELayer)
    assert block.cse.fc[0].out_features == 4  # r = 2
    x = torch.randn(2, 8, 4, 4, 4)
    torch.testing.assert_close(block(x), block.cse(x) + block.sse(x))
    block_max = ChannelSpatialSELayer(2, 8, combine="max")
    y = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(block_max(y), torch.maximum(block_max.cse(y), block_max.sse(y)))


def test_spatial_se_rescales_by_sigmoid_map() -> None:
    sse = SpatialSELayer(2, 3)
    torch.nn.init.zeros_(sse.conv.weight)
    torch.nn.init.zeros_(sse.conv.bias)
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(sse(x), 0.5 * x)


def test_scse_after_every_encoder_and_decoder_block() -> None:
    with torch.device("meta"):
        model = create_model("scse_unet", 2, 1, 28)
    assert sum(isinstance(m, ChannelSpatialSELayer) for m in model.modules()) == 9  # 5 encoder + 4 decoder
