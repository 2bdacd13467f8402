"""Transformer segmenters (TransUNet, SETR, HRFormer): configurations against the papers / official code, attention
on scaled_dot_product_attention against brute force, pretrained loading from official layouts, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from testutils import assert_learns, coins_task, mni_task

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model, get_model_info, list_models
from medseg.models.transformer import _modules as tmodules
from medseg.models.transformer import hrformer as hrformer_module
from medseg.models.transformer._modules import MultiHeadSelfAttention
from medseg.models.transformer.hrformer import LocalWindowAttention
from medseg.models.transformer.transunet import StdConv

KEYS = ["transunet", "setr", "hrformer"]


def _meta(name: str, dims: int = 2, cin: int = 3, cout: int = 9, **kwargs):
    with torch.device("meta"):
        return create_model(name, dims, cin, cout, **kwargs)


def _small(name: str, dims: int = 2, cin: int = 1, cout: int = 2, **extra):
    torch.manual_seed(0)
    return create_model(name, dims, cin, cout, **{**get_model_info(name).test_kwargs[dims], **extra})


def test_registered_in_transformer_family() -> None:
    assert set(KEYS) <= set(list_models("transformer"))
    assert all(get_model_info(k).paper.spatial_dims == 2 and 2 in get_model_info(k).spatial_dims for k in KEYS)


def test_transunet_r50_vit_b16_configuration() -> None:
    model = _meta("transunet")
    assert len(model.blocks) == 12 and model.position_embeddings.shape == (1, 14 * 14, 768)  # ViT-B, 224/16
    assert model.blocks[0].attn.num_heads == 12 and model.blocks[0].mlp.fc1.out_features == 3072
    assert [len(stage) for stage in model.resnet.stages] == [3, 4, 9]  # ResNet-50's first three stages
    assert model.patch_embeddings.kernel_size == (1, 1)  # a 1x1 "patch" on the stride-16 map = 16x16 pixels
    assert model.resnet.skip_channels == [512, 256, 64]
    assert [b.conv2[0].out_channels for b in model.decoder] == [256, 128, 64, 16]
    assert [b.conv1[0].in_channels for b in model.decoder] == [512 + 512, 256 + 256, 128 + 64, 64]
    gns = [m for m in model.resnet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {m.num_groups for m in gns if m.num_groups != m.num_channels} == {32}
    assert sum(isinstance(m, StdConv) for m in model.resnet.modules()) == 1 + 3 * (3 + 4 + 9) + 3


def test_weight_standardised_convolution() -> None:
    torch.manual_seed(0)
    conv = StdConv(2, 3, 4, 3, padding=1)
    with torch.no_grad():
        conv.conv.weight.normal_()  # unit-variance filters: the standardisation's eps (1e-5) is negligible
    x = torch.randn(1, 3, 8, 8)
    y = conv(x)
    with torch.no_grad():  # a filter's scale and offset do not matter, it is standardised
        conv.conv.weight.mul_(7.0).add_(3.0)
    torch.testing.assert_close(conv(x), y, atol=1e-4, rtol=1e-4)
    w = conv.conv.weight
    ws = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(y, F.conv2d(x, ws, padding=1), atol=1e-4, rtol=1e-4)


def test_setr_vit_large_and_decoders() -> None:
    model = _meta("setr", cout=150)
    assert len(model.blocks) == 24 and model.blocks[0].norm1.normalized_shape == (1024,)
    assert model.blocks[0].attn.num_heads == 16 and model.blocks[0].mlp.fc1.out_features == 4096
    assert model.patch_embed.proj.kernel_size == (16, 16) and model.patch_embed.proj.stride == (16, 16)
    assert model.pos_embed.shape == (1, 32 * 32 + 1, 1024)  # 512 / 16 = 32 per side, plus the class token
    assert model.mla_indices == (5, 11, 17, 23) and model.aux_indices == (9, 14, 19, 23)
    with pytest.raises(ModelError, match="decoder"):
        create_model("setr", 2, 3, 2, decoder="fpn")
    x = torch.randn(2, 1, 64, 64)
    for decoder, n_convs in (("naive", 1), ("pup", 4), ("mla", 8)):
        m = _small("setr", decoder=decoder, deep_supervision=True).train()
        outs = m(x)
        assert len(outs) == 5 and all(o.shape == (2, 2, 64, 64) for o in outs)
        assert m.loss_weights == (1.0, 0.4, 0.4, 0.4, 0.4)
        head_convs = [c for c in m.decode_head.modules() if isinstance(c, torch.nn.Conv2d)]
        assert len(head_convs) == n_convs + 1  # the decoder's convolutions and the class convolution
        assert hasattr(m, "cls_token") == (decoder != "mla")  # the MLA backbone drops the class token (the code)
    pup = _small("setr", decoder="pup").eval()
    assert [c.conv.kernel_size for c in pup.decode_head.convs] == [(3, 3)] * 4  # PUP: four 3x3 conv + 2x up-sampling


def test_hrformer_variants_and_window_attention() -> None:
    small, base = _meta("hrformer", cout=19, variant="s"), _meta("hrformer", cout=19, variant="b")
    assert small.backbone.out_channels == [32, 64, 128, 256] and base.backbone.out_channels == [78, 156, 312, 624]
    heads = [[blk.attn.num_heads for branch in m.backbone.stage4[0].branches for blk in branch] for m in (small, base)]
    assert heads == [[1, 1, 2, 2, 4, 4, 8, 8], [2, 2, 4, 4, 8, 8, 16, 16]]
    assert [len(getattr(small.backbone, f"stage{s}")) for s in (2, 3, 4)] == [1, 4, 2]
    windows = {m.window for m in small.modules() if isinstance(m, LocalWindowAttention)}
    assert windows == {7}
    # HRFormer-B + OCR against the official HRT_BASE_OCR_V2 (56,032,512; ours lacks the 2,304 OCR biases).
    assert math.isclose(count_parameters(base), 56_032_512, rel_tol=0.02)
    assert count_parameters(base.backbone) == 44_040_666  # the official hrt_base backbone, layer by layer
    m = _small("hrformer", deep_supervision=True).train()
    outs = m(torch.randn(2, 1, 64, 64))
    assert [o.shape for o in outs] == [(2, 2, 64, 64)] * 2 and m.loss_weights == (1.0, 0.4)


def test_attention_equals_brute_force() -> None:
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(16, 4).double().eval()
    x = torch.randn(2, 10, 16, dtype=torch.double)
    q, k, v = layer.qkv(x).reshape(2, 10, 3, 4, 4).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1)
    expected = layer.proj((attn @ v).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(("dims", "spatial", "window"), [(2, (5, 9), 3), (3, (3, 4, 2), 2)])
def test_window_attention_equals_padded_windows_brute_force(dims: int, spatial: tuple[int, ...], window: int) -> None:
    torch.manual_seed(0)
    layer = LocalWindowAttention(dims, 8, 2, window).double().eval()
    with torch.no_grad():
        layer.attn.relative_position_bias_table.normal_()
    n = int(np.prod(spatial))
    x = torch.randn(1, n, 8, dtype=torch.double)
    out = layer(x, spatial)
    grid = x.view(*spatial, 8)
    padded_shape = [math.ceil(s / window) * window for s in spatial]
    padded = torch.zeros(*padded_shape, 8, dtype=torch.double)
    starts = [(p - s) // 2 for p, s in zip(padded_shape, spatial, strict=True)]
    padded[tuple(slice(a, a + s) for a, s in zip(starts, spatial, strict=True))] = grid
    result = torch.zeros_like(padded)
    a = layer.attn
    for corner in np.ndindex(*[p // window for p in padded_shape]):
        sl = tuple(slice(c * window, (c + 1) * window) for c in corner)
        tokens = padded[sl].reshape(-1, 8)  # row-major inside the window
        pos = np.array(list(np.ndindex(*[window] * dims)))
        q, k, v = (proj(tokens).view(-1, 2, 4).transpose(0, 1) for proj in (a.q_proj, a.k_proj, a.v_proj))
        logits = q @ k.transpose(-1, -2) / 2.0
        for i, pi in enumerate(pos):
            for j, pj in enumerate(pos):
                rel = pi - pj + window - 1
                idx = int(np.ravel_multi_index(rel, [2 * window - 1] * dims))
                logits[:, i, j] += a.relative_position_bias_table[idx]
        y = (torch.softmax(logits, -1) @ v).transpose(0, 1).reshape(-1, 8)
        result[sl] = a.out_proj(y).view(*[window] * dims, 8)
    expected = result[tuple(slice(b, b + s) for b, s in zip(starts, spatial, strict=True))].reshape(1, n, 8)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", KEYS)
def test_attention_runs_on_sdpa(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append(q.shape)
        return real(q, k, v, **kwargs)

    assert tmodules.F is F and hrformer_module.F is F  # both call torch.nn.functional's SDPA
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = _small(name).eval()
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64))
    blocks = [m for m in model.modules() if isinstance(m, (MultiHeadSelfAttention, LocalWindowAttention))]
    assert blocks and len(calls) == len(blocks)


def test_transunet_loads_official_npz(tmp_path) -> None:
    dim, heads, mlp = 32, 2, 64
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    w = {"embedding/kernel": arr(1, 1, 4 * 8 * 4, dim), "embedding/bias": arr(dim),
         "Transformer/posembed_input/pos_embedding": arr(1, 1 + 6 * 6, dim),  # class token + a 6x6 grid
         "Transformer/encoder_norm/scale": arr(dim), "Transformer/encoder_norm/bias": arr(dim),
         "conv_root/kernel": arr(7, 7, 3, 8), "gn_root/scale": arr(8), "gn_root/bias": arr(8),
         "head/kernel": arr(dim, 10)}
    for i in range(2):
        root = f"Transformer/encoderblock_{i}"
        for n in ("query", "key", "value"):
            w[f"{root}/MultiHeadDotProductAttention_1/{n}/kernel"] = arr(dim, heads, dim // heads)
            w[f"{root}/MultiHeadDotProductAttention_1/{n}/bias"] = arr(heads, dim // heads)
        w[f"{root}/MultiHeadDotProductAttention_1/out/kernel"] = arr(heads, dim // heads, dim)
        w[f"{root}/MultiHeadDotProductAttention_1/out/bias"] = arr(dim)
        w[f"{root}/MlpBlock_3/Dense_0/kernel"], w[f"{root}/MlpBlock_3/Dense_0/bias"] = arr(dim, mlp), arr(mlp)
        w[f"{root}/MlpBlock_3/Dense_1/kernel"], w[f"{root}/MlpBlock_3/Dense_1/bias"] = arr(mlp, dim), arr(dim)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            w[f"{root}/{ln}/scale"], w[f"{root}/{ln}/bias"] = arr(dim), arr(dim)
    w["block1/unit1/conv1/kernel"] = arr(1, 1, 8, 8)
    w["block1/unit1/conv_proj/kernel"] = arr(1, 1, 8, 32)
    path = tmp_path / "R50+ViT-B_16.npz"
    np.savez(path, **w)
    loaded = create_model("transunet", 2, 1, 2, **get_model_info("transunet").test_kwargs[2], pretrained=str(path))
    t = torch.from_numpy
    torch.testing.assert_close(loaded.patch_embeddings.weight, t(w["embedding/kernel"]).permute(3, 2, 0, 1))
    q = t(w["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"]).reshape(dim, dim).t()
    v = t(w["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/value/kernel"]).reshape(dim, dim).t()
    torch.testing.assert_close(loaded.blocks[1].attn.qkv.weight[:dim], q)
    torch.testing.assert_close(loaded.blocks[1].attn.qkv.weight[2 * dim:], v)
    out = t(w["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"]).reshape(dim, dim).t()
    torch.testing.assert_close(loaded.blocks[0].attn.proj.weight, out)
    torch.testing.assert_close(loaded.blocks[0].mlp.fc2.weight, t(w["Transformer/encoderblock_0/MlpBlock_3/"
                                                                     "Dense_1/kernel"]).t())
    # Grey input: the RGB root filters summed; the 6x6 grid (class token dropped) resampled to 4x4.
    torch.testing.assert_close(loaded.resnet.root_conv.conv.weight,
                               t(w["conv_root/kernel"]).permute(3, 2, 0, 1).sum(1, keepdim=True))
    grid = t(w["Transformer/posembed_input/pos_embedding"])[:, 1:].transpose(1, 2).reshape(1, dim, 6, 6)
    expected = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(loaded.position_embeddings.data, expected)
    torch.testing.assert_close(loaded.resnet.stages[0][0].downsample.conv.weight,
                               t(w["block1/unit1/conv_proj/kernel"]).permute(3, 2, 0, 1))
    w["embedding/kernel"] = arr(1, 1, 5, dim)
    np.savez(path, **w)
    with pytest.raises(ModelError, match="do not fit"):
        create_model("transunet", 2, 1, 2, **get_model_info("transunet").test_kwargs[2], pretrained=str(path))


def test_setr_loads_timm_vit_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    dim = 64
    reference = _small("setr", cin=3)
    state = {k: torch.randn_like(v) for k, v in reference.state_dict().items() if k.startswith("blocks.")}
    state["patch_embed.proj.weight"] = torch.randn(dim, 3, 16, 16)
    state["patch_embed.proj.bias"] = torch.randn(dim)
    state["cls_token"] = torch.randn(1, 1, dim)
    state["pos_embed"] = torch.randn(1, 1 + 2 * 2, dim)  # a 32x32 checkpoint: 2x2 patches + class token
    state["norm.weight"], state["head.weight"] = torch.randn(dim), torch.randn(10, dim)  # ignored
    path = tmp_path / "vit.pth"
    torch.save({"model": state}, path)
    model = create_model("setr", 2, 3, 2, **get_model_info("setr").test_kwargs[2], pretrained=str(path))
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(model.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    assert model.pos_embed.shape == (1, 1 + 4 * 4, dim)
    torch.testing.assert_close(model.pos_embed[:, 0], state["pos_embed"][:, 0])
    grid = state["pos_embed"][:, 1:].transpose(1, 2).reshape(1, dim, 2, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.pos_embed[:, 1:], expected)
    with pytest.raises(ModelError, match="2D"):
        create_model("setr", 3, 3, 2, **get_model_info("setr").test_kwargs[3], pretrained=str(path))


def test_hrformer_loads_official_checkpoint(tmp_path) -> None:
    source = _small("hrformer", cin=3)
    official = {}
    for key, value in source.backbone.state_dict().items():
        if key.startswith("layer1."):  # medseg's bottleneck names -> the official ones
            key = (key.replace("conv1.conv.", "conv1.").replace("conv1.norm.", "bn1.")
                   .replace("conv2.conv.", "conv2.").replace("conv2.norm.", "bn2.")
                   .replace("conv3.conv.", "conv3.").replace("conv3.norm.", "bn3.")
                   .replace("downsample.conv.", "downsample.0.").replace("downsample.norm.", "downsample.1."))
        official[key] = torch.randn_like(value.float()).to(value.dtype) if value.is_floating_point() else value
    official["stage2.0.branches.0.0.attn.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    official["classifier.weight"] = torch.randn(1000, 2048)
    path = tmp_path / "hrt_small.pth"
    torch.save({"model": official}, path)
    model = _small("hrformer", cin=3, pretrained=str(path))
    own = model.backbone.state_dict()
    assert torch.equal(own["layer1.0.conv1.conv.weight"], official["layer1.0.conv1.weight"])
    assert torch.equal(own["layer1.1.conv3.norm.running_var"], official["layer1.1.bn3.running_var"])
    key = "stage3.0.branches.1.0.attn.attn.relative_position_bias_table"
    assert torch.equal(own[key], official[key])
    assert torch.equal(own["stage4.0.fuse_layers.3.0.2.0.weight"], official["stage4.0.fuse_layers.3.0.2.0.weight"])


@pytest.mark.parametrize("name", KEYS)
def test_each_learns_coins(name: str) -> None:
    x, y = coins_task(64)
    model = _small(name)
    assert_learns(model, x, y, steps=30, lr=3e-3)


def test_transunet_learns_mni_white_matter_3d() -> None:
    x, y = mni_task(32)
    assert_learns(_small("transunet", dims=3), x, y, steps=30, lr=3e-3)
