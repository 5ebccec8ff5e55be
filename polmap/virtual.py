"""Virtual detectors over a 4D-STEM scan in one chunked pass.

A virtual image integrates every diffraction pattern against a detector mask:
bright field (BF, a disk on the transmitted beam), annular dark field (ADF,
an annulus outside it), or any user mask. The same pass gives the mean and
maximum pattern and the centre-of-mass (COM) maps used for DPC.

All integrals are one matrix product per sub-batch of patterns,
``(n, Qr*Qc) @ (Qr*Qc, n_masks)`` in float32, with the COM weights (row and
column coordinates) and the total intensity as extra "masks". Memory stays
bounded by one chunk of raw data plus a small float32 buffer.

Positions are ``(row, col)``; detector coordinates are pixel centres
``0 .. Qr-1`` / ``0 .. Qc-1``.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from scipy import ndimage

from polmap.dataset import DEFAULT_CHUNK_BYTES, Dataset4D

__all__ = [
    "VirtualResult",
    "compute_virtual",
    "detector_masks",
    "disk_centres",
    "find_beam",
]

# Patterns per float32 sub-batch: small enough that the converted copy stays in
# cache for the matrix product, large enough to amortise the call overhead.
_SUB_BATCH_BYTES = 4 * 2**20


# ----------------------------------------------------------------------------------
# beam finding
# ----------------------------------------------------------------------------------
def disk_centres(
    patterns: np.ndarray,
    guess: tuple[float, float] | np.ndarray,
    radius: float,
    *,
    margin: float | None = None,
    n_iter: int = 3,
    nan_if_missing: bool = False,
) -> np.ndarray:
    """Geometric centres of the bright-field disk in each pattern (subpixel).

    The disk is measured against its *local* level: a plane is fitted to the
    intensity inside the disk and every pixel is divided by that plane, so an
    intensity gradient inside the disk (a Friedel asymmetry, the polar signal)
    does not move the centre, unlike the intensity centre of mass. The first
    pass weights pixels by a ramp from 25 % to 75 % of the local level inside
    a generous window (robust while the window is off the disk); refinement
    passes weight edge pixels by their local coverage ``I / level`` (exact
    for anti-aliased edges, so subpixel) inside ``radius + 2`` px and count
    the interior (``radius - 2``) in full, so dark lines inside the disk do
    not bias the result. The centre is the centroid of these weights.

    Measured on synthetic anti-aliased disks (r = 10 px, shifted up to 4 px):
    error about 0.005 px noise-free, up to 0.03 px with noise; a +-20 %
    gradient moves it < 0.005 px (the centre of mass: 0.5 px). With a
    Gaussian edge blur of sigma px the gradient moves it by about
    ``sigma**2 * gradient / radius`` (0.02 px for sigma = 1).

    Parameters
    ----------
    patterns : ndarray, shape (N, H, W) or (H, W)
        Diffraction patterns (any real dtype).
    guess : (cy, cx) or ndarray of shape (N, 2)
        Starting centre(s), pixel coordinates.
    radius : float
        Bright-field disk radius in pixels.
    margin : float, optional
        How far (px) the disk may sit from ``guess``; default
        ``max(2, 0.3 * radius)``.
    n_iter : int
        Refinement iterations (the window and the interior plane follow the
        estimate).
    nan_if_missing : bool
        Return NaN rather than the guess for patterns without a detectable disk.

    Returns
    -------
    ndarray, shape (N, 2) or (2,)
        ``(cy, cx)`` per pattern, in the pixel coordinates of ``patterns``.
        Patterns without a detectable disk (less than a quarter of the disk
        area above threshold) return the guess, or NaN.
    """
    pats = np.asarray(patterns)
    single = pats.ndim == 2
    if single:
        pats = pats[None]
    n, h, w = pats.shape
    radius = float(radius)
    if radius <= 0:
        raise ValueError(f"disk radius must be positive, found {radius}")
    margin = max(2.0, 0.3 * radius) if margin is None else float(margin)
    g = np.broadcast_to(np.asarray(guess, dtype=np.float64).reshape(-1, 2), (n, 2)).copy()
    if n == 0:
        return g

    # Work on the bounding box that any window can reach: far fewer pixels.
    reach = radius + margin + 2.0
    y0 = int(max(0, np.floor(g[:, 0].min() - reach)))
    y1 = int(min(h, np.ceil(g[:, 0].max() + reach) + 1))
    x0 = int(max(0, np.floor(g[:, 1].min() - reach)))
    x1 = int(min(w, np.ceil(g[:, 1].max() + reach) + 1))
    if y1 <= y0 or x1 <= x0:
        if nan_if_missing:
            g[:] = np.nan
        return g[0] if single else g
    box = np.ascontiguousarray(pats[:, y0:y1, x0:x1], dtype=np.float32)
    bh, bw = y1 - y0, x1 - x0
    yy = np.arange(bh, dtype=np.float32)
    xx = np.arange(bw, dtype=np.float32)

    # Separable coordinates (N, bh, 1) and (N, 1, bw): only a few full-size
    # operations per iteration, moments as row/column sums.
    c = g - np.array([y0, x0], dtype=np.float64)
    inner_r2 = np.float32((0.6 * radius) ** 2)
    for it in range(max(1, int(n_iter))):
        dy = yy[None, :] - c[:, 0:1].astype(np.float32)  # (N, bh)
        dx = xx[None, :] - c[:, 1:2].astype(np.float32)  # (N, bw)
        d2 = np.add((dy * dy)[:, :, None], (dx * dx)[:, None, :])
        # Local level: least-squares plane a + b*dy + c*dx over the disk interior.
        inner = d2 <= inner_r2
        ib = np.multiply(box, inner)
        ir = inner.sum(2, dtype=np.float32)  # (N, bh)
        ic = inner.sum(1, dtype=np.float32)  # (N, bw)
        br, bc = ib.sum(2), ib.sum(1)
        gram = np.empty((n, 3, 3), dtype=np.float64)
        gram[:, 0, 0] = ir.sum(1)
        gram[:, 0, 1] = gram[:, 1, 0] = np.einsum("ni,ni->n", ir, dy)
        gram[:, 0, 2] = gram[:, 2, 0] = np.einsum("nj,nj->n", ic, dx)
        gram[:, 1, 1] = np.einsum("ni,ni->n", ir, dy * dy)
        gram[:, 2, 2] = np.einsum("nj,nj->n", ic, dx * dx)
        gram[:, 1, 2] = gram[:, 2, 1] = np.einsum("ni,ni->n", np.einsum("nij,nj->ni", inner, dx), dy)
        rhs = np.stack([br.sum(1), np.einsum("ni,ni->n", br, dy), np.einsum("nj,nj->n", bc, dx)], axis=1)
        gram[:, [0, 1, 2], [0, 1, 2]] += 1e-6
        coef = np.linalg.solve(gram, rhs[..., None].astype(np.float64))[..., 0].astype(np.float32)
        # Keep the extrapolated plane positive at the edge.
        floor = (0.5 * np.abs(coef[:, 0]) + 1e-12)[:, None, None]
        level = np.add((coef[:, 0:1] + coef[:, 1:2] * dy)[:, :, None], (coef[:, 2:3] * dx)[:, None, :])
        np.maximum(level, floor, out=level)
        wgt = np.divide(box, level, out=level)
        if it == 0:
            # Coarse pass, window not yet on the disk: a robust half-level ramp.
            wgt -= 0.25
            wgt *= 2.0
        # Later passes: the local coverage I / level, exact for anti-aliased edges.
        np.clip(wgt, 0.0, 1.0, out=wgt)
        win_r = radius + (margin if it == 0 else 2.0)
        np.multiply(wgt, d2 <= win_r * win_r, out=wgt)
        if it > 0 and radius > 3.0:
            # The interior counts in full: dark lines inside the disk must not bias it.
            np.maximum(wgt, d2 <= (radius - 2.0) ** 2, out=wgt)
        wr = wgt.sum(2)
        tot = wr.sum(1).astype(np.float64)
        ok = tot > 0.25 * np.pi * radius * radius
        # einsum, not BLAS: results must not depend on how many patterns share a batch.
        mom = np.stack([np.einsum("ni,i->n", wr, yy), np.einsum("nj,j->n", wgt.sum(1), xx)], axis=1)
        new = mom.astype(np.float64) / np.where(ok, tot, 1.0)[:, None]
        c = np.where(ok[:, None], new, c)
    out = c + np.array([y0, x0], dtype=np.float64)
    if nan_if_missing:
        out[~ok] = np.nan
    return out[0] if single else out


def find_beam(mean_pattern: np.ndarray) -> tuple[float, float, float]:
    """Locate the bright-field disk in a (mean) diffraction pattern.

    Thresholds a 3x3-median-filtered copy (hot pixels removed) at half of its
    maximum, keeps the connected region with the largest integrated intensity
    (the transmitted beam), then refines its geometric centre with
    :func:`disk_centres`.

    Parameters
    ----------
    mean_pattern : ndarray, shape (Qr, Qc)

    Returns
    -------
    cy, cx, radius : float
        Disk centre (pixel coordinates) and radius (px, from the disk area).
    """
    m = np.asarray(mean_pattern, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"find_beam expects a 2-D pattern, found shape {m.shape}")
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    smooth = ndimage.median_filter(m, size=3, mode="nearest")
    lo = float(np.percentile(smooth, 5))
    hi = float(smooth.max())
    if hi <= lo:
        # Flat pattern: no beam to find; report the detector centre.
        return (m.shape[0] - 1) / 2.0, (m.shape[1] - 1) / 2.0, min(m.shape) / 4.0
    mask = smooth > lo + 0.5 * (hi - lo)
    labels, n = ndimage.label(mask)
    weights = ndimage.sum_labels(smooth - lo, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(weights)) + 1
    region = labels == best
    area = float(region.sum())
    cy, cx = ndimage.center_of_mass(region)
    radius = max(np.sqrt(area / np.pi), 1.0)
    # Refine on the unfiltered pattern with background removed.
    c = disk_centres(m - lo, (cy, cx), radius, margin=2.0, n_iter=4)
    # Radius from the soft area of the refined disk (same threshold rule).
    yy, xx = np.indices(m.shape)
    d2 = (yy - c[0]) ** 2 + (xx - c[1]) ** 2
    inner = d2 <= (0.6 * radius) ** 2
    level = float(np.mean((m - lo)[inner])) if inner.any() else hi - lo
    wgt = np.clip(((m - lo) / max(level, 1e-12) - 0.25) * 2.0, 0.0, 1.0) * (d2 <= (radius + 3.0) ** 2)
    radius = float(max(np.sqrt(wgt.sum() / np.pi), 1.0))
    return float(c[0]), float(c[1]), radius


# ----------------------------------------------------------------------------------
# detector masks
# ----------------------------------------------------------------------------------
def detector_masks(
    detector_shape: tuple[int, int],
    centre: tuple[float, float],
    bf_radius: float,
    adf_inner: float,
    adf_outer: float,
) -> dict[str, np.ndarray]:
    """Boolean bright-field disk and annular dark-field masks.

    A pixel belongs to the BF disk when its centre lies at distance
    ``d <= bf_radius`` from ``centre``, and to the ADF annulus when
    ``adf_inner <= d < adf_outer``.

    Parameters
    ----------
    detector_shape : (Qr, Qc)
    centre : (cy, cx)
        Beam centre in detector pixels.
    bf_radius, adf_inner, adf_outer : float
        Radii in detector pixels.

    Returns
    -------
    dict
        ``{"bright_field": bool (Qr, Qc), "annular_dark_field": bool (Qr, Qc)}``
    """
    if not (adf_outer > adf_inner >= 0):
        raise ValueError(f"need adf_outer > adf_inner >= 0, found inner={adf_inner}, outer={adf_outer}")
    if bf_radius <= 0:
        raise ValueError(f"bf_radius must be positive, found {bf_radius}")
    yy, xx = np.indices(tuple(int(s) for s in detector_shape), dtype=np.float64)
    d = np.hypot(yy - centre[0], xx - centre[1])
    return {
        "bright_field": d <= bf_radius,
        "annular_dark_field": (d >= adf_inner) & (d < adf_outer),
    }


# ----------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------
def _iter_blocks(dataset: Dataset4D, max_bytes: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Row blocks like ``dataset.iter_chunks``, faster for HDF5-backed scans.

    For an ``h5py.Dataset`` backing store, rows are read with ``read_direct``
    into two reused buffers (half of ``max_bytes`` each) by a background thread
    while the caller computes on the previous block. A fresh 64 MiB array per
    chunk costs a page fault per 4 KiB (measured: about 2x the CPU time of the
    read itself); h5py holds the GIL while reading but numpy releases it, so
    reading and computing overlap. Any other store falls back to
    ``dataset.iter_chunks`` (in-memory arrays yield views, nothing to gain).

    A yielded block is valid only until the next one is requested.
    """
    backing: Any = getattr(dataset, "_array", None)  # Dataset4D has no public buffer-reuse read yet
    if backing is None or not hasattr(backing, "read_direct") or dataset.n_patterns == 0:
        yield from dataset.iter_chunks(max_bytes)
        return
    step = dataset.chunk_rows(max(1, max_bytes // 2))
    rows_total, cols = dataset.scan_shape
    shape = (step, cols) + tuple(dataset.detector_shape)
    bufs = [np.empty(shape, dtype=dataset.dtype) for _ in range(2 if rows_total > step else 1)]
    free: queue.Queue = queue.Queue()
    for b in bufs:
        free.put(b)
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()

    def reader() -> None:
        try:
            for start in range(0, rows_total, step):
                buf = free.get()
                if stop.is_set():
                    return
                n = min(step, rows_total - start)
                backing.read_direct(buf, np.s_[start : start + n], np.s_[0:n])
                ready.put((slice(start, start + n), buf))
            ready.put(None)
        except BaseException as exc:  # surfaced in the consumer
            ready.put(exc)

    thread = threading.Thread(target=reader, name="polmap-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            rows, buf = item
            yield rows, buf[: rows.stop - rows.start]
            free.put(buf)
    finally:
        stop.set()
        for b in bufs:  # unblock a reader waiting for a buffer
            free.put(b)
        thread.join()


# ----------------------------------------------------------------------------------
# the pass
# ----------------------------------------------------------------------------------
@dataclass
class VirtualResult:
    """Everything one pass over the scan yields.

    Attributes
    ----------
    bright_field, annular_dark_field : ndarray, shape (R, C), float64
        Virtual images (sum of counts inside the masks).
    images : dict of str to ndarray (R, C)
        Images of the custom masks, by name.
    total : ndarray, shape (R, C)
        Total counts per pattern.
    com_row, com_col : ndarray, shape (R, C)
        Intensity centre of mass relative to ``centre`` (detector px; 0 where a
        pattern has no counts).
    mean_pattern : ndarray, shape (Qr, Qc), float64
    max_pattern : ndarray, shape (Qr, Qc), dataset dtype
    centre : (float, float)
        Beam centre used (detector px).
    bf_radius, adf_inner, adf_outer : float
        Radii used (detector px).
    masks : dict of str to ndarray (Qr, Qc)
        Every mask used, the BF/ADF ones included.
    auto : bool
        True when centre or radii came from :func:`find_beam` on the first chunk.
    """

    bright_field: np.ndarray
    annular_dark_field: np.ndarray
    images: dict[str, np.ndarray]
    total: np.ndarray
    com_row: np.ndarray
    com_col: np.ndarray
    mean_pattern: np.ndarray
    max_pattern: np.ndarray
    centre: tuple[float, float]
    bf_radius: float
    adf_inner: float
    adf_outer: float
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    auto: bool = False


def _auto_geometry(
    first_mean: np.ndarray,
    detector_shape: tuple[int, int],
    centre: tuple[float, float] | None,
    bf_radius: float | None,
    adf_inner: float | None,
    adf_outer: float | None,
) -> tuple[tuple[float, float], float, float, float]:
    if centre is None or bf_radius is None:
        cy, cx, r = find_beam(first_mean)
        centre = (cy, cx) if centre is None else centre
        bf_radius = r if bf_radius is None else bf_radius
    cy, cx = float(centre[0]), float(centre[1])
    bf_radius = float(bf_radius)
    if adf_inner is None:
        # Clear of the BF disk edge (and moderate descan).
        adf_inner = 1.5 * bf_radius
    if adf_outer is None:
        # Largest circle that fits on the detector around the beam.
        qr, qc = detector_shape
        adf_outer = min(cy + 0.5, cx + 0.5, qr - 0.5 - cy, qc - 0.5 - cx)
        adf_outer = max(float(adf_outer), float(adf_inner) + 1.0)
    return (cy, cx), bf_radius, float(adf_inner), float(adf_outer)


def compute_virtual(
    dataset: Dataset4D,
    *,
    bf_radius: float | None = None,
    adf_inner: float | None = None,
    adf_outer: float | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    centre: tuple[float, float] | None = None,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> VirtualResult:
    """Virtual BF/ADF and custom images, mean/max pattern and COM maps in one pass.

    Parameters
    ----------
    dataset : Dataset4D
    bf_radius : float, optional
        BF disk radius (detector px). Default: the disk radius found by
        :func:`find_beam`.
    adf_inner, adf_outer : float, optional
        ADF annulus radii. Defaults: ``1.5 * bf_radius`` and the largest circle
        around the beam that fits on the detector.
    masks : dict of str to ndarray (Qr, Qc), optional
        Extra detectors (boolean or real weights); image = sum(mask * pattern).
    centre : (cy, cx), optional
        Beam centre (detector px). Default: :func:`find_beam`.
    max_bytes : int
        Raw bytes per chunk read; bounds the memory.
    progress : callable, optional
        ``progress(rows_done, rows_total)`` after every chunk.

    Returns
    -------
    VirtualResult

    Notes
    -----
    The pass is single: when the centre or BF radius is not given they are
    found on the mean of the *first chunk* (at least one scan row), before its
    integrals are taken. Integrals use float32 products (relative error about
    1e-6) accumulated per pattern; the mean pattern accumulates in float64.
    """
    qr, qc = dataset.detector_shape
    npix = qr * qc
    rows_total, cols = dataset.scan_shape
    extra = dict(masks or {})
    for name, m in extra.items():
        if name in ("bright_field", "annular_dark_field"):
            raise ValueError(f"mask name {name!r} is reserved for the standard detectors; rename it")
        if np.shape(m) != (qr, qc):
            raise ValueError(
                f"mask {name!r}: expected detector shape {(qr, qc)}, found {np.shape(m)}"
            )

    auto = centre is None or bf_radius is None
    names: list[str] = []
    weights: np.ndarray | None = None
    geometry = None
    images = None
    mean_acc = np.zeros(npix, dtype=np.float64)
    max_pat: np.ndarray | None = None

    for rows, block in _iter_blocks(dataset, max_bytes):
        flat = block.reshape(-1, npix)
        if weights is None:
            first_mean = flat.mean(axis=0, dtype=np.float64).reshape(qr, qc)
            geometry = _auto_geometry(first_mean, (qr, qc), centre, bf_radius, adf_inner, adf_outer)
            (cy, cx), r_bf, r_in, r_out = geometry
            std = detector_masks((qr, qc), (cy, cx), r_bf, r_in, r_out)
            all_masks = {**std, **{k: np.asarray(v) for k, v in extra.items()}}
            yy, xx = np.indices((qr, qc), dtype=np.float64)
            # COM numerators relative to the beam centre keep float32 products small.
            cols_w = [np.ones(npix), (yy - cy).ravel(), (xx - cx).ravel()]
            names = list(all_masks)
            cols_w += [np.asarray(all_masks[k], dtype=np.float64).ravel() for k in names]
            weights = np.ascontiguousarray(np.stack(cols_w, axis=1), dtype=np.float32)
            images = np.zeros((rows_total * cols, weights.shape[1]), dtype=np.float64)
            sub_n = max(1, _SUB_BATCH_BYTES // (4 * npix))
            buf = np.empty((sub_n, npix), dtype=np.float32)
            prod = np.empty((sub_n, weights.shape[1]), dtype=np.float32)
        bmax = np.maximum.reduce(flat, axis=0)
        max_pat = bmax if max_pat is None else np.maximum(max_pat, bmax)
        base = rows.start * cols
        for s in range(0, flat.shape[0], sub_n):
            n = min(sub_n, flat.shape[0] - s)
            b = buf[:n]
            np.copyto(b, flat[s : s + n], casting="unsafe")
            np.matmul(b, weights, out=prod[:n])
            images[base + s : base + s + n] = prod[:n]
            mean_acc += np.add.reduce(b, axis=0)
        if progress is not None:
            progress(rows.stop, rows_total)

    assert images is not None and geometry is not None and max_pat is not None
    (cy, cx), r_bf, r_in, r_out = geometry
    img = images.reshape(rows_total, cols, -1)
    total = img[..., 0]
    safe = np.where(total != 0, total, 1.0)
    com_row = np.where(total != 0, img[..., 1] / safe, 0.0)
    com_col = np.where(total != 0, img[..., 2] / safe, 0.0)
    named = {k: img[..., 3 + i] for i, k in enumerate(names)}
    used_masks = {
        **detector_masks((qr, qc), (cy, cx), r_bf, r_in, r_out),
        **{k: np.asarray(v) for k, v in extra.items()},
    }
    return VirtualResult(
        bright_field=named.pop("bright_field"),
        annular_dark_field=named.pop("annular_dark_field"),
        images=named,
        total=total,
        com_row=com_row,
        com_col=com_col,
        mean_pattern=(mean_acc / dataset.n_patterns).reshape(qr, qc),
        max_pattern=max_pat.reshape(qr, qc),
        centre=(cy, cx),
        bf_radius=r_bf,
        adf_inner=r_in,
        adf_outer=r_out,
        masks=used_masks,
        auto=auto,
    )
