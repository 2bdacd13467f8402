"""Pieces the probabilistic U-Nets share: the training output, one-hot labels and the Gaussian KL divergence."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LatentOutput", "check_target", "gaussian_kl", "init_convolutions", "one_hot_target"]


@dataclass
class LatentOutput:
    """What a latent-variable model returns when it is given the label (``model(x, target=y)``).

    Attributes:
        logits: ``(B, C_out, *spatial)`` logits decoded from the posterior's latents (a posterior sample in training
            mode, the posterior mean in eval mode).
        kl: Per latent level, ``KL(q ‖ p)`` per batch item ``(B,)``, summed over the level's latent channels and
            positions.
    """

    logits: torch.Tensor
    kl: list[torch.Tensor] = field(default_factory=list)


def check_target(target: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """Labels as ``(B, 1, *spatial)`` integers matching ``x`` (``(B, *spatial)`` is accepted too).

    Raises:
        ModelError: The label's batch or spatial shape differs from the image's.
    """
    from medseg.errors import ModelError

    if target.dim() == x.dim() - 1:
        target = target.unsqueeze(1)
    if target.dim() != x.dim() or target.shape[1] != 1 or target.shape[0] != x.shape[0] \
            or target.shape[2:] != x.shape[2:]:
        raise ModelError(f"{name}: the label must be (B, 1, *spatial) = {(x.shape[0], 1, *x.shape[2:])} to match "
                         f"the image {tuple(x.shape)}, got {tuple(target.shape)}")
    return target.long()


def one_hot_target(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels to ``(B, num_classes, *spatial)`` one-hot values of ``dtype``."""
    labels = target[:, 0].long().clamp(0, num_classes - 1)
    return F.one_hot(labels, num_classes).movedim(-1, 1).to(dtype)


def gaussian_kl(mu_q: torch.Tensor, log_sigma_q: torch.Tensor, mu_p: torch.Tensor,
                log_sigma_p: torch.Tensor) -> torch.Tensor:
    """``KL(q ‖ p)`` of axis-aligned Gaussians, element-wise (sum it over the latent axes), in float32.

    ``log σp − log σq + (σq² + (μq − μp)²) / (2 σp²) − ½``.
    """
    mu_q, log_sigma_q, mu_p, log_sigma_p = (t.float() for t in (mu_q, log_sigma_q, mu_p, log_sigma_p))
    variance_ratio = torch.exp(2 * (log_sigma_q - log_sigma_p))
    mean_term = (mu_q - mu_p).square() * torch.exp(-2 * log_sigma_p)
    return log_sigma_p - log_sigma_q + 0.5 * (variance_ratio + mean_term) - 0.5


def init_convolutions(module: nn.Module, weights: str) -> None:
    """Initialise every convolution of ``module`` as the authors' code does.

    Weights ``he_normal`` (He et al. 2015: fan-in, ReLU gain) or ``orthogonal``; biases from a normal distribution
    with standard deviation 0.001 truncated at two standard deviations. Tensors on the meta device are left alone.
    """
    for m in module.modules():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or m.weight.is_meta:
            continue
        if weights == "he_normal":
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.orthogonal_(m.weight)
        if m.bias is not None:
            nn.init.trunc_normal_(m.bias, std=0.001, a=-0.002, b=0.002)
