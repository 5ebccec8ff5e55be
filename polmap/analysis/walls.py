"""Domain walls and their statistics, from a label map or class probabilities (numpy and scipy only).

Shared by the map figures, the app, the adaptive sampling, the CLI and the benchmark:
a wall is where 4-neighbouring known classes differ.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from polmap.io.dataset import Calibration

__all__ = ["as_label_map", "domain_walls", "near_wall_mask", "neighbour_pairs", "scan_step", "wall_statistics"]


def as_label_map(data: np.ndarray) -> np.ndarray:
    """An int64 label map (R, C), -1 unknown, from a label map or probabilities (R, C, K) (argmax; NaN unknown)."""
    a = np.asarray(data)
    if a.ndim == 3:
        finite = np.isfinite(a).all(axis=2)
        lab = np.argmax(np.nan_to_num(a, nan=-np.inf), axis=2).astype(np.int64)
        lab[~finite] = -1
        return lab
    if a.ndim == 2:
        if np.issubdtype(a.dtype, np.floating):
            if np.any(np.isfinite(a) & (a != np.round(a))):
                raise ValueError("a 2-D label_map must hold integer class indices")
            return np.where(np.isfinite(a), a, -1).astype(np.int64)
        return a.astype(np.int64)
    raise ValueError(f"expected a label_map (R, C) or probabilities (R, C, K), found shape {a.shape}")


_OFFSETS = {4: ((1, 0), (0, 1)), 8: ((1, 0), (0, 1), (1, 1), (1, -1))}


def neighbour_pairs(shape: tuple[int, int], off: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices ``a`` and ``b`` such that ``x[b]`` is the neighbour at ``off`` of ``x[a]``."""
    dr, dc = off
    R, C = shape
    ra, rb = slice(0, R - dr), slice(dr, R)
    if dc >= 0:
        ca, cb = slice(0, C - dc), slice(dc, C)
    else:
        ca, cb = slice(-dc, C), slice(0, C + dc)
    return (ra, ca), (rb, cb)


def domain_walls(data: np.ndarray, *, connectivity: int = 4, thin: bool = False) -> np.ndarray:
    """Positions where neighbouring classes differ.

    Parameters
    ----------
    data : ndarray
        A label map ``(R, C)`` of class indices (negative = unknown) or
        probabilities ``(R, C, K)`` (their argmax is used; NaN = unknown).
    connectivity : {4, 8}
        Which neighbours are compared.
    thin : bool
        False: both positions of every differing pair are marked (a wall two
        pixels wide, symmetric). True: only the position with the larger
        class index is marked, so each wall is a clean one-pixel digital line
        on a consistent side (one position per row of a steep wall, one per
        column of a shallow one).

    Returns
    -------
    ndarray of bool, shape (R, C)
        Unknown positions never make a wall.
    """
    if connectivity not in _OFFSETS:
        raise ValueError(f"connectivity must be 4 or 8, found {connectivity}")
    lab = as_label_map(data)
    walls = np.zeros(lab.shape, dtype=bool)
    for off in _OFFSETS[connectivity]:
        if off[0] >= lab.shape[0] or abs(off[1]) >= lab.shape[1]:
            continue
        a, b = neighbour_pairs(lab.shape, off)
        la, lb = lab[a], lab[b]
        diff = (la != lb) & (la >= 0) & (lb >= 0)
        if thin:
            walls[b] |= diff & (lb > la)
            walls[a] |= diff & (la > lb)
        else:
            walls[b] |= diff
            walls[a] |= diff
    return walls


def scan_step(calibration: Calibration | None) -> tuple[float, str]:
    """``(step, units)`` of the scan: the calibrated step, else ``(1.0, "px")``."""
    if calibration is not None and calibration.real_step:
        return float(calibration.real_step), calibration.real_units
    return 1.0, "px"


def wall_statistics(
    walls: np.ndarray | None,
    label_map: np.ndarray,
    calibration: Calibration | None = None,
    *,
    class_names: Sequence[str] | None = None,
    min_domain_size: int = 1,
) -> dict[str, Any]:
    """Wall length, class-pair contacts and domain count/sizes of a label map.

    Parameters
    ----------
    walls : ndarray of bool, shape (R, C), or None
        The wall mask as drawn (its pixel count and area are reported);
        default ``domain_walls(label_map)``.
    label_map : ndarray of int, shape (R, C), or probabilities (R, C, K)
        Class per position, negative = unknown.
    calibration : Calibration, optional
        ``real_step`` and ``real_units`` give lengths and areas in calibrated
        units; without it they are in scan pixels.
    class_names : sequence of str, optional
        Names used as keys; default the class indices as strings.
    min_domain_size : int
        Connected regions smaller than this many positions are not counted
        as domains (they are reported under ``small_regions``).

    Returns
    -------
    dict
        ``wall_length`` (calibrated) and ``wall_length_px``: length of the
        boundary between known classes. Measured on the one-pixel boundary,
        each boundary position counting ``1 / max(|cos t|, |sin t|)`` for the
        local wall direction ``t`` (from the smoothed class indicator), which is
        exact for straight digital walls at any angle and independent of how
        thick ``walls`` was drawn. ``pair_lengths`` splits it by class pair
        (``"a|b"``), ``pair_edges`` counts neighbouring 4-connected position
        pairs per class pair. ``wall_pixels``, ``wall_fraction``, ``wall_area``
        describe ``walls``. ``n_domains``, ``domains_per_class``,
        ``domain_sizes`` (positions, per class, largest first),
        ``domain_areas`` (calibrated), ``mean_domain_area``, ``small_regions``
        describe 4-connected single-class regions (``scipy.ndimage.label``).
        ``length_units`` and ``area_units`` name the units.
    """
    lab = as_label_map(label_map)
    R, C = lab.shape
    if walls is None:
        walls = domain_walls(lab)
    walls = np.asarray(walls, dtype=bool)
    if walls.shape != lab.shape:
        raise ValueError(f"walls has shape {walls.shape} but label_map has {lab.shape}")
    step, units = scan_step(calibration)
    classes = sorted(int(k) for k in np.unique(lab) if k >= 0)

    def name(k: int) -> str:
        return str(class_names[k]) if class_names is not None and k < len(class_names) else str(k)

    def pair_key(a: int, b: int) -> str:
        a, b = sorted((a, b))
        return f"{name(a)}|{name(b)}"

    # Per-pair contacts between 4-neighbours.
    pair_edges: dict[str, int] = defaultdict(int)
    # For each thin-boundary position (the higher class of a differing pair),
    # the lower class across the boundary.
    other = np.full(lab.shape, -1, dtype=np.int64)
    for off in _OFFSETS[4]:
        if off[0] >= R or off[1] >= C:
            continue
        a, b = neighbour_pairs(lab.shape, off)
        la, lb = lab[a], lab[b]
        diff = (la != lb) & (la >= 0) & (lb >= 0)
        if diff.any():
            pa, pb = np.minimum(la[diff], lb[diff]), np.maximum(la[diff], lb[diff])
            pairs, counts = np.unique(np.stack([pa, pb], axis=1), axis=0, return_counts=True)
            for (x, y), n in zip(pairs, counts):
                pair_edges[pair_key(int(x), int(y))] += int(n)
            ob, oa = other[b], other[a]
            other[b] = np.where(diff & (lb > la) & (ob < 0), la, ob)
            other[a] = np.where(diff & (la > lb) & (oa < 0), lb, oa)

    # Direction-corrected length on the one-pixel boundary.
    thin = other >= 0
    weight = np.zeros(lab.shape)
    for k in classes:
        sel = thin & (lab == k)
        if not sel.any():
            continue
        ind = (lab == k).astype(np.float64)
        gr = ndimage.gaussian_filter(ind, 1.0, order=(1, 0), mode="nearest")
        gc = ndimage.gaussian_filter(ind, 1.0, order=(0, 1), mode="nearest")
        g, gm = np.hypot(gr, gc)[sel], np.maximum(np.abs(gr), np.abs(gc))[sel]
        weight[sel] = np.where(gm > 1e-12, g / np.where(gm > 1e-12, gm, 1.0), 1.0)
    pair_len: dict[str, float] = defaultdict(float)
    for k in classes:
        sel = thin & (lab == k)
        for o in np.unique(other[sel]):
            pair_len[pair_key(k, int(o))] += float(weight[sel & (other == o)].sum()) * step
    length_px = float(weight.sum())

    # Domains: 4-connected single-class regions.
    sizes: dict[str, list[int]] = {}
    small = 0
    for k in classes:
        lbl, n = ndimage.label(lab == k)
        s = np.bincount(lbl.ravel(), minlength=n + 1)[1:]
        small += int((s < min_domain_size).sum())
        sizes[name(k)] = sorted((int(v) for v in s if v >= min_domain_size), reverse=True)
    all_sizes = [v for lst in sizes.values() for v in lst]
    area = step * step
    return {
        "wall_length": length_px * step,
        "wall_length_px": length_px,
        "length_units": units,
        "pair_lengths": dict(pair_len),
        "pair_edges": dict(pair_edges),
        "wall_pixels": int(walls.sum()),
        "wall_fraction": float(walls.mean()) if walls.size else 0.0,
        "wall_area": float(walls.sum()) * area,
        "n_domains": len(all_sizes),
        "domains_per_class": {k: len(v) for k, v in sizes.items()},
        "domain_sizes": sizes,
        "domain_areas": {k: [v * area for v in lst] for k, lst in sizes.items()},
        "mean_domain_area": float(np.mean(all_sizes)) * area if all_sizes else 0.0,
        "small_regions": small,
        "area_units": f"{units}^2",
    }


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def near_wall_mask(truth: np.ndarray, distance: float = 2.0) -> np.ndarray:
    """Known positions within ``distance`` px (Euclidean) of a wall of a label map.

    Parameters
    ----------
    truth : ndarray of int, shape (R, C)
        Class indices, -1 unknown.
    distance : float
        In scan pixels; wall positions themselves are at distance 0.

    Returns
    -------
    ndarray of bool, shape (R, C)
        The walls are :func:`domain_walls` (4-neighbours, both sides marked).
    """
    t = np.asarray(truth)
    wall = domain_walls(t)
    if not wall.any():
        return np.zeros(t.shape, dtype=bool)
    d = ndimage.distance_transform_edt(~wall)
    return (d <= distance) & (t >= 0)
