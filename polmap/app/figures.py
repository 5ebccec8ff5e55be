"""Figures for the pages: thin wrappers over polmap.viz.maps with the session's classes and colours."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from polmap.io.dataset import Dataset4D
from polmap.analysis.walls import scan_step

from polmap.app.session import Session
from polmap.app.training import uncertainty

log = logging.getLogger("polmap.app")


def domain_walls(pred: Any) -> np.ndarray:
    """Positions where the predicted class changes (``polmap.analysis.walls.domain_walls``, one-pixel lines)."""
    from polmap.analysis.walls import domain_walls as dw

    return dw(np.asarray(pred.label_map), thin=True)


def scan_figure(
    ds: Dataset4D,
    background: np.ndarray,
    *,
    sess: Session | None = None,
    show_labels: bool = True,
    suggestions: np.ndarray | None = None,
    selected: tuple[int, int] | None = None,
    prediction: Any = None,
    show_uncertainty: bool = False,
    show_walls: bool = False,
    walls: np.ndarray | None = None,
    value_name: str = "intensity",
    height: int = 460,
    title: str | None = None,
) -> Any:
    """A scan-space figure (``polmap.viz.maps``) a click can pick positions on.

    Parameters
    ----------
    background : (R, C) grey image or (R, C, 3) uint8 RGB map
    sess : the session, for its labels (clicked points as markers, painted
        regions as a translucent tint in their class colours)
    prediction : optional; with an RGB background its probabilities and
        uncertainty go into the hover and the uncertainty layer
    """
    import plotly.graph_objects as go
    from polmap.viz import maps

    bg = np.asarray(background)
    labelled = None
    tint = None
    class_names = None
    if show_labels and sess is not None and sess.labels is not None and len(sess.labels):
        class_names = sess.classes.names
        e = sess.labels.entries()
        pts = e["source"] != 1  # painted regions are drawn as a tint, not thousands of markers
        if pts.any():
            labelled = (np.stack([e["row"][pts], e["col"][pts]], axis=1), e["class"][pts], sess.classes.colors)
        if (~pts).any():
            tint = np.full(ds.scan_shape, np.nan, np.float32)
            tint[e["row"][~pts], e["col"][~pts]] = e["class"][~pts]
    sugg = None if suggestions is None or not len(suggestions) else np.asarray(suggestions).reshape(-1, 2)
    if bg.ndim == 3:
        probs = unc = None
        if prediction is not None:
            probs = np.asarray(prediction.probabilities)
            unc = uncertainty(prediction)
            class_names = sess.classes.names if sess is not None else None
        fig = maps.map_figure(
            bg.astype(np.uint8), calibration=ds.calibration, probabilities=probs, class_names=class_names,
            uncertainty=unc, walls=walls, labelled=labelled, suggestions=sugg,
            show_uncertainty=show_uncertainty, show_walls=show_walls,
        )
    else:
        # uint8 display values and a compact click layer: a quarter of the bytes of the float32
        # versions, which matters on every label click (the figure is re-sent each time)
        z8 = maps.robust_uint8(bg)
        fig = maps.image_figure(
            z8, calibration=ds.calibration, walls=walls, labelled=labelled, suggestions=sugg,
            class_names=class_names, value_name=value_name, pick_overlay=False,
        )
        fig.data[0].update(z=z8, zmin=0, zmax=255)
        _add_compact_pick_layer(fig, ds)
    step, _ = scan_step(ds.calibration)
    if tint is not None:
        # a heatmap, not an image: Plotly draws images below heatmaps whatever the trace order
        K = len(sess.classes)
        scale = []
        for k, col in enumerate(sess.classes.colors):
            scale += [[k / K, col], [(k + 1) / K, col]]
        fig.add_trace(go.Heatmap(z=tint, x0=0, dx=step, y0=0, dy=step, zmin=-0.5, zmax=K - 0.5, colorscale=scale,
                                 showscale=False, opacity=0.55, hoverinfo="skip", name="painted labels"))
    # The selected position is the click layer's own Plotly selection (a cyan dot), not an extra
    # trace: a click then leaves the figure unchanged and the browser does not redraw it (the
    # redraw was most of the click latency); pages pass ``selected`` only when they redraw anyway.
    R, C = ds.scan_shape
    dot = max(7.0, min(16.0, 900.0 / max(R, C)))
    for tr in fig.data:
        if tr.name and tr.name.startswith("labelled"):
            # a dark ring: a correct label sits on its own class colour and would vanish
            tr.update(marker=dict(line=dict(color="#111111", width=1.5)))
        if tr.name == "positions":
            tr.update(selected=dict(marker=dict(opacity=1, color="#00e5ff", size=dot)),
                      unselected=dict(marker=dict(opacity=0)))
            if selected is not None:
                tr.update(selectedpoints=[int(selected[0]) * C + int(selected[1])])
    fig.update_layout(height=height, uirevision=ds.fingerprint, title=title,
                      margin=dict(l=50, r=10, t=40 if title else 10, b=40),
                      showlegend=False)  # class colours are on the buttons, layers on the page's toggles;
    # a legend appearing with the first label would also move the plot under the user's mouse
    return fig


def _customdata_pair(cd: Any) -> tuple[int, int] | None:
    """``(row, col)`` from a point's customdata (a list, or a dict keyed "0", "1"... from typed arrays)."""
    if cd is None:
        return None
    if isinstance(cd, dict):
        try:
            return int(round(float(cd["0"] if "0" in cd else cd[0]))), int(round(float(cd["1"] if "1" in cd else cd[1])))
        except (KeyError, TypeError, ValueError):
            return None
    try:
        if len(cd) >= 2:
            return int(round(float(cd[0]))), int(round(float(cd[1])))
    except (TypeError, ValueError):
        return None
    return None


def _add_compact_pick_layer(fig: Any, ds: Dataset4D) -> None:
    """An invisible marker on every position carrying ``customdata = (row, col)`` (uint16) for clicks."""
    import plotly.graph_objects as go

    R, C = ds.scan_shape
    step, units = scan_step(ds.calibration)
    rr, cc = np.divmod(np.arange(R * C, dtype=np.int64), C)
    small = max(R, C) < 2**16
    ints = small and float(step).is_integer()
    xy_type = np.uint16 if ints else np.float32
    fig.add_trace(
        go.Scattergl(
            x=(cc * step).astype(xy_type), y=(rr * step).astype(xy_type), mode="markers",
            marker=dict(size=max(2.0, min(12.0, 600.0 / max(R, C))), color="rgba(0,0,0,0)", opacity=0),
            selected=dict(marker=dict(opacity=1, color="white")), unselected=dict(marker=dict(opacity=0)),
            customdata=np.stack([rr, cc], axis=1).astype(np.uint16 if small else np.int32),
            hovertemplate=f"row %{{customdata[0]}}, col %{{customdata[1]}}<br>x = %{{x:.4g}} {units}, "
                          f"y = %{{y:.4g}} {units}<extra></extra>",
            name="positions", showlegend=False,
        )
    )


def clicked_position(event: Any) -> tuple[int, int] | None:
    """The scan position a plotly_chart selection event picked (None if none)."""
    if event is None:
        return None
    try:
        sel = event["selection"] if isinstance(event, dict) or hasattr(event, "__getitem__") else event.selection
        points = sel["points"] if isinstance(sel, dict) or hasattr(sel, "__getitem__") else sel.points
    except (KeyError, AttributeError, TypeError):
        return None
    for p in reversed(list(points or [])):
        rc = _customdata_pair(p.get("customdata") if hasattr(p, "get") else None)
        if rc is not None:
            return rc
    return None


def pattern_figure(pattern: np.ndarray, *, log: bool = False, title: str | None = None, height: int = 320,
                   detectors: Any = None, calibration: Any = None) -> Any:
    """A diffraction pattern (``polmap.viz.maps.pattern_figure``), optionally log, with detector outlines.

    ``detectors``: a :class:`polmap.process.virtual.VirtualResult` whose BF disk and ADF annulus are drawn.
    """
    from polmap.viz import maps

    overlays = None
    if detectors is not None:
        c = tuple(float(x) for x in detectors.centre)
        overlays = [
            {"name": "BF", "center": c, "radius": float(detectors.bf_radius), "color": "#00e5ff"},
            {"name": "ADF", "center": c, "inner": float(detectors.adf_inner), "outer": float(detectors.adf_outer),
             "color": "#ffea00"},
        ]
    fig = maps.pattern_figure(np.asarray(pattern), log=log, detector_overlays=overlays, calibration=calibration, title=title)
    fig.update_layout(height=height, margin=dict(l=40, r=10, t=40 if title else 10, b=30))
    return fig


def curves_figure(history: Any, height: int = 300, final_accuracy: float | None = None) -> Any:
    """Loss and validation-accuracy curves (``polmap.viz.maps.curves_figure``), ensemble members one after another.

    ``final_accuracy`` (the out-of-fold accuracy of the finished ensemble) is
    drawn as a dotted line on the accuracy panel.
    """
    from polmap.viz import maps

    fig = maps.curves_figure(history)
    if final_accuracy is not None:
        fig.add_hline(y=float(final_accuracy), line_dash="dot", line_color="#444", row=1, col=2,
                      annotation_text=f"final out-of-fold {final_accuracy:.0%}", annotation_position="bottom right")
    fig.update_layout(height=height)
    return fig


def class_button_css(classes: Any, prefixes: tuple[str, ...] = ("clsbtn_label", "clsbtn_suggest")) -> str:
    """CSS giving each class button its class colour (buttons carry ``st-key-<key>`` classes)."""
    rules = []
    for i, c in enumerate(classes.colors):
        r, g, b = (int(c[j : j + 2], 16) for j in (1, 3, 5))
        fg = "#000000" if (0.299 * r + 0.587 * g + 0.114 * b) > 150 else "#ffffff"
        sel = ", ".join(f".st-key-{p}_{i} button" for p in prefixes)
        rules.append(f"{sel} {{background-color: {c} !important; color: {fg} !important; border: 2px solid {c} !important;}}")
        sel_act = ", ".join(f".st-key-{p}_{i}.active button, .st-key-{p}_{i}_active button" for p in prefixes)
        rules.append(f"{sel_act} {{box-shadow: 0 0 0 3px #1f6feb; }}")
    return "<style>" + "\n".join(rules) + "</style>"


def swatch(color: str, size: int = 12) -> str:
    return (f'<span style="display:inline-block;width:{size}px;height:{size}px;background:{color};'
            f'border:1px solid #555;border-radius:2px;vertical-align:middle;margin-right:4px"></span>')


def predicted_area_markdown(names: list[str], colors: list[str], pred: Any) -> str:
    """One line of class swatches with the share of the predicted positions in each class.

    Positions not (yet) predicted (label -1) are left out of the shares and counted apart.
    """
    fractions = pred.class_fractions()
    lm = np.asarray(pred.label_map)
    text = "**Predicted area**: " + ", ".join(f"{swatch(c)}{n} {fractions.get(n, 0.0):.0%}" for n, c in zip(names, colors))
    missing = int((lm < 0).sum())
    if missing:
        text += f" ({missing} of {lm.size} positions not predicted)"
    return text


def map_rgb(sess: Session, pred: Any = None, fade: float = 0.0) -> np.ndarray | None:
    """``(R, C, 3)`` uint8 RGB polarization map of a prediction (class colours weighted by probability)."""
    from polmap.viz.maps import rgb_map

    pred = pred if pred is not None else sess.prediction
    if pred is None:
        return None
    return rgb_map(np.asarray(pred.probabilities), map_colors(sess), fade=float(fade))


def probability_bars(names: list[str], colors: list[str], p: np.ndarray, height: int = 160) -> Any:
    """Horizontal bars of one position's class probabilities."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=np.asarray(p, float), y=names, orientation="h", marker_color=colors,
                           text=[f"{v:.0%}" for v in p], textposition="auto", hoverinfo="skip"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=5, b=5), xaxis=dict(range=[0, 1], tickformat=".0%"),
                      yaxis=dict(autorange="reversed"))
    return fig


def trusted_directions(sess: Session) -> dict[str, Any]:
    """Class directions that were declared and that the current model's training did not see contradicted."""
    from polmap.learn.symmetry import SymmetryMap, verified_directions

    declared = sess.classes.directions if sess.classes is not None else {}
    rep = sess.model.report if sess.model is not None else {}
    if not declared or not rep.get("symmetry"):
        return {}
    try:
        return verified_directions(SymmetryMap.from_dict(rep["symmetry"]), declared)
    except (KeyError, ValueError):
        return {}


def map_colors(sess: Session) -> list[str]:
    """Class colours of the map: the colour wheel's hue for a class whose direction is trusted, grey when
    invariant, the class's own colour otherwise."""
    from polmap.labels import direction_colors

    return direction_colors(sess.classes.names, sess.classes.colors, trusted_directions(sess))


def legend_figure(sess: Session) -> Any:
    """Class colours, with the colour wheel when some classes have trusted directions."""
    from polmap.viz.maps import legend_figure as lf

    return lf(sess.classes.names, map_colors(sess), trusted_directions(sess))
