"""R2U-Net: the recurrent convolutional layer, the residual unit and the paper configuration."""

from __future__ import annotations

import torch

from medseg.models import create_model, paper_parameter_count
from medseg.models.recurrent.r2unet import RecurrentConv, RecurrentResidualUnit


def test_recurrent_conv_unfolds_t_steps() -> None:
    torch.manual_seed(0)
    rcl = RecurrentConv(2, 3, t=2, norm=None)
    x = torch.randn(1, 3, 8, 8)
    ff = rcl.feedforward(x)
    expected = torch.relu(ff)
    for _ in range(2):
        expected = torch.relu(ff + rcl.recurrent(expected))
    torch.testing.assert_close(rcl(x), expected)
    assert rcl.feedforward.weight is not rcl.recurrent.weight  # separate w_f and w_r (Eq. 1)


def test_residual_unit_adds_projected_input() -> None:
    unit = RecurrentResidualUnit(3, 2, 4, t=2).eval()
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), unit.project(x) + unit.rcls(unit.project(x)))


def test_paper_configuration() -> None:
    assert paper_parameter_count("r2unet") == 1_044_017
    with torch.device("meta"):
        model = create_model("r2unet", 2, 1, 1)
    units = [m for m in model.modules() if isinstance(m, RecurrentResidualUnit)]
    assert len(units) == 7  # 4 encoder + 3 decoder units
    assert all(rcl.t == 2 for m in units for rcl in m.rcls)
