"""Gaussian-weighted sliding-window prediction with a memory-bounded stitching buffer.

The windowing is nnU-Net v2's (Isensee et al., *nnU-Net*, Nature Methods 18, 2021;
``nnunetv2/inference/predict_from_raw_data.py``):

- inputs smaller than the patch are zero-padded to the patch, half before and half after (``pad_nd_image``), and
  the padding is cropped off the result;
- window starts per axis from :func:`compute_steps_for_sliding_window` (``step`` 0.5 of the patch, the windows
  spread evenly so that the first starts at 0 and the last ends at the border);
- every window is weighted by a gaussian importance map (:func:`compute_gaussian`, σ = patch / 8, maximum 1,
  zeros replaced by the smallest non-zero value) and the result is the weighted mean of the overlapping windows;
- mirroring test-time augmentation (``_internal_maybe_mirror_and_predict``): the logits of every combination of
  flips over the mirror axes (8 passes for three axes) are averaged per window.

Several models (a fold ensemble) are run on every window and their softmax probabilities averaged (or, with
``ensemble="logits"``, their logits, as nnU-Net's ``nnUNetPredictor`` averages its folds), so one pass over the
volume and one stitching buffer serve the whole ensemble; a single model stitches its logits, as nnU-Net does.

**Samples** of stochastic networks (latent-variable models such as the Probabilistic U-Net, or any network with
dropout layers: Monte-Carlo dropout) are drawn by the same pass: ``predict(data, sample=s)`` runs every window inside
:func:`medseg.models.sampling.sample_mode` with seed ``s``, so the pass stitches draw ``s`` (one shared latent noise
for every window of a latent model; seeded dropout masks). One pass per draw keeps the memory of one prediction.

Memory (see :class:`SlidingWindowPredictor`): the input volume stays in host memory and windows are copied to the
compute device one batch at a time; each batch's result is moved to the stitching device and folded into the buffer
before the next batch runs. The buffer (``K × spatial`` values plus a float32 weight map) lives on the compute
device when it fits in its free memory, else in host memory. The compute device therefore holds the model plus one
window batch, whatever the volume size and the class count.

The buffer stores the **running weighted mean** rather than nnU-Net's running sum: each window updates
``mean += (window - mean) · g / (W + g)`` in float32 and stores the result (``W`` is the float32 sum of gaussian
weights so far). Stored values thus keep the magnitude of logits, so an fp16 buffer loses only its rounding
(2⁻¹¹ relative per store) and never underflows where the gaussian is tiny (nnU-Net's fp16 sum of ``logit · g``
keeps a few bits only at window corners, which is why it scales its gaussian by 10).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

Precision = Literal["auto", "fp32", "fp16", "bf16"]

#: Windows per batch on the CPU (larger batches do not run faster there).
CPU_BATCH_SIZE = 2
#: Upper bound of the automatic CUDA batch size.
MAX_CUDA_BATCH_SIZE = 8
#: Fraction of the free CUDA memory the stitching buffer may take for ``stitch_device="auto"`` to choose CUDA.
STITCH_MEMORY_FRACTION = 0.6


def compute_steps_for_sliding_window(image_size: Sequence[int], tile_size: Sequence[int],
                                     tile_step_size: float) -> list[list[int]]:
    """Window start positions per axis, as nnU-Net's ``compute_steps_for_sliding_window``.

    Per axis: ``n = ceil((image - tile) / (tile · step)) + 1`` windows, spread evenly between 0 and
    ``image - tile`` (``round(i · (image - tile) / (n - 1))``).

    Args:
        image_size: Spatial shape (each at least the tile size).
        tile_size: Patch size.
        tile_step_size: Step as a fraction of the patch (0 < step ≤ 1).

    Returns:
        Per axis, the sorted start indices.
    """
    if not 0 < tile_step_size <= 1:
        raise ValueError(f"the step must be in (0, 1], got {tile_step_size}")
    if any(i < t for i, t in zip(image_size, tile_size, strict=True)):
        raise ValueError(f"image {tuple(image_size)} is smaller than the tile {tuple(tile_size)}")
    target = [t * tile_step_size for t in tile_size]
    num_steps = [math.ceil((i - t) / s) + 1 for i, s, t in zip(image_size, target, tile_size, strict=True)]
    steps = []
    for dim, n in enumerate(num_steps):
        largest = image_size[dim] - tile_size[dim]
        actual = largest / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(n)])
    return steps


def compute_gaussian(tile_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 1.0,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian importance map, as nnU-Net's ``compute_gaussian``.

    A unit impulse at ``tile // 2`` blurred by ``scipy.ndimage.gaussian_filter`` (σ = ``tile · sigma_scale``,
    constant border), scaled to a maximum of ``value_scaling_factor``; zeros (beyond the filter's 4σ truncation)
    become the smallest non-zero value so that no voxel gets zero weight.
    """
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tuple(int(t) for t in tile_size))
    tmp[tuple(int(t) // 2 for t in tile_size)] = 1
    blurred = gaussian_filter(tmp, [t * sigma_scale for t in tile_size], 0, mode="constant", cval=0)
    gaussian = torch.from_numpy(blurred)
    gaussian = gaussian / (gaussian.max() / value_scaling_factor)
    gaussian = gaussian.to(device=device, dtype=dtype)
    zero = gaussian == 0
    if zero.any():
        gaussian[zero] = gaussian[~zero].min()
    return gaussian


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The identity ``()`` then every non-empty combination of the spatial mirror ``axes`` (nnU-Net's order)."""
    axes = list(axes)
    return [(), *(c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1))]


def pad_amounts(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """Zero padding ``(before, after)`` per axis that brings ``shape`` up to ``patch`` (nnU-Net's ``pad_nd_image``)."""
    out = []
    for s, p in zip(shape, patch, strict=True):
        diff = max(int(p) - int(s), 0)
        out.append((diff // 2, diff - diff // 2))
    return out


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` as given, or the device a name stands for (:func:`medseg.utils.devices.resolve_device`)."""
    if isinstance(device, torch.device):
        return device
    from medseg.utils.devices import resolve_device as resolve

    return resolve(device)


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: full fp32).

    ``auto`` is bf16 on CUDA when supported, else fp16 on CUDA, and fp32 on the CPU.
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def choose_stitch_device(buffer_bytes: int, compute: torch.device, requested: str = "auto",
                         free_bytes: int | None = None) -> torch.device:
    """Where the stitching buffer goes.

    Args:
        buffer_bytes: Size of the buffer (values and weights).
        compute: The compute device.
        requested: ``auto``, ``cpu`` or ``cuda`` (``cuda`` = the compute device when it is a CUDA device).
        free_bytes: Free memory of the compute device (default: ``torch.cuda.mem_get_info``).

    Returns:
        The compute device when requested, or when ``auto`` and the buffer takes at most
        :data:`STITCH_MEMORY_FRACTION` of its free memory; the CPU otherwise.
    """
    if requested == "cpu" or compute.type == "cpu":
        return torch.device("cpu")
    if requested not in ("auto", "cuda"):
        return torch.device(requested)
    if requested == "cuda" or compute.type != "cuda":  # MPS shares the machine's memory
        return compute
    if free_bytes is None:
        free_bytes = int(torch.cuda.mem_get_info(compute)[0])
    return compute if buffer_bytes <= STITCH_MEMORY_FRACTION * free_bytes else torch.device("cpu")


@dataclass
class SlidingWindowStats:
    """What one prediction did: windows, batches, where the buffer lived and how much compute memory it used.

    Attributes:
        windows: Windows predicted (each with all mirror passes and models).
        batches: Window batches run.
        batch_size: Windows per batch.
        forward_passes: Network calls (batches × mirror combinations × models).
        stitch_device: Device of the stitching buffer.
        stitch_dtype: dtype of the stored values.
        buffer_bytes: Bytes of the buffer (values and weights).
        peak_batch_bytes: Largest total size of the tensors this module allocated on the compute device for one
            batch (input windows, outputs, mirror sums), excluding the model's own activations; it depends on the
            patch, batch size and class count only, never on the volume size (asserted in the tests).
        device_tensors: ``(name, shape)`` of the tensors counted in ``peak_batch_bytes`` for the largest batch.
    """

    windows: int = 0
    batches: int = 0
    batch_size: int = 0
    forward_passes: int = 0
    stitch_device: str = ""
    stitch_dtype: str = ""
    buffer_bytes: int = 0
    peak_batch_bytes: int = 0
    device_tensors: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)


def _track(track: list[tuple[str, tuple[int, ...], int]], name: str, tensor: torch.Tensor) -> None:
    """Note a tensor put on the compute device (name, shape, bytes) without keeping it alive."""
    track.append((name, tuple(tensor.shape), tensor.numel() * tensor.element_size()))


class SlidingWindowPredictor:
    """nnU-Net's sliding-window inference with mirroring TTA, fold ensembling and a bounded stitching buffer.

    Args:
        models: One network (its logits are stitched) or several (a fold ensemble: softmax probabilities averaged
            per window). Each takes ``(B, C, *patch)`` and returns ``(B, K, *patch)`` in eval mode.
        patch_size: Window size.
        step: Step as a fraction of the patch (nnU-Net: 0.5).
        mirror_axes: Spatial axes (0-based) to mirror for test-time augmentation; empty disables it.
        device: Compute device (``auto``: CUDA when available).
        precision: ``auto`` (bf16/fp16 autocast on CUDA, fp32 on the CPU), ``fp32``, ``fp16`` or ``bf16`` autocast.
        stitch_device: ``auto`` (the compute device when the buffer fits, else the CPU), ``cpu`` or ``cuda``.
        stitch_dtype: ``auto`` (fp16 when the network runs in reduced precision, fp32 otherwise), ``fp16`` or
            ``fp32``; values are always combined in fp32 and only stored in this dtype.
        batch_size: Windows per batch; default :data:`CPU_BATCH_SIZE` on the CPU, on CUDA measured from a probe
            window and the free memory (at most :data:`MAX_CUDA_BATCH_SIZE`).
        ensemble: How several models combine: ``probabilities`` (mean softmax) or ``logits`` (mean logits,
            nnU-Net's fold ensemble; also what region-based sigmoid models need).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        patch_size: Sequence[int],
        *,
        step: float = 0.5,
        mirror_axes: Sequence[int] = (),
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        stitch_device: str = "auto",
        stitch_dtype: Literal["auto", "fp16", "fp32"] = "auto",
        batch_size: int | None = None,
        ensemble: Literal["probabilities", "logits"] = "probabilities",
    ) -> None:
        if not models:
            raise ValueError("at least one model is needed")
        if ensemble not in ("probabilities", "logits"):
            raise ValueError(f"ensemble must be 'probabilities' or 'logits', not {ensemble!r}")
        self.ensemble = ensemble
        self.device = resolve_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        self.patch = [int(p) for p in patch_size]
        self.step = float(step)
        self.mirror_axes = [int(a) for a in mirror_axes]
        if any(not 0 <= a < len(self.patch) for a in self.mirror_axes):
            raise ValueError(f"mirror axes {self.mirror_axes} do not fit a {len(self.patch)}D patch")
        self.precision = precision
        self.amp_dtype = autocast_dtype(precision, self.device)
        self.stitch_request = stitch_device
        if stitch_dtype == "auto":
            self.stitch_dtype = torch.float16 if self.amp_dtype is not None else torch.float32
        else:
            self.stitch_dtype = torch.float16 if stitch_dtype == "fp16" else torch.float32
        self.batch_size = batch_size
        self.gaussian = compute_gaussian(self.patch, dtype=torch.float32, device="cpu")
        self.stats = SlidingWindowStats()

    @property
    def output_kind(self) -> str:
        """``logits`` for a single model or a logit ensemble, ``probabilities`` for a probability ensemble."""
        return "logits" if len(self.models) == 1 or self.ensemble == "logits" else "probabilities"

    # Window evaluation ---------------------------------------------------------------------------------------------

    def _forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                out = model(x)
        else:
            out = model(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.float()

    def _mirrored(self, model: nn.Module, x: torch.Tensor, track: list[tuple[str, tuple[int, ...], int]]
                  ) -> torch.Tensor:
        """Mean logits over the mirror combinations (nnU-Net's ``_internal_maybe_mirror_and_predict``)."""
        combos = mirror_combinations([a + 2 for a in self.mirror_axes])
        total = self._forward(model, x)
        _track(track, "logits", total)
        for i, axes in enumerate(combos[1:]):
            out = torch.flip(self._forward(model, torch.flip(x, axes)), axes)
            if i == 0:  # one mirrored output is alive at a time
                _track(track, "mirrored logits", out)
            total += out
            del out
        self.stats.forward_passes += len(combos)
        if len(combos) > 1:
            total /= len(combos)
        return total

    @torch.no_grad()
    def predict_windows(self, x: torch.Tensor, track: list[tuple[str, tuple[int, ...], int]] | None = None
                        ) -> torch.Tensor:
        """Logits (one model), mean softmax probabilities or mean logits (ensemble) of a window batch."""
        track = [] if track is None else track
        if len(self.models) == 1:
            return self._mirrored(self.models[0], x, track)
        mean: torch.Tensor | None = None
        for i, model in enumerate(self.models):
            probs = self._mirrored(model, x, track if i == 0 else [])
            if self.ensemble == "probabilities":
                probs = torch.softmax(probs, 1)
            mean = probs if mean is None else mean.add_(probs)
        assert mean is not None
        _track(track, "ensemble mean", mean)
        return mean.div_(len(self.models))

    def _auto_batch_size(self, channels: int, n_windows: int) -> int:
        if self.batch_size is not None:
            return max(1, min(int(self.batch_size), n_windows))
        if self.device.type != "cuda":
            return max(1, min(CPU_BATCH_SIZE, n_windows))
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        probe = torch.zeros((1, channels, *self.patch), device=self.device)
        self.predict_windows(probe)
        torch.cuda.synchronize(self.device)
        per_window = max(torch.cuda.max_memory_allocated(self.device) - base, 1)
        del probe
        free = int(torch.cuda.mem_get_info(self.device)[0])
        return max(1, min(MAX_CUDA_BATCH_SIZE, n_windows, int(0.5 * free // per_window)))

    # The volume -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, data: torch.Tensor | np.ndarray,
                progress: Callable[[int, int], None] | None = None, *, sample: int | None = None) -> torch.Tensor:
        """Predict a preprocessed volume.

        Args:
            data: ``(C, *spatial)`` float input (kept where it is; windows are copied to the compute device).
            progress: Called as ``progress(windows_done, windows_total)`` after each batch.
            sample: Draw this sample (its seed) of stochastic models instead of their deterministic prediction
                (see the module docstring).

        Returns:
            ``(K, *spatial)`` tensor on the stitching device in the stitching dtype: stitched logits (one model) or
            probabilities (ensemble); see :attr:`output_kind`. :attr:`stats` describes the run.

        Raises:
            ModelError: ``sample`` is given and a model has no latent variables and no dropout layers.
        """
        if sample is None:
            return self._predict(data, progress)
        from medseg.models.sampling import sample_mode

        with contextlib.ExitStack() as stack:
            for model in self.models:
                stack.enter_context(sample_mode(model, int(sample)))
            return self._predict(data, progress)

    def _predict(self, data: torch.Tensor | np.ndarray, progress: Callable[[int, int], None] | None) -> torch.Tensor:
        image = torch.as_tensor(data).float()
        if image.ndim != len(self.patch) + 1:
            raise ValueError(f"expected a (C, *spatial) input with {len(self.patch)} spatial axes, got {image.shape}")
        image = image.cpu()
        shape = list(image.shape[1:])
        pads = pad_amounts(shape, self.patch)
        if any(a or b for a, b in pads):
            flat: list[int] = []
            for before, after in reversed(pads):
                flat += [before, after]
            image = torch.nn.functional.pad(image, flat)
        padded = list(image.shape[1:])
        if self.device.type == "cuda":
            image = image.pin_memory()
        steps = compute_steps_for_sliding_window(padded, self.patch, self.step)
        starts = list(itertools.product(*steps))
        self.stats = stats = SlidingWindowStats(windows=len(starts))

        num_classes = self._num_classes(image.shape[0])
        voxels = int(np.prod(padded))
        value_bytes = torch.finfo(self.stitch_dtype).bits // 8
        buffer_bytes = voxels * (num_classes * value_bytes + 4)
        stitch = choose_stitch_device(buffer_bytes, self.device, self.stitch_request)
        values = torch.zeros((num_classes, *padded), dtype=self.stitch_dtype, device=stitch)
        weights = torch.zeros(padded, dtype=torch.float32, device=stitch)
        gaussian = self.gaussian.to(stitch)
        stats.stitch_device, stats.stitch_dtype = str(stitch), str(self.stitch_dtype).replace("torch.", "")
        stats.buffer_bytes = buffer_bytes
        batch_size = stats.batch_size = self._auto_batch_size(image.shape[0], len(starts))

        for first in range(0, len(starts), batch_size):
            chunk = starts[first:first + batch_size]
            slicers = [tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True)) for start in chunk]
            batch = torch.stack([image[(slice(None), *sl)] for sl in slicers])
            x = batch.to(self.device, non_blocking=True)
            track: list[tuple[str, tuple[int, ...], int]] = []
            _track(track, "input windows", x)
            out = self.predict_windows(x, track)
            self._record(track)
            moved = out.to(device=stitch, dtype=self.stitch_dtype, non_blocking=False)
            del x, out, track
            for k, sl in enumerate(slicers):
                self._accumulate(values, weights, moved[k], gaussian, sl)
            stats.batches += 1
            if progress is not None:
                progress(min(first + batch_size, len(starts)), len(starts))

        crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, shape, strict=True))
        return values[(slice(None), *crop)]

    def _num_classes(self, channels: int) -> int:
        for model in self.models:
            k = getattr(model, "out_channels", None)
            if isinstance(k, int):
                return k
        probe = torch.zeros((1, channels, *self.patch), device=self.device)
        return int(self.predict_windows(probe).shape[1])

    def _record(self, track: list[tuple[str, tuple[int, ...], int]]) -> None:
        total = sum(nbytes for _, _, nbytes in track)
        if total > self.stats.peak_batch_bytes:
            self.stats.peak_batch_bytes = total
            self.stats.device_tensors = [(name, shape) for name, shape, _ in track]

    @staticmethod
    def _accumulate(values: torch.Tensor, weights: torch.Tensor, window: torch.Tensor, gaussian: torch.Tensor,
                    sl: tuple[slice, ...]) -> None:
        """Fold one window into the running weighted mean (float32 arithmetic, stored in the buffer's dtype)."""
        w_old = weights[sl]
        w_new = w_old + gaussian
        fraction = gaussian / w_new
        region = values[(slice(None), *sl)]
        current = region.float()
        current += (window.float() - current) * fraction
        region.copy_(current)
        weights[sl] = w_new
