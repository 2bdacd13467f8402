"""MultiResUNet: block widths, res paths and the paper configuration."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ModelError
from medseg.models import create_model, paper_parameter_count
from medseg.models.multires.multiresunet import MultiResBlock, ResPath, multires_widths


def test_multires_widths_follow_alpha_split() -> None:
    assert multires_widths(32) == (8, 17, 26)  # W = 1.67 * 32 = 53.44 split 1/6, 1/3, 1/2
    block = MultiResBlock(2, 3, 32)
    assert block.out_channels == 51
    assert block(torch.randn(1, 3, 16, 16)).shape == (1, 51, 16, 16)


def test_res_path_lengths() -> None:
    with torch.device("meta"):
        model = create_model("multiresunet", 2, 3, 1)
    paths = [m for m in model.modules() if isinstance(m, ResPath)]
    assert [len(p) for p in paths] == [4, 3, 2, 1]


def test_too_narrow_level_is_refused() -> None:
    with pytest.raises(ModelError, match="empty"):
        create_model("multiresunet", 2, 1, 1, features=(2, 4, 8))


def test_paper_configuration() -> None:
    assert paper_parameter_count("multiresunet") == 7_244_775
