"""Medical U-Net family, part B: LadderNet, FD-UNet, U-NetPlus, PBR-UNet, CE-Net, CSA-UNet, W-Net, ScleraSegNet and
the Recurrent U-Net — structure checks against the papers / official code, planned topologies, and each learns."""

from __future__ import annotations

import pytest
import torch
from testutils import assert_learns, coins_task, mni_task
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model, create_model_from_plans, get_model_info
from medseg.models.attention.csa_unet import ConnectionSensitiveGate
from medseg.models.attention.sclerasegnet import HighGuidedAttention
from medseg.models.blocks import CBAM, DenseBlock
from medseg.models.recurrent.recurrent_unet import GatedRecurrentUnit
from medseg.models.unet_variants.cenet import DenseAtrousBlock, ResidualMultiKernelPooling
from medseg.models.unet_variants.laddernet import LadderUNet, SharedResidualBlock

MODELS = ["laddernet", "fd_unet", "unetplus", "birnn_unet", "cenet", "csa_unet", "wnet", "sclerasegnet",
          "recurrent_unet"]


def _meta(name: str, dims: int = 2, cin: int = 3, cout: int = 2, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, dims, cin, cout, **kw)


def test_laddernet_shares_weights_and_chains_two_unets() -> None:
    model = _meta("laddernet", 2, 1, 2, features_per_stage=(10, 20, 40, 80, 160))
    assert len(model.unets) == 2 and model.unets[0].first and not model.unets[1].first
    blocks = [m for m in model.modules() if isinstance(m, SharedResidualBlock)]
    assert all(count_parameters(b) == 9 * c * c + c for b, c in ((b, b.conv.in_channels) for b in blocks))
    assert len(blocks) == 9 + 10  # 4 down + bottom + 4 up; the second U-Net adds its input block
    down = model.unets[0].down_convs[0]
    assert down.kernel_size == (3, 3) and down.stride == (2, 2)  # strided convolutions instead of pooling
    torch.manual_seed(0)
    small = create_model("laddernet", 2, 1, 2, features_per_stage=(4, 8, 16), dropout=0.0).eval()
    calls: list[int] = []
    block = small.unets[1].down_blocks[0]
    block.conv.register_forward_hook(lambda m, a, o: calls.append(1))
    rungs: list[torch.Tensor] = []
    small.unets[1].register_forward_pre_hook(lambda m, a: rungs.append(a[0]))
    with torch.no_grad():
        small(torch.randn(1, 1, 16, 16))
    assert len(calls) == 2  # one convolution applied twice per block
    assert [tuple(r.shape[1:]) for r in rungs[0]] == [(16, 4, 4), (8, 8, 8), (4, 16, 16)]  # every decoder level
    assert isinstance(small.unets[1], LadderUNet)


def test_fd_unet_dense_blocks_double_each_level() -> None:
    model = _meta("fd_unet", 2, 1, 1)
    assert [b.out_channels for b in model.encoder] == [64, 128, 256, 512, 1024]
    assert [len(b.layers) for b in model.encoder] == [4] * 5
    growth = [b.layers[0][1].conv.out_channels for b in model.encoder]
    assert growth == [8, 16, 32, 64, 128]  # k doubles per level, 4 layers add 4k
    first = model.encoder[2].layers[0]
    assert first[0].conv.kernel_size == (1, 1) and first[0].conv.out_channels == first[0].conv.in_channels == 128
    assert [r.conv.out_channels for r in model.reduce] == [256, 128, 64, 32]  # 1x1 to a quarter of the concat
    capped = _meta("fd_unet", 3, 1, 2, features_per_stage=(32, 64, 128, 256, 320, 320))
    assert [b.out_channels for b in capped.encoder] == [32, 64, 128, 256, 320, 320]


def test_unetplus_vgg11_bn_encoder_and_nearest_decoder() -> None:
    model = _meta("unetplus", 2, 3, 1)
    assert [len(b) for b in model.encoder.blocks] == [1, 1, 2, 2, 2]  # VGG-11 (configuration A)
    assert all(hasattr(layer, "norm") for b in model.encoder.blocks for layer in b)
    assert not [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    ups = [m for m in model.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 5 and all(u.mode == "nearest" and u.scale_factor == 2 for u in ups)
    concat = [block[1].conv.in_channels for block in model.decoder] + [model.final.conv.in_channels]
    assert concat == [768, 768, 512, 192, 96]  # Fig. 1's skip concatenations


def test_birnn_unet_passes_maps_both_ways_along_the_slices() -> None:
    torch.manual_seed(0)
    model = create_model("birnn_unet", 3, 1, 2, features_per_stage=(4, 8)).eval()
    assert model.segmenter.encoder[0][0].conv.in_channels == 1 + 2 * 2  # image + two neighbour maps
    x = torch.randn(1, 1, 3, 8, 8)
    with torch.no_grad():
        base = model(x)
        first = x.clone()
        first[:, :, 0] += 3.0
        last = x.clone()
        last[:, :, -1] += 3.0
        from_first, from_last = model(first), model(last)
    assert base.shape == (1, 2, 3, 8, 8)
    assert not torch.equal(from_first[:, :, -1], base[:, :, -1])  # forward recurrence reaches the last slice
    assert not torch.equal(from_last[:, :, 0], base[:, :, 0])  # backward recurrence reaches the first slice
    flat = create_model("birnn_unet", 2, 1, 2, features_per_stage=(4, 8)).eval()
    flat.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(flat(x[:, :, 2]), model(x[:, :, 2:3])[:, :, 0], atol=1e-5)  # 2D = one slice


def test_cenet_context_extractor() -> None:
    model = _meta("cenet", 2, 3, 1)
    assert [len(getattr(model.encoder, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]  # ResNet-34
    assert [c.dilation for c in model.dac.atrous] == [(1, 1), (3, 3), (5, 5)]
    assert model.rmp.kernels == (2, 3, 5, 6) and model.rmp.conv.out_channels == 1 and model.rmp.out_channels == 516
    assert [d[-1].conv.out_channels for d in model.decoder] == [256, 128, 64, 64]
    dac = DenseAtrousBlock(2, 4)
    assert len([m for m in dac.modules() if isinstance(m, nn.Conv2d)]) == 4  # convolutions reused by the branches
    rmp = ResidualMultiKernelPooling(2, 3).eval()
    x = torch.randn(1, 3, 14, 14)
    with torch.no_grad():
        out = rmp(x)
    assert out.shape == (1, 7, 14, 14) and torch.equal(out[:, 4:], x)
    with torch.no_grad():
        assert rmp(torch.randn(1, 3, 2, 2)).shape == (1, 7, 2, 2)  # kernels clipped to small maps


def test_csa_unet_gates_with_down_link_and_attention_at_the_output() -> None:
    model = _meta("csa_unet", 2, 3, 2)
    gates = [m for m in model.modules() if isinstance(m, ConnectionSensitiveGate)]
    assert len(gates) == 4
    assert [g.w_g.conv.in_channels for g in gates] == [2048, 1024, 512, 256]  # decoder feature + DOWN-Link
    assert model.head.in_channels == 64 + 4  # attention maps concatenated before the output
    small = create_model("csa_unet", 2, 1, 2, features_per_stage=(4, 8, 16)).eval()
    with torch.no_grad():
        small(torch.randn(1, 1, 16, 16))
    assert [tuple(a.shape) for a in small.attention_maps] == [(1, 1, 16, 16)] * 2


def test_sclerasegnet_attention_variants() -> None:
    cbam = _meta("sclerasegnet")
    assert isinstance(cbam.bottleneck_attention, CBAM) and cbam.skip_attention is None
    assert cbam.bottleneck_attention.channel.mlp[0].out_features == 1024 // 16
    assert cbam.bottleneck_attention.spatial.conv.conv.kernel_size == (7, 7)
    assert _meta("sclerasegnet", attention="channel").bottleneck_attention.spatial is None
    assert _meta("sclerasegnet", attention="spatial").bottleneck_attention.channel is None
    ssbc = _meta("sclerasegnet", attention="ssbc")
    assert ssbc.bottleneck_attention is None
    assert [(m.channel.in_channels, m.channel.out_channels) for m in ssbc.skip_attention] == [
        (1024, 512), (512, 256), (256, 128), (128, 64)]  # the high stage guides the low stage
    gate = HighGuidedAttention(2, 3, 5)
    assert gate(torch.ones(1, 3, 8, 8), torch.randn(1, 5, 4, 4)).shape == (1, 3, 8, 8)
    with pytest.raises(ModelError, match="attention"):
        create_model("sclerasegnet", 2, 1, 2, attention="nope")


def test_wnet_two_decoders_and_reinforcement_map() -> None:
    model = _meta("wnet", 2, 3, 1)
    assert sum(len(b) for b in model.encoder.blocks) == 13  # VGG-16 with batch norm
    widths = [[blk[1].conv.out_channels for blk in d.blocks] + [d.final.conv.out_channels]
              for d in (model.density, model.reinforcement)]
    assert widths == [[256, 128, 64, 32]] * 2
    assert model.density.blocks[0][0].conv.kernel_size == (1, 1) and model.density.blocks[0][0].conv.in_channels == 1024
    small = create_model("wnet", 2, 1, 2, **get_model_info("wnet").test_kwargs[2]).eval()
    with torch.no_grad():
        out = small(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 2, 32, 32)
    rb = small.reinforcement_map
    assert rb is not None and rb.shape == (1, 1, 16, 16) and bool(((rb > 0) & (rb < 1)).all())


def test_recurrent_unet_units_iterations_and_loss_weights() -> None:
    dru = _meta("recurrent_unet", 2, 3, 2)
    sru = _meta("recurrent_unet", 2, 3, 2, unit="sru")
    assert isinstance(dru.unit, GatedRecurrentUnit) and dru.unit.reset_gate is not None and sru.unit.reset_gate is None
    assert count_parameters(dru) - count_parameters(sru) == count_parameters(dru.unit.reset_gate)
    assert count_parameters(sru) == 708_914  # the official sru at the paper configuration
    assert dru.encoder[0][0].conv.in_channels == 3 + 2  # image + previous segmentation
    assert [b[0].conv.out_channels for b in dru.encoder] == [8, 16, 32, 64]
    assert dru.unit.out_gate[0].conv.out_channels == 128  # the hidden state
    model = create_model("recurrent_unet", 2, 1, 2, features_per_stage=(4, 8, 8), steps=3, deep_supervision=True)
    assert model.loss_weights == pytest.approx((1.0, 0.4, 0.16))
    outs = model.train()(torch.randn(1, 1, 16, 16))
    assert len(outs) == 3 and not torch.allclose(outs[0], outs[1])


PLAN_CASES = [(n, d) for n in MODELS for d in (2, 3)]


@pytest.mark.parametrize(("name", "dims"), PLAN_CASES, ids=[f"{n}-{d}d" for n, d in PLAN_CASES])
def test_builds_from_a_plans_entry(name: str, dims: int) -> None:
    strides = [[1, 1], [2, 2], [2, 2]] if dims == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    entry = {"name": "nnunet", "spatial_dims": dims, "in_channels": 2, "out_channels": 3, "kwargs": {
        "kernel_sizes": [[3] * dims] * 3, "strides": strides, "features_per_stage": [8, 16, 32],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "deep_supervision": True}}
    accepted = get_model_info(name).accepted_kwargs()
    if "features_per_stage" not in accepted:  # fixed-backbone designs build with their defaults
        with torch.device("meta"):
            model = create_model_from_plans(entry, name=name)
        assert model.in_channels == 2 and model.out_channels == 3
        return
    torch.manual_seed(0)
    model = create_model_from_plans(entry, name=name).eval()
    assert "strides" in accepted
    expected = (4, 4) if dims == 2 else ((1, 4, 4) if name == "birnn_unet" else (2, 4, 4))
    assert tuple(model.input_divisor) == expected
    x = torch.randn(1, 2, *((8, 8) if dims == 2 else (2, 8, 8)))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, *x.shape[2:])
    widths = [m.out_channels for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, DenseBlock))]
    assert max(widths) == 32  # the planned widths are used


LEARN_3D = ["laddernet", "fd_unet", "csa_unet", "recurrent_unet"]
LEARNING_RATE = {("laddernet", 2): 3e-3, ("laddernet", 3): 3e-3, ("unetplus", 2): 3e-3}  # others: 1e-2
LEARN = [(n, 2) for n in MODELS] + [(n, 3) for n in LEARN_3D]


@pytest.fixture
def one_thread():
    """These small networks gain nothing from intra-op threads; one thread keeps them fast on a busy 2-core CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "dims"), LEARN, ids=[f"{n}-{d}d" for n, d in LEARN])
def test_each_learns(name: str, dims: int, one_thread: None) -> None:
    x, y = coins_task(64) if dims == 2 else mni_task(32)
    torch.manual_seed(0)
    model = create_model(name, dims, 1, 2, **get_model_info(name).test_kwargs[dims])
    assert_learns(model, x, y, steps=20 if dims == 2 else 25, lr=LEARNING_RATE.get((name, dims), 1e-2))
