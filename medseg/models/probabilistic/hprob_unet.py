"""Hierarchical Probabilistic U-Net (Kohl et al., 2019), 2D as in the paper and 3D with the same layout.

Paper: S. A. A. Kohl, B. Romera-Paredes, K. H. Maier-Hein, D. J. Rezende, S. M. A. Eslami, P. Kohli, A. Zisserman,
O. Ronneberger, "A Hierarchical Probabilistic U-Net for Modeling Multi-Scale Ambiguities", arXiv:1905.13077, 2019
(Medical Imaging meets NeurIPS workshop), Section 2, Fig. 1 and Appendix.

Layout (Fig. 1 and the authors' code, ``google-deepmind/deepmind-research``, ``hierarchical_probabilistic_unet/
model.py`` and ``unet_utils.py``):

- **pre-activated residual blocks**: ReLU, then ``convs_per_block`` 3x3 convolutions to ``down_channels`` (ReLU
  between them), a 1x1 convolution back to the block's channels when they differ, and a 1x1 projection of the skip
  when the input channels differ; no normalisation;
- a **prior core** and a **posterior core** of the same design: an encoder of ``len(channels_per_block)`` levels of
  ``blocks_per_level`` residual blocks with 2x average pooling between levels, then a truncated decoder of
  ``len(latent_dims)`` levels: at each, a 1x1 convolution predicts a per-voxel axis-aligned Gaussian over
  ``latent_dims[l]`` channels, the latent is concatenated with the features, up-sampled 2x (nearest), concatenated
  with the encoder's skip and refined by residual blocks; the posterior's input is the one-hot label concatenated
  with the image;
- a **stitching decoder** shared by both: the remaining decoder levels (up-sample, skip, residual blocks) and a 1x1
  classifier.

Training: the posterior samples its latents level by level (each conditioned on the coarser ones); the prior core
runs on the image with those latents, giving the prior's distributions at the same conditioning and the features the
stitching decoder turns into the reconstruction. The objective is the ELBO, or the paper's GECO (Rezende and Viola,
*Taming VAEs*, 2018): ``λ · (CE_ma − κ) + Σ_l KL_l`` with the reconstruction's cross-entropy over a stochastic top-k
of 2 % of the voxels (Gumbel sampling), κ = 0.05 per selected voxel, a moving average with decay 0.99 whose value is
used and whose gradient is the current batch's, and a Lagrange multiplier λ (from 1). The code raises λ by gradient
ascent inside its optimiser; medseg's trainer steps only the network, so λ follows GECO's own update,
``λ ← λ · exp(rate · (CE_ma − κ))`` per training step (rate 0.01), and lives in the model's buffers (saved with the
checkpoint). Convolutions start as the code's: orthogonal weights, biases normal with standard deviation 0.001.
:meth:`HierarchicalProbabilisticUNet.training_loss` divides the objective by the voxels of an item, as
the Probabilistic U-Net does, so the trainer's learning rate and clipping apply unchanged.

Parameters at the code's default, the paper's LIDC configuration (2D, 1 input channel, 2 classes, channels
24, 48, 96, 192, 192, 192, 192, 192, down channels half of them, 3 convolutions per block, 3 blocks per level, four
latent levels of 1 channel). The paper's text states no parameter count. Tallied from the layer definitions of the
authors' code at that configuration: 21,877,230 — prior core 10,692,800, posterior core 10,693,064, stitching
decoder 491,366. The code's posterior core builds the residual stage after its last latent level (1,292,928
parameters) although only its distributions and latents are used, so nothing trains that stage; it is left out
here, and ours is that count less the stage: 20,584,302 (posterior core 9,400,136). The default input divisor is
2^7 = 128 (eight levels); fewer levels (``channels_per_block``) suit smaller patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.blocks import make_conv, make_pool
from medseg.models.probabilistic._latent import (
    LatentOutput,
    check_target,
    gaussian_kl,
    init_convolutions,
    one_hot_target,
)
from medseg.models.registry import PaperConfig, register_model
from medseg.models.sampling import LatentSegmentationModel

__all__ = ["HierarchicalProbabilisticUNet"]

#: Objectives of :class:`HierarchicalProbabilisticUNet`.
OBJECTIVES = ("geco", "elbo")
#: Bounds of the GECO Lagrange multiplier (its multiplicative update never reaches 0 or overflows).
LAMBDA_RANGE = (1e-6, 1e6)


class _ResBlock(nn.Module):
    """Pre-activated residual block of the authors' ``unet_utils.res_block``."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, down_channels: int, convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReLU()]
        c = in_channels
        for i in range(convs):
            layers.append(make_conv(spatial_dims, c, down_channels, 3))
            if i < convs - 1:
                layers.append(nn.ReLU(inplace=True))
            c = down_channels
        if down_channels != channels:
            layers.append(make_conv(spatial_dims, down_channels, channels, 1))
        self.residual = nn.Sequential(*layers)
        self.skip = make_conv(spatial_dims, in_channels, channels, 1) if in_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S)`` to ``(B, channels, *S)``."""
        return self.skip(x) + self.residual(x)


def _blocks(spatial_dims: int, in_channels: int, channels: int, down: int, convs: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(_ResBlock(spatial_dims, in_channels if i == 0 else channels, channels, down, convs)
                           for i in range(n)))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


@dataclass
class _CoreOutput:
    """Decoder features, encoder features, per-level ``(μ, log σ)`` and the latents used."""

    decoder: torch.Tensor
    encoder: list[torch.Tensor]
    distributions: list[tuple[torch.Tensor, torch.Tensor]]
    latents: list[torch.Tensor]


class _HierarchicalCore(nn.Module):
    """The full encoder and the truncated decoder interleaved with the latent levels (prior or posterior).

    Without ``last_stage`` (the posterior) the decoder stops at the last latent level: only the distributions and
    latents of a posterior are used, never the features after its last latent.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], down: Sequence[int],
                 latent_dims: Sequence[int], convs: int, blocks: int, last_stage: bool = True) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        c = in_channels
        for level, ch in enumerate(channels):
            self.encoder.append(_blocks(spatial_dims, c, ch, down[level], convs, blocks))
            c = ch
        self.pool = make_pool("avg", spatial_dims, 2)
        self.heads = nn.ModuleList()
        self.decoder = nn.ModuleList()
        rev, rev_down = list(channels)[::-1], list(down)[::-1]
        features = rev[0]
        for level, latent in enumerate(latent_dims):
            self.heads.append(make_conv(spatial_dims, features, 2 * latent, 1))
            if level < len(latent_dims) - 1 or last_stage:
                self.decoder.append(_blocks(spatial_dims, latent + features + rev[level + 1], rev[level + 1],
                                            rev_down[level + 1], convs, blocks))
            features = rev[level + 1]
        self.latent_dims = [int(d) for d in latent_dims]

    def forward(self, x: torch.Tensor, latents: Sequence[torch.Tensor] | None = None,
                noise: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> _CoreOutput:
        """Run the core; each level's latent is ``latents[l]`` when given, else ``μ + σ · noise(μ, l)``, else ``μ``."""
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(self.pool(x) if level else x)
            skips.append(x)
        features = skips[-1]
        distributions, used = [], []
        for level, head in enumerate(self.heads):
            mu, log_sigma = head(features).split(self.latent_dims[level], dim=1)
            distributions.append((mu, log_sigma))
            if latents is not None:
                z = latents[level]
            elif noise is not None:
                z = mu + torch.exp(log_sigma) * noise(mu, level)
            else:
                z = mu
            used.append(z)
            if level < len(self.decoder):
                features = self.decoder[level](torch.cat([_up(torch.cat([z, features], 1)), skips[-2 - level]], 1))
        return _CoreOutput(features, skips, distributions, used)


class _StitchingDecoder(nn.Module):
    """The decoder levels below the latent hierarchy and the 1x1 classifier."""

    def __init__(self, spatial_dims: int, channels: Sequence[int], down: Sequence[int], num_latent_levels: int,
                 convs: int, blocks: int, out_channels: int) -> None:
        super().__init__()
        rev, rev_down = list(channels)[::-1], list(down)[::-1]
        self.start = num_latent_levels + 1
        self.levels = nn.ModuleList()
        features = rev[num_latent_levels]
        for level in range(self.start, len(channels)):
            self.levels.append(_blocks(spatial_dims, features + rev[level], rev[level], rev_down[level], convs,
                                       blocks))
            features = rev[level]
        self.logits = make_conv(spatial_dims, features, out_channels, 1)

    def forward(self, core: _CoreOutput) -> torch.Tensor:
        """The core's decoder features to full-resolution logits."""
        x = core.decoder
        for offset, block in enumerate(self.levels):
            x = block(torch.cat([_up(x), core.encoder[-1 - self.start - offset]], 1))
        return self.logits(x)


@register_model(
    "hprob_unet",
    family="probabilistic",
    spatial_dims=(2, 3),
    paper_title="A Hierarchical Probabilistic U-Net for Modeling Multi-Scale Ambiguities",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        kwargs={},
        params=20_584_302,
        source="no figure in the paper (arXiv:1905.13077); counted from the authors' code google-deepmind/"
               "deepmind-research hierarchical_probabilistic_unet/model.py (HierarchicalProbUNet defaults, set for "
               "LIDC-IDRI): channels (24, 48, 96, 192, 192, 192, 192, 192), down channels half, 3 convs per block, 3 "
               "blocks per level, latent_dims (1, 1, 1, 1), 1 input channel, 2 classes: 21,877,230, less the "
               "1,292,928 of the posterior core's last decoder stage, whose output the code never uses",
    ),
    divisor=128,
    test_kwargs={"channels_per_block": (4, 8, 8, 8), "latent_dims": (1, 1), "blocks_per_level": 1,
                 "convs_per_block": 2},
)
class HierarchicalProbabilisticUNet(LatentSegmentationModel):
    """Hierarchical Probabilistic U-Net of Kohl et al. (2019): latents at several decoder scales of a U-Net.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` logits, each spatial size a multiple of
    ``2**(len(channels_per_block) - 1)`` (128 by default). Eval mode decodes the prior's means at every level (inside
    :func:`~medseg.models.sampling.sample_mode`, seeded prior samples); training mode without a label decodes fresh
    prior samples; ``model(x, target=y)`` decodes the posterior's latents and returns a
    :class:`~medseg.models.probabilistic._latent.LatentOutput` for :meth:`training_loss`.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        channels_per_block: Channels of the encoder levels (paper: 24, 48, 96, 192, 192, 192, 192, 192).
        down_channels_per_block: Inner channels of the residual blocks of each level (default: half of
            ``channels_per_block``).
        latent_dims: Latent channels of each latent level, coarsest first (paper: four levels of 1).
        convs_per_block: 3x3 convolutions per residual block (3).
        blocks_per_level: Residual blocks per level (3).
        objective: ``geco`` (paper) or ``elbo``.
        beta: KL weight of the ELBO.
        kappa: GECO's reconstruction target: mean cross-entropy per selected voxel (0.05).
        geco_decay: Decay of GECO's moving average of the reconstruction loss (0.99).
        geco_rate: Rate of the Lagrange multiplier's update (0.01).
        top_k_fraction: Fraction of the batch's voxels the reconstruction loss uses (0.02; ``None``: all).
        stochastic_top_k: Sample the top-k voxels (Gumbel trick, as the paper) instead of taking the largest losses.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels_per_block: Sequence[int] = (24, 48, 96, 192, 192, 192, 192, 192),
        down_channels_per_block: Sequence[int] | None = None,
        latent_dims: Sequence[int] = (1, 1, 1, 1),
        convs_per_block: int = 3,
        blocks_per_level: int = 3,
        objective: str = "geco",
        beta: float = 1.0,
        kappa: float = 0.05,
        geco_decay: float = 0.99,
        geco_rate: float = 0.01,
        top_k_fraction: float | None = 0.02,
        stochastic_top_k: bool = True,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        channels = tuple(int(c) for c in channels_per_block)
        down = tuple(max(1, c // 2) for c in channels) if down_channels_per_block is None \
            else tuple(int(c) for c in down_channels_per_block)
        latents = tuple(int(d) for d in latent_dims)
        name = self.model_name
        if len(channels) < 2 or min(channels) < 1:
            raise ModelError(f"{name}: channels_per_block needs at least 2 positive levels, got {channels}")
        if len(down) != len(channels) or min(down) < 1:
            raise ModelError(f"{name}: down_channels_per_block needs one positive value per level, got {down}")
        if not latents or len(latents) >= len(channels) or min(latents) < 1:
            raise ModelError(f"{name}: latent_dims needs 1 to {len(channels) - 1} positive levels (fewer than the "
                             f"{len(channels)} levels of channels_per_block), got {latents}")
        if objective not in OBJECTIVES:
            raise ModelError(f"{name}: objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if top_k_fraction is not None and not 0 < float(top_k_fraction) <= 1:
            raise ModelError(f"{name}: top_k_fraction must be in (0, 1] or None, got {top_k_fraction!r}")
        if int(convs_per_block) < 1 or int(blocks_per_level) < 1:
            raise ModelError(f"{name}: convs_per_block and blocks_per_level must be at least 1")
        self.objective, self.beta, self.kappa = objective, float(beta), float(kappa)
        self.geco_decay, self.geco_rate = float(geco_decay), float(geco_rate)
        self.top_k_fraction = None if top_k_fraction is None else float(top_k_fraction)
        self.stochastic_top_k = bool(stochastic_top_k)
        core = (channels, down, latents, int(convs_per_block), int(blocks_per_level))
        self.prior = _HierarchicalCore(spatial_dims, in_channels, *core)
        self.posterior = _HierarchicalCore(spatial_dims, in_channels + out_channels, *core, last_stage=False)
        self.stitch = _StitchingDecoder(spatial_dims, channels, down, len(latents), int(convs_per_block),
                                        int(blocks_per_level), out_channels)
        if objective == "geco":
            self.register_buffer("geco_lambda", torch.ones(()))
            self.register_buffer("geco_moving_average", torch.zeros(()))
            self.register_buffer("geco_steps", torch.zeros((), dtype=torch.long))
        self.input_divisor = (2 ** (len(channels) - 1),) * spatial_dims
        init_convolutions(self, "orthogonal")

    def _noise(self, mu: torch.Tensor, level: int) -> torch.Tensor:
        if self.sampling:
            return self.latent_noise((1, *mu.shape[1:]), mu, key=level)
        return torch.randn_like(mu)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor | LatentOutput:
        """Logits of the prior's means or samples, or with ``target`` the posterior reconstruction and the KLs."""
        self.check_input(x)
        if target is not None:
            target = check_target(target, x, self.model_name)
            seg = one_hot_target(target, self.out_channels, x.dtype)
            q = self.posterior(torch.cat([seg, x], 1), noise=self._noise if self.training else None)
            p = self.prior(x, latents=q.latents)
            kl = [gaussian_kl(mq, sq, mp, sp).flatten(1).sum(1)
                  for (mq, sq), (mp, sp) in zip(q.distributions, p.distributions, strict=True)]
            return LatentOutput(self.stitch(p), kl)
        p = self.prior(x, noise=self._noise if (self.training or self.sampling) else None)
        return self.stitch(p)

    def _top_k_mask(self, ce: torch.Tensor) -> torch.Tensor:
        """The authors' ``ce_loss`` top-k mask over the whole batch's voxels (``(B, N)`` cross-entropies)."""
        fraction = self.top_k_fraction
        if fraction is None:
            return torch.ones_like(ce)
        k = max(1, int(ce.numel() * fraction))
        score = torch.log(ce.detach() / ce.detach().sum().clamp_min(1e-20))
        if self.stochastic_top_k:
            uniform = torch.rand_like(score)
            score = score - torch.log(-torch.log(uniform + 1e-20) + 1e-20)
        mask = torch.zeros(ce.numel(), device=ce.device, dtype=ce.dtype)
        mask[score.flatten().topk(k).indices] = 1.0
        return mask.view_as(ce)

    def training_loss(self, output: LatentOutput, target: torch.Tensor) -> torch.Tensor:
        """The ELBO or GECO objective per voxel (see the module docstring), averaged over the batch (float32).

        In training mode a GECO step also updates the moving average and the Lagrange multiplier.
        """
        target = check_target(target, output.logits, self.model_name)
        ce = F.cross_entropy(output.logits.float(), target[:, 0], reduction="none").flatten(1)
        voxels = ce.shape[1]
        mask = self._top_k_mask(ce)
        reconstruction = (mask * ce).sum(1).mean()
        selected = mask.sum(1).mean()
        kl = torch.stack([k.float().mean() for k in output.kl]).sum()
        if self.objective == "elbo":
            return (reconstruction + self.beta * kl) / voxels
        current = reconstruction.detach()
        if self.training:
            with torch.no_grad():
                first = bool(self.geco_steps == 0)
                self.geco_moving_average.copy_(current if first else self.geco_decay * self.geco_moving_average
                                               + (1 - self.geco_decay) * current)
                self.geco_steps += 1
        average = self.geco_moving_average if bool(self.geco_steps > 0) else current
        smoothed = reconstruction + (average - current)  # the moving average's value, the batch's gradient
        loss = (self.geco_lambda.clone() * (smoothed - self.kappa * selected) + kl) / voxels
        if self.training:
            with torch.no_grad():
                constraint = average / selected.clamp_min(1.0) - self.kappa
                self.geco_lambda.mul_(torch.exp(self.geco_rate * constraint)).clamp_(*LAMBDA_RANGE)
        return loss
