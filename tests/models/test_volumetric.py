"""Volumetric family: structure against the papers / official code, GP-Unet's counting, RoI handling, and each
model learning the MNI152 white-matter task at 32^3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer
from testutils import assert_learns, coins_task, mni_task

from medseg.models import create_model, get_model_info, list_models
from medseg.models.volumetric.roi_unet3d import find_rois

KEYS = ["gp_unet", "anatomynet", "roi_unet3d", "dense_unet3d", "ms_unet3d"]


def _meta(name: str, dims: int = 3, cin: int = 1, cout: int = 2, **kwargs):
    with torch.device("meta"):
        return create_model(name, dims, cin, cout, **kwargs)


def test_registered_3d_first() -> None:
    assert set(KEYS) <= set(list_models("volumetric"))
    for key in KEYS:
        info = get_model_info(key)
        assert 3 in info.spatial_dims and info.paper.spatial_dims == 3


def test_dense_unet_levels_and_dense_connections() -> None:
    model = _meta("dense_unet3d", cin=1, cout=1)
    assert model.input_divisor == (16, 16, 16)  # four 2x2x2 poolings
    widths = [block.conv1[0].out_channels for block in model.encoder]
    assert widths == [32, 64, 128, 256, 512]
    # Dense pairs: conv2 sees [x, conv1]; the level output is [x, conv2] (1 + 32, 33 + 64, ...).
    assert [block.conv2[0].in_channels for block in model.encoder] == [33, 97, 225, 481, 993]
    # Authors' code: up6 = [convT(256), conc42 (481)] -> 737 channels; up7..up9 take conv32/22/12 only.
    assert [block.conv1[0].in_channels for block in model.decoder] == [737, 256, 128, 64]
    x = torch.randn(1, 1, 16, 32, 32)
    small = create_model("dense_unet3d", 3, 1, 2, features=(2, 2, 2, 2, 2))
    assert small(x).shape == (1, 2, 16, 32, 32)


def test_anatomynet_one_downsampling_and_se_blocks() -> None:
    model = _meta("anatomynet", cout=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.stride for c in convs if c.stride != (1, 1, 1)] == [(2, 2, 2)]  # the stem only
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) for m in model.modules()) == 1
    assert not any(isinstance(m, torch.nn.MaxPool3d) for m in model.modules())
    assert model.input_divisor == (2, 2, 2)
    se = [m for m in model.modules() if isinstance(m, ChannelSELayer)]
    assert len(se) == 12  # 3 stages x 2 encoder blocks, 3 up blocks and 3 decoder blocks; none at full resolution
    hidden = [m.fc[0].out_features for m in se]
    assert hidden[:6] == [30 // 15] * 2 + [32 // 15] * 2 + [34 // 15] * 2  # encoder: reduction 15 (the code)
    assert [s.fc[0].in_features for s in se] == [30, 30, 32, 32, 34, 34, 32, 30, 28, 32, 30, 28]  # up, then post
    # The full-resolution block sees the image: 14 up-sampled channels + the input channel.
    assert model.full_res.conv1[0].in_channels == 15
    # SE recalibrates channels: with one channel's excitation forced to zero that channel is silenced.
    layer = create_model("anatomynet", 3, 1, 2, stem_channels=4, encoder_channels=(4, 4, 4)).encoder[0][0].se
    with torch.no_grad():
        layer.fc[2].weight.zero_()
        layer.fc[2].bias.copy_(torch.tensor([-1e4, 0.0, 0.0, 0.0]))
    y = layer(torch.ones(1, 4, 2, 2, 2))
    assert torch.all(y[:, 0] == 0) and torch.allclose(y[:, 1:], torch.full_like(y[:, 1:], 0.5))


def test_ms_unet_paper_plan_and_loss_weights() -> None:
    model = _meta("ms_unet3d", cout=3, deep_supervision=True)
    assert model.features_per_stage == [30, 60, 120, 240, 320, 320]
    assert model.input_divisor == (8, 32, 32)
    assert model.deep_supervision_scales == [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8), (4, 16, 16)]
    assert model.loss_weights == (0.6, 0.1, 0.1, 0.1, 0.1)  # DC_and_CE_loss of the official code
    assert model.encoder[0][0].conv.kernel_size == (1, 3, 3)
    assert model.decoder[-1][0].conv.kernel_size == (3, 3, 3)  # decoder stages take the kernel one level below
    assert all(h.bias is None for h in model.heads) and all(t.bias is None for t in model.transpconvs)
    small = create_model("ms_unet3d", 3, 1, 2, **get_model_info("ms_unet3d").test_kwargs[3]).eval()
    assert small(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_find_rois_boxes_margin_and_order() -> None:
    probs = torch.zeros(2, 8, 16, 16)
    probs[0] = 1.0
    probs[1, 2:4, 3:6, 4:8] = 1.0  # 24 voxels
    probs[1, 6, 12, 12] = 1.0  # 1 voxel
    probs[0] -= probs[1]
    boxes = find_rois(probs, margin=(1, 2, 2), max_rois=10)
    assert boxes == [((1, 5), (1, 8), (2, 10)), ((5, 8), (10, 15), (10, 15))]  # largest first, margin, clipped
    assert find_rois(probs, margin=(0, 0, 0), max_rois=1) == [((2, 4), (3, 6), (4, 8))]
    assert find_rois(torch.zeros(2, 4, 4, 4), (1, 2, 2), 2) == [((0, 1), (0, 1), (0, 1))]  # none: a dummy RoI


def test_roi_unet_full_size_output_from_rois_and_localisation() -> None:
    torch.manual_seed(0)
    model = create_model("roi_unet3d", 3, 1, 2, base_channels=2, deep_supervision=True).train()
    fixed = torch.zeros(1, 2, 8, 8, 8)
    fixed[0, 1, 2:4, 3:5, 3:5] = 1.0  # one tumour candidate on the (2, 4, 4)-strided grid
    fixed[0, 0] = 1.0 - fixed[0, 1]
    model.localisation_probabilities = lambda logits: fixed
    x = torch.randn(1, 1, 16, 32, 32, requires_grad=True)
    full, loc = model(x)
    assert full.shape == (1, 2, 16, 32, 32) and loc.shape == (1, 2, 8, 8, 8)
    assert model.loss_weights == (1.0, 1.0) and model.deep_supervision_scales[1] == (2, 4, 4)
    assert model.last_rois == [[((1, 5), (1, 7), (1, 7))]]  # the candidate's box, enlarged by (1, 2, 2)
    inside = torch.zeros(16, 32, 32, dtype=torch.bool)
    inside[2:10, 4:28, 4:28] = True  # the RoI at full resolution
    base = F.interpolate(loc, size=(16, 32, 32), mode="trilinear", align_corners=False)
    torch.testing.assert_close(full[0][:, ~inside], base[0][:, ~inside])  # coarse logits outside the RoI
    assert not torch.allclose(full[0][:, inside], base[0][:, inside])  # the decoder's logits inside it
    full[0, 1][inside].sum().backward()
    assert model.region_head.weight.grad.abs().sum() > 0


def test_gp_unet_learns_counts_and_localises() -> None:
    """GP-Unet trained on image-level labels only (the coin-pixel count of crops of the coins photograph, as a
    fraction of the crop) lowers its loss, and its map then lights up the coins of whole images it never saw."""
    x, y = coins_task(64)
    offsets = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16), (0, 16), (16, 0), (32, 16)]
    crops = torch.cat([x[:, :, i:i + 32, j:j + 32] for i, j in offsets])
    masks = torch.cat([y[:, i:i + 32, j:j + 32] for i, j in offsets]).float()
    counts = masks.flatten(1).mean(1, keepdim=True)
    torch.manual_seed(0)
    model = create_model("gp_unet", 2, 1, 1, **get_model_info("gp_unet").test_kwargs[2])
    assert model.count(crops).shape == (16, 1)
    torch.testing.assert_close(model.count(crops), model(crops).mean((2, 3)))  # global average pooling

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])

    with torch.no_grad():
        corr_before = corr(model(x), y.float())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = F.mse_loss(model.count(crops), counts)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert min(losses[-5:]) < 0.15 * losses[0], losses[::10]
    with torch.no_grad():
        maps = model(x)[:, 0]  # the full 64x64 halves
    corr_after = corr(maps, y.float())
    assert corr_after > 0.6 and corr_after > corr_before + 0.3, (corr_before, corr_after)
    assert maps[y == 1].mean() > 1.5 * maps[y == 0].mean().abs()
    summed = create_model("gp_unet", 2, 1, 1, features=(4, 4, 4), pooling="sum")
    torch.testing.assert_close(summed.count(crops), summed(crops).sum((2, 3)))


LEARNING_RATES = {"gp_unet": 1e-3}


@pytest.mark.parametrize("name", KEYS)
def test_each_learns_mni_white_matter(name: str) -> None:
    x, y = mni_task(32)
    torch.manual_seed(0)
    model = create_model(name, 3, 1, 2, **get_model_info(name).test_kwargs[3])
    assert_learns(model, x, y, steps=30, lr=LEARNING_RATES.get(name, 1e-2))
