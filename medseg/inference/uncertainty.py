"""Uncertainty from samples: mean probability, predictive entropy, mutual information and per-sample label maps.

``medseg predict --samples N`` draws N predictions of a stochastic network per case — prior samples of a
latent-variable model (the Probabilistic U-Nets) or dropout masks (Monte-Carlo dropout) — each through the sliding
window (:meth:`~medseg.inference.sliding_window.SlidingWindowPredictor.predict` with ``sample=s``) and exported to
the native grid like any prediction. :class:`SampleAccumulator` folds them, one at a time, into:

- the **mean probability** ``p̄_k = 1/N Σ_s p_k^(s)`` per class;
- the **predictive entropy** ``H[p̄] = −Σ_k p̄_k ln p̄_k`` in nats (0 where every sample is certain of one class,
  at most ``ln K``): the total uncertainty;
- the **mutual information** ``H[p̄] − 1/N Σ_s H[p^(s)]`` (Houlsby et al., *Bayesian active learning by
  disagreement*, 2011; Gal et al., ICML 2017): the part of the entropy due to the samples disagreeing — epistemic
  uncertainty under Monte-Carlo dropout, the ambiguity captured by the latent space of a probabilistic U-Net; 0
  where all samples agree, whatever each one's own confidence;
- the **label map**, the argmax of the mean probability;
- on request the N **per-sample label maps** (what ``medseg evaluate --metrics ged`` scores).

Memory: the running sums (``K`` float32 maps, one entropy sum) and, on request, N label maps, on the native grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SampleAccumulator", "SampleSummary", "entropy"]


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """``−Σ_k p_k ln p_k`` over axis 0 of ``(K, *spatial)`` probabilities, in nats (float32; ``0 ln 0 = 0``)."""
    p = np.asarray(probabilities, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.maximum(p, np.finfo(np.float32).tiny)), 0.0)
    return terms.sum(0, dtype=np.float32)


@dataclass
class SampleSummary:
    """What N samples of one case amount to, on the input's native grid (image axis order).

    Attributes:
        labels: ``(*native)`` argmax of the mean probability.
        mean_probabilities: ``(K, *native)`` float32 mean of the samples' probabilities.
        entropy: ``(*native)`` float32 predictive entropy of the mean (nats).
        mutual_information: ``(*native)`` float32 entropy of the mean less the mean entropy of the samples (nats).
        samples: ``(N, *native)`` label map of each sample, when kept, else ``None``.
        count: N.
    """

    labels: np.ndarray
    mean_probabilities: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    samples: np.ndarray | None
    count: int


class SampleAccumulator:
    """Fold samples' probabilities (and label maps) into a :class:`SampleSummary`, one sample at a time.

    Args:
        keep_samples: Keep every sample's label map.
    """

    def __init__(self, keep_samples: bool = False) -> None:
        self.keep_samples = keep_samples
        self._sum: np.ndarray | None = None
        self._entropy_sum: np.ndarray | None = None
        self._labels: list[np.ndarray] = []
        self.count = 0

    def add(self, probabilities: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add one sample: ``(K, *native)`` probabilities and, to keep it, its ``(*native)`` label map.

        Raises:
            ValueError: The shape differs from the earlier samples', or a label map is needed and missing.
        """
        p = np.asarray(probabilities, dtype=np.float32)
        if self._sum is None:
            self._sum = np.zeros(p.shape, dtype=np.float32)
            self._entropy_sum = np.zeros(p.shape[1:], dtype=np.float32)
        if p.shape != self._sum.shape:
            raise ValueError(f"sample of shape {p.shape} differs from the earlier samples' {self._sum.shape}")
        self._sum += p
        assert self._entropy_sum is not None
        self._entropy_sum += entropy(p)
        if self.keep_samples:
            if labels is None:
                raise ValueError("keep_samples needs each sample's label map")
            self._labels.append(np.asarray(labels))
        self.count += 1

    def result(self) -> SampleSummary:
        """The summary of the samples added so far.

        Raises:
            ValueError: No sample was added.
        """
        if self._sum is None or self._entropy_sum is None or not self.count:
            raise ValueError("no samples to summarise")
        mean = self._sum / self.count
        total = entropy(mean)
        mutual = np.maximum(total - self._entropy_sum / self.count, 0.0).astype(np.float32)
        label_dtype = np.uint8 if mean.shape[0] <= 256 else np.int16
        labels = mean.argmax(0).astype(label_dtype)
        samples = np.stack(self._labels).astype(label_dtype) if self.keep_samples else None
        return SampleSummary(labels=labels, mean_probabilities=mean, entropy=total, mutual_information=mutual,
                             samples=samples, count=self.count)
