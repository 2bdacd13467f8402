"""Settings of the training methods that go with any model.

A trainable ConvCRF layer, adversarial training and output-space domain adaptation (fields of
:class:`medseg.training.TrainConfig`; ``--set crf_layer.enabled=true``).

The methods themselves live in :mod:`medseg.models.convcrf`, :mod:`medseg.training.adversarial` and
:mod:`medseg.training.domain_adaptation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class CRFLayerConfig:
    """A ConvCRF after the network, trained with it (Teichmann and Cipolla 2018; :mod:`medseg.models.convcrf`).

    Positions are in voxels of the network's input; intensities in the preprocessed image's units.

    Attributes:
        enabled: Put the layer after the model (training, final validation and ``medseg predict``).
        window: Window edge in voxels (odd).
        iterations: Mean-field iterations.
        appearance_weight: Initial ``w_a`` of every class.
        appearance_sigma: ``θα`` in voxels.
        intensity_sigma: ``θβ``.
        smoothness_weight: Initial ``w_s``.
        smoothness_sigma: ``θγ`` in voxels.
        blur: Down-sampling of the message passing.
        trainable: Learn the weights, widths and compatibility (``false``: a fixed CRF inside the network).
    """

    enabled: bool = False
    window: int = 5
    iterations: int = 5
    appearance_weight: float = 3.0
    appearance_sigma: float = 3.0
    intensity_sigma: float = 0.5
    smoothness_weight: float = 1.0
    smoothness_sigma: float = 1.0
    blur: int = 1
    trainable: bool = True


@dataclass
class AdversarialConfig:
    """Adversarial training of the segmentation network (Luc et al. 2016; :mod:`medseg.training.adversarial`).

    Attributes:
        enabled: Train a discriminator on (image, label map) pairs and add its term to the segmentation loss.
        weight: ``λ`` of the adversarial term ``λ · BCE(a(x, s(x)), 1)``.
        input: How the discriminator sees a pair: ``product`` (every class map times every image channel, Luc et
            al.'s "product" encoding) or ``concat`` (image and class maps as channels).
        real_labels: ``scaled`` (Luc et al.'s scaling with ``tau``: the reference class gets at least ``tau`` of the
            mass, the rest follows the prediction, so one-hot labels cannot be told from predictions by their
            softness alone) or ``onehot``.
        tau: The scaling's minimum mass of the reference class.
        features: Channels of the discriminator's first convolution (doubled per level).
        lr: The discriminator's Adam learning rate.
    """

    enabled: bool = False
    weight: float = 0.1
    input: Literal["product", "concat"] = "product"
    real_labels: Literal["scaled", "onehot"] = "scaled"
    tau: float = 0.9
    features: int = 16
    lr: float = 1e-4


@dataclass
class DomainAdaptationConfig:
    """Output-space adaptation from a labelled source to an unlabelled target.

    AdaptSegNet (Tsai et al., CVPR 2018) and MADA-Net's multi-scale adversarial aggregation
    (:mod:`medseg.training.domain_adaptation`).

    Attributes:
        target_manifest: Manifest of the target images (labels, if any, are not read); setting it enables the
            method. The images are preprocessed with the source's plans.
        method: ``adaptsegnet`` (one discriminator per output level: the main output and the model's
            deep-supervision outputs, multi-level) or ``mada`` (one discriminator per scale of the main output,
            their losses aggregated).
        levels: ``adaptsegnet``: output levels adapted (1: the main output only; AdaptSegNet: 2).
        scales: ``mada``: average-pooling factors of the main output's softmax (1 = full resolution).
        weights: ``λ_adv`` per level or scale; one value applies to all; empty: AdaptSegNet's 0.001 for the main
            output and 0.0002 for each auxiliary level, 0.001 for every ``mada`` scale.
        features: Channels of the discriminators' first convolution (AdaptSegNet: 64).
        lr: The discriminators' Adam learning rate (AdaptSegNet: 1e-4, betas 0.9/0.99).
    """

    target_manifest: str | None = None
    method: Literal["adaptsegnet", "mada"] = "adaptsegnet"
    levels: int = 2
    scales: list[int] = field(default_factory=lambda: [1, 2, 4])
    weights: list[float] = field(default_factory=list)
    features: int = 64
    lr: float = 1e-4
