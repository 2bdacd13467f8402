"""CRF post-processing: the permutohedral lattice against the exact gaussian, and the fully connected CRF and the
ConvCRF refining a deliberately blurred, misplaced prediction of real images (DeepLab's use of the dense CRF:
boundaries snap to the image's edges, Dice rises, the surface distance falls, the marginals sharpen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from methods_helpers import Case, assd, blurred_prediction, dice

from medseg.inference.crf import CRFConfig, crf_refine, dense_crf, gaussian_filter
from medseg.inference.permutohedral import PermutohedralLattice


@pytest.mark.parametrize(("d", "tolerance", "correlation"), [(2, 0.05, 0.99), (3, 0.1, 0.98), (4, 0.2, 0.95)])
def test_lattice_approximates_the_exact_gaussian(d: int, tolerance: float, correlation: float) -> None:
    generator = torch.Generator().manual_seed(d)
    features = torch.rand(600, d, generator=generator) * 5
    values = torch.rand(600, 2, generator=generator)
    lattice = PermutohedralLattice(features)
    kernel = torch.exp(-0.5 * torch.cdist(features, features) ** 2)
    exact = kernel @ values / kernel.sum(1, keepdim=True)
    approx = lattice.filter(values) / lattice.filter(torch.ones(600, 1))
    assert float((approx - exact).abs().max()) < tolerance
    assert float(torch.corrcoef(torch.stack([approx[:, 0], exact[:, 0]]))[0, 1]) > correlation
    # far-apart clusters do not mix: the filter is local in feature space
    far = torch.cat([features, features + 100])
    both = PermutohedralLattice(far).filter(torch.cat([torch.ones(600, 1), torch.zeros(600, 1)]))
    assert float(both[600:].abs().max()) == 0.0


def test_lattice_keys_beyond_62_bits_use_row_hashing() -> None:
    features = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.1, 0, 0, 0, 0, 0, 0]]) * 1
    spread = torch.cat([features, features + 3e4])  # coordinates far apart: mixed radix exceeds int64
    lattice = PermutohedralLattice(spread)
    out = lattice.filter(torch.eye(4))
    assert out.shape == (4, 4)
    assert float(out[:2, 2:].abs().max()) == 0.0 and float(out[0, 1]) > 0


def test_separable_gaussian_is_exact() -> None:
    from scipy.ndimage import gaussian_filter as scipy_gaussian

    x = torch.rand(2, 9, 11, 7, generator=torch.Generator().manual_seed(0))
    sigmas = (1.0, 2.0, 0.5)
    ours = gaussian_filter(x, list(sigmas))
    reference = np.stack([scipy_gaussian(c.numpy(), sigmas, mode="constant", truncate=4.0) for c in x])
    # scipy normalises each 1D kernel to sum 1; ours has peak 1
    sums = [np.exp(-0.5 * (np.arange(-np.ceil(4 * s), np.ceil(4 * s) + 1) / s) ** 2).sum() for s in sigmas]
    np.testing.assert_allclose(ours.numpy() / np.prod(sums), reference, atol=1e-5)


def _refine(case: Case, grow: int, sigma: float, config: CRFConfig) -> dict[str, float]:
    probabilities = blurred_prediction(case.mask, grow, sigma)
    refined = torch.softmax(crf_refine(torch.from_numpy(probabilities), "probabilities",
                                       torch.from_numpy(case.image), case.spacing, config), 0).numpy()
    before, after = probabilities.argmax(0) == 1, refined.argmax(0) == 1
    return {
        "dice_before": dice(before, case.mask), "dice_after": dice(after, case.mask),
        "assd_before": assd(before, case.mask, case.spacing), "assd_after": assd(after, case.mask, case.spacing),
        "uncertain_before": float((probabilities.max(0) < 0.9).mean()),
        "uncertain_after": float((refined.max(0) < 0.9).mean()),
    }


@pytest.mark.parametrize("method", ["dense", "conv"])
@pytest.mark.parametrize("grow", [2, -2])
def test_crf_snaps_a_blurred_2d_prediction_to_the_coins(coins: Case, method: str, grow: int) -> None:
    r = _refine(coins, grow, 2.0, CRFConfig(method=method))
    print(method, grow, {k: round(v, 3) for k, v in r.items()})
    assert r["dice_after"] > r["dice_before"] + 0.03, r
    assert r["assd_after"] < 0.8 * r["assd_before"], r
    assert r["uncertain_after"] < 0.5 * r["uncertain_before"], r


@pytest.mark.parametrize("method", ["dense", "conv"])
@pytest.mark.parametrize("grow", [1, -1])
def test_crf_refines_a_blurred_3d_white_matter_prediction(mni_wm: Case, method: str, grow: int) -> None:
    r = _refine(mni_wm, grow, 1.0, CRFConfig(method=method, window=5))
    print(method, grow, {k: round(v, 3) for k, v in r.items()})
    assert r["dice_after"] > r["dice_before"] + 0.01, r
    assert r["uncertain_after"] < r["uncertain_before"], r


@pytest.mark.parametrize("method", ["dense", pytest.param("conv", marks=pytest.mark.slow)])
def test_crf_recovers_an_undersegmented_spleen_in_ct(spleen: Case, method: str) -> None:
    r = _refine(spleen, -2, 1.5, CRFConfig(method=method))
    print(method, {k: round(v, 3) for k, v in r.items()})
    assert r["dice_after"] > r["dice_before"] + 0.05, r
    assert r["assd_after"] < 0.7 * r["assd_before"], r


def test_a_one_slice_volume_gets_the_2d_crf(coins: Case) -> None:
    probabilities = torch.from_numpy(blurred_prediction(coins.mask[:96, :96], 2, 2.0))
    image = torch.from_numpy(coins.image[:, :96, :96])
    config = CRFConfig(iterations=2)
    as_2d = crf_refine(probabilities, "probabilities", image, coins.spacing, config)
    as_3d = crf_refine(probabilities[:, None], "probabilities", image[:, None], (3.0, *coins.spacing), config)
    np.testing.assert_allclose(as_3d[:, 0].numpy(), as_2d.numpy(), rtol=1e-6, atol=1e-6)


def test_logits_and_probabilities_give_the_same_refinement(mni_wm: Case) -> None:
    probabilities = torch.from_numpy(blurred_prediction(mni_wm.mask, 1, 1.0))
    image = torch.from_numpy(mni_wm.image)
    config = CRFConfig(iterations=2)
    from_probabilities = crf_refine(probabilities, "probabilities", image, mni_wm.spacing, config)
    from_logits = crf_refine(torch.log(probabilities) + 3.0, "logits", image, mni_wm.spacing, config)
    np.testing.assert_allclose(torch.softmax(from_logits, 0).numpy(), torch.softmax(from_probabilities, 0).numpy(),
                               atol=1e-4)


def test_without_pairwise_weight_the_crf_keeps_the_unary(mni_wm: Case) -> None:
    unary = torch.log(torch.from_numpy(blurred_prediction(mni_wm.mask, 1, 1.0)))
    config = CRFConfig(appearance_weight=0.0, smoothness_weight=0.0)
    out = dense_crf(unary, torch.from_numpy(mni_wm.image), mni_wm.spacing, config)
    np.testing.assert_allclose(out.numpy(), unary.numpy(), atol=1e-6)


@pytest.mark.parametrize("bad", [{"method": "bilateral"}, {"iterations": 0}, {"window": 4}, {"intensity_sigma": 0.0},
                                 {"blur": 0}])
def test_bad_crf_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CRFConfig(**bad)  # type: ignore[arg-type]
