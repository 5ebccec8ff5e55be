#!/usr/bin/env python
"""Build polmap's CBED pattern libraries (tetragonal PbTiO3, BaTiO3) with abTEM multislice.

Run with the separate abTEM environment (polmap itself never imports abTEM)::

    /tmp/abtem_venv/bin/python tools/make_pattern_library.py            # full library
    /tmp/abtem_venv/bin/python tools/make_pattern_library.py --quick    # smoke test

Method
------
Plane-wave multislice through a periodic (supercell of the) unit cell, one run per
incident-beam tilt, with an exit plane after every unit cell along the beam. The
amplitude of Bragg beam ``g`` is read from the FFT of the exit wave. In the
non-overlapping-disk CBED picture the detector pixel at offset ``k`` (mrad) inside
disk ``g`` has intensity ``I_g(thickness, k + mistilt)``, so a 2-D tilt grid that
covers the probe cone plus the largest mistilt gives every pattern we need.

Two orientations, both with the beam along a pseudo-cubic axis:

``a_domain``
    polar ``c`` axis in the image plane along +x (detector columns); projected cell
    ``c`` (x) by ``a`` (y); the beam runs along an ``a`` axis. The structure has an
    exact mirror y -> -y, so only tilts with ``tilt_row >= 0`` are computed.
``c_domain``
    polar axis along the beam; projected cell ``a`` by ``a`` with exact 4mm symmetry,
    so only the wedge ``0 <= tilt_row <= tilt_col`` is computed.

The library stores the computed (symmetry-reduced) tilts; ``polmap.simulate``
unfolds them with the stored symmetry operations.

Thermal diffuse scattering is included with frozen phonons (Einstein model) on a
lateral supercell, so Bragg beams lose flux to diffuse scattering (absorption-like
damping). The flux left in Bragg beams is stored as ``*_bragg_fraction``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import abtem
from abtem.core.energy import energy2wavelength
from ase import Atoms

# --- structures ------------------------------------------------------------------
# Tetragonal P4mm perovskites at room temperature: lattice, fractional sites (symbol,
# f_a1, f_a2, f_c), the centrosymmetric reference f_c of each site (for the sign of
# P), and frozen-phonon RMS displacements (A).
MATERIALS: dict[str, dict] = {
    # Shirane, Pepinsky & Frazer, Acta Cryst. 9, 131 (1956); Glazer & Mabud, Acta
    # Cryst. B34, 1065 (1978) (rounded as specified for polmap).
    "PbTiO3": {
        "a": 3.90,
        "c": 4.15,
        "sites": [
            ("Pb", 0.0, 0.0, 0.0),
            ("Ti", 0.5, 0.5, 0.540),
            ("O", 0.5, 0.5, 0.112),  # O1, apical
            ("O", 0.5, 0.0, 0.612),  # O2, equatorial
            ("O", 0.0, 0.5, 0.612),  # O2'
        ],
        "reference_fc": [0.0, 0.5, 0.0, 0.5, 0.5],
        "sigmas": {"Pb": 0.10, "Ti": 0.08, "O": 0.09},
        "reference": "Shirane, Pepinsky & Frazer, Acta Cryst. 9, 131 (1956); Glazer & Mabud, "
        "Acta Cryst. B34, 1065 (1978) (rounded values)",
    },
    # Buttner & Maslen, Acta Cryst. B48, 764 (1992); Kwei et al., J. Phys. Chem. 97,
    # 2368 (1993) (rounded): displacements about a sixth of PbTiO3's, a weaker polarity.
    "BaTiO3": {
        "a": 3.992,
        "c": 4.036,
        "sites": [
            ("Ba", 0.0, 0.0, 0.0),
            ("Ti", 0.5, 0.5, 0.482),
            ("O", 0.5, 0.5, 0.016),
            ("O", 0.5, 0.0, 0.515),
            ("O", 0.0, 0.5, 0.515),
        ],
        "reference_fc": [0.0, 0.5, 0.0, 0.5, 0.5],
        "sigmas": {"Ba": 0.08, "Ti": 0.07, "O": 0.09},
        "reference": "Buttner & Maslen, Acta Cryst. B48, 764 (1992); Kwei et al., J. Phys. Chem. 97, 2368 (1993) "
        "(rounded values)",
    },
}
NOMINAL_CHARGE = {"Pb": 2.0, "Ba": 2.0, "Ti": 4.0, "O": -2.0}
MATERIAL = MATERIALS["PbTiO3"]  # the one being built; main() selects it


def select_material(name: str) -> dict:
    """Make ``name`` the material every function below builds (returns its record)."""
    global MATERIAL
    if name not in MATERIALS:
        raise SystemExit(f"unknown material {name!r}; choose one of {sorted(MATERIALS)}")
    MATERIAL = MATERIALS[name]
    return MATERIAL


ENERGY_EV = 200e3


def polarization_sign_along_c() -> float:
    """Sign of the spontaneous polarization along +c for the sites above.

    Uses nominal ionic charges and displacements from the centrosymmetric
    reference; the result (-1: P points along -c when Pb sits at the origin and
    Ti/O are at z > 0.5/0) fixes which way the a-domain cell is laid along x.
    """
    ref = MATERIAL["reference_fc"]
    dipole = sum(NOMINAL_CHARGE[s] * (fc - ref[i]) for i, (s, _, _, fc) in enumerate(MATERIAL["sites"]))
    return float(np.sign(dipole))


def unit_cell(orientation: str) -> tuple[Atoms, float, int]:
    """One unit cell laid out for the beam along z; returns atoms, cell height, slices per cell.

    Atoms are shifted along z by a quarter of the slice thickness pattern so that every
    atomic plane sits inside a slice (not on a boundary) with the 'infinite' projection.
    """
    symbols, pos = [], []
    A_LATTICE, C_LATTICE, SITES = MATERIAL["a"], MATERIAL["c"], MATERIAL["sites"]
    if orientation == "a_domain":
        # x = polar axis (detector columns), y = a2, z = a1 (beam).
        sgn = polarization_sign_along_c()  # -1: flip c so that P points along +x
        for s, f1, f2, f3 in SITES:
            symbols.append(s)
            pos.append([((sgn * f3) % 1.0) * C_LATTICE, f2 * A_LATTICE, (f1 * A_LATTICE + A_LATTICE / 4) % A_LATTICE])
        cell = [C_LATTICE, A_LATTICE, A_LATTICE]
        height = A_LATTICE
    elif orientation == "c_domain":
        # x = a1, y = a2, z = c (beam): P along the beam, projection 4mm.
        for s, f1, f2, f3 in SITES:
            symbols.append(s)
            pos.append([f1 * A_LATTICE, f2 * A_LATTICE, (f3 * C_LATTICE + 0.5) % C_LATTICE])
        cell = [A_LATTICE, A_LATTICE, C_LATTICE]
        height = C_LATTICE
    else:
        raise ValueError(f"unknown orientation {orientation!r}")
    atoms = Atoms(symbols, positions=pos, cell=cell, pbc=True)
    return atoms, height, 2


def reduced_tilts(orientation: str, n_half: int) -> np.ndarray:
    """Integer tilt indices (row, col), each in [-n_half, n_half], to compute.

    a_domain: mirror row -> -row, so row >= 0. c_domain: 4mm, so 0 <= row <= col.
    """
    r = np.arange(-n_half, n_half + 1)
    rr, cc = np.meshgrid(r, r, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    if orientation == "a_domain":
        keep = rr >= 0
    else:
        keep = (rr >= 0) & (rr <= cc)
    return np.stack([rr[keep], cc[keep]], axis=1)


def symmetry_ops(orientation: str) -> np.ndarray:
    """2x2 integer matrices acting on (row, col) vectors that unfold the reduced tilts."""
    if orientation == "a_domain":
        return np.array([[[1, 0], [0, 1]], [[-1, 0], [0, 1]]])
    ops = []
    for swap in (False, True):
        for sr in (1, -1):
            for sc in (1, -1):
                m = np.array([[sr, 0], [0, sc]])
                if swap:
                    m = m @ np.array([[0, 1], [1, 0]])
                ops.append(m)
    return np.array(ops)


def tilt_series(
    orientation: str,
    tilts_mrad: np.ndarray,
    n_cells: int,
    supercell: int,
    sampling: float,
    configs: int,
    max_index: int,
    seed: int,
    batch: int,
    log=print,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bragg intensities for a list of beam tilts at every unit-cell exit plane.

    Parameters
    ----------
    tilts_mrad : (N, 2) array, (row, col) = (y, x) beam tilt in mrad.

    Returns
    -------
    intensity : (n_cells + 1, N, G) float64, G = (2 max_index + 1)**2 reflections ordered
        as ``[(kr, kc) for kr in range(-m, m+1) for kc in range(-m, m+1)]``, plane 0 = entrance.
    bragg_total : (n_cells + 1, N) float64, flux in all Bragg beams of the parent cell.
    info : dict of numerical settings.
    """
    cell, height, slices_per_cell = unit_cell(orientation)
    lx, ly = cell.cell[0, 0] * supercell, cell.cell[1, 1] * supercell
    # FFT-friendly grids near the requested sampling.
    gx, gy = _gpts(lx, sampling), _gpts(ly, sampling)
    big = cell * (supercell, supercell, n_cells)
    m = max_index
    ref = np.array([(kr, kc) for kr in range(-m, m + 1) for kc in range(-m, m + 1)])
    ix = (ref[:, 1] * supercell) % gx  # x <-> detector column
    iy = (ref[:, 0] * supercell) % gy  # y <-> detector row
    n_planes = n_cells + 1
    acc = np.zeros((n_planes, len(tilts_mrad), len(ref)))
    bragg = np.zeros((n_planes, len(tilts_mrad)))
    n_cfg = max(configs, 1)
    for cfg in range(n_cfg):
        t0 = time.time()
        if configs > 0:
            structure = abtem.FrozenPhonons(big, num_configs=1, sigmas=MATERIAL["sigmas"], seed=seed + 1000 * cfg)
        else:
            structure = big
        pot = abtem.Potential(
            structure,
            gpts=(gx, gy),
            slice_thickness=height / slices_per_cell,
            projection="infinite",
            parametrization="lobato",
            exit_planes=slices_per_cell,
        )
        built = pot.build().compute(progress_bar=False)
        arr = np.asarray(built.array)
        if arr.ndim == 4:  # frozen-phonon ensemble axis of length 1
            arr = arr[0]
        pot_arr = abtem.PotentialArray(
            arr, slice_thickness=height / slices_per_cell, extent=(lx, ly), exit_planes=slices_per_cell
        )
        for start in range(0, len(tilts_mrad), batch):
            tb = tilts_mrad[start : start + batch]
            # abTEM tilt is (x, y) = (col, row).
            pw = abtem.PlaneWave(energy=ENERGY_EV, extent=(lx, ly), gpts=(gx, gy), tilt=tb[:, ::-1].copy(), normalize=True)
            waves = pw.multislice(pot_arr).compute(progress_bar=False)
            psi = np.asarray(waves.array)
            psi = psi.reshape((-1,) + psi.shape[-3:]) if psi.shape[0] != n_planes else psi
            if psi.ndim == 3:  # single tilt: no tilt axis
                psi = psi[:, None]
            f = np.fft.fft2(psi, axes=(-2, -1))
            acc[:, start : start + len(tb)] += np.abs(f[..., ix, iy]) ** 2
            bragg[:, start : start + len(tb)] += (np.abs(f[..., ::supercell, ::supercell]) ** 2).sum(axis=(-2, -1))
            del waves, psi, f
        log(f"  {orientation}: config {cfg + 1}/{n_cfg} done in {time.time() - t0:.1f} s")
    info = {
        "gpts": [gx, gy],
        "sampling_A": [lx / gx, ly / gy],
        "supercell": [supercell, supercell, n_cells],
        "lateral_extent_A": [lx, ly],
        "slice_thickness_A": height / slices_per_cell,
        "slices_per_unit_cell": slices_per_cell,
        "unit_cell_height_A": height,
    }
    return acc / n_cfg, bragg / n_cfg, info


def _prime_factors(n: int) -> list[int]:
    out, d = [], 2
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1
    if n > 1:
        out.append(n)
    return out


def unfold(reduced: np.ndarray, tilt_idx: np.ndarray, ops: np.ndarray, n_half: int, max_index: int) -> np.ndarray:
    """Full (T, n, n, G) grid from reduced (T, N, G) intensities (as polmap.simulate does).

    Tilts that several operations map onto the same grid point (those on mirror
    lines) receive the average, which makes the result exactly symmetric even when
    a finite number of frozen-phonon configurations is not.
    """
    m = max_index
    ref = np.array([(kr, kc) for kr in range(-m, m + 1) for kc in range(-m, m + 1)])
    n = 2 * n_half + 1
    full = np.zeros((reduced.shape[0], n, n, reduced.shape[2]))
    count = np.zeros((n, n, reduced.shape[2]))
    for op in ops:
        t = tilt_idx @ op.T + n_half
        g = ref @ op.T
        gi = (g[:, 0] + m) * (2 * m + 1) + (g[:, 1] + m)
        rows, cols, gis = t[:, 0][:, None], t[:, 1][:, None], gi[None, :]
        np.add.at(full, (slice(None), rows, cols, gis), reduced)
        np.add.at(count, (rows, cols, gis), 1.0)
    if (count == 0).any():
        raise RuntimeError("symmetry unfolding left holes in the tilt grid")
    return full / count


def _probe_setup(orientation: str, n_lat: int, thickness_cells: int, sampling: float, alpha: float):
    """A static-lattice n_lat x n_lat supercell, its potential and a probe of semi-angle ``alpha``."""
    cell, height, spc = unit_cell(orientation)
    gx = n_lat * _gpts(cell.cell[0, 0], sampling)
    gy = n_lat * _gpts(cell.cell[1, 1], sampling)
    lx, ly = cell.cell[0, 0] * n_lat, cell.cell[1, 1] * n_lat
    atoms = cell * (n_lat, n_lat, thickness_cells)
    pot = abtem.Potential(atoms, gpts=(gx, gy), slice_thickness=height / spc, projection="infinite", parametrization="lobato")
    lam = energy2wavelength(ENERGY_EV)
    probe = abtem.Probe(energy=ENERGY_EV, semiangle_cutoff=alpha, extent=(lx, ly), gpts=(gx, gy))
    return cell, gx, gy, lx, ly, pot, lam, probe


def validate_cbed(orientation: str, thickness_cells: int, sampling: float, log=print) -> dict:
    """Check the library convention against a direct abTEM CBED simulation.

    A 2.5 mrad probe on a 12 x 12 supercell (static lattice) gives disk intensities
    on a reciprocal grid of pitch 1/L. With non-overlapping disks, the pixel at
    ``g + k`` must equal ``I_g(k) * |A(k)|^2`` from the plane-wave tilt series
    (``A`` = the probe's aperture function, from the same probe in vacuum). Also
    reports the mismatch with the tilt sign flipped, to show the check can tell.
    """
    n_lat = 12
    cell, gx, gy, lx, ly, pot, lam, probe = _probe_setup(orientation, n_lat, thickness_cells, sampling, 2.5)
    pos = abtem.CustomScan([lx / 3.1, ly / 2.7])  # any position: disks do not overlap
    psi = np.asarray(probe.multislice(pot, scan=pos).compute(progress_bar=False).array).reshape(gx, gy)
    vac = np.asarray(probe.build(scan=pos).compute(progress_bar=False).array).reshape(gx, gy)
    cbed = np.abs(np.fft.fft2(psi)) ** 2
    aperture = np.abs(np.fft.fft2(vac)) ** 2
    j = np.arange(-12, 13)
    kk = np.array([(r, c) for r in j for c in j if aperture[c % gx, r % gy] > 1e-6 * aperture.max()])
    wk = np.array([aperture[c % gx, r % gy] for r, c in kk])
    tilts = np.stack([lam * 1e3 * kk[:, 0] / ly, lam * 1e3 * kk[:, 1] / lx], axis=1)
    pw, _, _ = tilt_series(orientation, np.concatenate([tilts, -tilts]), thickness_cells, 1, sampling, 0, 3, 0, 64, log=lambda *_: None)
    ref = [(kr, kc) for kr in range(-3, 4) for kc in range(-3, 4)]
    reflections = [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (0, 2), (0, -2), (2, 1)]
    direct, lib, lib_flip = [], [], []
    for kr, kc in reflections:
        gi = ref.index((kr, kc))
        direct.append(cbed[(kc * n_lat + kk[:, 1]) % gx, (kr * n_lat + kk[:, 0]) % gy])
        lib.append(pw[-1, : len(kk), gi] * wk)
        lib_flip.append(pw[-1, len(kk) :, gi] * wk)
    direct, lib, lib_flip = (np.concatenate(v) for v in (direct, lib, lib_flip))
    rel = np.abs(direct - lib).sum() / direct.sum()
    rel_flip = np.abs(direct - lib_flip).sum() / direct.sum()
    res = {
        "orientation": orientation,
        "thickness_nm": thickness_cells * unit_cell(orientation)[1] / 10,
        "probe_semiangle_mrad": 2.5,
        "supercell": n_lat,
        "n_k_points_per_disk": int(len(kk)),
        "reflections": reflections,
        "relative_L1_error": float(rel),
        "relative_L1_error_with_tilt_sign_flipped": float(rel_flip),
    }
    log(f"  CBED check {orientation} @ {res['thickness_nm']:.1f} nm: L1 error {rel:.2e} (tilt sign flipped: {rel_flip:.2e})")
    return res


def validate_pacbed(orientation: str, thickness_cells: int, sampling: float, alpha: float, log=print) -> dict:
    """Check overlapping-disk, position-averaged CBED against a direct abTEM simulation.

    A probe of semi-angle ``alpha`` (large enough for the disks to overlap) on a
    4 x 4 grid of positions over one unit cell of an 8 x 8 supercell; the
    averaged pattern is compared with the sum over reflections ``g`` of
    ``I_g(k - g) * |A(k - g)|^2`` from the plane-wave tilt series, which is what
    ``polmap.simulate`` renders: averaging over the probe positions of a unit
    cell cancels the interference between overlapping disks.
    """
    n_lat = 8
    cell, gx, gy, lx, ly, pot, lam, probe = _probe_setup(orientation, n_lat, thickness_cells, sampling, alpha)
    ax, ay = cell.cell[0, 0], cell.cell[1, 1]
    pts = [[lx / 2 + ax * (i + 0.5) / 4, ly / 2 + ay * (j + 0.5) / 4] for i in range(4) for j in range(4)]
    psi = np.asarray(probe.multislice(pot, scan=abtem.CustomScan(pts)).compute(progress_bar=False).array)
    psi = psi.reshape(-1, gx, gy)
    pacbed = (np.abs(np.fft.fft2(psi)) ** 2).mean(0)
    vac = np.asarray(probe.build(scan=abtem.CustomScan(pts[:1])).compute(progress_bar=False).array).reshape(gx, gy)
    aperture = np.abs(np.fft.fft2(vac)) ** 2
    # every grid point k (pitch 1/L) inside the aperture, as a tilt
    j = np.arange(-gx // 2, gx // 2)
    kk = np.array([(r, c) for r in j for c in j if aperture[c % gx, r % gy] > 1e-6 * aperture.max()])
    wk = np.array([aperture[c % gx, r % gy] for r, c in kk])
    tilts = np.stack([lam * 1e3 * kk[:, 0] / ly, lam * 1e3 * kk[:, 1] / lx], axis=1)
    m = 4
    pw, _, _ = tilt_series(orientation, tilts, thickness_cells, 1, sampling, 0, m, 0, 64, log=lambda *_: None)
    ref = [(kr, kc) for kr in range(-m, m + 1) for kc in range(-m, m + 1)]
    model = np.zeros_like(pacbed)
    for gi, (kr, kc) in enumerate(ref):
        rows = (kc * n_lat + kk[:, 1]) % gx
        cols = (kr * n_lat + kk[:, 0]) % gy
        np.add.at(model, (rows, cols), pw[-1, :, gi] * wk)
    # compare inside the central disks' field (|index| <= 2), where the library is complete
    fx = np.fft.fftfreq(gx) * gx / n_lat
    fy = np.fft.fftfreq(gy) * gy / n_lat
    field = (np.abs(fx)[:, None] <= 2.5) & (np.abs(fy)[None, :] <= 2.5)
    rel = float(np.abs(pacbed - model)[field].sum() / pacbed[field].sum())
    res = {
        "orientation": orientation,
        "thickness_nm": thickness_cells * unit_cell(orientation)[1] / 10,
        "probe_semiangle_mrad": alpha,
        "probe_positions": 16,
        "supercell": n_lat,
        "relative_L1_error": rel,
    }
    log(f"  PACBED check {orientation} @ {res['thickness_nm']:.1f} nm, {alpha} mrad: L1 error {rel:.2e}")
    return res


def _gpts(length: float, sampling: float) -> int:
    """FFT-friendly (5-smooth) number of grid points closest to length / sampling."""
    good = [n for n in range(16, 1025) if max(_prime_factors(n)) <= 5]
    return min(good, key=lambda n: abs(length / n - sampling))


def sanity_figures(npz_path: Path) -> dict:
    """Measured physics figures of a library (printed and stored in the provenance).

    Disk pixels are the tilt-grid points within the 2.5 mrad probe cone around a
    given mistilt; a pattern is the set of all disks (non-overlapping CBED).
    """
    d = np.load(npz_path)
    ref = d["reflections"].astype(int)
    m = int(np.abs(ref).max())
    u = d["tilt_axis_mrad"].astype(float)
    n_half = (len(u) - 1) // 2
    step = float(u[1] - u[0])
    full = {}
    for o in ("a_domain", "c_domain"):
        red = d[f"{o}_intensity"].astype(float) * d[f"{o}_scale"]
        full[o] = unfold(red, d[f"{o}_tilt_index"], d[f"{o}_symmetry_ops"], n_half, m)
    gi = {tuple(r): i for i, r in enumerate(ref.tolist())}
    mirror_g = np.array([gi[(kr, -kc)] for kr, kc in ref.tolist()])
    rr, cc = np.meshgrid(u, u, indexing="ij")

    def pattern(arr, ti, shift=(0.0, 0.0)):
        # disk pixels: tilts inside the probe cone centred on the mistilt `shift`
        ir, ic = int(round(shift[0] / step)), int(round(shift[1] / step))
        mask = np.hypot(rr, cc) <= 2.5
        sub = np.roll(arr[ti], (-ir, -ic), axis=(0, 1))
        return sub[mask]  # (pixels, G)

    out: dict = {}
    a, c = full["a_domain"], full["c_domain"]
    ta = d["a_domain_thickness_nm"].astype(float)
    tc = d["c_domain_thickness_nm"].astype(float)
    l1_pm, l1_pm_disk, l1_tilt, l1_thick, fr_a, fr_c_tilt = {}, {}, {}, {}, {}, {}
    for t in (10.0, 20.0, 30.0):
        i = int(np.argmin(np.abs(ta - t)))
        plus = pattern(a, i)
        minus_full = a[:, :, ::-1][:, :, :, mirror_g]  # column mirror of pattern and tilt
        minus = pattern(minus_full, i)
        l1_pm[t] = float(np.abs(plus - minus).sum() / plus.sum())
        l1_pm_disk[t] = float(np.abs(plus.sum(0) - minus.sum(0)).sum() / plus.sum())
        l1_tilt[t] = float(np.abs(pattern(a, i, (0.0, 0.5)) - plus).sum() / plus.sum())
        j = int(np.argmin(np.abs(ta - (t + 2.0))))
        l1_thick[t] = float(np.abs(pattern(a, j) - plus).sum() / plus.sum())
        p1, m1 = plus[:, gi[(0, 1)]].mean(), plus[:, gi[(0, -1)]].mean()
        fr_a[t] = float((p1 - m1) / (p1 + m1))
        k = int(np.argmin(np.abs(tc - t)))
        cp = pattern(c, k, (0.0, 1.0))
        q1, n1 = cp[:, gi[(0, 1)]].mean(), cp[:, gi[(0, -1)]].mean()
        fr_c_tilt[t] = float((q1 - n1) / (q1 + n1))
    sign_changes = {}
    for k in (1, 2, 3):
        cone = np.hypot(rr, cc) <= 2.5
        p_ = a[:, cone][:, :, gi[(0, k)]].mean(axis=1)
        m_ = a[:, cone][:, :, gi[(0, -k)]].mean(axis=1)
        asym = (p_ - m_) / (p_ + m_)
        flips = np.nonzero(np.diff(np.sign(asym)) != 0)[0]
        sign_changes[f"(0,+-{k})"] = [round(float(ta[f]), 2) for f in flips]
    out = {
        "L1_plusP_vs_minusP": l1_pm,
        "L1_plusP_vs_minusP_disk_integrated": l1_pm_disk,
        "L1_mistilt_0.5mrad": l1_tilt,
        "L1_thickness_plus_2nm": l1_thick,
        "friedel_a_domain_(0,+-1)_on_zone": fr_a,
        "friedel_c_domain_(0,+-1)_mistilt_1mrad_col": fr_c_tilt,
        "friedel_sign_changes_a_domain_nm": sign_changes,
        "note": "pixel-level L1 over all disks of the non-overlapping CBED pattern (2.5 mrad cone, 0.5 mrad pixels), relative to the +P pattern",
    }
    print(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="polmap/data/pattern_library.npz")
    ap.add_argument("--material", default="PbTiO3", choices=sorted(MATERIALS))
    ap.add_argument("--configs", type=int, default=8, help="frozen-phonon configurations (0 = static lattice)")
    ap.add_argument("--supercell", type=int, default=3, help="lateral supercell for frozen phonons")
    ap.add_argument("--sampling", type=float, default=0.055, help="real-space sampling (A)")
    ap.add_argument("--tilt-max", type=float, default=5.0, help="tilt grid half-width (mrad)")
    ap.add_argument("--tilt-step", type=float, default=0.5, help="tilt grid step (mrad)")
    ap.add_argument("--max-index", type=int, default=3, help="reflections |h|,|k| <= this")
    ap.add_argument("--t-min-nm", type=float, default=3.9)
    ap.add_argument("--t-max-nm", type=float, default=40.3)
    ap.add_argument("--batch", type=int, default=6, help="tilts per multislice call")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--pacbed-alpha", type=float, default=None,
                    help="also check overlapping-disk PACBED at this probe semi-angle (mrad)")
    ap.add_argument("--quick", action="store_true", help="coarse smoke test (1 config, 1 mrad step)")
    ap.add_argument("--report-only", action="store_true", help="only (re)compute the sanity figures of --out")
    args = ap.parse_args(argv)
    if args.report_only:
        out_path = Path(args.out)
        figures = sanity_figures(out_path)
        prov_path = out_path.with_suffix(".json")
        prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
        prov["sanity_figures"] = figures
        prov_path.write_text(json.dumps(prov, indent=2) + "\n")
        return 0
    if args.quick:
        args.configs, args.tilt_step, args.supercell = 1, 1.0, 2
    select_material(args.material)
    abtem.config.set({"device": "cpu"})
    t_start = time.time()
    n_half = int(round(args.tilt_max / args.tilt_step))
    tilt_axis = np.arange(-n_half, n_half + 1) * args.tilt_step
    lam = energy2wavelength(ENERGY_EV)
    m = args.max_index
    ref = np.array([(kr, kc) for kr in range(-m, m + 1) for kc in range(-m, m + 1)])
    out: dict[str, np.ndarray] = {
        "orientations": np.array(["a_domain", "c_domain"]),
        "reflections": ref.astype(np.int8),
        "tilt_axis_mrad": tilt_axis.astype(np.float32),
        "wavelength_A": np.float64(lam),
    }
    prov_orient = {}
    for orient in ("a_domain", "c_domain"):
        cell, height, _ = unit_cell(orient)
        n_min = int(np.ceil(args.t_min_nm * 10 / height - 1e-9))
        n_max = int(np.floor(args.t_max_nm * 10 / height + 1e-9))
        tidx = reduced_tilts(orient, n_half)
        tilts = tidx * args.tilt_step
        print(f"{orient}: {len(tidx)} tilts x {n_max + 1} planes x {max(args.configs, 1)} configs", flush=True)
        t0 = time.time()
        inten, bragg, info = tilt_series(
            orient, tilts, n_max, args.supercell, args.sampling, args.configs, m, args.seed, args.batch
        )
        runtime = time.time() - t0
        inten, bragg = inten[n_min:], bragg[n_min:]
        # Per-reflection scale keeps float16 precision for weak beams.
        scale = inten.max(axis=(0, 1)).astype(np.float32)
        scale[scale == 0] = 1.0
        rows_mrad = lam * 1e3 / cell.cell[1, 1]
        cols_mrad = lam * 1e3 / cell.cell[0, 0]
        out[f"{orient}_intensity"] = (inten / scale).astype(np.float16)
        out[f"{orient}_scale"] = scale
        out[f"{orient}_tilt_index"] = tidx.astype(np.int16)
        out[f"{orient}_symmetry_ops"] = symmetry_ops(orient).astype(np.int8)
        out[f"{orient}_thickness_nm"] = (np.arange(n_min, n_max + 1) * height / 10).astype(np.float32)
        out[f"{orient}_g_mrad"] = (ref * np.array([rows_mrad, cols_mrad])).astype(np.float32)
        out[f"{orient}_bragg_fraction"] = bragg.mean(axis=1).astype(np.float32)
        prov_orient[orient] = {
            **info,
            "n_tilts_computed": int(len(tidx)),
            "thickness_cells": [n_min, n_max],
            "reciprocal_spacing_mrad_row_col": [float(rows_mrad), float(cols_mrad)],
            "runtime_s": round(runtime, 1),
        }
    validation = []
    if not args.no_validate:
        for orient in ("a_domain", "c_domain"):
            validation.append(validate_cbed(orient, 40 if orient == "a_domain" else 38, args.sampling))
            if args.pacbed_alpha:
                validation.append(validate_pacbed(orient, 40 if orient == "a_domain" else 38, args.sampling, args.pacbed_alpha))
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(out_path)
    digest = hashlib.sha256(out_path.read_bytes()).hexdigest()
    total = time.time() - t_start
    prov = {
        "file": out_path.name,
        "sha256": digest,
        "size_bytes": out_path.stat().st_size,
        "generator": "tools/make_pattern_library.py",
        "command": " ".join([sys.executable] + sys.argv),
        "abtem_version": abtem.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "runtime_total_s": round(total, 1),
        "material": f"{args.material}, tetragonal P4mm",
        "lattice_A": {"a": MATERIAL["a"], "c": MATERIAL["c"]},
        "sites_fractional": [list(s) for s in MATERIAL["sites"]],
        "structure_reference": MATERIAL["reference"],
        "polarization_note": f"with the A cation at the origin, P points along {'+' if polarization_sign_along_c() > 0 else '-'}c "
        "(nominal charges); the a_domain cell is laid so that P points along +x",
        "beam_energy_kev": ENERGY_EV / 1e3,
        "wavelength_A": lam,
        "method": "plane-wave multislice (abTEM), exit plane every unit cell, Bragg intensities from FFT of exit wave; "
                  "CBED pixel at offset k in disk g = I_g(thickness, k + mistilt)",
        "potential": {"parametrization": "lobato", "projection": "infinite"},
        "frozen_phonons": {"configs": args.configs, "sigmas_A": MATERIAL["sigmas"], "lateral_supercell": args.supercell,
                           "model": "Einstein (independent Gaussian displacements)"},
        "tilt_grid_mrad": {"half_width": args.tilt_max, "step": args.tilt_step,
                           "note": "2-D grid, row=y, col=x; symmetry-reduced storage, unfold with *_symmetry_ops"},
        "max_index": m,
        "orientations": {
            "a_domain": "P in plane along +x (detector column axis); projected c (x) x a (y); beam along a",
            "c_domain": "P along the beam; projection 4mm (class 'none')",
        },
        "storage": "intensity[T, tilt, g] float16 times scale[g] float32; reflections (row, col) indices",
        "orientation_details": prov_orient,
        "cbed_validation": validation,
        "args": vars(args),
    }
    prov["sanity_figures"] = sanity_figures(out_path)
    out_path.with_suffix(".json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.2f} MB) in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
