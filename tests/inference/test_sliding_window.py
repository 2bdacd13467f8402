"""The sliding window: nnU-Net's steps and gaussian, exactness, TTA, stitching devices/dtypes, memory bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medseg.inference.sliding_window import (
    SlidingWindowPredictor,
    choose_stitch_device,
    compute_gaussian,
    compute_steps_for_sliding_window,
    mirror_combinations,
    pad_amounts,
)
from medseg.models import create_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_net(classes: int = 3, channels: int = 1, seed: int = 0, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    net = create_model("nnunet", 3, channels, classes, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3, 3]] * 3,
                       strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1],
                       n_conv_per_stage_decoder=[1, 1], deep_supervision=False)
    net.eval()
    if scale == 1.0:
        return net
    return _Scaled(net, scale)


class _Scaled(nn.Module):
    """Multiplies the logits (random nets give tiny logits; trained ones reach ±10 or more)."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale, self.out_channels = net, scale, net.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def smooth_volume(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, *[max(s // 4, 2) for s in shape]), generator=g)
    return torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=False)[0]


# nnU-Net's windowing --------------------------------------------------------------------------------------------


def test_steps_equal_nnunet_on_known_shapes() -> None:
    # the example in nnU-Net's own comment: image 110, patch 64, step 0.5 -> 0, 23, 46
    assert compute_steps_for_sliding_window([110], [64], 0.5) == [[0, 23, 46]]
    assert compute_steps_for_sliding_window([64, 65, 200], [64, 64, 128], 0.5) == [[0], [0, 1], [0, 36, 72]]
    assert compute_steps_for_sliding_window([129], [64], 0.5) == [[0, 22, 43, 65]]
    assert compute_steps_for_sliding_window([512, 512, 256], [128, 128, 128], 0.5) == [
        [0, 64, 128, 192, 256, 320, 384], [0, 64, 128, 192, 256, 320, 384], [0, 64, 128]]
    assert compute_steps_for_sliding_window([100], [64], 1.0) == [[0, 36]]
    with pytest.raises(ValueError):
        compute_steps_for_sliding_window([10], [16], 0.5)


def test_gaussian_is_nnunets() -> None:
    g = compute_gaussian([32, 48, 40])
    assert g.shape == (32, 48, 40) and g.dtype == torch.float32
    assert g.max().item() == pytest.approx(1.0)
    assert tuple(int(i) for i in torch.nonzero(g == g.max())[0]) == (16, 24, 20)  # centre at tile // 2
    assert (g > 0).all()  # zeros beyond 4 sigma replaced by the smallest non-zero value
    sigma = 48 / 8
    assert g[16, 24 + 6, 20].item() == pytest.approx(math.exp(-0.5 * (6 / sigma) ** 2), rel=0.02)
    scaled = compute_gaussian([32, 48, 40], value_scaling_factor=10)
    assert torch.allclose(scaled, g * 10)


def test_padding_and_mirror_combinations() -> None:
    assert pad_amounts([10, 16, 7], [16, 16, 16]) == [(3, 3), (0, 0), (4, 5)]
    combos = mirror_combinations([2, 3, 4])
    assert combos[0] == () and len(combos) == 8 and len(set(combos)) == 8


# Exactness ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_window_covering_the_volume_equals_a_forward_pass() -> None:
    net = tiny_net()
    x = smooth_volume((16, 24, 16))
    sw = SlidingWindowPredictor([net], [16, 24, 16], device="cpu", precision="fp32", stitch_dtype="fp32")
    out = sw.predict(x)
    assert sw.stats.windows == 1
    torch.testing.assert_close(out, net(x[None])[0], rtol=0, atol=1e-6)
    # with mirroring: the mean of the 8 flipped passes
    sw = SlidingWindowPredictor([net], [16, 24, 16], mirror_axes=[0, 1, 2], device="cpu", precision="fp32",
                                stitch_dtype="fp32")
    expected = sum(torch.flip(net(torch.flip(x[None], a)), a) if a else net(x[None])
                   for a in mirror_combinations([2, 3, 4]))[0] / 8
    torch.testing.assert_close(sw.predict(x), expected, rtol=0, atol=1e-5)
    assert sw.stats.forward_passes == 8


@torch.no_grad()
def test_input_smaller_than_patch_is_padded_like_nnunet() -> None:
    net = tiny_net()
    x = smooth_volume((10, 16, 13))
    sw = SlidingWindowPredictor([net], [16, 16, 16], device="cpu", precision="fp32", stitch_dtype="fp32")
    out = sw.predict(x)
    padded = torch.nn.functional.pad(x, [1, 2, 0, 0, 3, 3])
    torch.testing.assert_close(out, net(padded[None])[0, :, 3:13, :, 1:14], rtol=0, atol=1e-6)


@torch.no_grad()
def test_ensemble_averages_probabilities() -> None:
    nets = [tiny_net(seed=0), tiny_net(seed=1)]
    x = smooth_volume((16, 16, 16))
    sw = SlidingWindowPredictor(nets, [16, 16, 16], device="cpu", precision="fp32", stitch_dtype="fp32")
    expected = (torch.softmax(nets[0](x[None]), 1) + torch.softmax(nets[1](x[None]), 1))[0] / 2
    torch.testing.assert_close(sw.predict(x), expected, rtol=0, atol=1e-6)
    assert sw.output_kind == "probabilities"


@torch.no_grad()
def test_tta_on_and_off() -> None:
    net = tiny_net()
    x = smooth_volume((24, 16, 16))
    off = SlidingWindowPredictor([net], [16, 16, 16], device="cpu", precision="fp32")
    on = SlidingWindowPredictor([net], [16, 16, 16], mirror_axes=[0, 1, 2], device="cpu", precision="fp32")
    a, b = off.predict(x), on.predict(x)
    assert off.stats.windows == on.stats.windows == 2
    assert on.stats.forward_passes == 8 * off.stats.forward_passes
    assert not torch.allclose(a, b, atol=1e-4)
    # a flip-equivariant network (pointwise) makes TTA a no-op
    torch.manual_seed(0)
    sym = nn.Conv3d(1, 3, 1)
    torch.testing.assert_close(SlidingWindowPredictor([sym], [16, 16, 16], device="cpu", precision="fp32",
                                                      stitch_dtype="fp32").predict(x),
                               SlidingWindowPredictor([sym], [16, 16, 16], mirror_axes=[0, 1, 2], device="cpu",
                                                      precision="fp32", stitch_dtype="fp32").predict(x),
                               rtol=0, atol=1e-5)


@torch.no_grad()
def test_batch_size_does_not_change_the_result() -> None:
    net = tiny_net()
    x = smooth_volume((24, 24, 16))
    runs = [SlidingWindowPredictor([net], [16, 16, 16], device="cpu", precision="fp32", stitch_dtype="fp32",
                                   batch_size=b).predict(x) for b in (1, 3, 4)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(runs[0], runs[2], rtol=0, atol=1e-5)


# fp16 stitching ---------------------------------------------------------------------------------------------------

#: Measured bound of the fp16 running-mean buffer: |logit_fp16 - logit_fp32| <= FP16_BOUND * max|logit|.
#: Each store rounds to fp16 (half an ulp: 2^-12 relative), at most 8 windows overlap a voxel at step 0.5 in 3D.
FP16_BOUND = 8 * 2.0**-12


@torch.no_grad()
def test_fp16_stitching_within_documented_bound() -> None:
    net = tiny_net(classes=4, scale=10.0)  # logits of ±10 and more, like a trained network
    x = smooth_volume((32, 32, 24))
    ref = SlidingWindowPredictor([net], [16, 16, 16], device="cpu", precision="fp32", stitch_dtype="fp32").predict(x)
    half_sw = SlidingWindowPredictor([net], [16, 16, 16], device="cpu", precision="fp32", stitch_dtype="fp16")
    half = half_sw.predict(x)
    assert half.dtype == torch.float16 and half_sw.stats.stitch_dtype == "float16"
    scale = ref.abs().max().item()
    assert scale > 5
    error = (half.float() - ref).abs().max().item()
    print(f"fp16 stitching: max |logit error| {error:.2e} = {error / scale:.2e} of max |logit| {scale:.1f}")
    assert error <= FP16_BOUND * scale
    p_ref, p_half = torch.softmax(ref, 0), torch.softmax(half.float(), 0)
    # softmax moves no probability by more than half the largest logit change
    assert (p_ref - p_half).abs().max().item() <= 0.5 * error + 1e-6
    agree = (ref.argmax(0) == half.float().argmax(0)).float().mean().item()
    assert agree > 0.999


# Stitching device and the memory bound ---------------------------------------------------------------------------


def test_stitch_device_choice() -> None:
    cuda = torch.device("cuda", 0)
    assert choose_stitch_device(10, torch.device("cpu"), "auto") == torch.device("cpu")
    assert choose_stitch_device(10, cuda, "auto", free_bytes=100) == cuda
    assert choose_stitch_device(70, cuda, "auto", free_bytes=100) == torch.device("cpu")  # > 60 % of free memory
    assert choose_stitch_device(10, cuda, "cpu", free_bytes=100) == torch.device("cpu")
    assert choose_stitch_device(10**12, cuda, "cuda", free_bytes=100) == cuda  # forced


@torch.no_grad()
def test_device_tensors_do_not_grow_with_the_volume() -> None:
    """Instrumented: what is put on the compute device per batch depends on patch, batch and classes only."""
    net = tiny_net(classes=20)
    stats = []
    for shape in ((16, 16, 16), (40, 32, 24)):
        sw = SlidingWindowPredictor([net], [16, 16, 16], mirror_axes=[0], device="cpu", precision="fp32",
                                    stitch_device="cpu", batch_size=2)
        out = sw.predict(smooth_volume(shape))
        assert out.shape == (20, *shape) and out.device.type == "cpu"
        stats.append(sw.stats)
    small, large = stats
    assert large.windows == 24 * small.windows
    assert 2 * large.buffer_bytes == 15 * small.buffer_bytes  # 7.5 times the voxels
    assert large.peak_batch_bytes == 2 * 4 * (1 + 20 + 20) * 16**3  # input, logits, mirrored logits of 2 windows
    assert small.peak_batch_bytes <= large.peak_batch_bytes
    assert {shape for _, shape in large.device_tensors} <= {(2, 1, 16, 16, 16), (2, 20, 16, 16, 16)}


@pytest.mark.gpu
@needs_cuda
@torch.no_grad()
def test_cuda_and_cpu_stitching_agree() -> None:
    net = tiny_net(classes=4, scale=40.0)
    x = smooth_volume((48, 40, 36))
    on_gpu = SlidingWindowPredictor([net], [16, 16, 16], device="cuda", precision="fp32", stitch_device="cuda",
                                    stitch_dtype="fp32")
    on_cpu = SlidingWindowPredictor([net], [16, 16, 16], device="cuda", precision="fp32", stitch_device="cpu",
                                    stitch_dtype="fp32")
    a, b = on_gpu.predict(x), on_cpu.predict(x)
    assert a.device.type == "cuda" and b.device.type == "cpu"
    torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-4)
    ref = SlidingWindowPredictor([net.cpu()], [16, 16, 16], device="cpu", precision="fp32",
                                 stitch_dtype="fp32").predict(x)
    torch.testing.assert_close(b, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
@torch.no_grad()
def test_cuda_peak_memory_does_not_grow_with_volume_or_classes() -> None:
    peaks = {}
    for classes, shape in ((100, (64, 64, 64)), (100, (256, 256, 160))):
        net = tiny_net(classes=classes).cuda()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        sw = SlidingWindowPredictor([net], [64, 64, 64], device="cuda", precision="fp16", stitch_device="cpu",
                                    batch_size=2)
        sw.predict(smooth_volume(shape))
        peaks[shape] = torch.cuda.max_memory_allocated() - base
    small, large = peaks[(64, 64, 64)], peaks[(256, 256, 160)]
    assert large <= small * 1.05 + (8 << 20), peaks
