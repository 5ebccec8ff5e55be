"""The physical domain states, their polarization, class sets and the camera mounting."""

from __future__ import annotations

from typing import Any

import numpy as np

from polmap.labels import ClassSet


FORMAT_NAME = "polmap-sim"


FORMAT_VERSION = 1


# Physical domain states; every geometry returns indices into this list.
PHYSICAL_CLASSES: list[str] = ["none", "+x", "-x", "+y", "-y"]


POLARIZATION = {  # (p_row, p_col), unit in-plane vector
    "none": (0.0, 0.0),
    "+x": (0.0, 1.0),
    "-x": (0.0, -1.0),
    "+y": (1.0, 0.0),
    "-y": (-1.0, 0.0),
}


# Symmetry operation S (acting on (row, col)) that maps the +x library onto each
# state: pattern_S(q) = pattern_+x(S^-1 q) with mistilt S^-1 m.
_OPS = {
    "none": np.eye(2),
    "+x": np.eye(2),
    "-x": np.array([[1.0, 0.0], [0.0, -1.0]]),  # column mirror
    "+y": np.array([[0.0, 1.0], [1.0, 0.0]]),  # transpose
    "-y": np.array([[0.0, -1.0], [1.0, 0.0]]),  # row mirror after transpose
}


_ORIENTATION = {"none": "c_domain", "+x": "a_domain", "-x": "a_domain", "+y": "a_domain", "-y": "a_domain"}


# Class sets offered to users; the map from physical state to class index.
CLASS_SETS: dict[str, dict[str, Any]] = {
    "signed": {
        "names": ["none", "+x", "-x", "+y", "-y"],
        "from_physical": {"none": 0, "+x": 1, "-x": 2, "+y": 3, "-y": 4},
    },
    "axis": {
        "names": ["na", "vertical", "horizontal"],
        "from_physical": {"none": 0, "+y": 1, "-y": 1, "+x": 2, "-x": 2},
    },
}


# The signed and axis colours are the labels' own (one palette for the app, the CLI and the files).
CLASS_SETS["signed"]["colors"] = ClassSet.signed().colors


CLASS_SETS["axis"]["colors"] = ClassSet.axis().colors


# Names that carry no direction, in an order that follows none: the +x state is
# "domain C", -x "domain E", and so on. polmap may not learn anything from them.
CLASS_SETS["anonymous"] = {
    "names": ["domain A", "domain B", "domain C", "domain D", "domain E"],
    "colors": ["#e69f00", "#56b4e9", "#009e73", "#cc79a7", "#0072b2"],
    "from_physical": {"none": 1, "+x": 2, "-x": 4, "+y": 0, "-y": 3},
}


def mounting_matrix(rotation_deg: float = 0.0, mirror: bool = False) -> np.ndarray:
    """The (row, col) matrix of a camera rotated by ``rotation_deg`` (from +column towards +row),
    mirrored first (columns reversed) when ``mirror``."""
    t = np.radians(rotation_deg)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return rot @ (np.diag([1.0, -1.0]) if mirror else np.eye(2))


def class_directions(class_set: str, mounting: np.ndarray | None = None) -> dict[str, float | str]:
    """The directions a simulated class set has on the detector (a declared calibration of the file).

    Parameters
    ----------
    class_set : str
        A key of :data:`CLASS_SETS`.
    mounting : ndarray (2, 2), optional
        :func:`mounting_matrix` of the camera.

    Returns
    -------
    dict
        Class name -> angle in degrees from +column towards +row, or
        ``"invariant"`` for the out-of-plane state; empty for unsigned (axis) classes.
    """
    cs = _class_set(class_set)
    m = np.eye(2) if mounting is None else mounting
    out: dict[str, float | str] = {}
    for state, k in cs["from_physical"].items():
        if sum(1 for v in cs["from_physical"].values() if v == k) > 1:
            return {}  # several states share a class: an axis, not a direction
        p = np.asarray(POLARIZATION[state])
        if not p.any():
            out[cs["names"][k]] = "invariant"
        else:
            v = m @ p
            out[cs["names"][k]] = round(float(np.degrees(np.arctan2(v[0], v[1]))), 6) % 360.0
    return out


def class_colors(class_set: str) -> list[str]:
    """``"#rrggbb"`` colours of a class set (``"signed"`` or ``"axis"``)."""
    return list(_class_set(class_set)["colors"])


def _class_set(name: str) -> dict[str, Any]:
    if name not in CLASS_SETS:
        raise ValueError(f"unknown class set {name!r}; valid: {sorted(CLASS_SETS)}")
    return CLASS_SETS[name]
