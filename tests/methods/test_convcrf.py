"""Convolutional CRFs (Teichmann and Cipolla 2018): exact mean field inside the window, the layer after any registered
model, and on a real photograph the paper's result — a ConvCRF trained end to end with a network segments better
than the network alone, with fewer spurious fragments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from methods_helpers import Case, dice
from scipy import ndimage
from torch import nn

import medseg.models.convcrf as convcrf_module
from medseg.models import create_model
from medseg.models.convcrf import ConvCRF, CRFLayerModel, create_run_model, with_crf_layer


def _mean_field(logits: torch.Tensor, image: torch.Tensor, spacing: list[float], iterations: int,
                sigmas: tuple[float, float, float], weights: tuple[float, float]) -> torch.Tensor:
    """Fully connected mean field with normalised messages, by dense matrices (small images only)."""
    k, shape = logits.shape[0], logits.shape[1:]
    axes = [torch.arange(s, dtype=torch.float32) * p for s, p in zip(shape, spacing, strict=True)]
    positions = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(len(shape), -1).T
    features = image.reshape(image.shape[0], -1).T
    d2 = torch.cdist(positions, positions) ** 2
    appearance = torch.exp(-0.5 * d2 / sigmas[0] ** 2 - 0.5 * torch.cdist(features, features) ** 2 / sigmas[1] ** 2)
    smooth = torch.exp(-0.5 * d2 / sigmas[2] ** 2)
    unary = torch.log_softmax(logits.reshape(k, -1), 0)
    z = unary
    for _ in range(iterations):
        q = torch.softmax(z, 0)
        z = unary + weights[0] * (q @ appearance.T) / appearance.sum(1) + weights[1] * (q @ smooth.T) / smooth.sum(1)
    return z.reshape(k, *shape)


@pytest.mark.parametrize(("dims", "shape", "spacing"), [(2, (7, 9), [1.0, 2.0]), (3, (5, 6, 7), [1.0, 2.0, 0.5])])
def test_a_window_covering_the_image_is_the_fully_connected_crf(dims: int, shape: tuple[int, ...],
                                                               spacing: list[float]) -> None:
    generator = torch.Generator().manual_seed(dims)
    logits, image = torch.randn(2, 3, *shape, generator=generator), torch.randn(2, 2, *shape, generator=generator)
    layer = ConvCRF(3, dims, window=2 * max(shape) + 1, iterations=3, appearance_weight=3.0, appearance_sigma=2.0,
                    intensity_sigma=0.7, smoothness_weight=1.0, smoothness_sigma=1.5)
    out = layer(logits, image, spacing)
    for b in range(2):
        expected = _mean_field(logits[b], image[b], spacing, 3, (2.0, 0.7, 1.5), (3.0, 1.0))
        np.testing.assert_allclose(out[b].detach().numpy(), expected.numpy(), atol=1e-4)


def test_slabs_without_gradients_give_the_same_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    logits, image = torch.randn(1, 2, 9, 8, 7, generator=generator), torch.randn(1, 1, 9, 8, 7, generator=generator)
    layer = ConvCRF(2, 3, window=3)
    with torch.no_grad():
        whole = layer(logits, image)
        monkeypatch.setattr(convcrf_module, "SLAB_ELEMENTS", 2000)
        assert len(layer._slabs(image.shape[2:], 1)) > 2
        sliced = layer(logits, image)
    np.testing.assert_allclose(sliced.numpy(), whole.numpy(), atol=1e-6)


def test_blur_keeps_the_shape_and_a_fixed_layer_learns_nothing() -> None:
    layer = ConvCRF(2, 2, window=5, blur=2)
    out = layer(torch.randn(1, 2, 13, 10), torch.randn(1, 1, 13, 10))
    assert out.shape == (1, 2, 13, 10) and not list(layer.parameters())
    assert len(list(ConvCRF(2, 2, trainable=True).parameters())) == 3
    with pytest.raises(ValueError):
        ConvCRF(2, 2, window=4)


@pytest.mark.parametrize(("name", "dims", "kwargs"), [
    ("nnunet", 2, {"features_per_stage": [4, 8, 16], "strides": [[1, 1], [2, 2], [2, 2]],
                   "kernel_sizes": [[3, 3]] * 3, "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1],
                   "deep_supervision": True}),
    ("unet", 3, {"features": [4, 8, 16, 32, 64]}),
])
def test_the_layer_follows_any_registered_model(name: str, dims: int, kwargs: dict[str, object]) -> None:
    model = create_model(name, dims, 2, 3, **kwargs)
    wrapped = CRFLayerModel(model, image_channels=1, window=3, iterations=2, trainable=True)
    assert wrapped.out_channels == 3 and wrapped.input_divisor == model.input_divisor
    x = torch.randn(2, 2, *([16] * dims))
    wrapped.train()
    out = wrapped(x)
    outputs = list(out) if isinstance(out, (list, tuple)) else [out]
    assert outputs[0].shape == (2, 3, *([16] * dims))
    sum(o.sum() for o in outputs).backward()
    assert wrapped.crf.weights.grad is not None and wrapped.crf.log_sigmas.grad is not None
    assert all(p.grad is not None for p in wrapped.model.parameters() if p.requires_grad)
    assert {k.split(".")[0] for k in wrapped.state_dict()} == {"model", "crf"}


def test_run_models_are_built_the_same_for_training_and_prediction() -> None:
    entry = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
             "kwargs": {"features": [4, 8, 16, 32, 64]}}
    plain = create_run_model(entry, None, None, False)
    widened = create_run_model(entry, None, None, False, extra_in_channels=3,
                               crf_layer={"enabled": True, "window": 3, "trainable": True})
    assert isinstance(widened, CRFLayerModel) and widened.in_channels == 4 and widened.image_channels == 1
    assert not isinstance(plain, CRFLayerModel) and with_crf_layer(plain, {"enabled": False}, 1) is plain
    assert widened(torch.randn(1, 4, 32, 32)).shape == (1, 2, 32, 32)


class _Tiny(nn.Module):
    """Two 3×3 convolutions: a 5-pixel receptive field, too small to see a coin whole."""

    spatial_dims, in_channels, out_channels = 2, 1, 2

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _train(image: np.ndarray, mask: np.ndarray, with_crf: bool, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model: nn.Module = _Tiny()
    if with_crf:
        model = CRFLayerModel(model, 1, window=5, iterations=3, trainable=True)
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        corners = [(int(rng.integers(0, image.shape[0] - 64)), int(rng.integers(0, image.shape[1] - 64)))
                   for _ in range(2)]
        x = torch.from_numpy(np.stack([image[r:r + 64, c:c + 64] for r, c in corners]))[:, None]
        y = torch.from_numpy(np.stack([mask[r:r + 64, c:c + 64] for r, c in corners]).astype(np.int64))
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


@pytest.mark.slow
def test_a_trained_convcrf_improves_the_network_it_follows(coins_full: Case) -> None:
    """Equal budget (steps, batches, seed) with and without the layer; tested on the unseen right half, with noise."""
    rng = np.random.default_rng(0)
    noisy = (coins_full.image[0] + rng.standard_normal(coins_full.image.shape[1:])).astype(np.float32)
    half = noisy.shape[1] // 2
    reference = coins_full.mask[:, half:]
    results = {}
    for with_crf in (False, True):
        model = _train(noisy[:, :half], coins_full.mask[:, :half], with_crf, 60, 0)
        with torch.no_grad():
            predicted = model(torch.from_numpy(noisy[:, half:])[None, None]).argmax(1)[0].numpy() == 1
        results[with_crf] = (dice(predicted, reference), ndimage.label(predicted)[1])
    objects = ndimage.label(reference)[1]
    print(f"(Dice, objects) without / with the ConvCRF layer: {results[False]} / {results[True]}; coins: {objects}")
    assert results[True][0] > results[False][0] + 0.01, results
    assert abs(results[True][1] - objects) < abs(results[False][1] - objects), (results, objects)
    assert not math.isnan(results[True][0])
