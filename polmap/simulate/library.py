"""Pattern libraries: multislice Bragg intensities over thickness and mistilt (``polmap/data``)."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np



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
