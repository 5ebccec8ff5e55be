"""Turn raw diffraction patterns into network inputs: a fitted, recorded pipeline.

Order of operations for every pattern (each step optional, set by
:class:`PreprocessConfig`)::

    hot-pixel repair -> bin -> centre (descan) + crop -> scale -> resize
    -> normalise -> boxing (k x k max over probe positions) -> normalise

Why centring is geometric by default: the polar signal lives in small intensity
differences between the +g and -g disks (Friedel asymmetry) and in intensity
gradients inside the disks. Re-centring each pattern on its intensity centre of
mass ("com") shifts every pattern by an amount that *depends on that signal*
and so partly removes it (this is what DPC measures). "disk" instead centres
each pattern on the geometric centre of its bright-field disk, the circle
through the points where the intensity falls to half of the disk's local
level (:func:`polmap.process.virtual.disk_centres`), which such gradients and
neighbouring disks do not move; "plane" fits a plane to those centres over
the scan and removes only the smooth descan, keeping local deflections.

Which to choose: "plane" when the descan is smooth (the usual case) and the
local deflections may carry signal; "disk" when the beam wanders irregularly
(every pattern exactly centred); "none" to reproduce the paper.

Subpixel shifts are Fourier shifts by default: unlike bilinear interpolation
they do not blur by an amount that depends on the fractional shift (which would
correlate with scan position through the descan). Sub-batches run on a thread
pool (``POLMAP_THREADS``, default: the usable cores, at most 8).

:class:`Preprocessor` holds the fitted state (beam centre and radius, hot
pixels, descan plane); :meth:`Preprocessor.state_dict` records everything
needed to reproduce its output and is stored with every model.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator

import numpy as np
import scipy.fft as sfft
from numpy.lib.stride_tricks import sliding_window_view

from polmap import settings
from polmap.io.dataset import DEFAULT_CHUNK_BYTES, Dataset4D, DatasetError
from polmap.process.virtual import iter_row_blocks, disk_centres, find_beam

__all__ = [
    "CENTRINGS",
    "NORMALISATIONS",
    "SCALINGS",
    "SHIFT_METHODS",
    "BOX_MODES",
    "INPUT_PRESETS",
    "PreprocessConfig",
    "Preprocessor",
    "bin_patterns",
    "find_hot_pixels",
    "normalise_patterns",
    "repair_hot_pixels",
    "resize_patterns",
    "scale_patterns",
    "shift_patterns",
]

CENTRINGS = ("none", "disk", "com", "plane")
SCALINGS = ("none", "log", "sqrt")
NORMALISATIONS = ("none", "max", "minmax", "sum")
SHIFT_METHODS = ("fourier", "bilinear")
BOX_MODES = ("max", "mean")

#: Named preprocessing recipes (``PreprocessConfig`` fields): the models declare theirs from here,
#: and the cold-start features use ``centred48``.
INPUT_PRESETS: dict[str, dict] = {
    # centred, sqrt-scaled 48 px patterns
    "centred48": dict(bin_factor=1, crop_radius=None, centring="disk", scaling="sqrt", normalise="max", boxing=1,
                      output_size=48),
    # the same, each pattern averaged with its 3 x 3 scan neighbours
    "boxed48": dict(bin_factor=1, crop_radius=None, centring="disk", scaling="sqrt", normalise="max", boxing=3,
                    box_mode="mean", output_size=48),
    # the paper's, as published: 5 x 5 boxing, min-max, 256 px, no centring, no log, no hot-pixel repair
    "paper256": dict(bin_factor=1, crop_radius=None, centring="none", scaling="none", normalise="minmax", boxing=5,
                     output_size=256, hot_pixel_repair=False),
}

STATE_FORMAT = "polmap-preprocess"
STATE_VERSION = 1

# float32 working set per sub-batch: small enough to stay in cache and below
# malloc's mmap threshold (fresh mmaps cost a page fault per 4 KiB).
_WORK_BYTES = 4 * 2**20


_N_THREADS = settings.worker_threads()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_N_THREADS, thread_name_prefix="polmap-preprocess")
        return _POOL


# ======================================================================================
# configuration
# ======================================================================================
@dataclass(frozen=True)
class PreprocessConfig:
    """How raw patterns become network inputs.

    Parameters
    ----------
    bin_factor : int
        Sum ``b x b`` detector pixels (a remainder at the bottom/right edge is dropped).
    crop_radius : int or None
        Keep a ``2*crop_radius`` square (binned px) centred on the beam; None
        keeps the whole (binned) detector.
    centring : {"none", "disk", "com", "plane"}
        "none": no shift (a crop is taken around the fitted beam centre, whole
        pixels). "disk": each pattern shifted so the geometric centre of its
        bright-field disk lands on the array centre (insensitive to intensity
        asymmetry inside the disk). "plane": shift by a plane fitted over the
        scan to the per-position disk centres (removes smooth descan, keeps
        local deflections). "com": shift by the intensity centre of mass;
        this removes most of the DPC (polar) signal and is offered for
        comparison only.
    scaling : {"none", "log", "sqrt"}
        ``log`` is ``log(1 + x)``; negative values are clipped to 0 first.
    normalise : {"none", "max", "minmax", "sum"}
        Per pattern: divide by the maximum, map to [0, 1], or divide by the sum.
    boxing : int
        Odd k: combine each pattern with its k x k neighbouring probe
        positions (clipped at the scan edge) as ``box_mode`` says, then
        normalise again (the paper used the maximum over 5 x 5).
    box_mode : {"max", "mean"}
        Pixel-wise maximum (the paper's) or mean of the k x k patterns. The
        mean averages counting noise down by k (a weak polar signal at low
        dose needs it) and blurs domain walls by ``k // 2`` positions.
    output_size : int or None
        Resize to ``output_size x output_size`` (area averaging when shrinking,
        linear interpolation when enlarging); None keeps the cropped size.
    hot_pixel_repair : bool
        Detect hot/dead pixels at fit time (outliers against their detector
        neighbours in scan statistics, also inside the bright disk) and replace
        them in every pattern by the median of their good neighbours.
    shift_method : {"fourier", "bilinear"}
        Subpixel shift used by the centring.
    """

    bin_factor: int = 1
    crop_radius: int | None = None
    centring: str = "disk"
    scaling: str = "sqrt"
    normalise: str = "max"
    boxing: int = 1
    box_mode: str = "max"
    output_size: int | None = 64
    hot_pixel_repair: bool = True
    shift_method: str = "fourier"

    def __post_init__(self) -> None:
        def _int(name: str, value: Any, lo: int, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"PreprocessConfig.{name}: expected an integer >= {lo}, found {value!r}")

        _int("bin_factor", self.bin_factor, 1)
        _int("crop_radius", self.crop_radius, 1, allow_none=True)
        _int("boxing", self.boxing, 1)
        _int("output_size", self.output_size, 1, allow_none=True)
        if self.boxing % 2 == 0:
            raise ValueError(f"PreprocessConfig.boxing: expected an odd k (a centred k x k box), found {self.boxing}")
        for name, allowed in (
            ("centring", CENTRINGS),
            ("scaling", SCALINGS),
            ("normalise", NORMALISATIONS),
            ("shift_method", SHIFT_METHODS),
            ("box_mode", BOX_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"PreprocessConfig.{name}: expected one of {allowed}, found {getattr(self, name)!r}")
        if not isinstance(self.hot_pixel_repair, (bool, np.bool_)):
            raise ValueError(f"PreprocessConfig.hot_pixel_repair: expected a bool, found {self.hot_pixel_repair!r}")
        # Normalise numpy ints to plain ints so to_dict() is JSON-safe and key() stable.
        for f in ("bin_factor", "crop_radius", "boxing", "output_size"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, int(v))
        object.__setattr__(self, "hot_pixel_repair", bool(self.hot_pixel_repair))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        """Build from :meth:`to_dict` output; unknown keys are an error (they would change the output)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"PreprocessConfig: unknown keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    def key(self) -> str:
        """A stable short hash of the configuration (for caches and provenance)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


# ======================================================================================
# small pure operations on stacks of patterns (N, H, W)
# ======================================================================================
def _neighbour_stack(image: np.ndarray) -> np.ndarray:
    """The 8 neighbours of every pixel, shape (8, H, W); edges mirrored."""
    p = np.pad(image, 1, mode="reflect")
    h, w = image.shape
    return np.stack(
        [p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    )


def find_hot_pixels(
    *images: np.ndarray,
    n_sigma: float = 8.0,
    hot_ratio: float = 2.0,
    dead_ratio: float = 0.5,
) -> np.ndarray:
    """Hot and dead detector pixels from scan statistics (mean or median pattern).

    A pixel is hot when it exceeds the *second brightest* of its 8 neighbours
    by more than ``n_sigma`` robust noise units and by a factor ``hot_ratio``;
    dead when it falls below the second darkest by ``n_sigma`` units and a
    factor ``dead_ratio``. Comparing with order statistics of the neighbours
    (not their mean) means disk edges and one-pixel-wide lines are left alone,
    pairs of adjacent bad pixels are still caught, and pixels inside the bright
    disk are tested against the disk level, not the dark field.

    Parameters
    ----------
    *images : ndarray, shape (Qr, Qc)
        Scan statistics, e.g. the mean pattern over the whole scan (catches
        flickering pixels) and the median over a sample of patterns (immune to
        single cosmic-ray hits). A pixel flagged in any image is returned.
    n_sigma, hot_ratio, dead_ratio : float
        Thresholds (see above).

    Returns
    -------
    ndarray of int, shape (K, 2)
        ``(det_row, det_col)`` of each bad pixel, sorted.
    """
    bad = None
    for image in images:
        m = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if m.ndim != 2:
            raise ValueError(f"find_hot_pixels expects 2-D images, found shape {m.shape}")
        if min(m.shape) < 3:
            continue
        nb = np.sort(_neighbour_stack(m), axis=0)
        med = 0.5 * (nb[3] + nb[4])
        noise = 1.4826 * float(np.median(np.abs(m - med)))
        # A floor keeps a perfectly flat (noise-free) image from flagging rounding.
        noise = max(noise, 1e-6 * float(np.abs(m).max(initial=0.0)), 1e-12)
        if np.array_equal(m, np.round(m)):
            # Integer images (a median of counts) flip by whole counts at low dose.
            noise = max(noise, 0.5)
        hot = (m - nb[6] > n_sigma * noise) & (m > hot_ratio * nb[6])
        dead = (nb[1] - m > n_sigma * noise) & (m < dead_ratio * nb[1])
        flag = hot | dead
        bad = flag if bad is None else bad | flag
    if bad is None:
        return np.zeros((0, 2), dtype=np.int64)
    return np.argwhere(bad).astype(np.int64)


class _HotPixelRepair:
    """Precomputed neighbour lists: replace each bad pixel by the median of its good neighbours."""

    def __init__(self, hot_pixels: np.ndarray, detector_shape: tuple[int, int]) -> None:
        qr, qc = detector_shape
        hp = np.asarray(hot_pixels, dtype=np.int64).reshape(-1, 2)
        bad = np.zeros((qr, qc), dtype=bool)
        bad[hp[:, 0], hp[:, 1]] = True
        self.groups: list[tuple[np.ndarray, np.ndarray]] = []  # (bad flat idx (m,), neighbour flat idx (m, k))
        by_count: dict[int, tuple[list[int], list[list[int]]]] = {}
        for r, c in hp:
            nbrs = []
            for radius in (1, 2):  # widen when a whole 3x3 ring is bad
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        rr, cc = r + dy, c + dx
                        if max(abs(dy), abs(dx)) == radius and 0 <= rr < qr and 0 <= cc < qc and not bad[rr, cc]:
                            nbrs.append(rr * qc + cc)
                if nbrs:
                    break
            if not nbrs:
                continue
            flat, lists = by_count.setdefault(len(nbrs), ([], []))
            flat.append(int(r * qc + c))
            lists.append(nbrs)
        for _, (flat, lists) in sorted(by_count.items()):
            self.groups.append((np.array(flat, dtype=np.int64), np.array(lists, dtype=np.int64)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Repair float patterns ``x`` (N, Qr, Qc) in place and return them."""
        if not self.groups:
            return x
        if not x.flags.c_contiguous:
            raise ValueError("hot-pixel repair works in place on C-contiguous patterns")
        flat = x.reshape(x.shape[0], -1)
        for bad_idx, nbr_idx in self.groups:
            flat[:, bad_idx] = np.median(flat[:, nbr_idx], axis=-1)
        return x


def repair_hot_pixels(patterns: np.ndarray, hot_pixels: np.ndarray) -> np.ndarray:
    """Replace bad pixels by the median of their good 8-neighbours, in every pattern.

    Parameters
    ----------
    patterns : ndarray, shape (N, Qr, Qc) or (Qr, Qc)
    hot_pixels : ndarray of int, shape (K, 2)
        ``(det_row, det_col)``, e.g. from :func:`find_hot_pixels`.

    Returns
    -------
    ndarray, float32, same shape as ``patterns`` (a new array)
    """
    p = np.array(patterns, dtype=np.float32)
    stack = p[None] if p.ndim == 2 else p
    _HotPixelRepair(hot_pixels, stack.shape[1:])(stack)
    return p


def bin_patterns(patterns: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor x factor`` blocks of detector pixels.

    Parameters
    ----------
    patterns : ndarray, shape (..., Qr, Qc)
    factor : int
        A remainder of ``Qr % factor`` rows / ``Qc % factor`` columns at the
        bottom/right is dropped.

    Returns
    -------
    ndarray, shape (..., Qr // factor, Qc // factor)
        float32 (float64 input stays float64); ``factor=1`` returns the input as is.
    """
    p = np.asarray(patterns)
    if factor == 1:
        return p
    dt = np.float64 if p.dtype == np.float64 else np.float32
    qr, qc = p.shape[-2] // factor, p.shape[-1] // factor
    lead = p.shape[:-2]
    t = p[..., : qr * factor, : qc * factor].reshape(*lead, qr, factor, qc, factor)
    return t.sum(axis=(-3, -1), dtype=dt)


def _windows(x: np.ndarray, tops: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Gather one (h, w) window per pattern at integer top-left ``tops``; outside is edge-replicated."""
    n, hh, ww = x.shape
    h, w = size
    uniq, inv = np.unique(tops, axis=0, return_inverse=True)
    inv = inv.ravel()
    if len(uniq) <= 64:
        # Descan gives few distinct integer offsets: plain slices per group, padding only where needed.
        out = np.empty((n, h, w), dtype=x.dtype)
        for g, (ty, tx) in enumerate(uniq):
            sel = slice(None) if len(uniq) == 1 else np.flatnonzero(inv == g)
            pads = ((0, 0), (max(0, -ty), max(0, ty + h - hh)), (max(0, -tx), max(0, tx + w - ww)))
            y0, x0 = max(0, ty), max(0, tx)
            part = x[sel, y0 : min(hh, ty + h), x0 : min(ww, tx + w)]
            out[sel] = np.pad(part, pads, mode="edge") if any(p for ax in pads for p in ax) else part
        return out
    lo_y = max(0, -int(tops[:, 0].min()))
    hi_y = max(0, int(tops[:, 0].max()) + h - hh)
    lo_x = max(0, -int(tops[:, 1].min()))
    hi_x = max(0, int(tops[:, 1].max()) + w - ww)
    if lo_y or hi_y or lo_x or hi_x:
        x = np.pad(x, ((0, 0), (lo_y, hi_y), (lo_x, hi_x)), mode="edge")
    view = sliding_window_view(x, (h, w), axis=(1, 2))
    return view[np.arange(n), tops[:, 0] + lo_y, tops[:, 1] + lo_x]


def _fourier_fraction(win: np.ndarray, frac: np.ndarray, workers: int = 1) -> np.ndarray:
    """out(i) = win(i + frac) for |frac| <= 0.5, by a phase ramp (periodic boundary)."""
    n, h, w = win.shape
    f = sfft.rfft2(win, workers=workers)
    ky = sfft.fftfreq(h).astype(np.float32)
    kx = sfft.rfftfreq(w).astype(np.float32)
    fy = frac[:, 0:1].astype(np.float32)
    fx = frac[:, 1:2].astype(np.float32)
    ey = np.exp((2j * np.pi) * (ky[None, :] * fy)).astype(np.complex64)
    ex = np.exp((2j * np.pi) * (kx[None, :] * fx)).astype(np.complex64)
    # Nyquist terms are their own mirror: the real part keeps the output real.
    if h % 2 == 0:
        ey[:, h // 2] = np.cos(np.pi * fy[:, 0])
    if w % 2 == 0:
        ex[:, -1] = np.cos(np.pi * fx[:, 0])
    f *= ey[:, :, None]
    f *= ex[:, None, :]
    return sfft.irfft2(f, s=(h, w), workers=workers).astype(np.float32, copy=False)


def shift_patterns(
    patterns: np.ndarray,
    centres: np.ndarray,
    size: tuple[int, int] | None = None,
    *,
    method: str = "fourier",
    workers: int = 1,
) -> np.ndarray:
    """Cut a window of each pattern so that ``centres`` lands on the window centre.

    Output pixel ``(i, j)`` samples the input at
    ``(i + cy - (h - 1) / 2, j + cx - (w - 1) / 2)``: the integer part is an
    exact crop (edge-replicated outside the detector), the fractional part a
    Fourier phase ramp (no shift-dependent blur; a little ringing at sharp
    edges) or bilinear interpolation.

    Parameters
    ----------
    patterns : ndarray, shape (N, H, W)
    centres : ndarray, shape (N, 2) or (2,)
        ``(cy, cx)`` per pattern, pixel coordinates.
    size : (h, w), optional
        Window size; default the pattern size.
    method : {"fourier", "bilinear"}
    workers : int
        FFT threads.

    Returns
    -------
    ndarray, float32, shape (N, h, w)
    """
    x = np.asarray(patterns)
    if x.ndim != 3:
        raise ValueError(f"shift_patterns expects (N, H, W) patterns, found shape {x.shape}")
    n, hh, ww = x.shape
    h, w = size if size is not None else (hh, ww)
    c = np.broadcast_to(np.asarray(centres, dtype=np.float64).reshape(-1, 2), (n, 2))
    # A wild centre cannot ask for more than the detector.
    c = np.stack([np.clip(c[:, 0], 0, hh - 1), np.clip(c[:, 1], 0, ww - 1)], axis=1)
    d = c - np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    x = x.astype(np.float32, copy=False)
    if method == "fourier":
        tops = np.floor(d + 0.5).astype(np.int64)
        frac = d - tops
        win = _windows(x, tops, (h, w))
        moved = np.any(frac != 0, axis=1)
        if moved.all():
            return _fourier_fraction(win, frac, workers)
        # Whole-pixel shifts stay exact copies (no FFT round-off).
        out = np.ascontiguousarray(win)
        if moved.any():
            out[moved] = _fourier_fraction(out[moved], frac[moved], workers)
        return out
    if method == "bilinear":
        tops = np.floor(d).astype(np.int64)
        frac = (d - tops).astype(np.float32)
        win = _windows(x, tops, (h + 1, w + 1))
        fy = frac[:, 0, None, None]
        fx = frac[:, 1, None, None]
        top = win[:, :h, :w] * (1 - fx) + win[:, :h, 1:] * fx
        bot = win[:, 1:, :w] * (1 - fx) + win[:, 1:, 1:] * fx
        return (top * (1 - fy) + bot * fy).astype(np.float32, copy=False)
    raise ValueError(f"shift method: expected one of {SHIFT_METHODS}, found {method!r}")


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: area averaging when shrinking, linear when enlarging."""
    if n_out == n_in:
        return np.eye(n_in, dtype=np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    if n_out < n_in:
        edges = np.linspace(0.0, n_in, n_out + 1)
        for i in range(n_out):
            a, b = edges[i], edges[i + 1]
            j = np.arange(int(np.floor(a)), int(np.ceil(b)))
            m[i, j] = (np.minimum(b, j + 1) - np.maximum(a, j)) / (b - a)
    else:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        j0 = np.floor(pos).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        f = pos - j0
        m[np.arange(n_out), j0] += 1 - f
        m[np.arange(n_out), j1] += f
    return m.astype(np.float32)


def _block_mean(x: np.ndarray, f: int, axis: int) -> np.ndarray:
    """Means of ``f`` neighbouring samples along ``axis`` (strided slices: fast, exact)."""
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(0, None, f)
    out = x[tuple(sl)].copy()
    for k in range(1, f):
        sl[axis] = slice(k, None, f)
        out += x[tuple(sl)]
    out *= np.float32(1.0 / f)
    return out


def resize_patterns(patterns: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a stack of patterns (separable and linear).

    Shrinking averages the input area under each output pixel (so the mean
    is kept and nothing aliases; block means for integer factors); enlarging
    interpolates linearly.

    Parameters
    ----------
    patterns : ndarray, shape (N, H, W)
    size : int or (h, w)

    Returns
    -------
    ndarray, float32, shape (N, h, w)
    """
    x = np.asarray(patterns, dtype=np.float32)
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    n, hh, ww = x.shape
    if (h, w) == (hh, ww):
        return x
    # Integer shrinks are block means; anything else a matrix product per axis
    # (BLAS beats gathering the few non-zero taps, measured).
    if ww != w:
        x = _block_mean(x, ww // w, 2) if ww % w == 0 else (x.reshape(n * hh, ww) @ _resize_matrix(ww, w).T).reshape(n, hh, w)
    if hh != h:
        x = _block_mean(x, hh // h, 1) if hh % h == 0 else np.matmul(_resize_matrix(hh, h), x)
    return x


def scale_patterns(patterns: np.ndarray, scaling: str) -> np.ndarray:
    """Apply the intensity scaling ``"none"``, ``"log"`` (log(1 + x)) or ``"sqrt"`` in place (float input)."""
    x = patterns
    if scaling == "none":
        return x
    np.maximum(x, 0, out=x)
    if scaling == "sqrt":
        return np.sqrt(x, out=x)
    if scaling == "log":
        return np.log1p(x, out=x)
    raise ValueError(f"scaling: expected one of {SCALINGS}, found {scaling!r}")


def normalise_patterns(patterns: np.ndarray, normalise: str) -> np.ndarray:
    """Per-pattern normalisation in place (float input).

    ``"max"`` divides by the maximum, ``"minmax"`` maps to [0, 1], ``"sum"``
    divides by the sum. A pattern with no range (all equal) becomes all zeros
    for ``"minmax"`` and is left unchanged by the others when its max/sum is 0.
    """
    x = patterns
    if normalise == "none":
        return x
    n = x.shape[0]
    flat = x.reshape(n, -1)
    if normalise == "max":
        den = flat.max(axis=1)
        flat /= np.where(den > 0, den, 1.0)[:, None]
    elif normalise == "sum":
        den = flat.sum(axis=1, dtype=np.float64).astype(x.dtype)
        flat /= np.where(den != 0, den, 1.0)[:, None]
    elif normalise == "minmax":
        lo = flat.min(axis=1)
        rng = flat.max(axis=1) - lo
        flat -= lo[:, None]
        flat *= np.where(rng > 0, 1.0 / np.where(rng > 0, rng, 1.0), 0.0).astype(x.dtype)[:, None]
    else:
        raise ValueError(f"normalise: expected one of {NORMALISATIONS}, found {normalise!r}")
    return x


def _finite(x: np.ndarray) -> np.ndarray:
    """Replace non-finite values in place (one cheap check in the usual all-finite case)."""
    if not np.isfinite(x).all():
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def _box(slab: np.ndarray, k: int, mode: str) -> np.ndarray:
    """Pixel-wise max or mean over the k x k neighbouring scan positions of (R, C, H, W), clipped at the edges."""
    if mode == "max":
        return _box_max(slab, k)
    from scipy.ndimage import uniform_filter1d

    out = slab.astype(np.float32, copy=True)
    for axis in (0, 1):
        if out.shape[axis] > 1:
            # "nearest" repeats the edge row: the mean over the clipped box, as the max does
            out = uniform_filter1d(out, k, axis=axis, mode="nearest")
    return out


def _box_max(slab: np.ndarray, k: int) -> np.ndarray:
    """Pixel-wise max over the k x k neighbouring scan positions of (R, C, H, W), clipped at the edges.

    Shifted whole-block maxima along each scan axis: contiguous, unlike a
    generic filter whose lines run across the scan axes.
    """
    h = k // 2
    out = slab
    for axis in (0, 1):
        src = out
        out = src.copy()
        n = src.shape[axis]
        for d in range(1, h + 1):
            if d >= n:
                break
            lo = [slice(None)] * src.ndim
            hi = [slice(None)] * src.ndim
            lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
            np.maximum(out[tuple(lo)], src[tuple(hi)], out=out[tuple(lo)])  # neighbour below/right
            np.maximum(out[tuple(hi)], src[tuple(lo)], out=out[tuple(hi)])  # neighbour above/left
    return out


# ======================================================================================
# the fitted pipeline
# ======================================================================================
def _to_binned(c: np.ndarray | float, b: int) -> np.ndarray:
    # Pixel-centre convention: binned pixel j covers raw pixels j*b .. j*b + b - 1.
    return (np.asarray(c, dtype=np.float64) + 0.5) / b - 0.5


def _to_raw(c: np.ndarray | float, b: int) -> np.ndarray:
    return (np.asarray(c, dtype=np.float64) + 0.5) * b - 0.5


def _fit_plane(centres: np.ndarray) -> np.ndarray:
    """Robust least-squares plane ``c = a + b*row + c*col`` for each coordinate; returns (2, 3)."""
    r, c = centres.shape[:2]
    rr, cc = np.indices((r, c), dtype=np.float64)
    a = np.stack([np.ones(r * c), rr.ravel(), cc.ravel()], axis=1)
    y = centres.reshape(-1, 2)
    keep = np.all(np.isfinite(y), axis=1)
    if keep.sum() < 3:
        raise DatasetError("cannot fit a descan plane: fewer than 3 positions with a detectable disk")
    coef = np.zeros((3, 2))
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(a[keep], y[keep], rcond=None)
        res = np.linalg.norm(np.where(np.isfinite(y), y - a @ coef, np.inf), axis=1)
        # Reject outliers (vacuum, holes, strong local deflections) at 4 robust sigmas.
        thr = max(4 * 1.4826 * float(np.median(res[keep])), 0.05)
        new_keep = np.isfinite(res) & (res <= thr)
        if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef.T.copy()


class Preprocessor:
    """A fitted preprocessing pipeline (see the module docstring for the order).

    Parameters
    ----------
    config : PreprocessConfig, optional

    Attributes
    ----------
    beam_centre : (float, float) or None
        Fitted bright-field disk centre in raw detector pixels.
    bf_radius : float or None
        Fitted disk radius in raw detector pixels.
    hot_pixels : ndarray of int, shape (K, 2)
        Repaired detector pixels.
    plane : ndarray, shape (2, 3) or None
        Descan plane (raw px): ``centre = plane @ [1, row, col]``, fitted for
        "plane" (the shift) and "disk" (where each pattern's disk search starts).
    search_margin : float
        How far (raw px) a disk may sit from where its search starts.
    mean_pattern : ndarray or None
        Mean raw pattern from :meth:`fit` (diagnostic, not part of the state).
    disk_centre_map : ndarray, shape (R, C, 2) or None
        Per-position disk centres from :meth:`fit` ("disk"/"plane"; raw px;
        NaN where no disk was found). Diagnostic: the descan map.

    Notes
    -----
    A fitted preprocessor may transform another scan with the same detector
    (a later time slice, say): "disk" and "com" measure every pattern afresh;
    "plane" reuses the fitted descan plane, which needs the same scan shape
    and is right only if the scan geometry is unchanged (refit otherwise).
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config or PreprocessConfig()
        self.beam_centre: tuple[float, float] | None = None
        self.bf_radius: float | None = None
        self.hot_pixels = np.zeros((0, 2), dtype=np.int64)
        self.plane: np.ndarray | None = None
        self.search_margin: float = 0.0
        self.detector_shape: tuple[int, int] | None = None
        self.scan_shape: tuple[int, int] | None = None
        self.fingerprint: str | None = None
        self.mean_pattern: np.ndarray | None = None
        self.disk_centre_map: np.ndarray | None = None
        self._repair: _HotPixelRepair | None = None

    # -- fitted-state helpers ------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` (or :meth:`from_state_dict`) has run."""
        return self.beam_centre is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("Preprocessor is not fitted: call fit(dataset) first")

    @property
    def binned_shape(self) -> tuple[int, int]:
        """Detector shape after binning."""
        self._require_fitted()
        b = self.config.bin_factor
        return self.detector_shape[0] // b, self.detector_shape[1] // b

    @property
    def output_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every transformed pattern."""
        cfg = self.config
        if cfg.output_size is not None:
            return cfg.output_size, cfg.output_size
        if cfg.crop_radius is not None:
            return 2 * cfg.crop_radius, 2 * cfg.crop_radius
        return self.binned_shape

    def _set_hot_pixels(self, hot: np.ndarray) -> None:
        self.hot_pixels = np.asarray(hot, dtype=np.int64).reshape(-1, 2)
        self._repair = _HotPixelRepair(self.hot_pixels, self.detector_shape) if len(self.hot_pixels) else None

    def _check_dataset(self, dataset: Dataset4D) -> None:
        if tuple(dataset.detector_shape) != tuple(self.detector_shape):
            raise DatasetError(
                f"{dataset.name}: the preprocessor was fitted on detector shape {self.detector_shape}, "
                f"this dataset has {dataset.detector_shape}"
            )
        if self.config.centring == "plane" and tuple(dataset.scan_shape) != tuple(self.scan_shape):
            raise DatasetError(
                f"{dataset.name}: the descan plane was fitted on scan shape {self.scan_shape}, "
                f"this dataset has {dataset.scan_shape}; fit the preprocessor on it"
            )

    # -- fit -------------------------------------------------------------------------
    def fit(
        self,
        dataset: Dataset4D,
        *,
        max_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: Callable[[int, int], None] | None = None,
    ) -> "Preprocessor":
        """Fit beam centre and radius, hot pixels and (for "plane") the descan plane.

        One chunked pass over the scan. The first scan row gives provisional
        hot pixels and beam geometry (needed to find disks while the pass
        runs); the full mean pattern (and the first row's median, immune to
        single cosmic-ray hits) gives the final ones.

        Parameters
        ----------
        dataset : Dataset4D
        max_bytes : int
            Raw bytes per chunk.
        progress : callable, optional
            ``progress(rows_done, rows_total)`` after every chunk.

        Returns
        -------
        Preprocessor
            ``self``.
        """
        cfg = self.config
        b = cfg.bin_factor
        qr, qc = dataset.detector_shape
        if qr // b < 2 or qc // b < 2:
            raise DatasetError(f"{dataset.name}: detector {dataset.detector_shape} is too small for bin_factor={b}")
        self.detector_shape = (int(qr), int(qc))
        self.scan_shape = tuple(int(s) for s in dataset.scan_shape)
        rows_total, cols = self.scan_shape
        want_centres = cfg.centring in ("disk", "plane")
        centre_map = np.full((rows_total, cols, 2), np.nan) if want_centres else None
        mean_acc = np.zeros((qr, qc), dtype=np.float64)
        median_img = None
        beam_b = r_b = margin_b = None

        for rows, block in iter_row_blocks(dataset, max_bytes):
            flat = block.reshape(-1, qr, qc)
            mean_acc += flat.sum(axis=0, dtype=np.float64)
            if median_img is None:
                # Provisional geometry from the first scan row (every chunk holds one),
                # so the fit does not depend on the chunk size.
                first = flat[:cols]
                median_img = np.median(first, axis=0)
                first_mean = first.mean(axis=0, dtype=np.float64)
                if cfg.hot_pixel_repair:
                    self._set_hot_pixels(find_hot_pixels(first_mean, median_img))
                fixed = self._repaired(first_mean[None].astype(np.float32))[0]
                cy, cx, r = find_beam(fixed)
                beam_b = _to_binned((cy, cx), b)
                r_b = r / b
                # Generous search while measuring the descan.
                margin_b = max(3.0, 0.5 * r_b)
            if want_centres:
                for row in range(rows.start, rows.stop):
                    # Descan drifts smoothly: start each search from the disk found in
                    # the same column of the row above (row by row, so the result
                    # does not depend on the chunking).
                    guess = beam_b if row == 0 else _to_binned(centre_map[row - 1], b)
                    if row > 0:
                        fill = np.nanmedian(guess, axis=0) if np.isfinite(guess).any() else beam_b
                        guess = np.where(np.isfinite(guess), guess, fill)
                    self._measure_row(flat[(row - rows.start) * cols : (row - rows.start + 1) * cols],
                                      guess, r_b, margin_b, centre_map[row])
            if progress is not None:
                progress(rows.stop, rows_total)

        mean = mean_acc / dataset.n_patterns
        self.mean_pattern = mean
        if cfg.hot_pixel_repair:
            self._set_hot_pixels(find_hot_pixels(mean, median_img))
        fixed = self._repaired(mean[None].astype(np.float32))[0]
        cy, cx, r = find_beam(fixed)
        self.beam_centre = (float(cy), float(cx))
        self.bf_radius = float(r)
        self.search_margin = float(max(2.0 * b, 0.3 * r))
        self.plane = None
        if want_centres:
            self.disk_centre_map = centre_map
            # "plane" shifts by the plane; "disk" starts each search from it.
            if cfg.centring == "plane" or np.isfinite(centre_map[..., 0]).sum() >= 3:
                self.plane = _fit_plane(centre_map)
            rr, cc = np.indices(self.scan_shape)
            pos = np.stack([rr.ravel(), cc.ravel()], axis=1)
            predicted = _to_raw(self._plane_at(pos), b).reshape(centre_map.shape)
            dev = np.linalg.norm(centre_map - predicted, axis=-1)
            if np.isfinite(dev).any():
                # Room for the local deflections actually seen, plus a little.
                self.search_margin = float(max(self.search_margin, np.nanmax(dev) + 2.0 * b))
        self.fingerprint = dataset.fingerprint
        return self

    def _measure_row(self, raw: np.ndarray, guess: np.ndarray, r_b: float, margin_b: float, out: np.ndarray) -> None:
        """Disk centres (raw px, NaN if none) of one scan row's raw patterns into ``out`` (C, 2)."""
        b = self.config.bin_factor
        step = self._sub_n()
        guess = np.broadcast_to(guess, (len(raw), 2))

        def measure(s: int) -> None:
            x = self._binned(self._repaired(raw[s : s + step].astype(np.float32)))
            c = disk_centres(x, guess[s : s + step], r_b, margin=margin_b, nan_if_missing=True)
            out[s : s + len(x)] = _to_raw(c, b)

        starts = range(0, len(raw), step)
        if len(starts) == 1:
            measure(0)
            return
        for fut in [_pool().submit(measure, s) for s in starts]:
            fut.result()

    # -- stage 1: everything but boxing ------------------------------------------------
    def _sub_n(self) -> int:
        qr, qc = self.detector_shape
        return max(1, _WORK_BYTES // (4 * qr * qc))

    def _repaired(self, x: np.ndarray) -> np.ndarray:
        if self._repair is not None:
            self._repair(x)
        return x

    def _binned(self, x: np.ndarray) -> np.ndarray:
        return bin_patterns(x, self.config.bin_factor)

    def _window_size(self) -> tuple[int, int]:
        cr = self.config.crop_radius
        return (2 * cr, 2 * cr) if cr is not None else self.binned_shape

    def _centres(self, x: np.ndarray, positions: np.ndarray | None) -> np.ndarray | None:
        """Per-pattern centres in binned px, or None for "none"."""
        cfg = self.config
        b = cfg.bin_factor
        beam_b = _to_binned(self.beam_centre, b)
        if cfg.centring == "none":
            return None
        if cfg.centring == "disk":
            guess = beam_b if positions is None else self._plane_at(positions)
            return disk_centres(x, guess, self.bf_radius / b, margin=self.search_margin / b)
        if cfg.centring == "com":
            n, h, w = x.shape
            tot = x.sum(axis=(1, 2), dtype=np.float64)
            cy = np.einsum("nij,i->n", x, np.arange(h, dtype=np.float32), dtype=np.float64)
            cx = np.einsum("nij,j->n", x, np.arange(w, dtype=np.float32), dtype=np.float64)
            ok = tot > 0
            safe = np.where(ok, tot, 1.0)
            return np.stack(
                [np.where(ok, cy / safe, beam_b[0]), np.where(ok, cx / safe, beam_b[1])], axis=1
            )
        # plane
        if positions is None:
            raise ValueError('centring="plane" needs the scan positions of the patterns')
        return self._plane_at(positions)

    def _plane_at(self, positions: np.ndarray) -> np.ndarray:
        """Descan-plane disk centres (binned px) at scan positions (beam centre without a plane)."""
        b = self.config.bin_factor
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        if self.plane is None:
            return np.broadcast_to(_to_binned(self.beam_centre, b), (len(pos), 2))
        a = np.stack([np.ones(len(pos)), pos[:, 0], pos[:, 1]], axis=1)
        return _to_binned(a @ self.plane.T, b)

    def _stage1_batch(self, raw: np.ndarray, positions: np.ndarray | None, workers: int = 1) -> np.ndarray:
        cfg = self.config
        x = np.array(raw, dtype=np.float32)  # always a private copy: repair works in place
        if np.asarray(raw).dtype.kind == "f":
            # Float data may carry NaN/inf (masked pixels); counts cannot.
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        x = self._binned(self._repaired(x))
        size = self._window_size()
        centres = self._centres(x, positions)
        if centres is None:
            if cfg.crop_radius is not None:
                t = np.array([(size[0] - 1) / 2.0, (size[1] - 1) / 2.0])
                top = np.floor(_to_binned(self.beam_centre, cfg.bin_factor) - t + 0.5).astype(np.int64)
                x = np.ascontiguousarray(_windows(x, np.broadcast_to(top, (len(x), 2)), size))
        else:
            x = shift_patterns(x, centres, size, method=cfg.shift_method, workers=workers)
        x = scale_patterns(x, cfg.scaling)
        if cfg.output_size is not None:
            x = resize_patterns(x, cfg.output_size)
        x = normalise_patterns(np.ascontiguousarray(x, dtype=np.float32), cfg.normalise)
        return _finite(x)

    def transform_patterns(self, patterns: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Transform patterns without boxing (boxing needs the neighbours; see :meth:`transform_positions`).

        Parameters
        ----------
        patterns : ndarray, shape (N, Qr, Qc)
            Raw patterns on the fitted detector.
        positions : ndarray of int, shape (N, 2), optional
            Their ``(row, col)`` scan positions; required for ``centring="plane"``.

        Returns
        -------
        ndarray, float32, shape (N, H, W)
        """
        self._require_fitted()
        p = np.asarray(patterns)
        if p.ndim == 2:
            p = p[None]
        if tuple(p.shape[1:]) != tuple(self.detector_shape):
            raise DatasetError(
                f"patterns of detector shape {p.shape[1:]} do not match the fitted {self.detector_shape}"
            )
        pos = None if positions is None else np.asarray(positions).reshape(-1, 2)
        out = np.empty((len(p),) + self.output_shape, dtype=np.float32)
        step = self._sub_n()
        starts = range(0, len(p), step)

        def run(s: int, workers: int = 1) -> None:
            out[s : s + step] = self._stage1_batch(p[s : s + step], None if pos is None else pos[s : s + step], workers)

        if len(starts) > 1 and _N_THREADS > 1:
            # numpy and pocketfft release the GIL: sub-batches run in parallel.
            for fut in [_pool().submit(run, s) for s in starts]:
                fut.result()
        else:
            for s in starts:
                run(s, _N_THREADS)
        return out

    def _box_finish(self, x: np.ndarray) -> np.ndarray:
        return _finite(normalise_patterns(x, self.config.normalise))

    def _stage1_rows(self, block: np.ndarray, start: int) -> np.ndarray:
        """Stage 1 of a raw row block (r, C, Qr, Qc) starting at scan row ``start`` -> (r, C, H, W)."""
        r, c = block.shape[:2]
        rr, cc = np.meshgrid(np.arange(start, start + r), np.arange(c), indexing="ij")
        pos = np.stack([rr.ravel(), cc.ravel()], axis=1)
        out = self.transform_patterns(block.reshape((r * c,) + block.shape[2:]), pos)
        return out.reshape((r, c) + out.shape[1:])

    # -- public transforms -------------------------------------------------------------
    def _read_and_transform(self, dataset: Dataset4D, pos: np.ndarray, max_bytes: int) -> np.ndarray:
        """Stage 1 at positions, reading at most ``max_bytes`` of raw patterns at a time."""
        out = np.empty((len(pos),) + self.output_shape, dtype=np.float32)
        per = int(np.prod(dataset.detector_shape)) * dataset.dtype.itemsize
        step = max(1, int(max_bytes // per))
        for s in range(0, len(pos), step):
            out[s : s + step] = self.transform_patterns(dataset.patterns_at(pos[s : s + step]), pos[s : s + step])
        return out

    def transform_positions(
        self, dataset: Dataset4D, positions: np.ndarray, *, max_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> np.ndarray:
        """Transformed patterns at arbitrary scan positions.

        Parameters
        ----------
        dataset : Dataset4D
        positions : ndarray of int, shape (N, 2)
            ``(row, col)`` pairs.
        max_bytes : int
            Raw bytes read at a time (with boxing, the k x k neighbours are read too).

        Returns
        -------
        ndarray, float32, shape (N, H, W)
        """
        self._require_fitted()
        self._check_dataset(dataset)
        pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
        k = self.config.boxing
        if k == 1:
            return self._read_and_transform(dataset, pos, max_bytes)
        h = k // 2
        rows_total, cols = dataset.scan_shape
        offsets = np.array([(dy, dx) for dy in range(-h, h + 1) for dx in range(-h, h + 1)])
        out = np.empty((len(pos),) + self.output_shape, dtype=np.float32)
        # Batches of positions whose k*k neighbours' stage-1 outputs fit in max_bytes.
        per = 4 * int(np.prod(self.output_shape)) * len(offsets)
        step = max(1, int(max_bytes // per))
        for s in range(0, len(pos), step):
            nbr = pos[s : s + step, None, :] + offsets[None]
            nbr[..., 0] = np.clip(nbr[..., 0], 0, rows_total - 1)
            nbr[..., 1] = np.clip(nbr[..., 1], 0, cols - 1)
            uniq, inv = np.unique(nbr.reshape(-1, 2), axis=0, return_inverse=True)
            inv = inv.reshape(len(nbr), len(offsets))
            s1 = self._read_and_transform(dataset, uniq, max_bytes)
            part = out[s : s + step]
            part[:] = s1[inv[:, 0]]
            for j in range(1, len(offsets)):
                if self.config.box_mode == "max":
                    np.maximum(part, s1[inv[:, j]], out=part)
                else:
                    part += s1[inv[:, j]]
            if self.config.box_mode == "mean":
                part /= len(offsets)
        return self._box_finish(out)

    def transform_block(self, block: np.ndarray, rows: slice, dataset: Dataset4D) -> np.ndarray:
        """Transform a block of whole scan rows.

        Parameters
        ----------
        block : ndarray, shape (r, C, Qr, Qc)
            Raw patterns of scan rows ``rows`` (e.g. from ``dataset.iter_chunks``).
        rows : slice
            Which scan rows ``block`` holds.
        dataset : Dataset4D
            The scan; boxing reads the neighbouring rows from it.

        Returns
        -------
        ndarray, float32, shape (r * C, H, W)
        """
        self._require_fitted()
        self._check_dataset(dataset)
        start, stop, _ = rows.indices(dataset.scan_shape[0])
        if block.shape[0] != stop - start:
            raise ValueError(f"block has {block.shape[0]} rows but rows={rows} spans {stop - start}")
        s1 = self._stage1_rows(np.asarray(block), start)
        k = self.config.boxing
        if k > 1:
            h = k // 2
            lo = max(0, start - h)
            hi = min(dataset.scan_shape[0], stop + h)
            parts = []
            if lo < start:
                parts.append(self._stage1_rows(dataset.block(slice(lo, start)), lo))
            parts.append(s1)
            if stop < hi:
                parts.append(self._stage1_rows(dataset.block(slice(stop, hi)), stop))
            slab = np.concatenate(parts, axis=0) if len(parts) > 1 else s1
            boxed = _box(slab, k, self.config.box_mode)
            s1 = self._box_finish(boxed[start - lo : start - lo + (stop - start)])
        return s1.reshape((-1,) + s1.shape[2:])

    def iter_transformed(
        self, dataset: Dataset4D, max_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Transform the whole scan chunk by chunk, reading every pattern once.

        Parameters
        ----------
        dataset : Dataset4D
        max_bytes : int
            Memory for one chunk of raw patterns plus their outputs.

        Yields
        ------
        rows : slice
            Scan rows of this piece.
        patterns : ndarray, float32, shape (r * C, H, W)
            Row-major over ``(row, col)``.
        """
        self._require_fitted()
        self._check_dataset(dataset)
        k = self.config.boxing
        rows_total = dataset.scan_shape[0]
        # The float32 outputs can outweigh the raw patterns (paper: 256 x 256
        # from a small detector): size chunks so raw + output fit in max_bytes.
        raw_per = int(np.prod(dataset.detector_shape)) * dataset.dtype.itemsize
        out_per = 4 * int(np.prod(self.output_shape))
        max_bytes = max(1, int(max_bytes * raw_per / (raw_per + out_per)))
        if k == 1:
            for rows, block in iter_row_blocks(dataset, max_bytes):
                s1 = self._stage1_rows(block, rows.start)
                yield rows, s1.reshape((-1,) + s1.shape[2:])
            return
        h = k // 2
        buf: np.ndarray | None = None  # stage-1 rows [buf_start, buf_start + len(buf))
        buf_start = 0
        done = 0
        for rows, block in iter_row_blocks(dataset, max_bytes):
            s1 = self._stage1_rows(block, rows.start)
            buf = s1 if buf is None else np.concatenate([buf, s1], axis=0)
            ready = rows.stop if rows.stop >= rows_total else rows.stop - h
            if ready <= done:
                continue
            lo = max(0, done - h)
            hi = min(rows_total, ready + h)
            slab = buf[lo - buf_start : hi - buf_start]
            boxed = _box(slab, k, self.config.box_mode)
            out = self._box_finish(np.ascontiguousarray(boxed[done - lo : ready - lo]))
            yield slice(done, ready), out.reshape((-1,) + out.shape[2:])
            done = ready
            keep_from = max(0, done - h)
            buf = buf[keep_from - buf_start :]
            buf_start = keep_from

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to reproduce the transform (JSON-safe)."""
        self._require_fitted()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "detector_shape": list(self.detector_shape),
            "scan_shape": list(self.scan_shape) if self.scan_shape else None,
            "fingerprint": self.fingerprint,
            "beam_centre": [float(v) for v in self.beam_centre],
            "bf_radius": float(self.bf_radius),
            "search_margin": float(self.search_margin),
            "hot_pixels": self.hot_pixels.tolist(),
            "plane": None if self.plane is None else self.plane.tolist(),
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "Preprocessor":
        """Rebuild a fitted preprocessor from :meth:`state_dict` output."""
        if d.get("format") != STATE_FORMAT:
            raise ValueError(f"not a preprocessor state: format={d.get('format')!r}, expected {STATE_FORMAT!r}")
        if int(d.get("version", 0)) > STATE_VERSION:
            raise ValueError(f"preprocessor state version {d.get('version')} is newer than supported {STATE_VERSION}")
        p = cls(PreprocessConfig.from_dict(d["config"]))
        p.detector_shape = tuple(int(v) for v in d["detector_shape"])
        p.scan_shape = tuple(int(v) for v in d["scan_shape"]) if d.get("scan_shape") else None
        p.fingerprint = d.get("fingerprint")
        p.beam_centre = (float(d["beam_centre"][0]), float(d["beam_centre"][1]))
        p.bf_radius = float(d["bf_radius"])
        p.search_margin = float(d["search_margin"])
        p._set_hot_pixels(np.asarray(d.get("hot_pixels") or [], dtype=np.int64).reshape(-1, 2))
        p.plane = None if d.get("plane") is None else np.asarray(d["plane"], dtype=np.float64)
        return p

    def __repr__(self) -> str:
        fitted = f"beam_centre={self.beam_centre}, bf_radius={self.bf_radius}" if self.is_fitted else "unfitted"
        return f"Preprocessor({self.config}, {fitted})"
