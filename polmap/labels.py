"""The label store: point labels and painted regions over the scan grid.

Nothing a user does is lost: every change is one undoable action, every
labelled position remembers its class, how it was labelled (``source``) and
when, and the whole store round-trips through :meth:`LabelStore.to_dict`,
CSV and the workspace file (:mod:`polmap.io.project`).

Positions are ``(row, col)`` on the scan grid. At each position the last write
wins: clicking a point inside a painted region relabels that one position.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, Mapping, Sequence

import numpy as np

__all__ = ["SOURCES", "ClassSet", "LabelStore", "hue_color"]

#: How a label was made; stored per position as an index into this tuple.
SOURCES: tuple[str, ...] = ("click", "paint", "suggestion", "import")

_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

# Distinct colours offered to new classes (Okabe-Ito + extras): readable on a
# grey virtual image and distinguishable with common colour-vision deficiencies.
_PALETTE: tuple[str, ...] = (
    "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00",
    "#cc79a7", "#000000", "#999999", "#8c564b", "#17becf", "#bcbd22",
)

_CSV_FIELDS = ("row", "col", "class", "source", "time", "group")


def hue_color(angle_deg: float) -> str:
    """Colour-wheel colour for a direction.

    Parameters
    ----------
    angle_deg : float
        Direction angle in degrees, ``+x`` at 0 and ``+y`` at 90.

    Returns
    -------
    str
        ``"#rrggbb"`` with hue equal to the angle, full saturation and value.
    """
    r, g, b = colorsys.hsv_to_rgb((angle_deg % 360.0) / 360.0, 1.0, 1.0)
    return "#{:02x}{:02x}{:02x}".format(*(int(round(v * 255)) for v in (r, g, b)))


def direction_colors(names: Sequence[str], colors: Sequence[str], directions: Mapping[str, float | str]) -> list[str]:
    """Map colours: the colour wheel's hue for a class whose direction is trusted, grey when it is
    invariant, the class's own colour otherwise.

    Parameters
    ----------
    names, colors : sequences of str
        The classes and their own colours.
    directions : mapping
        Class name -> angle in degrees or ``"invariant"``: only directions that
        were declared or verified on the data (see :func:`polmap.learn.symmetry.verified_directions`).

    Returns
    -------
    list of str
    """
    out = []
    for name, color in zip(names, colors):
        d = directions.get(name)
        out.append(color if d is None else "#808080" if d == "invariant" else hue_color(float(d)))
    return out


# The class presets, with what each holds (the app lists them from here).
CLASS_PRESETS: dict[str, str] = {
    "signed": "signed: none, +x, -x, +y, -y",
    "axis": "axis: na, vertical, horizontal (the paper's)",
}


class ClassSet:
    """The named, coloured classes a scan is labelled with.

    Immutable: the editing methods (:meth:`renamed`, :meth:`with_color`,
    :meth:`with_class`, :meth:`without`) return a new set. Class indices are
    positions in :attr:`names`; renaming and recolouring keep them, adding
    appends at the end.

    Parameters
    ----------
    names : sequence of str
        Unique, non-empty class names.
    colors : sequence of str
        One ``"#rrggbb"`` colour per class (stored lower-case).
    directions : dict, optional
        Declared directions of some classes: name -> angle in degrees on the
        detector (from increasing column towards increasing row) or
        ``"invariant"``. A prior that training checks against the data
        (:func:`polmap.learn.symmetry.discover_symmetry`); never inferred from a name.

    Raises
    ------
    ValueError
        On empty, duplicate or non-string names, a bad colour, a length
        mismatch or a direction for an unknown class.
    """

    def __init__(self, names: Sequence[str], colors: Sequence[str],
                 directions: Mapping[str, float | str] | None = None) -> None:
        names = list(names)
        colors = list(colors)
        if not names:
            raise ValueError("a class set needs at least one class")
        if len(names) != len(colors):
            raise ValueError(f"{len(names)} class names but {len(colors)} colours; give one colour per class")
        clean: list[str] = []
        for i, n in enumerate(names):
            if not isinstance(n, str) or not n.strip():
                raise ValueError(f"class name {i} must be a non-empty string, found {n!r}")
            clean.append(n.strip())
        dup = sorted({n for n in clean if clean.count(n) > 1})
        if dup:
            raise ValueError(f"class names must be unique; repeated: {dup}")
        for n, c in zip(clean, colors):
            if not isinstance(c, str) or not _COLOR_RE.match(c):
                raise ValueError(f"colour of class {n!r} must look like '#rrggbb', found {c!r}")
        self._names = tuple(clean)
        self._colors = tuple(c.lower() for c in colors)
        from polmap.learn.symmetry import parse_directions

        self._directions = parse_directions(dict(directions or {}), clean)

    # -- presets --------------------------------------------------------------------
    @classmethod
    def signed(cls) -> "ClassSet":
        """``none, +x, -x, +y, -y`` on the colour wheel (hue = direction angle, none grey)."""
        return cls(
            ["none", "+x", "-x", "+y", "-y"],
            ["#808080", hue_color(0), hue_color(180), hue_color(90), hue_color(270)],
        )

    @classmethod
    def axis(cls) -> "ClassSet":
        """The paper's ``na, vertical, horizontal`` = red, green, blue."""
        return cls(["na", "vertical", "horizontal"], ["#ff0000", "#00ff00", "#0000ff"])

    @classmethod
    def preset(cls, name: str) -> "ClassSet":
        """A preset by name, one of :data:`CLASS_PRESETS`."""
        if name not in CLASS_PRESETS:
            raise ValueError(f"unknown class preset {name!r}; choose one of {sorted(CLASS_PRESETS)}")
        return getattr(cls, name)()

    @classmethod
    def for_names(
        cls,
        names: Sequence[str],
        colors: Sequence[str] | None = None,
        directions: Mapping[str, float | str] | None = None,
    ) -> "ClassSet":
        """Classes for a list of names: the one colour rule of the app, the CLI and the simulator.

        Colours given (a file's or the user's) win when there is one valid
        colour per class; else a preset's colours when the names are exactly a
        preset's; else palette colours in order. Directions, when given, are
        attached (they are a prior: training checks them against the data).

        Parameters
        ----------
        names : sequence of str
        colors : sequence of str, optional
            ``"#rrggbb"``, one per class.
        directions : mapping, optional
            Class name -> angle in degrees or ``"invariant"``.

        Returns
        -------
        ClassSet
        """
        names = [str(n) for n in names]
        if not names:
            raise ValueError("a class set needs at least one class name")
        out: ClassSet | None = None
        if colors is not None and len(colors) == len(names) and all(_COLOR_RE.match(str(c)) for c in colors):
            out = cls(names, [str(c) for c in colors])
        if out is None:
            out = next((p for p in map(cls.preset, CLASS_PRESETS) if p.names == names), None)
        if out is None:
            out = cls(names, [_PALETTE[i % len(_PALETTE)] for i in range(len(names))])
        return out.with_directions(directions) if directions else out

    # -- access ---------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Class names (a copy)."""
        return list(self._names)

    @property
    def colors(self) -> list[str]:
        """``"#rrggbb"`` colours (a copy)."""
        return list(self._colors)

    @property
    def directions(self) -> dict[str, float | str]:
        """Declared class directions (a copy; empty when none are declared)."""
        return dict(self._directions)

    def with_directions(self, directions: Mapping[str, float | str] | None) -> "ClassSet":
        """A copy with these declared directions (None or empty: none declared)."""
        return ClassSet(self._names, self._colors, directions)

    def __len__(self) -> int:
        return len(self._names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassSet) and (self._names, self._colors, self._directions) == (
            other._names, other._colors, other._directions)

    def __hash__(self) -> int:
        return hash((self._names, self._colors, tuple(sorted(self._directions.items()))))

    def __repr__(self) -> str:
        extra = f", directions={self._directions!r}" if self._directions else ""
        return f"ClassSet({list(self._names)!r}, {list(self._colors)!r}{extra})"

    def index(self, cls: str | int) -> int:
        """Index of a class given by name or index.

        Raises
        ------
        ValueError
            If the class is not in the set.
        """
        if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            if 0 <= int(cls) < len(self._names):
                return int(cls)
            raise ValueError(f"class index {int(cls)} out of range; there are {len(self)} classes {list(self._names)}")
        if isinstance(cls, str) and cls in self._names:
            return self._names.index(cls)
        raise ValueError(f"unknown class {cls!r}; known classes: {list(self._names)}")

    def color_of(self, cls: str | int) -> str:
        """Colour of a class given by name or index."""
        return self._colors[self.index(cls)]

    def rgb(self) -> np.ndarray:
        """Colours as a ``(K, 3)`` uint8 array."""
        return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in self._colors], dtype=np.uint8)

    # -- editing (new sets) ---------------------------------------------------------
    def renamed(self, old: str | int, new: str) -> "ClassSet":
        """A copy with one class renamed (its index and colour kept)."""
        i = self.index(old)
        names = list(self._names)
        names[i] = new
        dirs = {(new if k == self._names[i] else k): v for k, v in self._directions.items()}
        return ClassSet(names, self._colors, dirs)

    def with_color(self, cls: str | int, color: str) -> "ClassSet":
        """A copy with one class recoloured."""
        i = self.index(cls)
        colors = list(self._colors)
        colors[i] = color
        return ClassSet(self._names, colors, self._directions)

    def with_class(self, name: str, color: str | None = None) -> "ClassSet":
        """A copy with a class appended; ``color=None`` picks an unused palette colour."""
        if color is None:
            used = set(self._colors)
            color = next((c for c in _PALETTE if c not in used), _PALETTE[len(self) % len(_PALETTE)])
        return ClassSet([*self._names, name], [*self._colors, color], self._directions)

    def without(self, cls: str | int) -> "ClassSet":
        """A copy with one class removed (later classes move down one index)."""
        i = self.index(cls)
        if len(self) == 1:
            raise ValueError("cannot remove the last class of a class set")
        dirs = {k: v for k, v in self._directions.items() if k != self._names[i]}
        return ClassSet(self._names[:i] + self._names[i + 1 :], self._colors[:i] + self._colors[i + 1 :], dirs)

    # -- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict ``{"names": [...], "colors": [...]}`` (and ``"directions"`` when declared)."""
        d: dict[str, Any] = {"names": list(self._names), "colors": list(self._colors)}
        if self._directions:
            d["directions"] = dict(self._directions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassSet":
        """Build from :meth:`to_dict` output."""
        try:
            return cls(d["names"], d["colors"], d.get("directions"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a class set needs 'names' and 'colors' lists, found {d!r}") from exc


@dataclass
class _Action:
    """One undoable change: the flat positions it touched, before and after."""

    idx: np.ndarray  # flat indices into the scan grid
    before: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # cls, src, time, group
    after: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), tz=timezone.utc).isoformat(timespec="microseconds")


def _parse_time(text: str) -> float:
    """Unix seconds from ISO 8601 (naive = UTC) or a plain number."""
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class LabelStore:
    """Point labels and painted regions on a scan grid, with undo/redo.

    Each labelled position holds a class index, a source (one of
    :data:`SOURCES`), a time (Unix seconds) and a group id. All positions
    labelled by one painted region share a group id, each clicked point gets
    its own, so training can keep a region out of both the training and the
    validation split.

    Parameters
    ----------
    scan_shape : tuple of int
        ``(R, C)`` of the scan.
    classes : ClassSet
        The classes labels refer to.
    max_history : int, optional
        Number of undoable actions kept (oldest dropped first).

    Examples
    --------
    >>> store = LabelStore((4, 5), ClassSet.axis())
    >>> store.add_point(1, 2, "vertical")
    >>> mask = np.zeros((4, 5), bool); mask[0] = True
    >>> store.add_region(mask, "horizontal")
    5
    >>> store.counts()
    {'na': 0, 'vertical': 1, 'horizontal': 5}
    >>> store.undo()
    True
    >>> len(store)
    1
    """

    def __init__(self, scan_shape: tuple[int, int], classes: ClassSet, *, max_history: int = 1000) -> None:
        shape = tuple(int(s) for s in scan_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"scan_shape must be two positive integers (rows, cols), found {tuple(scan_shape)}")
        if not isinstance(classes, ClassSet):
            raise ValueError(f"classes must be a ClassSet, found {type(classes).__name__}")
        self._shape: tuple[int, int] = (shape[0], shape[1])
        self._classes = classes
        self._max_history = int(max_history)
        self._cls = np.full(self._shape, -1, dtype=np.int16)
        self._src = np.full(self._shape, -1, dtype=np.int8)
        self._time = np.full(self._shape, np.nan, dtype=np.float64)
        self._group = np.full(self._shape, -1, dtype=np.int32)
        self._next_group = 0
        self._undo: list[_Action] = []
        self._redo: list[_Action] = []
        self._revision = 0

    # -- properties -----------------------------------------------------------------
    @property
    def scan_shape(self) -> tuple[int, int]:
        """``(R, C)`` of the scan."""
        return self._shape

    @property
    def classes(self) -> ClassSet:
        """The current class set."""
        return self._classes

    @property
    def revision(self) -> int:
        """Counter bumped by every change (cheap "has anything changed?" test for autosave)."""
        return self._revision

    @property
    def next_group(self) -> int:
        """The group id the next labelling action will use."""
        return self._next_group

    @property
    def can_undo(self) -> bool:
        """Whether :meth:`undo` has something to undo."""
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        """Whether :meth:`redo` has something to redo."""
        return bool(self._redo)

    def __len__(self) -> int:
        return int(np.count_nonzero(self._cls >= 0))

    def __repr__(self) -> str:
        return f"LabelStore(scan_shape={self._shape}, classes={self._classes.names}, labelled={len(self)})"

    # -- validation -----------------------------------------------------------------
    def _check_position(self, row: Any, col: Any) -> tuple[int, int]:
        for name, v in (("row", row), ("col", col)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, found {v!r}")
        r, c = int(row), int(col)
        if not (0 <= r < self._shape[0] and 0 <= c < self._shape[1]):
            raise ValueError(f"position (row={r}, col={c}) is outside the scan of shape {self._shape}")
        return r, c

    def _check_mask(self, mask: Any) -> np.ndarray:
        m = np.asarray(mask)
        if m.shape != self._shape:
            raise ValueError(f"mask shape {m.shape} does not match the scan shape {self._shape}")
        if m.dtype != bool:
            if not np.issubdtype(m.dtype, np.integer) or not np.isin(m, (0, 1)).all():
                raise ValueError(f"mask must be boolean (or 0/1 integers), found dtype {m.dtype}")
            m = m.astype(bool)
        return m

    @staticmethod
    def _source_code(source: str) -> int:
        if source not in SOURCES:
            raise ValueError(f"unknown label source {source!r}; expected one of {list(SOURCES)}")
        return SOURCES.index(source)

    # -- the one mutation path ------------------------------------------------------
    def _state_at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            self._cls.reshape(-1)[idx].copy(),
            self._src.reshape(-1)[idx].copy(),
            self._time.reshape(-1)[idx].copy(),
            self._group.reshape(-1)[idx].copy(),
        )

    def _write(self, idx: np.ndarray, values: tuple[np.ndarray, ...]) -> None:
        for arr, v in zip((self._cls, self._src, self._time, self._group), values):
            arr.reshape(-1)[idx] = v
        self._revision += 1

    def _apply(self, idx: np.ndarray, cls: Any, src: Any, t: Any, group: Any) -> int:
        """Set positions ``idx`` as one undoable action; return how many changed.

        Positions whose class and source already match are left alone (their
        time is not refreshed), so repainting a region is not a new action.
        """
        idx = np.asarray(idx, dtype=np.int64)
        n = idx.size
        new = (
            np.broadcast_to(np.asarray(cls, np.int16), (n,)),
            np.broadcast_to(np.asarray(src, np.int8), (n,)),
            np.broadcast_to(np.asarray(t, np.float64), (n,)),
            np.broadcast_to(np.asarray(group, np.int32), (n,)),
        )
        old = self._state_at(idx)
        changed = (old[0] != new[0]) | (old[1] != new[1])
        if not changed.any():
            return 0
        idx = idx[changed]
        before = tuple(a[changed] for a in old)
        after = tuple(np.ascontiguousarray(a[changed]) for a in new)
        self._write(idx, after)
        self._undo.append(_Action(idx, before, after))  # type: ignore[arg-type]
        if len(self._undo) > self._max_history:
            del self._undo[0]
        self._redo.clear()
        return int(idx.size)

    def _new_group(self) -> int:
        g = self._next_group
        self._next_group += 1
        return g

    # -- labelling ------------------------------------------------------------------
    def add_point(self, row: int, col: int, cls: str | int, source: str = "click") -> None:
        """Label one position (one undoable action; replaces any earlier label there).

        Parameters
        ----------
        row, col : int
            Scan position.
        cls : str or int
            Class name or index.
        source : str
            One of :data:`SOURCES`.
        """
        r, c = self._check_position(row, col)
        k = self._classes.index(cls)
        s = self._source_code(source)
        flat = np.array([r * self._shape[1] + c])
        if self._cls[r, c] == k and self._src[r, c] == s:
            return
        self._apply(flat, k, s, time.time(), self._new_group())

    def add_points(
        self, positions: np.ndarray, cls: str | int | Sequence[str | int], source: str = "suggestion"
    ) -> int:
        """Label many positions as one undoable action (e.g. accepting suggestions).

        Parameters
        ----------
        positions : array of int, shape (N, 2)
            ``(row, col)`` per point.
        cls : str, int, or sequence of length N
            One class for all points, or one per point.
        source : str
            One of :data:`SOURCES`.

        Returns
        -------
        int
            Number of positions whose label changed.
        """
        pos = np.asarray(positions)
        if pos.size == 0:
            return 0
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError(f"positions must have shape (N, 2), found {pos.shape}")
        if not np.issubdtype(pos.dtype, np.integer):
            raise ValueError(f"positions must be integers, found dtype {pos.dtype}")
        outside = (pos < 0).any(axis=1) | (pos[:, 0] >= self._shape[0]) | (pos[:, 1] >= self._shape[1])
        if outside.any():
            r, c = pos[int(np.argmax(outside))]
            raise ValueError(f"position (row={r}, col={c}) is outside the scan of shape {self._shape}")
        if isinstance(cls, (str, int, np.integer)):
            ks = np.full(len(pos), self._classes.index(cls))
        else:
            if len(cls) != len(pos):
                raise ValueError(f"{len(pos)} positions but {len(cls)} classes")
            ks = np.array([self._classes.index(k) for k in cls])
        s = self._source_code(source)
        flat = pos[:, 0].astype(np.int64) * self._shape[1] + pos[:, 1]
        # last write wins for repeated positions within the batch
        _, last = np.unique(flat[::-1], return_index=True)
        keep = len(flat) - 1 - last
        first_group = self._next_group
        groups = first_group + np.arange(len(keep))
        n = self._apply(flat[keep], ks[keep], s, time.time(), groups)
        if n:
            self._next_group = first_group + len(keep)
        return n

    def add_region(self, mask: np.ndarray, cls: str | int, source: str = "paint") -> int:
        """Label every position in a mask as one undoable action.

        Parameters
        ----------
        mask : ndarray of bool, shape (R, C)
            Positions to label.
        cls : str or int
            Class name or index.
        source : str
            One of :data:`SOURCES` (``"paint"`` by default).

        Returns
        -------
        int
            Number of positions whose label changed (already-identical labels
            are left untouched).
        """
        m = self._check_mask(mask)
        k = self._classes.index(cls)
        s = self._source_code(source)
        idx = np.flatnonzero(m)
        if idx.size == 0:
            return 0
        g = self._next_group
        n = self._apply(idx, k, s, time.time(), g)
        if n:
            self._next_group += 1
        return n

    def erase_region(self, mask: np.ndarray) -> int:
        """Remove the labels inside a mask (one undoable action).

        Returns
        -------
        int
            Number of labels removed.
        """
        m = self._check_mask(mask)
        idx = np.flatnonzero(m & (self._cls >= 0))
        if idx.size == 0:
            return 0
        return self._apply(idx, -1, -1, np.nan, -1)

    def remove_point(self, row: int, col: int) -> bool:
        """Remove the label at one position; return whether there was one."""
        r, c = self._check_position(row, col)
        if self._cls[r, c] < 0:
            return False
        self._apply(np.array([r * self._shape[1] + c]), -1, -1, np.nan, -1)
        return True

    def clear(self) -> int:
        """Remove every label (one undoable action); return how many were removed."""
        return self.erase_region(np.ones(self._shape, dtype=bool))

    def undo(self) -> bool:
        """Undo the last action; return False when there is nothing to undo."""
        if not self._undo:
            return False
        a = self._undo.pop()
        self._write(a.idx, a.before)
        self._redo.append(a)
        return True

    def redo(self) -> bool:
        """Redo the last undone action; return False when there is nothing to redo."""
        if not self._redo:
            return False
        a = self._redo.pop()
        self._write(a.idx, a.after)
        self._undo.append(a)
        return True

    # -- class editing --------------------------------------------------------------
    def rename_class(self, old: str | int, new: str) -> None:
        """Rename a class; its labels follow (indices are unchanged)."""
        self._classes = self._classes.renamed(old, new)
        self._revision += 1

    def set_class_color(self, cls: str | int, color: str) -> None:
        """Change the colour of a class."""
        self._classes = self._classes.with_color(cls, color)
        self._revision += 1

    def set_class_directions(self, directions: Mapping[str, float | str] | None) -> None:
        """Declare class directions (see :class:`ClassSet`); None or empty clears them."""
        self._classes = self._classes.with_directions(directions)
        self._revision += 1

    def add_class(self, name: str, color: str | None = None) -> int:
        """Append a class; return its index. ``color=None`` picks an unused palette colour."""
        self._classes = self._classes.with_class(name, color)
        self._revision += 1
        return len(self._classes) - 1

    def remove_class(self, cls: str | int, *, drop_labels: bool = False) -> int:
        """Remove a class.

        Refused while the class has labels unless ``drop_labels=True``, which
        deletes them. Later classes move down one index and their labels are
        renumbered to match. Removing a class clears the undo/redo history,
        whose recorded class indices would no longer be valid.

        Returns
        -------
        int
            Number of labels deleted.

        Raises
        ------
        ValueError
            If the class has labels and ``drop_labels`` is False.
        """
        k = self._classes.index(cls)
        name = self._classes.names[k]
        n = int(np.count_nonzero(self._cls == k))
        if n and not drop_labels:
            raise ValueError(
                f"class {name!r} still has {n} label(s); relabel or erase them first, "
                f"or remove the class with drop_labels=True to delete them"
            )
        new_classes = self._classes.without(k)
        hit = self._cls == k
        self._cls[hit] = -1
        self._src[hit] = -1
        self._time[hit] = np.nan
        self._group[hit] = -1
        self._cls[self._cls > k] -= 1
        self._classes = new_classes
        self._undo.clear()
        self._redo.clear()
        self._revision += 1
        return n

    # -- reading --------------------------------------------------------------------
    def label_map(self) -> np.ndarray:
        """Class index per position, ``(R, C)`` int16, -1 where unlabelled."""
        return self._cls.copy()

    def positions_and_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """Labelled positions in row-major order.

        Returns
        -------
        positions : ndarray of int64, shape (N, 2)
            ``(row, col)``.
        classes : ndarray of int64, shape (N,)
            Class index of each position.
        """
        rows, cols = np.nonzero(self._cls >= 0)
        return np.stack([rows, cols], axis=1).astype(np.int64), self._cls[rows, cols].astype(np.int64)

    def groups(self) -> np.ndarray:
        """Group id of each labelled position, in the order of :meth:`positions_and_classes`."""
        return self._group[self._cls >= 0].astype(np.int64)

    def label_at(self, row: int, col: int) -> dict[str, Any] | None:
        """The label at one position as ``{"class", "source", "time", "group"}``, or None."""
        r, c = self._check_position(row, col)
        k = int(self._cls[r, c])
        if k < 0:
            return None
        return {
            "class": self._classes.names[k],
            "source": SOURCES[int(self._src[r, c])],
            "time": float(self._time[r, c]),
            "group": int(self._group[r, c]),
        }

    def counts(self) -> dict[str, int]:
        """Number of labelled positions per class name (every class listed, zeros included)."""
        bins = np.bincount(self._cls[self._cls >= 0].astype(np.int64), minlength=len(self._classes))
        return {n: int(b) for n, b in zip(self._classes.names, bins)}

    def source_counts(self) -> dict[str, int]:
        """Number of labelled positions per source."""
        bins = np.bincount(self._src[self._src >= 0].astype(np.int64), minlength=len(SOURCES))
        return {s: int(b) for s, b in zip(SOURCES, bins)}

    def hash(self) -> str:
        """Content hash of what a model would train on.

        Depends only on the scan shape, the class names (in order) and the
        class at each position, so the same labels give the same hash whatever
        the order of the actions that made them; sources, times and colours
        are left out.
        """
        h = hashlib.sha256(b"polmap-labels-v1")
        h.update(json.dumps([list(self._shape), self._classes.names]).encode())
        h.update(self._cls.astype("<i2").tobytes())
        return h.hexdigest()[:16]

    # -- serialisation --------------------------------------------------------------
    def entries(self) -> dict[str, np.ndarray]:
        """Every labelled position as column arrays, row-major.

        Returns
        -------
        dict
            ``row``, ``col`` (int32), ``class`` (int16 index), ``source`` (int8
            index into :data:`SOURCES`), ``time`` (float64 Unix seconds) and
            ``group`` (int32).
        """
        rows, cols = np.nonzero(self._cls >= 0)
        return {
            "row": rows.astype(np.int32),
            "col": cols.astype(np.int32),
            "class": self._cls[rows, cols].copy(),
            "source": self._src[rows, cols].copy(),
            "time": self._time[rows, cols].copy(),
            "group": self._group[rows, cols].copy(),
        }

    @classmethod
    def from_entries(
        cls,
        scan_shape: tuple[int, int],
        classes: ClassSet,
        entries: Mapping[str, Any],
        *,
        next_group: int = 0,
    ) -> "LabelStore":
        """Rebuild a store from :meth:`entries` output (no undo history).

        ``next_group`` (see :attr:`next_group`) keeps group ids of later
        actions distinct from those of labels erased before saving.

        Raises
        ------
        ValueError
            On missing columns, unequal lengths, positions outside the scan,
            unknown class or source indices, or a repeated position.
        """
        store = cls(scan_shape, classes)
        missing = [k for k in ("row", "col", "class", "source", "time", "group") if k not in entries]
        if missing:
            raise ValueError(f"label entries lack column(s) {missing}")
        cols_ = {k: np.asarray(entries[k]) for k in ("row", "col", "class", "source", "time", "group")}
        n = {k: v.shape for k, v in cols_.items()}
        if len({s for s in n.values()}) != 1 or len(next(iter(n.values()))) != 1:
            raise ValueError(f"label entry columns must be 1-D and of equal length, found shapes {n}")
        r, c = cols_["row"].astype(np.int64), cols_["col"].astype(np.int64)
        R, C = store._shape
        bad = (r < 0) | (r >= R) | (c < 0) | (c >= C)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"label entry {i}: position ({r[i]}, {c[i]}) is outside the scan of shape {store._shape}")
        k, s = cols_["class"].astype(np.int64), cols_["source"].astype(np.int64)
        if ((k < 0) | (k >= len(classes))).any():
            i = int(np.argmax((k < 0) | (k >= len(classes))))
            raise ValueError(f"label entry {i}: class index {k[i]} but there are {len(classes)} classes")
        if ((s < 0) | (s >= len(SOURCES))).any():
            i = int(np.argmax((s < 0) | (s >= len(SOURCES))))
            raise ValueError(f"label entry {i}: source index {s[i]} is not one of {list(SOURCES)}")
        flat = r * C + c
        if np.unique(flat).size != flat.size:
            raise ValueError("label entries repeat a position; each position holds one label")
        store._cls.reshape(-1)[flat] = k
        store._src.reshape(-1)[flat] = s
        store._time.reshape(-1)[flat] = cols_["time"].astype(np.float64)
        store._group.reshape(-1)[flat] = cols_["group"].astype(np.int64)
        store._next_group = max(int(next_group), int(cols_["group"].max()) + 1 if flat.size else 0)
        return store

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the labels (sources by name, times in Unix seconds).

        The undo history is not included.
        """
        e = self.entries()
        return {
            "format": "polmap-labels",
            "version": 1,
            "scan_shape": list(self._shape),
            "classes": self._classes.to_dict(),
            "next_group": int(self._next_group),
            "entries": {
                "row": e["row"].tolist(),
                "col": e["col"].tolist(),
                "class": e["class"].tolist(),
                "source": [SOURCES[i] for i in e["source"]],
                "time": e["time"].tolist(),
                "group": e["group"].tolist(),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LabelStore":
        """Rebuild a store from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If the dict is not a polmap label set or its entries are invalid.
        """
        if not isinstance(d, Mapping) or d.get("format") != "polmap-labels":
            raise ValueError("not a polmap label set (expected format 'polmap-labels')")
        if int(d.get("version", 0)) > 1:
            raise ValueError(f"label set version {d['version']} is newer than this polmap reads (1); upgrade polmap")
        try:
            classes = ClassSet.from_dict(d["classes"])
            e = dict(d["entries"])
            src = [cls._source_code(s) for s in e["source"]]
            entries = {**e, "source": np.array(src, dtype=np.int8)}
            store = cls.from_entries(
                tuple(d["scan_shape"]), classes, entries, next_group=int(d.get("next_group", 0))
            )
        except KeyError as exc:
            raise ValueError(f"label set lacks the field {exc}") from exc
        return store

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the labels as CSV (``row,col,class,source,time,group``; time ISO 8601 UTC).

        Parameters
        ----------
        path : path-like, optional
            Also write the text to this file.

        Returns
        -------
        str
            The CSV text.
        """
        e = self.entries()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_CSV_FIELDS)
        names = self._classes.names
        for r, c, k, s, t, g in zip(e["row"], e["col"], e["class"], e["source"], e["time"], e["group"]):
            w.writerow([int(r), int(c), names[k], SOURCES[s], _iso(t), int(g)])
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        return text

    def import_csv(self, file: str | os.PathLike[str] | IO[Any], *, as_source: str | None = None) -> int:
        """Read labels from CSV as one undoable action.

        Columns are found by header name: ``row``, ``col``, ``class`` are
        required; ``source`` (default ``"import"``), ``time`` (ISO 8601 or Unix
        seconds; default now) and ``group`` are optional. Classes are given by
        name. A position repeated in the file takes its last row.

        Parameters
        ----------
        file : path-like or file object
            The CSV (a text or binary file object, e.g. an upload).
        as_source : str, optional
            Record every imported label with this source instead of the file's.

        Returns
        -------
        int
            Number of positions whose label changed.

        Raises
        ------
        ValueError
            Naming the line of the first bad row, or a missing column.
        """
        text = _read_text(file)
        name = getattr(file, "name", None) or (str(file) if isinstance(file, (str, os.PathLike)) else "CSV")
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{name}: empty file; expected a header line 'row,col,class[,source,time,group]'")
        header = [h.strip().lower() for h in header]
        missing = [h for h in ("row", "col", "class") if h not in header]
        if missing:
            raise ValueError(f"{name} line 1: header {header} lacks column(s) {missing}")
        col_of = {h: i for i, h in enumerate(header)}
        override = self._source_code(as_source) if as_source is not None else None
        now = time.time()
        flat, ks, ss, ts, gs = [], [], [], [], []
        for row in reader:
            line = reader.line_num
            if not row or all(not x.strip() for x in row):
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{name} line {line}: {len(row)} fields, expected {len(header)} ({','.join(header)})"
                )
            cell = {h: row[i].strip() for h, i in col_of.items()}
            try:
                r, c, k, s, t, g = self._parse_csv_row(cell, override, now)
            except ValueError as exc:
                raise ValueError(f"{name} line {line}: {exc}") from None
            flat.append(r * self._shape[1] + c)
            ks.append(k)
            ss.append(s)
            ts.append(t)
            gs.append(g)
        if not flat:
            return 0
        flat_a = np.array(flat, dtype=np.int64)
        _, last = np.unique(flat_a[::-1], return_index=True)
        keep = np.sort(len(flat_a) - 1 - last)
        # the file's groups are renumbered into fresh ids; rows without one get their own
        nxt = self._next_group
        remap: dict[int, int] = {}
        ids = []
        for i in keep:
            g = gs[i]
            if g is None:
                ids.append(nxt)
                nxt += 1
                continue
            if g not in remap:
                remap[g] = nxt
                nxt += 1
            ids.append(remap[g])
        n = self._apply(
            flat_a[keep],
            np.array(ks)[keep],
            np.array(ss)[keep],
            np.array(ts)[keep],
            np.array(ids),
        )
        if n:
            self._next_group = nxt
        return n


    def _parse_csv_row(
        self, cell: dict[str, str], override: int | None, now: float
    ) -> tuple[int, int, int, int, float, int | None]:
        """``(row, col, class, source, time, group)`` of one CSV row; ValueError if bad."""
        try:
            r, c = int(cell["row"]), int(cell["col"])
        except ValueError:
            raise ValueError(f"row and col must be integers, found {cell['row']!r}, {cell['col']!r}") from None
        r, c = self._check_position(r, c)
        k = self._classes.index(cell["class"])
        if override is not None:
            s = override
        else:
            s = self._source_code(cell["source"]) if cell.get("source") else SOURCES.index("import")
        try:
            t = _parse_time(cell["time"]) if cell.get("time") else now
        except ValueError:
            raise ValueError(f"time must be ISO 8601 or Unix seconds, found {cell['time']!r}") from None
        try:
            g = int(cell["group"]) if cell.get("group") else None
        except ValueError:
            raise ValueError(f"group must be an integer, found {cell['group']!r}") from None
        return r, c, k, s, t, g


def _read_text(file: str | os.PathLike[str] | IO[Any]) -> str:
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            data: Any = f.read()
    else:
        data = file.read()
    if isinstance(data, bytes):
        data = data.decode("utf-8-sig")
    return data.lstrip("\ufeff")
