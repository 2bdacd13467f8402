"""The one description of every evaluation metric: name, result key, unit, direction, default and meaning.

The command line (``--metrics`` and its help, the table's headers), ``summary.json`` (``metrics``) and the HTML report
(plot titles and units) all read :data:`METRICS`; the computations are in :mod:`medseg.evaluation.metrics`.
This module imports nothing, so the command line's help stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_METRICS", "INSTANCE_METRICS", "METRICS", "MetricSpec", "metric_help", "metric_spec"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric.

    Attributes:
        name: Name on the command line (``--metrics dice,hd95``).
        key: Result key and column name (nnU-Net's spelling for ``Dice``/``IoU``); NSD's keys carry the tolerance
            (``NSD_1mm``).
        unit: ``"mm"`` for distances, ``""`` for fractions.
        higher_is_better: The direction of improvement.
        surface: Whether it needs surface distances.
        default: Whether ``medseg evaluate`` computes it when ``--metrics`` is not given.
        description: One line on what it measures.
        samples: Whether it scores a prediction's samples against several reference annotations instead of one
            label map against one reference (``medseg predict --samples N --save-samples``).
    """

    name: str
    key: str
    unit: str
    higher_is_better: bool
    surface: bool
    default: bool
    description: str
    samples: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for ``summary.json``)."""
        return {"unit": self.unit or None, "higher_is_better": self.higher_is_better, "description": self.description}


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("dice", "Dice", "", True, False, True, "overlap 2|P∩R| / (|P| + |R|)"),
    MetricSpec("iou", "IoU", "", True, False, True, "overlap |P∩R| / |P∪R| (Jaccard)"),
    MetricSpec("hd", "HD", "mm", False, True, True, "Hausdorff distance: the largest border-to-border distance"),
    MetricSpec("hd95", "HD95", "mm", False, True, True,
               "95th-percentile Hausdorff distance: the larger of the two directed 95th percentiles"),
    MetricSpec("assd", "ASSD", "mm", False, True, True, "average symmetric surface distance (both directions pooled)"),
    MetricSpec("nsd", "NSD", "", True, True, True,
               "normalised surface Dice: the fraction of both borders within the tolerance of the other"),
    MetricSpec("ged", "GED", "", False, False, False,
               "squared generalised energy distance between the predicted samples S and the reference annotations Y: "
               "2E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')], d = 1 - IoU", samples=True),
)

#: ``--metrics`` when not given.
DEFAULT_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.default)

#: The metrics of instance evaluations (``medseg evaluate`` against an instance manifest or with ``--instances``);
#: objects match when they have the same class and overlap with IoU above 0.5 (computed in
#: :mod:`medseg.evaluation.instance`).
INSTANCE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("pq", "PQ", "", True, False, True, "panoptic quality SQ × RQ (Kirillov et al., CVPR 2019)"),
    MetricSpec("sq", "SQ", "", True, False, True, "segmentation quality: the mean IoU of the matched objects"),
    MetricSpec("rq", "RQ", "", True, False, True, "recognition quality TP / (TP + FP/2 + FN/2)"),
    MetricSpec("f1", "F1", "", True, False, True, "instance F1 at IoU 0.5: 2TP / (2TP + FP + FN)"),
    MetricSpec("aji", "AJI", "", True, False, True,
               "aggregated Jaccard index over all objects, classes ignored (Kumar et al., IEEE TMI 2017)"),
)


def metric_spec(key: str) -> MetricSpec:
    """The metric of a name (``hd95``, ``pq``) or result key (``HD95``, ``NSD_2mm``, ``PQ``).

    Raises:
        KeyError: No such metric.
    """
    prefix = "NSD" if key.startswith("NSD_") else key
    for spec in (*METRICS, *INSTANCE_METRICS):
        if key == spec.name or prefix == spec.key:
            return spec
    raise KeyError(key)


def metric_help() -> str:
    """The command line's help text for ``--metrics``."""
    listing = "; ".join(f"{m.name} ({m.description}{', mm' if m.unit else ''})" for m in METRICS)
    return f"Metrics, comma-separated: {listing}. Definitions: medseg/evaluation/METRICS.md."
