"""The HTML report of an evaluation: one self-contained file (no network), readable in any browser.

It holds a per-class summary table with the empty-mask counts, one box/strip plot per metric (inline SVG), overlays
(image with reference and prediction outlines in two colours, in three planes through where they disagree most,
base64 PNG, :func:`medseg.io.overlay.comparison_png`) for the worst cases by foreground Dice, and a
sortable case × class table (a few lines of inline JavaScript). Plots are drawn with matplotlib (the ``report``
extra: ``pip install 'medseg[report]'``) through its object API, so the global pyplot backend is never touched.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medseg.evaluation.evaluate import (
    CaseResult,
    EvaluationResult,
    on_reference_grid,
    read_label_map,
    summarize,
)
from medseg.evaluation.metric_table import metric_spec
from medseg.evaluation.metrics import (
    STATUS_BOTH_EMPTY,
    STATUS_FALSE_POSITIVE,
    STATUS_MISSED,
)
from medseg.io.overlay import PREDICTION_COLOR, REFERENCE_COLOR

#: What to install when matplotlib is missing.
REPORT_EXTRA_HINT = "the HTML report needs matplotlib: pip install 'medseg[report]'"

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1400px}
h1{font-size:1.5em;margin:0 0 4px} h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:.9em} .meta code{background:#f3f3f3;padding:0 3px}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f5f8;position:sticky;top:0} td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
tr.missed td{background:#fde2e2} tr.false_positive td{background:#fff0d9} tr.both_empty td{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plot{border:1px solid #eee;padding:4px} .plot svg{display:block}
.case{margin:10px 0 18px} .thumbs{display:flex;flex-wrap:wrap;gap:10px} .thumbs figure{margin:0}
.thumbs figcaption{font-size:.8em;color:#555;text-align:center}
.thumbs img{border:1px solid #ccc;display:block;max-width:100%}
.legend span{display:inline-block;margin-right:14px} .sw{display:inline-block;width:18px;height:0;margin-right:4px;
vertical-align:middle;border-top:3px solid} .sw.d{border-top-style:dashed}
.note{background:#f7f7fb;border-left:3px solid #99a;padding:6px 10px;font-size:.9em;max-width:1000px}
.scroll{max-height:640px;max-width:100%;overflow:auto;display:inline-block} small{color:#666}
"""

_JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-v');
    return v === null ? cell.textContent.trim() : v;
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          var nx = parseFloat(x), ny = parseFloat(y);
          var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return asc ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.body.setAttribute('data-ready', '1');
})();
"""


def matplotlib_available() -> bool:
    """Whether matplotlib (the ``report`` extra) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _color(index: int) -> str:
    return _COLORS[index % len(_COLORS)]


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def _svg(fig: Any) -> str:
    """A matplotlib figure as an inline ``<svg>`` element (XML prolog and DOCTYPE removed)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def metric_plot(result: EvaluationResult, key: str, salt: str) -> str:
    """Box plot with every case as a jittered point, one box per class, for one metric (inline SVG).

    Cases where exactly one mask is empty are drawn as red crosses (their value is the documented penalty for
    distances, 0 for overlap metrics); distance axes switch to a symmetric log scale when penalties are present.
    """
    import matplotlib
    from matplotlib.figure import Figure

    labels = list(result.labels)
    data = [result.values(v, key) for v in labels]
    one_empty = [
        np.array([c.metrics[v]["status"] in (STATUS_MISSED, STATUS_FALSE_POSITIVE) for c in result.cases])
        for v in labels
    ]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt, "font.size": 9}):
        fig = Figure(figsize=(max(3.2, 1.0 + 0.9 * len(labels)), 3.0))
        ax = fig.add_subplot()
        ax.boxplot(data, positions=range(len(labels)), widths=0.55, showfliers=False, medianprops={"color": "k"})
        rng = np.random.default_rng(0)
        for i, (values, empty) in enumerate(zip(data, one_empty, strict=True)):
            x = i + rng.uniform(-0.18, 0.18, size=values.size)
            ax.scatter(x[~empty], values[~empty], s=12, color=_color(i), alpha=0.75, linewidths=0, zorder=3)
            if empty.any():
                ax.scatter(x[empty], values[empty], s=28, color="#d62728", marker="x", zorder=4, label="one mask empty")
        spec = metric_spec(key)
        if spec.unit == "mm" and any(e.any() for e in one_empty):
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([_label(result, v) for v in labels], rotation=30 if len(labels) > 4 else 0, ha="right"
                           if len(labels) > 4 else "center")
        better = "higher is better" if spec.higher_is_better else "lower is better"
        ax.set_title(f"{key}{f' ({spec.unit})' if spec.unit else ''} — {better}")
        ax.grid(axis="y", alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles[:1], names[:1], loc="best", fontsize=7, frameon=False)
        return _svg(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Overlays


def _load_overlay_volumes(case: CaseResult, result: EvaluationResult) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """Reference, prediction (on the reference grid), image array (or ``None``) and the reference image of a case."""
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
        except Exception:  # an unreadable image only costs the grey background, never the report
            loaded = None
        if loaded is not None and not grid_differences(loaded, ref_image):
            image = np.asarray(loaded.array)[0].astype(np.float32)
    return ref, pred, image, ref_image


def overlay_thumbnails(case: CaseResult, result: EvaluationResult) -> list[tuple[str, str]]:
    """The case in three planes through the slices where reference and prediction disagree most.

    Returns:
        ``[(caption, data URI)]`` (:func:`medseg.io.overlay.comparison_png`); empty when both masks are empty.
    """
    from medseg.io.overlay import comparison_png

    ref, pred, image, ref_image = _load_overlay_volumes(case, result)
    labels = [v for v in result.labels if v != 0] or list(result.labels)
    if not (np.isin(ref, labels).any() or np.isin(pred, labels).any()):
        return []
    if ref.ndim == 2:  # a 2D case: one plane, as a one-slice volume
        ref, pred = ref[..., None], pred[..., None]
        image = None if image is None else image[..., None]
    affine = np.asarray(ref_image.meta.get("affine", np.eye(4)), dtype=np.float64)
    png, where = comparison_png(image, ref, pred, affine, labels)
    caption = ("three planes through the largest disagreement (axial " f"{where['axial'] + 1}, coronal "
               f"{where['coronal'] + 1}, sagittal {where['sagittal'] + 1})")
    return [(caption, "data:image/png;base64," + base64.b64encode(png).decode("ascii"))]


# ---------------------------------------------------------------------------------------------------------------------
# The page


def _summary_table(result: EvaluationResult, summary: dict[str, Any]) -> str:
    head = ["class", *result.metric_keys]
    head += ["cases", "ok", "both empty", "missed", "false positive"]
    out = ["<div class=scroll><table><thead><tr>", *(f"<th class=t>{_e(h)}</th>" if i == 0 else f"<th>{_e(h)}</th>"
                                   for i, h in enumerate(head)), "</tr></thead><tbody>"]
    rows: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
        (_label(result, v), summary["statistics"][str(v)], summary["counts"][str(v)]) for v in result.labels
    ]
    if len(result.labels) > 1:
        rows.append(("foreground (per-case mean)", summary["foreground_statistics"], None))
    for name, stats, counts in rows:
        cells = [f"<td class=t>{_e(name)}</td>"]
        cells += [
            f"<td>{_fmt(stats[k]['mean'])} ± {_fmt(stats[k]['std'])}<br><small>median {_fmt(stats[k]['median'])}"
            "</small></td>"
            for k in result.metric_keys
        ]
        if counts is None:
            cells += ["<td></td>"] * 5
        else:
            cells += [f"<td>{counts[k]}</td>" for k in ("cases", "ok", STATUS_BOTH_EMPTY, STATUS_MISSED,
                                                        STATUS_FALSE_POSITIVE)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _label(result: EvaluationResult, value: int) -> str:
    name = result.labels[value]
    return name if name == str(value) else f"{value} {name}"


def _case_table(result: EvaluationResult) -> str:
    keys = result.metric_keys
    head = ["case", "label", "status", *keys, "n_ref", "n_pred", "TP", "FP", "FN"]
    out = ['<div class=scroll><table class=sortable id=cases><thead><tr>']
    out += [f"<th class=t>{_e(h)}</th>" if i < 3 else f"<th>{_e(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in result.rows():
        cells = [
            f"<td class=t>{_e(row['case_id'])}</td>",
            f"<td class=t data-v=\"{row['label']}\">{_e(_label(result, row['label']))}</td>",
            f"<td class=t>{_e(row['status'])}</td>",
        ]
        cells += [f"<td data-v=\"{float(row[k])!r}\">{_fmt(float(row[k]))}</td>" for k in keys]
        cells += [f"<td data-v=\"{row[k]}\">{row[k]}</td>" for k in ("n_ref", "n_pred", "TP", "FP", "FN")]
        out.append(f"<tr class={_e(row['status'])}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _worst_cases_section(result: EvaluationResult, worst: int) -> str:
    if worst <= 0 or "Dice" not in result.metric_keys:
        return "<p>No overlays (they rank cases by Dice; add dice to the metrics).</p>" if worst > 0 else ""
    ranked = sorted(result.cases, key=lambda c: (c.foreground_dice, c.case_id))[:worst]
    fg_labels = [v for v in result.labels if v != 0] or list(result.labels)
    legend = ", ".join(_e(result.labels[v]) for v in fg_labels)
    parts = [
        f"<p class=legend><span><i class=sw style='border-color:{REFERENCE_COLOR}'></i>reference (solid)</span>"
        f"<span><i class='sw d' style='border-color:{PREDICTION_COLOR}'></i>prediction (dashed)</span> "
        f"outlines of the foreground ({legend}), three planes through where they disagree most.</p>",
    ]
    for case in ranked:
        thumbs = overlay_thumbnails(case, result)
        image_note = "" if case.image is not None else " (no image: pass --images or use a manifest)"
        per_class = ", ".join(f"{_e(result.labels[v])} {_fmt(float(case.metrics[v]['Dice']))} "
                              f"({_e(case.metrics[v]['status'])})" for v in fg_labels)
        parts.append(f"<div class=case><h3>{_e(case.case_id)} — foreground Dice {_fmt(case.foreground_dice)}</h3>"
                     f"<p class=meta>Dice per class: {per_class}{_e(image_note)}</p><div class=thumbs>")
        if not thumbs:
            parts.append("<p>Both masks empty in every class: nothing to draw.</p>")
        for caption, uri in thumbs:
            parts.append(f"<figure><img alt='{_e(case.case_id)} {_e(caption)}' src='{uri}'>"
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        parts.append("</div></div>")
    return "".join(parts)


def render_report(result: EvaluationResult, *, worst: int = 5, title: str = "medseg evaluation") -> str:
    """The report as one HTML string (inline CSS, JS, SVG plots and PNG thumbnails; nothing fetched).

    Args:
        result: The evaluation.
        worst: How many of the worst cases (lowest mean foreground Dice) get overlay thumbnails.
        title: Page title.

    Raises:
        ImportError: matplotlib is not installed (:data:`REPORT_EXTRA_HINT`).
    """
    if not matplotlib_available():
        raise ImportError(REPORT_EXTRA_HINT)
    summary = summarize(result)
    plots = "".join(
        f"<div class=plot>{metric_plot(result, key, salt=f'm{i}')}</div>" for i, key in enumerate(result.metric_keys)
    )
    pairing = result.pairing
    notes = []
    if pairing.missing_predictions:
        what = "evaluated as empty predictions" if pairing.missing == "empty" else "left out"
        notes.append(f"{len(pairing.missing_predictions)} references had no prediction ({what}): "
                     f"{_e(', '.join(pairing.missing_predictions[:20]))}")
    if pairing.unpaired_predictions:
        notes.append(f"{len(pairing.unpaired_predictions)} predictions had no reference (not evaluated): "
                     f"{_e(', '.join(pairing.unpaired_predictions[:20]))}")
    resampled = [c.case_id for c in result.cases if c.resampled]
    if resampled:
        notes.append(f"{len(resampled)} predictions were resampled onto the reference grid (nearest neighbour)")
    reoriented = [c.case_id for c in result.cases if c.reoriented]
    if reoriented:
        notes.append(f"{len(reoriented)} predictions were stored in another axis order on the reference's grid and "
                     "were reoriented losslessly")
    tolerance = ", ".join(f"{t:g}" for t in result.nsd_tolerances_mm)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes_html = "".join(f"<p class=note>{n}</p>" for n in notes)
    tolerance_text = _e(tolerance) if tolerance else "–"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class=meta>{len(result.cases)} cases × {len(result.labels)} classes
· predictions <code>{_e(result.prediction_dir)}</code> · reference <code>{_e(result.reference)}</code> · {_e(when)}</p>
{notes_html}
<h2>Summary</h2>
<p class=meta>Per class: mean ± std over cases, and the median.</p>
{_summary_table(result, summary)}
<p class=note>Every case counts in every mean. Both masks empty: Dice = IoU = NSD = 1, distances 0 (“both empty”).
Exactly one empty: Dice = IoU = NSD = 0 and HD/HD95/ASSD = the image diagonal in mm (“missed”: reference present,
prediction empty; “false positive”: the reverse). Surfaces are border voxels; HD95 is the larger of the two directed
95th percentiles; ASSD pools both directions; NSD tolerance {tolerance_text} mm. See METRICS.md.</p>
<h2>Distributions</h2>
<div class=plots>{plots}</div>
<h2>Worst cases</h2>
{_worst_cases_section(result, worst)}
<h2>All cases</h2>
<p class=meta>Click a column header to sort.</p>
{_case_table(result)}
<script>{_JS}</script>
</body></html>
"""


def write_report(result: EvaluationResult, path: str | Path, *, worst: int = 5) -> Path:
    """Write the HTML report (:func:`render_report`) to ``path``.

    Raises:
        ImportError: matplotlib is not installed (:data:`REPORT_EXTRA_HINT`).
    """
    from medseg.utils.files import atomic_text

    return atomic_text(path, render_report(result, worst=worst))
