"""Medical U-Net zoo, group C: MFP-Unet, ResUNet-a, improved U-Net, LWBNA-UNet, framing U-Net, DRINet, AHCNet and the
focal-Tversky attention U-Net: structure against the papers / official code, learning on real images, and building
from a plans entry."""

from __future__ import annotations

import pytest
import torch
from testutils import assert_learns, coins_task, mni_task
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model, create_model_from_plans, get_model_info

MODELS = ["mfp_unet", "resunet_a", "improved_unet", "lwbna_unet", "framelet_unet", "drinet", "ahcnet", "focal_tversky"]


def _meta(name: str, dims: int = 2, cin: int = 1, cout: int = 2, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, dims, cin, cout, **kwargs)


def _conv_params(k: int, cin: int, cout: int, dims: int = 2, bias: bool = True) -> int:
    return k**dims * cin * cout + (cout if bias else 0)


# --- focal Tversky attention U-Net (official Keras attn_reg) --------------------------------------------------------

def test_focal_tversky_layout_matches_official_code() -> None:
    model = _meta("focal_tversky", 2, 3, 1, deep_supervision=True)
    assert [b[0].conv.out_channels for b in model.encoder] == [32, 64, 128, 64, 512]
    assert [p.conv.out_channels for p in model.pyramid] == [64, 128, 256]
    assert [p.kernel_size for p in model.input_pools] == [(2, 2)] * 3 and all(
        isinstance(p, nn.AvgPool2d) for p in model.input_pools)
    assert [g.psi.in_channels for g in model.gates] == [128, 64, 32]  # intermediate widths
    assert [g.theta.kernel_size for g in model.gates] == [(2, 2)] * 3
    assert [u.out_channels for u in model.ups] == [32, 64, 32, 32]
    assert [h[0].conv.out_channels for h in model.heads] == [256, 128, 64, 32]
    assert model.deep_supervision_scales == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert model.loss_weights == (1.0, 1.0, 1.0, 1.0)
    # The only deviation from attn_reg: the third gate is gated by the second decoder step (64 + 128 channels)
    # instead of the first (32 + 64): its 1x1 gating conv + BN and its W_g 1x1 conv grow accordingly.
    up1, up2 = 32 + 64, 64 + 128
    delta = (_conv_params(1, up2, up2) + 2 * up2 + _conv_params(1, up2, 32)) - (
        _conv_params(1, up1, up1) + 2 * up1 + _conv_params(1, up1, 32))
    assert count_parameters(model) == get_model_info("focal_tversky").paper.params + delta


def test_focal_tversky_side_branches_only_with_deep_supervision() -> None:
    torch.manual_seed(0)
    plain = create_model("focal_tversky", 2, 1, 2, features_per_stage=(4, 8, 8, 16, 16))
    assert len(plain.heads) == 1
    model = create_model("focal_tversky", 2, 1, 2, features_per_stage=(4, 8, 8, 16, 16), deep_supervision=True)
    outs = model.train()(torch.randn(1, 1, 32, 32))
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4]
    assert [tuple(a.shape[2:]) for a in model.attention_maps] == [(4, 4), (8, 8), (16, 16)]
    assert all(((a >= 0) & (a <= 1)).all() for a in model.attention_maps)


# --- ResUNet-a (official MXNet d6 / d7) -----------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "params"), [("d6", 58_037_781), ("d7", 184_537_873)])
def test_resunet_a_matches_official_code(variant: str, params: int) -> None:
    model = _meta("resunet_a", 2, 5, 6, variant=variant, multitask=True)
    expected = {
        "d6": ([(1, 3, 15, 31)] * 2 + [(1, 3, 15), (1, 3, 5), (1,), (1,)],
               [(1, 3, 5), (1, 3, 15)] + [(1, 3, 15, 31)] * 3, 4),
        "d7": ([(1, 3, 15, 31)] * 2 + [(1, 3, 15), (1, 3, 5), (1,), (1,), (1,)],
               [(1,), (1, 3, 15)] + [(1, 3, 15, 31)] * 4, 3),
    }[variant]
    assert [u.dilations for u in model.encoder] == expected[0]
    assert [u.dilations for u in model.decoder] == expected[1]
    assert model.bridge.depth == expected[2] and model.head_psp.depth == 4
    assert model.widths == tuple(32 * 2**i for i in range(len(expected[0])))
    assert all(d.stride == (2, 2) and d.bias is None and d.out_channels == 2 * d.in_channels for d in model.downs)
    assert model.input_divisor == (256, 256)
    assert count_parameters(model) == params  # counted from the gluon layer definitions


def test_resunet_a_multitask_outputs_and_psp_pooling() -> None:
    torch.manual_seed(0)
    kw = get_model_info("resunet_a").test_kwargs[2]
    model = create_model("resunet_a", 2, 2, 4, multitask=True, **kw).train()
    seg, bound, dist, colour = model(torch.randn(2, 2, 32, 32))
    assert seg.shape == bound.shape == dist.shape == (2, 4, 32, 32) and colour.shape == (2, 3, 32, 32)
    assert isinstance(model.eval()(torch.randn(1, 2, 32, 32)), torch.Tensor)
    assert create_model("resunet_a", 2, 2, 4, **kw).colour_head is None
    # PSP pooling: branch d broadcasts the maximum of each of the 2**d x 2**d equal parts.
    from medseg.models.residual.resunet_a import PSPPooling

    psp = PSPPooling(2, 1, 4, depth=2, norm=None)
    seen = []
    psp.convs[1].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 3, 2] = 5.0, 7.0
    psp(x)
    assert torch.equal(seen[0][0, 0], torch.tensor([[5.0, 5, 0, 0], [5, 5, 0, 0], [0, 0, 7, 7], [0, 0, 7, 7]]))
    with pytest.raises(ModelError, match="divisible by 256"):
        _meta("resunet_a").eval()(torch.empty(1, 1, 128, 128, device="meta"))


# --- framing U-Net ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [(2, 2), (2, 2, 2), (1, 2, 2)])
def test_haar_wavelet_is_a_tight_frame(stride: tuple[int, ...]) -> None:
    from medseg.models.unet_variants.framelet_unet import HaarWavelet

    wavelet = HaarWavelet(stride)
    x = torch.randn(2, 3, *([8] * len(stride)), dtype=torch.float64)
    bands = wavelet.analyze(x)
    assert len(bands) == 2 ** stride.count(2)
    recon = sum(wavelet.synthesize(b, j) for j, b in enumerate(bands))
    torch.testing.assert_close(recon, x)  # perfect reconstruction
    torch.testing.assert_close(sum((b**2).sum() for b in bands), (x**2).sum())  # energy preserved
    torch.testing.assert_close(bands[0].mean(), x.mean() * 2 ** (stride.count(2) / 2))  # low pass band


def test_framelet_unet_layout() -> None:
    model = _meta("framelet_unet", 2, 1, 1)
    assert [b[0].conv.out_channels for b in model.encoder] == [64, 128, 256, 512]
    assert model.bottom[0][0].conv.out_channels == 1024 and model.bottom[1][0].conv.out_channels == 512
    # unpooling: LL of the level below + 3 high-pass bands + the skip, each C channels
    assert [d[0][0].conv.in_channels for d in model.decoder] == [5 * 512, 5 * 256, 5 * 128, 5 * 64]
    assert [d[1][0].conv.out_channels for d in model.decoder] == [256, 128, 64, 64]
    model3d = _meta("framelet_unet", 3, 1, 1, features_per_stage=(8, 16, 32))
    assert [d[0][0].conv.in_channels for d in model3d.decoder] == [9 * 16, 9 * 8]
    anisotropic = _meta("framelet_unet", 3, 1, 1, features_per_stage=(8, 16, 32), strides=[1, (1, 2, 2), 2])
    assert [d[0][0].conv.in_channels for d in anisotropic.decoder] == [9 * 16, 5 * 8]
    assert anisotropic.input_divisor == (2, 4, 4)
    with pytest.raises(ModelError, match="strides must be in"):
        _meta("framelet_unet", 2, features_per_stage=(8, 16, 32), strides=[1, 2, 3])


# --- DRINet (official TensorFlow DRINet.py) --------------------------------------------------------------------------

@pytest.mark.parametrize(("growth", "params"), [((16, 16, 16, 16), 1_378_311), ((12, 12, 12, 12), 854_412)])
def test_drinet_matches_official_code(growth: tuple[int, ...], params: int) -> None:
    model = _meta("drinet", 2, 1, 4, growth_rates=growth)
    widths = [32 + 3 * sum(growth[: i + 1]) for i in range(4)]
    assert [b.out_channels for b in model.encoder] == widths
    assert all(len(b.dense.layers) == 3 for b in model.encoder)
    assert [sum(isinstance(m, type(model.decoder[0][0])) for m in s) for s in model.decoder] == [3, 3, 3, 3]
    c = widths[-1]
    assert [s[-1].out_channels for s in model.decoder[:3]] == [c // 2, c // 4, c // 8]
    assert model.head.in_channels == c // 8
    assert count_parameters(model) == params  # counted from the layer definitions of the authors' code


def test_drinet_blocks() -> None:
    from medseg.models.dense.drinet import ResidualInceptionBlock, UnpoolingBlock

    torch.manual_seed(0)
    block = ResidualInceptionBlock(2, 16)
    assert [block.branch1.conv.out_channels, block.branch2[1].conv.out_channels,
            block.branch3[1].conv.out_channels] == [4, 8, 4]
    assert block.branch3[1].conv.dilation == (2, 2)
    nn.init.zeros_(block.fuse.norm.weight)  # the residual branch silenced: the block is the identity
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(block.eval()(x), x)
    assert UnpoolingBlock(3, 16)(torch.randn(1, 16, 4, 4, 4)).shape == (1, 8, 8, 8, 8)


# --- MFP-Unet, LWBNA-UNet, AHCNet, improved U-Net -------------------------------------------------------------------

def test_mfp_unet_pyramid() -> None:
    model = _meta("mfp_unet", 2, 1, 1)
    assert [p.conv.out_channels for p in model.pyramid] == [32] * 5
    assert [p.conv.in_channels for p in model.pyramid] == [512, 256, 128, 64, 32]  # bridge, then decoder levels
    assert model.head.in_channels == 5 * 32 and model.head.kernel_size == (1, 1)
    assert [b[0].conv.dilation for b in model.encoder] == [(3, 3)] * 4 + [(1, 1)]
    assert count_parameters(model) == 8_138_273  # the public Keras reproduction's layers


def test_lwbna_unet_constant_width_and_narrowing_bottleneck() -> None:
    model = _meta("lwbna_unet", 2, 3, 1, filters=128, depth=4, midblock_steps=4)
    assert {m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {
        128, 64, 32, 16}
    assert [c.conv.out_channels for c in model.bottleneck.convs] == [128, 64, 32, 16]
    assert model.bottleneck.final.conv.out_channels == 128
    assert all(level.conv1.conv.in_channels == 128 for level in model.decoder)  # additive skips
    assert len(model.encoder) == len(model.decoder) == 4 and model.input_divisor == (16, 16)
    assert count_parameters(model) == 2_951_617  # the layers of the implementation the seeds link
    torch.manual_seed(0)
    from medseg.models.attention.lwbna_unet import ChannelAttentionBlock

    att = ChannelAttentionBlock(2, 4)
    y = att(torch.ones(1, 4, 3, 3))
    assert torch.all((y >= 0.5) & (y <= 1.0))  # sigmoid(relu(.)) >= 0.5: the block only rescales within [0.5, 1]


def test_ahcnet_and_improved_unet_blocks() -> None:
    model = _meta("ahcnet", 3, 1, 2)
    blocks = list(model.encoder) + list(model.decoder)
    assert all(b.attention.fc[0].out_features == b.attention.fc[0].in_features // 2 for b in blocks)
    assert isinstance(model.encoder[1].shortcut, nn.Sequential)  # projection where the width changes
    assert [b.conv1.conv.in_channels for b in model.decoder] == [512, 256, 128, 64]  # concatenated long skips
    unet = _meta("improved_unet", 2, 3, 2)
    assert [b[0].conv.out_channels for b in unet.encoder] == [32, 64, 128, 256, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in unet.modules()) == 2 * (5 + 4)


# --- each learns on a real image -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_each_learns_coins_2d(name: str) -> None:
    x, y = coins_task(64)
    torch.manual_seed(0)
    model = create_model(name, 2, 1, 2, **get_model_info(name).test_kwargs[2])
    assert_learns(model, x, y, steps=30, lr=1e-2)


@pytest.mark.parametrize(("name", "steps"), [("improved_unet", 30), ("drinet", 25), ("ahcnet", 30), ("resunet_a", 20)])
def test_learns_mni_white_matter_3d(name: str, steps: int) -> None:  # one 3D model per family
    x, y = mni_task(32)
    torch.manual_seed(0)
    model = create_model(name, 3, 1, 2, **get_model_info(name).test_kwargs[3])
    assert_learns(model, x, y, steps=steps, lr=1e-2)


# --- built from a plans entry (medseg train --set model=KEY) ---------------------------------------------------------

PLANNED = {"mfp_unet", "improved_unet", "lwbna_unet", "framelet_unet", "ahcnet", "focal_tversky"}


@pytest.mark.parametrize("name", MODELS)
def test_builds_from_plans_entry(name: str) -> None:
    entry = {
        "name": "nnunet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
        "kwargs": {"kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                   "features_per_stage": [8, 16, 32], "n_conv_per_stage": [2, 2, 2],
                   "n_conv_per_stage_decoder": [2, 2], "deep_supervision": True},
    }
    if name in PLANNED:
        torch.manual_seed(0)
        model = create_model_from_plans(entry, name=name)
        assert model.input_divisor == (2, 4, 4)  # the planned strides, anisotropic
        if name != "lwbna_unet":  # a constant-width design: the planned widths do not apply
            assert model.topology.features == (8, 16, 32)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(1, 1, 4, 8, 8))
        assert out.shape == (1, 3, 4, 8, 8)
    else:  # designs with their own fixed topology build at their defaults with the planned channels
        with torch.device("meta"):
            model = create_model_from_plans(entry, name=name)
        assert model.in_channels == 1 and model.out_channels == 3 and model.spatial_dims == 3
