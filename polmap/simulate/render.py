"""Convergent-beam patterns from a library: overlapping disks, position-averaged, vectorised."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from polmap import settings

from polmap.simulate.states import PHYSICAL_CLASSES, _OPS, _ORIENTATION
from polmap.simulate.library import OrientationTable, PatternLibrary, load_library


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
