"""FC-DenseNet56 at the paper's configuration: 4 layers per dense block, growth rate 12, 56 convolutions."""

from __future__ import annotations

import torch
from torch import nn

from medseg.models import count_parameters, create_model, get_model_info


def test_structure_and_count() -> None:
    with torch.device("meta"):
        model = create_model("fc_densenet56", 2, 3, 11)
    assert model.layers_per_block == (4,) * 11 and model.growth_rate == 12
    assert sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules()) == 56
    assert model.block_channels() == [48, 96, 144, 192, 240, 288, 336, 384, 336, 288, 240, 192]
    assert count_parameters(model) == 1_376_795
    # Counted as the authors' Lasagne code does (BN running mean and inverse std included), still not 1.5M.
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert count_parameters(model) + 2 * bn == 1_397_963
    # The paper's 1.5M is not reproduced by the described layout; no figure is recorded (see the module docstring).
    assert get_model_info("fc_densenet56").paper.params is None
