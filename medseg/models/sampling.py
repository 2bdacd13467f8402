"""Drawing samples from stochastic networks: latent-variable models and Monte-Carlo dropout.

Two kinds of networks give another segmentation on every draw, and :func:`sample_mode` drives both:

- **Latent-variable models** (:class:`LatentSegmentationModel`: the Probabilistic U-Net and its hierarchical
  successor, ``medseg/models/probabilistic/``). In eval mode they return the segmentation of the prior's mean; inside
  ``sample_mode(model, seed)`` they decode the prior sample ``z = μ + σ·ε`` with ``ε`` drawn from a generator seeded
  with ``seed``. The same ``ε`` serves every call inside the block and every item of a batch, so draw ``seed`` is one
  coherent choice of the prior's quantile across all the windows of a sliding window (each window's own prior
  gives ``μ`` and ``σ``).
- **Networks with dropout layers**: Monte-Carlo dropout (Gal and Ghahramani, *Dropout as a Bayesian approximation*,
  ICML 2016; Kendall et al., *Bayesian SegNet*, BMVC 2017; Orlando et al., *U2-Net: a Bayesian U-Net model with
  epistemic uncertainty feedback*, ISBI 2019). Inside ``sample_mode`` every ``torch.nn`` dropout layer with ``p > 0``
  runs in training mode while the rest of the network stays in eval mode (batch norm keeps its running statistics),
  and torch's random number generator is seeded with ``seed`` (and restored afterwards), so a draw is reproducible.

A latent model that also has dropout layers gets both. :func:`stochastic_kind` says which applies to a network
(wrappers such as the slice-by-slice adapter are searched through).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel

__all__ = ["LatentSegmentationModel", "dropout_layers", "latent_models", "sample_mode", "stochastic_kind"]


class LatentSegmentationModel(SegmentationModel):
    """A segmentation network with latent variables: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)`` logits.

    Subclasses draw their standard-normal noise through :meth:`latent_noise`, which is seeded inside
    :meth:`latent_sampling` and fresh otherwise, and define ``training_loss(output, target)``: the trainer then calls
    ``model(data, target=target)`` and minimises that loss (the posterior network needs the label).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self._noise_seed: int | None = None

    @property
    def sampling(self) -> bool:
        """Whether forward passes decode seeded prior samples (inside :meth:`latent_sampling`)."""
        return self._noise_seed is not None

    @contextlib.contextmanager
    def latent_sampling(self, seed: int) -> Iterator[None]:
        """Within the block, eval-mode forward passes decode the prior sample of draw ``seed``."""
        previous = self._noise_seed
        self._noise_seed = int(seed)
        try:
            yield
        finally:
            self._noise_seed = previous

    def latent_noise(self, shape: Sequence[int], like: torch.Tensor, key: int = 0) -> torch.Tensor:
        """Standard-normal noise of ``shape`` on ``like``'s device and dtype.

        Inside :meth:`latent_sampling` it comes from a CPU generator seeded with the draw's seed and ``key`` (one key
        per latent level), so every call of one draw gets the same values on any device; otherwise from torch's
        global generator.
        """
        if self._noise_seed is None or like.device.type == "meta":
            return torch.randn(tuple(shape), device=like.device, dtype=like.dtype)
        generator = torch.Generator()
        generator.manual_seed((self._noise_seed * 1_000_003 + key) % (2**63))
        return torch.randn(tuple(shape), generator=generator).to(device=like.device, dtype=like.dtype)


def latent_models(model: nn.Module) -> list[LatentSegmentationModel]:
    """The latent-variable networks inside ``model`` (itself included)."""
    return [m for m in model.modules() if isinstance(m, LatentSegmentationModel)]


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The ``torch.nn`` dropout layers of ``model`` that drop anything (``p > 0``)."""
    return [m for m in model.modules()
            if isinstance(m, (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout))
            and float(getattr(m, "p", 0.0)) > 0]


def stochastic_kind(model: nn.Module) -> str | None:
    """``"latent"`` (a latent-variable model), ``"dropout"`` (dropout layers only) or ``None`` (deterministic)."""
    if latent_models(model):
        return "latent"
    if dropout_layers(model):
        return "dropout"
    return None


def _rng_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def sample_mode(model: nn.Module, seed: int) -> Iterator[None]:
    """Within the block, ``model``'s forward passes give draw ``seed`` (see the module docstring).

    Raises:
        ModelError: ``model`` has neither latent variables nor dropout layers.
    """
    latents, dropouts = latent_models(model), dropout_layers(model)
    if not latents and not dropouts:
        name = getattr(model, "model_name", type(model).__name__)
        raise ModelError(f"{name} is deterministic (no latent variables, no dropout layers): it has no samples to "
                         "draw; use a probabilistic model (prob_unet, hprob_unet) or train one with dropout")
    modes = [(layer, layer.training) for layer in dropouts]
    with contextlib.ExitStack() as stack:
        for latent in latents:
            stack.enter_context(latent.latent_sampling(seed))
        if dropouts:
            stack.enter_context(torch.random.fork_rng(devices=_rng_devices(model)))
            torch.manual_seed(int(seed))
            for layer in dropouts:
                layer.train()
        try:
            yield
        finally:
            for layer, training in modes:
                layer.train(training)
