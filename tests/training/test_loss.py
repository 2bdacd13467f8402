"""Losses on toy inputs against MONAI and nnU-Net semantics; deep-supervision weights."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss as MonaiDiceCE

from medseg.training.loss import (
    DeepSupervisionLoss,
    DiceCELoss,
    FocalTverskyLoss,
    SoftDiceLoss,
    build_loss,
    deep_supervision_weights,
)


@pytest.fixture
def toy() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4, generator=generator)
    target = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=generator)
    return logits, target


@pytest.mark.parametrize("batch", [False, True])
def test_dice_ce_is_monai_dice_ce_minus_one(toy: tuple[torch.Tensor, torch.Tensor], batch: bool) -> None:
    logits, target = toy
    ours = DiceCELoss(batch_dice=batch)(logits, target)
    monai = MonaiDiceCE(include_background=False, to_onehot_y=True, softmax=True, batch=batch, smooth_nr=1e-5,
                        smooth_dr=1e-5)(logits, target)
    torch.testing.assert_close(ours, monai - 1, atol=1e-6, rtol=1e-6)


def test_soft_dice_by_hand() -> None:
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]]).reshape(1, 2, 2)  # softmax 0.5 everywhere
    target = torch.tensor([[[1, 0]]])
    # class 1: tp = 0.5, sum_pred = 1, sum_gt = 1 -> dice = (1 + s) / (2 + s)
    expected = -(1 + 1e-5) / (2 + 1e-5)
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(expected)


def test_perfect_prediction_losses(toy: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, target = toy
    logits = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 50
    assert SoftDiceLoss(batch_dice=True)(logits, target).item() == pytest.approx(-1, abs=1e-5)
    assert FocalTverskyLoss()(logits, target).item() == pytest.approx(0, abs=1e-4)
    for name in ("dice_focal", "generalised_dice"):
        assert build_loss(name, True)(logits, target).item() == pytest.approx(0, abs=1e-3)


def test_deep_supervision_weights_like_nnunet() -> None:
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(5)
    assert w == pytest.approx([1 / 1.875, 0.5 / 1.875, 0.25 / 1.875, 0.125 / 1.875, 0.0])


def test_deep_supervision_loss_downsamples_targets(toy: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = toy
    target = target.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)  # 12×10×8
    full = logits.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    half, quarter = logits, logits[:, :, ::2, ::2, ::2]
    base = DiceCELoss()
    loss = DeepSupervisionLoss(base)([full, half, quarter], target)
    w = deep_supervision_weights(3)
    expected = w[0] * base(full, target) + w[1] * base(half, target[:, :, ::2, ::2, ::2])
    torch.testing.assert_close(loss, expected)


def test_model_declared_loss_weights_are_used_as_given() -> None:
    from medseg.training.loss import DeepSupervisionLoss

    torch.manual_seed(0)
    main, aux = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    ce = torch.nn.CrossEntropyLoss()

    class _CE(torch.nn.Module):
        def forward(self, logits, t):
            return ce(logits, t[:, 0])

    weighted = DeepSupervisionLoss(_CE(), (1.0, 0.4))([main, aux], target)
    torch.testing.assert_close(weighted, ce(main, target[:, 0]) + 0.4 * ce(aux, target[:, 0]))
    nnunet = DeepSupervisionLoss(_CE())([main, aux], target)  # nnU-Net's weights: the last output gets 0
    torch.testing.assert_close(nnunet, ce(main, target[:, 0]))
    with pytest.raises(ValueError, match="3 outputs but 2 loss weights"):
        DeepSupervisionLoss(_CE(), (1.0, 0.4))([main, aux, aux], target)
