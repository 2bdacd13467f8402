"""Evaluate segmentations: metrics with millimetre spacing and explicit empty-mask rules, summaries and a report.

Stands alone on :mod:`medseg.io` (and :mod:`medseg.data` for manifests): no models, training or inference. The
definitions are in ``METRICS.md`` in this folder. Typical use::

    from medseg.evaluation import evaluate, write_metrics_csv, write_summary_json

    result = evaluate("predictions/", "dataset.json", metrics=["dice", "hd95", "nsd"], nsd_tolerances_mm=[2.0])
    write_metrics_csv(result, "report/metrics.csv")
    write_summary_json(result, "report/summary.json")

The HTML report (:func:`medseg.evaluation.report.write_report`) needs matplotlib (``pip install 'medseg[report]'``).
"""

from medseg.evaluation.evaluate import (
    CasePair,
    CaseResult,
    EvaluationResult,
    Pairing,
    evaluate,
    evaluate_case,
    pair_cases,
    parse_labels,
    summarize,
    write_metrics_csv,
    write_summary_json,
)
from medseg.evaluation.metrics import (
    METRIC_NAMES,
    SurfaceDistances,
    assd,
    compute_metrics,
    dice,
    empty_penalty_mm,
    hausdorff,
    hausdorff95,
    iou,
    metric_keys,
    nsd,
    surface_distances,
)

__all__ = [
    "METRIC_NAMES",
    "CasePair",
    "CaseResult",
    "EvaluationResult",
    "Pairing",
    "SurfaceDistances",
    "assd",
    "compute_metrics",
    "dice",
    "empty_penalty_mm",
    "evaluate",
    "evaluate_case",
    "hausdorff",
    "hausdorff95",
    "iou",
    "metric_keys",
    "nsd",
    "pair_cases",
    "parse_labels",
    "summarize",
    "surface_distances",
    "write_metrics_csv",
    "write_summary_json",
]
