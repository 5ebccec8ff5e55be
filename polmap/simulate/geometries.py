"""Domain geometries: which physical state each scan position holds."""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage


from polmap.simulate.states import PHYSICAL_CLASSES


S_NONE, S_PX, S_MX, S_PY, S_MY = range(5)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, sigma: tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation lengths ``sigma`` (px)."""
    pad = [int(3 * s) + 1 for s in sigma]
    noise = rng.standard_normal((shape[0] + 2 * pad[0], shape[1] + 2 * pad[1]))
    f = ndimage.gaussian_filter(noise, sigma, mode="wrap")[pad[0] : pad[0] + shape[0], pad[1] : pad[1] + shape[1]]
    f -= f.mean()
    return f / (f.std() + 1e-12)


def _sample(field_: np.ndarray, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Bilinear sample of a scan-resolution field at sub-pixel coordinates."""
    return ndimage.map_coordinates(field_, [rr.ravel(), cc.ravel()], order=1, mode="nearest").reshape(rr.shape)


def geometry_stripes_90(rr, cc, shape, rng, period: float = 24.0, states=("+x", "+y"), jitter: float = 0.3, **_):
    """90 degree a1/a2 stripes; walls along the anti-diagonal so P is head-to-tail.

    For +x (0, 1) and +y (1, 0) the wall normal (1, 1)/sqrt(2) gives equal normal
    components of P on both sides (a neutral 90 degree wall).
    """
    s = (rr + cc) / np.sqrt(2.0)
    s_max = (shape[0] + shape[1]) / np.sqrt(2.0) + period
    widths = period / 2 * (1 + jitter * rng.uniform(-1, 1, size=int(4 * s_max / period) + 4))
    edges = np.cumsum(widths) - rng.uniform(0, period)
    band = np.searchsorted(edges, s)
    a, b = (PHYSICAL_CLASSES.index(x) for x in states)
    return np.where(band % 2 == 0, a, b)


def geometry_domains_180(rr, cc, shape, rng, axis: str = "x", corr: float = 0.18, anisotropy: float = 3.0, **_):
    """180 degree domains with curved walls: the sign of a smooth random field.

    Walls run preferentially along the polar axis (charge-neutral 180 degree walls).
    """
    base = max(shape) * corr
    sig = (base / anisotropy, base) if axis == "x" else (base, base / anisotropy)
    f = _sample(_smooth_field(shape, rng, sig), rr, cc)
    plus, minus = (S_PX, S_MX) if axis == "x" else (S_PY, S_MY)
    return np.where(f > 0, plus, minus)


def geometry_bubbles(rr, cc, shape, rng, n_needles: int = 5, n_bubbles: int = 3, background: str = "+x", **_):
    """Needle domains of reversed P (elongated along P) and round c-domain bubbles."""
    bg = PHYSICAL_CLASSES.index(background)
    rev = {S_PX: S_MX, S_MX: S_PX, S_PY: S_MY, S_MY: S_PY}[bg]
    along_x = bg in (S_PX, S_MX)
    out = np.full(rr.shape, bg, dtype=np.int64)
    R, C = shape
    for _ in range(n_needles):
        r0, c0 = rng.uniform(0.1, 0.9) * R, rng.uniform(0.1, 0.9) * C
        long, short = rng.uniform(0.15, 0.3) * max(R, C), rng.uniform(2.5, 5.0)
        ax_r, ax_c = (short, long) if along_x else (long, short)
        out[((rr - r0) / ax_r) ** 2 + ((cc - c0) / ax_c) ** 2 < 1] = rev
    for _ in range(n_bubbles):
        r0, c0 = rng.uniform(0.15, 0.85) * R, rng.uniform(0.15, 0.85) * C
        rad = rng.uniform(0.05, 0.1) * min(R, C) + 2
        out[(rr - r0) ** 2 + (cc - c0) ** 2 < rad**2] = S_NONE
    return out


def geometry_flux_closure(rr, cc, shape, rng, center=None, core_radius: float = 2.0, **_):
    """Flux-closure quadrant: four triangular domains circulating around a c-domain core.

    Top +x, right +y, bottom -x, left -y; the diagonal walls are neutral 90 degree walls.
    """
    R, C = shape
    r0, c0 = center if center is not None else ((R - 1) / 2, (C - 1) / 2)
    dr, dc = rr - r0, cc - c0
    vert = np.abs(dr) > np.abs(dc)
    out = np.where(vert, np.where(dr < 0, S_PX, S_MX), np.where(dc > 0, S_PY, S_MY))
    if core_radius > 0:
        out = np.where(dr**2 + dc**2 < core_radius**2, S_NONE, out)
    return out


def geometry_mixed(rr, cc, shape, rng, split: float = 0.55, **_):
    """Demo layout: a flux-closure quadrant on the left, 90 degree stripes with
    c-domain bubbles on the right, separated by a wavy boundary; all five states occur."""
    R, C = shape
    wave = split * C + 0.06 * C * np.sin(2 * np.pi * rr / R * 1.3 + rng.uniform(0, 2 * np.pi))
    left = cc < wave
    fc = geometry_flux_closure(rr, cc, shape, rng, center=((R - 1) / 2, split * C / 2), core_radius=2.5)
    st = geometry_stripes_90(rr, cc, shape, rng, period=max(R, C) / 5, states=("-x", "-y"))
    out = np.where(left, fc, st)
    for _ in range(2):
        r0 = rng.uniform(0.2, 0.8) * R
        c0 = rng.uniform(split + 0.12, 0.9) * C
        rad = rng.uniform(0.06, 0.09) * min(R, C) + 2
        out = np.where((rr - r0) ** 2 + (cc - c0) ** 2 < rad**2, S_NONE, out)
    return out


def geometry_bands(rr, cc, shape, rng, period: float = 40.0, **_):
    """Paper-like layout for the ``axis`` class set: slanted 90 degree bands whose
    sign flips every other pair (so both 90 and 180 degree walls occur) and one
    c-domain band across the scan."""
    st = geometry_stripes_90(rr, cc, shape, rng, period=period, states=("+x", "+y"))
    R, C = shape
    s = (rr + cc) / np.sqrt(2.0)
    flip = (np.floor(s / (2 * period)) % 2) == 1
    out = np.where(flip, np.where(st == S_PX, S_MX, S_MY), st)
    r0 = rng.uniform(0.55, 0.8) * R
    band = np.abs(rr - r0 - 0.15 * (cc - C / 2)) < 0.05 * R
    return np.where(band, S_NONE, out)


def geometry_single(rr, cc, shape, rng, state: str = "+x", **_):
    """A single domain (controls and unit tests)."""
    return np.full(rr.shape, PHYSICAL_CLASSES.index(state), dtype=np.int64)


def geometry_halves(rr, cc, shape, rng, left: str = "+x", right: str = "-x", **_):
    """Two domains split by a straight vertical wall at the middle column."""
    a, b = PHYSICAL_CLASSES.index(left), PHYSICAL_CLASSES.index(right)
    return np.where(cc < shape[1] / 2 - 0.5, a, b)


GEOMETRIES: dict[str, Callable[..., np.ndarray]] = {
    "stripes_90": geometry_stripes_90,
    "domains_180": geometry_domains_180,
    "bubbles": geometry_bubbles,
    "flux_closure": geometry_flux_closure,
    "mixed": geometry_mixed,
    "bands": geometry_bands,
    "single": geometry_single,
    "halves": geometry_halves,
}
