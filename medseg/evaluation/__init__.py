"""Evaluate segmentations: metrics with millimetre spacing and explicit empty-mask rules, summaries and a report.

Stands alone on :mod:`medseg.io` (and :mod:`medseg.data` for manifests): no models, training or inference. The
definitions are in ``METRICS.md`` in this folder. Typical use::

    from medseg.evaluation import evaluate, write_metrics_csv, write_summary_json

    result = evaluate("predictions/", "dataset.json", metrics=["dice", "hd95", "nsd"], nsd_tolerances_mm=[2.0])
    write_metrics_csv(result, "report/metrics.csv")
    write_summary_json(result, "report/summary.json")

The HTML report (:func:`medseg.evaluation.report.write_report`) needs matplotlib (``pip install 'medseg[report]'``).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives; imported on first use, so that ``medseg.evaluation.metric_table`` (the command
#: line's help) does not pull in numpy, scipy and the image readers.
_WHERE = {
    **dict.fromkeys(("CasePair", "CaseResult", "EvaluationResult", "Pairing", "evaluate", "evaluate_case",
                     "pair_cases", "parse_labels", "summarize", "write_metrics_csv", "write_summary_json"),
                    "medseg.evaluation.evaluate"),
    **dict.fromkeys(("InstanceEvaluation", "evaluate_instances", "summarize_instances", "write_instance_evaluation"),
                    "medseg.evaluation.instance"),
    **dict.fromkeys(("METRIC_NAMES", "SurfaceDistances", "assd", "compute_metrics", "dice", "empty_penalty_mm",
                     "hausdorff", "hausdorff95", "iou", "metric_keys", "nsd", "surface_distances"),
                    "medseg.evaluation.metrics"),
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'medseg.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_WHERE)


__all__ = [
    "METRIC_NAMES",
    "CasePair",
    "CaseResult",
    "EvaluationResult",
    "InstanceEvaluation",
    "Pairing",
    "SurfaceDistances",
    "assd",
    "compute_metrics",
    "dice",
    "empty_penalty_mm",
    "evaluate",
    "evaluate_case",
    "evaluate_instances",
    "hausdorff",
    "hausdorff95",
    "iou",
    "metric_keys",
    "nsd",
    "pair_cases",
    "parse_labels",
    "summarize",
    "summarize_instances",
    "surface_distances",
    "write_instance_evaluation",
    "write_metrics_csv",
    "write_summary_json",
]
