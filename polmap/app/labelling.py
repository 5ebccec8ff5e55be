"""Labelling (clicks, paint, undo) and suggestions of where to label next."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from polmap.viz.maps import robust_uint8

from polmap.app.session import Session, autosave
from polmap.app.datasets import cold_start_features

log = logging.getLogger("polmap.app")


def label_point(sess: Session, row: int, col: int, cls: int | str, source: str = "click") -> None:
    sess.labels.add_point(int(row), int(col), cls, source=source)
    autosave(sess)


def unlabel_point(sess: Session, row: int, col: int) -> bool:
    done = sess.labels.remove_point(int(row), int(col))
    autosave(sess)
    return done


def paint(sess: Session, mask: np.ndarray, cls: int | str | None, erase: bool = False) -> int:
    """Label (or, with ``erase``, unlabel) every position of a boolean scan mask; returns how many changed."""
    lab = sess.labels
    if erase:
        n = lab.erase_region(mask)
    else:
        n = lab.add_region(mask, cls, source="paint")
    autosave(sess)
    return int(n)


def undo(sess: Session) -> bool:
    done = sess.labels.undo()
    autosave(sess)
    return done


def redo(sess: Session) -> bool:
    done = sess.labels.redo()
    autosave(sess)
    return done


def canvas_mask(rgba: np.ndarray | None, scan_shape: tuple[int, int], coverage: float = 0.35) -> np.ndarray:
    """Scan positions covered by strokes on the canvas.

    Parameters
    ----------
    rgba : ndarray (H, W, 4) or None
        The canvas's drawing layer (background not included).
    scan_shape : (R, C)
    coverage : float
        Fraction of a position's cell that must be painted.
    """
    R, C = scan_shape
    if rgba is None:
        return np.zeros((R, C), bool)
    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] < 4:
        return np.zeros((R, C), bool)
    alpha = a[..., 3].astype(np.float32) / 255.0
    H, W = alpha.shape
    # average alpha per scan cell (cells may be fractional: integrate with cumulative sums)
    ys = np.linspace(0, H, R + 1).round().astype(int)
    xs = np.linspace(0, W, C + 1).round().astype(int)
    cs = np.zeros((H + 1, W + 1), np.float64)
    cs[1:, 1:] = alpha.cumsum(0).cumsum(1)
    tot = cs[ys[1:, None], xs[None, 1:]] - cs[ys[:-1, None], xs[None, 1:]] - cs[ys[1:, None], xs[None, :-1]] + cs[ys[:-1, None], xs[None, :-1]]
    area = np.maximum((ys[1:] - ys[:-1])[:, None] * (xs[1:] - xs[:-1])[None, :], 1)
    return (tot / area) >= coverage


def labels_overlay_rgba(sess: Session) -> np.ndarray:
    """``(R, C, 4)`` uint8: class colours where labelled, transparent elsewhere."""
    lm = sess.labels.label_map()
    rgb = sess.classes.rgb()
    out = np.zeros(lm.shape + (4,), np.uint8)
    m = lm >= 0
    out[m, :3] = rgb[lm[m]]
    out[m, 3] = 255
    return out


def canvas_background(sess: Session, image: np.ndarray, scale: int, label_alpha: float = 0.75) -> "Any":
    """PIL image of the virtual image with labelled positions tinted, upscaled ``scale`` times (nearest)."""
    from PIL import Image

    g = robust_uint8(image)
    rgb = np.repeat(g[..., None], 3, axis=2).astype(np.float32)
    ov = labels_overlay_rgba(sess)
    m = ov[..., 3] > 0
    rgb[m] = (1 - label_alpha) * rgb[m] + label_alpha * ov[m, :3]
    if sess.suggestions is not None and len(sess.suggestions):
        pass
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
    R, C = image.shape
    return img.resize((C * scale, R * scale), Image.NEAREST)


def label_table(sess: Session) -> list[dict[str, Any]]:
    """Rows ``{class, colour, labels}`` for the sidebar/legend."""
    lab = sess.labels
    if lab is None:
        return []
    counts = lab.counts()
    return [{"class": n, "color": c, "count": counts.get(n, 0)} for n, c in zip(sess.classes.names, sess.classes.colors)]


def import_labels_csv(sess: Session, data: bytes) -> int:
    n = sess.labels.import_csv(io.StringIO(data.decode("utf-8", errors="replace")))
    autosave(sess)
    return int(n)


def strategies() -> dict[str, str]:
    from polmap.learn.sampling import STRATEGIES

    return dict(STRATEGIES)


def suggest(sess: Session, strategy: str, budget: int, seed: int = 0) -> None:
    """Compute the next positions to label and put them in the session's queue."""
    from polmap.learn import sampling

    ds = sess.dataset
    pos, cls = sess.labels.positions_and_classes()
    probs = None
    if sess.prediction is not None:
        probs = np.asarray(sess.prediction.probabilities)
    exclude = np.array(sess.skipped, dtype=np.int64).reshape(-1, 2) if sess.skipped else None
    kwargs: dict[str, Any] = dict(exclude=exclude, seed=int(seed))
    if strategy == "adaptive":
        kwargs["probabilities"] = probs
    if strategy == "cold_start" or (strategy == "adaptive" and probs is None):
        kwargs["features"] = cold_start_features(ds)
    res = sampling.suggest_detailed(strategy, ds.scan_shape, pos, cls, int(budget), **kwargs)
    sess.suggestions = np.asarray(res.positions, dtype=np.int64).reshape(-1, 2)
    sess.suggestion_reasons = tuple(res.reasons)
    sess.suggestion_message = res.message
    sess.suggestion_index = 0
    if sess.workspace is not None:
        sess.workspace.log("suggested", strategy=strategy, budget=int(budget), n=int(len(sess.suggestions)))
        autosave(sess)


def current_suggestion(sess: Session) -> tuple[int, int] | None:
    """The next suggested position not yet labelled (advancing past labelled ones)."""
    if sess.suggestions is None:
        return None
    lm = sess.labels.label_map()
    skipped = set(map(tuple, sess.skipped))
    while sess.suggestion_index < len(sess.suggestions):
        r, c = (int(x) for x in sess.suggestions[sess.suggestion_index])
        if lm[r, c] < 0 and (r, c) not in skipped:
            return r, c
        sess.suggestion_index += 1
    return None


def answer_suggestion(sess: Session, cls: int | None) -> None:
    """Label the current suggestion with ``cls`` (None: skip it) and move on."""
    cur = current_suggestion(sess)
    if cur is None:
        return
    if cls is None:
        sess.skipped.append(cur)
    else:
        sess.labels.add_point(cur[0], cur[1], int(cls), source="suggestion")
        autosave(sess)
    sess.suggestion_index += 1
    sess.selected = cur


def move_selection(sess: Session, drow: int, dcol: int) -> None:
    """Move the selected position by one step (arrow keys), clamped to the scan."""
    R, C = sess.dataset.scan_shape
    r, c = sess.selected or (R // 2, C // 2)
    sess.selected = (int(min(max(r + drow, 0), R - 1)), int(min(max(c + dcol, 0), C - 1)))


def shown_selection(sess: Session, *context: Any) -> tuple[int, int] | None:
    """The selection to draw into a scan figure.

    A click selects in the browser by itself; redrawing the figure just to
    move the marker cost most of the click latency. So the figure carries the
    selection only when it is redrawn anyway (labels or ``context`` changed)
    or when the selection moved without a click (arrow keys set
    ``sess.view.shown_selection``).
    """
    sig = (sess.labels.revision if sess.labels is not None else None, id(sess.dataset), *context)
    if sess.view.figure_signature != sig:
        sess.view.figure_signature = sig
        sess.view.shown_selection = sess.selected
    return sess.view.shown_selection
