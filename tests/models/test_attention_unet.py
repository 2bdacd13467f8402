"""Attention U-Net: the grid attention gate, the attention maps and the paper configuration's structure."""

from __future__ import annotations

import torch

from medseg.models import count_parameters, create_model, get_model_info, paper_parameter_count
from medseg.models.attention.attention_unet import MultiGridAttention
from medseg.models.blocks import GridAttentionGate


def test_gate_resamples_gating_signal_and_coefficients() -> None:
    torch.manual_seed(0)
    gate = GridAttentionGate(3, in_channels=4, gating_channels=8, subsample=2)
    x = torch.randn(2, 4, 16, 16, 16)
    g = torch.randn(2, 8, 8, 8, 8)  # the coarser level
    out, alpha = gate(x, g)
    assert out.shape == x.shape
    assert alpha.shape == (2, 1, 16, 16, 16)
    assert (alpha > 0).all() and (alpha < 1).all()  # sigmoid coefficients
    assert gate.theta.stride == (2, 2, 2) and gate.theta.bias is None


def test_gate_2d() -> None:
    gate = GridAttentionGate(2, 6, 12)
    out, alpha = gate(torch.randn(1, 6, 32, 32), torch.randn(1, 12, 16, 16))
    assert out.shape == (1, 6, 32, 32) and alpha.shape == (1, 1, 32, 32)


def test_attention_maps_and_deep_supervision_outputs() -> None:
    model = create_model("attention_unet", 3, 1, 2, features=(4, 4, 8, 8, 16), deep_supervision=True).train()
    outs = model(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(32,) * 3, (32,) * 3, (16,) * 3, (8,) * 3, (4,) * 3]
    # gated skips at levels 3, 2, 1 (coarsest first), two gates each; the finest skip is not gated
    assert [tuple(a.shape) for a in model.attention_maps] == [(1, 2, 4, 4, 4), (1, 2, 8, 8, 8), (1, 2, 16, 16, 16)]


def test_paper_configuration_structure() -> None:
    info = get_model_info("attention_unet")
    assert paper_parameter_count("attention_unet") == 6_473_322
    cfg = info.paper
    with torch.device("meta"):
        plain = create_model("attention_unet", 3, 1, 4, features=(16, 32, 64, 128, 256), gates_per_level=0)
        model = create_model("attention_unet", 3, 1, 4, **cfg.kwargs)
    assert count_parameters(plain) == 5_888_004
    gates = [m for m in model.modules() if isinstance(m, MultiGridAttention)]
    assert len(gates) == 3 and all(len(m.gates) == 2 for m in gates)
