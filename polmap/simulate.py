"""Physics-grounded synthetic 4D-STEM scans of ferroelectric domains, with ground truth.

Patterns come from a multislice CBED library of tetragonal PbTiO3 at 200 kV
(``polmap/data/pattern_library.npz``, built offline by
``tools/make_pattern_library.py`` with abTEM; provenance in the ``.json`` beside it).
In the non-overlapping-disk picture the detector pixel at offset ``k`` (mrad) inside
disk ``g`` has intensity ``I_g(thickness, k + mistilt)``, so a pattern is rendered by
interpolating the library linearly in thickness and bilinearly in beam tilt.

The library holds two crystal orientations: an ``a_domain`` with the polar axis in
the image plane along ``+x`` (detector columns) and a ``c_domain`` with the polar
axis along the beam (class ``none``). The other in-plane directions are derived
exactly by the detector symmetry operation applied to both the pattern and the
tilt: a column mirror gives ``-x``, a transpose ``+y``, a transpose followed by a
row mirror ``-y``.

A scan combines a domain geometry (90 degree stripes, 180 degree domains with
curved walls, bubbles/needles, flux-closure quadrants, a mixed demo), incoherent
wall mixing over the probe footprint, a thickness wedge, a smooth mistilt field,
a descan plane with jitter, diffuse background, Poisson noise at a chosen dose,
and hot and dead detector pixels. Only numpy and scipy are used.

Conventions: positions and vectors are ``(row, col)``; ``+x`` is towards
increasing column, ``+y`` towards increasing row.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from polmap import settings
from polmap.labels import ClassSet

__all__ = [
    "CLASS_SETS",
    "PHYSICAL_CLASSES",
    "PRESETS",
    "GEOMETRIES",
    "OrientationTable",
    "PatternLibrary",
    "SimConfig",
    "SimulatedScan",
    "class_colors",
    "class_directions",
    "demo_path",
    "mounting_matrix",
    "get_preset",
    "load_library",
    "render_pattern",
    "render_patterns",
    "simulate_scan",
    "write_h5",
]

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


# --------------------------------------------------------------------------------------
# The pattern library
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrientationTable:
    """Bragg intensities of one crystal orientation on a full (unfolded) tilt grid.

    Attributes
    ----------
    intensity : ndarray, shape (T, G, n, n), float32
        ``I_g`` for thickness, reflection, tilt row, tilt col; fractions of the
        incident flux. (Reflection before tilt keeps one disk's look-ups within a
        small block of memory.)
    thickness_nm : ndarray, shape (T,)
        Uniformly spaced (one unit cell per step).
    g_mrad : ndarray, shape (G, 2)
        Reflection positions (row, col) in mrad.
    bragg_fraction : ndarray, shape (T,)
        Flux left in all Bragg beams (the rest went to thermal diffuse scattering).
    max_index : int
        Reflections are ``(kr, kc)`` with ``|kr|, |kc| <= max_index``, ordered row-major.
    """

    intensity: np.ndarray
    thickness_nm: np.ndarray
    g_mrad: np.ndarray
    bragg_fraction: np.ndarray
    max_index: int

    @property
    def spacing_mrad(self) -> tuple[float, float]:
        """Reciprocal lattice spacing (row, col) in mrad, read from reflection (1, 1)."""
        m = self.max_index
        g = self.g_mrad[(m + 1) * (2 * m + 1) + (m + 1)]
        return float(g[0]), float(g[1])


@dataclass(frozen=True)
class PatternLibrary:
    """The multislice CBED library (see ``tools/make_pattern_library.py``).

    Attributes
    ----------
    tables : dict of str to OrientationTable
        ``"a_domain"`` (P along +x) and ``"c_domain"`` (P along the beam).
    reflections : ndarray, shape (G, 2), int
        (row, col) Miller-type indices of the stored reflections.
    tilt_axis_mrad : ndarray, shape (n,)
        Beam tilt grid, the same on both axes.
    wavelength_A : float
    sha256 : str
        Hash of the library file (keys caches).
    provenance : dict
        The JSON provenance written by the generator (empty if absent).
    """

    tables: dict[str, OrientationTable]
    reflections: np.ndarray
    tilt_axis_mrad: np.ndarray
    wavelength_A: float
    sha256: str
    provenance: dict[str, Any]

    @property
    def max_index(self) -> int:
        """Largest |index| of the stored reflections."""
        return int(np.abs(self.reflections).max())

    def spacing(self, orientation: str) -> tuple[float, float]:
        """Reciprocal lattice spacing (row, col) in mrad of an orientation."""
        return self.tables[orientation].spacing_mrad

    @property
    def beam_energy_kev(self) -> float:
        """Beam energy the library was computed for."""
        return float(self.provenance.get("beam_energy_kev", 200.0))


def _unfold(reduced: np.ndarray, tilt_idx: np.ndarray, ops: np.ndarray, n_half: int, refl: np.ndarray) -> np.ndarray:
    """Full (T, n, n, G) grid from the stored symmetry-reduced (T, N, G) intensities.

    Grid points reached by several operations (mirror lines) get the average, so the
    result is exactly symmetric.
    """
    m = int(np.abs(refl).max())
    n = 2 * n_half + 1
    full = np.zeros((reduced.shape[0], n, n, reduced.shape[2]), dtype=np.float64)
    count = np.zeros((n, n, reduced.shape[2]))
    for op in ops.astype(int):
        t = tilt_idx.astype(int) @ op.T + n_half
        g = refl.astype(int) @ op.T
        gi = (g[:, 0] + m) * (2 * m + 1) + (g[:, 1] + m)
        idx = (t[:, 0][:, None], t[:, 1][:, None], gi[None, :])
        np.add.at(full, (slice(None),) + idx, reduced)
        np.add.at(count, idx, 1.0)
    if (count == 0).any():
        raise ValueError("pattern library: symmetry unfolding left holes in the tilt grid")
    return (full / count).astype(np.float32)


#: Shipped pattern libraries by material (``tools/make_pattern_library.py --material``).
LIBRARIES = {"PbTiO3": "pattern_library.npz", "BaTiO3": "pattern_library_batio3.npz"}


def _default_library_path(material: str = "PbTiO3") -> Path:
    if material not in LIBRARIES:
        raise ValueError(f"unknown library material {material!r}; shipped: {sorted(LIBRARIES)}")
    return Path(str(importlib.resources.files("polmap") / "data" / LIBRARIES[material]))


@functools.lru_cache(maxsize=4)
def _load_library_cached(path: str) -> PatternLibrary:
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    with np.load(path) as d:
        refl = d["reflections"].astype(int)
        tilt_axis = d["tilt_axis_mrad"].astype(np.float64)
        n_half = (len(tilt_axis) - 1) // 2
        tables = {}
        for orient in [str(o) for o in d["orientations"]]:
            reduced = d[f"{orient}_intensity"].astype(np.float64) * d[f"{orient}_scale"].astype(np.float64)
            full = _unfold(reduced, d[f"{orient}_tilt_index"], d[f"{orient}_symmetry_ops"], n_half, refl)
            intensity = np.ascontiguousarray(full.transpose(0, 3, 1, 2))
            intensity.setflags(write=False)  # shared by every caller of the cached library
            tables[orient] = OrientationTable(
                intensity=intensity,
                thickness_nm=d[f"{orient}_thickness_nm"].astype(np.float64),
                g_mrad=d[f"{orient}_g_mrad"].astype(np.float64),
                bragg_fraction=d[f"{orient}_bragg_fraction"].astype(np.float64),
                max_index=int(np.abs(refl).max()),
            )
        wavelength = float(d["wavelength_A"])
    prov_path = Path(path).with_suffix(".json")
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    return PatternLibrary(tables, refl, tilt_axis, wavelength, digest, prov)


def load_library(path: str | os.PathLike | None = None, *, material: str = "PbTiO3") -> PatternLibrary:
    """Load (and cache) a CBED pattern library.

    Parameters
    ----------
    path : path-like, optional
        An ``.npz`` written by ``tools/make_pattern_library.py``; default is the
        shipped library of ``material``.
    material : str
        A key of :data:`LIBRARIES` (``"PbTiO3"``, ``"BaTiO3"``).

    Returns
    -------
    PatternLibrary
    """
    p = Path(path) if path is not None else _default_library_path(material)
    if not p.exists():
        raise FileNotFoundError(f"pattern library not found: {p}")
    return _load_library_cached(str(p.resolve()))


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Detector:
    size: int
    step: float  # mrad per pixel
    alpha: float  # convergence semi-angle, mrad

    @property
    def q(self) -> np.ndarray:
        """(P, 2) pixel-centre coordinates (row, col) in mrad; optic axis at (D-1)/2."""
        ax = (np.arange(self.size) - (self.size - 1) / 2.0) * self.step
        rr, cc = np.meshgrid(ax, ax, indexing="ij")
        return np.stack([rr.ravel(), cc.ravel()], axis=1)


def _check_detector(lib: PatternLibrary, det: _Detector, max_tilt: float) -> None:
    """Raise ValueError for a detector/probe setup the library cannot render faithfully."""
    gmin = min(min(lib.spacing(o)) for o in lib.tables)
    if det.size < 8:
        raise ValueError(f"detector_size must be >= 8, got {det.size}")
    if det.step <= 0:
        raise ValueError(f"reciprocal_step_mrad must be > 0, got {det.step}")
    if det.alpha <= 0:
        raise ValueError(f"convergence semi-angle must be > 0 mrad, got {det.alpha}")
    half_field = det.size / 2 * det.step
    limit = (lib.max_index + 0.5) * gmin
    if half_field > limit:
        raise ValueError(
            f"detector half field {half_field:.1f} mrad exceeds the library's reflections "
            f"(|index| <= {lib.max_index}, about {limit:.1f} mrad); use a smaller reciprocal_step_mrad"
        )
    t_half = lib.tilt_axis_mrad[-1]
    need = det.alpha + det.step + max_tilt
    if need > t_half + 1e-9:
        raise ValueError(
            f"convergence {det.alpha} mrad + mistilt {max_tilt:.2f} mrad + one pixel exceeds the "
            f"library tilt grid (+-{t_half} mrad)"
        )


def _render_group(
    table: OrientationTable,
    tilt_axis: np.ndarray,
    det: _Detector,
    op_inv: np.ndarray,
    thickness: np.ndarray,
    tilt: np.ndarray,
    descan: np.ndarray,
    out: np.ndarray,
    weight: np.ndarray,
    index: np.ndarray,
    max_elements: int = 2**19,
) -> None:
    """Add ``weight * pattern`` into ``out[index]`` for patterns of one state.

    ``out`` is (N, P) float32 with P = D*D; patterns are fractions of the incident
    flux per pixel; ``index`` must not repeat. ``op_inv`` (2, 2) maps detector-frame
    vectors into the library's crystal frame (the inverse of the state's symmetry
    operation and of the detector's mounting). Chunks run in a small thread pool;
    each writes its own rows.

    Where disks overlap (convergence above half the reflection spacing) a pixel
    sums every disk that covers it: the position-averaged pattern, in which the
    interference between overlapping disks averages out over the probe positions
    of a unit cell (checked against a direct multislice PACBED in the library's
    provenance).
    """
    q_pix = det.q.astype(np.float32)  # (P, 2)
    n_pix = q_pix.shape[0]
    refl_max = table.max_index
    n_side = 2 * refl_max + 1
    g_row, g_col = table.spacing_mrad
    t_axis = table.thickness_nm
    t0, dt, n_t = float(t_axis[0]), float(t_axis[1] - t_axis[0]), len(t_axis)
    u0, du, n_u = float(tilt_axis[0]), float(tilt_axis[1] - tilt_axis[0]), len(tilt_axis)
    n_g = table.intensity.shape[1]
    flat = table.intensity.reshape(-1)
    stride_t, stride_g, stride_r, stride_c = n_g * n_u * n_u, n_u * n_u, n_u, 1
    if flat.size >= 2**31:
        raise ValueError("pattern library too large for 32-bit indexing")
    # flux per pixel of a uniformly filled aperture
    pix_frac = np.float32(det.step**2 / (np.pi * det.alpha**2))
    (a, b), (c, d) = (float(x) for x in op_inv[0]), (float(x) for x in op_inv[1])
    # descan shifts the pattern rigidly: crystal-frame q = S^-1 (q_pix - descan * step)
    qc_r_pix = (a * q_pix[:, 0] + b * q_pix[:, 1])[None, :]
    qc_c_pix = (c * q_pix[:, 0] + d * q_pix[:, 1])[None, :]
    ds = (descan * det.step).astype(np.float32)
    dc_r = (a * ds[:, 0] + b * ds[:, 1])[:, None]
    dc_c = (c * ds[:, 0] + d * ds[:, 1])[:, None]
    m_r = (a * tilt[:, 0] + b * tilt[:, 1]).astype(np.float32)  # mistilt in crystal frame
    m_c = (c * tilt[:, 0] + d * tilt[:, 1]).astype(np.float32)
    f_t = np.clip((thickness - t0) / dt, 0, n_t - 1 - 1e-4)
    i_t = np.floor(f_t).astype(np.int32)
    w_t = (f_t - i_t).astype(np.float32)
    weight = weight.astype(np.float32) * pix_frac

    # Reflections within reach of a pixel: the nearest one and, for overlapping disks, its neighbours.
    reach_r = int(np.ceil(det.alpha / g_row + 0.5))
    reach_c = int(np.ceil(det.alpha / g_col + 0.5))
    offsets = [(dr, dc) for dr in range(-reach_r, reach_r + 1) for dc in range(-reach_c, reach_c + 1)]

    def work(sl: slice) -> None:
        qr = qc_r_pix - dc_r[sl]
        qc = qc_c_pix - dc_c[sl]
        kr0 = np.rint(qr * np.float32(1 / g_row))
        kc0 = np.rint(qc * np.float32(1 / g_col))
        for dkr, dkc in offsets:
            kr = kr0 + np.float32(dkr)
            kc = kc0 + np.float32(dkc)
            k_row = qr - kr * np.float32(g_row)
            k_col = qc - kc * np.float32(g_col)
            # one-pixel antialiased disk edge
            edge = (np.float32(det.alpha) - np.sqrt(k_row * k_row + k_col * k_col)) * np.float32(1 / det.step) + np.float32(0.5)
            valid = (edge > 0) & (np.abs(kr) <= refl_max) & (np.abs(kc) <= refl_max)
            # flat indices: 1-D take is much faster than 2-D fancy indexing
            idx = np.flatnonzero(valid)
            if idx.size == 0:
                continue
            pat = idx // n_pix
            e = np.minimum(edge.ravel().take(idx), np.float32(1.0))
            u_r = (k_row.ravel().take(idx) + m_r[sl].take(pat) - np.float32(u0)) * np.float32(1 / du)
            u_c = (k_col.ravel().take(idx) + m_c[sl].take(pat) - np.float32(u0)) * np.float32(1 / du)
            np.clip(u_r, 0, n_u - 1 - 1e-3, out=u_r)
            np.clip(u_c, 0, n_u - 1 - 1e-3, out=u_c)
            fr, fc = np.floor(u_r), np.floor(u_c)
            wr, wc = u_r - fr, u_c - fc
            wt = w_t[sl].take(pat)
            gi = (kr.ravel().take(idx) + np.float32(refl_max)) * np.float32(n_side) + (kc.ravel().take(idx) + np.float32(refl_max))
            base = (
                i_t[sl].take(pat) * np.int32(stride_t)
                + gi.astype(np.int32) * np.int32(stride_g)
                + fr.astype(np.int32) * np.int32(stride_r)
                + fc.astype(np.int32)
            )
            val = np.zeros(base.shape, dtype=np.float32)
            for dtt, wtt in ((0, 1.0 - wt), (stride_t, wt)):
                for drr, wrr in ((0, 1.0 - wr), (stride_r, wr)):
                    b_off = base + np.int32(dtt + drr)
                    val += (wtt * wrr) * ((1.0 - wc) * flat.take(b_off) + wc * flat.take(b_off + np.int32(stride_c)))
            val *= e * weight[sl].take(pat)
            # (output row, pixel) pairs are unique within one reflection offset because
            # ``index`` has no repeats, so a fancy-index += is exact.
            out_idx = index[sl].take(pat).astype(np.int64) * n_pix + (idx - pat * n_pix)
            out_flat = out.reshape(-1)
            out_flat[out_idx] += val

    chunk = max(1, max_elements // n_pix)
    _run_chunks(work, len(thickness), chunk)


def _run_chunks(fn: Callable[[slice], None], n: int, chunk: int) -> None:
    slices = [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    workers = min(settings.worker_threads(), len(slices))
    if workers <= 1:
        for sl in slices:
            fn(sl)
        return
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(fn, sl) for sl in slices]:
            f.result()


def _as_state_names(classes: Sequence[str] | np.ndarray | str, n: int) -> list[str]:
    if isinstance(classes, str):
        classes = [classes] * n
    names = [str(c) for c in classes]
    bad = sorted({c for c in names if c not in _OPS})
    if bad:
        raise ValueError(f"unknown polarization state(s) {bad}; valid: {PHYSICAL_CLASSES}")
    return names


def render_patterns(
    classes: Sequence[str] | str,
    thickness_nm: float | Sequence[float] | np.ndarray,
    tilt_mrad: Sequence[float] | np.ndarray = (0.0, 0.0),
    descan_px: Sequence[float] | np.ndarray = (0.0, 0.0),
    *,
    detector_size: int = 64,
    reciprocal_step_mrad: float = 0.55,
    convergence_mrad: float = 2.5,
    library: PatternLibrary | None = None,
) -> np.ndarray:
    """Render noise-free CBED patterns of single-domain PbTiO3 (vectorised).

    Parameters
    ----------
    classes : str or sequence of str
        Polarization state(s) from :data:`PHYSICAL_CLASSES` (``"none"``, ``"+x"``, ...).
    thickness_nm : float or array, shape (N,)
        Specimen thickness, within the library range (about 4-40 nm).
    tilt_mrad : array, shape (2,) or (N, 2)
        Crystal mistilt (row, col) in mrad, expressed as the beam direction offset in
        the crystal frame: the pixel at offset ``k`` in disk ``g`` shows ``I_g(k + tilt)``.
    descan_px : array, shape (2,) or (N, 2)
        Rigid shift (row, col) of the pattern on the detector in pixels.
    detector_size : int
        D for a D x D detector; the optic axis is at pixel ``(D - 1) / 2``.
    reciprocal_step_mrad : float
        Detector pixel size in mrad.
    convergence_mrad : float
        Probe convergence semi-angle; disks must not overlap.
    library : PatternLibrary, optional
        Defaults to the shipped library.

    Returns
    -------
    ndarray, shape (N, D, D), float32
        Fraction of the incident electrons landing in each pixel (Bragg disks only).
    """
    lib = library or load_library()
    thick = np.atleast_1d(np.asarray(thickness_nm, dtype=np.float64))
    n = len(thick)
    names = _as_state_names(classes, n)
    if len(names) != n:
        raise ValueError(f"got {len(names)} classes for {n} thicknesses")
    tilt = np.broadcast_to(np.asarray(tilt_mrad, dtype=np.float64), (n, 2)).copy()
    descan = np.broadcast_to(np.asarray(descan_px, dtype=np.float64), (n, 2)).copy()
    det = _Detector(int(detector_size), float(reciprocal_step_mrad), float(convergence_mrad))
    _check_detector(lib, det, float(np.abs(tilt).max(initial=0.0)))
    _check_thickness(lib, thick)
    out = np.zeros((n, det.size * det.size), dtype=np.float32)
    _render_states(lib, det, names, np.ones(n), np.arange(n), thick, tilt, descan, out)
    return out.reshape(n, det.size, det.size)


def render_pattern(
    cls: str,
    thickness_nm: float,
    tilt_mrad: Sequence[float] = (0.0, 0.0),
    descan_px: Sequence[float] = (0.0, 0.0),
    **kwargs: Any,
) -> np.ndarray:
    """Render one noise-free pattern; see :func:`render_patterns` for the parameters.

    Returns
    -------
    ndarray, shape (D, D), float32
    """
    return render_patterns([cls], [thickness_nm], [tilt_mrad], [descan_px], **kwargs)[0]


def _check_thickness(lib: PatternLibrary, thick: np.ndarray) -> None:
    lo = max(t.thickness_nm[0] for t in lib.tables.values())
    hi = min(t.thickness_nm[-1] for t in lib.tables.values())
    if thick.size and (thick.min() < lo - 1e-6 or thick.max() > hi + 1e-6):
        raise ValueError(f"thickness must lie in the library range [{lo:.2f}, {hi:.2f}] nm, got [{thick.min():.2f}, {thick.max():.2f}]")


def _render_states(
    lib: PatternLibrary,
    det: _Detector,
    states: Sequence[str],
    weights: np.ndarray,
    index: np.ndarray,
    thickness: np.ndarray,
    tilt: np.ndarray,
    descan: np.ndarray,
    out: np.ndarray,
    mounting: np.ndarray | None = None,
) -> None:
    """Accumulate weighted patterns of mixed states into ``out`` (N, P), grouped by state.

    ``mounting`` (2, 2) maps crystal-frame vectors onto the detector (a rotated
    or mirrored camera); identity by default.
    """
    mount = np.eye(2) if mounting is None else np.asarray(mounting, dtype=np.float64)
    states = np.asarray(states)
    for state in np.unique(states):
        sel = np.nonzero(states == state)[0]
        # within one state every output row appears once, so scatter-add is exact
        _render_group(
            lib.tables[_ORIENTATION[str(state)]],
            lib.tilt_axis_mrad,
            det,
            np.linalg.inv(mount @ _OPS[str(state)]),
            thickness[sel],
            tilt[sel],
            descan[sel],
            out,
            weights[sel].astype(np.float32),
            index[sel],
        )


# --------------------------------------------------------------------------------------
# Domain geometries: functions (rr, cc, shape, rng, **params) -> state index array
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Configuration and scan synthesis
# --------------------------------------------------------------------------------------
@dataclass
class SimConfig:
    """All parameters of a simulated scan (every field goes into the metadata).

    Parameters
    ----------
    preset : str
        Name recorded in the metadata (``"custom"`` when built by hand).
    scan_shape : (int, int)
        Probe positions (rows, cols).
    detector_size : int
        D for a D x D detector.
    reciprocal_step_mrad : float
        Detector pixel size.
    convergence_mrad : float
        Probe convergence semi-angle. Above half the reflection spacing the disks
        overlap and each pixel sums the disks that cover it (position-averaged
        CBED); the library's tilt range must cover it plus the mistilt.
    real_step_nm : float
        Scan step.
    geometry : str
        Key of :data:`GEOMETRIES`.
    geometry_params : dict
        Extra keyword arguments of the geometry function.
    class_set : str
        ``"signed"``, ``"axis"`` or ``"anonymous"`` (names that say nothing of a
        direction, in an order unrelated to one): the classes of ``label_map``.
    library : str
        Material of the pattern library (:data:`LIBRARIES`): ``"PbTiO3"`` or
        ``"BaTiO3"`` (a weaker polarity; its library reaches 15 mrad of tilt,
        enough for overlapping disks).
    detector_rotation_deg : float
        The camera's rotation against the crystal frame (degrees, from +column
        towards +row): patterns are rendered rotated, any angle.
    detector_mirror : bool
        The camera is mounted mirrored (columns reversed, before the rotation).
    probe_footprint_px : float
        Gaussian sigma (scan pixels) of the probe footprint that mixes neighbouring
        domains' patterns incoherently at walls.
    wall_threshold : float
        A position is a wall when its dominant domain weight is below this.
    thickness_nm : (float, float)
        Thickness at the start and end of the wedge.
    wedge_angle_deg : float
        Direction of increasing thickness (0: along +col, 90: along +row).
    thickness_roughness_nm : float
        Std of a smooth random thickness modulation on top of the wedge.
    mistilt_mrad : float
        Largest |component| of the smooth mistilt field (0 = perfectly on zone).
    mistilt_corr : float
        Correlation length of the mistilt field as a fraction of the scan size.
    descan_px : float
        Descan shift range across the scan (pixels, largest |component| at a corner).
    descan_jitter_px : float
        Std of the per-position random shift on top of the descan plane.
    dose : float or None
        Incident electrons per pattern; ``None`` gives noise-free expected counts.
    diffuse_fraction : float
        Extra diffuse background (inelastic, amorphous surface layers) as a fraction
        of the dose, added to the thermal diffuse flux lost from the Bragg beams.
    diffuse_width_mrad : float
        Width of the (Lorentzian-squared) diffuse profile.
    detector_blur_px : float
        Gaussian sigma of the detector point-spread function.
    n_hot_pixels, n_dead_pixels : int
        Detector defects; at least a third of each sit inside the bright-field disk.
    hot_level : float
        Mean hot-pixel counts as a multiple of a vacuum bright-field pixel's counts.
    seed : int
        Seed of every random choice; the same seed gives identical data.
    """

    preset: str = "custom"
    scan_shape: tuple[int, int] = (48, 64)
    detector_size: int = 64
    reciprocal_step_mrad: float = 0.55
    convergence_mrad: float = 2.5
    real_step_nm: float = 1.0
    geometry: str = "mixed"
    geometry_params: dict[str, Any] = field(default_factory=dict)
    class_set: str = "signed"
    library: str = "PbTiO3"
    detector_rotation_deg: float = 0.0
    detector_mirror: bool = False
    probe_footprint_px: float = 0.7
    wall_threshold: float = 0.9
    thickness_nm: tuple[float, float] = (10.0, 30.0)
    wedge_angle_deg: float = 0.0
    thickness_roughness_nm: float = 0.3
    mistilt_mrad: float = 1.5
    mistilt_corr: float = 0.35
    descan_px: float = 2.5
    descan_jitter_px: float = 0.1
    dose: float | None = 5e4
    diffuse_fraction: float = 0.05
    diffuse_width_mrad: float = 12.0
    detector_blur_px: float = 0.5
    n_hot_pixels: int = 6
    n_dead_pixels: int = 6
    hot_level: float = 4.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every parameter."""
        d = dataclasses.asdict(self)
        d["scan_shape"] = list(self.scan_shape)
        d["thickness_nm"] = list(self.thickness_nm)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimConfig":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "scan_shape" in known:
            known["scan_shape"] = tuple(known["scan_shape"])
        if "thickness_nm" in known:
            known["thickness_nm"] = tuple(known["thickness_nm"])
        return cls(**known)

    def replace(self, **changes: Any) -> "SimConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(copy.deepcopy(self), **changes)


PRESETS: dict[str, SimConfig] = {
    # The app's demo: all five states, walls, wedge, mistilt, descan, noise, defects.
    "demo": SimConfig(preset="demo", scan_shape=(96, 128), geometry="mixed", seed=1),
    # Small and fast for unit tests.
    "tiny": SimConfig(
        preset="tiny", scan_shape=(24, 32), detector_size=32, reciprocal_step_mrad=1.0,
        geometry="mixed", dose=2e4, seed=3,
    ),
    "small": SimConfig(preset="small", scan_shape=(48, 64), geometry="mixed", seed=2),
    "stripes_90": SimConfig(preset="stripes_90", scan_shape=(64, 96), geometry="stripes_90", geometry_params={"period": 28.0}, seed=4),
    "domains_180": SimConfig(preset="domains_180", scan_shape=(64, 96), geometry="domains_180", seed=5),
    "bubbles": SimConfig(preset="bubbles", scan_shape=(64, 96), geometry="bubbles", seed=6),
    "flux_closure": SimConfig(preset="flux_closure", scan_shape=(80, 80), geometry="flux_closure", seed=7),
    # Like the paper's headline scan: 206 x 34 positions, classes na/vertical/horizontal.
    "paper_axis": SimConfig(
        preset="paper_axis", scan_shape=(206, 34), geometry="bands", geometry_params={"period": 36.0},
        class_set="axis", wedge_angle_deg=90.0, thickness_nm=(12.0, 28.0), seed=8,
    ),
    # Harder than the demo: wider wedge (crosses a Friedel sign change near 37 nm),
    # larger and faster-varying mistilt, 10x lower dose.
    "hard": SimConfig(
        preset="hard", scan_shape=(96, 128), geometry="mixed", thickness_nm=(6.0, 38.0), mistilt_mrad=1.9,
        mistilt_corr=0.2, descan_px=3.0, dose=5e3, seed=11,
    ),
    # Like multislice scans made elsewhere: BaTiO3 (a weaker polarity), 11 mrad so that
    # the disks overlap (twice the reflection spacing), position-averaged patterns,
    # a thickness wedge and mistilt, 3e4 electrons: +P and -P class means differ by a
    # few percent after preprocessing (tests/test_simulate.py measures it).
    "weak": SimConfig(
        preset="weak", scan_shape=(48, 64), library="BaTiO3", detector_size=48, reciprocal_step_mrad=1.0,
        convergence_mrad=11.0, geometry="mixed", thickness_nm=(16.0, 20.0), mistilt_mrad=0.5, mistilt_corr=0.3,
        descan_px=3.0, dose=3e4, seed=12,
    ),
    # Baseline control: on zone, constant thickness, no descan, no noise or defects.
    "control": SimConfig(
        preset="control", scan_shape=(48, 64), geometry="mixed", thickness_nm=(20.0, 20.0),
        thickness_roughness_nm=0.0, mistilt_mrad=0.0, descan_px=0.0, descan_jitter_px=0.0,
        dose=None, diffuse_fraction=0.0, detector_blur_px=0.0, n_hot_pixels=0, n_dead_pixels=0, seed=9,
    ),
}


# The weak preset seen through other cameras and with other names: polmap must do as well
# on each (nothing in it may depend on a detector orientation or a class name).
PRESETS["weak_mirrored"] = PRESETS["weak"].replace(preset="weak_mirrored", detector_mirror=True)
PRESETS["weak_rot90"] = PRESETS["weak"].replace(preset="weak_rot90", detector_rotation_deg=90.0)
PRESETS["weak_rot30"] = PRESETS["weak"].replace(preset="weak_rot30", detector_rotation_deg=30.0)
PRESETS["weak_anonymous"] = PRESETS["weak"].replace(preset="weak_anonymous", class_set="anonymous")


def get_preset(name: str, **overrides: Any) -> SimConfig:
    """A copy of a preset, optionally with fields overridden.

    Raises
    ------
    ValueError
        For an unknown preset name (the message lists the valid ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides)


@dataclass
class SimulatedScan:
    """A synthetic 4D-STEM scan with its ground truth.

    Attributes
    ----------
    data : ndarray, (R, C, D, D) uint16
        Detector counts (with ``dose=None``: noise-free expected counts for 1e4
        electrons, rounded).
    label_map : ndarray, (R, C) int16
        Dominant class per position in ``class_names``.
    wall_mask : ndarray, (R, C) bool
        True where the dominant domain weight is below ``wall_threshold``.
    polarization : ndarray, (R, C, 2) float32
        Weighted in-plane polarization (p_row, p_col); 0 for c-domains.
    thickness : ndarray, (R, C) float32
        Thickness in nm.
    tilt : ndarray, (R, C, 2) float32
        Mistilt (row, col) in mrad.
    descan : ndarray, (R, C, 2) float32
        Pattern shift (row, col) on the detector in pixels.
    state_weights : ndarray, (5, R, C) float32
        Weights of the physical states :data:`PHYSICAL_CLASSES` at each position.
    class_names, class_colors : list of str
    metadata : dict
        Every physics parameter, the seed, preset, library hash, timing.
    """

    data: np.ndarray
    label_map: np.ndarray
    wall_mask: np.ndarray
    polarization: np.ndarray
    thickness: np.ndarray
    tilt: np.ndarray
    descan: np.ndarray
    state_weights: np.ndarray
    class_names: list[str]
    class_colors: list[str]
    metadata: dict[str, Any]

    @property
    def scan_shape(self) -> tuple[int, int]:
        """(rows, cols) of the scan."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    def to_dataset(self):
        """Wrap as a :class:`polmap.io.dataset.Dataset4D` with calibration and ground truth."""
        from polmap.io.dataset import Calibration, Dataset4D, GroundTruth

        md = self.metadata
        cal = Calibration(
            real_step=md["real_step_nm"], real_units="nm", reciprocal_step=md["reciprocal_step_mrad"],
            reciprocal_units="mrad", beam_energy_kev=md["beam_energy_kev"], convergence_mrad=md["convergence_mrad"],
        )
        gt = GroundTruth(self.label_map, list(self.class_names), list(self.class_colors), self.wall_mask,
                         class_directions=dict(md.get("class_directions") or {}) or None)
        return Dataset4D.from_array(self.data, name=f"sim-{md.get('preset', 'custom')}", calibration=cal, ground_truth=gt, metadata=md)


def _state_weights(cfg: SimConfig, rng: np.random.Generator, supersample: int = 4) -> np.ndarray:
    """(5, R, C) area fractions of each state, blurred by the probe footprint."""
    if cfg.geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {cfg.geometry!r}; valid: {sorted(GEOMETRIES)}")
    R, C = cfg.scan_shape
    ss = supersample
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    rr = (np.arange(R)[:, None] + sub[None, :]).ravel()
    cc = (np.arange(C)[:, None] + sub[None, :]).ravel()
    RR, CC = np.meshgrid(rr, cc, indexing="ij")
    states = np.asarray(GEOMETRIES[cfg.geometry](RR, CC, (R, C), rng, **cfg.geometry_params))
    onehot = (states[None] == np.arange(5)[:, None, None]).astype(np.float32)
    w = onehot.reshape(5, R, ss, C, ss).mean(axis=(2, 4))
    if cfg.probe_footprint_px > 0:
        w = np.stack([ndimage.gaussian_filter(x, cfg.probe_footprint_px, mode="nearest") for x in w])
    w[w < 0.02] = 0.0  # negligible contributions would only cost render time
    return (w / w.sum(axis=0, keepdims=True)).astype(np.float32)


def _thickness_map(cfg: SimConfig, rng: np.random.Generator, lib: PatternLibrary) -> np.ndarray:
    R, C = cfg.scan_shape
    rr, cc = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    ang = np.radians(cfg.wedge_angle_deg)
    s = rr * np.sin(ang) + cc * np.cos(ang)
    s = (s - s.min()) / max(s.max() - s.min(), 1e-12)
    t = cfg.thickness_nm[0] + (cfg.thickness_nm[1] - cfg.thickness_nm[0]) * s
    if cfg.thickness_roughness_nm > 0:
        t = t + cfg.thickness_roughness_nm * _smooth_field((R, C), rng, (max(R, C) * 0.1,) * 2)
    lo = max(tb.thickness_nm[0] for tb in lib.tables.values())
    hi = min(tb.thickness_nm[-1] for tb in lib.tables.values())
    return np.clip(t, lo, hi)


def _tilt_field(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    R, C = cfg.scan_shape
    if cfg.mistilt_mrad <= 0:
        return np.zeros((R, C, 2))
    sig = max(cfg.mistilt_corr * max(R, C), 1.0)
    rr, cc = np.meshgrid(np.linspace(-1, 1, R), np.linspace(-1, 1, C), indexing="ij")
    comps = []
    for _ in range(2):
        # smooth random bending plus a gentle linear gradient
        f = _smooth_field((R, C), rng, (sig, sig)) + rng.uniform(-1, 1) * rr + rng.uniform(-1, 1) * cc
        f = f - f.mean()
        comps.append(cfg.mistilt_mrad * f / (np.abs(f).max() + 1e-12))
    return np.stack(comps, axis=-1)


def _descan_field(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    R, C = cfg.scan_shape
    rr, cc = np.meshgrid(np.linspace(-1, 1, R), np.linspace(-1, 1, C), indexing="ij")
    out = np.zeros((R, C, 2))
    if cfg.descan_px > 0:
        for i in range(2):
            a, b = rng.uniform(-1, 1, 2)
            plane = a * rr + b * cc
            out[..., i] = cfg.descan_px * plane / max(np.abs(plane).max(), 1e-12)
    if cfg.descan_jitter_px > 0:
        out += rng.normal(0, cfg.descan_jitter_px, size=out.shape)
    return out


def _diffuse_profile(det: _Detector, width: float) -> np.ndarray:
    """Fraction of an isotropic diffuse flux per pixel, (D, D); integrates to 1 over the plane."""
    q = det.q
    q2 = (q**2).sum(axis=1) / width**2
    return (det.step**2 / (np.pi * width**2) / (1 + q2) ** 2).reshape(det.size, det.size).astype(np.float32)


def _defects(cfg: SimConfig, rng: np.random.Generator, det: _Detector, descan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of hot and dead pixels, none adjacent to another; a third of each
    sits inside the bright-field disk (around its mean position)."""
    D = det.size
    centre = (D - 1) / 2 + descan.reshape(-1, 2).mean(axis=0)
    rr, cc = np.meshgrid(np.arange(D), np.arange(D), indexing="ij")
    r_in = max(det.alpha / det.step - 1.0, 1.0)
    inside_mask = (((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) <= r_in**2).ravel()
    blocked = np.zeros(D * D, dtype=bool)
    picks = []
    for n in (cfg.n_hot_pixels, cfg.n_dead_pixels):
        n_in = int(np.ceil(n / 3)) if n else 0
        sel: list[int] = []
        for want_inside, count in ((True, n_in), (False, n - n_in)):
            for _ in range(count):
                cand = np.nonzero((inside_mask == want_inside) & ~blocked)[0]
                if cand.size == 0:
                    cand = np.nonzero(~blocked)[0]
                if cand.size == 0:
                    break
                i = int(rng.choice(cand))
                sel.append(i)
                r, c = divmod(i, D)
                blocked[(np.clip(r + np.array([-1, 0, 1])[:, None], 0, D - 1) * D + np.clip(c + np.array([-1, 0, 1])[None, :], 0, D - 1)).ravel()] = True
        picks.append(np.sort(np.array(sel, dtype=np.int64)))
    return picks[0], picks[1]


def simulate_scan(config: SimConfig | str, *, library: PatternLibrary | None = None) -> SimulatedScan:
    """Synthesise a 4D-STEM scan of ferroelectric domains with ground truth.

    Parameters
    ----------
    config : SimConfig or str
        The parameters, or the name of a preset in :data:`PRESETS`.
    library : PatternLibrary, optional
        Defaults to the shipped PbTiO3 library.

    Returns
    -------
    SimulatedScan
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    t_start = time.perf_counter()
    lib = library or load_library(material=cfg.library)
    cs = _class_set(cfg.class_set)
    mount = mounting_matrix(cfg.detector_rotation_deg, cfg.detector_mirror)
    R, C = (int(x) for x in cfg.scan_shape)
    if R < 1 or C < 1:
        raise ValueError(f"scan_shape must be positive, got {cfg.scan_shape}")
    if cfg.dose is not None and cfg.dose <= 0:
        raise ValueError(f"dose must be > 0 or None, got {cfg.dose}")
    det = _Detector(int(cfg.detector_size), float(cfg.reciprocal_step_mrad), float(cfg.convergence_mrad))
    _check_detector(lib, det, cfg.mistilt_mrad)
    rng = np.random.default_rng(cfg.seed)
    # Independent streams so that changing one ingredient leaves the others alone.
    r_geom, r_thick, r_tilt, r_desc, r_noise, r_def = (np.random.default_rng(s) for s in rng.spawn(6))

    weights = _state_weights(cfg, r_geom)
    thickness = _thickness_map(cfg, r_thick, lib)
    tilt = _tilt_field(cfg, r_tilt)
    descan = _descan_field(cfg, r_desc)

    N, P = R * C, det.size * det.size
    wflat = weights.reshape(5, N)
    pos_idx, state_idx = np.nonzero(wflat.T > 0)  # position-major, so pos_idx is sorted
    states = np.asarray(PHYSICAL_CLASSES)[state_idx]
    # Diffuse background: TDS flux lost from the Bragg beams plus an extra fraction.
    tds = np.zeros(N)
    for s_i, name in enumerate(PHYSICAL_CLASSES):
        tb = lib.tables[_ORIENTATION[name]]
        tds += wflat[s_i] * (1.0 - np.interp(thickness.reshape(N), tb.thickness_nm, tb.bragg_fraction))
    diffuse_amount = (tds + cfg.diffuse_fraction).astype(np.float32)
    profile = _diffuse_profile(det, cfg.diffuse_width_mrad).reshape(1, -1)
    dose = float(cfg.dose) if cfg.dose is not None else 1e4
    hot, dead = _defects(cfg, r_def, det, descan)
    # hot pixels: a few times the counts of a vacuum bright-field pixel
    vacuum_bf = dose * det.step**2 / (np.pi * det.alpha**2)
    hot_mean = cfg.hot_level * vacuum_bf * r_def.uniform(0.7, 1.3, size=hot.size)
    chunk = 256  # fixed, so the noise does not depend on the number of threads
    gens = r_noise.spawn((N + chunk - 1) // chunk)
    data = np.empty((N, P), dtype=np.uint16)
    u16_max = np.iinfo(np.uint16).max
    blur_sigma = (0, cfg.detector_blur_px, cfg.detector_blur_px)
    block = 8 * chunk  # positions rendered at a time: bounds the float32 working memory

    for b0 in range(0, N, block):
        b1 = min(N, b0 + block)
        lo, hi = np.searchsorted(pos_idx, [b0, b1])
        expected = np.zeros((b1 - b0, P), dtype=np.float32)
        sel = slice(lo, hi)
        _render_states(
            lib, det, states[sel], wflat[state_idx[sel], pos_idx[sel]], pos_idx[sel] - b0,
            thickness.reshape(N)[pos_idx[sel]], tilt.reshape(N, 2)[pos_idx[sel]], descan.reshape(N, 2)[pos_idx[sel]],
            expected, mount,
        )

        def detect(sl: slice, b0: int = b0, expected: np.ndarray = expected) -> None:
            g = gens[(b0 + sl.start) // chunk]
            lam = expected[sl] + diffuse_amount[b0 + sl.start : b0 + sl.stop, None] * profile
            if cfg.detector_blur_px > 0:
                lam = ndimage.gaussian_filter(lam.reshape(-1, det.size, det.size), blur_sigma, mode="constant")
            lam = lam.reshape(-1, P) * np.float32(dose)
            counts = g.poisson(lam) if cfg.dose is not None else np.rint(lam)
            if hot.size:
                counts[:, hot] = g.poisson(np.broadcast_to(hot_mean, (len(lam), hot.size)))
            if dead.size:
                counts[:, dead] = 0
            data[b0 + sl.start : b0 + sl.stop] = np.clip(counts, 0, u16_max)

        _run_chunks(detect, b1 - b0, chunk)
    data = data.reshape(R, C, det.size, det.size)

    dominant_state = np.argmax(weights, axis=0)
    to_class = np.array([cs["from_physical"][n] for n in PHYSICAL_CLASSES])
    # Dominant class: sum state weights per class (e.g. +x and -x are both 'horizontal').
    cls_w = np.zeros((len(cs["names"]), R, C), dtype=np.float32)
    for s_i in range(5):
        cls_w[to_class[s_i]] += weights[s_i]
    label_map = np.argmax(cls_w, axis=0).astype(np.int16)
    wall_mask = weights.max(axis=0) < cfg.wall_threshold
    pol_vec = np.array([POLARIZATION[n] for n in PHYSICAL_CLASSES], dtype=np.float32)
    polarization = np.einsum("src,sk->rck", weights, pol_vec)

    lib_prov = lib.provenance
    metadata = {
        **cfg.to_dict(),
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "beam_energy_kev": lib.beam_energy_kev,
        "wavelength_A": lib.wavelength_A,
        "material": lib_prov.get("material", "PbTiO3, tetragonal P4mm"),
        "library_sha256": lib.sha256,
        "library_configs": lib_prov.get("frozen_phonons", {}).get("configs"),
        "reciprocal_spacing_mrad": {o: list(lib.spacing(o)) for o in lib.tables},
        "physical_classes": PHYSICAL_CLASSES,
        "class_names": list(cs["names"]),
        "class_colors": list(cs["colors"]),
        "class_directions": class_directions(cfg.class_set, mount),
        "detector_mounting": mount.round(9).tolist(),
        "counts_per_electron": 1.0,
        "noise": "poisson" if cfg.dose is not None else "none (expected counts for 1e4 electrons)",
        "hot_pixels": hot.tolist(),
        "dead_pixels": dead.tolist(),
        "optic_axis_px": [(det.size - 1) / 2.0] * 2,
        "n_wall_positions": int(wall_mask.sum()),
        "dominant_state_counts": {n: int((dominant_state == i).sum()) for i, n in enumerate(PHYSICAL_CLASSES)},
        "generation_time_s": round(time.perf_counter() - t_start, 3),
    }
    return SimulatedScan(
        data=data,
        label_map=label_map,
        wall_mask=wall_mask,
        polarization=polarization.astype(np.float32),
        thickness=thickness.astype(np.float32),
        tilt=tilt.astype(np.float32),
        descan=descan.astype(np.float32),
        state_weights=weights,
        class_names=list(cs["names"]),
        class_colors=list(cs["colors"]),
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
def write_h5(scan: SimulatedScan, path: str | os.PathLike) -> Path:
    """Write a simulated scan in polmap's HDF5 layout (see ``docs/api.md``).

    The data are uncompressed and chunked one scan row per chunk; the file is written
    to a temporary name in the same folder and renamed, so a reader never sees a
    half-written file.

    Parameters
    ----------
    scan : SimulatedScan
    path : path-like

    Returns
    -------
    Path
        The written file.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = scan.metadata
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            R, C, Qr, Qc = scan.data.shape
            d = f.create_dataset("data", data=scan.data, chunks=(1, C, Qr, Qc))
            d.attrs["real_step_nm"] = float(md["real_step_nm"])
            d.attrs["reciprocal_step_mrad"] = float(md["reciprocal_step_mrad"])
            d.attrs["beam_energy_kev"] = float(md["beam_energy_kev"])
            d.attrs["convergence_mrad"] = float(md["convergence_mrad"])
            g = f.create_group("ground_truth")
            lm = g.create_dataset("label_map", data=scan.label_map.astype(np.int16))
            lm.attrs["class_names"] = json.dumps(list(scan.class_names))
            lm.attrs["class_colors"] = json.dumps(list(scan.class_colors))
            if md.get("class_directions"):
                lm.attrs["class_directions"] = json.dumps(md["class_directions"])
            g.create_dataset("wall_mask", data=scan.wall_mask.astype(bool))
            g.create_dataset("polarization", data=scan.polarization.astype(np.float32))
            g.create_dataset("thickness_nm", data=scan.thickness.astype(np.float32))
            g.create_dataset("tilt_mrad", data=scan.tilt.astype(np.float32))
            g.create_dataset("descan_px", data=scan.descan.astype(np.float32))
            f.attrs["polmap_format"] = FORMAT_NAME
            f.attrs["polmap_version"] = FORMAT_VERSION
            f.attrs["metadata"] = json.dumps(md)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return settings.cache_dir()


def demo_path(cache_dir: str | os.PathLike | None = None, *, preset: str = "demo", seed: int | None = None) -> Path:
    """Path of the demo scan, generating it once into the cache.

    Parameters
    ----------
    cache_dir : path-like, optional
        Defaults to ``$POLMAP_CACHE`` or ``~/.cache/polmap``.
    preset : str
        Preset to generate (``"demo"``).
    seed : int, optional
        Overrides the preset's seed.

    Returns
    -------
    Path
        An HDF5 file; its name is keyed by preset, seed, library hash and format
        version, so a new library or format regenerates it.
    """
    cfg = get_preset(preset) if seed is None else get_preset(preset, seed=seed)
    lib = load_library()
    cfg_hash = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    name = f"sim-{cfg.preset}-seed{cfg.seed}-lib{lib.sha256[:10]}-cfg{cfg_hash}-v{FORMAT_VERSION}.h5"
    path = _cache_dir(cache_dir) / name
    if not path.exists():
        write_h5(simulate_scan(cfg, library=lib), path)
    return path
