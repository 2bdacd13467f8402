"""FC-DenseNet67 at the paper's configuration: 5 layers per dense block, growth rate 16, 67 convolutions."""

from __future__ import annotations

import torch
from torch import nn

from medseg.models import count_parameters, create_model


def test_structure_and_count() -> None:
    with torch.device("meta"):
        model = create_model("fc_densenet67", 2, 3, 11)
    assert model.layers_per_block == (5,) * 11 and model.growth_rate == 16
    assert sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules()) == 67
    assert model.block_channels() == [48, 128, 208, 288, 368, 448, 528, 608, 528, 448, 368, 288]
    assert count_parameters(model) == 3_463_243
    # Counted as the authors' Lasagne code does (BN running mean and inverse std included).
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert count_parameters(model) + 2 * bn == 3_502_923
