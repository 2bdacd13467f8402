"""Pictures of label maps over their image in three planes, for checking a result without opening a viewer.

The volume is first turned to the closest RAS orientation of its affine (nibabel's ``io_orientation``; an oblique
acquisition is shown in its nearest standard planes) and drawn in radiological convention: axial and coronal views
with the patient's right on the left of the picture, anterior at the top of axial views, superior at the top of
coronal and sagittal views, anterior on the left of sagittal views, each pixel drawn with its true aspect ratio.

- :func:`write_preview` (``medseg predict --preview``): one row per label, each through the axial, coronal and
  sagittal slice where that label is largest, every label filled in its colour with its outline, a legend with the
  names;
- :func:`comparison_png` (the evaluation report's worst cases): reference and prediction outlines in two colours
  that stay apart for colour-blind readers (blue solid, orange dashed), through the slices where they disagree most.

Drawn with matplotlib's object API (the ``report`` extra), never touching the global pyplot state.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Outline colours of the reference and the prediction in comparisons (blue and orange: apart for every reader).
REFERENCE_COLOR = "#0072b2"
PREDICTION_COLOR = "#e69f00"
#: Rows drawn at most in a preview (labels beyond are still in the legend).
MAX_PREVIEW_ROWS = 12
PLANES = ("axial", "coronal", "sagittal")


def canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` (X, Y, Z) reordered and flipped to the closest RAS orientation, with its voxel sizes (mm)."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    orientation = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(np.asarray(volume), orientation)
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    order = [int(a) for a in orientation[:, 0]]
    spacing = tuple(float(sizes[order.index(axis)]) for axis in range(3))
    return out, spacing  # type: ignore[return-value]


def plane(volume: np.ndarray, name: str, index: int) -> np.ndarray:
    """One slice of a canonical (RAS) volume as a picture (row 0 at the top), in radiological convention."""
    if name == "axial":
        return volume[::-1, ::-1, index].T
    if name == "coronal":
        return volume[::-1, index, ::-1].T
    return volume[index, ::-1, ::-1].T


def _aspect(name: str, spacing: Sequence[float]) -> float:
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[name]


_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def largest_slices(mask: np.ndarray) -> dict[str, int]:
    """Per plane, the slice index where ``mask`` (canonical) has the largest area (the middle when empty)."""
    out = {}
    for name, axis in _AXIS.items():
        other = tuple(a for a in range(3) if a != axis)
        area = mask.sum(axis=other)
        out[name] = int(area.argmax()) if area.any() else mask.shape[axis] // 2
    return out


def _window(image: np.ndarray | None, modality: str = "") -> tuple[float, float]:
    if image is None or not image.size:
        return 0.0, 1.0
    if modality == "CT":
        return -160.0, 240.0  # a soft-tissue window (level 40, width 400 HU)
    finite = image[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def _figure(rows: int, panel_inches: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(3 * panel_inches, rows * panel_inches + 0.8), dpi=100)


def _rgb(color: Any) -> tuple[float, float, float]:
    if isinstance(color, str):
        text = color.lstrip("#")
        return (int(text[0:2], 16) / 255, int(text[2:4], 16) / 255, int(text[4:6], 16) / 255)
    return (color[0] / 255, color[1] / 255, color[2] / 255)


def _draw_plane(ax: Any, background: np.ndarray | None, shape: tuple[int, int], window: tuple[float, float],
                aspect: float, fills: Sequence[tuple[np.ndarray, Any]],
                outlines: Sequence[tuple[np.ndarray, Any, str]]) -> None:
    shown = background if background is not None else np.zeros(shape, dtype=np.float32)
    ax.imshow(shown, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
    for mask, color in fills:
        if mask.any():
            rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
            rgba[mask] = (*_rgb(color), 0.35)
            ax.imshow(rgba, aspect=aspect, interpolation="nearest")
    for mask, color, style in outlines:
        if mask.any() and min(mask.shape) > 1:
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[_rgb(color)], linewidths=1.6,
                       linestyles=style)
    ax.set_xticks([])
    ax.set_yticks([])


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def preview_png(image: np.ndarray | None, labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str],
                colors: Mapping[int, Any], *, title: str = "", modality: str = "") -> bytes:
    """The preview picture (see :func:`write_preview`) as PNG bytes.

    Args:
        image: ``(X, Y, Z)`` image on the label map's grid, or ``None`` (black background).
        labels: ``(X, Y, Z)`` label map.
        affine: Their RAS affine.
        names: Label value → name.
        colors: Label value → colour (``#rrggbb`` or RGB 0–255).
        title: Drawn above the panels.
        modality: ``CT`` draws the image in a soft-tissue window, anything else from its 1st to 99th percentile.
    """
    from matplotlib.patches import Patch

    lab, spacing = canonical(labels, affine)
    img = canonical(image, affine)[0].astype(np.float32) if image is not None else None
    window = _window(img, modality)
    present = [int(v) for v in np.unique(lab) if v > 0]
    rows = present[:MAX_PREVIEW_ROWS] or [0]
    fig = _figure(len(rows))
    for r, value in enumerate(rows):
        where = largest_slices(lab == value) if value else largest_slices(np.zeros(lab.shape, bool))
        for c, name in enumerate(PLANES):
            ax = fig.add_subplot(len(rows), 3, r * 3 + c + 1)
            index = where[name]
            slab = plane(lab, name, index)
            fills = [(slab == v, colors.get(v, "#ff0000")) for v in present]
            outlines = [(slab == v, colors.get(v, "#ff0000"), "solid") for v in present]
            _draw_plane(ax, None if img is None else plane(img, name, index), slab.shape, window,
                        _aspect(name, spacing), fills, outlines)
            caption = f"{name} {index + 1}/{lab.shape[_AXIS[name]]}"
            ax.set_title(f"{names.get(value, value)}: {caption}" if value else f"{caption} (nothing predicted)",
                         fontsize=9)
    handles = [Patch(facecolor=_rgb(colors.get(v, "#ff0000")), edgecolor="k", label=str(names.get(v, v)))
               for v in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.5 / fig.get_figheight(),
                        bottom=0.55 / fig.get_figheight(), wspace=0.04, hspace=0.18)
    return _png(fig)


def write_preview(image: Any, labels: Any, path: str | Path, names: Mapping[int, str],
                  descriptions: Mapping[int, Any] | None = None, *, title: str = "") -> Path:
    """Write the preview PNG of a prediction: the labels over the image in three planes, per label, with a legend.

    Args:
        image: The input image ``(C, X, Y, Z)`` (channel 0 is drawn), on the label map's grid.
        labels: The ``(1, X, Y, Z)`` label ``MetaTensor`` (its affine orients the views).
        path: The PNG file (written atomically).
        names: Label value → name.
        descriptions: Label value → :class:`~medseg.io.segment_codes.LabelDescription` (their colours).
        title: Drawn above the panels.
    """
    from medseg.errors import OutputError
    from medseg.io.segment_codes import describe_labels
    from medseg.utils.files import atomic_write

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OutputError("previews need matplotlib: pip install 'medseg[report]'", path) from None
    array = np.asarray(labels)[0]
    affine = np.asarray(getattr(labels, "affine", np.eye(4)), dtype=np.float64)
    coded = dict(descriptions or {})
    coded.update({v: d for v, d in describe_labels(names).items() if v not in coded})
    colors = {v: d.color for v, d in coded.items()}
    picture = None
    if image is not None:
        data = np.asarray(image)
        picture = data[0] if data.ndim == 4 else data
        if picture.shape != array.shape:
            picture = None
    modality = str((getattr(labels, "meta", {}) or {}).get("modality", "") or "")
    png = preview_png(picture, array, affine, names, colors, title=title, modality=modality)
    return atomic_write(Path(path), lambda h: h.write(png))


def comparison_png(image: np.ndarray | None, reference: np.ndarray, prediction: np.ndarray, affine: np.ndarray,
                   labels: Sequence[int], *, modality: str = "") -> tuple[bytes, dict[str, int]]:
    """Reference (blue, solid) and prediction (orange, dashed) outlines over the image in three planes.

    The planes go through the slices where reference and prediction disagree most (where they overlap most when
    they agree everywhere). Panels are 360 px wide.

    Returns:
        PNG bytes and the slice index (0-based, in the canonical orientation) of each plane.
    """
    ref, spacing = canonical(np.isin(reference, labels), affine)
    pred = canonical(np.isin(prediction, labels), affine)[0]
    img = canonical(image, affine)[0].astype(np.float32) if image is not None else None
    window = _window(img, modality)
    disagreement = ref != pred
    where = largest_slices(disagreement if disagreement.any() else (ref | pred))
    fig = _figure(1)
    for c, name in enumerate(PLANES):
        ax = fig.add_subplot(1, 3, c + 1)
        r_s, p_s = plane(ref, name, where[name]), plane(pred, name, where[name])
        _draw_plane(ax, None if img is None else plane(img, name, where[name]), r_s.shape, window,
                    _aspect(name, spacing), [], [(r_s, REFERENCE_COLOR, "solid"), (p_s, PREDICTION_COLOR, "dashed")])
        ax.set_title(f"{name} {where[name] + 1}/{ref.shape[_AXIS[name]]}", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.04)
    fig.set_size_inches(10.8, 3.9)
    return _png(fig), where
