"""Adversarial training of a segmentation network (Luc et al. 2016).

Luc, Couprie, Chintala and Verbeek, "Semantic Segmentation using Adversarial Networks", NIPS Workshop on
Adversarial Training 2016.

A discriminator ``a`` learns to tell the reference label maps from the segmentation network's predictions, each
shown with its image; the network ``s`` is trained on the hybrid loss

``ℓ_seg(s(x), y) + λ · ℓ_bce(a(x, s(x)), 1)``

(Luc et al. eq. 3, with the "flipped" adversarial term they use: the prediction should be taken for a reference),
and the discriminator on ``ℓ_bce(a(x, y), 1) + ℓ_bce(a(x, s(x)), 0)`` (eq. 2) after every step of the network. The
term penalises label maps whose joint statistics with the image differ from the references' — higher-order
consistency (shapes, contiguity, plausible label configurations) that a per-voxel loss does not see.

Inputs of the discriminator (Luc et al. §3.2): the class probabilities (``softmax`` of the network's full-resolution
logits) or the reference's one-hot map, combined with the image by their **product** encoding (every class map
multiplied by every image channel, ``C·K`` channels) or concatenated. References are **scaled** by default: the
reference class gets ``max(τ, s(x)_y)`` of the mass and the other classes share the rest in the prediction's
proportions (``τ = 0.9``), so the discriminator cannot win by the softness of the predictions alone.

The discriminator is fully convolutional (stride-2 4×4 convolutions with leaky ReLUs, as DCGAN and AdaptSegNet; 2D
or 3D, as deep as the patch allows) and its binary cross-entropy is averaged over its output map, one decision per
receptive field. It has its own Adam optimiser; its weights and optimiser state are saved in the checkpoints, so a
resumed run continues exactly. Under DDP its gradients are averaged over the processes.

:class:`AdversarialHook` is the mechanism shared with output-space domain adaptation
(:mod:`medseg.training.domain_adaptation`): the trainer adds :meth:`~AdversarialHook.generator_loss` to its loss
before the backward pass and calls :meth:`~AdversarialHook.discriminator_step` after the optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.training.loss import one_hot


class Discriminator(nn.Module):
    """A fully convolutional discriminator for ``(B, C, *input_size)`` maps; outputs ``(B, 1, *reduced)`` logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        features: Channels of the first convolution; doubled per level up to 8×.
        input_size: Spatial size of the inputs it will see (sets the number of stride-2 levels: at most 4, while
            every axis stays at least 1).
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: int, input_size: Sequence[int]) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        levels = max(0, min(4, math.floor(math.log2(max(min(int(s) for s in input_size), 1)))))
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(levels):
            out = features * min(2**i, 8)
            layers += [conv(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        layers.append(conv(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of "reference" (or "source") per receptive field."""
        return self.net(x)


def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of discriminator logits against all-real (1) or all-fake (0) targets."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), 1.0 if real else 0.0))


def main_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits of a model's output (the first of a deep-supervision list)."""
    return output if isinstance(output, torch.Tensor) else output[0]


class AdversarialHook:
    """Discriminators trained alongside the segmentation network (the trainer's interface to adversarial methods).

    Subclasses implement :meth:`generator_loss`, which returns the adversarial term for the network and leaves in
    :attr:`pending` the ``(discriminator index, real input, fake input)`` triples of the following discriminator step.

    Args:
        name: Prefix of the metrics in ``metrics.jsonl``.
        discriminators: The discriminators.
        lr: Adam learning rate.
        betas: Adam betas.
        device: Where they run.
        distributed: Average their gradients over the DDP processes.
    """

    def __init__(self, name: str, discriminators: Sequence[nn.Module], lr: float, betas: tuple[float, float],
                 device: torch.device, distributed: bool = False) -> None:
        self.name = name
        self.discriminators = nn.ModuleList(discriminators).to(device)
        self.optimizer = torch.optim.Adam(self.discriminators.parameters(), lr=lr, betas=betas)
        self.device = device
        self.distributed = distributed
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._sums = {"adv_loss": 0.0, "disc_loss": 0.0, "disc_accuracy": 0.0}
        self._steps = 0
        self.epoch = 0
        self.iteration = 0

    def start_epoch(self, epoch: int) -> None:
        """Reset the epoch's metrics; training of epoch ``epoch`` starts."""
        self.epoch, self.iteration, self._steps = epoch, 0, 0
        self._sums = dict.fromkeys(self._sums, 0.0)

    def generator_loss(self, data: torch.Tensor, output: Any, target: torch.Tensor) -> torch.Tensor:
        """The adversarial term of the network's loss for this batch (and the inputs of the next discriminator step)."""
        raise TypeError(f"{type(self).__name__} does not define the adversarial term")

    def _fool(self, index: int, fake: torch.Tensor) -> torch.Tensor:
        """``ℓ_bce(a(fake), 1)`` with the discriminator's weights frozen (the network's gradient only)."""
        disc = self.discriminators[index]
        for p in disc.parameters():
            p.requires_grad_(False)
        try:
            return bce(disc(fake), True)
        finally:
            for p in disc.parameters():
                p.requires_grad_(True)

    def discriminator_step(self) -> None:
        """One Adam step of the discriminators on the pending real and fake inputs (fp32, outside autocast)."""
        if not self.pending:
            return
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        correct, count = 0.0, 0
        for index, real, fake in self.pending:
            logits = self.discriminators[index](torch.cat([real.float(), fake.float()]))
            real_logits, fake_logits = logits[: real.shape[0]], logits[real.shape[0]:]
            total = total + bce(real_logits, True) + bce(fake_logits, False)
            correct += float((real_logits > 0).float().mean() + (fake_logits <= 0).float().mean()) / 2
            count += 1
        total.backward()
        if self.distributed:
            self._average_gradients()
        self.optimizer.step()
        self.pending = []
        self._sums["disc_loss"] += float(total.detach())
        self._sums["disc_accuracy"] += correct / max(count, 1)

    def _average_gradients(self) -> None:
        import torch.distributed as dist

        world = dist.get_world_size()
        for p in self.discriminators.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    def record(self, adversarial_loss: torch.Tensor) -> None:
        """Count one training step and its adversarial term."""
        self._steps += 1
        self.iteration += 1
        self._sums["adv_loss"] += float(adversarial_loss.detach())

    def epoch_metrics(self) -> dict[str, float]:
        """Means over the epoch: the adversarial term, the discriminator loss and its accuracy (real and fake)."""
        steps = max(self._steps, 1)
        return {f"{self.name}_{k}": v / steps for k, v in self._sums.items()}

    def state_dict(self) -> dict[str, Any]:
        """The discriminators' weights and optimiser state."""
        return {"discriminators": self.discriminators.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.discriminators.load_state_dict(state["discriminators"])
        self.optimizer.load_state_dict(state["optimizer"])


def scaled_reference(target: torch.Tensor, probabilities: torch.Tensor, tau: float) -> torch.Tensor:
    """Luc et al.'s scaled reference: the reference class gets ``max(τ, p_y)``, the others ``p_c (1 - m)/(1 - p_y)``."""
    k = probabilities.shape[1]
    hot = one_hot(target, k)
    p_true = (probabilities * hot).sum(1, keepdim=True)
    mass = torch.clamp(p_true, min=tau)
    others = probabilities * (1 - mass) / (1 - p_true).clamp(min=1e-6)
    return torch.where(hot > 0, mass.expand_as(hot), others)


def pair_input(image: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    """The discriminator's view of an (image, label map) pair: ``product`` (``C·K`` channels) or ``concat``."""
    if mode == "concat":
        return torch.cat([image, labels], 1)
    b, c = image.shape[:2]
    k = labels.shape[1]
    return (image[:, :, None] * labels[:, None]).reshape(b, c * k, *image.shape[2:])


class AdversarialTraining(AdversarialHook):
    """Luc et al.'s adversarial term and discriminator (see the module docstring).

    Args:
        spatial_dims: Dimensionality of the network's patches.
        image_channels: Image channels of the network's input (coordinate channels are not shown to the
            discriminator).
        num_classes: Classes of the network's output.
        patch_size: Training patch.
        device: Where the discriminator runs.
        weight: ``λ``.
        mode: ``product`` or ``concat``.
        real_labels: ``scaled`` or ``onehot``.
        tau: The scaling's minimum mass.
        features: Discriminator width.
        lr: Discriminator learning rate.
        distributed: Average the discriminator's gradients over DDP processes.
    """

    def __init__(self, spatial_dims: int, image_channels: int, num_classes: int, patch_size: Sequence[int],
                 device: torch.device, *, weight: float = 0.1, mode: str = "product", real_labels: str = "scaled",
                 tau: float = 0.9, features: int = 16, lr: float = 1e-4, distributed: bool = False) -> None:
        channels = image_channels * num_classes if mode == "product" else image_channels + num_classes
        disc = Discriminator(spatial_dims, channels, features, patch_size)
        super().__init__("adversarial", [disc], lr, (0.5, 0.999), device, distributed)
        self.image_channels, self.num_classes = image_channels, num_classes
        self.weight, self.mode, self.real_labels, self.tau = weight, mode, real_labels, tau

    def generator_loss(self, data: torch.Tensor, output: Any, target: torch.Tensor) -> torch.Tensor:
        """``λ · ℓ_bce(a(x, s(x)), 1)``; queues ``(x, y)`` and ``(x, s(x))`` for the discriminator."""
        probs = torch.softmax(main_output(output).float(), 1)
        image = data[:, : self.image_channels].float()
        fake = pair_input(image, probs, self.mode)
        loss = self.weight * self._fool(0, fake)
        with torch.no_grad():
            if self.real_labels == "scaled":
                reference = scaled_reference(target, probs, self.tau)
            else:
                reference = one_hot(target, self.num_classes)
            real = pair_input(image, reference, self.mode)
        self.pending = [(0, real, fake.detach())]
        self.record(loss)
        return loss
