"""The HTML report of an instance evaluation: one self-contained file, like the semantic report.

It holds the pooled panoptic quality per class (and over all objects, with AJI), the per-case distributions of PQ, the
distribution of object volumes (reference and prediction), overlay thumbnails of the worst cases by PQ (every
reference object's contour solid, every predicted object's dashed), a sortable case × class table and a sortable
object table. Drawn with matplotlib's object API (the ``report`` extra).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from medseg.evaluation.evaluate import on_reference_grid, read_label_map
from medseg.evaluation.instance import ALL_CLASSES, METRIC_KEYS, InstanceEvaluation, summarize_instances
from medseg.evaluation.report import (
    _CSS,
    _JS,
    REPORT_EXTRA_HINT,
    _color,
    _e,
    _fmt,
    _svg,
    matplotlib_available,
)

__all__ = ["render_instance_report"]


def _slice_axis(spacing: Any) -> int:
    """The through-plane axis: the one with the coarsest spacing (the last axis when all are equal)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    coarsest = np.flatnonzero(np.isclose(spacing, spacing.max(), rtol=1e-3))
    return int(coarsest[-1])

#: Rows of the object table shown in the report (``instances.csv`` has them all).
OBJECT_ROWS = 500


def _pq_plot(result: InstanceEvaluation, salt: str) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    rows = result.row_classes
    data = [result.values(v, "PQ") for v in rows]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt, "font.size": 9}):
        fig = Figure(figsize=(max(3.2, 1.0 + 0.9 * len(rows)), 3.0))
        ax = fig.add_subplot()
        ax.boxplot(data, positions=range(len(rows)), widths=0.55, showfliers=False, medianprops={"color": "k"})
        rng = np.random.default_rng(0)
        for i, values in enumerate(data):
            ax.scatter(i + rng.uniform(-0.18, 0.18, size=values.size), values, s=12, color=_color(i), alpha=0.75,
                       linewidths=0, zorder=3)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(list(rows.values()))
        ax.set_ylim(-0.03, 1.03)
        ax.set_title("PQ per case — higher is better")
        ax.grid(axis="y", alpha=0.3)
        return _svg(fig)


def _volume_plot(result: InstanceEvaluation, salt: str) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    objects = [o for c in result.cases for o in c.objects]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt, "font.size": 9}):
        fig = Figure(figsize=(4.2, 3.0))
        ax = fig.add_subplot()
        volumes = {side: np.array([o["volume_mm3"] for o in objects if o["side"] == side], dtype=np.float64)
                   for side in ("reference", "prediction")}
        positive = np.concatenate([v[v > 0] for v in volumes.values()]) if objects else np.zeros(0)
        if positive.size:
            bins = np.geomspace(positive.min(), positive.max() * 1.0001, 20)
            for i, (side, v) in enumerate(volumes.items()):
                if v.size:
                    ax.hist(v, bins=bins, histtype="step", linewidth=1.6, color=_color(i), label=f"{side} ({v.size})")
            ax.set_xscale("log")
            ax.legend(fontsize=7, frameon=False)
        ax.set_xlabel("object volume (mm³)")
        ax.set_ylabel("objects")
        ax.set_title("Object volumes")
        return _svg(fig)


def _thumbnail(image: np.ndarray | None, ref: np.ndarray, pred: np.ndarray, spacing: Any, axis: int,
               index: int) -> str:
    import base64
    import io

    from matplotlib.figure import Figure

    ref_s, pred_s = np.take(ref, index, axis=axis), np.take(pred, index, axis=axis)
    background = np.take(image, index, axis=axis) if image is not None else np.zeros(ref_s.shape, np.float32)
    lo, hi = np.percentile(background, [1, 99]) if background.size else (0.0, 1.0)
    in_plane = [s for i, s in enumerate(spacing) if i != axis]
    aspect = in_plane[1] / in_plane[0]
    height_px, width_px = ref_s.shape[1] * aspect, ref_s.shape[0]
    scale = 260.0 / max(height_px, width_px, 1)
    fig = Figure(figsize=(max(1.0, width_px * scale / 100), max(1.0, height_px * scale / 100)), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(background.T, cmap="gray", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6), aspect=aspect,
              interpolation="nearest")
    for array, style in ((ref_s, "solid"), (pred_s, "dashed")):
        for k, obj in enumerate(v for v in np.unique(array) if v > 0):
            mask = (array == obj).T.astype(np.float32)
            if mask.shape[0] > 1 and mask.shape[1] > 1:
                ax.contour(mask, levels=[0.5], colors=[_color(k)], linewidths=1.2, linestyles=style)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _overlay(case: Any) -> str | None:
    from medseg.io import grid_differences, load_image

    ref, ref_image = read_label_map(case.reference)
    if case.prediction is None:
        pred = np.zeros_like(ref)
    else:
        pred, pred_image = read_label_map(case.prediction)
        pred = on_reference_grid(pred, pred_image, ref_image, True)[0]
    image = None
    if case.image is not None:
        try:
            loaded = load_image(case.image)
        except Exception:  # an unreadable image only costs the grey background
            loaded = None
        if loaded is not None and not grid_differences(loaded, ref_image):
            image = np.asarray(loaded.array)[0].astype(np.float32)
    axis = _slice_axis(case.spacing)
    other = tuple(i for i in range(ref.ndim) if i != axis)
    area = ((ref > 0) | (pred > 0)).sum(axis=other)
    if not area.any():
        return None
    return _thumbnail(image, ref, pred, case.spacing, axis, int(area.argmax()))


def _summary_table(result: InstanceEvaluation, summary: dict[str, Any]) -> str:
    head = ["class", "PQ", "SQ", "RQ", "F1", "TP", "FP", "FN", "PQ per case", "AJI per case"]
    out = ["<div class=scroll><table><thead><tr>"]
    out += [f"<th class=t>{_e(h)}</th>" if i == 0 else f"<th>{_e(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for value, name in result.row_classes.items():
        pooled = summary["pooled"][str(value)]
        stats = summary["statistics"][str(value)]
        cells = [f"<td class=t>{_e(name)}</td>"]
        cells += [f"<td>{_fmt(pooled[k])}</td>" for k in ("PQ", "SQ", "RQ", "F1")]
        cells += [f"<td>{pooled[k]}</td>" for k in ("TP", "FP", "FN")]
        pq = stats["PQ"]
        cells.append(f"<td>{_fmt(pq['mean'])} ± {_fmt(pq['std'])}</td>" if pq.get("n") else "<td>–</td>")
        aji = stats.get("AJI")
        cells.append(f"<td>{_fmt(aji['mean'])} ± {_fmt(aji['std'])}</td>" if aji and aji.get("n") else "<td></td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _case_table(result: InstanceEvaluation) -> str:
    head = ["case", "class", "status", *METRIC_KEYS, "TP", "FP", "FN", "n_ref", "n_pred"]
    out = ["<div class=scroll><table class=sortable id=cases><thead><tr>"]
    out += [f"<th class=t>{_e(h)}</th>" if i < 3 else f"<th>{_e(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in result.rows():
        cells = [f"<td class=t>{_e(row['case_id'])}</td>", f"<td class=t>{_e(row['class_name'])}</td>",
                 f"<td class=t>{_e(row['status'])}</td>"]
        for k in METRIC_KEYS:
            v = float(row[k])
            cells.append(f"<td data-v=\"{v!r}\">{_fmt(v)}</td>" if v == v else "<td data-v=\"-1\"></td>")
        cells += [f"<td>{row[k]}</td>" for k in ("TP", "FP", "FN", "n_ref", "n_pred")]
        out.append(f"<tr class={_e(row['status'])}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _object_table(result: InstanceEvaluation) -> str:
    objects = [o for c in result.cases for o in c.objects]
    head = ["case", "side", "id", "class", "voxels", "volume (mm³)", "matched id", "IoU"]
    shown = f"; the first {OBJECT_ROWS} shown" if len(objects) > OBJECT_ROWS else ""
    out = [f"<p class=meta>{len(objects)} objects{shown} (all in instances.csv).</p>"
           "<div class=scroll><table class=sortable id=objects><thead><tr>"]
    out += [f"<th class=t>{_e(h)}</th>" if i < 2 else f"<th>{_e(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for o in objects[:OBJECT_ROWS]:
        name = result.classes.get(o["class"], str(o["class"]))
        iou = f"{o['iou']:.3f}" if o["iou"] != "" else ""
        out.append(f"<tr><td class=t>{_e(o['case_id'])}</td><td class=t>{_e(o['side'])}</td><td>{o['id']}</td>"
                   f"<td>{_e(name)}</td><td>{o['voxels']}</td><td>{_fmt(float(o['volume_mm3']))}</td>"
                   f"<td>{o['matched_id']}</td><td>{iou}</td></tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def render_instance_report(result: InstanceEvaluation, *, worst: int = 5,
                           title: str = "medseg instance evaluation") -> str:
    """The report as one HTML string (inline CSS, JS, SVG plots and PNG thumbnails; nothing fetched).

    Raises:
        ImportError: matplotlib is not installed.
    """
    if not matplotlib_available():
        raise ImportError(REPORT_EXTRA_HINT)
    summary = summarize_instances(result)
    ranked = sorted(result.cases, key=lambda c: (float(c.rows[ALL_CLASSES]["PQ"]), c.case_id))[:max(worst, 0)]
    overlays = []
    for case in ranked:
        uri = _overlay(case)
        row = case.rows[ALL_CLASSES]
        caption = (f"{case.case_id} — PQ {_fmt(float(row['PQ']))}, {row['n_ref']} reference / {row['n_pred']} "
                   "predicted objects")
        body = (f"<figure><img alt='{_e(case.case_id)}' src='{uri}'><figcaption>{_e(caption)}</figcaption></figure>"
                if uri else f"<p>{_e(caption)}: no object to draw.</p>")
        overlays.append(body)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class=meta>{len(result.cases)} cases × {len(result.classes)} classes · predictions
<code>{_e(result.prediction_dir)}</code> · reference <code>{_e(result.reference)}</code> · {_e(when)}</p>
<h2>Summary</h2>
<p class=meta>PQ, SQ, RQ and F1 pooled over all cases (TP, FP, FN and IoU sums added up first); per case: mean ±
std. Objects match when they have the same class and IoU &gt; 0.5; the “all” row ignores classes (and gives AJI).</p>
{_summary_table(result, summary)}
<p class=note>No object on either side: PQ = SQ = RQ = F1 = AJI = 1 (“both empty”); objects on one side only: 0
(“missed” or “false positive”). Every case counts in every mean. See METRICS.md.</p>
<h2>Distributions</h2>
<div class=plots><div class=plot>{_pq_plot(result, "pq")}</div><div class=plot>{_volume_plot(result, "vol")}</div>
</div>
<h2>Worst cases</h2>
<p class=legend>Solid: reference objects, dashed: predicted objects (colours cycle per object).</p>
<div class=thumbs>{''.join(overlays)}</div>
<h2>All cases</h2>
<p class=meta>Click a column header to sort.</p>
{_case_table(result)}
<h2>Objects</h2>
{_object_table(result)}
<script>{_JS}</script>
</body></html>
"""
