"""Adversarial training (Luc et al. 2016): the discriminator's inputs, and on a real photograph the mechanism the paper
relies on — a discriminator learns to tell reference label maps from poor predictions, and the adversarial term
alone moves a poor prediction towards the reference (fewer spurious fragments, higher Dice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from methods_helpers import Case, dice
from scipy import ndimage

from medseg.training.adversarial import AdversarialTraining, Discriminator, pair_input, scaled_reference
from medseg.training.loss import one_hot


def test_scaled_references_keep_the_reference_class_on_top() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(2, 4, 5, 6, generator=generator) * 3, 1)
    target = torch.randint(0, 4, (2, 1, 5, 6), generator=generator)
    scaled = scaled_reference(target, probabilities, 0.9)
    np.testing.assert_allclose(scaled.sum(1).numpy(), 1.0, atol=1e-5)
    true = scaled.gather(1, target)
    assert float(true.min()) >= 0.9 - 1e-6
    p_true = probabilities.gather(1, target)
    assert torch.allclose(true, torch.clamp(p_true, min=0.9))
    # the other classes keep the prediction's proportions
    others = scaled * (1 - one_hot(target, 4))
    ratio = others / (probabilities * (1 - one_hot(target, 4))).clamp(min=1e-12)
    mask = (1 - one_hot(target, 4)) > 0
    expected = ((1 - true) / (1 - p_true).clamp(min=1e-6)).expand_as(ratio)
    np.testing.assert_allclose(ratio[mask].numpy(), expected[mask].numpy(), rtol=1e-4)


def test_pair_encodings_and_discriminator_depth() -> None:
    image, labels = torch.randn(2, 3, 8, 8), torch.rand(2, 4, 8, 8)
    product = pair_input(image, labels, "product")
    assert product.shape == (2, 12, 8, 8)
    assert torch.allclose(product[:, 4 * 1 + 2], image[:, 1] * labels[:, 2])
    assert pair_input(image, labels, "concat").shape == (2, 7, 8, 8)
    assert Discriminator(3, 2, 8, [16, 16, 16]).levels == 4
    assert Discriminator(2, 2, 8, [3, 40]).levels == 1
    assert Discriminator(2, 2, 8, [1, 1])(torch.randn(1, 2, 1, 1)).shape == (1, 1, 1, 1)


def _degraded_logits(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logits of a poor prediction: right on average, but soft and speckled (σ = 2 logit noise per pixel)."""
    logit = 2.0 * (2 * mask.astype(np.float32) - 1) + 2.0 * rng.standard_normal(mask.shape).astype(np.float32)
    return np.stack([np.zeros_like(logit), logit])


@pytest.mark.slow
def test_the_adversarial_term_pulls_predictions_towards_reference_label_maps(coins_full: Case) -> None:
    image, mask = coins_full.image[0], coins_full.mask
    half = image.shape[1] // 2
    torch.manual_seed(0)
    hook = AdversarialTraining(2, 1, 2, [64, 64], torch.device("cpu"), weight=1.0, features=16, lr=1e-3)
    rng = np.random.default_rng(0)
    hook.start_epoch(0)
    for _ in range(150):  # the discriminator learns on the left half: references vs poor predictions
        corners = [(int(rng.integers(0, image.shape[0] - 64)), int(rng.integers(0, half - 64))) for _ in range(4)]
        x = torch.from_numpy(np.stack([image[r:r + 64, c:c + 64] for r, c in corners]))[:, None]
        y = torch.from_numpy(np.stack([mask[r:r + 64, c:c + 64] for r, c in corners]).astype(np.int64))[:, None]
        logits = torch.from_numpy(np.stack([_degraded_logits(mask[r:r + 64, c:c + 64], rng) for r, c in corners]))
        hook.generator_loss(x, logits, y)
        hook.discriminator_step()
    assert hook.epoch_metrics()["adversarial_disc_accuracy"] > 0.85

    # on the unseen right half: the discriminator separates, and its gradient alone improves a poor prediction
    x = torch.from_numpy(image[:, half:])[None, None]
    y = torch.from_numpy(mask[:, half:].astype(np.int64))[None, None]
    logits = torch.from_numpy(_degraded_logits(mask[:, half:], rng))[None].requires_grad_(True)
    with torch.no_grad():
        fake = torch.softmax(logits, 1)
        real = scaled_reference(y, fake, 0.9)
        d = hook.discriminators[0]
        assert float(torch.sigmoid(d(pair_input(x, real, "product"))).mean()) > 0.8
        assert float(torch.sigmoid(d(pair_input(x, fake, "product"))).mean()) < 0.2
    reference = mask[:, half:]
    before = logits.detach().argmax(1)[0].numpy() == 1
    hook.optimizer.zero_grad(set_to_none=True)
    optimiser = torch.optim.Adam([logits], 0.05)
    for _ in range(50):
        loss = hook.generator_loss(x, logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = logits.detach().argmax(1)[0].numpy() == 1
    print(f"adversarial term alone: Dice {dice(before, reference):.3f} -> {dice(after, reference):.3f}, fragments "
          f"{ndimage.label(before)[1]} -> {ndimage.label(after)[1]} (reference {ndimage.label(reference)[1]})")
    assert dice(after, reference) > dice(before, reference) + 0.05
    assert ndimage.label(after)[1] < 0.5 * ndimage.label(before)[1]  # fewer spurious fragments
    assert all(p.grad is None for p in d.parameters())  # the network's term leaves the discriminator alone


def test_discriminator_state_round_trips() -> None:
    a = AdversarialTraining(3, 1, 2, [16, 16, 16], torch.device("cpu"), features=4)
    x, y = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 2, (2, 1, 16, 16, 16))
    a.start_epoch(0)
    a.generator_loss(x, torch.randn(2, 2, 16, 16, 16), y)
    a.discriminator_step()
    b = AdversarialTraining(3, 1, 2, [16, 16, 16], torch.device("cpu"), features=4)
    b.load_state_dict(a.state_dict())
    for p, q in zip(a.discriminators.parameters(), b.discriminators.parameters(), strict=True):
        assert torch.equal(p, q)
    assert b.optimizer.state_dict()["state"].keys() == a.optimizer.state_dict()["state"].keys()
    metrics = a.epoch_metrics()
    assert set(metrics) == {"adversarial_adv_loss", "adversarial_disc_loss", "adversarial_disc_accuracy"}
