"""Boundary label relaxation and soft labels (Zhu et al. 2019): the losses' definitions, and on a real photograph the
paper's point — with outlines drawn two pixels off the true edge, relaxation keeps the network on the image's edge
where cross-entropy learns the misplaced outline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from methods_helpers import Case, assd, dice
from scipy import ndimage
from torch import nn

from medseg.training.loss import build_loss
from medseg.training.relaxation import BoundaryRelaxationLoss, SoftLabelLoss, relaxed_targets, soft_targets


def test_inside_regions_both_losses_are_the_cross_entropy() -> None:
    logits = torch.randn(2, 3, 6, 7, 5, generator=torch.Generator().manual_seed(0))
    target = torch.full((2, 1, 6, 7, 5), 2)
    ce = nn.functional.cross_entropy(logits, target[:, 0])
    assert math.isclose(float(BoundaryRelaxationLoss(3)(logits, target)), float(ce), rel_tol=1e-6)
    assert math.isclose(float(SoftLabelLoss(3)(logits, target)), float(ce), rel_tol=1e-6)
    mixed = torch.randint(0, 3, (2, 1, 6, 7, 5), generator=torch.Generator().manual_seed(1))
    window_one = BoundaryRelaxationLoss(1)(logits, mixed)
    assert math.isclose(float(window_one), float(nn.functional.cross_entropy(logits, mixed[:, 0])), rel_tol=1e-6)


def test_at_a_boundary_either_side_is_allowed() -> None:
    target = torch.zeros(1, 1, 1, 6, dtype=torch.long)
    target[..., 3:] = 1  # boundary between columns 2 and 3
    multi = relaxed_targets(target, 2, 3)
    assert multi[0, :, 0].T.tolist() == [[1, 0], [1, 0], [1, 1], [1, 1], [0, 1], [0, 1]]
    fractions = soft_targets(target, 2, 3)[0, 1, 0]
    np.testing.assert_allclose(fractions.numpy(), [0, 0, 1 / 3, 2 / 3, 1, 1], atol=1e-6)
    # a confident prediction of the *other* class on the two boundary columns costs nothing when relaxed
    logits = torch.zeros(1, 2, 1, 6)
    logits[:, 0, ..., :3], logits[:, 1, ..., 3:] = 8.0, 8.0
    logits[:, :, :, 2], logits[:, :, :, 3] = torch.tensor([-8.0, 8.0])[:, None], torch.tensor([8.0, -8.0])[:, None]
    relaxed = float(BoundaryRelaxationLoss(3)(logits, target))
    ce = float(nn.functional.cross_entropy(logits, target[:, 0]))
    assert relaxed < 1e-3 < 1.0 < ce


def test_soft_labels_are_minimised_by_the_fractions() -> None:
    target = torch.zeros(1, 1, 1, 6, dtype=torch.long)
    target[..., 3:] = 1
    q = soft_targets(target, 2, 3).clamp(1e-6, 1 - 1e-6)
    best = float(SoftLabelLoss(3)(torch.log(q), target))
    hard = torch.log(nn.functional.one_hot(target[:, 0], 2).permute(0, 3, 1, 2).float().clamp(1e-6, 1))
    assert best < float(SoftLabelLoss(3)(hard, target))


def test_trainer_builds_the_losses_with_their_window() -> None:
    assert isinstance(build_loss("label_relaxation", False, relaxation_window=5), BoundaryRelaxationLoss)
    assert build_loss("soft_label", True, relaxation_window=3).window == 3
    with pytest.raises(ValueError):
        BoundaryRelaxationLoss(2)


def _train(case: Case, labels: np.ndarray, loss: nn.Module, steps: int, seed: int) -> np.ndarray:
    """A 4-layer CNN trained on 64² patches of the left half; returns its foreground probability on the right half."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    rng = np.random.default_rng(seed)
    image, half = case.image[0], case.image.shape[2] // 2
    for _ in range(steps):
        corners = [(int(rng.integers(0, image.shape[0] - 64)), int(rng.integers(0, half - 64))) for _ in range(4)]
        x = torch.from_numpy(np.stack([image[r:r + 64, c:c + 64] for r, c in corners]))[:, None]
        y = torch.from_numpy(np.stack([labels[r:r + 64, c:c + 64] for r, c in corners]).astype(np.int64))[:, None]
        value = loss(net(x), y)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(image[:, half:])[None, None]), 1)[0, 1].numpy()


@pytest.mark.slow
def test_relaxation_resists_outlines_drawn_off_the_edge(coins_full: Case) -> None:
    """Training outlines two pixels outside every coin: cross-entropy learns them, relaxation (a window reaching two
    pixels to each side) stays on the image's edge."""
    shifted = ndimage.binary_dilation(coins_full.mask, iterations=2)
    half = coins_full.mask.shape[1] // 2
    reference = coins_full.mask[:, half:]

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target[:, 0])

    scores = {}
    for name, loss in (("ce", ce), ("relaxed", BoundaryRelaxationLoss(5))):
        predicted = _train(coins_full, shifted, loss, 120, 0) > 0.5
        scores[name] = (dice(predicted, reference), assd(predicted, reference, coins_full.spacing),
                        predicted.sum() / reference.sum())
    print("outlines two pixels off: (Dice, ASSD mm, volume ratio)", scores)
    assert scores["relaxed"][0] > scores["ce"][0] + 0.015, scores
    assert scores["relaxed"][1] < scores["ce"][1], scores
    assert abs(scores["relaxed"][2] - 1) < abs(scores["ce"][2] - 1), scores  # the volume of the true coins


@pytest.mark.slow
def test_soft_labels_temper_confidence_only_at_boundaries(coins_full: Case) -> None:
    """Soft boundary labels: uncertain at the (uncertain) outlines, as confident as cross-entropy inside."""
    half = coins_full.mask.shape[1] // 2
    reference = coins_full.mask[:, half:]
    edge = ndimage.binary_dilation(reference ^ ndimage.binary_erosion(reference))
    interior = ~ndimage.binary_dilation(edge, iterations=3)

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target[:, 0])

    confidence = {}
    for name, loss in (("ce", ce), ("soft", SoftLabelLoss(3))):
        p = _train(coins_full, coins_full.mask, loss, 120, 0)
        confidence[name] = (float(np.abs(p[edge] - 0.5).mean() * 2), float(np.abs(p[interior] - 0.5).mean() * 2),
                            dice(p > 0.5, reference))
    print("(boundary confidence, interior confidence, Dice)", confidence)
    assert confidence["soft"][0] < confidence["ce"][0] - 0.05, confidence
    assert confidence["soft"][1] > 0.9 and confidence["soft"][2] > confidence["ce"][2] - 0.02, confidence
