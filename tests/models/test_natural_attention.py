"""Attention group of the natural-image family: the layers against brute force, shapes and auxiliary outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import ModelError
from medseg.models import create_model, get_model_info, list_models
from medseg.models.natural.attention._modules import (
    ChannelAttention,
    CrissCrossAttention,
    PacConv2d,
    PositionAttention,
    criss_cross_mask,
    psa_mask,
)
from medseg.models.natural.attention.cpnet import affinity_loss, ideal_affinity_map
from medseg.models.natural.attention.danet import DANetHead

KEYS = ["linknet", "danet", "ccnet", "psanet", "denseaspp", "gscnn", "pac", "cpnet"]


def test_keys_registered_in_natural_family() -> None:
    assert set(KEYS) <= set(list_models("natural"))
    assert get_model_info("linknet").spatial_dims == (2, 3)
    assert get_model_info("danet").spatial_dims == (2, 3)
    assert get_model_info("ccnet").spatial_dims == (2, 3)
    for key in ("psanet", "denseaspp", "gscnn", "pac", "cpnet"):
        assert get_model_info(key).spatial_dims == (2,)
        with pytest.raises(ModelError, match="2D only"):
            create_model(key, 3, 1, 2)


@pytest.mark.parametrize("spatial", [(5, 7), (3, 4, 5)])
def test_criss_cross_equals_masked_full_attention(spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    dims = len(spatial)
    layer = CrissCrossAttention(dims, 16).double()
    x = torch.randn(2, 16, *spatial, dtype=torch.double)
    q, k, v = layer.query(x), layer.key(x), layer.value(x)
    ours = layer.attend(q, k, v)
    energy = torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2))
    energy = energy.masked_fill(~criss_cross_mask(spatial), float("-inf"))
    brute = torch.bmm(v.flatten(2), energy.softmax(-1).transpose(1, 2)).view_as(ours)
    torch.testing.assert_close(ours, brute)
    # Each query sees H + W - 1 (2D) or D + H + W - 2 (3D) positions.
    assert criss_cross_mask(spatial).sum(1).tolist() == [sum(spatial) - dims + 1] * x[0, 0].numel()


def test_danet_modules_shapes_and_identity_at_init() -> None:
    torch.manual_seed(0)
    for dims, spatial in ((2, (6, 5)), (3, (3, 4, 2))):
        x = torch.randn(2, 16, *spatial)
        pam, cam = PositionAttention(dims, 16), ChannelAttention()
        # gamma = beta = 0 at initialisation: both modules start as the identity.
        torch.testing.assert_close(pam(x), x)
        torch.testing.assert_close(cam(x), x)
        with torch.no_grad():
            pam.gamma.fill_(1.0)
            cam.beta.fill_(1.0)
        assert pam(x).shape == x.shape and cam(x).shape == x.shape
        outs = DANetHead(dims, 16, 3, 8)(x)
        assert [o.shape for o in outs] == [(2, 3, *spatial)] * 3


def test_channel_attention_matches_formula() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 3)
    cam = ChannelAttention()
    with torch.no_grad():
        cam.beta.fill_(1.0)
    a = x.flatten(2)[0]
    energy = a @ a.T
    att = torch.softmax(energy.max(-1, keepdim=True).values - energy, -1)
    torch.testing.assert_close(cam(x)[0], (att @ a).view(4, 3, 3) + x[0])


def test_pac_reduces_to_convolution_with_constant_guide() -> None:
    torch.manual_seed(0)
    pac = PacConv2d(3, 5, 3, dilation=2)
    x = torch.randn(2, 3, 9, 8)
    guide = torch.full((2, 4, 9, 8), 0.7)
    expected = F.conv2d(x, pac.weight, pac.bias, padding=2, dilation=2)
    torch.testing.assert_close(pac(x, guide), expected)
    # A varying guide changes the result, and the kernel weighs a neighbour by exp(-½||f_i - f_j||²).
    guide = torch.randn(2, 4, 9, 8)
    assert not torch.allclose(pac(x, guide), expected)
    pac1 = PacConv2d(1, 1, 3, bias=False)
    with torch.no_grad():
        pac1.weight.zero_()
        pac1.weight[0, 0, 1, 2] = 1.0  # the right neighbour only
    x1, g1 = torch.randn(1, 1, 4, 4), torch.randn(1, 4, 4, 4)
    out = pac1(x1, g1)
    w = torch.exp(-0.5 * (g1[0, :, 1, 1] - g1[0, :, 1, 2]).square().sum())
    torch.testing.assert_close(out[0, 0, 1, 1], w * x1[0, 0, 1, 2])


def test_psa_mask_matches_loop() -> None:
    torch.manual_seed(0)
    h, w, hm, wm = 3, 4, 5, 7
    over = torch.randn(2, hm * wm, h, w)
    collect, distribute = psa_mask(over, "collect", (hm, wm)), psa_mask(over, "distribute", (hm, wm))
    for i in range(h * w):
        hi, wi = divmod(i, w)
        for j in range(h * w):
            hj, wj = divmod(j, w)
            dh, dw = hj - hi + hm // 2, wj - wi + wm // 2
            value = over[:, dh * wm + dw, hi, wi] if 0 <= dh < hm and 0 <= dw < wm else torch.zeros(2)
            torch.testing.assert_close(collect[:, j, i], value)
            torch.testing.assert_close(distribute[:, i, j], value)
    with pytest.raises(ModelError):
        psa_mask(over, "collect", (3, 3))


def test_cpnet_prior_map_and_affinity_target() -> None:
    torch.manual_seed(0)
    info = get_model_info("cpnet")
    model = create_model("cpnet", 2, 2, 3, **{**info.test_kwargs[2], "return_prior": True,
                                               "deep_supervision": True}).train()
    x = torch.randn(2, 2, 64, 64)
    (main, aux), prior = model(x)
    assert main.shape == aux.shape == (2, 3, 64, 64)
    assert prior.shape == (2, 64, 64) and bool(((prior > 0) & (prior < 1)).all())
    labels = torch.randint(0, 3, (2, 64, 64))
    labels[0, :8, :8] = 255
    ideal = ideal_affinity_map(labels, 3, (8, 8))
    assert ideal.shape == (2, 64, 64)
    assert torch.equal(ideal, ideal.transpose(1, 2)) and bool((ideal.diagonal(dim1=1, dim2=2) == 1).all())
    small = F.interpolate(labels[:, None].float(), size=[8, 8], mode="nearest").long().flatten(1)
    assert ideal[1, 5, 9].item() == float(small[1, 5] == small[1, 9])
    loss = affinity_loss(prior, ideal)
    loss.backward()
    assert torch.isfinite(loss) and model.head.prior_conv.conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 64, 64)


def test_gscnn_returns_boundary() -> None:
    torch.manual_seed(0)
    model = create_model("gscnn", 2, 2, 3, **get_model_info("gscnn").test_kwargs[2], return_edges=True).eval()
    with torch.no_grad():
        logits, boundary = model(torch.randn(1, 2, 64, 64))
    assert logits.shape == (1, 3, 64, 64) and boundary.shape == (1, 1, 64, 64)
    assert bool(((boundary >= 0) & (boundary <= 1)).all())


def test_attention_models_accept_any_input_size() -> None:
    torch.manual_seed(0)
    for key, dims, size in (("ccnet", 3, (20, 24, 28)), ("psanet", 2, (65, 47))):
        model = create_model(key, dims, 2, 3, **get_model_info(key).test_kwargs[dims]).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 2, *size)).shape == (1, 3, *size)


def test_linknet_decoder_levels_and_divisor() -> None:
    model = create_model("linknet", 2, 3, 12)
    assert model.input_divisor == (32, 32)
    # Decoder blocks 4..1: 512->256, 256->128, 128->64, 64->64; the m/4 bottleneck inside.
    assert [(d.reduce.conv.in_channels, d.expand.conv.out_channels) for d in model.decoders] == [
        (512, 256), (256, 128), (128, 64), (64, 64)]
    assert [d.reduce.conv.out_channels for d in model.decoders] == [128, 64, 32, 16]


def test_paper_configurations_layer_sizes() -> None:
    with torch.device("meta"):
        dense = create_model("denseaspp", 2, 3, 19)
        psa = create_model("psanet", 2, 3, 150, mask_size=59, deep_supervision=True)
        cp = create_model("cpnet", 2, 3, 150, prior_size=64)
        cc = create_model("ccnet", 2, 3, 19)
    # DenseASPP-161: 2208 -> 1104 transition, five layers of 512 -> 128, classifier on 1104 + 5 * 128 channels.
    assert dense.transition.conv.out_channels == 1104
    assert [layer.conv1.in_channels for layer in dense.aspp] == [1104, 1232, 1360, 1488, 1616]
    assert [layer.conv2.conv.dilation for layer in dense.aspp] == [(r, r) for r in (3, 6, 12, 18, 24)]
    assert dense.classifier[1].in_channels == 1744
    # PSANet: 2048 -> 512 branches, 59 x 59 over-completed maps, 4096-channel input of the classifier.
    assert psa.psa.attention_collect[1].out_channels == 59 * 59
    assert psa.classifier.conv.conv.in_channels == 4096
    # CPNet: prior map of 64 x 64 = 4096 channels; fusion of 2048 + 2 x 512.
    assert cp.head.prior_conv.conv.out_channels == 4096 and cp.head.bottleneck.conv.in_channels == 3072
    # CCNet: attention on 512 channels with 64-channel queries/keys, recurrence 2.
    assert cc.head.cca.query.out_channels == 64 and cc.head.recurrence == 2


def test_denseaspp_count_equals_the_authors_code() -> None:
    # DeepMotionAIResearch/DenseASPP models/DenseASPP.py with cfgs/DenseASPP161.py: torchvision's DenseNet-161 features
    # with norm5 moved behind a fourth transition (its BN on 2208 channels takes norm5's place, then a 1x1 2208 -> 1104
    # and norm5 on 1104), five _DenseAsppBlocks ([BN], 1x1 to 512 with bias, BN, 3x3 to 128 with bias) and a 1x1
    # classifier with bias.
    features = 28_681_000 - (2208 * 1000 + 1000)  # torchvision densenet161 without its classifier
    reference = features + 2208 * 1104 + 2 * 1104 + 1744 * 19 + 19
    for i in range(5):
        c_in = 1104 + 128 * i
        reference += (2 * c_in if i else 0) + c_in * 512 + 512 + 2 * 512 + 512 * 128 * 9 + 128
    with torch.device("meta"):
        model = create_model("denseaspp", 2, 3, 19)
    assert sum(p.numel() for p in model.parameters()) == reference == 35_395_427
