"""Conventional (non-learned) polarization analysis to compare the CNN against.

Two baselines:

* **Virtual-detector rule** -- the centre of mass (COM, the DPC-like signal) and the
  Friedel-pair asymmetry ``(I(+g) - I(-g)) / (I(+g) + I(-g))`` of the first-order
  disks along the detector rows and columns, measured around each pattern's
  bright-field disk. A rule maps the vector to the class with the nearest mean
  vector; the means are learnt from labelled positions (what a user could do) or
  from the full ground truth ("oracle": the best this rule can ever do). No class
  name is read: any class set works.
* **PCA + kNN** -- PCA(20) fitted on the labelled preprocessed patterns, a
  5-nearest-neighbour classifier on their scores (scikit-learn), on the inputs the
  network sees (:func:`pca_knn_map`).

Every pass over the data is chunked: ``data`` is a 4-D array ``(R, C, Qr, Qc)`` or
any object with ``iter_chunks(max_bytes)`` yielding ``(row_slice, block)`` (e.g.
:class:`polmap.io.dataset.Dataset4D`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "ConventionalMaps",
    "RuleParams",
    "apply_rule",
    "calibrate_rule",
    "com_map",
    "conventional_maps",
    "find_bad_pixels",
    "lattice_from_metadata",
    "mean_pattern",
    "pca_knn_map",
    "rule_accuracy",
]

DEFAULT_CHUNK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------
# chunked access
# --------------------------------------------------------------------------------------
def _shape(data: Any) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 4:
        raise ValueError(f"expected 4-D data (R, C, Qr, Qc), got shape {shape}")
    return shape  # type: ignore[return-value]


def _iter_blocks(data: Any, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(row_slice, float32 block (r, C, Qr, Qc))`` from an array or a dataset."""
    if hasattr(data, "iter_chunks"):
        for rows, block in data.iter_chunks(max_bytes):
            yield rows, np.asarray(block, dtype=np.float32)
        return
    R, C, Qr, Qc = _shape(data)
    step = max(1, int(max_bytes // max(1, C * Qr * Qc * 4)))
    for r0 in range(0, R, step):
        rows = slice(r0, min(R, r0 + step))
        yield rows, np.asarray(data[rows], dtype=np.float32)


def mean_pattern(data: Any, max_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """Mean diffraction pattern over the scan, (Qr, Qc) float64."""
    R, C, Qr, Qc = _shape(data)
    acc = np.zeros((Qr, Qc))
    for _, block in _iter_blocks(data, max_bytes):
        acc += block.sum(axis=(0, 1), dtype=np.float64)
    return acc / (R * C)


def find_bad_pixels(mean: np.ndarray, hot_ratio: float = 2.0, dead_ratio: float = 0.3) -> np.ndarray:
    """Hot and dead detector pixels from the mean pattern, as a (Qr, Qc) bool mask.

    A pixel is hot when its mean exceeds ``hot_ratio`` times the brightest of its 8
    neighbours, dead when it is below ``dead_ratio`` times the dimmest of them (and
    they are lit). Comparing with the extreme neighbour rather than the median keeps
    the sharp edges of the Bragg disks from being flagged, and works inside the
    bright disk too, unlike a dark-field-only threshold.
    """
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    # 'mirror' so that a border pixel is never its own neighbour
    hi = ndimage.maximum_filter(mean, footprint=ring, mode="mirror")
    lo = ndimage.minimum_filter(mean, footprint=ring, mode="mirror")
    floor = 1e-6 * max(float(mean.max()), 1e-12)
    return ((mean > hot_ratio * hi) & (mean > floor)) | ((mean < dead_ratio * lo) & (lo > floor))


def _repair(block: np.ndarray, bad: np.ndarray | None) -> np.ndarray:
    """Replace bad pixels by the median of their good 8-neighbours (in place)."""
    if bad is None or not bad.any():
        return block
    Qr, Qc = bad.shape
    for r, c in zip(*np.nonzero(bad)):
        nb = [
            (rr, cc)
            for rr in range(max(r - 1, 0), min(r + 2, Qr))
            for cc in range(max(c - 1, 0), min(c + 2, Qc))
            if (rr, cc) != (r, c) and not bad[rr, cc]
        ]
        if nb:
            vals = np.stack([block[..., rr, cc] for rr, cc in nb], axis=-1)
            block[..., r, c] = np.median(vals, axis=-1)
    return block


def lattice_from_metadata(metadata: dict[str, Any]) -> tuple[tuple[float, float], float]:
    """First-order disk spacing ``(g_row_px, g_col_px)`` and disk radius (px) of a simulated scan.

    ``metadata`` is :attr:`SimulatedScan.metadata` or the metadata of a dataset opened
    from a simulated file (which nests it under ``"simulation"``).

    The spacing is the mean over the orientations present in the library (the
    a-domain's c* and the a* of both), as one would measure it on the mean pattern.
    """
    metadata = metadata.get("simulation", metadata)  # a Dataset4D opened by polmap.io nests it
    step = float(metadata["reciprocal_step_mrad"])
    spacings = np.array(list(metadata["reciprocal_spacing_mrad"].values()), dtype=float)
    g = float(spacings.mean()) / step
    return (g, g), float(metadata["convergence_mrad"]) / step


# --------------------------------------------------------------------------------------
# per-pattern measurements
# --------------------------------------------------------------------------------------
def _disk_centres(block: np.ndarray, centre0: np.ndarray, radius: float) -> np.ndarray:
    """Geometric bright-field disk centre of each pattern, (n, 2) (row, col) px.

    The centroid of the pixels above half the disk level inside a window around
    ``centre0``; a binary mask keeps the polar intensity gradient inside the disk
    from biasing the centre.
    """
    n, Qr, Qc = block.shape
    rr, cc = np.meshgrid(np.arange(Qr), np.arange(Qc), indexing="ij")
    win = ((rr - centre0[0]) ** 2 + (cc - centre0[1]) ** 2) <= (radius + 3) ** 2
    vals = block[:, win]  # (n, W)
    level = np.percentile(vals, 90, axis=1, keepdims=True)
    mask = vals > 0.5 * level
    cnt = np.maximum(mask.sum(axis=1), 1)
    return np.stack([(mask * rr[win]).sum(1) / cnt, (mask * cc[win]).sum(1) / cnt], axis=1)


def _aperture_sums(block: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Sum inside a soft-edged circular aperture at a per-pattern centre, (n,)."""
    n, Qr, Qc = block.shape
    r = np.arange(Qr, dtype=np.float32)[None, :, None]
    c = np.arange(Qc, dtype=np.float32)[None, None, :]
    d = np.sqrt((r - centres[:, 0, None, None]) ** 2 + (c - centres[:, 1, None, None]) ** 2)
    w = np.clip(radius + 0.5 - d, 0.0, 1.0)
    return (block * w).sum(axis=(1, 2))


def com_map(data: Any, *, bad_pixels: np.ndarray | None = None, max_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """Centre of mass of every pattern relative to the detector centre, (R, C, 2) px (row, col).

    Parameters
    ----------
    data : 4-D array or object with ``iter_chunks``
    bad_pixels : (Qr, Qc) bool, optional
        Pixels replaced by their neighbours' median before the COM.
    max_bytes : int
        Chunk size.
    """
    R, C, Qr, Qc = _shape(data)
    rr = np.arange(Qr, dtype=np.float64) - (Qr - 1) / 2
    cc = np.arange(Qc, dtype=np.float64) - (Qc - 1) / 2
    out = np.zeros((R, C, 2), dtype=np.float32)
    for rows, block in _iter_blocks(data, max_bytes):
        block = _repair(block, bad_pixels)
        tot = np.maximum(block.sum(axis=(2, 3), dtype=np.float64), 1e-12)
        out[rows, :, 0] = (block.sum(axis=3, dtype=np.float64) @ rr) / tot
        out[rows, :, 1] = (block.sum(axis=2, dtype=np.float64) @ cc) / tot
    return out


@dataclass
class ConventionalMaps:
    """Virtual-detector measurements of every pattern.

    Attributes
    ----------
    com : (R, C, 2) float32
        Centre of mass minus the fitted descan plane (px, row/col): the DPC-like signal.
    friedel : (R, C, 2) float32
        Friedel asymmetries (A_row, A_col) of the first-order disks along the detector
        rows and columns, ``(I(+g) - I(-g)) / (I(+g) + I(-g))``.
    disk_centre : (R, C, 2) float32
        Measured bright-field disk centre (px).
    descan_plane : (R, C, 2) float32
        Plane fitted to the disk centres (used to place the apertures).
    bad_pixels : (Qr, Qc) bool
    """

    com: np.ndarray
    friedel: np.ndarray
    disk_centre: np.ndarray
    descan_plane: np.ndarray
    bad_pixels: np.ndarray


def _fit_plane(values: np.ndarray) -> np.ndarray:
    """Least-squares plane over the scan for each component, one outlier-rejection pass."""
    R, C, k = values.shape
    rr, cc = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    A = np.stack([np.ones(R * C), rr.ravel(), cc.ravel()], axis=1)
    out = np.empty_like(values, dtype=np.float64)
    for i in range(k):
        y = values[..., i].ravel().astype(np.float64)
        keep = np.ones_like(y, bool)
        for _ in range(2):
            coef, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
            res = y - A @ coef
            keep = np.abs(res) < 3 * max(np.std(res[keep]), 1e-9)
        out[..., i] = (A @ coef).reshape(R, C)
    return out


def conventional_maps(
    data: Any,
    g_px: Sequence[float],
    disk_radius_px: float,
    *,
    aperture_fraction: float = 0.7,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> ConventionalMaps:
    """Descan-corrected COM and first-order Friedel asymmetries of every pattern.

    Parameters
    ----------
    data : 4-D array or object with ``iter_chunks``
    g_px : (float, float)
        First-order disk spacing (row, col) in pixels.
    disk_radius_px : float
        Bright-field disk radius in pixels.
    aperture_fraction : float
        Virtual aperture radius as a fraction of the disk radius.
    max_bytes : int
        Chunk size.

    Returns
    -------
    ConventionalMaps
    """
    R, C, Qr, Qc = _shape(data)
    mean = mean_pattern(data, max_bytes)
    bad = find_bad_pixels(mean)
    mean_fixed = _repair(mean[None].copy(), bad)[0]
    centre0 = np.array(_disk_centres(mean_fixed[None], np.array([(Qr - 1) / 2, (Qc - 1) / 2]), disk_radius_px + 3)[0])
    centres = np.zeros((R, C, 2))
    com = np.zeros((R, C, 2))
    rr = np.arange(Qr, dtype=np.float64)
    cc = np.arange(Qc, dtype=np.float64)
    for rows, block in _iter_blocks(data, max_bytes):
        block = _repair(block, bad)
        flat = block.reshape(-1, Qr, Qc)
        centres[rows] = _disk_centres(flat, centre0, disk_radius_px).reshape(-1, C, 2)
        tot = np.maximum(block.sum(axis=(2, 3), dtype=np.float64), 1e-12)
        com[rows, :, 0] = (block.sum(axis=3, dtype=np.float64) @ rr) / tot
        com[rows, :, 1] = (block.sum(axis=2, dtype=np.float64) @ cc) / tot
    plane = _fit_plane(centres)
    com_corr = com - _fit_plane(com)  # the DPC convention: remove the descan ramp
    friedel = np.zeros((R, C, 2))
    ap = aperture_fraction * disk_radius_px
    g_r, g_c = float(g_px[0]), float(g_px[1])
    for rows, block in _iter_blocks(data, max_bytes):
        block = _repair(block, bad)
        flat = block.reshape(-1, Qr, Qc)
        ctr = plane[rows].reshape(-1, 2)
        sums = [_aperture_sums(flat, ctr + np.array(off), ap) for off in ((0, g_c), (0, -g_c), (g_r, 0), (-g_r, 0))]
        a_col = (sums[0] - sums[1]) / np.maximum(sums[0] + sums[1], 1e-12)
        a_row = (sums[2] - sums[3]) / np.maximum(sums[2] + sums[3], 1e-12)
        friedel[rows] = np.stack([a_row, a_col], axis=1).reshape(-1, C, 2)
    return ConventionalMaps(
        com=com_corr.astype(np.float32),
        friedel=friedel.astype(np.float32),
        disk_centre=centres.astype(np.float32),
        descan_plane=plane.astype(np.float32),
        bad_pixels=bad,
    )


# --------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleParams:
    """The vector-to-class rule: each class's mean vector, learnt from labelled positions.

    A position takes the class whose mean COM or Friedel vector is nearest to
    its own. Nothing is read from class names: which way a class's vector
    points depends on the detector's mounting, the scan rotation and the
    thickness (the asymmetry changes sign with it), so it is measured on the
    labels. A non-polar class is simply the one whose vectors sit near zero.

    Attributes
    ----------
    centroids : tuple
        Per class, its mean vector ``(row, col)``, or None for a class
        without labels (never predicted).
    """

    centroids: tuple[tuple[float, float] | None, ...] = ()


def apply_rule(vectors: np.ndarray, params: RuleParams, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Classes from (..., 2) vectors (row, col): the class with the nearest mean vector.

    Parameters
    ----------
    vectors : ndarray, (..., 2)
        E.g. :attr:`ConventionalMaps.friedel` or ``.com``.
    params : RuleParams
        From :func:`calibrate_rule`.
    class_names : list of str, optional
        Only checked for length against the rule.

    Returns
    -------
    ndarray of int16, shape ``vectors.shape[:-1]``
    """
    cents = params.centroids
    if class_names is not None and len(cents) != len(class_names):
        raise ValueError(f"the rule has {len(cents)} classes but {len(class_names)} class names were given")
    known = [k for k, c in enumerate(cents) if c is not None]
    if not known:
        raise ValueError("the rule has no class with a mean vector: calibrate it on labelled positions first")
    v = np.asarray(vectors, dtype=np.float64)
    c = np.array([cents[k] for k in known], dtype=np.float64)  # (k, 2)
    d = ((v[..., None, :] - c) ** 2).sum(-1)
    return np.asarray(known, dtype=np.int16)[d.argmin(-1)]


def rule_accuracy(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of positions (where ``mask`` and ``truth >= 0``) with ``pred == truth``."""
    keep = truth >= 0
    if mask is not None:
        keep &= mask
    if not keep.any():
        return float("nan")
    return float((pred[keep] == truth[keep]).mean())


def calibrate_rule(
    vectors: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    positions: np.ndarray | None = None,
) -> tuple[RuleParams, float]:
    """Learn each class's mean vector from labelled positions.

    Parameters
    ----------
    vectors : ndarray, (R, C, 2)
    labels : ndarray
        (R, C) int map (-1 = unlabelled) when ``positions`` is None, else (M,) classes
        of the (M, 2) ``positions``.
    class_names : list of str
    positions : ndarray, (M, 2), optional

    Returns
    -------
    (RuleParams, float)
        The rule and its accuracy on the given labels.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if positions is not None:
        pos = np.asarray(positions, dtype=int)
        v = v[pos[:, 0], pos[:, 1]]
        y = np.asarray(labels)
    else:
        y = np.asarray(labels).ravel()
        v = v.reshape(-1, 2)
        v, y = v[y >= 0], y[y >= 0]
    if len(y) == 0:
        raise ValueError("calibrate_rule needs at least one labelled position")
    cents = tuple(
        (tuple(float(x) for x in v[y == k].mean(0)) if (y == k).any() else None) for k in range(len(class_names))
    )
    params = RuleParams(cents)  # type: ignore[arg-type]
    return params, float((apply_rule(v, params) == y).mean())


# --------------------------------------------------------------------------------------
# PCA + kNN
# --------------------------------------------------------------------------------------


def pca_knn_map(
    patterns: np.ndarray,
    positions: np.ndarray,
    classes: np.ndarray,
    scan_shape: tuple[int, int],
    *,
    n_components: int = 20,
    n_neighbors: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Martinc et al.'s baseline: PCA fitted on the labelled patterns, kNN on their scores.

    Parameters
    ----------
    patterns : ndarray, shape (R * C, F)
        Every scan position's preprocessed pattern, flattened, row-major (the
        inputs the network sees, so that the comparison is fair).
    positions : ndarray of int, shape (M, 2)
        Labelled ``(row, col)``.
    classes : ndarray of int, shape (M,)
    scan_shape : (R, C)
    n_components, n_neighbors : int
        PCA components (at most M - 1) and neighbours (at most M).
    seed : int

    Returns
    -------
    ndarray of int64, shape (R, C)
        The predicted class of every position (the one class when only one is labelled).
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    R, C = scan_shape
    X = np.asarray(patterns)
    if X.ndim != 2 or len(X) != R * C:
        raise ValueError(f"patterns must have shape ({R * C}, F) for a {R} x {C} scan, found {X.shape}")
    pos = np.asarray(positions, dtype=int).reshape(-1, 2)
    y = np.asarray(classes, dtype=int)
    if len(pos) != len(y) or len(y) == 0:
        raise ValueError(f"need matching non-empty positions and classes, got {len(pos)} and {len(y)}")
    if len(np.unique(y)) < 2:
        return np.full((R, C), int(y[0]), dtype=np.int64)
    flat = pos[:, 0] * C + pos[:, 1]
    n_comp = int(min(n_components, len(flat) - 1, X.shape[1]))
    pca = PCA(n_components=max(1, n_comp), random_state=seed).fit(X[flat])
    knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(flat))).fit(pca.transform(X[flat]), y)
    out = np.empty(len(X), dtype=np.int64)
    for s0 in range(0, len(X), 8192):  # bounded memory on large scans
        out[s0 : s0 + 8192] = knn.predict(pca.transform(X[s0 : s0 + 8192]))
    return out.reshape(R, C)
