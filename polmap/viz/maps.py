"""Polarization maps: RGB composition, domain walls and Plotly figures.

Pure functions of arrays. The figure builders return ``plotly.graph_objects.Figure``
objects that the dashboard hands to ``st.plotly_chart``; nothing here imports
streamlit.

Conventions: positions are ``(row, col)``; on figures ``x`` runs along columns
and ``y`` along rows (downwards), both in calibrated real-space units when a
:class:`~polmap.io.dataset.Calibration` with ``real_step`` is given, else in scan
pixels. Directions: ``+x`` (increasing column) is hue 0 deg, ``+y``
(increasing row, down) is hue 90 deg.

Every scatter trace of :func:`map_figure` and :func:`image_figure` carries
``customdata[:, 0:2] = (row, col)``, so a click or box selection returned by
``st.plotly_chart(on_select="rerun")`` maps straight back to scan positions
(see :func:`selected_positions`).
"""

from __future__ import annotations

import base64
import colorsys
import io
import math
import os
import re
from collections import defaultdict
from typing import IO, Any, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image, PngImagePlugin

from polmap.io.dataset import Calibration
from polmap.analysis.uncertainty import NAMES as _UNCERTAINTY_NAMES
from polmap.analysis.uncertainty import normalised_entropy
from polmap.analysis.walls import scan_step

# What the map's uncertainty is, by name, wherever it is shown.
UNCERTAINTY_NAME = _UNCERTAINTY_NAMES["entropy"]

__all__ = [
    "PAPER_REFERENCE",
    "accuracy_vs_labels_figure",
    "colour_wheel",
    "curves_figure",
    "direction_color",
    "direction_rgb",
    "draw_mask",
    "export_png",
    "image_figure",
    "label_rgb",
    "legend_figure",
    "map_figure",
    "parse_color",
    "pattern_figure",
    "rgb_map",
    "robust_uint8",
    "selected_positions",
]

#: The paper's headline result, for :func:`accuracy_vs_labels_figure`.
PAPER_REFERENCE: dict[str, Any] = {"n_labels": 50, "accuracy": 0.969, "name": "paper: 96.9 % with 50 adaptive labels"}

#: Scans up to this many positions get the per-pixel click/hover overlay.
MAX_PICK_POINTS = 256 * 256

_HEX6 = re.compile(r"^#([0-9a-fA-F]{6})$")
_HEX3 = re.compile(r"^#([0-9a-fA-F]{3})$")
_RGBFN = re.compile(r"^rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)$")


# --------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------
def parse_color(color: Any) -> tuple[int, int, int]:
    """An ``(r, g, b)`` tuple of ints 0-255 from ``"#rrggbb"``, ``"#rgb"``, ``"rgb(r, g, b)"`` or a 3-sequence.

    Raises
    ------
    ValueError
        If the colour cannot be read.
    """
    if isinstance(color, str):
        s = color.strip()
        if m := _HEX6.match(s):
            h = m.group(1)
            return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
        if m := _HEX3.match(s):
            return tuple(int(ch * 2, 16) for ch in m.group(1))  # type: ignore[return-value]
        if m := _RGBFN.match(s):
            vals = [float(v) for v in m.groups()]
            if all(0 <= v <= 255 for v in vals):
                return tuple(int(round(v)) for v in vals)  # type: ignore[return-value]
        raise ValueError(f"cannot read colour {color!r}; use '#rrggbb' or 'rgb(r, g, b)'")
    try:
        vals = [float(v) for v in color]
    except TypeError:
        raise ValueError(f"cannot read colour {color!r}; use '#rrggbb' or (r, g, b)") from None
    if len(vals) != 3 or not all(0 <= v <= 255 for v in vals):
        raise ValueError(f"an (r, g, b) colour needs three values in 0..255, found {color!r}")
    return tuple(int(round(v)) for v in vals)  # type: ignore[return-value]


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def _color_table(class_colors: Any, n: int | None = None) -> np.ndarray:
    """``(K, 3)`` float table from a list of colours, a ``(K, 3)`` array or anything with ``.colors``."""
    if hasattr(class_colors, "colors"):  # a polmap.labels.ClassSet
        class_colors = class_colors.colors
    if class_colors is None:
        raise ValueError("class_colors are required (one colour per class)")
    table = np.array([parse_color(c) for c in class_colors], dtype=np.float64).reshape(-1, 3)
    if n is not None and len(table) < n:
        raise ValueError(f"{n} classes but only {len(table)} class colours; give one colour per class")
    return table


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # Round half up so 127.5 -> 128 regardless of numpy's round-half-even.
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (all in [0, 1]) to float RGB in [0, 1], shape ``h.shape + (3,)``."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.empty(h.shape + (3,))
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        out[..., 0] = np.where(m, r, out[..., 0])
        out[..., 1] = np.where(m, g, out[..., 1])
        out[..., 2] = np.where(m, b, out[..., 2])
    return out


def direction_color(angle_deg: float, *, saturation: float = 1.0, value: float = 1.0) -> str:
    """Colour-wheel colour of an in-plane direction.

    Parameters
    ----------
    angle_deg : float
        Direction in degrees: ``+x`` (increasing column) 0, ``+y`` (increasing
        row, down in an image) 90, ``-x`` 180, ``-y`` 270.
    saturation, value : float
        HSV saturation and value in [0, 1].

    Returns
    -------
    str
        ``"#rrggbb"``; hue equals the angle (same wheel as ``ClassSet.signed``).
    """
    r, g, b = colorsys.hsv_to_rgb((float(angle_deg) % 360.0) / 360.0, saturation, value)
    return _hex([int(round(c * 255)) for c in (r, g, b)])


def direction_rgb(vectors: np.ndarray, *, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-wheel image of a 2-D vector field (polarization, centre-of-mass shift).

    Parameters
    ----------
    vectors : ndarray, shape (..., 2)
        ``(v_row, v_col)`` per position.
    max_magnitude : float, optional
        Magnitude shown at full brightness; default the 99th percentile of
        the magnitudes (robust to a few hot positions).

    Returns
    -------
    ndarray of uint8, shape (..., 3)
        Hue = direction (``+x`` red, ``+y`` yellow-green ... as
        :func:`direction_color`), value = magnitude / ``max_magnitude``
        (clipped to 1); NaN vectors are black.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[-1] != 2:
        raise ValueError(f"vectors must have shape (..., 2) = (v_row, v_col), found {v.shape}")
    mag = np.hypot(v[..., 0], v[..., 1])
    if max_magnitude is None:
        finite = mag[np.isfinite(mag)]
        max_magnitude = float(np.percentile(finite, 99)) if finite.size else 1.0
    scale = max_magnitude if max_magnitude and max_magnitude > 0 else 1.0
    hue = np.mod(np.degrees(np.arctan2(v[..., 0], v[..., 1])), 360.0) / 360.0
    val = np.clip(np.nan_to_num(mag / scale), 0.0, 1.0)
    rgb = _hsv_to_rgb(np.nan_to_num(hue), np.ones_like(val), val)
    return _to_uint8(rgb * 255.0)


def colour_wheel(size: int = 128, *, background: str = "#ffffff") -> np.ndarray:
    """The colour wheel used by :func:`direction_rgb`, as an image.

    Row index grows downwards like a scan, so the wheel's ``+y`` (90 deg) is
    at the bottom; brightness grows from black at the centre to full at the rim.

    Returns
    -------
    ndarray of uint8, shape (size, size, 3)
    """
    if size < 3:
        raise ValueError(f"size must be >= 3, found {size}")
    c = (size - 1) / 2.0
    rr, cc = np.mgrid[:size, :size] - c
    vec = np.stack([rr, cc], axis=-1) / c
    img = direction_rgb(vec, max_magnitude=1.0)
    img[np.hypot(rr, cc) > c] = parse_color(background)
    return img


# --------------------------------------------------------------------------------------
# RGB maps
# --------------------------------------------------------------------------------------
def _check_probabilities(probabilities: Any) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] < 1:
        raise ValueError(f"probabilities must have shape (rows, cols, K), found {p.shape}")
    return p


def rgb_map(
    probabilities: np.ndarray,
    class_colors: Any = None,
    *,
    mode: str = "blend",
    uncertainty: np.ndarray | None = None,
    fade: float = 0.0,
    fade_to: str = "#ffffff",
    missing_color: str = "#000000",
) -> np.ndarray:
    """Compose class probabilities into an RGB polarization map.

    Parameters
    ----------
    probabilities : ndarray, shape (R, C, K)
        Class probabilities per scan position (NaN where not predicted).
    class_colors : sequence of colours, (K, 3) array or ClassSet
        One colour per class (``mode="blend"``); ignored by ``mode="paper"``.
    mode : {"blend", "paper"}
        ``blend``: each class colour weighted by its probability (the
        probabilities are renormalised to sum 1). ``paper``: the paper's
        direct softmax -> RGB, ``R = p[0]`` (na), ``G = p[1]`` (vertical),
        ``B = p[2]`` (horizontal), times 255; needs exactly 3 classes.
    uncertainty : ndarray, shape (R, C), optional
        Per-position uncertainty in [0, 1] used for fading; default the
        normalised entropy of ``probabilities``.
    fade : float
        0 (no fading) to 1: a position with uncertainty ``u`` moves
        ``fade * u`` of the way towards ``fade_to``.
    fade_to : str
        Colour uncertain positions fade towards (white; ``"#808080"`` for grey).
    missing_color : str
        Colour of positions whose probabilities are NaN or all zero.

    Returns
    -------
    ndarray of uint8, shape (R, C, 3)
    """
    p = _check_probabilities(probabilities)
    R, C, K = p.shape
    if not 0.0 <= float(fade) <= 1.0:
        raise ValueError(f"fade must be in [0, 1], found {fade}")
    finite = np.isfinite(p).all(axis=2)
    q = np.where(finite[..., None], np.clip(p, 0.0, None), 0.0)
    total = q.sum(axis=2)
    missing = ~finite | (total <= 0)
    if mode == "blend":
        table = _color_table(class_colors, K)[:K]
        rgb = (q / np.where(total > 0, total, 1.0)[..., None]) @ table
    elif mode == "paper":
        if K != 3:
            raise ValueError(f"mode='paper' writes 3 probabilities into R, G, B and needs K = 3 classes, found K = {K}")
        rgb = np.clip(q, 0.0, 1.0) * 255.0
    else:
        raise ValueError(f"unknown mode {mode!r}; choose 'blend' or 'paper'")
    if fade > 0:
        u = normalised_entropy(p) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
        if u.shape != (R, C):
            raise ValueError(f"uncertainty must have shape {(R, C)}, found {u.shape}")
        a = (float(fade) * np.clip(np.nan_to_num(u, nan=1.0), 0.0, 1.0))[..., None]
        rgb = rgb * (1.0 - a) + np.asarray(parse_color(fade_to), dtype=np.float64) * a
    out = _to_uint8(rgb)
    out[missing] = parse_color(missing_color)
    return out


def label_rgb(label_map: np.ndarray, class_colors: Any, *, missing_color: str = "#000000") -> np.ndarray:
    """RGB image of a label map (labels, ground truth, argmax predictions).

    Parameters
    ----------
    label_map : ndarray of int, shape (R, C)
        Class index per position, negative where unknown.
    class_colors : sequence of colours, (K, 3) array or ClassSet

    Returns
    -------
    ndarray of uint8, shape (R, C, 3)
    """
    lab = np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"label_map must be 2-D (rows, cols), found shape {lab.shape}")
    table = _color_table(class_colors)
    if lab.size and lab.max() >= len(table):
        raise ValueError(f"label_map has class {int(lab.max())} but only {len(table)} class colours")
    out = np.empty(lab.shape + (3,), dtype=np.uint8)
    out[:] = parse_color(missing_color)
    known = lab >= 0
    out[known] = _to_uint8(table[lab[known].astype(int)])
    return out


def draw_mask(rgb: np.ndarray, mask: np.ndarray, color: str = "#000000", alpha: float = 1.0) -> np.ndarray:
    """A copy of ``rgb`` with ``mask`` positions painted ``color`` (e.g. walls before PNG export).

    Parameters
    ----------
    rgb : ndarray of uint8, shape (R, C, 3)
    mask : ndarray of bool, shape (R, C)
    color : str
    alpha : float
        Opacity of the paint in [0, 1].

    Returns
    -------
    ndarray of uint8, shape (R, C, 3)
    """
    img = np.asarray(rgb)
    m = np.asarray(mask, dtype=bool)
    if img.ndim != 3 or img.shape[2] != 3 or m.shape != img.shape[:2]:
        raise ValueError(f"need rgb (R, C, 3) and mask (R, C); found {img.shape} and {m.shape}")
    out = img.astype(np.float64)
    out[m] = out[m] * (1 - alpha) + np.asarray(parse_color(color), dtype=np.float64) * alpha
    return _to_uint8(out)


# --------------------------------------------------------------------------------------
# Domain walls
# --------------------------------------------------------------------------------------
def _png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_layout(fig: go.Figure, shape: tuple[int, int], step: float, units: str, title: str | None) -> None:
    R, C = shape
    fig.update_xaxes(
        title_text=f"x ({units})", range=[-0.5 * step, (C - 0.5) * step], constrain="domain",
        showgrid=False, zeroline=False,
    )
    # Rows grow downwards as in the scan; scale ratio 1 keeps pixels square.
    fig.update_yaxes(
        title_text=f"y ({units})", range=[(R - 0.5) * step, -0.5 * step], scaleanchor="x", scaleratio=1,
        constrain="domain", showgrid=False, zeroline=False,
    )
    fig.update_layout(
        title=title, hovermode="closest", clickmode="event+select", dragmode="zoom",
        margin=dict(l=60, r=20, t=40 if title else 10, b=50), plot_bgcolor="white",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, bgcolor="rgba(255,255,255,0.6)"),
    )


def _positions(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what} positions must have shape (N, 2) of (row, col), found {arr.shape}")
    return arr.astype(np.int64)


def _add_pick_overlay(
    fig: go.Figure, shape: tuple[int, int], step: float, units: str,
    columns: list[tuple[str, np.ndarray, str]], percent: bool = False,
) -> None:
    """Invisible marker on every position: hover text and click/box selection with (row, col).

    ``percent=True`` stores the columns (values in [0, 1]) as integer percent
    in a uint16 ``customdata``: a third of the float payload for 256 x 256.
    """
    R, C = shape
    rr, cc = np.divmod(np.arange(R * C), C)
    values = [np.asarray(v, np.float64).ravel() for _, v, _ in columns]
    if percent and all(np.isfinite(v).all() for v in values) and max(R, C) < 2**16:
        data = np.stack([rr, cc] + [np.floor(100 * np.clip(v, 0, 1) + 0.5) for v in values], axis=1).astype(np.uint16)
        fmts = [" %" for _ in columns]
        cols_fmt = [""] * len(columns)
    else:
        data = np.stack([rr, cc] + values, axis=1).astype(np.float32)
        fmts = ["" for _ in columns]
        cols_fmt = [":" + fmt for _, _, fmt in columns]
    lines = ["row %{customdata[0]}, col %{customdata[1]}", f"x = %{{x:.4g}} {units}, y = %{{y:.4g}} {units}"]
    lines += [
        f"{label}: %{{customdata[{i + 2}]{cf}}}{unit}"
        for i, ((label, _, _), cf, unit) in enumerate(zip(columns, cols_fmt, fmts))
    ]
    fig.add_trace(
        go.Scattergl(
            x=(cc * step).astype(np.float32), y=(rr * step).astype(np.float32), mode="markers",
            marker=dict(size=max(2.0, min(12.0, 600.0 / max(R, C))), color="rgba(0,0,0,0)", opacity=0),
            # A picked position shows as a white dot: feedback that the click landed.
            selected=dict(marker=dict(opacity=1, color="white")), unselected=dict(marker=dict(opacity=0)),
            customdata=data, hovertemplate="<br>".join(lines) + "<extra></extra>",
            name="positions", showlegend=False,
        )
    )


def _add_raster_overlay(
    fig: go.Figure, values: np.ndarray, step: float, name: str, colorscale: list, visible: bool | str,
) -> None:
    # uint8 0..255: an eighth of float64's payload, and plenty for a display layer.
    fig.add_trace(
        go.Heatmap(
            z=_to_uint8(np.clip(values, 0, 1) * 255.0), x0=0, dx=step, y0=0, dy=step, colorscale=colorscale,
            zmin=0, zmax=255, showscale=False,
            hoverinfo="skip", name=name, showlegend=True, visible=visible,
        )
    )


def _add_marks(
    fig: go.Figure, step: float, labelled: Any, suggestions: Any, class_names: Sequence[str] | None,
) -> None:
    if labelled is not None:
        if isinstance(labelled, Mapping):
            pos, cls, colors = labelled["positions"], labelled["classes"], labelled.get("colors")
        else:
            pos, cls, colors = (tuple(labelled) + (None,))[:3]
        pos = _positions(pos, "labelled")
        cls = np.asarray(cls, dtype=np.int64).reshape(-1)
        if len(cls) != len(pos):
            raise ValueError(f"labelled: {len(pos)} positions but {len(cls)} classes")
        table = _color_table(colors) if colors is not None else None
        for k in np.unique(cls):
            sel = cls == k
            nm = class_names[k] if class_names is not None and k < len(class_names) else str(k)
            col = _hex(table[k]) if table is not None and k < len(table) else None
            fig.add_trace(
                go.Scatter(
                    x=pos[sel, 1] * step, y=pos[sel, 0] * step, mode="markers", name=f"labelled: {nm}",
                    marker=dict(size=9, color=col, line=dict(color="white", width=1.5), symbol="circle"),
                    unselected=dict(marker=dict(opacity=1)),  # never dim labels when a position is picked
                    customdata=np.stack([pos[sel, 0], pos[sel, 1]], axis=1),
                    hovertemplate=f"labelled {nm}<br>row %{{customdata[0]}}, col %{{customdata[1]}}<extra></extra>",
                )
            )
    if suggestions is not None:
        pos = _positions(suggestions, "suggestions")
        rank = np.arange(1, len(pos) + 1)
        fig.add_trace(
            go.Scatter(
                x=pos[:, 1] * step, y=pos[:, 0] * step, mode="markers+text", name="suggested",
                text=[str(i) for i in rank], textposition="top right",
                textfont=dict(color="white", size=13, shadow="1px 1px 2px black"),
                marker=dict(size=13, symbol="circle-open", color="white", line=dict(width=3)),
                unselected=dict(marker=dict(opacity=1), textfont=dict(color="white")),
                customdata=np.stack([pos[:, 0], pos[:, 1], rank], axis=1) if len(pos) else None,
                hovertemplate="suggestion %{customdata[2]}<br>row %{customdata[0]}, col %{customdata[1]}<extra></extra>",
            )
        )


_WALL_SCALE = [[0.0, "rgba(0,0,0,0)"], [0.5, "rgba(0,0,0,0)"], [0.5001, "rgba(0,0,0,1)"], [1.0, "rgba(0,0,0,1)"]]
_FADE_SCALE = [[0.0, "rgba(255,255,255,0)"], [1.0, "rgba(255,255,255,0.9)"]]


def map_figure(
    rgb: np.ndarray,
    *,
    calibration: Calibration | None = None,
    probabilities: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    uncertainty: np.ndarray | None = None,
    walls: np.ndarray | None = None,
    labelled: Any = None,
    suggestions: np.ndarray | None = None,
    title: str | None = None,
    show_uncertainty: bool = False,
    show_walls: bool = True,
    pick_overlay: bool | None = None,
) -> go.Figure:
    """The interactive polarization map.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (R, C, 3)
        From :func:`rgb_map` (or :func:`label_rgb`, :func:`direction_rgb`).
    calibration : Calibration, optional
        Axes in ``real_units`` when ``real_step`` is set, else scan pixels.
    probabilities : ndarray, shape (R, C, K), optional
        Shown on hover, one line per class.
    class_names : sequence of str, optional
        Names for hover lines and labelled markers.
    uncertainty : ndarray, shape (R, C), optional
        In [0, 1]; shown on hover and as a white-fade layer ("uncertainty"
        in the legend, hidden until clicked unless ``show_uncertainty``).
    walls : ndarray of bool, shape (R, C), optional
        Drawn as a pixel-exact black layer ("walls" in the legend).
    labelled : (positions, classes[, colors]) or dict, optional
        Labelled positions ``(N, 2)``, their class indices, and the class
        colours (indexed by class); one legend entry per class.
    suggestions : ndarray of int, shape (n, 2), optional
        Positions to label next, numbered 1..n in order.
    title : str, optional
    show_uncertainty, show_walls : bool
        Initial visibility of those layers (both toggle from the legend).
    pick_overlay : bool, optional
        Add an invisible marker at every position carrying the hover text and
        ``customdata = (row, col, p_0.., uncertainty)`` (probabilities and
        uncertainty in integer percent) so that
        ``st.plotly_chart(on_select="rerun")`` returns clicked and
        box-selected positions. Default: on when the scan has at most
        :data:`MAX_PICK_POINTS` positions (WebGL, built in well under a second
        for 256 x 256).

    Returns
    -------
    plotly.graph_objects.Figure
        Traces in order: ``go.Image`` ("map"), optional "uncertainty" and
        "walls" heatmap layers, the "positions" pick overlay, labelled
        markers, "suggested" markers.
    """
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb must have shape (R, C, 3), found {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (use rgb_map), found {img.dtype}")
    R, C = img.shape[:2]
    step, units = scan_step(calibration)
    fig = go.Figure()
    fig.add_trace(go.Image(source=_png_data_uri(img), x0=0, dx=step, y0=0, dy=step, hoverinfo="skip", name="map"))
    if uncertainty is not None:
        unc = np.asarray(uncertainty, dtype=np.float64)
        if unc.shape != (R, C):
            raise ValueError(f"uncertainty must have shape {(R, C)}, found {unc.shape}")
        _add_raster_overlay(fig, np.clip(unc, 0, 1), step, UNCERTAINTY_NAME, _FADE_SCALE,
                            True if show_uncertainty else "legendonly")
    if walls is not None:
        w = np.asarray(walls, dtype=bool)
        if w.shape != (R, C):
            raise ValueError(f"walls must have shape {(R, C)}, found {w.shape}")
        _add_raster_overlay(fig, w.astype(np.float32), step, "walls", _WALL_SCALE,
                            True if show_walls else "legendonly")
    if pick_overlay is None:
        pick_overlay = R * C <= MAX_PICK_POINTS
    if pick_overlay:
        columns: list[tuple[str, np.ndarray, str]] = []
        if probabilities is not None:
            p = _check_probabilities(probabilities)
            if p.shape[:2] != (R, C):
                raise ValueError(f"probabilities must have shape {(R, C)} + (K,), found {p.shape}")
            for k in range(p.shape[2]):
                nm = class_names[k] if class_names is not None and k < len(class_names) else f"class {k}"
                columns.append((f"p({nm})", p[..., k], ".2f"))
        if uncertainty is not None:
            columns.append((UNCERTAINTY_NAME, np.asarray(uncertainty), ".2f"))
        _add_pick_overlay(fig, (R, C), step, units, columns, percent=True)
    _add_marks(fig, step, labelled, suggestions, class_names)
    _image_layout(fig, (R, C), step, units, title)
    return fig


def _robust_range(z: np.ndarray, percentile: tuple[float, float]) -> tuple[float, float]:
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, percentile)
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def robust_uint8(image: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """An image scaled to uint8 between two percentiles (a hot pixel does not set the range).

    Parameters
    ----------
    image : ndarray
        Any shape; NaN is drawn as the low end.
    lo_pct, hi_pct : float
        Percentiles of the finite values mapped to 0 and 255.

    Returns
    -------
    ndarray of uint8, same shape
    """
    a = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = _robust_range(a, (lo_pct, hi_pct))
    return _to_uint8(np.clip((np.where(finite, a, lo) - lo) / (hi - lo), 0, 1) * 255.0)


def image_figure(
    image: np.ndarray,
    *,
    calibration: Calibration | None = None,
    colorscale: str = "gray",
    percentile: tuple[float, float] = (0.5, 99.5),
    walls: np.ndarray | None = None,
    labelled: Any = None,
    suggestions: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    value_name: str = "intensity",
    pick_overlay: bool | None = None,
) -> go.Figure:
    """A scalar scan image (virtual BF/ADF, uncertainty, ...) with the same overlays as :func:`map_figure`.

    Parameters
    ----------
    image : ndarray, shape (R, C)
    calibration, walls, labelled, suggestions, class_names, title, pick_overlay
        As in :func:`map_figure`.
    colorscale : str
        Plotly colour scale.
    percentile : (float, float)
        Display range: these percentiles of the finite values (robust to hot pixels).
    value_name : str
        Label of the value on hover.

    Returns
    -------
    plotly.graph_objects.Figure
        ``go.Heatmap`` ("image"), optional "walls" layer, "positions" pick
        overlay with ``customdata = (row, col, value)``, markers.
    """
    z = np.asarray(image, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"image must be 2-D (rows, cols), found shape {z.shape}")
    R, C = z.shape
    step, units = scan_step(calibration)
    lo, hi = _robust_range(z, percentile)
    fig = go.Figure(
        go.Heatmap(
            z=z.astype(np.float32), x0=0, dx=step, y0=0, dy=step, colorscale=colorscale, zmin=lo, zmax=hi,
            showscale=False, hoverinfo="skip", name="image",
        )
    )
    if walls is not None:
        w = np.asarray(walls, dtype=bool)
        if w.shape != (R, C):
            raise ValueError(f"walls must have shape {(R, C)}, found {w.shape}")
        _add_raster_overlay(fig, w.astype(np.float32), step, "walls", _WALL_SCALE, True)
    if pick_overlay is None:
        pick_overlay = R * C <= MAX_PICK_POINTS
    if pick_overlay:
        _add_pick_overlay(fig, (R, C), step, units, [(value_name, z, ".4g")])
    _add_marks(fig, step, labelled, suggestions, class_names)
    _image_layout(fig, (R, C), step, units, title)
    return fig


def pattern_figure(
    pattern: np.ndarray,
    *,
    log: bool = True,
    detector_overlays: Iterable[Mapping[str, Any]] | None = None,
    calibration: Calibration | None = None,
    colorscale: str = "inferno",
    title: str | None = None,
) -> go.Figure:
    """One diffraction pattern, with virtual-detector outlines.

    Parameters
    ----------
    pattern : ndarray, shape (Qr, Qc)
    log : bool
        Show ``log1p(pattern - min)`` (weak disks and ghost reflections stay visible).
    detector_overlays : iterable of dict, optional
        Each ``{"name": "BF", "center": (row, col), "radius": r}`` (a disk) or
        ``{"name": "ADF", "center": (row, col), "inner": r1, "outer": r2}``
        (an annulus), in detector pixels; optional ``"color"``.
    calibration : Calibration, optional
        With ``reciprocal_step``, axes are in ``reciprocal_units`` measured
        from the detector centre; else detector pixels from the corner.
    colorscale : str
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        A ``go.Heatmap`` (hover: detector row/col and raw counts in
        ``customdata``) and one circle shape per detector edge.
    """
    raw = np.asarray(pattern, dtype=np.float64)
    if raw.ndim != 2:
        raise ValueError(f"pattern must be 2-D (det_rows, det_cols), found shape {raw.shape}")
    Qr, Qc = raw.shape
    z = np.log1p(np.clip(raw - np.nanmin(raw), 0, None)) if log else raw
    if calibration is not None and calibration.reciprocal_step:
        s, units = float(calibration.reciprocal_step), calibration.reciprocal_units
        r0, c0 = (Qr - 1) / 2.0, (Qc - 1) / 2.0
    else:
        s, units, r0, c0 = 1.0, "px", 0.0, 0.0
    fig = go.Figure(
        go.Heatmap(
            z=z.astype(np.float32), x0=-c0 * s, dx=s, y0=-r0 * s, dy=s, colorscale=colorscale, showscale=False,
            customdata=raw.astype(np.float32), name="pattern",
            hovertemplate=f"q_x = %{{x:.3g}} {units}, q_y = %{{y:.3g}} {units}<br>counts %{{customdata:.4g}}<extra></extra>",
        )
    )
    palette = ["#00e5ff", "#76ff03", "#ffea00", "#ff4081"]
    for i, ov in enumerate(detector_overlays or []):
        if "center" not in ov:
            raise ValueError(f"detector overlay {ov!r} needs a 'center' (row, col)")
        cr, cc = (float(v) for v in ov["center"])
        radii = [ov["radius"]] if "radius" in ov else [ov.get("inner"), ov.get("outer")]
        radii = [float(r) for r in radii if r is not None and float(r) > 0]
        if not radii:
            raise ValueError(f"detector overlay {ov!r} needs 'radius' or 'inner'/'outer' > 0")
        color = ov.get("color", palette[i % len(palette)])
        x, y = (cc - c0) * s, (cr - r0) * s
        for r in radii:
            fig.add_shape(type="circle", x0=x - r * s, x1=x + r * s, y0=y - r * s, y1=y + r * s,
                          line=dict(color=color, width=2))
        if ov.get("name"):
            fig.add_annotation(x=x, y=y - max(radii) * s, text=str(ov["name"]), showarrow=False,
                               yshift=10, font=dict(color=color))
    fig.update_xaxes(title_text=f"q_x ({units})", range=[(-0.5 - c0) * s, (Qc - 0.5 - c0) * s], constrain="domain",
                     showgrid=False, zeroline=False)
    fig.update_yaxes(title_text=f"q_y ({units})", range=[(Qr - 0.5 - r0) * s, (-0.5 - r0) * s], scaleanchor="x",
                     scaleratio=1, constrain="domain", showgrid=False, zeroline=False)
    fig.update_layout(title=title, margin=dict(l=50, r=10, t=40 if title else 10, b=40), plot_bgcolor="black")
    return fig


def legend_figure(
    class_names: Sequence[str], class_colors: Any, directions: Mapping[str, Any] | None = None, *, size: int = 160
) -> go.Figure:
    """A legend for the map: class swatches, or a colour wheel for classes with known directions.

    Parameters
    ----------
    class_names : sequence of str
    class_colors : sequence of colours, (K, 3) array or ClassSet
    directions : dict, optional
        Class name -> direction in degrees on the detector (from +column
        towards +row), only directions declared and verified on the data
        (:func:`polmap.learn.symmetry.verified_directions`); never read from a name.
        With any, the colour wheel (:func:`colour_wheel`) is drawn with those
        classes written at their angle and the others as swatches below.
    size : int
        Wheel size in pixels.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    names = [str(n) for n in class_names]
    table = _color_table(class_colors, len(names))
    fig = go.Figure()
    angles = {n: float(a) for n, a in (directions or {}).items() if isinstance(a, (int, float)) and n in names}
    if angles:
        wheel = colour_wheel(size)
        c = (size - 1) / 2.0
        fig.add_trace(go.Image(source=_png_data_uri(wheel), x0=-c, dx=1, y0=-c, dy=1, hoverinfo="skip",
                               name="colour wheel"))
        rest = []
        for nm, col in zip(names, table):
            ang = angles.get(nm)
            if ang is None:
                rest.append((nm, col))
                continue
            t = math.radians(ang)
            fig.add_annotation(x=1.18 * c * math.cos(t), y=1.18 * c * math.sin(t), text=f"<b>{nm}</b>",
                               showarrow=False, font=dict(size=14, color=_hex(col)))
        for i, (nm, col) in enumerate(rest):
            fig.add_trace(go.Scatter(x=[-c + i * 0.6 * c], y=[1.45 * c], mode="markers+text", text=[nm],
                                     textposition="middle right", name=nm, showlegend=False, hoverinfo="skip",
                                     marker=dict(symbol="square", size=14, color=_hex(col),
                                                 line=dict(color="black", width=1))))
        lim = 1.4 * c
        fig.update_xaxes(range=[-lim, lim], visible=False)
        fig.update_yaxes(range=[1.7 * c if rest else lim, -lim], visible=False, scaleanchor="x", scaleratio=1)
        fig.update_layout(height=size + 120, width=size + 120)
    else:
        n = len(names)
        fig.add_trace(go.Scatter(
            x=[0] * n, y=list(range(n)), mode="markers+text", text=names, textposition="middle right",
            marker=dict(symbol="square", size=18, color=[_hex(c) for c in table], line=dict(color="black", width=1)),
            hoverinfo="skip", showlegend=False, name="classes",
        ))
        fig.update_xaxes(range=[-0.5, 4], visible=False)
        fig.update_yaxes(range=[n - 0.5, -0.5], visible=False)
        fig.update_layout(height=40 + 28 * n, width=220)
    fig.update_layout(margin=dict(l=5, r=5, t=5, b=5), plot_bgcolor="white", paper_bgcolor="white")
    return fig


def _history_columns(history: Any) -> dict[str, list[float]]:
    if hasattr(history, "to_dict") and not isinstance(history, Mapping):
        history = history.to_dict("list")  # a pandas DataFrame
    if isinstance(history, Mapping):
        cols = {str(k): list(v) for k, v in history.items()}
    else:
        rows = list(history)
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        cols = {k: [r.get(k, np.nan) for r in rows] for k in keys}
    return cols


def curves_figure(history: Any, *, title: str | None = None) -> go.Figure:
    """Training curves: losses on the left, accuracies on the right.

    Parameters
    ----------
    history : dict of lists, list of dicts (one per epoch) or DataFrame
        Keys containing ``"loss"`` go to the loss panel, keys containing
        ``"acc"`` to the accuracy panel; ``"epoch"`` is the x axis (default
        1, 2, ...); other keys (learning rate, time) are ignored.
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        Two panels (``xaxis``/``yaxis`` and ``xaxis2``/``yaxis2``), one line per key.
    """
    from plotly.subplots import make_subplots

    cols = _history_columns(history)
    n = max((len(v) for v in cols.values()), default=0)
    epochs = cols.get("epoch") or list(range(1, n + 1))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.12)
    for key, vals in cols.items():
        if key == "epoch":
            continue
        panel = 1 if "loss" in key.lower() else 2 if "acc" in key.lower() else None
        if panel is None:
            continue
        y = np.asarray(vals, dtype=np.float64)
        dash = "dash" if key.lower().startswith(("val", "valid", "test")) else "solid"
        fig.add_trace(go.Scatter(x=epochs[: len(y)], y=y, mode="lines+markers" if len(y) < 30 else "lines",
                                 name=key, line=dict(dash=dash)), row=1, col=panel)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", tickformat=".0%", row=1, col=2)
    fig.update_layout(title=title, margin=dict(l=50, r=10, t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def accuracy_vs_labels_figure(
    results: Any, *, reference: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, title: str | None = None,
) -> go.Figure:
    """Test accuracy against the number of labels, one line per strategy.

    Parameters
    ----------
    results : list of dicts, DataFrame, or dict ``{strategy: [(n_labels, accuracy), ...]}``
        Records with ``strategy``, ``n_labels``, ``accuracy`` (a fraction);
        repeated ``(strategy, n_labels)`` records (seeds) are averaged and
        their standard deviation drawn as error bars.
    reference : dict or list of dicts, optional
        Points to mark, e.g. :data:`PAPER_REFERENCE`
        (``n_labels``, ``accuracy``, ``name``).
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
    """
    if hasattr(results, "to_dict") and not isinstance(results, Mapping):
        results = results.to_dict("records")
    if isinstance(results, Mapping):
        records = [{"strategy": s, "n_labels": n, "accuracy": a} for s, pts in results.items() for n, a in pts]
    else:
        records = list(results)
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        for k in ("strategy", "n_labels", "accuracy"):
            if k not in rec:
                raise ValueError(f"each result needs 'strategy', 'n_labels' and 'accuracy'; {rec!r} lacks {k!r}")
        groups[str(rec["strategy"])][float(rec["n_labels"])].append(float(rec["accuracy"]))
    fig = go.Figure()
    for strategy, by_n in groups.items():
        ns = sorted(by_n)
        mean = [float(np.mean(by_n[n])) for n in ns]
        sd = [float(np.std(by_n[n])) for n in ns]
        reps = [len(by_n[n]) for n in ns]
        fig.add_trace(go.Scatter(
            x=ns, y=mean, mode="lines+markers", name=strategy,
            error_y=dict(type="data", array=sd, visible=max(reps) > 1),
            customdata=np.stack([sd, reps], axis=1),
            hovertemplate=f"{strategy}<br>%{{x:d}} labels: %{{y:.1%}} ± %{{customdata[0]:.1%}} "
                          f"(%{{customdata[1]:d}} runs)<extra></extra>",
        ))
    refs = [reference] if isinstance(reference, Mapping) else list(reference or [])
    for ref in refs:
        fig.add_trace(go.Scatter(
            x=[ref["n_labels"]], y=[ref["accuracy"]], mode="markers", name=str(ref.get("name", "reference")),
            marker=dict(symbol="star", size=14, color="black"),
        ))
    fig.update_xaxes(title_text="labelled positions")
    fig.update_yaxes(title_text="test accuracy", tickformat=".0%")
    fig.update_layout(title=title, hovermode="closest", margin=dict(l=60, r=10, t=40 if title else 10, b=40))
    return fig


def selected_positions(selection: Any, calibration: Calibration | None = None) -> np.ndarray:
    """Scan positions picked in a figure, from a Plotly selection event.

    Parameters
    ----------
    selection : dict or object
        What ``st.plotly_chart(..., on_select="rerun")`` returns (its
        ``selection`` or the whole event), or a list of point dicts. Points
        with ``customdata`` use ``customdata[0:2] = (row, col)``; others are
        located from ``x``/``y`` and the calibration.
    calibration : Calibration, optional
        Needed only for points without ``customdata``.

    Returns
    -------
    ndarray of int, shape (n, 2)
        Unique ``(row, col)``, in the order first picked.
    """
    sel = selection
    for key in ("selection", "points"):
        if isinstance(sel, Mapping) and key in sel:
            sel = sel[key]
        elif hasattr(sel, key):
            sel = getattr(sel, key)
    step, _ = scan_step(calibration)
    out: list[tuple[int, int]] = []
    for pt in sel or []:
        cd = pt.get("customdata") if isinstance(pt, Mapping) else None
        if cd is not None and len(cd) >= 2:
            rc = (int(round(float(cd[0]))), int(round(float(cd[1]))))
        elif isinstance(pt, Mapping) and "x" in pt and "y" in pt:
            rc = (int(round(float(pt["y"]) / step)), int(round(float(pt["x"]) / step)))
        else:
            continue
        if rc not in out:
            out.append(rc)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------
def export_png(
    rgb: np.ndarray,
    path_or_buffer: str | os.PathLike[str] | IO[bytes],
    scale: int = 4,
    *,
    metadata: Mapping[str, str] | None = None,
) -> str | os.PathLike[str] | IO[bytes]:
    """Write an image as PNG with nearest-neighbour upscaling (no browser or kaleido needed).

    Parameters
    ----------
    rgb : ndarray, shape (R, C, 3), (R, C, 4) or (R, C)
        uint8, bool, or float in [0, 1].
    path_or_buffer : path or binary file object
    scale : int
        Each scan position becomes a ``scale x scale`` block (1 to 64).
    metadata : mapping of str to str, optional
        Stored as PNG text chunks (e.g. provenance).

    Returns
    -------
    The ``path_or_buffer`` given.
    """
    img = np.asarray(rgb)
    if isinstance(scale, bool) or int(scale) != scale or not 1 <= scale <= 64:
        raise ValueError(f"scale must be an integer from 1 to 64, found {scale!r}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"expected an image (R, C), (R, C, 3) or (R, C, 4), found shape {img.shape}")
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif np.issubdtype(img.dtype, np.floating):
        if not (np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1):
            raise ValueError("a float image must hold finite values in [0, 1]")
        img = _to_uint8(img * 255.0)
    elif img.dtype != np.uint8:
        raise ValueError(f"expected uint8, bool or float in [0, 1], found {img.dtype}")
    s = int(scale)
    big = np.repeat(np.repeat(img, s, axis=0), s, axis=1)
    info = None
    if metadata:
        info = PngImagePlugin.PngInfo()
        for k, v in metadata.items():
            info.add_text(str(k), str(v))
    Image.fromarray(np.ascontiguousarray(big)).save(path_or_buffer, format="PNG", pnginfo=info)
    return path_or_buffer
