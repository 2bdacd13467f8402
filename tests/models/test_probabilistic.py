"""The probabilistic family: Probabilistic U-Net (Kohl et al. 2018) and Hierarchical Probabilistic U-Net (Kohl et al.
2019) — their structure as the papers and the authors' code describe it, their objectives, their sampling, MC dropout
on any network, that each learns on a real image, and that the Probabilistic U-Net learns an ambiguity: trained on a
real photograph with two annotations that disagree, its samples spread where the annotations disagree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from testutils import coins_task, mni_task

from medseg.errors import ModelError
from medseg.models import create_model
from medseg.models.probabilistic._latent import gaussian_kl
from medseg.models.sampling import dropout_layers, sample_mode, stochastic_kind


def _prob(dims: int = 2, classes: int = 2, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("prob_unet", dims, 1, classes, **{"features": (8, 16, 16, 16), **kwargs})


def _hprob(dims: int = 2, classes: int = 2, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"channels_per_block": (4, 8, 8, 8), "latent_dims": (2, 1), "blocks_per_level": 1,
               "convs_per_block": 2, **kwargs}
    return create_model("hprob_unet", dims, 1, classes, **options)


# Structure -----------------------------------------------------------------------------------------------------------


def test_prob_unet_injects_a_global_latent_at_its_last_1x1_layers() -> None:
    model = _prob(latent_dim=6, fcomb_convs=3).eval()
    convs = [m for m in model.combine.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1)] * 4  # three 1x1 convs + the 1x1 classifier (Fig. 1)
    assert convs[0].in_channels == 8 + 6 and convs[-1].out_channels == 2
    assert model.prior.encoder.blocks[0][0].conv.in_channels == 1  # P(z | x)
    assert model.posterior.encoder.blocks[0][0].conv.in_channels == 1 + 2  # Q(z | x, y): the label one-hot
    x = coins_task(64)[0][:1]
    with torch.no_grad():
        features = model.decoder(model.encoder(x))  # the U-Net runs once; a sample re-runs only f_comb
        mu, log_sigma = model.prior(x)
        assert mu.shape == (1, 6)
        torch.testing.assert_close(model(x), model.combine(features, mu))
        with sample_mode(model, 7):
            first = model(x)
            z = mu + log_sigma.exp() * model.latent_noise((1, 6), mu)
        torch.testing.assert_close(first, model.combine(features, z))
        with sample_mode(model, 7):
            assert torch.equal(model(x), first)
        with sample_mode(model, 8):
            assert not torch.equal(model(x), first)
        assert torch.equal(model(x), model(x))  # eval mode: the prior's mean, deterministic


def test_hierarchical_latents_sit_at_the_coarsest_decoder_scales() -> None:
    model = _hprob(channels_per_block=(4, 8, 8, 8), latent_dims=(2, 1)).eval()
    blocks = [m for m in model.modules() if type(m).__name__ == "_ResBlock"]
    assert all(isinstance(b.residual[0], torch.nn.ReLU) for b in blocks)  # pre-activated residual blocks
    assert len(model.prior.decoder) == 2 and len(model.posterior.decoder) == 1  # the posterior stops at its last z
    x = coins_task(64)[0][:1]
    y = (x > 0).long()
    with torch.no_grad():
        core = model.prior(x)
        assert [tuple(mu.shape) for mu, _ in core.distributions] == [(1, 2, 8, 8), (1, 1, 16, 16)]
        out = model(x, target=y)
    assert out.logits.shape == (1, 2, 64, 64) and [k.shape for k in out.kl] == [(1,), (1,)]
    assert model.input_divisor == (8, 8)


def test_gaussian_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu_q, mu_p, ls_q, ls_p = (torch.randn(3, 5) for _ in range(4))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, ls_q.exp()),
                                                 torch.distributions.Normal(mu_p, ls_p.exp()))
    torch.testing.assert_close(gaussian_kl(mu_q, ls_q, mu_p, ls_p), expected)
    assert gaussian_kl(mu_q, ls_q, mu_q, ls_q).abs().max() < 1e-6


def test_prob_unet_objective_is_the_elbo_per_voxel() -> None:
    model = _prob(beta=2.0).train()
    x, y = coins_task(64)
    out = model(x, target=y)
    ce = torch.nn.functional.cross_entropy(out.logits, y, reduction="none").flatten(1).sum(1)
    expected = (ce + 2.0 * out.kl[0]).mean() / (64 * 64)
    torch.testing.assert_close(model.training_loss(out, y[:, None]), expected)


def test_geco_multiplier_rises_while_the_reconstruction_misses_kappa_and_falls_once_it_holds() -> None:
    model = _hprob(top_k_fraction=None, kappa=0.05, geco_rate=1.0, geco_decay=0.5).train()
    y = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    kl = [torch.zeros(2)]
    from medseg.models.probabilistic._latent import LatentOutput

    wrong = LatentOutput(torch.stack([torch.zeros(2, 16, 16), torch.full((2, 16, 16), 3.0)], 1), kl)
    model.training_loss(wrong, y)  # cross-entropy ≈ 3.05 per voxel ≫ κ
    assert float(model.geco_lambda) > 1.0
    right = LatentOutput(torch.stack([torch.full((2, 16, 16), 8.0), torch.zeros(2, 16, 16)], 1), kl)
    before = float(model.geco_lambda)
    for _ in range(100):  # the moving average comes down below κ, then λ falls
        model.training_loss(right, y)
    assert float(model.geco_lambda) < before
    steps = int(model.geco_steps)
    model.eval()
    model.training_loss(right, y)
    assert int(model.geco_steps) == steps  # validation leaves GECO's state alone


def test_options_are_checked() -> None:
    with pytest.raises(ModelError, match="latent_dims"):
        create_model("hprob_unet", 2, 1, 2, channels_per_block=(4, 8), latent_dims=(1, 1))
    with pytest.raises(ModelError, match="objective"):
        create_model("hprob_unet", 2, 1, 2, objective="vae")
    with pytest.raises(ModelError, match="label"):
        _prob()(torch.zeros(1, 1, 16, 16), target=torch.zeros(1, 1, 8, 8, dtype=torch.long))


# Monte-Carlo dropout -------------------------------------------------------------------------------------------------


def test_mc_dropout_on_a_registered_network_keeps_batch_norm_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = create_model("unet", 2, 1, 2, features=(4, 8, 16), dropout=0.5, norm="batch").eval()
    assert stochastic_kind(model) == "dropout" and len(dropout_layers(model)) == 1
    assert stochastic_kind(create_model("unet", 2, 1, 2, features=(4, 8, 16))) is None
    x = coins_task(64)[0][:1]
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        plain = model(x)
        with sample_mode(model, 1):
            assert dropout_layers(model)[0].training
            first = model(x)
        with sample_mode(model, 1):
            again = model(x)
        with sample_mode(model, 2):
            other = model(x)
        assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, plain)
        assert torch.equal(model(x), plain) and not dropout_layers(model)[0].training
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))
    with pytest.raises(ModelError, match="deterministic"), sample_mode(create_model("unet", 2, 1, 2), 0):
        pass


# Each learns on a real image -----------------------------------------------------------------------------------------


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> list[float]:
    """Adam on the model's own objective, the label fed to its posterior; the loss of each step."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.training_loss(model(x, target=y), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize(("name", "dims", "steps", "factor"),
                         [("prob_unet", 2, 40, 0.7), ("hprob_unet", 2, 20, 0.6), ("hprob_unet", 3, 20, 0.6)])
def test_each_learns_with_its_own_objective(name: str, dims: int, steps: int, factor: float) -> None:
    """The ELBO falls on the coins photograph (64²) and on the MNI152 white matter (32³).

    The Probabilistic U-Net's VGG-like blocks (no normalisation) learn more slowly than the hierarchical model's
    residual blocks: 40 steps for a 30 % fall; its 3D training is the trainer's test (``tests/training``).
    """
    x, y = coins_task(64) if dims == 2 else mni_task(32)
    if name == "prob_unet":
        model = _prob(dims, convs_per_block=2)
    else:
        small = {"channels_per_block": (4, 8, 8), "latent_dims": (1,)} if dims == 3 else {}
        model = _hprob(dims, objective="elbo", top_k_fraction=None, **small)
    torch.manual_seed(0)
    losses = _fit(model, x, y[:, None], steps=steps, lr=3e-3)
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-5:]) < factor * losses[0], f"{name}: {losses[0]:.4f} -> {losses[-5:]}"


# Ambiguity -----------------------------------------------------------------------------------------------------------


def test_samples_spread_where_two_annotations_of_a_real_image_disagree() -> None:
    """Kohl et al.'s claim on a real photograph: two raters, one drawing each coin 2 pixels wider (coins at 32²).

    Trained briefly (200 Adam steps, β = 1) on both annotations, the prior's samples must vary where the raters
    disagree (the ring) and agree elsewhere: the per-pixel standard deviation of the foreground probability over 16
    samples is on average more than twice as large in the ring as outside it (about 6 times at this seed; at least
    2.5 times over seeds 0-3). A network without a used latent (a U-Net, or a collapsed posterior) has no spread at
    all and fails.
    """
    from scipy import ndimage

    x, y = coins_task(32)
    wide = torch.from_numpy(np.stack([ndimage.binary_dilation(m, iterations=2) for m in y.numpy()])).long()
    images, labels = torch.cat([x, x]), torch.cat([y, wide])[:, None]
    torch.manual_seed(0)
    model = create_model("prob_unet", 2, 1, 2, features=(8, 16, 32, 32), convs_per_block=2)
    _fit(model, images, labels, steps=200, lr=2e-3)
    model.eval()
    with torch.no_grad():
        draws = []
        for seed in range(16):
            with sample_mode(model, seed):
                draws.append(torch.softmax(model(x), 1)[:, 1])
    spread = torch.stack(draws).std(0)
    ring = y != wide
    inside, outside = float(spread[ring].mean()), float(spread[~ring].mean())
    assert inside > 0.05, f"the samples hardly vary where the annotations disagree ({inside:.4f})"
    assert inside > 2 * outside, f"spread {inside:.4f} where they disagree vs {outside:.4f} where they agree"
