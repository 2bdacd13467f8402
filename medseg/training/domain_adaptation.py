"""Output-space domain adaptation: train on a labelled source and an unlabelled target.

AdaptSegNet (Tsai et al., "Learning to Adapt Structured Output Space for Semantic Segmentation", CVPR 2018) and
MADA-Net's multi-scale adversarial aggregation.

Segmentations of different domains (scanners, sequences, modalities) share their layout — shapes, sizes and
neighbourhoods of structures — even where the images differ. AdaptSegNet therefore aligns the *outputs*: a
discriminator ``D`` learns to tell the softmax maps of source images from those of target images, and the network,
besides its usual loss on the labelled source batch, is trained to make its target outputs pass for source ones:

``L = L_seg(source) + Σ_l λ_l · ℓ_bce(D_l(softmax(P_l(target))), source)``,

with ``D_l`` trained on ``ℓ_bce(D_l(P_l(source)), source) + ℓ_bce(D_l(P_l(target)), target)`` after each step.

- ``adaptsegnet`` (**multi-level**, Tsai et al. §3.3): one discriminator per output level ``l`` — the main output
  and, with ``levels`` > 1, the network's deep-supervision outputs (the lower decoder levels; AdaptSegNet uses the
  conv4 auxiliary classifier), weighted ``λ = 0.001`` for the main level and ``0.0002`` for the auxiliary one.
- ``mada`` (**multi-scale adversarial aggregation**): discriminators on the main output's softmax average-pooled
  by each of ``scales`` (1, 2, 4), so coarse layout and fine boundaries are judged separately, their losses summed
  with ``weights``.

Discriminators: fully convolutional, stride-2 4×4 convolutions with leaky ReLUs (AdaptSegNet's, 2D or 3D, depth
set by the map size), Adam with lr 1e-4 and betas (0.9, 0.99). Each training step draws one target batch from the
target images, preprocessed with the source's plans into their own cache (``<cache>/target/``) and sampled like the
source (same patch, batch and augmentation, no foreground oversampling) from their own random stream, so a resumed
run draws the same target batches. The validation and the checkpoint selection use the source's validation cases:
with an unlabelled target there is nothing else to measure.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.training.adversarial import AdversarialHook, Discriminator, main_output

#: Random stream of the target batches (the source uses 0 for training and 1 for validation).
TARGET_STREAM = 2


def output_shapes(build: Callable[[], nn.Module], channels: int, patch: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial shapes of a model's training-mode outputs for one patch (main output first).

    The model is built and run on the meta device (no memory, no arithmetic); a model that cannot run there runs
    once for real on the CPU.
    """
    try:
        with torch.device("meta"):
            model = build()
        model.train()
        out = model(torch.empty(2, channels, *patch, device="meta"))
    except Exception:
        model = copy.deepcopy(build()).cpu().train()
        with torch.no_grad():
            out = model(torch.zeros(2, channels, *patch))
    outputs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [tuple(int(s) for s in o.shape[2:]) for o in outputs]


class DomainAdaptation(AdversarialHook):
    """Output-space adversarial adaptation to target batches (see the module docstring).

    Args:
        network: The segmentation network (as trained: its forward gives the training-mode outputs).
        target_batches: ``target_batches(epoch, iteration)`` → a batch dict with ``data`` of the target images.
        spatial_dims: Dimensionality of the patches.
        num_classes: Output classes.
        shapes: Spatial shape of each training-mode output (:func:`output_shapes`).
        device: Where the discriminators run.
        method: ``adaptsegnet`` or ``mada``.
        levels: ``adaptsegnet``'s number of output levels.
        scales: ``mada``'s pooling factors.
        weights: ``λ`` per level or scale (one value: the same for all; empty: AdaptSegNet's 0.001 for the main
            output and 0.0002 for the others, 0.001 per scale).
        features: Discriminator width.
        lr: Discriminator learning rate.
        distributed: Average the discriminators' gradients over DDP processes.

    Raises:
        ValueError: More levels than the network has outputs, or weights that do not match the levels or scales.
    """

    def __init__(self, network: nn.Module, target_batches: Callable[[int, int], dict[str, Any]], spatial_dims: int,
                 num_classes: int, shapes: Sequence[Sequence[int]], device: torch.device, *,
                 method: str = "adaptsegnet", levels: int = 2, scales: Sequence[int] = (1, 2, 4),
                 weights: Sequence[float] = (), features: int = 64, lr: float = 1e-4,
                 distributed: bool = False) -> None:
        if method == "adaptsegnet":
            if not 1 <= levels <= len(shapes):
                raise ValueError(f"domain_adaptation.levels is {levels}, but the network gives {len(shapes)} output "
                                 "level(s) in training (more need a model with deep supervision)")
            inputs = [list(shapes[i]) for i in range(levels)]
            self.levels, self.scales = list(range(levels)), []
        elif method == "mada":
            if not scales or any(int(s) < 1 for s in scales):
                raise ValueError(f"domain_adaptation.scales must be positive pooling factors, got {list(scales)}")
            inputs = [[math.ceil(s / int(f)) for s in shapes[0]] for f in scales]
            self.levels, self.scales = [], [int(s) for s in scales]
        else:
            raise ValueError(f"unknown domain adaptation method {method!r} (adaptsegnet or mada)")
        n = len(inputs)
        weights = [float(w) for w in weights]
        if not weights:
            weights = [0.001] + [0.0002] * (n - 1) if method == "adaptsegnet" else [0.001] * n
        if len(weights) == 1:
            weights = weights * n
        if len(weights) != n:
            raise ValueError(f"domain_adaptation.weights has {len(weights)} values for {n} "
                             f"{'levels' if method == 'adaptsegnet' else 'scales'}")
        discriminators = [Discriminator(spatial_dims, num_classes, features, size) for size in inputs]
        super().__init__("domain", discriminators, lr, (0.9, 0.99), device, distributed)
        self.network, self.target_batches, self.method, self.weights = network, target_batches, method, weights

    def _maps(self, output: Any) -> list[torch.Tensor]:
        """The softmax maps the discriminators judge: per level, or per scale of the main output."""
        if self.method == "adaptsegnet":
            outputs = [output] if isinstance(output, torch.Tensor) else list(output)
            return [torch.softmax(outputs[i].float(), 1) for i in self.levels]
        probs = torch.softmax(main_output(output).float(), 1)
        pool = F.avg_pool3d if probs.ndim == 5 else F.avg_pool2d
        return [probs if s == 1 else pool(probs, s, ceil_mode=True) for s in self.scales]

    def generator_loss(self, data: torch.Tensor, output: Any, target: torch.Tensor) -> torch.Tensor:
        """``Σ λ · ℓ_bce(D(target maps), source)`` on this step's target batch; queues source and target maps."""
        batch = self.target_batches(self.epoch, self.iteration)
        target_output = self.network(batch["data"].to(self.device, non_blocking=True))
        source_maps, target_maps = self._maps(output), self._maps(target_output)
        loss = data.new_zeros((), dtype=torch.float32)
        for i, (weight, fake) in enumerate(zip(self.weights, target_maps, strict=True)):
            loss = loss + weight * self._fool(i, fake)
        self.pending = [(i, s.detach(), t.detach()) for i, (s, t) in enumerate(zip(source_maps, target_maps,
                                                                                    strict=True))]
        self.record(loss)
        return loss

