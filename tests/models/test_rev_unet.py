"""Partially reversible U-Net: inversion, gradients equal to ordinary autograd, and the memory saving."""

from __future__ import annotations

import torch

from medseg.models import create_model, paper_parameter_count
from medseg.models.reversible.rev_unet import ReversibleBlock, ReversibleSequence

KW = {"features": (4, 8, 8, 16), "groups": 2, "depth": 2}


def test_block_inverts() -> None:
    torch.manual_seed(0)
    block = ReversibleBlock(3, 8, 2).double()
    x = torch.randn(2, 8, 6, 6, 6, dtype=torch.float64)
    y = block(x)
    x_rec, _, _ = block.backward_pass(y, torch.zeros_like(y))
    torch.testing.assert_close(x_rec, x)


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out.square().mean() + out.mean()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, x.grad.clone()


def test_reversible_gradients_equal_plain_autograd() -> None:
    torch.manual_seed(0)
    rev = create_model("rev_unet", 3, 2, 3, **KW).double().train()
    plain = create_model("rev_unet", 3, 2, 3, reversible=False, **KW).double().train()
    plain.load_state_dict(rev.state_dict())
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64)
    out_r, grads_r, dx_r = _grads(rev, x)
    out_p, grads_p, dx_p = _grads(plain, x)
    torch.testing.assert_close(out_r, out_p)
    torch.testing.assert_close(dx_r, dx_p, rtol=1e-6, atol=1e-9)
    assert grads_r.keys() == grads_p.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_r[name], grads_p[name], rtol=1e-6, atol=1e-9, msg=name)


def _saved_bytes(seq: torch.nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        seq(x)
    return total


def test_reversible_sequence_stores_only_its_output() -> None:
    torch.manual_seed(0)
    seq = ReversibleSequence(3, 16, depth=4, groups=2)
    x = torch.randn(1, 16, 16, 16, 16, requires_grad=True)
    stored = _saved_bytes(seq, x)
    seq.reversible = False
    stored_plain = _saved_bytes(seq, x)
    output_bytes = x.numel() * x.element_size()
    weights = sum(p.numel() * p.element_size() for p in seq.parameters())
    assert stored <= output_bytes + weights  # only the output (and no per-block activations)
    assert stored_plain > 8 * output_bytes  # ordinary autograd keeps every block's activations


def test_paper_configuration() -> None:
    assert paper_parameter_count("rev_unet") == 12_365_283
